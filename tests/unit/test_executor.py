"""Every branch of the executor, Prefect-free: a scripted step runner, a scripted decider, a
fake clock, a real ledger in a temp dir (issue 9 §6).

The step runner (:mod:`fakes`) records each call instead of touching a node; the decider
answers from a script and records each question; the clock advances when slept on, so no
test waits.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from garage_migrate.errors import MigrationAborted, StepError, SupersededError
from garage_migrate.executor import Executor
from garage_migrate.gates import FakeClock
from garage_migrate.ledger import Ledger
from garage_migrate.ledger_model import Holder
from garage_migrate.plan import FanoutPolicy, MigrationOptions, make_plan
from garage_migrate.steps import Runtime

from builders import inventory_and_facts
from fakes import FakeSteps, ScriptedDecider

OPTS = MigrationOptions(watch_s=10.0)
MID = "m1"


def run(coro):
    return asyncio.run(coro)


def _setup(tmp_path, procedure="minimal-downtime", versions=None, per_zone=1):
    inv, facts = inventory_and_facts({"dc1": per_zone, "dc2": per_zone, "dc3": per_zone}, versions=versions,
                                     backup_root=str(tmp_path))
    ledger = Ledger.open(tmp_path, inv.cluster, MID, procedure)
    rt = Runtime(inv=inv, shells={}, ledger=ledger, facts=facts, log=logging.getLogger("test.executor"))
    return rt, make_plan(inv, facts, procedure, MID, OPTS)


def _executor(rt, plan, steps, decider, clock=None, auto_approve=False):
    return Executor(rt, plan, OPTS, steps=steps, decider=decider, clock=clock or FakeClock(), auto_approve=auto_approve)


def _flip_stops(steps: FakeSteps) -> int:
    # the flip's stops are the ones after the stage step
    staged = max(i for i, c in enumerate(steps.calls) if c[0] == "stage_binary") if any(
        c[0] == "stage_binary" for c in steps.calls) else len(steps.calls)
    return sum(1 for c in steps.calls[staged:] if c[0] == "stop_node")


# ---------------------------------------------------------------------------- approvals
def test_approval_approved_runs_every_phase_and_records_the_person(tmp_path):
    rt, plan = _setup(tmp_path)
    steps, decider = FakeSteps(), ScriptedDecider(approve_flip=["approve"])
    run(_executor(rt, plan, steps, decider).run())
    assert decider.asked == [("approval", "approve-flip")]
    rec = rt.ledger.refresh().gates["approve-flip"]
    assert (rec.decision, rec.by, rec.plan_digest) == ("approve", "person", plan.digest())
    assert {c[1] for c in steps.calls if c[0] == "start_node" and c[2] == "0.8.7"} == {"n1", "n2", "n3"}


def test_approval_aborted_stops_before_the_flip(tmp_path):
    rt, plan = _setup(tmp_path)
    steps, decider = FakeSteps(), ScriptedDecider(approve_flip=["abort"])
    with pytest.raises(MigrationAborted, match="approve-flip"):
        run(_executor(rt, plan, steps, decider).run())
    assert _flip_stops(steps) == 0
    assert not [c for c in steps.calls if c[0] == "switch_binary"]
    assert rt.ledger.refresh().gates["approve-flip"].decision == "abort"


def test_auto_approve_answers_a_clean_approval_and_nothing_else(tmp_path):
    rt, plan = _setup(tmp_path)
    steps, decider = FakeSteps(gates=["timeout"]), ScriptedDecider(sync_before=["proceed_anyway"])
    run(_executor(rt, plan, steps, decider, auto_approve=True).run())
    assert decider.asked == [("gate", "sync-before-1")]  # the gate still went to a person
    assert rt.ledger.refresh().gates["approve-flip"].by == "auto-approve"


# ---------------------------------------------------------------------------- sync gates
def test_sync_gate_that_passes_asks_nobody(tmp_path):
    rt, plan = _setup(tmp_path)
    steps, decider = FakeSteps(), ScriptedDecider(approve_flip=["approve"])
    run(_executor(rt, plan, steps, decider).run())
    assert [c[2] for c in steps.calls if c[0] == "sync_gate"] == ["sync-before", "sync-after"]
    assert [k for _, k in decider.asked] == ["approve-flip"]
    assert rt.ledger.refresh().gates["sync-before"].status == "passed"


def test_sync_gate_wait_more_runs_the_gate_again_until_it_passes(tmp_path):
    rt, plan = _setup(tmp_path)
    steps = FakeSteps(gates=["timeout", "timeout"])
    decider = ScriptedDecider(sync_before=["wait_more", "wait_more"], approve_flip=["approve"])
    run(_executor(rt, plan, steps, decider).run())
    assert [c[2] for c in steps.calls if c[0] == "sync_gate"] == ["sync-before"] * 3 + ["sync-after"]
    assert [k for _, k in decider.asked] == ["sync-before-1", "sync-before-2", "approve-flip"]
    gates = rt.ledger.refresh().gates
    assert (gates["sync-before"].status, gates["sync-before"].attempt) == ("passed", 3)
    assert gates["sync-before-1"].decision == "wait_more"


def test_sync_gate_proceed_anyway_is_recorded_and_goes_on(tmp_path):
    rt, plan = _setup(tmp_path)
    steps = FakeSteps(gates=["timeout"])
    decider = ScriptedDecider(sync_before=["proceed_anyway"], approve_flip=["approve"])
    run(_executor(rt, plan, steps, decider).run())
    data = rt.ledger.refresh()
    assert data.gates["sync-before-1"].decision == "proceed_anyway"
    assert data.gates["sync-before-1"].by == "person"
    pa = [e for e in data.events if e.kind == "proceed-anyway"]
    assert len(pa) == 1 and pa[0].reasons == ["n1: resync queue 12"]
    assert any(c[0] == "backup_metadata" for c in steps.calls)


def test_sync_gate_abort_stops_before_any_node_is_stopped(tmp_path):
    rt, plan = _setup(tmp_path)
    steps = FakeSteps(gates=["errored_blocks"])
    decider = ScriptedDecider(sync_before=["abort"])
    with pytest.raises(MigrationAborted, match="sync gate before"):
        run(_executor(rt, plan, steps, decider).run())
    assert not [c for c in steps.calls if c[0] == "stop_node"]


# ---------------------------------------------------------------------------- counters
@pytest.mark.parametrize("action", ["proceed_anyway", "abort"])
def test_counters_decision_proceeds_or_aborts(tmp_path, action):
    rt, plan = _setup(tmp_path)
    steps = FakeSteps(counters="failed")
    decider = ScriptedDecider(approve_flip=["approve"], counters=[action])
    ex = _executor(rt, plan, steps, decider)
    if action == "abort":
        with pytest.raises(MigrationAborted, match="counters"):
            run(ex.run())
        assert not [c for c in steps.calls if c[0] == "observe_once"]  # the watch never ran
    else:
        run(ex.run())
        assert [c for c in steps.calls if c[0] == "observe_once"]
    assert ("counters", "counters") in decider.asked
    assert rt.ledger.refresh().gates["counters"].decision == action


def test_counters_that_check_out_ask_nobody(tmp_path):
    rt, plan = _setup(tmp_path)
    decider = ScriptedDecider(approve_flip=["approve"])
    run(_executor(rt, plan, FakeSteps(), decider).run())
    assert ("counters", "counters") not in decider.asked


# ---------------------------------------------------------------------------- flip failure
def test_flip_failure_then_retry_that_succeeds(tmp_path):
    rt, plan = _setup(tmp_path)
    steps = FakeSteps(start_failures={"n2": 1})
    decider = ScriptedDecider(approve_flip=["approve"], flip_failure=["retry"])
    run(_executor(rt, plan, steps, decider).run())
    assert ("flip-failure", "flip-failure-1") in decider.asked
    n2_starts = [c for c in steps.calls if c[:2] == ("start_node", "n2") and c[2] == "0.8.7"]
    assert len(n2_starts) == 3  # flip start, its retry, the offline-repair round's start
    rec = rt.ledger.refresh().nodes["n2"].steps["flip:start"]
    assert (rec.status, rec.retried) == ("done", 1)
    # the failed start and the retried one are both attempts of the step
    assert [a.status for a in rec.attempts] == ["failed", "done"] and rec.code is None
    assert rt.ledger.doc.gates["flip-failure-1"].decision == "retry"


def test_flip_failure_then_rollback_restores_every_node(tmp_path):
    rt, plan = _setup(tmp_path)
    steps = FakeSteps(start_failures={"n3": 5})
    decider = ScriptedDecider(approve_flip=["approve"], flip_failure=["rollback"])
    with pytest.raises(MigrationAborted, match="rolled back"):
        run(_executor(rt, plan, steps, decider).run())
    assert {c[1] for c in steps.calls if c[0] == "restore_node"} == {"n1", "n2", "n3"}
    assert {c[1] for c in steps.calls if c[0] == "switch_binary" and c[2] == "source"} == {"n1", "n2", "n3"}
    data = rt.ledger.refresh()
    assert data.state == "rolled-back"
    assert data.gates["sync-rollback"].status == "passed"
    assert not [c for c in steps.calls if c[0] == "offline_repair"]
    # the rollback is a plan run by the executor: its steps are recorded per node, in its phases,
    # and it was shown in the question ("roll back runs this plan")
    for n in ("n1", "n2", "n3"):
        assert [data.nodes[n].steps[k].status for k in ("rollback-stop:stop", "rollback-switch:switch",
                                                        "rollback-restore:restore", "rollback-start:start")] == ["done"] * 4
    assert "Restore the metadata" in decider.descriptions["flip-failure-1"]
    rb = [c for c in steps.calls if c[0] in ("stop_node", "switch_binary", "restore_node", "start_node")][-12:]
    assert [c[0] for c in rb] == ["stop_node"] * 3 + ["switch_binary"] * 3 + ["restore_node"] * 3 + ["start_node"] * 3
    assert {c[2] for c in rb if c[0] == "start_node"} == {"0.7.3"}


# ---------------------------------------------------------------------------- resumption
def test_resumed_run_whose_plan_changed_asks_again_and_records_the_replan(tmp_path):
    rt, plan = _setup(tmp_path)
    run(_executor(rt, plan, FakeSteps(), ScriptedDecider(approve_flip=["approve"])).run())
    # n1 is already on 0.8 when the next run discovers the cluster: another plan, another digest
    rt2, plan2 = _setup(tmp_path, versions={"n1": "0.8.7"})
    assert plan2.digest() != plan.digest()
    decider = ScriptedDecider(approve_flip=["approve"])
    run(_executor(rt2, plan2, FakeSteps(), decider).run())
    assert decider.asked == [("approval", "approve-flip")]  # not reused from the old plan
    data = rt2.ledger.refresh()
    assert [e for e in data.events if e.kind == "replan"]
    assert data.gates["approve-flip"].plan_digest == plan2.digest()


def test_rerun_of_the_same_plan_reuses_the_approval_and_skips_done_steps(tmp_path):
    rt, plan = _setup(tmp_path)
    # the first run fails at the counters check (aborted), after the flip
    with pytest.raises(MigrationAborted):
        run(_executor(rt, plan, FakeSteps(counters="failed"),
                      ScriptedDecider(approve_flip=["approve"], counters=["abort"])).run())
    rt2, plan2 = _setup(tmp_path)
    steps, decider = FakeSteps(counters="failed"), ScriptedDecider(counters=["proceed_anyway"])
    run(_executor(rt2, plan2, steps, decider).run())
    # the approval was a person's for this very plan: reused; the counters, seen wrong again, are asked again
    assert decider.asked == [("counters", "counters")]
    # every node step was done in the first run: none runs again (step-level skip), but the
    # stage, which only looks when the right binary is there, looks again: the inventory's
    # binary may have changed since its record (executor.run.ALWAYS_OBSERVED)
    assert sorted(c[:2] for c in steps.calls if c[1] is not None) == [("stage_binary", n) for n in ("n1", "n2", "n3")]


def test_a_step_done_earlier_is_skipped_and_the_rest_runs(tmp_path):
    rt, plan = _setup(tmp_path)
    run(rt.ledger.record_step("n1", "rolling-backup:backup", "done", "earlier"))
    steps = FakeSteps()
    run(_executor(rt, plan, steps, ScriptedDecider(approve_flip=["approve"])).run())
    backups = [c[1] for c in steps.calls if c[0] == "backup_metadata"]
    assert backups == ["n2", "n3"]


# ---------------------------------------------------------------------------- supersession
def _take_over(tmp_path, rt) -> None:
    """Another attempt claims the migration (through its own handle on the same file)."""
    other = Ledger.open(tmp_path, rt.inv.cluster, MID, "minimal-downtime")
    other.mutate(lambda d: setattr(d, "holder", Holder(token="other", pid=2)), fenced=False)


def test_a_superseded_ledger_stops_the_executor_before_any_act(tmp_path):
    rt, plan = _setup(tmp_path)
    assert run(rt.ledger.claim(Holder(token="mine", pid=1), lambda cur: None)) is None
    _take_over(tmp_path, rt)
    steps = FakeSteps()
    with pytest.raises(SupersededError):
        run(_executor(rt, plan, steps, ScriptedDecider(approve_flip=["approve"])).run())
    assert steps.calls == []


def test_a_takeover_mid_run_stops_every_later_step(tmp_path):
    rt, plan = _setup(tmp_path)
    assert run(rt.ledger.claim(Holder(token="mine", pid=1), lambda cur: None)) is None
    taken = []

    def on_call(call):
        if call[0] == "stop_node" and not taken:
            taken.append(call)
            _take_over(tmp_path, rt)  # another attempt takes the migration over during n1's stop
    steps = FakeSteps(on_call=on_call)
    decider = ScriptedDecider(approve_flip=["approve"])
    with pytest.raises(SupersededError):
        run(_executor(rt, plan, steps, decider).run())
    after = steps.calls[steps.calls.index(("stop_node", "n1", None)) + 1:]
    assert after == []  # not the backup, not another node, not a question
    assert decider.asked == []


# ---------------------------------------------------------------------------- the watch window
def test_the_watch_window_is_timed_by_the_injected_clock(tmp_path):
    rt, plan = _setup(tmp_path)
    clock = FakeClock(100.0)
    steps = FakeSteps()
    run(_executor(rt, plan, steps, ScriptedDecider(approve_flip=["approve"]), clock=clock).run())
    samples = [c for c in steps.calls if c[0] == "observe_once"]
    assert sum(clock.sleeps) >= OPTS.watch_s and len(samples) == len(clock.sleeps) + 1
    assert clock.now >= 100.0 + OPTS.watch_s


# ---------------------------------------------------------------------------- the schedule (issue 9 §2)
class YieldingSteps(FakeSteps):
    """Fake steps that yield to the event loop inside every node step, recording its begin and
    end, so that what runs concurrently interleaves."""

    def __init__(self, fail=None, **kw):
        super().__init__(**kw)
        self.spans: list[tuple[str, str, str]] = []
        self.fail = fail or set()

    async def _span(self, step, node):
        self.spans.append(("begin", step, node))
        for _ in range(3):
            await asyncio.sleep(0)
        if (step, node) in self.fail:
            raise StepError("scripted failure", node=node)
        self.spans.append(("end", step, node))

    async def _done(self, step, node, arg=None):
        if node is not None:
            await self._span(step, node)
        return await super()._done(step, node, arg)

    async def start_node(self, rt, node, version):
        await self._span("start_node", node)
        return await super().start_node(rt, node, version)


def _concurrent(spans, step) -> int:
    """Most ``step`` spans open at once."""
    open_, most = 0, 0
    for edge, s, _n in spans:
        if s == step:
            open_ += 1 if edge == "begin" else -1
            most = max(most, open_)
    return most


def _run_with(tmp_path, fanout: FanoutPolicy, steps, per_zone=2):
    inv, facts = inventory_and_facts({"dc1": per_zone, "dc2": per_zone, "dc3": per_zone}, backup_root=str(tmp_path))
    ledger = Ledger.open(tmp_path, inv.cluster, MID, "minimal-downtime")
    rt = Runtime(inv=inv, shells={}, ledger=ledger, facts=facts, log=logging.getLogger("test.executor"))
    opts = MigrationOptions(watch_s=10.0, fanout=fanout)
    plan = make_plan(inv, facts, "minimal-downtime", MID, opts)
    ex = Executor(rt, plan, opts, steps=steps, decider=ScriptedDecider(approve_flip=["approve"]), clock=FakeClock())
    return ex, plan


@pytest.mark.parametrize("limit,expected", [(1, 1), (2, 2)])
def test_max_parallel_nodes_bounds_a_rolling_round(tmp_path, limit, expected):
    steps = YieldingSteps()
    ex, plan = _run_with(tmp_path, FanoutPolicy(max_parallel_nodes=limit), steps)
    run(ex.run_wave(plan.phase("rolling-backup"), plan.phase("rolling-backup").waves[0]))
    assert _concurrent(steps.spans, "backup_metadata") == expected
    assert {n for _e, _s, n in steps.spans} == {"n1", "n2"}  # the round is zone dc1


def test_the_flip_stops_and_starts_every_node_together_with_max_parallel_nodes_1(tmp_path):
    steps = YieldingSteps()
    ex, plan = _run_with(tmp_path, FanoutPolicy(max_parallel_nodes=1), steps)
    flip = plan.phase("flip")
    for w in flip.waves[:3]:
        run(ex.run_wave(flip, w))
    for step in ("stop_node", "switch_binary", "start_node"):
        assert _concurrent(steps.spans, step) == 6, step
    # every stop began before any node was switched, every switch before any start
    kinds = [s for e, s, _n in steps.spans if e == "begin"]
    assert kinds == ["stop_node"] * 6 + ["switch_binary"] * 6 + ["start_node"] * 6


def test_a_failed_batch_ends_the_wave_before_the_next_batch(tmp_path):
    steps = YieldingSteps(fail={("backup_metadata", "n1")})
    ex, plan = _run_with(tmp_path, FanoutPolicy(max_parallel_nodes=1), steps)
    with pytest.raises(StepError, match="scripted"):
        run(ex.run_wave(plan.phase("rolling-backup"), plan.phase("rolling-backup").waves[0]))
    assert not [c for c in steps.calls if c[1] == "n2"]  # n2 was never stopped
    assert rt_step(ex, "n1", "rolling-backup:backup").status == "failed"


def rt_step(ex, node, key):
    return ex.rt.ledger.refresh().nodes[node].steps[key]
