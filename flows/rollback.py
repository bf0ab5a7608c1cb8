"""Roll a migration back: every node (or a list) to 0.7 with its verified metadata backup.

An adapter: the rollback is a plan (:mod:`garage_migrate.rollback_plan`) executed by the
engine's executor through the Prefect tasks, like a migration's: it is published as an
artifact and begins with its approval (a form without a default, as every decision). Per
node: stop, switch the binary back to the recorded original, restore the metadata from this
migration's verified backup (the current dir is moved aside, never deleted), start on the
original version; then the cluster must be healthy and pass a sync gate. Writes acknowledged
after a node's backup are lost on that node, as with any restore: the plan says when each
backup was taken.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.exceptions import Abort

from flows import params as P
from flows.adapters import PrefectReporter, PrefectSteps
from flows.approvals import Asker, PrefectDecider
from flows.blocks import inventory_of
from flows.holding import hold_cluster, refused
from garage_migrate import runtime as R
from garage_migrate.errors import ClusterLockedError, SupersededError
from garage_migrate.executor import rollback_plan_for, run_rollback
from garage_migrate.journal import CommandJournal, in_step, with_journal

DEFAULT_PAUSE_TIMEOUT = 3600


@flow(name="rollback-migration")
async def rollback_migration(inventory: P.Inventory, migration_id: P.MigrationId = None, nodes: P.Nodes = None,
                             procedure: P.Procedure = "minimal-downtime", gate_deadline_s: P.GateDeadline = 300.0,
                             pause_timeout: P.PauseTimeout = DEFAULT_PAUSE_TIMEOUT) -> dict:
    """Roll nodes (default: all) back to their 0.7 binary and metadata from this migration.

    Args:
        inventory: inventory path on the worker, or a ``GarageCluster`` block.
        migration_id: the migration to roll back (default ``<cluster>-to-v<target>``).
        nodes: node names; all nodes when empty.
        procedure: the procedure the migration was started with (names its ledger).
        gate_deadline_s: deadline of the final sync gate.
        pause_timeout: seconds the approval of the rollback plan waits.

    The form's titles and descriptions are in :mod:`flows.params`.
    """
    log = get_run_logger()
    reporter = PrefectReporter()
    try:
        with inventory_of(inventory) as inv:
            result = await _rollback(inv, migration_id, nodes, procedure, gate_deadline_s, pause_timeout,
                                     reporter, log)
    except ClusterLockedError as exc:
        return refused(exc, log)
    except SupersededError as exc:
        log.warning("%s", exc)
        raise Abort(str(exc)) from None
    return reporter.finished(result)


async def _rollback(inventory, migration_id, nodes, procedure, gate_deadline_s, pause_timeout, reporter,
                    log) -> dict:
    async with R.open_runtime(inventory, procedure, migration_id, log=log) as rt:
        rt = with_journal(rt, CommandJournal.beside(rt.ledger.path))  # every command is journalled
        # the migration's own lock first: refused while the migration's run is alive, taken
        # over when it is gone; another migration's lock refuses the rollback
        with in_step(None, "cluster-lock"):
            lock = await hold_cluster(rt, procedure, "rollback", log)
        decider = PrefectDecider(Asker(lock.identity.token, lock.superseded, log), pause_timeout)
        try:
            plan = rollback_plan_for(rt, nodes=nodes)  # PlanError: a node has nothing to go back to
            await run_rollback(rt, plan, steps=PrefectSteps(), decider=decider, reporter=reporter,
                               gate_deadline_s=gate_deadline_s, log=log)
        except BaseException:
            await lock.stop_heartbeats()
            raise
        targets = sorted({s.node for s in plan.steps() if s.node})
        if rt.ledger.doc.state == "rolled-back":
            await lock.release()  # every node is back on 0.7: the migration is over
        else:
            await lock.stop_heartbeats()  # some nodes still migrated: the cluster stays held
        gate = rt.ledger.gate("sync-rollback")
        return {"rolled_back": targets, "gate": gate.status if gate else None, "plan_digest": plan.digest()}
