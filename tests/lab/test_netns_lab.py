"""The netns lab (issue 12 §1): every node in its own network namespace, with its own address
and sshd, so that what crosses the bridge can be delayed, dropped and cut; its network faults;
and a teardown that leaves ``ip netns list`` and ``ip link`` as they were.

One 3 zones x 1 node lab serves the module; each test clears the faults it injected.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import tempfile
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


def _ns_inode(lab, name: str) -> int:
    return os.stat(f"/run/netns/{lab.info['netns']['nodes'][name]['ns']}").st_ino


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(x) for x in out.split()]


def _cpu_of_children(pid: int) -> int:
    """Clock ticks of the reaped children of ``pid`` (cutime + cstime)."""
    with open(f"/proc/{pid}/stat") as stat:
        f = stat.read().rsplit(")", 1)[1].split()
    return int(f[13]) + int(f[14])


def test_each_node_has_its_own_fork_server_and_a_call_runs_in_a_child_of_its_namespace_s_server(lab):
    from garage_lab import netns

    servers = lab.info["pids"]["cli_servers"]
    assert set(servers) == {n["name"] for n in lab.nodes} and len(set(servers.values())) == 3
    for n in lab.nodes:
        # the server lives in the node's namespace (not the controller's) and serves its own socket
        assert os.stat(f"/proc/{servers[n['name']]}/ns/net").st_ino == _ns_inode(lab, n["name"])
        assert os.path.exists(lab.info["cli_sockets"][n["name"]])
    assert os.stat("/proc/self/ns/net").st_ino not in {_ns_inode(lab, n["name"]) for n in lab.nodes}
    node = "node-b1"
    nd = lab.node_dir(node)
    # a stdout pipe that is already full: the call's command blocks on its first write, long
    # enough to be looked at; draining the pipe lets it finish
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    os.write(w, b"x" * 4096)
    with tempfile.TemporaryFile() as err:
        proc = netns.popen(lab, node, [str(nd / "usr/local/bin/garage"), "-c", str(nd / "etc/garage.toml"), "node", "id"],
                           stdin=subprocess.DEVNULL, stdout=w, stderr=err, env=dict(os.environ, GARAGE_LAB_NODE=node))
        os.close(w)
        try:
            deadline = time.monotonic() + 30
            while not _children(servers[node]) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            kids = _children(servers[node])
            assert len(kids) == 1, (kids, proc.poll())
            child_ns = os.stat(f"/proc/{kids[0]}/ns/net").st_ino
            others = {m: _children(servers[m]) for m in servers if m != node}
            with os.fdopen(r, "rb") as out:
                printed = out.read()
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        assert printed.startswith(b"x" * 4096) and lab.node(node)["id64"] in printed.decode(), err.read()
    assert child_ns == _ns_inode(lab, node)  # the command ran in the node's own namespace
    assert others == {m: [] for m in others}  # and no other node's server saw the call


def test_a_command_over_ssh_on_a_netns_node_runs_in_that_node_s_fork_server(lab):
    servers = lab.info["pids"]["cli_servers"]
    inv = _inv(lab)
    node = "node-c1"
    cmd = C.garage(inv.node(node).ctx, "node", "id")
    before = {m: _cpu_of_children(pid) for m, pid in servers.items()}

    async def calls():
        async with SshPool.from_inventory(inv) as pool:
            return [await pool.shell(node).run(cmd, check=False) for _ in range(5)]
    res = run(calls())
    assert [r.exit_status for r in res] == [0] * 5 and all(lab.node(node)["id64"] in r.stdout for r in res)
    after = {m: _cpu_of_children(pid) for m, pid in servers.items()}
    # the calls' CPU was reaped by node-c1's server: they were its children (nothing else of
    # this module calls a node's CLI meanwhile)
    assert after[node] > before[node] and all(after[m] == before[m] for m in servers if m != node), (before, after)


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
    servers, sockets = lab.info["pids"]["cli_servers"], lab.info["cli_sockets"]
    # with a node's fork server gone, a call in its namespace starts Python itself, and prints the same
    nd = lab.node_dir("node-a1")
    call = ["ip", "netns", "exec", lab.info["netns"]["nodes"]["node-a1"]["ns"], str(nd / "usr/local/bin/garage"),
            "-c", str(nd / "etc/garage.toml"), "layout", "show"]
    fast = subprocess.run(call, capture_output=True, timeout=60, check=False)
    os.kill(servers["node-a1"], signal.SIGTERM)
    deadline = time.monotonic() + 10
    while os.path.exists(sockets["node-a1"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(sockets["node-a1"])  # a stopped server removes its socket
    slow = subprocess.run(call, capture_output=True, timeout=60, check=False)
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr) and fast.returncode == 0
    killed = lab.down()
    # the other servers were stopped by their recorded PIDs, and no socket is left
    assert {servers["node-b1"], servers["node-c1"]} <= set(killed)
    assert not [s for s in sockets.values() if os.path.exists(s)]
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
