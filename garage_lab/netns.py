"""A real network under the lab (``garage-lab up --netns``): one network namespace per node.

Topology (``T`` is the lab's tag, ``C`` its subnet number; every name is unique per lab, so
labs coexist)::

    root namespace (the controller)        lab namespace gl-T (router, Prometheus)
      glTh 10.243.C.1/24  <--- veth --->     glTl 10.243.C.2/24
      route 10.242.C.0/24 via 10.243.C.2     bridge glTb 10.242.C.254/24 (Prometheus listens here)
                                              |-- glTn1 <--- veth ---> eth0 10.242.C.1 in gl-T-1
                                              |-- glTn2 <--- veth ---> eth0 10.242.C.2 in gl-T-2 ...

Each node namespace runs the node's daemon, its own sshd and a delaying relay
(:mod:`garage_lab.relay`). An nftables table ``ip garage_lab`` in each node namespace
redirects connections arriving on ``eth0`` for SSH and the admin port to the relay, which
forwards them, delayed, to the real listeners (its own connections come over ``lo`` and are
not redirected). The same table holds the fault rules: packet loss (``numgen random mod 100 <
N drop``) and partitions (drop to and from the controller's address, or the other zones' node
addresses). ``tc netem`` is not in our kernels, hence the relay for latency.

Every name made is recorded in ``lab.json`` (``netns``) before it is made, so :func:`teardown`
removes exactly what this lab made, even after a half-done set-up or a failed test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .garage.knobs import Faults
from .spec import PORT_ADMIN, LabError

NET_FAULTS = ("net-delay", "net-loss", "net-partition")
RELAY_OFFSET = 10000  # the relay listens on port + 10000 (SSH 2222 -> 12222, admin 3903 -> 13903)
PREFIX_NODES, PREFIX_LINKS = "10.242", "10.243"


def _ip() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


def _nft() -> str:
    return shutil.which("nft") or "/usr/sbin/nft"


def available() -> str:
    """Empty when this machine can run a netns lab, else what is missing."""
    if os.geteuid() != 0:
        return "a netns lab needs root (network namespaces, veth, nftables)"
    if not Path(_nft()).exists():
        return "nft is missing: run scripts/bootstrap.sh (apt-get install nftables)"
    if not Path(_ip()).exists():
        return "ip is missing (apt-get install iproute2)"
    return ""


def _run(*args: str, ns: str | None = None, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    cmd = ([_ip(), "netns", "exec", ns] if ns else []) + list(args)
    res = subprocess.run(cmd, capture_output=True, text=True, input=input, check=False)
    if check and res.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed: {res.stderr.strip() or res.stdout.strip()}")
    return res


def pick_subnet() -> str:
    """A ``10.242.C`` whose route does not exist yet in the root namespace (another netns lab's)."""
    routes = _run(_ip(), "-4", "route", "show").stdout
    span = range(20, 250)
    start = os.getpid() % len(span)
    for k in range(len(span)):
        c = span[(start + k) % len(span)]
        if f"{PREFIX_NODES}.{c}.0/24" not in routes:
            return f"{PREFIX_NODES}.{c}"
    raise LabError("no free 10.242.C.0/24 for a netns lab")


def plan(lab_dir: Path, subnet: str, nodes: list[dict]) -> dict:
    """The names and addresses a netns lab will make (recorded before anything is made)."""
    tag = hashlib.sha256(f"{lab_dir}:{os.getpid()}:{time.time()}".encode()).hexdigest()[:5]
    c = subnet.rsplit(".", 1)[1]
    return {
        "tag": tag, "lab_ns": f"gl-{tag}", "bridge": f"gl{tag}b", "host_link": f"gl{tag}h", "lab_link": f"gl{tag}l",
        "controller": f"{PREFIX_LINKS}.{c}.1", "router": f"{PREFIX_LINKS}.{c}.2", "gateway": f"{subnet}.254",
        "subnet": subnet,
        "nodes": {n["name"]: {"ns": f"gl-{tag}-{i + 1}", "link": f"gl{tag}n{i + 1}", "addr": n["addr"],
                              "zone": n["zone"]} for i, n in enumerate(nodes)},
    }


def ns_of(lab, name: str) -> str:
    """The network namespace of node ``name``."""
    return lab.info["netns"]["nodes"][name]["ns"]


def setup(lab) -> None:
    """Make the namespaces, links, addresses, routes and base nftables rules of ``lab``."""
    net = lab.info["netns"]
    ip = _ip()
    lab_ns = net["lab_ns"]
    _run(ip, "netns", "add", lab_ns)
    _run(ip, "-n", lab_ns, "link", "set", "lo", "up")
    _run(ip, "link", "add", net["host_link"], "type", "veth", "peer", "name", net["lab_link"], "netns", lab_ns)
    _run(ip, "addr", "add", f"{net['controller']}/24", "dev", net["host_link"])
    _run(ip, "link", "set", net["host_link"], "up")
    _run(ip, "-n", lab_ns, "addr", "add", f"{net['router']}/24", "dev", net["lab_link"])
    _run(ip, "-n", lab_ns, "link", "set", net["lab_link"], "up")
    _run(ip, "-n", lab_ns, "link", "add", net["bridge"], "type", "bridge")
    _run(ip, "-n", lab_ns, "addr", "add", f"{net['gateway']}/24", "dev", net["bridge"])
    _run(ip, "-n", lab_ns, "link", "set", net["bridge"], "up")
    _run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=lab_ns)
    _run(ip, "route", "add", f"{net['subnet']}.0/24", "via", net["router"], "dev", net["host_link"])
    for name, nn in net["nodes"].items():
        ns = nn["ns"]
        _run(ip, "netns", "add", ns)
        _run(ip, "-n", ns, "link", "set", "lo", "up")
        _run(ip, "-n", lab_ns, "link", "add", nn["link"], "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run(ip, "-n", lab_ns, "link", "set", nn["link"], "master", net["bridge"])
        _run(ip, "-n", lab_ns, "link", "set", nn["link"], "up")
        _run(ip, "-n", ns, "addr", "add", f"{nn['addr']}/24", "dev", "eth0")
        _run(ip, "-n", ns, "link", "set", "eth0", "up")
        _run(ip, "-n", ns, "route", "add", "default", "via", net["gateway"])
        _run(_nft(), "-f", "-", ns=ns, input=_base_rules(lab))
        apply(lab, name)


def _base_rules(lab) -> str:
    ssh, admin = lab.spec.ssh_port, PORT_ADMIN
    return (
        "table ip garage_lab {\n"
        "  chain pre { type nat hook prerouting priority dstnat; policy accept;\n"
        f'    iifname "eth0" tcp dport {ssh} redirect to :{ssh + RELAY_OFFSET}\n'
        f'    iifname "eth0" tcp dport {admin} redirect to :{admin + RELAY_OFFSET}\n'
        "  }\n"
        "  chain in { type filter hook input priority filter; policy accept; }\n"
        "  chain out { type filter hook output priority filter; policy accept; }\n"
        "}\n"
    )


def fault_rules(lab, name: str, faults: Faults) -> tuple[list[str], list[str], int]:
    """The input and output rules and the relay delay (ms) that ``faults`` of node ``name`` make."""
    net = lab.info["netns"]
    me = net["nodes"][name]
    rin: list[str] = []
    rout: list[str] = []
    delay = 0
    for e in faults.entries:
        kind = e.get("kind")
        if kind == "net-delay":
            delay = max(delay, int(e.get("ms", 0)))
        elif kind == "net-loss":
            pct = int(e.get("pct", 0))
            if not 0 <= pct <= 100:
                raise LabError(f"net-loss pct must be 0..100, not {pct}")
            if pct:
                rin.append(f'iifname "eth0" numgen random mod 100 < {pct} drop')
                rout.append(f'oifname "eth0" numgen random mod 100 < {pct} drop')
        elif kind == "net-partition":
            side = e.get("side", "controller")
            if side not in ("controller", "peers", "both"):
                raise LabError(f"net-partition side must be controller, peers or both, not {side!r}")
            addrs = []
            if side in ("controller", "both"):
                addrs.append(net["controller"])
            if side in ("peers", "both"):
                addrs += [n["addr"] for n in net["nodes"].values() if n["zone"] != me["zone"]]
            if addrs:
                s = "{ " + ", ".join(addrs) + " }"
                rin.append(f"ip saddr {s} drop")
                rout.append(f"ip daddr {s} drop")
    return rin, rout, delay


def apply(lab, name: str) -> None:
    """Make node ``name``'s nftables rules and relay delay match its current faults."""
    faults = Faults.load(lab.node_dir(name) / "faults.json")
    rin, rout, delay = fault_rules(lab, name, faults)
    script = ["flush chain ip garage_lab in", "flush chain ip garage_lab out"]
    script += [f"add rule ip garage_lab in {r}" for r in rin]
    script += [f"add rule ip garage_lab out {r}" for r in rout]
    _run(_nft(), "-f", "-", ns=ns_of(lab, name), input="\n".join(script) + "\n")
    path = lab.node_dir(name) / "net.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"delay_ms": delay}))
    os.replace(tmp, path)


def rules(lab, name: str) -> str:
    """The node namespace's nftables ruleset, as ``nft list ruleset`` prints it."""
    return _run(_nft(), "list", "ruleset", ns=ns_of(lab, name)).stdout


def popen(lab, name: str | None, argv: list[str], **kw) -> subprocess.Popen:
    """Start ``argv`` inside node ``name``'s namespace (``None``: the lab's namespace)."""
    ns = lab.info["netns"]["lab_ns"] if name is None else ns_of(lab, name)
    return subprocess.Popen([_ip(), "netns", "exec", ns, *argv], **kw)


def start_relays(lab) -> None:
    """One relay per node, in its namespace: SSH and admin ports, delayed per ``net.json``."""
    import sys

    from .spec import PROJECT_ROOT

    pids = {}
    for name, nn in lab.info["netns"]["nodes"].items():
        nd = lab.node_dir(name)
        env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
        with open(nd / "log" / "relay.log", "ab") as log:  # the child keeps its own copy of the fd
            proc = popen(lab, name, [sys.executable, "-m", "garage_lab.relay", "--node-dir", str(nd),
                                     "--addr", nn["addr"], "--port", str(lab.spec.ssh_port), "--port", str(PORT_ADMIN),
                                     "--offset", str(RELAY_OFFSET)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True)
        pids[name] = proc.pid
    lab.info["pids"]["relays"] = pids
    lab.save()


def _ns_exists(ns: str) -> bool:
    return Path("/run/netns", ns).exists()


def teardown(lab) -> list[str]:
    """Remove every namespace, link and route this lab made (those that exist); return what was
    removed. Processes still in a namespace of the lab (ours: it is this lab's) are killed first."""
    net = lab.info.get("netns")
    if not net:
        return []
    ip = _ip()
    gone = []
    spaces = [nn["ns"] for nn in net["nodes"].values()] + [net["lab_ns"]]
    for ns in spaces:
        if not _ns_exists(ns):
            continue
        pids = _run(ip, "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    for ns in spaces:
        # deleting a namespace deletes its veth ends, and so their peers and the routes over them
        if _ns_exists(ns) and _run(ip, "netns", "delete", ns, check=False).returncode == 0:
            gone.append(ns)
    if _run(ip, "link", "show", net["host_link"], check=False).returncode == 0:
        _run(ip, "link", "delete", net["host_link"], check=False)
        gone.append(net["host_link"])
    return gone
