"""Issue 11 §3-4, as an operator runs it: the notifications of ``deployments/automations.yaml``
and the post-migration watch, on the session's ``prefect server start`` with a process worker
and ``prefect deploy --all``.

One 3x1 lab is migrated once (minimal-downtime, through its deployment, the flip approved
through the API) with the automations pointed at a webhook receiver on loopback (a real HTTP
server in this process, stopped after the module). Then:

- the "approval needed" webhook arrived with the link to the migration's run;
- the migration scheduled the watch's runs, the worker ran them at their times, and the
  watch's live report compares each node and bucket with the baseline the ledger recorded;
- an injected regression (errored blocks on one node) makes the watch raise its event, which
  the failure automation posts with the link to the watch's run.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time

import pytest

from garage_migrate.ledger import Ledger
from garage_migrate.plan import MigrationOptions
from tests.conftest import garage as _garage
from tests.e2e.stack import gate_of

# the module's one migration schedules the watch runs that its tests then check
pytestmark = pytest.mark.watch_runs_live_for_module

FAST = MigrationOptions(watch_s=2.0, gate_deadline_s=90.0, gate_consecutive=2).model_dump(mode="json")
MD = "minimal-downtime-migration/minimal-downtime"
WATCH = "post-migration-watch/post-migration-watch"
EVERY_S = 4.0  # two observations, 4 s apart
WATCH_PARAMS = {"watch_every_minutes": EVERY_S / 60, "watch_hours": 2 * EVERY_S / 3600}


class Receiver:
    """A webhook receiver on loopback: keeps every JSON body POSTed to it."""

    def __init__(self):
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    received.append(json.loads(raw))
                except ValueError:
                    received.append({"unparsed": raw.decode(errors="replace")})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="webhook-receiver")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def wait_for(self, pred, timeout: float = 90, what: str = "a webhook") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for b in list(self.bodies):
                if pred(b):
                    return b
            time.sleep(0.5)
        raise AssertionError(f"no {what} arrived in {timeout:.0f}s; received: {self.bodies}")


def prefect_key(*parts: str) -> str:
    """The flows' artifact key (imported late: Prefect reads its settings at import)."""
    from flows.approvals import prefect_key as key

    return key(*parts)


def _latest_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                sort=ArtifactSort.CREATED_DESC, limit=1)
    assert arts, f"no artifact {key}"
    return arts[0]


def _watch_runs(migration_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as c:
        runs = c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["post-migration-watch"])))
    return sorted((r for r in runs if r.parameters.get("migration_id") == migration_id),
                  key=lambda r: r.expected_start_time)


def _answer_until_final(stack, frid, timeout: float = 900):
    """Answer the run's pauses as a person would: approve the flip; a sync gate that did not
    pass yet (a loaded machine) is given more time ("wait_more"), never passed over."""
    answered: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fr = stack.flow_run(frid)
        if fr.state.is_final():
            return fr
        key = fr.state.state_details.pause_key if fr.state.is_paused() else None
        if key and key not in answered:
            gate = gate_of(key)
            assert gate == "approve-flip" or gate.startswith("sync-"), f"unexpected pause {key}"
            res = stack.resume(frid, {"action": "approve" if gate == "approve-flip" else "wait_more", "note": "e2e watch"})
            if res.status.value == "ACCEPT":  # else the form is not there yet: answer it again
                answered.add(key)
        time.sleep(0.5)
    raise AssertionError(f"the migration did not end in {timeout:.0f}s\n{stack.logs()}")


@pytest.fixture(scope="module")
def migrated(prefect_server, module_lab):
    """The stack (deployments + worker), the automations on a loopback receiver, and a 3x1 lab
    migrated through the minimal-downtime deployment; everything stopped after the module."""
    from prefect.client.orchestration import get_client

    from flows.notify import render_automations, save_webhook

    prefect_server.drop_pending_watch_runs()  # earlier modules' watches: their labs are gone
    stack = prefect_server.start_operator()
    created = []
    try:
        with Receiver() as rx:
            block = save_webhook(rx.url, "garage-migrate-notify-e2e")
            path = stack.home / "automations.yaml"
            path.write_text(render_automations(block))
            out = stack._cli("automation", "create", "--from-file", str(path)).stdout  # as the README says
            with get_client(sync_client=True) as c:
                for name in ("garage-migrate approval needed", "garage-migrate failed"):
                    created += [a.id for a in c.read_automations_by_name(name)]
            assert len(created) == 2, out
            lab = module_lab(version="0.7.3", zones=3, per_zone=1, wait_prometheus=True)
            inv = str(lab.dir / "inventory.yaml")
            # the object entries each node holds before the run: the lab starts with a few
            # missing from one replica (LabSpec.unsynced), which its syncs may fill at any time
            pre = lab.inspect(checksums=False)["nodes"]
            entries_before = sum(sum(t["objects"].values()) for t in pre.values())
            t0 = time.monotonic()
            frid = stack.run_deployment(MD, inventory=inv, options=FAST, auto_approve=False, pause_timeout=900,
                                        **WATCH_PARAMS)
            fr = _answer_until_final(stack, frid)
            assert fr.state.is_completed(), (fr.state, stack.logs())
            print(f"3x1 minimal-downtime through the deployment: {time.monotonic() - t0:.0f}s")
            led = Ledger.load(next((lab.dir / "backups").glob("*/*/ledger.json")))
            yield {"stack": stack, "rx": rx, "lab": lab, "inv": inv, "frid": frid, "led": led,
                   "entries_before": entries_before}
    finally:
        with get_client(sync_client=True) as c:
            for aid in created:
                c.delete_automation(aid)
        prefect_server.stop_operator()


@pytest.mark.timeout(1500)  # includes the module's migration (and the session server's start when first)
def test_approval_needed_is_posted_with_the_runs_link(migrated):
    stack, frid, mid = migrated["stack"], migrated["frid"], migrated["led"].doc.migration_id
    body = migrated["rx"].wait_for(lambda b: b.get("event") == "garage-migrate.approval.needed",
                                   what="approval-needed webhook")
    assert body["migration"] == mid and body["cluster"] == migrated["led"].doc.cluster
    assert body["link"] == f"{stack.url}/runs/flow-run/{frid}", body
    assert body["phase"] == "approve-flip" and "approval approve-flip" in body["message"], body
    # nothing failed in this migration: the failure automation stayed silent
    assert not [b for b in migrated["rx"].bodies if b.get("event", "").endswith((".failed", ".regression"))]


@pytest.mark.timeout(600)
def test_the_scheduled_watch_reports_against_the_baseline(migrated):
    led, lab = migrated["led"], migrated["lab"]
    mid = led.doc.migration_id
    base = led.doc.baseline
    nodes = [n["name"] for n in lab.nodes]
    # the baseline, recorded before the first disruptive step, from Prometheus and the CLI
    assert base is not None and sorted(base.nodes) == sorted(nodes)
    first_stop = min(e.t for e in led.doc.events if e.kind == "phase" and e.message != "start preflight")
    assert base.at < first_stop
    assert all(n.up and n.resync_errors == 0 for n in base.nodes.values()), base.nodes
    assert all(n.rates["admin_requests"] for n in base.nodes.values()), "Prometheus scrapes every node's /metrics"
    truth = lab.inspect(checksums=False)["nodes"]
    objects = {b for t in truth.values() for b in t["objects"]}
    # the tables' own count at the baseline (entries over the nodes / 3 copies, rounded up): at
    # least what the nodes held before the run, at most every object once every replica has it
    full = sum(max(t["objects"].get(b, 0) for t in truth.values()) for b in objects)
    assert -(-migrated["entries_before"] // 3) <= base.implied_objects <= full, (migrated["entries_before"], full)
    assert len(base.buckets) == lab.spec.buckets and all(b.objects is None for b in base.buckets.values())  # 0.7

    # the migration scheduled the watch's runs at their times, and the worker ran them
    deadline = time.monotonic() + 400  # each run is a new process on a busy worker
    while True:
        runs = _watch_runs(mid)
        if len(runs) == 2 and all(r.state and r.state.is_final() for r in runs):
            break
        assert time.monotonic() < deadline, f"watch runs: {[(r.name, r.state) for r in runs]}\n{migrated['stack'].logs()}"
        time.sleep(1)
    assert [r.name for r in runs] == [f"watch-{mid}-1-of-2", f"watch-{mid}-2-of-2"]
    assert all(r.state.is_completed() for r in runs), [(r.name, r.state) for r in runs]
    gap = (runs[1].expected_start_time - runs[0].expected_start_time).total_seconds()
    assert abs(gap - EVERY_S) < 0.5, gap
    assert runs[1].start_time >= runs[1].expected_start_time  # it ran from its schedule, not at once

    report = _latest_artifact(prefect_key("watch", mid)).data
    assert report.startswith(f"## Post-migration watch of {mid}: final report"), report[:200]
    assert "2 observations of 2, 2 without regression" in report
    for n in nodes:
        assert f"| {n} | yes | 0 → 0 |" in report, report
    for b in base.buckets.values():
        assert f"| {b.alias} | not counted by 0.7 → " in report
    assert f"the baseline's object tables implied {base.implied_objects}" in report
    # the buckets' count now: the baseline's implied count, or more where the migration's syncs
    # filled the replica the lab started without (LabSpec.unsynced), never more than every object
    now = re.search(r"the buckets count (\d+) now", report)
    assert now and base.implied_objects <= int(now[1]) <= full, (now and now[0], base.implied_objects, full)
    assert "No regression against the baseline." in report
    # the migration's own final report compares with the baseline and says what follows
    final = _latest_artifact(prefect_key("report", mid)).data
    assert "### Against the baseline" in final and "The post-migration watch is scheduled: 2 runs" in final


@pytest.mark.timeout(600)
def test_errored_blocks_on_one_node_raise_the_regression_event(migrated):
    stack, lab, led, rx = migrated["stack"], migrated["lab"], migrated["led"], migrated["rx"]
    mid, node = led.doc.migration_id, lab.nodes[1]["name"]
    lab.fault(node, "errored-blocks", blocks=2)
    deadline = time.monotonic() + 60
    while "blocks with resync errors: 2" not in _garage(lab, node, "stats").stdout:
        assert time.monotonic() < deadline, "the lab's errored-blocks fault did not show in `garage stats`"
        time.sleep(0.5)
    frid = stack.run_deployment(WATCH, inventory=migrated["inv"], migration_id=mid,
                                watch_every_minutes=EVERY_S / 60, observation=3, planned=3, final=True)
    fr = stack.wait_final(frid, timeout=400)
    assert fr.state.is_completed(), (fr.state, stack.logs())
    body = rx.wait_for(lambda b: b.get("event") == "garage-migrate.watch.regression", what="regression webhook")
    assert body["node"] == node and body["migration"] == mid, body
    assert f"{node}: 2 errored blocks (baseline 0)" in body["message"], body
    assert body["link"] == f"{stack.url}/runs/flow-run/{frid}", body
    report = _latest_artifact(prefect_key("watch", mid)).data
    assert "**Regressions:**" in report and f"| {node} | yes | 0 → 2 |" in report, report
    lab.clear_faults(node)
