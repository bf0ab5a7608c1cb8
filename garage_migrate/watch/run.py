"""One watch observation, the record of observations, and the foreground loop.

Each observation is one line of ``watch.jsonl`` beside the ledger (the ledger itself is the
migration's, and its run is over: the watch only reads it). The live report is re-rendered
from that file at every observation, so the report of observation *k* shows all *k*.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import PlanError
from ..gates import Clock, SystemClock
from ..steps import Runtime
from .compare import DEFAULT_THRESHOLDS, Comparison, Thresholds, compare
from .model import Snapshot
from .observe import rate_window_s, take_snapshot
from .report import watch_markdown

log = logging.getLogger("garage_migrate.watch")

#: ledger states a watch follows
WATCHABLE = ("done", "rolled-back")


@dataclass(frozen=True)
class Observation:
    """One observation: the comparison, and the report that includes every observation so far."""

    index: int
    comparison: Comparison
    markdown: str
    final: bool


def history_path(rt: Runtime) -> Path:
    """``watch.jsonl`` beside the ledger."""
    return rt.ledger.path.with_name("watch.jsonl")


def read_history(path: Path) -> list[dict]:
    """Every observation recorded so far (oldest first)."""
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def baseline_of(rt: Runtime) -> Snapshot:
    """The migration's baseline, for a migration that is over.

    Raises:
        PlanError: the migration is not over, or no baseline was recorded (a migration that
            started before this version of garage-migrate).
    """
    doc = rt.ledger.doc
    if doc.state not in WATCHABLE:
        raise PlanError(f"migration {doc.migration_id} is {doc.state}: the watch follows a migration that is "
                        f"{' or '.join(WATCHABLE)}")
    if doc.baseline is None:
        raise PlanError(f"migration {doc.migration_id} recorded no baseline (it started before the watch "
                        f"existed): nothing to compare with")
    return doc.baseline


async def observe(rt: Runtime, baseline: Snapshot, *, every_s: float, planned: int | None, final: bool,
                  thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Observation:
    """Take one snapshot, compare it with ``baseline``, record it, and render the live report."""
    snap = await take_snapshot(rt, rate_window_s(every_s))
    c = compare(baseline, snap, thresholds)
    path = history_path(rt)
    line = json.dumps({"at": snap.at, "regressions": list(c.regressions), "final": final,
                       "snapshot": snap.model_dump(mode="json")}) + "\n"
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # two runs late at once each append a whole line
        f.write(line)
    history = read_history(path)
    md = history_markdown(rt.ledger.doc.migration_id, history, baseline, planned=planned, thresholds=thresholds)
    return Observation(len(history), c, md, final)


def history_markdown(migration_id: str, history: list[dict], baseline: Snapshot, *, planned: int | None,
                     thresholds: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """The live report, from the recorded observations alone: whichever run publishes it (two
    late runs may finish out of order), it shows every observation so far, in time order, the
    latest one against the baseline, and it is the final report once the last one is in."""
    ordered = sorted(history, key=lambda h: h["at"])
    latest = compare(baseline, Snapshot.model_validate(ordered[-1]["snapshot"]), thresholds)
    return watch_markdown(migration_id, ordered, latest, baseline, planned=planned,
                          final=any(h.get("final") for h in ordered))


def observation_count(hours: float, every_s: float) -> int:
    """How many observations a watch of ``hours`` every ``every_s`` seconds makes (the first at
    once, the last at the end)."""
    if every_s <= 0 or hours < 0:
        raise ValueError("the watch needs a positive interval and a non-negative duration")
    return int(hours * 3600 // every_s) + 1


def scheduled_count(hours: float, every_s: float) -> int:
    """How many runs a scheduled watch of ``hours`` every ``every_s`` seconds makes after the
    migration's own final report (observation zero): at least one."""
    return max(1, observation_count(hours, every_s) - 1)


async def watch_foreground(rt: Runtime, *, hours: float, every_s: float,
                           on_observation: Callable[[Observation], Awaitable[None]],
                           clock: Clock | None = None, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Observation]:
    """Observe every ``every_s`` seconds for ``hours`` (timed by ``clock``), in this process."""
    clock = clock or SystemClock()
    base = baseline_of(rt)
    planned = observation_count(hours, every_s)
    start = clock.monotonic()
    out = []
    for i in range(planned):
        wait = start + i * every_s - clock.monotonic()
        if wait > 0:
            await clock.sleep(wait)
        obs = await observe(rt, base, every_s=every_s, planned=planned, final=i == planned - 1,
                            thresholds=thresholds)
        out.append(obs)
        await on_observation(obs)
    return out


def when(t: float) -> str:
    """A Unix time as UTC text."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


async def against_baseline(rt: Runtime, window_s: float = 60.0) -> str:
    """The final report's section: the cluster now against the baseline, per node and per
    bucket (or why there is no comparison)."""
    from .report import comparison_markdown

    base = rt.ledger.doc.baseline
    if base is None:
        return "### Against the baseline\n\nNo baseline was recorded (a dry run, or a migration older than the watch)."
    c = compare(base, await take_snapshot(rt, window_s))
    return "### Against the baseline\n\n" + comparison_markdown(c, base)


def watch_command(inventory: str, migration_id: str, hours: float) -> str:
    """The command that watches a migration in the foreground."""
    import shlex

    return shlex.join(["garage-migrate", "watch", "--inventory", inventory, "--migration-id", migration_id,
                       "--hours", f"{hours:g}"])


def terminal_follow_up(inventory: str, migration_id: str, hours: float) -> str:
    """What the report of a migration run from a terminal (no lasting Prefect server) says."""
    return ("### Watching the next hours\n\nThis migration ran from a terminal, with no lasting Prefect server to "
            "schedule the post-migration watch on. Watch the cluster against its baseline in the foreground:\n\n"
            f"    {watch_command(inventory, migration_id, hours)}")


@contextlib.asynccontextmanager
async def open_watch(inventory: str, migration_id: str | None, log: logging.Logger | logging.LoggerAdapter | None = None):
    """The runtime of a migration that is over, for watching it: its ledger read-only (the
    watch never writes it), the cluster discovered as it is now."""
    from ..inventory import load_inventory
    from ..ledger import Ledger
    from ..runtime import default_migration_id, ledger_for, open_runtime

    inv = load_inventory(inventory)
    mid = migration_id or default_migration_id(inv)
    path = ledger_for(inv, mid, "minimal-downtime", persist=False).path
    if not path.exists():
        raise PlanError(f"no ledger of migration {mid} at {path}: nothing to watch")
    procedure = Ledger.load(path).doc.procedure
    async with open_runtime(inv, procedure, mid, log=log, persist=False) as rt:
        baseline_of(rt)  # refuse before observing anything
        yield rt
