"""The lab harness: bring-up on real sshd and Prometheus, SSH context, faults, teardown.

Tests that never read Prometheus pass ``wait_prometheus=False``: it still runs, but they do not
wait the ~4 s until its first scrape (targets are applied in 5 s batches).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import asyncssh
import pytest
import yaml

from tests.conftest import garage, service


def _ssh_run(lab, node: dict, command: str, known_hosts: str | None = None) -> str:
    async def go():
        async with asyncssh.connect(node["addr"], port=lab.spec.ssh_port, username="root",
                                    client_keys=[str(lab.dir / "id_ed25519")],
                                    known_hosts=known_hosts or str(lab.dir / "known_hosts"),
                                    connect_timeout=5) as conn:
            res = await conn.run(command, check=True, timeout=20)
            return res.stdout
    return asyncio.run(go())


def _prom_query(lab, q: str) -> list:
    url = f"{lab.prometheus_url}/api/v1/query?query=" + urllib.request.quote(q)
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())["data"]["result"]


def test_up_3x2_is_healthy_reachable_over_ssh_with_host_keys_and_scraped(make_lab):
    lab = make_lab(version="0.7.3")
    st = lab.status()
    assert [n["running"] for n in st["nodes"]] == [True] * 6
    assert all(n["peers_up"] == 5 for n in st["nodes"])
    assert st["sshd"] and st["prometheus"]
    # a session lands in the context of the node whose address it reached
    for node in lab.nodes:
        assert _ssh_run(lab, node, "echo $GARAGE_LAB_NODE").strip() == node["name"]
    up = _prom_query(lab, 'up{job="garage"} == 1')
    assert sorted(r["metric"]["node"] for r in up) == sorted(n["name"] for n in lab.nodes)


def test_ssh_refuses_an_unknown_host_key(make_lab, tmp_path):
    lab = make_lab(wait_prometheus=False, version="0.7.3", zones=3, per_zone=1)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        _ssh_run(lab, lab.nodes[0], "true", known_hosts=str(empty))


def test_inventory_describes_the_cluster_as_a_real_one_would_be(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    inv = yaml.safe_load((lab.dir / "inventory.yaml").read_text())
    assert [n["name"] for n in inv["nodes"]] == [n["name"] for n in lab.nodes]
    assert inv["ssh"]["known_hosts"] == str(lab.dir / "known_hosts")
    assert inv["prometheus"]["url"] == lab.prometheus_url
    for n in inv["nodes"]:
        out = _ssh_run(lab, {"addr": n["host"]}, f"{n['binary_path']} -c {n['config_path']} node id -q")
        assert out.strip().split("@")[1] == f"{n['host']}:3901"


def test_twelve_nodes_start_cleanly(make_lab):
    lab = make_lab(version="0.8.7", zones=3, per_zone=4)
    st = lab.status()
    assert all(n["running"] and n["peers_up"] == 11 and n["version"] == "0.8.7" for n in st["nodes"])


def test_down_leaves_no_process_behind(make_lab):
    lab = make_lab(version="0.8.0", zones=3, per_zone=1)
    # an extra long-running process started from the lab, as a test or an operator would
    extra = subprocess.Popen(["sleep", "300", str(lab.dir) + "/marker"], start_new_session=True)
    pids = [n["pid"] for n in lab.status()["nodes"]] + [lab.info["pids"]["sshd"], lab.info["pids"]["prometheus"]]
    killed = lab.down()
    extra.wait(timeout=5)
    for pid in pids:
        assert pid in killed
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    for node in lab.nodes:
        with pytest.raises(OSError):
            socket.create_connection((node["addr"], 3901), timeout=0.5).close()


def test_service_stop_and_start_cycle_releases_the_lock(make_lab):
    lab = make_lab(version="0.8.7", zones=3, per_zone=1)
    name = lab.nodes[0]["name"]
    assert lab.lock_holder(name) == lab.daemon_info(name)["pid"]
    assert service(lab, name, "stop").returncode == 0
    assert lab.lock_holder(name) is None
    r = service(lab, name, "is-active")
    assert (r.returncode, r.stdout.strip()) == (3, "inactive")
    assert service(lab, name, "start").returncode == 0
    lab.wait_ready(30)
    assert service(lab, name, "is-active").stdout.strip() == "active"


def test_fault_command_failing_n_times_then_succeeding(make_lab):
    lab = make_lab(wait_prometheus=False, version="0.8.7", zones=3, per_zone=1)
    name = lab.nodes[0]["name"]
    lab.fault(name, "fail-command", count=2, match="status")
    assert garage(lab, name, "status").returncode == 1
    assert garage(lab, name, "status").returncode == 1
    assert garage(lab, name, "status").returncode == 0


def test_fault_refuse_start_and_slow_stop(make_lab):
    lab = make_lab(version="0.8.7", zones=3, per_zone=1)
    name = lab.nodes[1]["name"]
    lab.fault(name, "slow-stop", seconds=1.5)
    t0 = time.monotonic()
    service(lab, name, "stop")
    assert time.monotonic() - t0 >= 1.5
    lab.clear_faults(name)
    # a slow stop lasts while its fault is injected: cleared mid-stop, the stop ends then
    service(lab, name, "start")
    lab.wait_ready(30, prometheus=False)
    log = lab.node_dir(name) / "log" / "garage.log"
    exited = log.read_text().count("Netapp exited")  # the shutdown's step before the held delay
    lab.fault(name, "slow-stop", seconds=600)
    stop = subprocess.Popen([str(lab.dir / "bin" / "garage-service"), "stop"], env=dict(os.environ, GARAGE_LAB_NODE=name),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("Netapp exited") == exited and time.monotonic() < deadline:
            time.sleep(0.1)
        assert log.read_text().count("Netapp exited") > exited  # the stop is in its held delay
        lab.clear_faults(name)
        assert stop.wait(timeout=60) == 0  # well before the 600 s the fault asked for
    finally:
        if stop.poll() is None:
            stop.kill()
            stop.wait()
    lab.fault(name, "refuse-start", count=1)
    service(lab, name, "start")
    # the refused daemon exits soon after its start (later on a loaded machine): wait for it
    deadline = time.monotonic() + 30
    while (state := service(lab, name, "is-active").stdout.strip()) != "failed" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state == "failed"
    service(lab, name, "start")
    lab.wait_ready(30)


def test_fault_hang_stop_ends_in_sigkill_after_the_stop_timeout(make_lab):
    lab = make_lab(wait_prometheus=False, version="0.8.7", zones=3, per_zone=1)
    name = lab.nodes[0]["name"]
    lab.fault(name, "hang-stop")
    time.sleep(1.2)  # the daemon re-reads faults.json once a second
    r = service(lab, name, "stop", "--timeout", "1")
    assert r.returncode == 0
    assert service(lab, name, "is-active").stdout.strip() == "failed"
    assert lab.lock_holder(name) is None


def test_fault_ssh_refuse_closes_only_that_node(make_lab):
    lab = make_lab(wait_prometheus=False, version="0.7.3", zones=3, per_zone=1)
    bad, good = lab.nodes[0], lab.nodes[1]
    lab.fault(bad["name"], "ssh-refuse")
    with pytest.raises(OSError):
        _ssh_run(lab, bad, "true")
    assert _ssh_run(lab, good, "echo $GARAGE_LAB_NODE").strip() == good["name"]
    lab.clear_faults(bad["name"])
    assert _ssh_run(lab, bad, "echo $GARAGE_LAB_NODE").strip() == bad["name"]


def test_fault_metrics_down_makes_the_target_down_in_prometheus(make_lab):
    lab = make_lab(version="0.8.7", zones=3, per_zone=1)
    name = lab.nodes[2]["name"]
    lab.fault(name, "metrics-down")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        res = _prom_query(lab, f'up{{job="garage",node="{name}"}}')
        if res and res[0]["value"][1] == "0":
            break
        time.sleep(0.5)
    else:
        pytest.fail("Prometheus never saw the metrics endpoint go down")


def test_traffic_acknowledged_writes_are_readable(make_lab):
    from garage_lab import traffic

    lab = make_lab(wait_prometheus=False, version="0.7.3", zones=3, per_zone=1)
    rep = traffic.write(lab, duration=2, rate=20, seed=1)
    assert rep.acknowledged >= 20 and rep.refused == 0
    res = traffic.verify(lab)
    assert res["ok"] and res["checked"] == rep.acknowledged
    # ground truth agrees: every acknowledged key is on at least 2 replicas
    truth = lab.inspect(checksums=False)
    acks = truth["acknowledged_writes"]
    assert len(acks) == rep.acknowledged


def test_inspect_reports_ground_truth(make_lab):
    lab = make_lab(wait_prometheus=False, version="0.7.3", zones=3, per_zone=1)
    truth = lab.inspect()
    for name, n in truth["nodes"].items():
        assert n["running_version"] == "0.7.3"
        assert n["lock_holder"] == n["pid"]
        assert n["binary_target"].endswith("garage-v0.7.3")
        assert len(n["meta_checksum"]) == 64
        assert n["counter_trees"] is False  # 0.7 metadata has no counter tables


def test_meta_size_pads_metadata_compressibly(make_lab):
    lab = make_lab(wait_prometheus=False, version="0.7.3", zones=3, per_zone=1, meta_size=8 << 20)
    meta = lab.node_dir(lab.nodes[0]["name"]) / "meta"
    size = sum(p.stat().st_size for p in meta.rglob("*") if p.is_file())
    assert size >= 8 << 20
    import zstandard

    blob = next((meta / "db" / "blobs").iterdir()).read_bytes()
    ratio = len(blob) / len(zstandard.ZstdCompressor(level=3).compress(blob))
    assert 1.5 < ratio < 6, ratio


def test_binary_swap_changes_the_version_the_service_starts(make_lab):
    lab = make_lab(wait_prometheus=False, version="0.7.3", zones=3, per_zone=1)
    name = lab.nodes[0]["name"]
    nd = lab.node_dir(name)
    service(lab, name, "stop", "--signal", "INT")
    link = nd / "usr/local/bin/garage"
    tmp = nd / "usr/local/bin/.garage.new"
    os.symlink(lab.launcher("0.8.7"), tmp)
    os.replace(tmp, link)
    service(lab, name, "start")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (lab.daemon_info(name) or {}).get("version") != "0.8.7":
        time.sleep(0.1)
    assert lab.daemon_info(name)["version"] == "0.8.7"
    assert garage(lab, name, "--version").stdout.startswith("garage v0.8.7 [features:")
