"""The lab's output, parsed by the orchestrator's parsers: two independent readings of the
references (the simulator's renderers and the facts parsers) must agree on every command."""

from __future__ import annotations

import functools
import time
import urllib.request

import pytest

from garage_migrate import facts as F
from tests.conftest import garage, service


@pytest.fixture
def make_lab(make_lab):
    return functools.partial(make_lab, wait_prometheus=False)


@pytest.mark.parametrize("version", ["0.7.3", "0.8.0", "0.8.7"])
def test_every_lab_output_parses_to_the_lab_ground_truth(make_lab, version):
    lab = make_lab(version=version, zones=3, per_zone=1)
    a, b, c = lab.nodes
    run = functools.partial(garage, lab, a["name"])
    v = F.parse_version(run("--version").stdout)
    assert v.version == version and v.official
    nid = F.parse_node_id(run("node", "id", "-q").stdout)
    assert (nid.id64, nid.public_addr) == (a["id64"], f"{a['addr']}:3901")
    st = F.parse_status(run("status").stdout)
    assert {n.id16 for n in st.healthy} == {n["id64"][:16] for n in lab.nodes} and not st.failed
    assert {n.zone for n in st.healthy} == {"dc1", "dc2", "dc3"}
    lay = F.parse_layout(run("layout", "show").stdout)
    assert lay.version == 1 and sorted(r.id16 for r in lay.roles) == sorted(n["id64"][:16] for n in lab.nodes)
    stats = F.parse_stats(run("stats").stdout)
    assert stats.version.version == version and stats.resync_queue == 0
    detailed = F.parse_stats(run("stats", "-d").stdout)
    truth = lab.inspect(checksums=False)["nodes"][a["name"]]
    assert detailed.table("object").items == sum(truth["objects"].values())
    bl = F.parse_bucket_list(run("bucket", "list").stdout)
    assert len(bl.buckets) == lab.spec.buckets
    info = F.parse_bucket_info(run("bucket", "info", bl.buckets[0].global_aliases[0]).stdout)
    assert info.id64 == bl.buckets[0].id64
    if version == "0.7.3":
        assert info.objects is None
    else:
        expected = max(n["objects"].get(info.id64, 0) for n in lab.inspect(checksums=False)["nodes"].values())
        assert info.objects == expected
    with urllib.request.urlopen(urllib.request.Request(
            f"http://{a['addr']}:3903/metrics", headers={"Authorization": f"Bearer {lab.spec.metrics_token}"}), timeout=5) as r:
        q = F.parse_queue_metrics(r.read().decode())
    if version == "0.7.3":
        assert q.resync_queue is None and q.merkle_todo is None  # absent, never zero
    else:
        assert q.resync_queue == 0 and q.merkle_todo_for("object") is not None
    # a node down: FAILED NODES parses, with its last-seen time
    service(lab, c["name"], "stop", "--signal", "INT")
    time.sleep(1.5)
    st = F.parse_status(run("status").stdout)
    assert [n.id16 for n in st.failed] == [c["id64"][:16]]
    r = run("stats", "-a")
    if version == "0.8.7":
        cs = F.parse_stats_all(r.stdout)
        assert cs.unreachable == (c["id64"][:16],)
    else:
        assert r.returncode == 1


@pytest.mark.parametrize("version", ["0.8.0", "0.8.7"])
def test_worker_list_and_offline_repair_outcomes_parse(make_lab, version):
    lab = make_lab(version=version, zones=3, per_zone=1)
    a = lab.nodes[0]["name"]
    garage(lab, a, "repair", "--yes", "blocks")
    # a launched repair's worker shows up only after its first step (the lab's
    # repair_start_delay_s, as in Garage): look again until it does, within a bound
    deadline = time.monotonic() + 30
    while True:
        wl = F.parse_worker_list(garage(lab, a, "worker", "list").stdout)
        names = {w.name for w in wl.workers}
        if "Block repair worker" in names or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "Block scrub worker" in names and "object sync" in names
    assert "Block repair worker" in names
    r = garage(lab, a, "offline-repair", "--yes", "object_counters")
    assert F.parse_offline_repair(r.returncode, r.stdout, r.stderr).kind == "lock_held"
    r = garage(lab, a, "offline-repair", "object_counters")
    assert F.parse_offline_repair(r.returncode, r.stdout, r.stderr).kind == "missing_yes"
    service(lab, a, "stop", "--signal", "INT")
    r = garage(lab, a, "offline-repair", "--yes", "object_counters")
    assert F.parse_offline_repair(r.returncode, r.stdout, r.stderr).kind == "ok"
    if version == "0.8.7":
        service(lab, a, "start")
        lab.wait_ready(30, prometheus=False)
        rows = F.parse_worker_get(garage(lab, a, "worker", "get").stdout)
        assert {r.variable for r in rows} >= {"resync-worker-count", "scrub-next-run"}


def test_v073_offline_repair_is_an_unknown_command_for_the_parser(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    r = garage(lab, lab.nodes[0]["name"], "offline-repair", "--yes", "object_counters")
    assert F.parse_offline_repair(r.returncode, r.stdout, r.stderr).kind == "unknown_command"
