"""Roll a migration back: every node (or a list) to 0.7 with its verified metadata backup.

An adapter: the rollback itself is the engine's (:mod:`garage_migrate.executor.rollback`),
run through the Prefect tasks. Per node: stop, switch the binary back to the recorded
original, restore the metadata from this migration's verified backup (the current dir is
moved aside, never deleted), start on the original version, verify; then the cluster must be
healthy and pass a sync gate. Writes acknowledged after a node's backup are lost on that node,
as with any restore: the report says when each backup was taken.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import Abort

from flows.adapters import PrefectSteps, artifact_key
from flows.holding import hold_cluster, refused
from garage_migrate import runtime as R
from garage_migrate.errors import ClusterLockedError, SupersededError
from garage_migrate.executor import rollback_nodes, sync_gate_after_rollback
from garage_migrate.journal import CommandJournal, with_journal


@flow(name="rollback-migration")
async def rollback_migration(inventory: str, migration_id: str | None = None, nodes: list[str] | None = None,
                             procedure: str = "minimal-downtime", gate_deadline_s: float = 300.0) -> dict:
    """Roll nodes (default: all) back to their 0.7 binary and metadata from this migration.

    Args:
        inventory: inventory path on the worker.
        migration_id: the migration to roll back (default ``<cluster>-to-v<target>``).
        nodes: node names; all nodes when empty.
        procedure: the procedure the migration was started with (names its ledger).
        gate_deadline_s: deadline of the final sync gate.
    """
    log = get_run_logger()
    try:
        async with R.open_runtime(inventory, procedure, migration_id, log=log) as rt:
            # the migration's own lock: refused while the migration's run is alive, taken over
            # when it is gone; another migration's lock refuses the rollback
            rt = with_journal(rt, CommandJournal.beside(rt.ledger.path))  # every command is journalled
            lock = await hold_cluster(rt, procedure, "rollback", log)
            steps = PrefectSteps()
            targets = nodes or [n.name for n in rt.facts.nodes]
            try:
                await rollback_nodes(rt, steps, targets)
                outcome = await sync_gate_after_rollback(rt, steps, gate_deadline_s)
            except BaseException:
                await lock.stop_heartbeats()
                raise
            if set(targets) == {n.name for n in rt.facts.nodes}:
                await rt.ledger.set(state="rolled-back")
                await lock.release()  # every node is back on 0.7: the migration is over
            else:
                await lock.stop_heartbeats()  # some nodes still migrated: the cluster stays held
            md = (f"## Rollback of {rt.ledger.doc.migration_id}\n\nNodes: {', '.join(targets)}\n\n"
                  f"Sync gate after rollback: **{outcome.status}**\n")
            await create_markdown_artifact(md, key=artifact_key("rollback", rt.ledger.doc.migration_id))
            return {"rolled_back": targets, "gate": outcome.status}
    except ClusterLockedError as exc:
        return refused(exc, log)
    except SupersededError as exc:
        log.warning("%s", exc)
        raise Abort(str(exc)) from None
