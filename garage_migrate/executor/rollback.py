"""Rolling nodes back to 0.7 with their verified metadata backups, through a step runner.

Per node: stop, switch the binary back to the recorded original, restore the metadata from
this migration's verified backup (the current dir is moved aside, never deleted), start on
the original version; then the cluster must be healthy and pass a sync gate. Used by the
rollback flow and by the executor's "roll back every node" decision.
"""

from __future__ import annotations

import asyncio

from ..journal import in_step
from ..plan import MigrationOptions
from ..steps import Runtime
from .interfaces import StepRunner


async def rollback_nodes(rt: Runtime, steps: StepRunner, nodes: list[str]) -> None:
    """Stop, switch back, restore and start ``nodes`` (together), then check health."""
    async def one(node: str):
        before = rt.ledger.node(node).version_before
        rt.ledger.check_holder()  # a superseded process never acts
        with in_step("rollback", "stop"):
            await steps.stop_node(rt, node)
        with in_step("rollback", "switch"):
            await steps.switch_binary(rt, node, "source")
        with in_step("rollback", "restore"):
            await steps.restore_node(rt, node)
        with in_step("rollback", "start"):
            await steps.start_node(rt, node, before)
        await rt.ledger.record_step(node, "rollback", "done", f"back on {before}")
    results = await asyncio.gather(*(one(n) for n in nodes), return_exceptions=True)
    failed = {n: r for n, r in zip(nodes, results) if isinstance(r, BaseException)}
    if failed:
        raise next(iter(failed.values()))
    with in_step("rollback", "wait-healthy"):
        await steps.wait_healthy(rt, [n.name for n in rt.facts.nodes], "all")


async def sync_gate_after_rollback(rt: Runtime, steps: StepRunner, gate_deadline_s: float):
    """The sync gate that ends a rollback, recorded in the ledger (``sync-rollback``).

    It reports; it does not fail the rollback, which is done by then.
    """
    with in_step("rollback", "sync-gate"):
        outcome = await steps.sync_gate(rt, MigrationOptions(gate_deadline_s=gate_deadline_s), "rollback")
    await rt.ledger.record_gate("sync-rollback", status=outcome.status, reasons=list(outcome.reasons))
    if outcome.status != "passed":
        rt.log.warning("sync gate after the rollback: %s (%s)", outcome.status, "; ".join(outcome.reasons))
    return outcome


async def rollback_all(rt: Runtime, steps: StepRunner, gate_deadline_s: float = 300.0) -> None:
    """Roll every node back (the "roll back every node" decision), ending with the sync gate."""
    await rt.ledger.event("rollback", "rolling back every node")
    await rollback_nodes(rt, steps, [n.name for n in rt.facts.nodes])
    await sync_gate_after_rollback(rt, steps, gate_deadline_s)
    await rt.ledger.set(state="rolled-back")
