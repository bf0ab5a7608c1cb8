"""The simultaneous restart as one unit (executor/flip.py): every stop released at once, a
barrier before any start, the ledger in a few batched writes, and SIGTERM/SIGINT held until
the barrier is complete (fault row 25). Prefect-free, over the fakes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from garage_migrate.errors import MigrationAborted, StepError
from garage_migrate.executor import Executor
from garage_migrate.gates import FakeClock
from garage_migrate.ledger import Ledger
from garage_migrate.plan import MigrationOptions, make_plan
from garage_migrate.steps import Runtime

from builders import inventory_and_facts
from fakes import FakeSteps, ScriptedDecider

OPTS = MigrationOptions(watch_s=0.0)


def _setup(tmp_path, per_zone=2):
    inv, facts = inventory_and_facts({"dc1": per_zone, "dc2": per_zone, "dc3": per_zone}, backup_root=str(tmp_path))
    ledger = Ledger.open(tmp_path, inv.cluster, "m1", "minimal-downtime")
    rt = Runtime(inv=inv, shells={}, ledger=ledger, facts=facts, log=logging.getLogger("test.flip"))
    return rt, make_plan(inv, facts, "minimal-downtime", "m1", OPTS)


def _executor(rt, plan, steps, **answers):
    return Executor(rt, plan, OPTS, steps=steps, decider=ScriptedDecider(approve_flip=["approve"], **answers),
                    clock=FakeClock())


class BarrierSteps(FakeSteps):
    """Fake steps that yield to the loop inside each call and record how many of a kind were
    in flight at once, and in which order the flip's calls began and ended."""

    def __init__(self, *a, on_stop=None, **kw):
        super().__init__(*a, **kw)
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.order: list[tuple[str, str, str]] = []
        self.in_flip = False
        self.on_stop = on_stop

    async def flip(self, rt, unit):
        self.in_flip = True
        try:
            return await super().flip(rt, unit)
        finally:
            self.in_flip = False

    async def _timed(self, kind, node, call):
        if not self.in_flip:
            return await call()
        self.order.append(("begin", kind, node))
        self.in_flight[kind] = self.in_flight.get(kind, 0) + 1
        self.peak[kind] = max(self.peak.get(kind, 0), self.in_flight[kind])
        for _ in range(5):
            await asyncio.sleep(0)  # let every other released call begin
        try:
            return await call()
        finally:
            self.in_flight[kind] -= 1
            self.order.append(("end", kind, node))

    async def stop_node(self, rt, node):
        if self.in_flip and self.on_stop is not None:
            self.on_stop(node)
        return await self._timed("stop", node, lambda: FakeSteps.stop_node(self, rt, node))

    async def switch_binary(self, rt, node, to="target"):
        return await self._timed("switch", node, lambda: FakeSteps.switch_binary(self, rt, node, to))

    async def start_node(self, rt, node, version):
        return await self._timed("start", node, lambda: FakeSteps.start_node(self, rt, node, version))


def test_every_stop_is_released_at_once_and_no_start_before_the_barrier(tmp_path):
    rt, plan = _setup(tmp_path)
    steps = BarrierSteps()
    asyncio.run(_executor(rt, plan, steps).run())
    nodes = sorted(n.name for n in rt.facts.nodes)
    assert steps.peak == {"stop": 6, "switch": 6, "start": 6}  # released together, not in a loop
    first_start = steps.order.index(next(e for e in steps.order if e[1] == "start"))
    before = steps.order[:first_start]
    assert sorted(n for (ev, k, n) in before if ev == "end" and k == "stop") == nodes
    assert sorted(n for (ev, k, n) in before if ev == "end" and k == "switch") == nodes
    # one StepRunner call for the whole window, and every node's records under the plan's keys
    assert [c for c in steps.calls if c[0] == "flip"] == [("flip", None, tuple(n.name for n in rt.facts.nodes))]
    doc = rt.ledger.refresh()
    for n in nodes:
        assert {k: doc.nodes[n].steps[k].status for k in ("flip:stop", "flip:switch", "flip:start")} == {
            "flip:stop": "done", "flip:switch": "done", "flip:start": "done"}
        assert [a.status for a in doc.nodes[n].steps["flip:stop"].attempts] == ["done"]


def test_the_ledger_is_written_in_a_few_batches_whatever_the_number_of_nodes(tmp_path, monkeypatch):
    rt, plan = _setup(tmp_path, per_zone=8)
    writes: list[str] = []
    real = Ledger._write_unlocked
    steps = BarrierSteps()

    def counting(self, doc):
        if steps.in_flip:
            writes.append("w")
        return real(self, doc)
    monkeypatch.setattr(Ledger, "_write_unlocked", counting)
    asyncio.run(_executor(rt, plan, steps).run())
    assert steps.peak["stop"] == 24
    assert len(writes) == 3  # stops running; stop+switch results and starts running; start results


def test_a_failed_stop_starts_no_node(tmp_path):
    rt, plan = _setup(tmp_path)

    def fail_n3(node):
        if node == "n3":
            raise StepError("daemon still running 120s after SIGINT", node=node)
    steps = BarrierSteps(on_stop=fail_n3)
    with pytest.raises(StepError, match="still running"):
        asyncio.run(_executor(rt, plan, steps).run())
    assert not [e for e in steps.order if e[1] == "start"]
    assert not [c for c in steps.calls if c[0] == "start_node" and c[2] == "0.8.7"]
    doc = rt.ledger.refresh()
    assert doc.nodes["n3"].steps["flip:stop"].status == "failed"
    assert "flip:switch" not in doc.nodes["n3"].steps  # never run
    assert doc.nodes["n1"].steps["flip:switch"].status == "done"  # the others were switched, not started


class Cancelled(BaseException):
    """What the test's SIGTERM handler raises (Prefect's raises TerminationSignal)."""


@pytest.fixture
def sigterm_raises():
    def handler(signum, frame):
        raise Cancelled(signum)
    previous = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, previous)


def test_a_sigterm_during_the_stops_is_held_until_every_node_runs_the_target(tmp_path, sigterm_raises):
    rt, plan = _setup(tmp_path)
    sent = []

    def cancel_once(node):
        if not sent:
            sent.append(node)
            os.kill(os.getpid(), signal.SIGTERM)  # the worker's SIGTERM, in the middle of the stops
    steps = BarrierSteps(on_stop=cancel_once)
    with pytest.raises(Cancelled):
        asyncio.run(_executor(rt, plan, steps).run())
    nodes = sorted(n.name for n in rt.facts.nodes)
    doc = rt.ledger.refresh()
    assert all(doc.nodes[n].steps["flip:start"].status == "done" for n in nodes)  # the barrier finished
    ev = [e for e in doc.events if e.kind == "cancel-deferred"]
    assert len(ev) == 1 and "SIGTERM at" in ev[0].message and "every node is on 0.8.7" in ev[0].message
    assert not [c for c in steps.calls if c[0] == "wait_healthy" and c[2] == "all"][1:]  # nothing after it
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises  # outside the flip: as before


def test_a_cancel_held_while_a_start_fails_asks_nobody_and_ends_the_run(tmp_path, sigterm_raises):
    rt, plan = _setup(tmp_path)
    steps = BarrierSteps(start_failures={"n2": 1}, on_stop=lambda n: n == "n1" and os.kill(os.getpid(), signal.SIGTERM))
    ex = _executor(rt, plan, steps, flip_failure=["retry"])
    with pytest.raises(Cancelled):
        asyncio.run(ex.run())
    assert not [k for k in ex.decisions.decider.asked if k[0] == "flip-failure"]  # nobody can answer now
    doc = rt.ledger.refresh()
    assert doc.nodes["n2"].steps["flip:start"].status == "failed"
    ev = next(e for e in doc.events if e.kind == "cancel-deferred")
    assert "the start failed on n2" in ev.message and ev.nodes == ["n2"]


def test_a_sigint_with_the_default_handler_becomes_keyboard_interrupt_after_the_barrier(tmp_path):
    rt, plan = _setup(tmp_path, per_zone=1)
    # Python's own handler, as in a terminal: a suite started in the background (nohup, `&` in
    # a script) inherits SIGINT ignored, and Python then leaves it ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        steps = BarrierSteps(on_stop=lambda n: n == "n1" and os.kill(os.getpid(), signal.SIGINT))
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(_executor(rt, plan, steps).run())
    finally:
        signal.signal(signal.SIGINT, previous)
    doc = rt.ledger.refresh()
    assert all(doc.nodes[n].steps["flip:start"].status == "done" for n in ("n1", "n2", "n3"))
    assert [e.kind for e in doc.events].count("cancel-deferred") == 1


def test_without_a_signal_the_flip_ends_and_the_run_goes_on(tmp_path):
    rt, plan = _setup(tmp_path, per_zone=1)
    steps = BarrierSteps()
    asyncio.run(_executor(rt, plan, steps).run())
    assert rt.ledger.refresh().state != "failed"
    assert not [e for e in rt.ledger.doc.events if e.kind == "cancel-deferred"]
    assert ("wait_healthy", None, "all") in steps.calls
    with pytest.raises(MigrationAborted):
        raise MigrationAborted("sanity: the error type the deferral uses exists")


def test_a_retried_start_is_a_unit_of_the_failed_nodes_and_records_the_decision(tmp_path):
    rt, plan = _setup(tmp_path, per_zone=1)
    steps = BarrierSteps(start_failures={"n2": 1})
    asyncio.run(_executor(rt, plan, steps, flip_failure=["retry"]).run())
    rec = rt.ledger.refresh().nodes["n2"].steps["flip:start"]
    assert rec.status == "done" and rec.retried == 1
    assert [a.status for a in rec.attempts] == ["failed", "done"]
    assert [c for c in steps.calls if c[0] == "flip"][-1] == ("flip", None, ("n2",))  # the helper's start only


def test_where_a_switch_keeps_the_old_config_is_in_the_ledger_before_any_stop_is_released(tmp_path):
    from garage_migrate.executor.flip import FlipUnit, run_barrier
    from garage_migrate.steps import StepResult

    rt, plan = _setup(tmp_path, per_zone=1)
    flip = plan.phase("flip")
    waves = {w.name: tuple(w.steps) for w in flip.waves}
    unit = FlipUnit("flip", "0.8.7", waves["stop"], waves["switch"], waves["start"])
    keep = {"n1": {"config_kept": "/etc/garage.toml.garage-migrate.before-0.8"}}
    seen = {}

    async def stop(node, release):
        # read from the file, as a run taking over after a crash right here would read it
        seen[node] = Ledger.open(tmp_path, rt.inv.cluster, "m1", "minimal-downtime").node(node).config_kept
        assert await release()
        return StepResult("stop", node, "done", "")

    async def other(node, release=None):
        return StepResult("x", node, "done", "", {"version": "0.8.7"})
    asyncio.run(run_barrier(rt, unit, stop=stop, switch=other, start=other, before=keep))
    assert seen["n1"] == "/etc/garage.toml.garage-migrate.before-0.8"
    assert all(v is None for n, v in seen.items() if n != "n1") and len(seen) == 3


def _unit(plan):
    from garage_migrate.executor.flip import FlipUnit

    waves = {w.name: tuple(w.steps) for w in plan.phase("flip").waves}
    return FlipUnit("flip", "0.8.7", waves["stop"], waves["switch"], waves["start"])


def _armed_calls(acted, *, fail_before_arming=(), never_arm=()):
    """Armed stop/start calls that record what acted (after a go), like the helper's."""
    from garage_migrate.errors import NotReleasedError
    from garage_migrate.steps import StepResult

    def armed(kind):
        async def call(node, release):
            if (kind, node) in fail_before_arming or node in fail_before_arming:
                raise StepError("cannot reach the node", node=node)
            if node in never_arm:
                await asyncio.sleep(3600)
            word = await release()
            if not word:
                raise NotReleasedError(f"{kind}: not released", node=node)
            acted.append((kind, node) if word is True or word == "go" else (kind, node, word))
            return StepResult(kind, node, "done", "", {"version": "0.8.7"})
        return call

    async def switch(node):
        acted.append(("switch", node))
        return StepResult("switch", node, "done", "")
    return armed("stop"), switch, armed("start")


def test_a_node_that_fails_before_arming_holds_every_stop_back_the_cluster_stays_up(tmp_path):
    from garage_migrate.errors import NotReleasedError
    from garage_migrate.executor.flip import run_barrier

    rt, plan = _setup(tmp_path, per_zone=1)
    acted = []
    stop, switch, start = _armed_calls(acted, fail_before_arming=("n2",))
    out = asyncio.run(run_barrier(rt, _unit(plan), stop=stop, switch=switch, start=start))
    assert acted == [] and out.failed_at == "stop"  # no node signalled, switched or started
    assert isinstance(out.failed["n2"], StepError) and not isinstance(out.failed["n2"], NotReleasedError)
    assert all(isinstance(out.failed[n], NotReleasedError) for n in ("n1", "n3"))
    codes = {n: rt.ledger.refresh().nodes[n].steps["flip:stop"].code for n in ("n1", "n2", "n3")}
    assert codes == {"n1": "NOT_RELEASED", "n2": "STEP_FAILED", "n3": "NOT_RELEASED"}


def test_a_node_that_never_arms_holds_every_stop_back_past_the_arming_deadline(tmp_path):
    from garage_migrate.executor.flip import run_barrier

    rt, plan = _setup(tmp_path, per_zone=1)
    acted = []
    stop, switch, start = _armed_calls(acted, never_arm=("n3",))

    async def scenario():
        task = asyncio.create_task(run_barrier(rt, _unit(plan), stop=stop, switch=switch, start=start,
                                               arm_timeout=0.2))
        await asyncio.sleep(1.0)
        assert acted == []  # n1 and n2 were aborted when the deadline passed, n3 still hangs
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(scenario())


def test_every_start_is_armed_with_the_stops_and_released_only_at_the_barrier_with_go_down(tmp_path):
    from garage_migrate.executor.flip import run_barrier

    rt, plan = _setup(tmp_path, per_zone=1)
    acted = []
    stop, switch, start = _armed_calls(acted)
    out = asyncio.run(run_barrier(rt, _unit(plan), stop=stop, switch=switch, start=start))
    kinds = [a[0] for a in acted]
    assert out.failed == {} and kinds.index("start") > max(i for i, k in enumerate(kinds) if k in ("stop", "switch"))
    # each start released as go-down: this unit's own stop saw its node down
    assert sorted(a[1:] for a in acted if a[0] == "start") == [("n1", "go-down"), ("n2", "go-down"), ("n3", "go-down")]
    assert out.times["released"] <= out.times["barrier"] <= out.times["done"]


def test_a_start_that_cannot_be_armed_holds_every_stop_back(tmp_path):
    from garage_migrate.executor.flip import run_barrier

    rt, plan = _setup(tmp_path, per_zone=1)
    acted = []
    stop, switch, start = _armed_calls(acted, fail_before_arming=(("start", "n1"),))
    out = asyncio.run(run_barrier(rt, _unit(plan), stop=stop, switch=switch, start=start))
    assert acted == [] and out.failed_at == "stop"  # nothing stopped: the cluster stays on the source
    # the cause comes first (the executor raises it), the nodes held back after it
    assert isinstance(next(iter(out.failed.values())), StepError) and "cannot reach" in str(out.failed["n1"])
    assert rt.ledger.refresh().nodes["n1"].steps["flip:start"].code == "STEP_FAILED"
