"""The netns lab (issue 12 §1): every node in its own network namespace, with its own address
and sshd, so that what crosses the bridge can be delayed, dropped and cut; its network faults;
and a teardown that leaves ``ip netns list`` and ``ip link`` as they were.

One 3 zones x 1 node lab serves the module; each test clears the faults it injected.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time

import pytest

from garage_migrate import commands as C
from garage_migrate.errors import TransportError
from garage_migrate.inventory import load_inventory
from garage_migrate.ssh import SshPool
from tests.conftest import run


def _netns_and_links() -> tuple[set[str], set[str]]:
    spaces = {line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                                          check=True).stdout.splitlines() if line.strip()}
    links = {json_l["ifname"] for json_l in json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True,
                                                                       text=True, check=True).stdout)}
    return spaces, links


@pytest.fixture(scope="module")
def lab(module_lab):
    # fullmesh's pings every second, so a cut peer is noticed in seconds rather than ~75 s
    return module_lab(version="0.7.3", zones=3, per_zone=1, netns=True, wait_prometheus=True,
                      knobs={"ping_interval_s": 1.0, "ping_timeout_s": 1.0, "failed_ping_threshold": 1.0})


def _inv(lab):
    return load_inventory(str(lab.dir / "inventory.yaml"))


def test_each_node_has_its_own_namespace_address_and_sshd_and_prometheus_scrapes_them(lab):
    net = lab.info["netns"]
    assert [n["addr"] for n in lab.nodes] == [f"{net['subnet']}.{i}" for i in (1, 2, 3)]
    for n in lab.nodes:
        ns = net["nodes"][n["name"]]["ns"]
        addrs = subprocess.run(["ip", "-n", ns, "-j", "addr"], capture_output=True, text=True, check=True).stdout
        assert n["addr"] in addrs and ns in _netns_and_links()[0]
        # the node's daemon and its sshd live in that namespace (same network namespace inode)
        pid = lab.daemon_info(n["name"])["pid"]
        assert subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True,
                              check=True).stdout.strip() == ns
    sshds = lab.info["pids"]["sshd_shards"]
    assert len(sshds) == 3 and len(set(sshds)) == 3
    inv = _inv(lab)
    assert [n.host for n in inv.nodes] == [n["addr"] for n in lab.nodes]
    assert lab.prometheus_up() == 3  # Prometheus, in the lab's namespace, scrapes across the bridge


def test_net_delay_slows_every_round_trip_and_clearing_it_restores_the_link(lab):
    node = "node-a1"
    status = C.service_status(_inv(lab).node(node).ctx)

    async def twice():
        async with SshPool.from_inventory(_inv(lab)) as pool:
            await pool.shell(node).run(status, check=False)  # connected
            t0 = time.monotonic()
            await pool.shell(node).run(status, check=False)
            return time.monotonic() - t0
    lab.fault(node, "net-delay", ms=300)
    try:
        slow = run(twice())
    finally:
        lab.clear_faults(node)
    # a command on an open connection is at least one round trip (channel open, exec, exit):
    # a lower bound that an injected delay cannot fail to meet
    assert slow >= 0.3, slow
    assert json.loads((lab.dir / "nodes" / node / "net.json").read_text()) == {"delay_ms": 0}


def test_net_partition_from_the_controller_cuts_ssh_and_from_peers_cuts_only_the_other_zones(lab):
    node = "node-b1"
    lab.zone_fault("dc2", "net-partition", side="controller")
    try:
        rules = lab.netns_rules(node)
        assert lab.info["netns"]["controller"] in rules
        rn = _inv(lab).node(node)

        async def reach():
            async with SshPool([dataclasses.replace(rn.ssh, connect_timeout=1.0)]) as pool:
                await pool.shell(node).run(C.service_status(rn.ctx), check=False)
        with pytest.raises(TransportError):
            run(reach())
    finally:
        lab.clear_faults(node)
    lab.fault(node, "net-partition", side="peers")
    try:
        rules = lab.netns_rules(node)
        others = [n["addr"] for n in lab.nodes if n["name"] != node]
        assert all(a in rules for a in others) and lab.info["netns"]["controller"] not in rules
        # the daemon soon sees no peer up (RPC between namespaces is really cut)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = next(r for r in lab.status()["nodes"] if r["name"] == node)
            if row["peers_up"] == 0:
                break
            time.sleep(0.5)
        assert row["peers_up"] == 0, row
    finally:
        lab.clear_faults(node)
    assert "drop" not in lab.netns_rules(node)


def test_ssh_drop_kills_the_session_of_the_matching_command_while_it_runs(lab):
    node = "node-c1"
    inv = _inv(lab)
    cmd = C.service_status(inv.node(node).ctx)
    lab.fault(node, "ssh-drop", match="garage-service is-active")

    async def go():
        async with SshPool.from_inventory(inv) as pool:
            with pytest.raises(TransportError):
                for _ in range(200):  # is-active is quick: repeat until the watcher catches one
                    await pool.shell(node).run(cmd, check=False)
            # one use: the next command reconnects and runs
            return await pool.shell(node).run(cmd, check=False)
    res = run(go(), limit=60)
    assert res.exit_status == 0
    events = [json.loads(x) for x in (lab.node_dir(node) / "net-events.jsonl").read_text().splitlines()]
    assert len(events) == 1 and "garage-service is-active" in events[0]["command"]
    assert lab.sshd_ready()  # the node's sshd itself was not touched


def test_net_faults_need_a_netns_lab(make_lab):
    from garage_lab.harness import LabError

    lab = make_lab(version="0.7.3", zones=3, per_zone=1, wait_prometheus=False)
    for kind, kw in (("net-delay", {"ms": 10}), ("net-loss", {"pct": 1}), ("ssh-drop", {"match": "x"})):
        with pytest.raises(LabError, match="--netns"):
            lab.fault("node-a1", kind, **kw)


def _mine(tag: str) -> tuple[set[str], set[str]]:
    """This lab's namespaces and root-namespace links (other labs may come and go meanwhile)."""
    spaces, links = _netns_and_links()
    return {x for x in spaces if x.startswith(f"gl-{tag}")}, {x for x in links if x.startswith(f"gl{tag}")}


def test_teardown_removes_every_namespace_and_link_even_after_a_failed_start(tmp_path):
    from garage_lab.harness import Lab, LabError, LabSpec

    before = _netns_and_links()
    lab = Lab.up(LabSpec(dir=str(tmp_path / "ok"), zones=3, per_zone=1, netns=True), wait_prometheus=False)
    tag = lab.info["netns"]["tag"]
    # not vacuous: 4 namespaces (the lab's, 3 nodes') and the controller's link, none there before
    assert _mine(tag) == ({f"gl-{tag}", *(f"gl-{tag}-{i}" for i in (1, 2, 3))}, {f"gl{tag}h"})
    assert not (_mine(tag)[0] & before[0])
    lab.down()
    assert _mine(tag) == (set(), set())  # `ip netns list` and `ip link` are as they were for this lab
    assert before[0] - _netns_and_links()[0] <= {x for x in before[0] if x.startswith("gl-")}  # nothing else touched
    assert f"{lab.info['netns']['subnet']}.0/24" not in subprocess.run(["ip", "route"], capture_output=True,
                                                                        text=True, check=True).stdout
    # a start that fails half-way (here: sshd refuses its config, after the namespaces were
    # made) is undone too
    spec = LabSpec(dir=str(tmp_path / "bad"), zones=3, per_zone=1, netns=True, ssh_port=0)
    with pytest.raises(LabError, match="sshd config rejected"):
        Lab.up(spec, wait_prometheus=False, timeout=20)
    bad = json.loads((tmp_path / "bad" / "lab.down.json").read_text())
    assert len(bad["netns_removed"]) == 5  # it failed after making its 4 namespaces and the controller's link
    assert _mine(bad["netns"]["tag"]) == (set(), set())
