"""The retry of one node (issue 11 §1): which steps it runs, skips and holds, the zone rule,
the saved plan it runs, and a normal run carrying on after it. Prefect-free: a real ledger in a
temp dir, the scripted step runner of the executor's tests, shells that only answer the
service state."""

from __future__ import annotations

import asyncio
import logging

import pytest

from garage_migrate import commands as C
from garage_migrate.errors import MigrationAborted, PlanError, StepError
from garage_migrate.executor import Executor
from garage_migrate.executor.planfile import load_plan, save_plan
from garage_migrate.executor.retry import check_zones, retry_node, select, zones_down_at_once
from garage_migrate.gates import FakeClock
from garage_migrate.ledger import Ledger, attempts_summary
from garage_migrate.plan import FanoutPolicy, MigrationOptions, make_plan
from garage_migrate.ssh import Result
from garage_migrate.steps import Runtime

from builders import inventory_and_facts
from fakes import FakeSteps, ScriptedDecider

OPTS = MigrationOptions(watch_s=1.0)
MID = "m1"


def run(coro):
    return asyncio.run(coro)


class FailingSteps(FakeSteps):
    """Fake steps whose ``(step, node)`` in ``fail`` raise the first time they run."""

    def __init__(self, fail=(), **kw):
        super().__init__(**kw)
        self.fail = set(fail)

    async def _done(self, step, node, arg=None):
        if (step, node) in self.fail:
            self.fail.discard((step, node))
            self._rec(step, node, arg)
            raise StepError(f"scripted {step} failure", node=node)
        return await super()._done(step, node, arg)

    async def backup_metadata(self, rt, node):
        if ("backup_metadata", node) in self.fail:
            return await self._done("backup_metadata", node)
        return await super().backup_metadata(rt, node)


class ServiceShells:
    """Node shells that answer ``is-active`` only: ``down`` nodes are inactive."""

    def __init__(self, inv, down=()):
        self.inv = inv
        self.down = set(down)

    def __call__(self, name):
        outer = self

        class Shell:
            async def run(self, cmd, check=True):
                assert cmd == C.service_status(outer.inv.node(name).ctx), cmd  # the one observation asked
                rc = 3 if name in outer.down else 0
                return Result("inactive\n" if rc else "active\n", "", rc, None, rc)
        return Shell()


class HeldLock:
    """What ``hold`` returns: the retry stops its heartbeats and keeps the hold."""

    def __init__(self):
        self.stopped = 0

    async def stop_heartbeats(self):
        self.stopped += 1


def _setup(tmp_path, fanout=None, down=()):
    inv, facts = inventory_and_facts({"dc1": 1, "dc2": 1, "dc3": 1}, backup_root=str(tmp_path))
    ledger = Ledger.open(tmp_path, inv.cluster, MID, "minimal-downtime")
    shells = ServiceShells(inv, down)
    rt = Runtime(inv=inv, shells=shells, ledger=ledger, facts=facts, log=logging.getLogger("test.retry"))
    opts = MigrationOptions(watch_s=1.0, fanout=fanout or FanoutPolicy())
    return rt, make_plan(inv, facts, "minimal-downtime", MID, opts), opts


def _first_run(rt, plan, opts, steps):
    """The migration's run, which fails; its plan saved beside the ledger as run_migration does."""
    save_plan(plan, rt.ledger.path.parent)
    ex = Executor(rt, plan, opts, steps=steps, decider=ScriptedDecider(approve_flip=["approve"]), clock=FakeClock())
    with pytest.raises(StepError):
        run(ex.run())
    run(rt.ledger.set(state="failed", error="StepError: scripted"))
    return load_plan(rt.ledger.path.parent, plan.digest())


def _do(sel) -> list[tuple[str, str]]:
    return [(p.key, p.action) for p in sel.steps]


# ---------------------------------------------------------------------------- the saved plan
def test_the_saved_plan_reads_back_as_the_plan_that_was_saved(tmp_path):
    _rt, plan, _o = _setup(tmp_path)
    loaded = load_plan(save_plan(plan, tmp_path).parent, plan.digest())
    assert loaded.digest() == plan.digest() and loaded.to_json() == plan.to_json()
    assert [s.allowed() for s in loaded.steps()] == [s.allowed() for s in plan.steps()]
    with pytest.raises(PlanError, match="not at"):
        load_plan(tmp_path, "0" * 16)


# ---------------------------------------------------------------------------- selection
def test_a_failed_backup_retries_the_backup_and_the_start_and_skips_the_stop(tmp_path):
    rt, plan, opts = _setup(tmp_path)
    saved = _first_run(rt, plan, opts, FailingSteps(fail={("backup_metadata", "n2")}))
    sel = select(saved, rt.ledger.refresh(), "n2")
    assert sel.phase.name == "rolling-backup" and sel.zone == "dc2"
    assert _do(sel) == [("rolling-backup:stop", "skip"), ("rolling-backup:backup", "run"),
                        ("rolling-backup:start", "run")]
    assert [(w.name, s.arg("scope")) for w, s in sel.gates] == [("healthy-dc2", "dc2")]
    # the same, named; a kind names its first step not done
    assert _do(select(saved, rt.ledger.doc, "n2", "backup")) == _do(sel)
    assert _do(select(saved, rt.ledger.doc, "n2", "rolling-backup:start")) == _do(sel)
    # n1 finished its round: nothing failed there
    with pytest.raises(PlanError, match="no failed step"):
        select(saved, rt.ledger.doc, "n1")
    assert {a for _k, a in _do(select(saved, rt.ledger.doc, "n1", "rolling-backup:backup"))} == {"skip"}
    with pytest.raises(PlanError, match="not a node"):
        select(saved, rt.ledger.doc, "n9")
    with pytest.raises(PlanError, match="no step 'reboot'"):
        select(saved, rt.ledger.doc, "n2", "reboot")


def test_a_step_left_running_by_a_dead_process_is_the_one_retried(tmp_path):
    rt, plan, _o = _setup(tmp_path)
    run(rt.ledger.record_step("n3", "preflight", "done"))
    run(rt.ledger.record_step("n3", "rolling-backup:stop", "done"))
    run(rt.ledger.record_step("n3", "rolling-backup:backup", "running"))
    assert _do(select(plan, rt.ledger.refresh(), "n3"))[1] == ("rolling-backup:backup", "run")


def test_the_flip_retries_one_node_only_when_it_alone_is_behind(tmp_path):
    rt, plan, _o = _setup(tmp_path)
    for n in ("n1", "n2", "n3"):
        for k in ("stop", "switch"):
            run(rt.ledger.record_step(n, f"flip:{k}", "done"))
    run(rt.ledger.record_step("n1", "flip:start", "done"))
    run(rt.ledger.record_step("n3", "flip:start", "done"))
    run(rt.ledger.record_step("n2", "flip:start", "failed"))
    sel = select(plan, rt.ledger.refresh(), "n2")
    assert _do(sel) == [("flip:stop", "skip"), ("flip:switch", "skip"), ("flip:start", "run")]
    assert [s.arg("scope") for _w, s in sel.gates] == ["all"]
    # n2's stop failed while the others stopped: its stop runs; the switch is every node's at once
    rt2, plan2, _o = _setup(tmp_path / "b")
    run(rt2.ledger.record_step("n1", "flip:stop", "done"))
    run(rt2.ledger.record_step("n3", "flip:stop", "done"))
    run(rt2.ledger.record_step("n2", "flip:stop", "failed"))
    sel = select(plan2, rt2.ledger.refresh(), "n2")
    assert _do(sel) == [("flip:stop", "run"), ("flip:switch", "held"), ("flip:start", "held")]
    assert "n1, n3 did not do it yet" in sel.steps[1].why


def test_a_finished_migration_has_nothing_to_retry(tmp_path):
    rt, plan, _o = _setup(tmp_path)
    run(rt.ledger.record_step("n1", "preflight", "failed"))
    run(rt.ledger.set(state="done"))
    with pytest.raises(PlanError, match="is done"):
        select(plan, rt.ledger.refresh(), "n1")


# ---------------------------------------------------------------------------- zones down
def test_a_retry_that_stops_a_node_is_refused_while_another_zone_is_down(tmp_path):
    rt, plan, _o = _setup(tmp_path)
    run(rt.ledger.record_step("n2", "rolling-backup:stop", "failed"))
    sel = select(plan, rt.ledger.refresh(), "n2")
    assert sel.stops_node
    assert zones_down_at_once(plan, plan.phase("rolling-backup")) == 1
    assert zones_down_at_once(plan, plan.phase("flip")) == 3
    assert zones_down_at_once(plan, plan.phase("stage")) == 0
    assert check_zones(plan, sel, set()) == []
    assert check_zones(plan, sel, {"n2"}) == ["dc2"]  # down already: the retry takes nothing more down
    with pytest.raises(PlanError, match=r"take zone dc2 down while zone\(s\) dc3 are down already \(n3 not running\)"):
        check_zones(plan, sel, {"n3"})
    # a retry that stops nothing (the node's stop is done) is not refused by the zone rule
    run(rt.ledger.record_step("n2", "rolling-backup:stop", "done"))
    run(rt.ledger.record_step("n2", "rolling-backup:backup", "failed"))
    assert check_zones(plan, select(plan, rt.ledger.refresh(), "n2"), {"n2", "n3"}) == ["dc2", "dc3"]


def test_retry_node_refuses_by_observation_and_runs_nothing(tmp_path):
    rt, plan, opts = _setup(tmp_path, down={"n3"})
    saved = _first_run(rt, plan, opts, FailingSteps(fail={("stop_node", "n2")}))
    steps, lock = FakeSteps(), HeldLock()

    async def hold(_rt):
        return lock
    with pytest.raises(PlanError, match="max_zones_down"):
        run(retry_node(rt, saved, "n2", hold=hold, steps=steps))
    assert steps.calls == [] and lock.stopped == 1
    assert "refused" in rt.ledger.refresh().events[-1].message


# ---------------------------------------------------------------------------- running it
def test_retry_then_a_normal_run_carries_on_and_nothing_runs_twice(tmp_path):
    rt, plan, opts = _setup(tmp_path, down={"n2"})
    first = FailingSteps(fail={("backup_metadata", "n2")})
    saved = _first_run(rt, plan, opts, first)
    steps, lock = FakeSteps(), HeldLock()

    async def hold(_rt):
        return lock
    report = run(retry_node(rt, saved, "n2", hold=hold, steps=steps))
    assert report.ran == ["rolling-backup:backup", "rolling-backup:start"]
    assert report.skipped == [("rolling-backup:stop", "done earlier in this migration (ledger)")]
    assert report.gates == [("healthy-dc2:wait-healthy:dc2", "passed")] and report.zones_down_before == ["dc2"]
    assert [c[:2] for c in steps.calls] == [("backup_metadata", "n2"), ("start_node", "n2"), ("wait_healthy", None)]
    assert lock.stopped == 1
    doc = rt.ledger.refresh()
    assert len(doc.nodes["n2"].steps["rolling-backup:backup"].attempts) == 2
    assert attempts_summary(doc.nodes["n2"]) == "5 (rolling-backup:backup ×2)"
    assert "×2" in next(r for r in rt.ledger.table_rows(["rolling-backup:backup"])
                        if r["node"] == "n2")["rolling-backup:backup"]
    assert [e.kind for e in doc.events[-2:]] == ["retry-node", "retry-node"]
    # the same retry again (named: nothing failed now) runs nothing and does not wait again
    again = FakeSteps()
    report = run(retry_node(rt, saved, "n2", "backup", hold=hold, steps=again))
    assert report.ran == [] and again.calls == []
    assert report.gates == [("healthy-dc2:wait-healthy:dc2", "skipped: done earlier in this migration (ledger)")]
    # the migration's next run: n1 and n2 are not touched again before the flip, n3 gets its round
    rest = FakeSteps()
    ex = Executor(rt, plan, opts, steps=rest, decider=ScriptedDecider(approve_flip=["approve"]), clock=FakeClock())
    run(ex.run())
    before_flip = rest.calls[:next(i for i, c in enumerate(rest.calls) if c[0] == "stage_binary")]
    assert [c[:2] for c in before_flip] == [("stop_node", "n3"), ("backup_metadata", "n3"), ("start_node", "n3"),
                                            ("wait_healthy", None)]
    backups = [c[1] for c in first.calls + steps.calls + rest.calls if c[0] == "backup_metadata"]
    assert sorted(backups) == ["n1", "n2", "n2", "n3"]  # n2's failed attempt, and one backup each


def test_a_retry_that_fails_again_records_it_and_runs_nothing_after(tmp_path):
    rt, plan, opts = _setup(tmp_path, down={"n2"})
    saved = _first_run(rt, plan, opts, FailingSteps(fail={("backup_metadata", "n2")}))
    steps = FailingSteps(fail={("backup_metadata", "n2")})

    async def hold(_rt):
        return HeldLock()
    with pytest.raises(StepError):
        run(retry_node(rt, saved, "n2", hold=hold, steps=steps))
    assert [c[:2] for c in steps.calls] == [("backup_metadata", "n2")]
    doc = rt.ledger.refresh()
    assert doc.state == "failed" and "scripted backup_metadata failure" in doc.error
    assert [a.status for a in doc.nodes["n2"].steps["rolling-backup:backup"].attempts] == ["failed", "failed"]


def test_a_retry_asks_nobody():
    from garage_migrate.executor.retry import _NoQuestions

    with pytest.raises(MigrationAborted, match="does not ask"):
        run(_NoQuestions().ask("approval", "approve-flip", ""))


# ---------------------------------------------------------------------------- corrected parameters
def test_a_rerun_with_corrected_parameters_asks_the_approvals_of_the_changed_plan_again(tmp_path):
    # the first run's parameters made it fail after the flip's approval (a scripted failure of
    # n1's offline repair stands for what a wrong parameter did)
    rt, plan, opts = _setup(tmp_path, fanout=FanoutPolicy(max_parallel_nodes=1))
    _first_run(rt, plan, opts, FailingSteps(fail={("offline_repair", "n1")}))
    assert rt.ledger.refresh().gates["approve-flip"].plan_digest == plan.digest()
    # the corrected run, same migration id: another plan, so the approval is asked again
    rt2, plan2, opts2 = _setup(tmp_path, fanout=FanoutPolicy(max_parallel_nodes=2))
    assert plan2.digest() != plan.digest()
    decider, steps = ScriptedDecider(approve_flip=["approve"]), FakeSteps()
    run(Executor(rt2, plan2, opts2, steps=steps, decider=decider, clock=FakeClock()).run())
    assert decider.asked == [("approval", "approve-flip")]
    doc = rt2.ledger.refresh()
    assert doc.gates["approve-flip"].plan_digest == plan2.digest() and [e for e in doc.events if e.kind == "replan"]
    assert [c[1] for c in steps.calls if c[0] == "offline_repair"] == ["n1", "n2", "n3"]
    assert not [c for c in steps.calls if c[0] == "backup_metadata"]  # done in the first run
