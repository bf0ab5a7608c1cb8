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

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.exceptions import Abort
from pydantic import Field

from flows.adapters import PrefectReporter, PrefectSteps
from flows.approvals import (Approval, Asker, CountersDecision, GateDecision, NodeFailureDecision,
                             PrefectDecider)
from flows.holding import hold_cluster, refused
from garage_migrate import runtime as R
from garage_migrate.errors import ClusterLockedError, MigrationAborted, SupersededError
from garage_migrate.executor import run_migration
from garage_migrate.plan import MigrationOptions

DEFAULT_PAUSE_TIMEOUT = 3600
#: The form's bounds for ``pause_timeout``: Prefect validates parameters before the flow runs.
PauseTimeout = Annotated[int, Field(ge=1, le=7 * 86400)]
#: A migration id names a directory on the controller: a name, never a path.
MigrationId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]

__all__ = ["Approval", "CountersDecision", "GateDecision", "MigrationAborted", "NodeFailureDecision",
           "minimal_downtime_migration", "simple_migration"]


async def _migrate(procedure: str, inventory: str, migration_id: str | None, options: MigrationOptions,
                   dry_run: bool, auto_approve: bool, pause_timeout: int):
    log = get_run_logger()
    try:
        # a dry run writes no ledger either: it must not pin the migration to a procedure
        async with R.open_runtime(inventory, procedure, migration_id, log=log,
                                  persist=not dry_run, options=options) as rt:
            return await run_migration(
                rt, R.plan_for(rt, procedure, options), options, dry_run=dry_run,
                hold=lambda held: hold_cluster(held, procedure, "migration", log),
                decider_for=lambda lock: PrefectDecider(Asker(lock.identity.token, lock.superseded, log),
                                                        pause_timeout),
                steps=PrefectSteps(), reporter=PrefectReporter(), auto_approve=auto_approve, log=log)
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
                           auto_approve: bool = False, pause_timeout: PauseTimeout = DEFAULT_PAUSE_TIMEOUT) -> dict:
    """Garage 0.7 -> 0.8, simple procedure: the whole cluster goes offline (guide steps 1-11).

    Args:
        inventory: path of the inventory YAML on the worker.
        migration_id: stable id of this migration (default ``<cluster>-to-v<target>``); a new
            run with the same id resumes it from its ledger.
        options: repairs, gate deadlines, watch window, fan-out policy.
        dry_run: facts and plan only; nothing on the cluster changes.
        auto_approve: approve gates that passed cleanly (scheduled runs); anything abnormal
            still waits for a person, up to ``pause_timeout``.
        pause_timeout: seconds an approval waits (set it to what is left of the window).
    """
    return await _migrate("simple", inventory, migration_id, options, dry_run, auto_approve, pause_timeout)


@flow(name="minimal-downtime-migration", log_prints=False)
async def minimal_downtime_migration(inventory: str, migration_id: MigrationId | None = None,
                                     options: MigrationOptions = MigrationOptions(), dry_run: bool = False,
                                     auto_approve: bool = False,
                                     pause_timeout: PauseTimeout = DEFAULT_PAUSE_TIMEOUT) -> dict:
    """Garage 0.7 -> 0.8, minimal-downtime procedure (guide steps 1-5, from v0.8.2's guide).

    Zone-by-zone backups while the cluster serves, every node restarted on 0.8 at once, then
    zone-by-zone offline counter repairs. Arguments as for :func:`simple_migration`.
    """
    return await _migrate("minimal-downtime", inventory, migration_id, options, dry_run, auto_approve, pause_timeout)
