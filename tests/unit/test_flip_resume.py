"""A run killed inside the simultaneous restart, resumed (issue 12 §3), Prefect-free.

The first run is "killed" by its step runner raising at a chosen call (as a SIGKILL leaves it:
the ledger records what was done, the step in progress ``running``); a second executor over the
same ledger resumes it with a step runner that reports the nodes as they are now. It must look
at the nodes, say what it found in the ledger, stop again a node found on 0.7 whatever the
ledger says, start nobody on 0.8 before that, and stop or start nobody twice otherwise.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from garage_migrate.executor import Executor
from garage_migrate.executor.flipresume import NodeState, describe, interrupted, needs_stop
from garage_migrate.gates import FakeClock
from garage_migrate.ledger import Ledger
from garage_migrate.ledger_model import Event
from garage_migrate.plan import MigrationOptions, make_plan
from garage_migrate.steps import Runtime

from builders import inventory_and_facts
from fakes import FakeSteps, ScriptedDecider

OPTS = MigrationOptions(watch_s=10.0)
MID = "m1"


class Killed(BaseException):
    """The first run's process died here (nothing of it runs on)."""


def _rt(tmp_path):
    inv, facts = inventory_and_facts({"dc1": 1, "dc2": 1, "dc3": 1}, backup_root=str(tmp_path))
    ledger = Ledger.open(tmp_path, inv.cluster, MID, "minimal-downtime")
    rt = Runtime(inv=inv, shells={}, ledger=ledger, facts=facts, log=logging.getLogger("test.flip-resume"))
    return rt, make_plan(inv, facts, "minimal-downtime", MID, OPTS)


class KilledWhileAsking(ScriptedDecider):
    """The process died while it waited for a person's answer."""

    async def ask(self, kind, key, description, choices=()):
        raise Killed(key)


def _run(rt, plan, steps, decider=None):
    ex = Executor(rt, plan, OPTS, steps=steps, decider=decider or ScriptedDecider(), clock=FakeClock(),
                  auto_approve=True)
    asyncio.run(ex.run())


def _killed_at(tmp_path, when):
    """A first run killed at the first call for which ``when(call, calls)`` holds."""
    rt, plan = _rt(tmp_path)

    def on_call(call):
        if when(call, steps.calls):
            raise Killed(call)
    steps = FakeSteps(on_call=on_call)
    with pytest.raises(Killed):  # a failed 0.8 start waits for a person: killed while it waits
        _run(rt, plan, steps, KilledWhileAsking())
    return rt, plan, steps


def _ev(kind, message):
    return Event(t=0.0, kind=kind, message=message)


def test_interrupted_reads_the_last_flip_phase_event():
    assert not interrupted([])
    assert interrupted([_ev("phase", "start stage"), _ev("phase", "start flip")])
    assert not interrupted([_ev("phase", "start flip"), _ev("phase", "end flip")])
    assert interrupted([_ev("phase", "start flip"), _ev("phase", "end flip"), _ev("phase", "start flip")])
    assert not interrupted([_ev("takeover", "start flip")])


def test_needs_stop_and_what_the_event_says():
    states = {"n1": NodeState("n1", True, "0.8.7"), "n2": NodeState("n2", False, "0.8.7"),
              "n3": NodeState("n3", True, "0.7.3"), "n4": NodeState("n4", True, None)}
    assert [n for n, s in states.items() if needs_stop(s, "0.8.7")] == ["n3", "n4"]
    msg = describe(states, "0.8.7")
    assert "n1 running 0.8.7, n2 stopped (binary 0.8.7), n3 running 0.7.3, n4 running a daemon that does not answer" in msg
    assert "stopping n3, n4 first" in msg and "leaving n1 on 0.8.7" in msg


def test_killed_in_the_stop_wave_a_node_found_on_0_7_is_stopped_before_any_0_8_start(tmp_path):
    # killed while n3's stop ran: n1 and n2 are recorded stopped, n3's stop is not (a SIGKILL
    # leaves it "running"; the exception here lets the executor record it "failed")
    rt, plan, _ = _killed_at(tmp_path, lambda c, calls: c == ("stop_node", "n3", None)
                                 and sum(1 for x in calls if x[0] == "stage_binary") == 3)
    assert rt.ledger.refresh().nodes["n1"].steps["flip:stop"].status == "done"
    assert rt.ledger.doc.nodes["n3"].steps["flip:stop"].status != "done"
    # meanwhile n1 was started again on 0.7 (by hand, or its service manager): the ledger says stopped
    now = {"n1": NodeState("n1", True, "0.7.3"), "n2": NodeState("n2", False, "0.7.3"),
           "n3": NodeState("n3", True, "0.7.3")}
    steps = FakeSteps(node_states=now)
    _run(rt, plan, steps)
    calls = [c for c in steps.calls if c[0] in ("observe_node", "stop_node", "switch_binary", "start_node")]
    assert sorted(c[1] for c in calls[:3]) == ["n1", "n2", "n3"] and {c[0] for c in calls[:3]} == {"observe_node"}
    # the flip: up to its three 0.8 starts (then the offline-repair rounds stop each node in turn)
    starts = [i for i, c in enumerate(calls) if c[0] == "start_node"][:3]
    flip = calls[3:starts[-1] + 1]
    assert sorted(c[1] for c in flip if c[0] == "stop_node") == ["n1", "n3"], flip  # n1 despite the ledger
    assert all(c[0] != "stop_node" for c in calls[starts[0]:starts[-1] + 1]), flip  # every stop before any start
    events = [e for e in rt.ledger.refresh().events if e.kind == "flip-resume"]
    assert len(events) == 1 and "n1 running 0.7.3" in events[0].message and "stopping n1, n3 first" in events[0].message
    assert [c for c in steps.calls if c[0] == "observe_once"]  # it went on to the end (the watch)


def test_killed_in_the_start_wave_nodes_on_0_8_are_neither_stopped_nor_started_again(tmp_path):
    rt, plan, _ = _killed_at(tmp_path, lambda c, calls: c == ("start_node", "n3", "0.8.7"))
    now = {"n1": NodeState("n1", True, "0.8.7"), "n2": NodeState("n2", True, "0.8.7"),
           "n3": NodeState("n3", False, "0.8.7")}
    steps = FakeSteps(node_states=now)
    _run(rt, plan, steps)
    staged = [c for c in steps.calls if c[0] in ("stop_node", "switch_binary", "start_node")]
    flip_acts = staged[:next((i for i, c in enumerate(staged) if c[0] == "stop_node" and c[1] == "n1"), len(staged))]
    assert flip_acts == [("start_node", "n3", "0.8.7")], staged  # then the offline-repair rounds
    events = [e for e in rt.ledger.refresh().events if e.kind == "flip-resume"]
    assert len(events) == 1 and "n3 stopped (binary 0.8.7)" in events[0].message
    assert "leaving n1, n2 on 0.8.7" in events[0].message


def test_a_run_that_was_not_in_the_flip_does_not_look(tmp_path):
    rt, plan, _ = _killed_at(tmp_path, lambda c, calls: c[0] == "stage_binary")
    steps = FakeSteps()
    _run(rt, plan, steps)
    assert not [c for c in steps.calls if c[0] == "observe_node"]
    assert not [e for e in rt.ledger.refresh().events if e.kind == "flip-resume"]
