"""Issue 8, tried as an operator does: a real ``prefect server start``, a process worker,
``prefect deploy --all``, runs of the deployments, and the Prefect actions that used to
approve the risky steps with nobody involved (a retry, a crash, a Resume without input).

Every test asserts from the lab's service events (the ground truth of every stop and start)
that no node was touched by what must not act, and from the ledger that no decision was
recorded that no person gave.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from garage_migrate.ledger import Ledger
from garage_migrate.plan import MigrationOptions
from tests.e2e.stack import ROOT, flow_run_pids, process_gone, service_events

FAST = MigrationOptions(watch_s=2.0, gate_deadline_s=90.0, gate_consecutive=2).model_dump(mode="json")
SIMPLE = "simple-migration/simple"
MD = "minimal-downtime-migration/minimal-downtime"
ROLLBACK = "rollback-migration/rollback"



def _params(lab, **kw) -> dict:
    return dict({"inventory": str(lab.dir / "inventory.yaml"), "options": FAST, "auto_approve": False,
                 "pause_timeout": 900}, **kw)


def _ledger(lab, mid: str | None = None) -> Ledger:
    inv = yaml.safe_load((lab.dir / "inventory.yaml").read_text())
    mid = mid or f"{inv['cluster']}-to-v0.8.7".lower()
    return Ledger.load(Path(inv["backup"]["root"]) / inv["cluster"] / mid / "ledger.json")


def _abort(stack, frid) -> None:
    """End a paused test run the way a person would: abort (touches nothing)."""
    fr = stack.flow_run(frid)
    if fr.state.is_paused():
        stack.resume(frid, {"action": "abort", "note": "test over"})
    stack.wait_final(frid)


def _worker_saw_the_crash(state) -> bool:
    """The worker's Crashed report of the killed process."""
    return state.is_crashed() and "SIGKILL" in (state.message or "")


def _crash_through_the_api_and_retry(stack, frid) -> None:
    """Set the run Crashed through the API while its process lives, then ``prefect flow-run retry``."""
    from prefect.states import Crashed

    stack.set_state(frid, Crashed(message="test: set Crashed through the API"))
    stack.retry(frid)


def _retry_until_it_pauses(stack, frid, first: str) -> str:
    """``prefect flow-run retry``, again if a late crash report overwrote it (the worker may
    report a killed process twice, seconds apart, under load), as an operator would."""
    for _ in range(3):
        stack.retry(frid)
        fr = stack.wait_state(frid, lambda s: (s.is_paused() and s.state_details.pause_key != first) or s.is_crashed(),
                              300, "a new pause (or a late crash report)")
        if fr.state.is_paused():
            return fr.state.state_details.pause_key
    raise AssertionError(f"the retried run never paused again: {fr.state}")


def _kill_every_attempt(stack, frid, holder_pid: int, quiet_s: float = 5.0, timeout: float = 180.0) -> None:
    """SIGKILL every process of flow run ``frid`` (the holder first) until none is left, the
    worker reported the crash and no new attempt started for ``quiet_s`` seconds: a retry the
    test requested twice (after a late crash report) starts a second attempt, maybe later."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    pids = {holder_pid}
    while time.monotonic() < deadline:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        assert all(process_gone(p) for p in pids), pids
        pids = set(flow_run_pids(frid))
        if not pids and _worker_saw_the_crash(stack.flow_run(frid).state):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_s:
                return
        else:
            quiet_since = None
        time.sleep(0.5)
    raise AssertionError(f"flow run {frid} kept starting attempts or was never reported crashed")


def _no_decision(led: Ledger, gate: str) -> None:
    g = led.gate(gate)
    assert g is None or (not g.decision and g.by is None), g
    assert not [e for e in led.doc.events if e.kind == "decision"], led.doc.events


def test_no_deployment_carries_a_concurrency_limit(stack):
    deps = stack.deployments()
    assert {d.name for d in deps} >= {"simple", "minimal-downtime", "minimal-downtime-maintenance-window", "rollback",
                                      "retry-node"}
    for d in deps:
        assert d.concurrency_limit is None and d.global_concurrency_limit is None, (d.name, d.concurrency_limit)
    for d in yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]:
        assert "concurrency_limit" not in d, d["name"]


@pytest.mark.timeout(600)
def test_a_flow_run_without_garage_migrate_home_says_in_its_log_what_to_set(stack):
    """The pull step, on the real worker, for a run whose environment has the variable empty
    (a process worker cannot unset a variable for one run: an empty value reads as unset)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with stack.client() as c:
        dep = c.read_deployment_by_name(MD)
        frid = c.create_flow_run_from_deployment(dep.id, parameters={"inventory": "/nowhere.yaml", "dry_run": True},
                                                 job_variables={"env": {"GARAGE_MIGRATE_HOME": ""}}).id
    assert stack.wait_final(frid, timeout=300).state.is_crashed()
    deadline = time.monotonic() + 60  # the log ships shortly after the state: wait for it, not for time
    while True:
        with stack.client() as c:
            logs = [x.message for x in c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[frid])))]
        if any("GARAGE_MIGRATE_HOME is not set on this worker" in m for m in logs) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert any("GARAGE_MIGRATE_HOME is not set on this worker" in m and "prefect worker start" in m for m in logs), logs


@pytest.mark.timeout(600)
def test_retry_of_a_run_crashed_through_the_api_while_its_process_lives_asks_again(stack, make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    frid = stack.run_deployment(SIMPLE, **_params(lab))
    first = stack.wait_paused(frid).state.state_details.pause_key
    assert first.startswith("approve-shutdown-"), first
    old = _ledger(lab).doc.holder
    stack.flow_pids.add(old.pid)
    t0 = time.time()
    _crash_through_the_api_and_retry(stack, frid)
    again = stack.wait_paused(frid, not_key={first}).state.state_details.pause_key
    assert again.startswith("approve-shutdown-") and again != first, again
    # the paused process saw its run leave Paused through a retry: it stopped, touching nothing
    assert process_gone(old.pid), f"the superseded process {old.pid} is still running"
    assert service_events(lab, t0) == [], "a node was stopped or started after the crash"
    led = _ledger(lab)
    _no_decision(led, "approve-shutdown")
    assert led.doc.holder.token != old.token and led.doc.holder.flow_run_id == str(frid)
    assert [e for e in led.doc.events if e.kind == "takeover"], led.doc.events[-5:]
    _abort(stack, frid)
    assert service_events(lab, t0) == []


@pytest.mark.timeout(600)
def test_a_killed_paused_run_is_asked_again_by_its_retry_and_by_a_new_run(stack, make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    frid = stack.run_deployment(SIMPLE, **_params(lab))
    first = stack.wait_paused(frid).state.state_details.pause_key
    pid = _ledger(lab).doc.holder.pid
    t0 = time.time()
    os.kill(pid, signal.SIGKILL)  # what the lease renewal did to a paused run
    assert process_gone(pid)
    stack.wait_state(frid, _worker_saw_the_crash, 120, "Crashed by the worker (it saw its process die)")
    again = _retry_until_it_pauses(stack, frid, first)
    assert again.startswith("approve-shutdown-") and again != first
    assert service_events(lab, t0) == []
    _no_decision(_ledger(lab), "approve-shutdown")
    # the process of the retry dies too; a new run of the same migration takes it over. Every
    # process of the flow run is killed: when a late crash report made the test retry twice,
    # two attempts were started and the second may take the migration over after we look
    _kill_every_attempt(stack, frid, _ledger(lab).doc.holder.pid)
    rerun = stack.run_deployment(SIMPLE, **_params(lab))
    key = stack.wait_paused(rerun).state.state_details.pause_key
    assert key.startswith("approve-shutdown-")
    assert service_events(lab, t0) == []
    led = _ledger(lab)
    _no_decision(led, "approve-shutdown")
    assert led.doc.holder.flow_run_id == str(rerun)
    _abort(stack, rerun)


@pytest.mark.timeout(600)
def test_a_resume_without_input_is_refused_and_a_forced_running_state_asks_again(stack, make_lab):
    from prefect.states import Running

    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    frid = stack.run_deployment(SIMPLE, **_params(lab))
    first = stack.wait_paused(frid).state.state_details.pause_key
    t0 = time.time()
    res = stack.resume(frid, None)  # the API call behind a Resume with an empty form
    assert res.status.value == "REJECT", res
    for bad in ({"action": ""}, {"note": "no action"}, {"action": "approved"}):
        assert stack.resume(frid, bad).status.value == "REJECT", bad
    assert stack.flow_run(frid).state.state_details.pause_key == first
    stack.set_state(frid, Running(message="test: set Running through the API"))
    again = stack.wait_paused(frid, not_key={first}).state.state_details.pause_key
    assert again.startswith("approve-shutdown-") and again != first
    assert service_events(lab, t0) == []
    _no_decision(_ledger(lab), "approve-shutdown")
    _abort(stack, frid)
    assert service_events(lab, t0) == []


@pytest.mark.timeout(600)
def test_a_sync_gate_decision_is_never_taken_from_a_retry(stack, make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    lab.fault("node-b1", "errored-blocks", blocks=2)
    opts = dict(FAST, gate_deadline_s=8.0)
    frid = stack.run_deployment(SIMPLE, **_params(lab, options=opts))
    first = stack.wait_paused(frid).state.state_details.pause_key
    assert first.startswith("sync-before-1-"), first
    pid = _ledger(lab).doc.holder.pid
    t0 = time.time()
    _crash_through_the_api_and_retry(stack, frid)
    again = stack.wait_paused(frid, not_key={first}).state.state_details.pause_key
    assert again.startswith("sync-before-1-") and again != first
    assert process_gone(pid)
    assert service_events(lab, t0) == []
    led = _ledger(lab)
    assert not (led.gate("sync-before-1") and led.gate("sync-before-1").decision), led.gate("sync-before-1")
    assert not [e for e in led.doc.events if e.kind in ("decision", "proceed-anyway")]
    # an answer that is not a choice of this form is refused by the server
    assert stack.resume(frid, {"action": "approve"}).status.value == "REJECT"
    _abort(stack, frid)
    assert service_events(lab, t0) == []


@pytest.mark.timeout(900)
def test_a_paused_run_outlives_the_lease_while_every_other_run_on_the_cluster_is_refused(stack, make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    frid = stack.run_deployment(SIMPLE, **_params(lab))
    fr = stack.wait_paused(frid)
    paused_at = time.monotonic()
    key = fr.state.state_details.pause_key
    holder = _ledger(lab).doc.holder
    stack.flow_pids.add(holder.pid)
    t0 = time.time()
    others = {
        "a second run of the same deployment": stack.run_deployment(SIMPLE, **_params(lab)),
        "a minimal-downtime run": stack.run_deployment(MD, **_params(lab)),
        "a rollback while the migration's run is alive": stack.run_deployment(
            ROLLBACK, inventory=str(lab.dir / "inventory.yaml"), procedure="simple"),
        "another migration": stack.run_deployment(SIMPLE, **_params(lab, migration_id="another-one")),
    }
    for what, rid in others.items():
        fr2 = stack.wait_final(rid, timeout=180)
        assert fr2.state.is_cancelled(), f"{what}: {fr2.state.type} {fr2.state.message}"
        assert "refused" in (fr2.state.message or ""), (what, fr2.state.message)
    assert service_events(lab, t0) == [], "a refused run touched a node"
    # longer than two lease renewals of a 30 s lease (renewed at 22.5 s): still paused, still alive
    while time.monotonic() - paused_at < 65:
        time.sleep(1)
    fr = stack.flow_run(frid)
    assert fr.state.is_paused() and fr.state.state_details.pause_key == key, fr.state
    assert not process_gone(holder.pid, timeout=0.5), "the paused run's process died"
    stack.resume(frid, {"action": "approve", "note": "after the lease"})
    reopen = stack.wait_paused(frid, not_key={key}, timeout=400).state.state_details.pause_key
    assert reopen.startswith("approve-reopen-"), reopen
    stack.resume(frid, {"action": "approve", "note": "reopen"})
    fr = stack.wait_final(frid, timeout=400)
    assert fr.state.is_completed(), (fr.state, stack.logs())
    led = _ledger(lab)
    assert led.doc.state == "done" and led.doc.holder is None
    assert (led.gate("approve-shutdown").by, led.gate("approve-shutdown").note) == ("person", "after the lease")
    assert {n["running_version"] for n in lab.inspect(checksums=False)["nodes"].values()} == {"0.8.7"}
    assert not any(os.path.lexists(str(lab.node_dir(n["name"]) / "meta") + ".garage-migrate.lock")
                   for n in lab.nodes), "the lock records were not released"


@pytest.mark.timeout(900)
def test_a_flip_failure_decision_is_never_taken_from_a_retry(stack, make_lab):
    """The flip-failure form offers "retry" (starts nodes) and "rollback": a retry of the
    paused run must neither, and must ask again."""
    from prefect.states import Cancelled

    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    victim = "node-b1"
    frid = stack.run_deployment(MD, **_params(lab, auto_approve=True))
    deadline = time.monotonic() + 400
    while True:  # the operator's fault: the victim refuses to start on 0.8 during the flip
        try:
            led = _ledger(lab)
            if led.gate("approve-flip") is not None and led.gate("approve-flip").decision:
                lab.fault(victim, "refuse-start", count=50)
                break
        except (OSError, ValueError):
            pass
        assert time.monotonic() < deadline and not stack.flow_run(frid).state.is_final(), stack.logs()
        time.sleep(0.1)
    first = stack.wait_paused(frid, timeout=400).state.state_details.pause_key
    assert first.startswith("flip-failure-1-"), first
    pid = _ledger(lab).doc.holder.pid
    t0 = time.time()
    # a simple run while this minimal-downtime run is paused is refused, touching nothing
    simple = stack.wait_final(stack.run_deployment(SIMPLE, **_params(lab)), timeout=180)
    assert simple.state.is_cancelled() and "refused" in simple.state.message, simple.state
    assert service_events(lab, t0) == []
    _crash_through_the_api_and_retry(stack, frid)
    again = stack.wait_paused(frid, not_key={first}, timeout=300).state.state_details.pause_key
    assert again.startswith("flip-failure-1-") and again != first, again
    assert process_gone(pid)
    touched = [e for e in service_events(lab, t0) if e["event"] in ("stop", "kill") or e["node"] != victim]
    assert touched == [], touched  # the retry re-ran only the victim's failed start; nobody was stopped
    led = _ledger(lab)
    assert not (led.gate("flip-failure-1") and led.gate("flip-failure-1").decision), led.gate("flip-failure-1")
    assert not [e for e in led.doc.events if e.kind == "decision"]
    assert not [e for e in led.doc.events if e.kind == "rollback"]
    stack.set_state(frid, Cancelled(message="test over"))
    stack.wait_final(frid)
