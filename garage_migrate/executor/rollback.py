"""Rolling nodes back to 0.7 with their verified metadata backups: a plan
(:mod:`garage_migrate.rollback_plan`) executed by the :class:`~.run.Executor`.

Used by the rollback flow (which begins with the plan's approval) and by the executor's
"roll back every node" answer to a failed flip (the answer is the approval: the question
showed the plan).
"""

from __future__ import annotations

import logging

from ..gates import Clock
from ..plan import MigrationOptions, MigrationPlan
from ..rollback_plan import make_rollback_plan, new_tag
from ..steps import Runtime
from .interfaces import Decider, Reporter, StepRunner
from .planfile import save_plan

#: How long the sync gate after a rollback waits before asking a person.
ROLLBACK_GATE_DEADLINE_S = 300.0


def rollback_plan_for(rt: Runtime, *, nodes: list[str] | None = None, approve: bool = True,
                      tag: str | None = None) -> MigrationPlan:
    """The rollback plan of ``nodes`` (default: all) of the migration in ``rt``'s ledger."""
    return make_rollback_plan(rt.inv, rt.facts, rt.ledger.doc, tag=tag or new_tag(), nodes=nodes, approve=approve)


async def run_rollback(rt: Runtime, plan: MigrationPlan, *, steps: StepRunner, decider: Decider,
                       reporter: Reporter, clock: Clock | None = None, auto_approve: bool = False,
                       gate_deadline_s: float = ROLLBACK_GATE_DEADLINE_S,
                       log: logging.Logger | logging.LoggerAdapter | None = None) -> None:
    """Execute the rollback ``plan``; the ledger ends ``rolled-back`` when every node went back.

    The plan is saved beside the ledger (``plan-<digest>.json``) like a migration's, and its
    commands are journalled and checked against it the same way.
    """
    from .run import Executor  # run imports this module

    led = rt.ledger
    save_plan(plan, led.path.parent)
    await led.event("rollback", f"rolling back {', '.join(sorted({s.node for s in plan.steps() if s.node}))} "
                                f"(plan {plan.digest()})")
    # its own artifact key: the migration's plan artifact stays what the migration ran
    await reporter.plan(f"{plan.migration_id}-rollback", plan.to_markdown(), "The rollback plan")
    opts = MigrationOptions(gate_deadline_s=gate_deadline_s, gate_consecutive=2, watch_s=0.0)
    ex = Executor(rt, plan, opts, steps=steps, decider=decider, reporter=reporter, clock=clock,
                  auto_approve=auto_approve, log=log)
    await ex.run_phases()
    if {s.node for s in plan.steps() if s.node} == {n.name for n in rt.facts.nodes}:
        await led.set(state="rolled-back")
