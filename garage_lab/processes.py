"""Running a lab's processes: the node daemons, sshd, Prometheus; readiness; teardown.

Every process is started in its own session and recorded by PID (daemons by the service
stand-in in ``run/``, sshd and Prometheus in ``lab.json``), so ``down`` kills exactly what the
lab started, and then sweeps any process whose command line points into the lab directory
(offline repairs, traffic, ssh sessions).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import build, netns, service
from .garage.knobs import Faults
from .garage.personality import PERSONALITIES
from .spec import SSHD, LabError


def start(lab, wait: bool, timeout: float, wait_prometheus: bool, t0: float) -> None:
    """Start sshd, Prometheus and every node; with ``wait``, wait until the lab is ready.

    On any failure everything started so far is taken down before the error propagates.
    """
    try:
        if lab.spec.netns:
            netns.setup(lab)
            netns.start_relays(lab)
        start_cli_server(lab)
        start_sshd(lab)
        start_prometheus(lab)
        for node in lab.nodes:
            start_daemon(lab, node["name"])
        if wait:
            wait_ready(lab, timeout=max(5.0, timeout - (time.monotonic() - t0)), prometheus=wait_prometheus)
    except BaseException:
        down(lab)
        raise


def start_daemon(lab, name: str) -> None:
    """Start node ``name``'s daemon (in its namespace on a netns lab, as its sshd would)."""
    if not lab.spec.netns:
        service.start(lab.node_dir(name))
        return
    env = dict(os.environ, GARAGE_LAB_NODE=name)
    proc = netns.popen(lab, name, [str(lab.dir / "bin" / "garage-service"), "start"], env=env,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise LabError(f"{name}: the daemon did not start: {out.decode(errors='replace').strip()}")


def start_cli_server(lab) -> None:
    """Start the lab's fork server (:mod:`garage_lab.forkserver`): a CLI call then costs a fork
    instead of a Python start. A netns lab gets one per node, started inside the node's
    namespace (a forked child inherits it, so a call runs where it was made); its socket is
    named by that namespace's inode. PIDs and sockets are recorded in ``lab.json`` for down."""
    if not lab.spec.netns:
        lab.info["pids"]["cli_server"] = _cli_server(lab, build.cli_socket(lab.dir), None)
        lab.save()
        return
    lab.info["pids"]["cli_servers"] = servers = {}
    lab.info["cli_sockets"] = sockets = {}
    for name in lab.info["netns"]["nodes"]:
        # the inode of the namespace's bind mount is the one /proc/<pid>/ns/net shows inside it
        sockets[name] = build.cli_socket(lab.dir, os.stat(f"/run/netns/{netns.ns_of(lab, name)}").st_ino)
        servers[name] = _cli_server(lab, sockets[name], name)
        lab.save()  # each PID as soon as it exists: a failure further on still stops it


def _cli_server(lab, sock: str, node: str | None) -> int:
    """Start one fork server on ``sock`` (in node ``node``'s namespace, if given); its PID."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)  # a socket left by a lab of this directory killed before its down
    argv = [sys.executable, "-S", "-m", "garage_lab.forkserver", sock, str(lab.dir)]
    kw = {"stdin": subprocess.DEVNULL, "start_new_session": True, "env": dict(os.environ, PYTHONPATH=str(build.PROJECT_ROOT))}
    with open(lab.dir / "cli-server.log", "ab") as log:  # the child keeps its own copy of the fd
        proc = netns.popen(lab, node, argv, stdout=log, stderr=log, **kw) if node else \
            subprocess.Popen(argv, stdout=log, stderr=log, **kw)
    return proc.pid


def start_sshd(lab) -> None:
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    pids = []
    for k in range(len(build.sshd_shards(lab))):
        cfg = build.sshd_config_path(lab, k)
        check = subprocess.run([SSHD, "-t", "-f", str(cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise LabError(f"sshd config rejected: {check.stderr.strip()}")
        log = open(lab.dir / "ssh" / "sshd.log", "ab")
        argv = [SSHD, "-D", "-e", "-f", str(cfg)]
        kw = dict(stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        # a netns lab: shard k is node k's sshd, in that node's namespace (`ip netns exec` execs it: same PID)
        proc = netns.popen(lab, lab.nodes[k]["name"], argv, **kw) if lab.spec.netns else subprocess.Popen(argv, **kw)
        pids.append(proc.pid)
    lab.info["pids"]["sshd"] = pids[0]
    lab.info["pids"]["sshd_shards"] = pids
    lab.save()


def sshd_pids(lab) -> list[int]:
    pids = lab.info["pids"]
    return pids.get("sshd_shards") or ([pids["sshd"]] if pids.get("sshd") else [])


def reload_sshd(lab) -> None:
    """Apply changed sshd configs (SIGHUP re-execs sshd; open sessions stay)."""
    lab.write_sshd_config()
    for pid in sshd_pids(lab):
        if service.proc_alive(pid, str(lab.dir)):
            os.kill(pid, signal.SIGHUP)
    time.sleep(0.3)


def start_prometheus(lab) -> None:
    prom = lab.dir / "prometheus"
    log = open(prom / "prometheus.log", "ab")
    argv = [shutil.which("prometheus") or "prometheus", f"--config.file={prom / 'prometheus.yml'}",
            f"--storage.tsdb.path={prom / 'data'}", f"--web.listen-address={lab.spec.subnet}.254:{lab.spec.prometheus_port}",
            "--storage.tsdb.retention.time=1d"]
    kw = dict(stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=str(prom))
    # a netns lab: Prometheus lives in the lab's namespace, on the bridge (10.242.C.254), and
    # scrapes the nodes across it; the controller reaches it over the lab's route
    proc = netns.popen(lab, None, argv, **kw) if lab.spec.netns else subprocess.Popen(argv, **kw)
    lab.info["pids"]["prometheus"] = proc.pid
    lab.save()


def wait_ready(lab, timeout: float = 60.0, prometheus: bool = True) -> None:
    """Wait until every node sees its same-version peers and Prometheus scrapes all nodes.

    Raises:
        LabError: not ready before ``timeout`` (the message says what is missing).
    """
    deadline = time.monotonic() + timeout
    missing = "nothing checked yet"
    while time.monotonic() < deadline:
        missing = not_ready(lab, prometheus)
        if not missing:
            return
        time.sleep(0.25)
    raise LabError(f"lab not ready after {timeout:.0f}s: {missing}")


def not_ready(lab, prometheus: bool = True) -> str:
    st = lab.status()
    for n in st["nodes"]:
        if not n["running"]:
            return f"{n['name']} is not running"
        if n.get("peers_up") is None:
            return f"{n['name']} does not answer RPC yet"
        # nodes with the same RPC tag connect (all 0.8.x interoperate); 0.7 and 0.8 never do
        same = [m for m in st["nodes"] if m["running"] and m["name"] != n["name"] and m["version"]
                and PERSONALITIES[m["version"]].rpc_tag == PERSONALITIES[n["version"]].rpc_tag]
        if n["peers_up"] < len(same):
            return f"{n['name']} sees {n['peers_up']} of {len(same)} peers"
    if not sshd_ready(lab):
        return "sshd is not listening yet"
    if not prometheus:
        return ""
    up = prometheus_up(lab)
    want = sum(1 for n in st["nodes"] if n["running"])
    if up != want:
        return f"Prometheus reports {up} of {want} targets up"
    return ""


def _listening(addr: str, port: int) -> bool:
    """Whether a TCP socket of this network namespace listens on ``addr:port`` (``/proc/net/tcp``)."""
    a = socket.inet_aton(addr)
    want = f"{int.from_bytes(a, 'little'):08X}:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(f[1] == want and f[3] == "0A" for f in (line.split() for line in lines) if len(f) > 3)


def sshd_ready(lab) -> bool:
    """Whether sshd accepts connections on every non-refused node address.

    A loopback lab reads the listening sockets from ``/proc/net/tcp``: a probe that connects
    shows in sshd's log as a connection (late, under load: sshd-session logs it once it has
    started), and the tests that prove no SSH connection was opened read that log. A netns
    lab's sshd listens in its node's namespace, which /proc/net/tcp here does not show: there
    the probe connects.
    """
    for n in lab.nodes:
        if Faults.load(lab.node_dir(n["name"]) / "faults.json").find("ssh-refuse"):
            continue
        if not lab.spec.netns:
            if not _listening(n["addr"], lab.spec.ssh_port):
                return False
            continue
        try:
            socket.create_connection((n["addr"], lab.spec.ssh_port), timeout=0.5).close()
        except OSError:
            return False
    return True


def prometheus_up(lab) -> int:
    """How many garage targets Prometheus reports as up (-1 if it does not answer)."""
    import urllib.parse
    import urllib.request

    q = urllib.parse.quote('count(up{job="garage"} == 1)')
    try:
        with urllib.request.urlopen(f"{lab.prometheus_url}/api/v1/query?query={q}", timeout=2) as r:
            res = json.loads(r.read())["data"]["result"]
    except (OSError, ValueError, KeyError):
        return -1
    return int(float(res[0]["value"][1])) if res else 0


def down(lab) -> list[int]:
    """Kill every process of this lab; return the PIDs that were killed."""
    killed = []
    targets = []
    for n in lab.nodes:
        pid = service.main_pid(lab.node_dir(n["name"]))
        if pid:
            targets.append(pid)
    for pid in (sshd_pids(lab) + [lab.info["pids"].get("prometheus"), lab.info["pids"].get("cli_server")]
                + list(lab.info["pids"].get("relays", {}).values())
                + list(lab.info["pids"].get("cli_servers", {}).values())):
        # a PID recorded at start may be another process's by now (the daemon died, the PID
        # was recycled): only one whose command line names this lab is this lab's
        if pid and service.proc_alive(pid, str(lab.dir)):
            targets.append(pid)
    # sweep: anything else started from this lab (offline repairs, traffic, ssh sessions)
    marker = str(lab.dir) + "/"
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (me,) or int(entry.name) in targets:
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and service.proc_alive(int(entry.name)):
            targets.append(int(entry.name))
    for pid in targets:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    for pid in killed:
        service.wait_exit(pid, 5)
    for sock in [build.cli_socket(lab.dir), *lab.info.get("cli_sockets", {}).values()]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)  # the fork servers were SIGKILLed: their sockets stay
    # namespaces, links and routes go last, and always: even a half-made netns lab is undone
    lab.info["netns_removed"] = netns.teardown(lab)
    lab.info["pids"] = {}
    lab.info["down"] = time.time()
    lab.save()
    (lab.dir / "lab.json").rename(lab.dir / "lab.down.json")
    return killed
