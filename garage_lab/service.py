"""Service control of one lab node: the lab's stand-in for ``systemctl ... garage``.

The lab has no systemd, so each node's service is driven by ``<lab>/bin/garage-service``,
which runs this module. The node comes from ``GARAGE_LAB_NODE``, which the lab's sshd sets
according to the address a session reached (``Match LocalAddress``), or from ``--node``.

Semantics follow systemd's defaults for a ``Type=simple`` unit, on purpose:

- ``start`` returns once the process is spawned (readiness is the caller's business);
- ``stop`` sends SIGTERM (systemd's default ``KillSignal``), waits ``--timeout`` seconds
  (``TimeoutStopSec`` = 90 s) and then SIGKILLs. On 0.7.3 SIGTERM kills at once, which is why
  an orchestrator should stop 0.7 nodes with ``--signal INT`` (ref 11);
- ``is-active`` prints ``active`` / ``inactive`` / ``failed`` and exits 0 / 3 / 3;
- ``kill --signal SIG`` only delivers a signal, like ``systemctl kill -s SIG``;
- ``pid`` prints the main PID, or 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def lab_dir() -> Path:
    """The lab directory this script belongs to (``<lab>/bin/garage-service`` sets it)."""
    return Path(os.environ["GARAGE_LAB_DIR"])


def node_dir(name: str) -> Path:
    """``<lab>/nodes/<name>``, checked to exist."""
    d = lab_dir() / "nodes" / name
    if not (d / "node.json").exists():
        raise SystemExit(f"Unit garage.service not found (no lab node {name!r}).")
    return d


def proc_alive(pid: int, must_contain: str | None = None) -> bool:
    """Whether ``pid`` is a live (non-zombie) process, optionally with a cmdline substring."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        if must_contain is not None:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            return must_contain in cmdline
        return True
    except (OSError, IndexError):
        return False


def main_pid(nd: Path) -> int:
    """The running daemon's PID, or 0."""
    try:
        pid = int((nd / "run" / "garage.pid").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0
    return pid if proc_alive(pid, str(nd)) else 0


def record(nd: Path, event: str, **extra) -> None:
    """Append a service event to ``<lab>/events.jsonl`` (ground truth of downtime windows).

    One ``O_APPEND`` write per line, so concurrent services never interleave lines.
    """
    line = json.dumps({"t": time.time(), "node": nd.name, "event": event, **extra}) + "\n"
    fd = os.open(nd.parent.parent / "events.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def start(nd: Path) -> int:
    """Spawn the daemon with the node's binary and config, detached from the caller."""
    if main_pid(nd):
        return 0
    (nd / "run").mkdir(exist_ok=True)
    (nd / "log").mkdir(exist_ok=True)
    info = json.loads((nd / "node.json").read_text())
    env = dict(os.environ, GARAGE_LAB_NODE=info["name"], GARAGE_LAB_DIR=str(nd.parent.parent))
    env.pop("GARAGE_LAB_DEFAULT_CONFIG", None)
    with open(nd / "log" / "garage.log", "ab") as log:
        proc = subprocess.Popen(
            [str(nd / "usr/local/bin/garage"), "-c", str(nd / "etc/garage.toml"), "server"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            start_new_session=True, close_fds=True, cwd=str(nd),
        )
    tmp = nd / "run" / "garage.pid.tmp"
    tmp.write_text(str(proc.pid))
    os.replace(tmp, nd / "run" / "garage.pid")
    (nd / "run" / "state").write_text("started")
    record(nd, "start", pid=proc.pid, binary=os.path.basename(os.path.realpath(nd / "usr/local/bin/garage")))
    return 0


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` is gone; return whether it exited in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc_alive(pid):
            return True
        try:
            os.waitpid(pid, os.WNOHANG)  # reaps only our own children; harmless otherwise
        except ChildProcessError:
            pass
        time.sleep(0.02)
    return not proc_alive(pid)


def stop(nd: Path, sig: signal.Signals, timeout: float) -> int:
    """Signal the daemon, wait for it to exit, SIGKILL after ``timeout``."""
    pid = main_pid(nd)
    if not pid:
        return 0
    record(nd, "stop", pid=pid, signal=sig.name)
    os.kill(pid, sig)
    if not wait_exit(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        wait_exit(pid, 10)
        (nd / "run" / "state").write_text("failed")
        return 0
    (nd / "run" / "state").write_text("stopped")
    return 0


def is_active(nd: Path) -> int:
    """Print the unit state like ``systemctl is-active``."""
    if main_pid(nd):
        print("active")
        return 0
    try:
        state = (nd / "run" / "state").read_text().strip()
    except OSError:
        state = "stopped"
    # a daemon that died on its own (crash, SIGTERM on 0.7.3, refused start) is "failed"
    print("failed" if state in ("started", "failed") else "inactive")
    return 3


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of ``garage-service``."""
    ap = argparse.ArgumentParser(prog="garage-service", description=__doc__.split("\n")[0])
    ap.add_argument("--node", default=os.environ.get("GARAGE_LAB_NODE"))
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("start")
    p_stop = sub.add_parser("stop")
    p_stop.add_argument("--signal", default="TERM")
    p_stop.add_argument("--timeout", type=float, default=90.0)
    p_restart = sub.add_parser("restart")
    p_restart.add_argument("--signal", default="TERM")
    p_restart.add_argument("--timeout", type=float, default=90.0)
    p_kill = sub.add_parser("kill")
    p_kill.add_argument("--signal", default="TERM")
    sub.add_parser("is-active")
    sub.add_parser("pid")
    args = ap.parse_args(argv)
    if not args.node:
        print("garage-service: no node: set GARAGE_LAB_NODE (the lab's sshd does) or pass --node", file=sys.stderr)
        return 2
    nd = node_dir(args.node)
    if args.cmd == "start":
        return start(nd)
    if args.cmd in ("stop", "restart"):
        sig = signal.Signals["SIG" + args.signal.upper().removeprefix("SIG")]
        rc = stop(nd, sig, args.timeout)
        return start(nd) if args.cmd == "restart" else rc
    if args.cmd == "kill":
        pid = main_pid(nd)
        if pid:
            sig = signal.Signals["SIG" + args.signal.upper().removeprefix("SIG")]
            record(nd, "kill", pid=pid, signal=sig.name)
            os.kill(pid, sig)
        return 0
    if args.cmd == "is-active":
        return is_active(nd)
    print(main_pid(nd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
