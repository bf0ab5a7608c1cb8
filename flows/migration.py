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

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import Abort

from flows import params as P
from flows.adapters import PrefectReporter, PrefectSteps
from flows.approvals import (Approval, Asker, CountersDecision, GateDecision, NodeFailureDecision,
                             PrefectDecider)
from flows.blocks import GarageCluster, inventory_of
from flows.holding import hold_cluster, refused
from flows.watch import schedule_watch as schedule_watch_runs
from garage_migrate import runtime as R
from garage_migrate.errors import ClusterLockedError, MigrationAborted, PlanError, SupersededError
from garage_migrate.executor import run_migration
from garage_migrate.plan import MigrationOptions
from garage_migrate.window import DEFAULT_BACKUP_MAX_AGE_HOURS, MaintenanceWindow, SystemWallClock, WindowPolicy
from garage_migrate.watch.run import terminal_follow_up

DEFAULT_PAUSE_TIMEOUT = 3600

__all__ = ["Approval", "CountersDecision", "GateDecision", "MigrationAborted", "NodeFailureDecision",
           "minimal_downtime_migration", "simple_migration", "window_policy"]

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


async def _migrate(procedure: str, inventory: str | GarageCluster, migration_id: str | None,
                   options: MigrationOptions, dry_run: bool, auto_approve: bool, pause_timeout: int,
                   window: WindowPolicy, watch: tuple[bool, float, float]):
    log = get_run_logger()
    reporter = PrefectReporter()
    schedule, hours, every = watch
    if window.window is not None:
        log.info("maintenance window until %s (%.0f min left)", window.window.end.isoformat(), window.left() / 60)

    async def after_done(rt, plan):
        if not schedule:
            return terminal_follow_up(inventory, plan.migration_id, hours)
        return await schedule_watch_runs(inventory, plan.migration_id, f"{rt.ledger.doc.created:.0f}",
                                         hours=hours, every_minutes=every, log=log)

    try:
        # a dry run writes no ledger either: it must not pin the migration to a procedure
        with inventory_of(inventory) as inv:
            async with R.open_runtime(inv, procedure, migration_id, log=log, persist=not dry_run,
                                      options=options) as rt:
                result = await run_migration(
                    rt, R.plan_for(rt, procedure, options), options, dry_run=dry_run,
                    hold=lambda held: hold_cluster(held, procedure, "migration", log),
                    decider_for=lambda lock: PrefectDecider(Asker(lock.identity.token, lock.superseded, log),
                                                            lambda: window.pause_timeout(pause_timeout)),
                    steps=PrefectSteps(), reporter=reporter, auto_approve=auto_approve, log=log,
                    window=window, after_done=after_done)
    except ClusterLockedError as exc:
        return refused(exc, log)
    except SupersededError as exc:
        # another attempt owns this flow run now: propose no state (it would overwrite the new
        # attempt's), write nothing, touch nothing
        log.warning("%s", exc)
        raise Abort(str(exc)) from None
    # the flow run's result and its final state's message say where its report is
    return reporter.finished(result)


@flow(name="simple-migration", log_prints=False)
async def simple_migration(inventory: P.Inventory, migration_id: P.MigrationId = None,
                           options: P.Options = MigrationOptions(), dry_run: P.DryRun = False,
                           auto_approve: P.AutoApprove = False,
                           pause_timeout: P.PauseTimeout = DEFAULT_PAUSE_TIMEOUT,
                           window_end: P.WindowEnd = None, window_minutes: P.WindowMinutes = None,
                           backup_max_age_hours: P.BackupMaxAgeHours = DEFAULT_BACKUP_MAX_AGE_HOURS,
                           watch_hours: P.WatchHours = 6.0, watch_every_minutes: P.WatchEveryMinutes = 15.0,
                           schedule_watch: P.ScheduleWatch = True) -> dict:
    """Garage 0.7 -> 0.8, simple procedure: the whole cluster goes offline (guide steps 1-11).

    Args:
        inventory: path of the inventory YAML on the worker, or a ``GarageCluster`` block.
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
        watch_hours: hours the post-migration watch compares the cluster with its baseline.
        watch_every_minutes: minutes between the watch's observations.
        schedule_watch: schedule the watch's runs (``post-migration-watch``) when the migration
            completes; off for a terminal run with no lasting server (the report then says how
            to watch from the terminal).

    The form's titles and descriptions are in :mod:`flows.params`.
    """
    return await _migrate("simple", inventory, migration_id, options, dry_run, auto_approve, pause_timeout,
                          window_policy(window_end, window_minutes, backup_max_age_hours),
                          (schedule_watch, watch_hours, watch_every_minutes))


@flow(name="minimal-downtime-migration", log_prints=False)
async def minimal_downtime_migration(inventory: P.Inventory, migration_id: P.MigrationId = None,
                                     options: P.Options = MigrationOptions(), dry_run: P.DryRun = False,
                                     auto_approve: P.AutoApprove = False,
                                     pause_timeout: P.PauseTimeout = DEFAULT_PAUSE_TIMEOUT,
                                     window_end: P.WindowEnd = None, window_minutes: P.WindowMinutes = None,
                                     backup_max_age_hours: P.BackupMaxAgeHours = DEFAULT_BACKUP_MAX_AGE_HOURS,
                                     watch_hours: P.WatchHours = 6.0, watch_every_minutes: P.WatchEveryMinutes = 15.0,
                                     schedule_watch: P.ScheduleWatch = True) -> dict:
    """Garage 0.7 -> 0.8, minimal-downtime procedure (guide steps 1-5, from v0.8.2's guide).

    Zone-by-zone backups while the cluster serves, every node restarted on 0.8 at once, then
    zone-by-zone offline counter repairs.

    Args:
        inventory: path of the inventory YAML on the worker, or a ``GarageCluster`` block.
        migration_id: stable id of this migration (default ``<cluster>-to-v<target>``); a new
            run with the same id resumes it from its ledger.
        options: repairs, gate deadlines, watch window, and the fan-out policy: zones down at
            once in each round, the canary zone, nodes at once.
        dry_run: facts and plan only; nothing on the cluster changes.
        auto_approve: approve gates that passed cleanly (scheduled runs); anything abnormal
            still waits for a person, up to ``pause_timeout``.
        pause_timeout: seconds an approval waits (set it to what is left of the window).

    The form's titles and descriptions are in :mod:`flows.params`.
    """
    return await _migrate("minimal-downtime", inventory, migration_id, options, dry_run, auto_approve, pause_timeout,
                          window_policy(window_end, window_minutes, backup_max_age_hours),
                          (schedule_watch, watch_hours, watch_every_minutes))
