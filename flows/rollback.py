"""Roll a migration back: every node (or a list) to 0.7 with its verified metadata backup.

Per node: stop, switch the binary back to the recorded original, restore the metadata from
this migration's verified backup (the current dir is moved aside, never deleted), start on
the original version, verify; then the cluster must be healthy and pass a sync gate. Writes
acknowledged after a node's backup are lost on that node, as with any restore: the report says
when each backup was taken.
"""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import Abort

import tasks as T
from garage_migrate import backup_step
from flows.holding import hold_cluster, refused
from garage_migrate import runtime as R
from garage_migrate.errors import ClusterLockedError, SupersededError
from garage_migrate.plan import MigrationOptions
from garage_migrate.steps import Runtime


@task(name="restore-metadata", task_run_name="restore-{node}", **T.ONCE)
async def restore_node(rt: Runtime, node: str):
    """Restore one stopped node's metadata from its verified backup (never cached: a restore
    must run every time it is asked for)."""
    return await backup_step.restore_node(T._rt(rt), node)


async def rollback_nodes(rt: Runtime, nodes: list[str]) -> None:
    """Stop, switch back, restore and start ``nodes`` (together), then check health."""
    async def one(node: str):
        before = rt.ledger.node(node).get("version_before")
        await T.stop_node(rt, node)
        await T.switch_binary(rt, node, "source")
        await restore_node(rt, node)
        await T.start_node(rt, node, before)
        await rt.ledger.record_step(node, "rollback", "done", f"back on {before}")
    results = await asyncio.gather(*(one(n) for n in nodes), return_exceptions=True)
    failed = {n: r for n, r in zip(nodes, results) if isinstance(r, BaseException)}
    if failed:
        raise next(iter(failed.values()))
    await T.wait_healthy(rt, [n.name for n in rt.facts.nodes], "all")


async def sync_gate_after_rollback(rt: Runtime, gate_deadline_s: float):
    """The sync gate that ends a rollback, recorded in the ledger (``sync-rollback``).

    It reports; it does not fail the rollback, which is done by then.
    """
    outcome = await R.run_sync_gate(rt, MigrationOptions(gate_deadline_s=gate_deadline_s), "rollback")
    await rt.ledger.record_gate("sync-rollback", status=outcome.status, reasons=list(outcome.reasons))
    if outcome.status != "passed":
        rt.log.warning("sync gate after the rollback: %s (%s)", outcome.status, "; ".join(outcome.reasons))
    return outcome


async def rollback_all(rt: Runtime, gate_deadline_s: float = 300.0) -> None:
    """Roll every node back (the minimal-downtime flow's "roll back every node" decision),
    ending with the sync gate, as :func:`rollback_migration` does."""
    await rt.ledger.event("rollback", "rolling back every node")
    await rollback_nodes(rt, [n.name for n in rt.facts.nodes])
    await sync_gate_after_rollback(rt, gate_deadline_s)
    await rt.ledger.set(state="rolled-back")


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
            lock = await hold_cluster(rt, procedure, "rollback", log)
            targets = nodes or [n.name for n in rt.facts.nodes]
            try:
                await rollback_nodes(rt, targets)
                outcome = await sync_gate_after_rollback(rt, gate_deadline_s)
            except BaseException:
                await lock.stop_heartbeats()
                raise
            if set(targets) == {n.name for n in rt.facts.nodes}:
                await rt.ledger.set(state="rolled-back")
                await lock.release()  # every node is back on 0.7: the migration is over
            else:
                await lock.stop_heartbeats()  # some nodes still migrated: the cluster stays held
            md = (f"## Rollback of {rt.ledger.data['migration_id']}\n\nNodes: {', '.join(targets)}\n\n"
                  f"Sync gate after rollback: **{outcome.status}**\n")
            await create_markdown_artifact(md, key=f"rollback-{rt.ledger.data['migration_id']}".lower())
            return {"rolled_back": targets, "gate": outcome.status}
    except ClusterLockedError as exc:
        return refused(exc, log)
    except SupersededError as exc:
        log.warning("%s", exc)
        raise Abort(str(exc)) from None
