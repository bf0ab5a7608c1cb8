"""The lab's fork server changes what a CLI call costs, never what it does.

One 3x1 lab. Each call is made twice: through the node's launcher (which hands it to the fork
server) and as its own Python process (what the launchers did before); stdout, stderr and the
exit status are the same. Signals reach the command (``timeout`` in front of a slow stop), a
caller killed by SIGKILL takes its command with it, and with the server gone the launchers
still work (they start Python themselves).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from garage_lab import build
from garage_lab.service import main_pid, proc_alive
from garage_lab.spec import PROJECT_ROOT


@pytest.fixture(scope="module")
def lab(module_lab):
    return module_lab(version="0.8.7", zones=3, per_zone=1, wait_prometheus=False)


def _env(lab, node: str) -> dict:
    e = dict(os.environ, GARAGE_LAB_NODE=node)
    e.pop("RUST_LOG", None)
    return e


def _fast(lab, node: str, *args: str, service: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    nd = lab.node_dir(node)
    argv = ([str(lab.dir / "bin" / "garage-service"), *args] if service else
            [str(nd / "usr/local/bin/garage"), "-c", str(nd / "etc/garage.toml"), *args])
    return subprocess.run(argv, capture_output=True, env=_env(lab, node), timeout=timeout)


def _slow(lab, node: str, *args: str, service: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    nd = lab.node_dir(node)
    e = dict(_env(lab, node), PYTHONPATH=str(PROJECT_ROOT), GARAGE_LAB_DIR=str(lab.dir),
             GARAGE_LAB_DEFAULT_CONFIG=str(nd / "etc/garage.toml"))
    argv = ([sys.executable, "-S", "-m", "garage_lab.service", *args] if service else
            [sys.executable, "-S", "-m", "garage_lab.garage", "0.8.7", "-c", str(nd / "etc/garage.toml"), *args])
    return subprocess.run(argv, capture_output=True, env=e, timeout=timeout)


def _server_children(lab) -> list[int]:
    pid = lab.info["pids"]["cli_server"]
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_the_fork_server_runs_and_the_launchers_use_it(lab):
    pid = lab.info["pids"]["cli_server"]
    assert proc_alive(pid, str(lab.dir))
    assert os.path.exists(build.cli_socket(lab.dir))
    launcher = (lab.dir / "dist" / "garage-v0.8.7").read_text()
    assert build.cli_socket(lab.dir) in launcher and "fastcli.py" in launcher
    before = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[14])  # cutime: reaped children's CPU
    for _ in range(5):
        assert _fast(lab, lab.nodes[0]["name"], "layout", "show").returncode == 0
    after = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[14])
    assert after > before  # the calls ran in the server's children (their CPU is reaped by it)
    assert _server_children(lab) == []  # every call's child was reaped


@pytest.mark.parametrize("args", [
    ("layout", "show"), ("bucket", "list"), ("node", "id"), ("worker", "get"), ("--help",),
    ("no-such-command",), ("bucket", "info", "no-such-bucket"), ("status", "--nope"),
])
def test_a_call_through_the_fork_server_prints_and_exits_as_its_own_process(lab, args):
    node = lab.nodes[1]["name"]
    fast, slow = _fast(lab, node, *args), _slow(lab, node, *args)
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr), args


@pytest.mark.parametrize("args", [("is-active",), ("pid",), ("no-such",), ()])
def test_service_control_through_the_fork_server_is_the_same(lab, args):
    node = lab.nodes[1]["name"]
    fast, slow = _fast(lab, node, *args, service=True), _slow(lab, node, *args, service=True)
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr), args


def test_stdin_and_the_working_directory_are_the_callers(lab, tmp_path):
    node = lab.nodes[0]["name"]
    nd = lab.node_dir(node)
    # a relative -c path is read from the caller's working directory
    res = subprocess.run([str(nd / "usr/local/bin/garage"), "-c", "etc/garage.toml", "node", "id"], cwd=nd,
                         capture_output=True, env=_env(lab, node), timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0 and res.stdout.strip(), res.stderr


# timeout -s KILL signals its own process group too: it dies of SIGKILL with the command (-9)
@pytest.mark.parametrize("sig,rc", [("TERM", 124), ("KILL", -9)])
def test_a_caller_stopped_by_timeout_stops_its_command(lab, sig, rc):
    """``timeout`` sends TERM to the client, which sends it on; a client killed by SIGKILL
    cannot, and the server kills the command then. Either way the slow stop's service
    control is gone, and the node's daemon is still there (it was being stopped)."""
    node = lab.nodes[2]["name"]
    lab.fault(node, "slow-stop", seconds=20)
    try:
        res = subprocess.run(["timeout", "-s", sig, "2", str(lab.dir / "bin" / "garage-service"), "stop"],
                             capture_output=True, env=_env(lab, node), timeout=60)
        assert res.returncode == rc, res
        # gone well before the 20 s stop would have ended it by itself
        deadline = time.monotonic() + 3
        while _server_children(lab) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _server_children(lab) == [], "the stop's command outlived its caller"
    finally:
        lab.clear_faults(node)
        # the daemon got its stop signal: let it finish, then start it again for the next tests
        nd = lab.node_dir(node)
        pid = main_pid(nd)
        deadline = time.monotonic() + 60
        while pid and proc_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _fast(lab, node, "start", service=True)
        lab.wait_ready(60, prometheus=False)


def test_with_the_server_gone_the_launchers_start_python_themselves(lab):
    node = lab.nodes[0]["name"]
    want = _slow(lab, node, "layout", "show")
    pid = lab.info["pids"]["cli_server"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while proc_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(build.cli_socket(lab.dir))  # a stopped server removes its socket
    got = _fast(lab, node, "layout", "show")
    assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr)
