"""``garage-migrate watch``: the post-migration watch in the foreground, for a migration run
from a terminal (no lasting Prefect server to schedule the ``post-migration-watch`` runs on).

Every ``--every`` seconds for ``--hours`` it compares the cluster with the baseline the
migration recorded before its first disruptive step, prints one line per observation, and at
the end the final report (per node and per bucket). Exit status 0: no regression; 1: some
observation regressed (each is also in ``watch.jsonl`` beside the ledger).
"""

from __future__ import annotations

import argparse
import asyncio


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``watch`` on the CLI's subparsers."""
    w = sub.add_parser("watch", help="compare the cluster with its pre-migration baseline for hours (foreground)")
    w.add_argument("--inventory", required=True)
    w.add_argument("--migration-id", help="the migration (default <cluster>-to-v<target>)")
    w.add_argument("--hours", type=float, default=6.0, help="how long to watch, hours (default 6)")
    w.add_argument("--every", type=float, default=900.0, help="seconds between observations (default 900)")
    return w


async def _watch(args) -> int:
    from .watch.run import open_watch, watch_foreground, when

    async with open_watch(args.inventory, args.migration_id) as rt:
        async def show(obs) -> None:
            c = obs.comparison
            state = "; ".join(c.regressions) if c.regressions else "no regression"
            print(f"[{when(c.at)}] observation {obs.index}: {state}", flush=True)

        done = await watch_foreground(rt, hours=args.hours, every_s=args.every, on_observation=show)
    print("\n" + done[-1].markdown, flush=True)
    return 1 if any(o.comparison.regressions for o in done) else 0


def run(args) -> int:
    """Run ``garage-migrate watch`` (see the module docstring)."""
    return asyncio.run(_watch(args))
