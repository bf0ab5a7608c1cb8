"""Conformance of the simulated Garage with the simulator checklists of both references.

Each test is named after its checklist item: ``ref13_NN`` for section 13 of
garage-0.7-to-0.8.md, ``late9_<topic>`` for section 9 of garage-0.8-late.md.
"""

from __future__ import annotations

import functools
import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import garage, service

FAST = {"sync_rate": 40.0, "resync_rate": 30.0, "merkle_rate": 50.0, "block_repair_rate": 400.0,
        "anti_entropy_startup_s": 3600.0}


def wait_for(pred, timeout: float = 20.0, step: float = 0.2, what: str = "condition"):
    """Poll ``pred`` until it returns a truthy value (lab processes run in real time)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


def resync_queue(lab, node) -> int:
    out = garage(lab, node, "stats").stdout
    return int(re.search(r"resync queue length: (\d+)", out).group(1))


def http_get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def admin(lab, node) -> str:
    return f"http://{lab.node(node)['addr']}:3903"


def stop(lab, node, sig="INT"):
    assert service(lab, node, "stop", "--signal", sig).returncode == 0


def swap(lab, node, version):
    import os

    nd = lab.node_dir(node)
    tmp = nd / "usr/local/bin/.garage.new"
    os.symlink(lab.launcher(version), tmp)
    os.replace(tmp, nd / "usr/local/bin/garage")


@pytest.fixture
def make_lab(make_lab):
    """These tests do not read Prometheus: skip waiting for its first scrape (it still runs)."""
    return functools.partial(make_lab, wait_prometheus=False)


# --------------------------------------------------------------------------- ref 13
@pytest.mark.parametrize("version", ["0.7.3", "0.8.0", "0.8.7"])
def test_ref13_01_repair_returns_immediately_and_queues_rise_then_drain(make_lab, version):
    lab = make_lab(version=version, zones=3, per_zone=1, knobs=FAST)
    n = lab.nodes[0]["name"]
    r = garage(lab, n, "repair", "--all-nodes", "--yes", "blocks")
    assert (r.returncode, r.stdout) == (0, "Repair launched on all nodes\n")
    assert wait_for(lambda: resync_queue(lab, n) > 0, what="resync queue to rise")
    wait_for(lambda: resync_queue(lab, n) == 0, timeout=40, what="resync queue to drain")
    r = garage(lab, n, "repair", "--yes", "tables")
    assert r.stdout == f"Repair launched on {lab.nodes[0]['id64'][:16]}\n"


def test_ref13_01_v073_repair_worker_exits_long_before_the_sync_finishes(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1, knobs=dict(FAST, resync_rate=5.0))
    n = lab.nodes[0]["name"]
    garage(lab, n, "repair", "--yes", "blocks")
    log = lab.node_dir(n) / "log" / "garage.log"
    wait_for(lambda: "Worker exited: Repair worker" in log.read_text(), what="repair worker exit")
    assert resync_queue(lab, n) > 0  # the queue is still being worked on


def test_ref13_01_v080_worker_list_shows_sync_partitions_remaining_then_idle(make_lab):
    lab = make_lab(version="0.8.0", zones=3, per_zone=1, knobs=dict(FAST, sync_rate=20.0))
    n = lab.nodes[0]["name"]
    garage(lab, n, "repair", "--yes", "tables")
    out = wait_for(lambda: (o := garage(lab, n, "worker", "list").stdout) and "partitions remaining" in o and o,
                   what="sync progress")
    assert re.search(r"Busy\s+object sync\n\s+\d+ partitions remaining", out)
    wait_for(lambda: "partitions remaining" not in garage(lab, n, "worker", "list").stdout, timeout=40,
             what="sync to finish")


@pytest.mark.parametrize("version", ["0.7.3", "0.8.7"])
def test_ref13_02_yes_is_checked_by_the_daemon_and_flags_go_before_what(make_lab, version):
    lab = make_lab(version=version, zones=3, per_zone=1)
    n = lab.nodes[0]["name"]
    r = garage(lab, n, "repair", "tables")
    assert (r.returncode, r.stderr) == (1, "Error: Please provide the --yes flag to initiate repair operations.\n")
    r = garage(lab, n, "repair", "tables", "--yes")
    assert r.returncode == 1 and "error: Found argument '--yes' which wasn't expected" in r.stderr
    stop(lab, n)
    r = garage(lab, n, "repair", "tables")
    assert r.returncode == 1 and "Unable to connect to destination RPC host" in r.stderr


def test_ref13_03_repair_all_nodes_with_a_node_down_reports_it_and_runs_elsewhere(make_lab):
    lab = make_lab(version="0.8.7", zones=3, per_zone=1, knobs=FAST)
    down = lab.nodes[2]
    stop(lab, down["name"])
    n = lab.nodes[0]["name"]
    r = garage(lab, n, "repair", "-a", "--yes", "blocks")
    assert r.returncode == 1
    assert r.stderr == (f"Error: Could not launch repair on nodes: [{down['id64'][:16]}] "
                        "(launched successfully on other nodes)\n")
    assert wait_for(lambda: resync_queue(lab, lab.nodes[1]["name"]) > 0, what="repair on the others")


@pytest.mark.parametrize("version", ["0.7.3", "0.8.0"])
def test_ref13_04_stats_all_fails_entirely_while_a_node_is_down(make_lab, version):
    lab = make_lab(version=version, zones=3, per_zone=1)
    stop(lab, lab.nodes[2]["name"])
    r = garage(lab, lab.nodes[0]["name"], "stats", "-a")
    assert r.returncode == 1 and r.stderr.startswith("Error: Internal error: Remote error: Netapp error:")
    assert r.stdout == ""


def test_ref13_05_errored_blocks_keep_the_resync_queue_above_zero(make_lab):
    lab = make_lab(version="0.8.7", zones=3, per_zone=1, knobs=FAST)
    n = lab.nodes[0]["name"]
    lab.fault(n, "errored-blocks", blocks=2)
    garage(lab, n, "repair", "--yes", "blocks")
    wait_for(lambda: (o := garage(lab, n, "stats").stdout) and "blocks with resync errors: 2" in o and o,
                   what="errored blocks")
    time.sleep(3)
    assert resync_queue(lab, n) >= 2  # errored blocks are re-queued with backoff, never dropped
    code, text = http_get(admin(lab, n) + "/metrics", lab.spec.metrics_token)
    assert re.search(r"^block_resync_errored_blocks 2$", text, re.M)
    r = garage(lab, n, "block", "list-errors")
    assert r.stdout.startswith("Hash") and len(r.stdout.splitlines()) == 3


def test_ref13_06_v080_offline_repair_needs_yes_aborts_on_the_lock_and_succeeds_when_stopped(make_lab):
    lab = make_lab(version="0.8.0", zones=3, per_zone=1)
    n = lab.nodes[0]["name"]
    r = garage(lab, n, "offline-repair", "object_counters")
    assert (r.returncode, r.stderr) == (1, "Error: Please add the --yes flag to launch repair operation\n")
    r = garage(lab, n, "offline-repair", "--yes", "object_counters")
    assert r.returncode == -signal.SIGABRT
    assert "======== PANIC (internal Garage error) ========" in r.stderr
    assert 'could not acquire lock on \\"' in r.stderr and "/db/db" in r.stderr
    stop(lab, n)
    r = garage(lab, n, "offline-repair", "--yes", "object_counters")
    assert r.returncode == 0 and "counting entries... (" in r.stderr
    r2 = garage(lab, n, "offline-repair", "--yes", "object_counters")
    assert r2.returncode == 0  # idempotent
    assert lab.lock_holder(n) is None


def test_ref13_07_v080_counters_read_zero_until_offline_repair_then_correct(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1, knobs=dict(FAST, anti_entropy_startup_s=2.0))
    names = [n["name"] for n in lab.nodes]
    for n in names:
        stop(lab, n)
        swap(lab, n, "0.8.0")
    for n in names:
        service(lab, n, "start")
    lab.wait_ready(30)
    bid_alias = {b["id"]: b["alias"] for b in _buckets(lab)}
    bucket = next(b for b, a in bid_alias.items() if a == "bucket-00")
    truth = lab.inspect(checksums=False)
    expected = max(n["objects"].get(bucket, 0) for n in truth["nodes"].values())
    r = garage(lab, names[0], "bucket", "info", "bucket-00")
    # zero, or only the deltas of items written since the start: the periodic sync (20 s
    # after start; 2 s here) delivers missing items, and each one counts as a +1 delta
    shown = int(re.search(r"^Objects: (-?\d+)$", r.stdout, re.M).group(1))
    assert 0 <= shown < expected, (shown, expected)
    for n in names:
        stop(lab, n)
        assert garage(lab, n, "offline-repair", "--yes", "object_counters").returncode == 0
        service(lab, n, "start")
    lab.wait_ready(30)
    out = wait_for(lambda: (o := garage(lab, names[0], "bucket", "info", bid_alias[bucket]).stdout)
                   and f"Objects: {expected}\n" in o and o, timeout=30, what="repaired counters")
    assert "Size: 0 B" not in out


def _buckets(lab):
    from garage_lab.garage import cluster

    ds = cluster.make_dataset(lab.spec.seed, lab.spec.buckets, lab.spec.objects_per_bucket)
    return [{"id": b.id, "alias": b.alias} for b in ds.buckets]


def test_ref13_08_v073_has_no_offline_repair_no_worker_and_no_bucket_sizes(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    n = lab.nodes[0]["name"]
    for args in (["offline-repair", "--yes", "object_counters"], ["worker", "list"]):
        r = garage(lab, n, *args)
        # clap 2.34: "Found argument 'x' which wasn't expected" unless it has a suggestion [inf]
        assert r.returncode == 1 and f"'{args[0]}'" in r.stderr
        assert "wasn't expected" in r.stderr or "wasn't recognized" in r.stderr
    out = garage(lab, n, "bucket", "info", "bucket-00").stdout
    assert out.startswith("Bucket: ") and "Size:" not in out and "Objects:" not in out


def test_ref13_09_v07_and_v08_nodes_never_see_each_other(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    a, b, c = (n["name"] for n in lab.nodes)
    stop(lab, a)
    swap(lab, a, "0.8.7")
    service(lab, a, "start")
    time.sleep(2.5)
    st08 = garage(lab, a, "status").stdout
    st07 = garage(lab, b, "status").stdout
    assert "==== FAILED NODES ====" in st08 and "==== FAILED NODES ====" in st07
    failed08 = st08.split("==== FAILED NODES ====")[1]
    assert lab.node(b)["id64"][:16] in failed08 and lab.node(c)["id64"][:16] in failed08
    assert lab.node(a)["id64"][:16] in st07.split("==== FAILED NODES ====")[1]
    # a CLI of one version cannot reach a daemon of the other
    nd = lab.node_dir(b)
    r = subprocess.run([str(lab.launcher("0.8.7")), "-c", str(nd / "etc/garage.toml"), "status"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "Unable to connect to destination RPC host" in r.stderr
    # quorum holds only within same-version groups: the lone 0.8 node cannot write
    import http.client

    conn = http.client.HTTPConnection(lab.node(a)["addr"], 3900, timeout=5)
    conn.request("PUT", "/bucket-00/mixed", body=b"x")
    assert conn.getresponse().status == 503


def test_ref13_10_node_id_works_with_the_daemon_stopped_other_commands_do_not(make_lab):
    lab = make_lab(version="0.8.0", zones=3, per_zone=1)
    n = lab.nodes[0]
    stop(lab, n["name"])
    r = garage(lab, n["name"], "node", "id", "-q")
    assert (r.returncode, r.stdout) == (0, f"{n['id64']}@{n['addr']}:3901\n")
    for args in (["status"], ["stats"], ["layout", "show"], ["bucket", "list"]):
        r = garage(lab, n["name"], *args)
        assert r.returncode == 1 and "Unable to connect to destination RPC host" in r.stderr
        assert "Connection refused (os error 111)" in r.stderr


def test_ref13_11_v080_first_start_after_v07_launches_a_full_scrub(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    n = lab.nodes[0]["name"]
    stop(lab, n)
    swap(lab, n, "0.8.0")
    service(lab, n, "start")
    out = wait_for(lambda: garage(lab, n, "worker", "list").stdout, what="worker list")
    assert re.search(r"Busy\s+Block scrub worker\n\s+\d+\.\d\d% done \(tranquility = 4\) ; corruptions detected: 0", out)


def test_ref13_12_v073_metrics_expose_only_api_and_web_series(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    n = lab.nodes[0]["name"]
    http_get(admin(lab, n) + "/metrics", lab.spec.metrics_token)
    code, text = http_get(admin(lab, n) + "/metrics", lab.spec.metrics_token)
    assert code == 200
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert names and all(x.startswith(("api_", "web_")) for x in names), names


@pytest.mark.parametrize("version", ["0.8.0", "0.8.7"])
def test_ref13_12_v08_metrics_expose_queues_without_total_suffix(make_lab, version):
    lab = make_lab(version=version, zones=3, per_zone=1)
    code, text = http_get(admin(lab, lab.nodes[0]["name"]) + "/metrics", lab.spec.metrics_token)
    assert 'table_merkle_updater_todo_queue_length{table_name="object"} 0' in text
    assert re.search(r"^block_resync_queue_length \d+$", text, re.M)
    assert "_total" not in text
    assert ("garage_build_info" in text) == (version == "0.8.7")


@pytest.mark.parametrize("version", ["0.7.3", "0.8.0"])
def test_ref13_13_metrics_bearer_auth_admin_403_and_no_health_before_081(make_lab, version):
    lab = make_lab(version=version, zones=3, per_zone=1, admin_token="")
    base = admin(lab, lab.nodes[0]["name"])
    assert http_get(base + "/metrics")[0] == 403
    code, body = http_get(base + "/metrics", "wrong")
    assert code == 403 and "Invalid authorization token provided" in body
    code, body = http_get(base + "/v0/status", "anything")
    assert code == 403 and "Admin token isn't configured" in body
    code, body = http_get(base + "/health")
    assert code == 400 and json.loads(body)["message"] == "Bad request: Unknown API endpoint: GET /health"


def test_ref13_14_status_and_layout_formats_v073(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    a, b, _ = (n["name"] for n in lab.nodes)
    out = garage(lab, a, "status").stdout
    lines = out.splitlines()
    assert lines[0] == "==== HEALTHY NODES ===="
    assert lines[1].split() == ["ID", "Hostname", "Address", "Tags", "Zone", "Capacity"]
    assert re.match(r"^[0-9a-f]{16}  node-a1   127\.42\.\d+\.1:3901  \[\]    dc1   1$", lines[2])
    lay = garage(lab, a, "layout", "show").stdout
    assert lay.startswith("==== CURRENT CLUSTER LAYOUT ====\nID                Tags  Zone  Capacity\n")
    assert lay.endswith("\nCurrent cluster layout version: 1\n")
    stop(lab, b)
    time.sleep(2.2)
    failed = garage(lab, a, "status").stdout.split("==== FAILED NODES ====\n")[1]
    assert re.search(r"  dc2   1         \d+s ago$", failed.splitlines()[1])


def test_ref13_14_status_last_seen_is_timeago_on_v08(make_lab):
    lab = make_lab(version="0.8.0", zones=3, per_zone=1)
    a, b, _ = (n["name"] for n in lab.nodes)
    stop(lab, b)
    time.sleep(2.2)
    failed = garage(lab, a, "status").stdout.split("==== FAILED NODES ====\n")[1]
    assert re.search(r"  (\d+ seconds|1 second) ago$", failed.splitlines()[1])


def test_ref13_15_v080_sigterm_is_graceful(make_lab):
    lab = make_lab(version="0.8.0", zones=3, per_zone=1)
    n = lab.nodes[0]["name"]
    stop(lab, n, "TERM")
    log = (lab.node_dir(n) / "log" / "garage.log").read_text()
    assert "Received SIGTERM, shutting down." in log and "Cleaning up..." in log
    assert service(lab, n, "is-active").stdout.strip() == "inactive"


def test_ref13_15_v073_sigterm_kills_at_once_sigint_is_graceful(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    a, b, _ = (n["name"] for n in lab.nodes)
    stop(lab, a, "TERM")
    log = (lab.node_dir(a) / "log" / "garage.log").read_text()
    assert "shutting down" not in log and "Cleaning up..." not in log
    # systemd counts death by SIGTERM during a stop as a clean stop: the unit is inactive,
    # and only the log shows that 0.7.3 never shut down gracefully
    assert service(lab, a, "is-active").stdout.strip() == "inactive"
    stop(lab, b, "INT")
    log = (lab.node_dir(b) / "log" / "garage.log").read_text()
    # 0.7.3 logs netapp's watch_ctrl_c() text, not the signal name (source-audit.md)
    assert "Received CTRL+C, shutting down." in log and "Cleaning up..." in log


def test_ref13_16_log_line_formats(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    n = lab.nodes[0]["name"]
    garage(lab, n, "repair", "--yes", "tables")
    log07 = (lab.node_dir(n) / "log" / "garage.log").read_text()
    assert re.search(r"^ INFO  garage::repair\s* > Launching a full sync of tables$", log07, re.M)
    stop(lab, n)
    swap(lab, n, "0.8.0")
    service(lab, n, "start")
    wait_for(lambda: garage(lab, n, "status").returncode == 0, what="0.8 start")
    garage(lab, n, "repair", "--yes", "tables")
    log08 = (lab.node_dir(n) / "log" / "garage.log").read_text()
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z.*INFO.*garage::repair.*Launching a full sync of tables", log08)
    assert "\x1b[" in log08  # ANSI colours always on in 0.8


def test_ref13_17_v080_refuses_a_different_replication_factor_and_ignores_old_keys(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    n = lab.nodes[0]["name"]
    stop(lab, n)
    swap(lab, n, "0.8.0")
    toml = lab.node_dir(n) / "etc/garage.toml"
    original = toml.read_text()
    toml.write_text(original.replace('replication_mode = "3"', 'replication_mode = "2"'))
    r = garage(lab, n, "server", timeout=20)
    assert r.returncode == 1 and "Error: Prevous cluster layout has replication factor 3" in r.stderr
    toml.write_text('consul_host = "consul.service:8500"\nconsul_service_name = "garage"\n' + original)
    service(lab, n, "start")
    wait_for(lambda: garage(lab, n, "status").returncode == 0, what="start with old consul keys")


@pytest.mark.parametrize("version,rc", [("0.7.3", -signal.SIGABRT), ("0.8.0", -signal.SIGABRT), ("0.8.7", 1)])
def test_ref13_18_only_one_process_opens_the_db_and_a_killed_one_leaves_no_lock(make_lab, version, rc):
    lab = make_lab(version=version, zones=3, per_zone=1)
    n = lab.nodes[0]["name"]
    r = garage(lab, n, "server", timeout=20)
    assert r.returncode == rc and "could not acquire lock" in r.stderr
    pid = lab.daemon_info(n)["pid"]
    service(lab, n, "kill", "--signal", "KILL")
    wait_for(lambda: lab.lock_holder(n) is None, what="lock release")
    service(lab, n, "start")
    wait_for(lambda: lab.lock_holder(n) not in (None, pid), what="restart takes the lock")


def test_ref13_19_one_zone_down_keeps_s3_but_bucket_changes_need_all_but_one(make_lab):
    from garage_lab import traffic

    lab = make_lab(version="0.8.7", zones=3, per_zone=2)
    for n in lab.nodes:
        if n["zone"] == "dc3":
            stop(lab, n["name"])
    time.sleep(1.5)
    rep = traffic.write(lab, duration=1.5, rate=10, seed=2)
    assert rep.acknowledged == rep.attempted > 0
    r = garage(lab, lab.nodes[0]["name"], "bucket", "set-quotas", "--max-objects", "100", "bucket-01")
    assert r.returncode == 1 and "Could not reach quorum" in r.stderr
    assert traffic.verify(lab)["ok"]


# --------------------------------------------------------------------------- late 9
def test_late9_worker_list_format_and_names_v087(make_lab):
    lab = make_lab(version="0.8.7", zones=3, per_zone=1)
    out = garage(lab, lab.nodes[0]["name"], "worker", "list").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["TID", "State", "Name", "Tranq", "Done", "Queue", "Errors", "Consec", "Last"]
    assert re.search(r"^1\s+\S+\s+Block resync worker #1\s", out, re.M)
    assert re.search(r"^5\s+Idle\s+Block scrub worker\s+4\s", out, re.M)
    assert re.search(r"^25\s+Idle\s+bucket_object_counter queue\s", out, re.M)
    assert "Job worker" not in out and "Merkle tree updater" not in out


def test_late9_worker_info_get_set_v087(make_lab):
    lab = make_lab(version="0.8.7", zones=3, per_zone=1)
    n = lab.nodes[0]
    out = garage(lab, n["name"], "worker", "get").stdout
    assert [ln.split()[1] for ln in out.splitlines()] == [
        "resync-tranquility", "resync-worker-count", "scrub-corruptions_detected",
        "scrub-last-completed", "scrub-next-run", "scrub-tranquility"]
    r = garage(lab, n["name"], "worker", "set", "resync-worker-count", "5")
    assert r.returncode == 1 and r.stderr == "Error: Internal error: Remote error: Invalid number of resync workers, must be between 1 and 4\n"
    r = garage(lab, n["name"], "worker", "set", "-a", "resync-tranquility", "3")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3
    info = garage(lab, n["name"], "worker", "info", "5").stdout
    assert info.startswith("Task id:            5\nWorker name:        Block scrub worker\n")
    assert garage(lab, n["name"], "worker", "info", "99").stderr == "Error: No worker with TID 99\n"


def test_late9_stats_tabular_and_stats_all_tolerant_v087(make_lab):
    lab = make_lab(version="0.8.7", zones=3, per_zone=1)
    a = lab.nodes[0]["name"]
    out = garage(lab, a, "stats").stdout
    assert "\nTable stats:\n  Table      Items  MklItems  MklTodo  GcTodo\n  bucket_v2  NC     NC" in out
    assert "Rust compiler version: 1.68.0" in out
    stop(lab, lab.nodes[2]["name"])
    r = garage(lab, a, "stats", "-a")
    assert r.returncode == 0
    assert f"Stats for node {lab.nodes[2]['id64'][:16]}:\nNetwork error: " in r.stdout
    assert "Cluster statistics:" in r.stdout


def test_late9_offline_repair_v087_is_silent_exits_1_on_lock_and_queues_counters(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    names = [n["name"] for n in lab.nodes]
    for n in names:
        stop(lab, n)
        swap(lab, n, "0.8.7")
        service(lab, n, "start")
    lab.wait_ready(30)
    a = names[0]
    r = garage(lab, a, "offline-repair", "--yes", "object_counters")
    assert r.returncode == 1 and r.stderr.startswith("Error: Unable to open sled DB: IO error: could not acquire lock on")
    stop(lab, a)
    r = garage(lab, a, "offline-repair", "--yes", "object_counters")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert lab.inspect(checksums=False)["nodes"][a]["insert_queue"] > 0
    service(lab, a, "start")
    lab.wait_ready(30)
    wait_for(lambda: lab.inspect(checksums=False)["nodes"][a]["insert_queue"] == 0, what="queue drain")


def test_late9_scrub_not_immediate_and_schedule_readable_v087(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    n = lab.nodes[0]["name"]
    stop(lab, n)
    swap(lab, n, "0.8.7")
    service(lab, n, "start")
    wait_for(lambda: garage(lab, n, "status").returncode == 0, what="start")
    assert re.search(r"^5\s+Idle\s+Block scrub worker", garage(lab, n, "worker", "list").stdout, re.M)
    nxt = garage(lab, n, "worker", "get", "scrub-next-run").stdout.split()[-1]
    days = (time.mktime(time.strptime(nxt[:19], "%Y-%m-%dT%H:%M:%S")) - time.mktime(time.gmtime())) / 86400
    assert 24.9 <= days <= 35.1


def test_late9_health_endpoints_v087(make_lab):
    lab = make_lab(version="0.8.7", zones=3, per_zone=1)
    base = admin(lab, lab.nodes[0]["name"])
    code, body = http_get(base + "/health")
    assert (code, body) == (200, "Garage is fully operational\nConsult the full health check API endpoint at /v0/health for more details\n")
    code, body = http_get(base + "/v0/health", lab.spec.admin_token)
    assert code == 200 and json.loads(body)["status"] == "Healthy"
    stop(lab, lab.nodes[1]["name"])
    time.sleep(1.5)
    assert http_get(base + "/health")[1].startswith("Garage is operational but some storage nodes are unavailable")
    stop(lab, lab.nodes[2]["name"])
    time.sleep(1.5)
    assert http_get(base + "/health")[0] == 503
    code, body = http_get(base + "/v0/status", lab.spec.admin_token)
    assert json.loads(body)["rustVersion"] == "1.68.0"
    assert http_get(base + "/metrics", "wrong")[1].count("Invalid authorization token") == 1


def test_late9_status_data_avail_column_v087(make_lab):
    lab = make_lab(version="0.8.7", zones=3, per_zone=1)
    out = garage(lab, lab.nodes[0]["name"], "status").stdout
    assert out.splitlines()[1].split() == ["ID", "Hostname", "Address", "Tags", "Zone", "Capacity", "DataAvail"]


def test_late9_all_08x_patches_interoperate(make_lab):
    lab = make_lab(version="0.8.0", zones=3, per_zone=1)
    n = lab.nodes[0]["name"]
    stop(lab, n)
    swap(lab, n, "0.8.7")
    service(lab, n, "start")
    lab.wait_ready(30)
    assert "FAILED NODES" not in garage(lab, lab.nodes[1]["name"], "status").stdout
