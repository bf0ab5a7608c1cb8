"""The executor's events (issue 11 §3), Prefect-free: a reporter that records what it is given."""

from __future__ import annotations

import asyncio
import logging

from garage_migrate.executor import Executor
from garage_migrate.gates import FakeClock
from garage_migrate.ledger import Ledger
from garage_migrate.plan import MigrationOptions, make_plan
from garage_migrate.steps import Runtime

from builders import inventory_and_facts
from fakes import FakeSteps, ScriptedDecider

OPTS = MigrationOptions(watch_s=1.0)


class RecordingReporter:
    """A :class:`~garage_migrate.executor.Reporter` that keeps the events (and drops the rest)."""

    def __init__(self):
        self.events: list[tuple] = []

    async def plan(self, *a): pass
    async def progress(self, *a): pass
    async def report(self, *a): pass

    async def event(self, name, migration_id, cluster, *, phase=None, node=None, message="", **data):
        self.events.append((name, migration_id, cluster, phase, node, data.get("key")))


def test_phases_questions_and_a_failed_node_are_events_with_migration_cluster_phase_and_node(tmp_path):
    inv, facts = inventory_and_facts({"dc1": 1, "dc2": 1, "dc3": 1}, backup_root=str(tmp_path))
    rt = Runtime(inv=inv, shells={}, ledger=Ledger.open(tmp_path, inv.cluster, "m1", "minimal-downtime"),
                 facts=facts, log=logging.getLogger("test.events"))
    plan = make_plan(inv, facts, "minimal-downtime", "m1", OPTS)
    decider = ScriptedDecider(approve_flip=["approve"], flip_failure=["retry"])
    rep = RecordingReporter()
    asyncio.run(Executor(rt, plan, OPTS, steps=FakeSteps(start_failures={"n2": 1}), decider=decider, reporter=rep,
                         clock=FakeClock()).run())
    ev = rep.events
    assert {(e[1], e[2]) for e in ev} == {("m1", inv.cluster)}
    phases = [(e[0], e[3]) for e in ev if e[0].startswith("phase.")]
    assert phases == [(k, p.name) for p in plan.phases for k in ("phase.started", "phase.finished")]
    asked = [(e[3], e[5]) for e in ev if e[0] == "approval.needed"]
    assert asked == [("approve-flip", "approve-flip"), ("flip", "flip-failure-1")]  # one per question
    assert [(e[3], e[4]) for e in ev if e[0] == "node.failed"] == [("flip", "n2")]
    # the failed node's event comes before the question about it
    names = [e[0] for e in ev]
    assert names.index("node.failed") < [i for i, e in enumerate(ev) if e[5] == "flip-failure-1"][0]
    assert len(decider.asked) == 2
