"""Issue 4's "Done when": both procedures end to end on a 3-zone x 2-node lab, under client
traffic, with a real Prefect API (the session's ``prefect server start``, ``prefect_server``).

Every approval gate is paused by the flow and resumed through the Prefect API with a RunInput
(or auto-approved when it passed cleanly), and the end state is checked against the lab's
ground truth: versions, ``garage status``, bucket counters, backups, acknowledged writes, and,
for the minimal-downtime procedure, the lab's own service timestamps (never two zones down at
once outside the simultaneous restart).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from garage_lab import traffic
from garage_lab.harness import PORT_S3
from garage_migrate.facts import parse_bucket_info, parse_bucket_list, parse_status
from garage_migrate.ledger import Ledger
from garage_migrate.plan import MigrationOptions
from tests.conftest import garage as _garage
from tests.e2e.stack import gate_of

FAST = MigrationOptions(watch_s=2.0, gate_deadline_s=90.0, gate_consecutive=2)
ZONES, PER_ZONE = 3, 2
APPROVAL_GATES = {"minimal-downtime": ["approve-flip"], "simple": ["approve-shutdown", "approve-reopen"]}
FLOW_NAMES = {"minimal-downtime": "minimal-downtime-migration", "simple": "simple-migration",
              "rollback": "rollback-migration"}
NOTE = "e2e"
# what the auto-approve rule records (garage_migrate.executor.decisions, since issue 8)
AUTO_NOTE = "gate passed cleanly"


# ---------------------------------------------------------------------------- lab helpers


def _retarget(lab, version: str) -> None:
    """Point the lab's inventory at another target version (its launcher and sha256)."""
    inv_path = lab.dir / "inventory.yaml"
    inv = yaml.safe_load(inv_path.read_text())
    binary = lab.dir / "dist" / f"garage-v{version}"
    inv["target"] = {"version": version, "binary": str(binary),
                     "sha256": hashlib.sha256(binary.read_bytes()).hexdigest()}
    inv_path.write_text(yaml.safe_dump(inv, sort_keys=False))


def _s3_reachable(addr: str) -> bool:
    try:
        socket.create_connection((addr, PORT_S3), timeout=1.0).close()
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------- Prefect helpers
def _flow_runs(procedure: str, inventory: str) -> list:
    """This lab's flow runs of ``procedure`` (oldest first), read from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAMES[procedure]])))
    return sorted((r for r in runs if r.parameters.get("inventory") == inventory), key=lambda r: r.created)


def _flow_logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    out: list[str] = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                    limit=200, offset=len(out))
            out += [log.message for log in page]
            if len(page) < 200:
                return out




def _flow_fn(procedure: str):
    from flows.migration import minimal_downtime_migration, simple_migration

    return {"simple": simple_migration, "minimal-downtime": minimal_downtime_migration}[procedure]


class _Answerer:
    """Resumes every pause of this lab's flow run through the Prefect API, like a person would.

    Approval gates are approved with a note (with ``approve``); any other pause (a sync gate
    or the counters check that did not pass, a failed node, or any pause of an auto-approved
    run) is unexpected in these tests: it is recorded and answered ``abort`` so that the flow
    ends at once and the test reports it, instead of hanging until the pause timeout.
    """

    def __init__(self, procedure: str, inventory: str, approve: bool = True):
        self.procedure = procedure
        self.approve = approve
        self.inventory = inventory
        self.resumed: list[tuple[str, float]] = []  # (pause key, when)
        self.unexpected: list[str] = []
        self.errors: list[str] = []
        self._done: set = set()  # (flow run id, pause key) already answered

    def poll_once(self) -> None:
        from prefect.flow_runs import resume_flow_run

        for run in _flow_runs(self.procedure, self.inventory):
            if not (run.state and run.state.is_paused()):
                continue
            key = run.state.state_details.pause_key
            if (run.id, key) in self._done:
                continue
            if self.approve and key.startswith("approve-"):
                answer = {"action": "approve", "note": NOTE}
            else:
                self.unexpected.append(key)
                answer = {"action": "abort", "note": "unexpected pause in e2e test"}
            try:
                resume_flow_run(run.id, run_input=answer)  # sync code: async_dispatch picks the sync variant
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(f"resume {key}: {type(exc).__name__}: {exc}")
                continue
            self._done.add((run.id, key))
            self.resumed.append((key, time.time()))

    def run_until(self, finished: threading.Event) -> None:
        while not finished.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - the API may be briefly busy; keep polling
                self.errors.append(f"poll: {type(exc).__name__}: {exc}")
            finished.wait(0.5)


def _run_flow(procedure: str, lab, auto_approve: bool, **kw) -> tuple[dict, _Answerer, float]:
    """Run the flow in a worker thread (its own event loop); in this thread, answer its pauses
    through the Prefect API (with ``auto_approve``, any pause is unexpected and aborted).
    Returns (result, answerer, seconds)."""
    inv = str(lab.dir / "inventory.yaml")
    flow_fn = _flow_fn(procedure)
    cli_plan = _cli_plan_json(inv, procedure)  # what an operator is shown before the run
    box: dict = {}
    finished = threading.Event()

    def worker():
        try:
            box["result"] = asyncio.run(flow_fn(inventory=inv, options=FAST, auto_approve=auto_approve, **kw))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = exc
        finally:
            finished.set()

    t0 = time.monotonic()
    th = threading.Thread(target=worker, daemon=True, name=f"e2e-flow-{procedure}")
    th.start()
    answerer = _Answerer(procedure, inv, approve=not auto_approve)
    answerer.run_until(finished)
    th.join(30)
    seconds = time.monotonic() - t0
    if "error" in box:
        extra = f" (unexpected pauses answered 'abort': {answerer.unexpected})" if answerer.unexpected else ""
        raise AssertionError(f"{procedure} flow failed after {seconds:.0f}s{extra}: {box['error']!r}") from box["error"]
    res = dict(box["result"], cli_plan=cli_plan) if isinstance(box["result"], dict) else box["result"]
    return res, answerer, seconds


def _cli_plan_json(inv: str, procedure: str) -> dict:
    """``garage-migrate plan --inventory I --procedure P --json``, parsed."""
    import contextlib
    import io

    from garage_migrate import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["plan", "--inventory", inv, "--procedure", procedure, "--json"]) == 0
    return json.loads(out.getvalue())


# ---------------------------------------------------------------------------- end-state checks
def _phase_window(led: Ledger, phase: str) -> tuple[float, float]:
    ev = led.doc.events
    start = [e.t for e in ev if e.kind == "phase" and e.message == f"start {phase}"]
    end = [e.t for e in ev if e.kind == "phase" and e.message == f"end {phase}"]
    assert start and end, f"no start/end events of phase {phase} in the ledger"
    return start[0], end[0]


def _assert_buckets_match_ground_truth(lab, via: str, settle_s: float = 60.0) -> dict[str, int]:
    """Every bucket's ``Objects:`` counter equals the lab's truth (max over nodes of the object
    table count of that bucket). Polls a while: a counter update may still be in its queue."""
    deadline = time.monotonic() + settle_s
    while True:
        res = _garage(lab, via, "bucket", "list")
        assert res.returncode == 0, res.stderr
        buckets = parse_bucket_list(res.stdout).buckets
        assert len(buckets) == lab.spec.buckets
        nodes = lab.inspect(checksums=False)["nodes"]
        wrong, seen = {}, {}
        for b in buckets:
            alias = b.global_aliases[0]
            info = _garage(lab, via, "bucket", "info", alias)
            assert info.returncode == 0, info.stderr
            got = parse_bucket_info(info.stdout).objects
            truth = max(n["objects"].get(b.id64, 0) for n in nodes.values())
            seen[alias] = truth
            if got != truth:
                wrong[alias] = (got, truth)
        if not wrong:
            return seen
        if time.monotonic() >= deadline:
            raise AssertionError(f"bucket counters (got, truth) differ after {settle_s:.0f}s: {wrong}")
        time.sleep(2.0)


def skipped_steps(led: Ledger) -> set[tuple[str, str, str]]:
    """``(node, phase, step kind)`` of the node steps the ledger records as skipped (they
    observed the node already in the wanted state, so they ran none of their acts)."""
    return {(n, *k.split(":", 1)) for n, rec in led.doc.nodes.items() for k, st in rec.steps.items()
            if st.status == "skipped" and ":" in k}


def assert_journal_is_the_plan(journal: list[dict], plan: dict, skipped=frozenset()) -> None:
    """The journal's acts are the plan's acts, per node and step (issue 9 "Done when").

    Every act the journal holds for a plan step (phase, step kind) is one its plan steps list
    on that node, and every act the plan lists ran; a step that may run on one of several nodes
    (a repair launch) ran on exactly one of them. The cluster lock's records are outside the
    plan (phase ``None``). Sets, not counts: a task retry repeats an act the plan lists.
    """
    ran = {(e["node"], e["phase"], e["step"], e["command"]) for e in journal
           if e["event"] == "started" and e["phase"] is not None}
    listed, one_of, alternatives_cleanup = set(), [], set()
    for ph in plan["phases"]:
        for w in ph["waves"]:
            for st in w["steps"]:
                acts = {(a["node"], ph["name"], st["kind"], a["command"]) for a in st["actions"] if a["kind"] == "act"}
                cleanup = {(a["node"], ph["name"], st["kind"], a["command"]) for a in st["actions"] if a["on_failure"]}
                (one_of.append(acts) if st["one_of"] else listed.update(acts - cleanup))
                alternatives_cleanup.update(cleanup)
    alternatives = set().union(*one_of) if one_of else set()
    assert ran - listed - alternatives - alternatives_cleanup == set(), "acts that no plan step lists"
    assert {a for a in listed - ran if a[:3] not in skipped} == set(), "acts the plan lists that never ran"
    for acts in one_of:
        assert len({a[0] for a in acts & ran}) >= 1, f"a one-of step ran nowhere: {sorted(acts)[:1]}"
    assert sum(1 for e in journal if e["event"] == "refused") == 0


def _assert_end_state(lab, res: dict, procedure: str, target: str, tr: traffic.Traffic) -> Ledger:
    """What issue 4's "Done when" asks of every finished migration."""
    assert res["state"] == "done", res
    led = Ledger.load(res["ledger"])
    assert led.doc.state == "done" and led.doc.procedure == procedure
    # no secret in the ledger (the original garage.toml stays on the node; issue 9 §5)
    assert lab.info["rpc_secret"] not in Path(res["ledger"]).read_text()
    # the command journal beside it: every act that started finished, no secret (issue 9 §3)
    journal = Path(res["ledger"]).with_name("commands.jsonl")
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    started = [(e["node"], e["phase"], e["step"], e["command"]) for e in lines if e["event"] == "started"]
    finished = [(e["node"], e["phase"], e["step"], e["command"]) for e in lines
                if e["event"] == "finished" and e["kind"] == "act"]
    assert started and collections.Counter(started) == collections.Counter(finished)
    assert {e["node"] for e in lines} == {n["name"] for n in lab.nodes}
    assert lab.info["rpc_secret"] not in journal.read_text()
    executed = json.loads(Path(res["ledger"]).with_name(f"plan-{led.doc.plan_digest}.json").read_text())
    assert executed == res["cli_plan"], "the plan that ran is not the one `garage-migrate plan --json` showed"
    assert_journal_is_the_plan(lines, executed, skipped_steps(led))
    mid = led.doc.migration_id
    assert mid.endswith(f"-to-v{target}")

    # every node runs the target
    truth = lab.inspect(checksums=False)["nodes"]
    assert {n: t["running_version"] for n, t in truth.items()} == {n: target for n in truth}
    assert all(t["binary_target"].endswith(f"garage-v{target}") for t in truth.values())

    # `garage status`: all healthy, nothing failed
    first = lab.nodes[0]["name"]
    st = _garage(lab, first, "status")
    assert st.returncode == 0, st.stderr
    assert "FAILED NODES" not in st.stdout, st.stdout
    status = parse_status(st.stdout)
    assert not status.failed and len(status.healthy) == ZONES * PER_ZONE, st.stdout

    # every node has a backup of this migration, and its archive exists
    backups_root = lab.dir / "backups"
    for node in (n["name"] for n in lab.nodes):
        b = led.node(node).backup
        assert b is not None, f"{node}: no backup recorded in the ledger"
        # the "version after" of the table and the report is a field the start step writes
        assert led.node(node).running_version == target, (node, led.node(node))
        path = Path(b.path)
        assert path.is_file() and path.stat().st_size > 0, f"{node}: backup archive {path} missing"
        assert path.is_relative_to(backups_root) and mid in path.parts and node in path.parts, path
        assert b.version == "0.7.3", b

    # counters equal the ground truth (after traffic stopped)
    _assert_buckets_match_ground_truth(lab, first)

    # clients can reach the S3 API on its usual port again, and every acknowledged write is
    # readable, unchanged
    assert tr.acknowledged > 0, "no client write was acknowledged during the migration"
    closed = [n["name"] for n in lab.nodes if not _s3_reachable(n["addr"])]
    assert not closed, f"S3 API not listening on port {PORT_S3} after the migration on {closed}"
    check = traffic.verify(lab)
    assert check["ok"], {k: (v[:5] if isinstance(v, list) else v) for k, v in check.items()}
    return led


def _assert_gates(led: Ledger, procedure: str, by: str, note: str) -> None:
    for key in APPROVAL_GATES[procedure]:
        g = led.gate(key)
        assert g, f"gate {key} not in the ledger: {led.doc.gates}"
        assert (g.decision, g.by, g.note) == ("approve", by, note), (key, g)
    # only clean gates in these tests: no "proceed anyway" and no other decision
    assert not [e for e in led.doc.events if e.kind == "proceed-anyway"]


def _assert_one_zone_down_at_a_time(lab, led: Ledger) -> dict:
    """From the lab's service events: outside the flip (every node restarts at once, by
    design), nodes of two different zones were never down at the same time."""
    flip_start, flip_end = _phase_window(led, "flip")
    zone = {n["name"]: n["zone"] for n in lab.nodes}
    windows = lab.downtime_windows()
    rounds, in_flip = [], []
    for node, ivs in windows.items():
        for s, e in ivs:
            assert e != float("inf"), f"{node} is still down (since {s})"
            (in_flip if flip_start <= s and e <= flip_end else rounds).append((s, e, node))
    # not vacuous: each node was down once per round (backup, offline repair) and once in the flip
    per_node = {n: sum(1 for _s, _e, m in rounds if m == n) for n in zone}
    assert per_node == {n: 2 for n in zone}, per_node
    assert sorted(n for _s, _e, n in in_flip) == sorted(zone), in_flip
    overlaps = [(a, b) for a in rounds for b in rounds
                if zone[a[2]] < zone[b[2]] and a[0] < b[1] and b[0] < a[1]]
    assert not overlaps, f"two zones down at once: {overlaps}"
    return {"round_intervals": len(rounds), "flip_s": round(flip_end - flip_start, 1)}


# ---------------------------------------------------------------------------- tests
@pytest.mark.timeout(600)
def test_minimal_downtime_to_087_with_every_gate_resumed_through_the_api(make_lab, prefect_server):
    lab = make_lab(version="0.7.3", zones=ZONES, per_zone=PER_ZONE)
    with traffic.Traffic(lab) as tr:
        res, answerer, secs = _run_flow("minimal-downtime", lab, auto_approve=False)
    print(f"minimal-downtime 0.7.3 -> 0.8.7 with API approvals: {secs:.0f}s; acks {tr.acknowledged}, "
          f"refused {tr.refused}; resumed {[k for k, _ in answerer.resumed]}")

    assert not answerer.unexpected and not answerer.errors, (answerer.unexpected, answerer.errors)
    # each gate paused, and was resumed through the API exactly once
    assert [gate_of(k) for k, _ in answerer.resumed] == APPROVAL_GATES["minimal-downtime"]
    led = _assert_end_state(lab, res, "minimal-downtime", "0.8.7", tr)
    _assert_gates(led, "minimal-downtime", by="person", note=NOTE)
    decisions = [e for e in led.doc.events if e.kind == "decision"]
    assert [e.message for e in decisions] == ["approve-flip: approve"] and decisions[0].note == NOTE
    # the flip started only after the approval
    assert _phase_window(led, "flip")[0] >= answerer.resumed[0][1] - 1.0
    print(_assert_one_zone_down_at_a_time(lab, led))


def _service_events(lab) -> list[dict]:
    path = lab.dir / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _acks_between(lab, t0: float, t1: float) -> int:
    return sum(1 for a in lab.inspect(checksums=False)["acknowledged_writes"] if t0 <= a["t"] <= t1)


@pytest.mark.timeout(600)
def test_simple_to_080_with_approvals_through_the_api(make_lab, prefect_server):
    lab = make_lab(version="0.7.3", zones=ZONES, per_zone=PER_ZONE)
    _retarget(lab, "0.8.0")
    with traffic.Traffic(lab) as tr:
        res, answerer, secs = _run_flow("simple", lab, auto_approve=False)
    print(f"simple 0.7.3 -> 0.8.0 with API approvals: {secs:.0f}s; acks {tr.acknowledged}, "
          f"refused {tr.refused}; resumed {[k for k, _ in answerer.resumed]}")
    assert not answerer.unexpected and not answerer.errors, (answerer.unexpected, answerer.errors)
    assert [gate_of(k) for k, _ in answerer.resumed] == APPROVAL_GATES["simple"]
    led = Ledger.load(res["ledger"])
    _assert_gates(led, "simple", by="person", note=NOTE)

    # The API gate (kind `port`): garage.toml's S3/web ports are moved and the daemons read
    # them only at start, so the step must restart the nodes for the cut to take effect. From
    # the end of disable-api until the first node restarted with its original ports in
    # enable-api (lab service events), no client write may be acknowledged; after it, writes
    # are acknowledged again.
    _, cut = _phase_window(led, "disable-api")
    reopen_start, reopen_end = _phase_window(led, "enable-api")
    starts = [e["t"] for e in _service_events(lab) if e["event"] == "start" and reopen_start <= e["t"] <= reopen_end]
    reopen = min(starts, default=reopen_end)
    stop_start, _ = _phase_window(led, "stop")
    closed_acks = _acks_between(lab, cut, reopen)
    print(f"API cut {cut:.1f} -> reopened {reopen:.1f} ({reopen - cut:.1f}s, {len(starts)} restarts in enable-api): "
          f"{closed_acks} acks while closed, {_acks_between(lab, cut, stop_start)} of them before the stop; "
          f"{_acks_between(lab, reopen, time.time())} after")
    assert closed_acks == 0, "client writes were acknowledged while the API was meant to be cut"
    assert _acks_between(lab, reopen, time.time()) > 0, "no client write was acknowledged after the API re-opened"

    _assert_end_state(lab, res, "simple", "0.8.0", tr)


@pytest.mark.timeout(600)
def test_simple_to_087_auto_approve(make_lab, prefect_server):
    lab = make_lab(version="0.7.3", zones=ZONES, per_zone=PER_ZONE)
    with traffic.Traffic(lab) as tr:
        res, answerer, secs = _run_flow("simple", lab, auto_approve=True)
    print(f"simple 0.7.3 -> 0.8.7 auto-approve: {secs:.0f}s; acks {tr.acknowledged}, refused {tr.refused}")
    assert answerer.resumed == [] and not answerer.errors, "an auto-approved run paused"
    led = _assert_end_state(lab, res, "simple", "0.8.7", tr)
    _assert_gates(led, "simple", by="auto-approve", note=AUTO_NOTE)


# The minimal-downtime 0.8.0 auto-approve migration is shared by two tests: its end state, and
# a second run over the finished lab (so the second test does not need a lab of its own).
@pytest.fixture(scope="module")
def minimal_080_done(module_lab, prefect_server):
    lab = module_lab(version="0.7.3", zones=ZONES, per_zone=PER_ZONE)
    _retarget(lab, "0.8.0")
    with traffic.Traffic(lab) as tr:
        res, answerer, secs = _run_flow("minimal-downtime", lab, auto_approve=True)
    print(f"minimal-downtime 0.7.3 -> 0.8.0 auto-approve: {secs:.0f}s; acks {tr.acknowledged}, refused {tr.refused}")
    return {"lab": lab, "res": res, "traffic": tr, "seconds": secs, "answerer": answerer}


@pytest.mark.timeout(600)
def test_minimal_downtime_to_080_auto_approve(minimal_080_done):
    lab, res, tr = minimal_080_done["lab"], minimal_080_done["res"], minimal_080_done["traffic"]
    answerer = minimal_080_done["answerer"]
    assert answerer.resumed == [] and not answerer.errors, "an auto-approved run paused"
    led = _assert_end_state(lab, res, "minimal-downtime", "0.8.0", tr)
    _assert_gates(led, "minimal-downtime", by="auto-approve", note=AUTO_NOTE)
    print(_assert_one_zone_down_at_a_time(lab, led))


@pytest.mark.timeout(600)
def test_second_run_of_a_finished_migration_changes_nothing_and_says_so(minimal_080_done):
    lab = minimal_080_done["lab"]
    inv = str(lab.dir / "inventory.yaml")
    before = lab.inspect(checksums=False)["nodes"]
    led_before = Ledger.load(minimal_080_done["res"]["ledger"])
    events_before = len(_service_events(lab))
    t0 = time.time()
    res, answerer, secs = _run_flow("minimal-downtime", lab, auto_approve=True)
    assert answerer.resumed == [], "the second run paused"
    print(f"second run: {secs:.0f}s")
    assert res["state"] == "done" and res["ledger"] == minimal_080_done["res"]["ledger"]

    # nothing changed on any node: same daemons, same binaries, no service event at all
    after = lab.inspect(checksums=False)["nodes"]
    for name, b in before.items():
        a = after[name]
        assert (a["pid"], a["running_version"], a["binary_target"]) == \
               (b["pid"], b["running_version"], b["binary_target"]), f"{name} was changed by the second run"
    assert _service_events(lab)[events_before:] == [], "service events during the second run"

    # the ledger: no node step ran again, the backups are the same, gates were not asked again
    led = Ledger.load(res["ledger"])
    for name, rec in led.doc.nodes.items():
        assert rec.backup == led_before.node(name).backup, name
        for key, step in rec.steps.items():
            assert step == led_before.step(name, key), f"{name} {key} re-recorded"
            assert (step.finished or 0) < t0, f"{name} {key} ran again"
    assert led.gate("approve-flip") == led_before.gate("approve-flip")

    # ... and says so: in its result, the ledger, and the flow run's logs
    assert res["changed"] is False
    assert led.doc.events[-1].kind == "rerun" and "nothing to do" in led.doc.events[-1].message
    runs = _flow_runs("minimal-downtime", inv)
    assert len(runs) == 2
    second = runs[-1]
    deadline = time.monotonic() + 20
    while True:  # logs reach the API in batches
        logs = _flow_logs(second.id)
        if any("already done: nothing to do" in m for m in logs) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert any("already done: nothing to do" in m for m in logs), logs[-5:]


@pytest.mark.timeout(600)
def test_the_rollback_flow_asks_for_its_plan_then_returns_every_node_to_073(minimal_080_done):
    """The rollback is a plan like a migration's (issue 9): the flow pauses for its approval,
    then runs it; every node is back on 0.7.3 with its backup, and the journal holds exactly
    the rollback plan's acts. Last in the module: it takes the shared lab back to 0.7.3."""
    from flows.rollback import rollback_migration

    lab = minimal_080_done["lab"]
    inv = str(lab.dir / "inventory.yaml")
    box: dict = {}
    finished = threading.Event()

    def worker():
        try:
            box["result"] = asyncio.run(rollback_migration(inventory=inv, procedure="minimal-downtime",
                                                           gate_deadline_s=90.0))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = exc
        finally:
            finished.set()

    th = threading.Thread(target=worker, daemon=True, name="e2e-rollback-flow")
    th.start()
    answerer = _Answerer("rollback", inv, approve=True)
    answerer.run_until(finished)
    th.join(30)
    assert "error" not in box, box.get("error")
    res = box["result"]
    names = sorted(n["name"] for n in lab.nodes)
    assert [gate_of(k) for k, _ in answerer.resumed] == ["approve-rollback"] and not answerer.unexpected
    assert res["rolled_back"] == names and res["gate"] == "passed", res

    truth = lab.inspect(checksums=False)["nodes"]
    assert {n: t["running_version"] for n, t in truth.items()} == {n: "0.7.3" for n in names}
    assert all(t["binary_target"].endswith("garage-v0.7.3") for t in truth.values())
    led = Ledger.load(minimal_080_done["res"]["ledger"])
    assert led.doc.state == "rolled-back" and led.doc.holder is None
    gate = led.gate("approve-rollback")
    assert (gate.decision, gate.by, gate.note) == ("approve", "person", NOTE)
    for n in names:
        rec = led.node(n)
        assert rec.restored and rec.restored.source == rec.backup.path and rec.running_version == "0.7.3"
    journal = [json.loads(x) for x in led.path.with_name("commands.jsonl").read_text().splitlines()]
    rb_plan = json.loads(led.path.with_name(f"plan-{res['plan_digest']}.json").read_text())
    assert [p["name"] for p in rb_plan["phases"]][0] == "approve-rollback"
    assert_journal_is_the_plan([e for e in journal if str(e.get("phase")).startswith("rollback-")], rb_plan,
                               skipped_steps(led))

