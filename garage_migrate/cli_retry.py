"""``garage-migrate retry``: re-run one node's failed step, and the rest of its steps in that phase.

    garage-migrate retry --inventory inv.yaml --node NODE [--step PHASE:KIND|KIND] [--migration-id ID]

The rules are :mod:`garage_migrate.executor.retry`'s: the migration's saved plan, the steps the
ledger records done skipped (and said so), the migration's cluster lock (refused while its run
is alive, exit 3), refused when it would take more zones down than the phase allows (exit 1).
It asks nothing, so it runs the same from a terminal, cron or CI. A normal run of the migration
then carries on from there. No Prefect is involved (the engine never imports it): the run that
held the migration is gone when its process no longer exists on this controller, or its
heartbeat is older than a minute (the ``retry-node`` deployment also asks Prefect for its state).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path


def add_parser(sub) -> None:
    """Register ``retry`` on the ``garage-migrate`` sub-command parser."""
    r = sub.add_parser("retry", help="re-run one node's failed step and the rest of its steps in that phase")
    r.add_argument("--inventory", required=True)
    r.add_argument("--node", required=True, help="the node to retry (see status)")
    r.add_argument("--step", help="PHASE:KIND or KIND (default: the node's failed step)")
    r.add_argument("--migration-id")


async def _retry(args) -> int:
    from .cluster_lock import ClusterLock, RunIdentity, lock_nodes
    from .errors import ClusterLockedError
    from .executor import EngineSteps
    from .executor.retry import retry_node, saved_plan
    from .inventory import load_inventory
    from .ledger import Ledger
    from .runtime import default_migration_id, open_runtime

    log = logging.getLogger("garage_migrate.retry")
    inv = load_inventory(args.inventory)
    mid = args.migration_id or default_migration_id(inv)
    path = Path(inv.backup.root) / inv.cluster / mid / "ledger.json"
    if not path.exists():
        print(f"garage-migrate: no migration {mid} (no ledger at {path}): nothing to retry", file=sys.stderr)
        return 1
    procedure = Ledger.load(path).doc.procedure

    async def hold(rt):
        lock = ClusterLock(rt.shell, lock_nodes(rt.inv, rt.facts), rt.ledger, procedure, RunIdentity(kind="retry"),
                           log=log)
        await lock.acquire()
        return lock

    try:
        async with open_runtime(inv, procedure, mid, log=log) as rt:
            report = await retry_node(rt, saved_plan(rt), args.node, args.step, hold=hold, steps=EngineSteps(),
                                      log=log)
    except ClusterLockedError as exc:
        print(f"garage-migrate: {exc}", file=sys.stderr)
        return 3
    print("\n".join(report.lines()))
    if report.held:
        print(f"the held steps are the migration run's: garage-migrate run {procedure} --inventory {args.inventory}"
              + (f" --migration-id {mid}" if args.migration_id else ""))
    else:
        print(f"{args.node} is done with phase {report.phase}; carry on with the migration: "
              f"garage-migrate run {procedure} --inventory {args.inventory}"
              + (f" --migration-id {mid}" if args.migration_id else ""))
    return 0


def main(args) -> int:
    """Run ``garage-migrate retry`` (its log on stderr, the report on stdout)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("garage_migrate")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        return asyncio.run(_retry(args))
    finally:
        root.removeHandler(handler)
