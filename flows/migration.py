"""Both procedures of the Garage 0.8 migration guide as Prefect flows: adapters only.

What a run does (lock, plan, execute, decide, record) is the engine's
(:func:`garage_migrate.executor.run_migration` over :class:`~garage_migrate.executor.Executor`);
this module supplies the Prefect implementations of its interfaces (tasks, the pause that only
takes a real answer, artifacts, the flow run's identity in the cluster lock) and maps outcomes
to Prefect states: a run refused by the cluster lock ends Cancelled, a superseded process
aborts without proposing a state.

Rules that hold in both flows:

- no 0.8 start on a node without a verified backup from this migration (enforced by the start
  step itself);
- no proceeding past a gate that did not pass unless a person chose "proceed anyway" (the
  ledger records who and why);
- after the simultaneous restart of the minimal-downtime flow, a node that fails to come up on
  0.8 pauses the flow with "retry the node" / "roll back every node".
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import Abort
from pydantic import Field

from flows.adapters import PrefectReporter, PrefectSteps
from flows.approvals import (Approval, Asker, CountersDecision, GateDecision, NodeFailureDecision,
                             PrefectDecider)
from flows.holding import hold_cluster, refused
from garage_migrate import runtime as R
from garage_migrate.errors import ClusterLockedError, MigrationAborted, PlanError, SupersededError
from garage_migrate.executor import run_migration
from garage_migrate.plan import MigrationOptions
from garage_migrate.window import DEFAULT_BACKUP_MAX_AGE_HOURS, MaintenanceWindow, SystemWallClock, WindowPolicy

DEFAULT_PAUSE_TIMEOUT = 3600
#: The form's bounds for ``pause_timeout``: Prefect validates parameters before the flow runs.
PauseTimeout = Annotated[int, Field(ge=1, le=7 * 86400)]
#: A migration id names a directory on the controller: a name, never a path.
MigrationId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]

__all__ = ["Approval", "CountersDecision", "GateDecision", "MigrationAborted", "NodeFailureDecision",
           "minimal_downtime_migration", "simple_migration", "window_policy"]

#: the window parameters of both flows (Prefect resolves a ``Field`` default when it binds them)
WINDOW_END = Field(None, title="Window end", description=(
    "When the maintenance window closes, with a time zone (e.g. 2026-12-06T04:00:00+00:00): "
    "no phase starts that cannot finish before it, no approval waits past it"))
WINDOW_MINUTES = Field(None, gt=0, title="Window length (minutes)", description=(
    "Or: the window's length in minutes from the run's scheduled start (a run that starts late has "
    "less of it left)"))
BACKUP_MAX_AGE = Field(DEFAULT_BACKUP_MAX_AGE_HOURS, gt=0, title="Backup maximum age (hours)", description=(
    "A node's backup older than this many hours is taken again before the flip (a migration resumed "
    "in a later window)"))


def window_policy(window_end: datetime | None, window_minutes: float | None,
                  backup_max_age_hours: float) -> WindowPolicy:
    """The run's window: ``window_minutes`` count from the flow run's scheduled start, so a run
    that starts Late is checked against what is left of its window."""
    if backup_max_age_hours <= 0:
        raise PlanError(f"backup_max_age_hours must be above 0, got {backup_max_age_hours}")
    clock = SystemWallClock()
    now = clock.now()
    ctx = FlowRunContext.get()
    expected = ctx.flow_run.expected_start_time if ctx is not None else None
    # Prefect's times are pendulum's, which cannot be compared with the stdlib's: convert
    started = min(now, datetime.fromtimestamp(expected.timestamp(), timezone.utc)) if expected is not None else now
    return WindowPolicy(MaintenanceWindow.from_params(window_end, window_minutes, started), clock,
                        backup_max_age_hours * 3600)


async def _migrate(procedure: str, inventory: str, migration_id: str | None, options: MigrationOptions,
                   dry_run: bool, auto_approve: bool, pause_timeout: int, window: WindowPolicy):
    log = get_run_logger()
    if window.window is not None:
        log.info("maintenance window until %s (%.0f min left)", window.window.end.isoformat(), window.left() / 60)
    try:
        # a dry run writes no ledger either: it must not pin the migration to a procedure
        async with R.open_runtime(inventory, procedure, migration_id, log=log,
                                  persist=not dry_run, options=options) as rt:
            return await run_migration(
                rt, R.plan_for(rt, procedure, options), options, dry_run=dry_run,
                hold=lambda held: hold_cluster(held, procedure, "migration", log),
                decider_for=lambda lock: PrefectDecider(Asker(lock.identity.token, lock.superseded, log),
                                                        lambda: window.pause_timeout(pause_timeout)),
                steps=PrefectSteps(), reporter=PrefectReporter(), auto_approve=auto_approve, log=log,
                window=window)
    except ClusterLockedError as exc:
        return refused(exc, log)
    except SupersededError as exc:
        # another attempt owns this flow run now: propose no state (it would overwrite the new
        # attempt's), write nothing, touch nothing
        log.warning("%s", exc)
        raise Abort(str(exc)) from None


@flow(name="simple-migration", log_prints=False)
async def simple_migration(inventory: str, migration_id: MigrationId | None = None,
                           options: MigrationOptions = MigrationOptions(), dry_run: bool = False,
                           auto_approve: bool = False, pause_timeout: PauseTimeout = DEFAULT_PAUSE_TIMEOUT,
                           window_end: datetime | None = WINDOW_END, window_minutes: float | None = WINDOW_MINUTES,
                           backup_max_age_hours: float = BACKUP_MAX_AGE) -> dict:
    """Garage 0.7 -> 0.8, simple procedure: the whole cluster goes offline (guide steps 1-11).

    Args:
        inventory: path of the inventory YAML on the worker.
        migration_id: stable id of this migration (default ``<cluster>-to-v<target>``); a new
            run with the same id resumes it from its ledger.
        options: repairs, gate deadlines, watch window, fan-out policy.
        dry_run: facts and plan only; nothing on the cluster changes.
        auto_approve: approve gates that passed cleanly (scheduled runs); anything abnormal
            still waits for a person, up to ``pause_timeout``.
        pause_timeout: seconds an approval waits (never past the window's end).
        window_end: when the maintenance window closes (with a zone).
        window_minutes: or the window's length from the run's scheduled start.
        backup_max_age_hours: a backup older than this is taken again before the flip.
    """
    return await _migrate("simple", inventory, migration_id, options, dry_run, auto_approve, pause_timeout,
                          window_policy(window_end, window_minutes, backup_max_age_hours))


@flow(name="minimal-downtime-migration", log_prints=False)
async def minimal_downtime_migration(inventory: str, migration_id: MigrationId | None = None,
                                     options: MigrationOptions = MigrationOptions(), dry_run: bool = False,
                                     auto_approve: bool = False,
                                     pause_timeout: PauseTimeout = DEFAULT_PAUSE_TIMEOUT,
                                     window_end: datetime | None = WINDOW_END, window_minutes: float | None = WINDOW_MINUTES,
                                     backup_max_age_hours: float = BACKUP_MAX_AGE) -> dict:
    """Garage 0.7 -> 0.8, minimal-downtime procedure (guide steps 1-5, from v0.8.2's guide).

    Zone-by-zone backups while the cluster serves, every node restarted on 0.8 at once, then
    zone-by-zone offline counter repairs. Arguments as for :func:`simple_migration`.
    """
    return await _migrate("minimal-downtime", inventory, migration_id, options, dry_run, auto_approve, pause_timeout,
                          window_policy(window_end, window_minutes, backup_max_age_hours))
