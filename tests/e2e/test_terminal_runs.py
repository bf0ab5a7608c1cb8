"""Issue 8, at the terminal: ``garage-migrate run`` with no ``PREFECT_API_URL`` (its own temporary
Prefect server), from a shell with no terminal and on a pty, as an operator runs it; two runs on
one cluster, the lock, ``unlock``, and no Prefect server left behind.

Every test asserts from the lab's service events (the ground truth of every stop and start)
that no node was touched by what must not act, and from the ledger that no decision was
recorded that no person gave. (Split from ``test_operator_safety.py``, which needs a worker and
the deployments: these need neither, and run in another test process.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from garage_migrate.ledger import Ledger
from tests.e2e.stack import ROOT, service_events


def _ledger(lab, mid: str | None = None) -> Ledger:
    inv = yaml.safe_load((lab.dir / "inventory.yaml").read_text())
    mid = mid or f"{inv['cluster']}-to-v0.8.7".lower()
    return Ledger.load(Path(inv["backup"]["root"]) / inv["cluster"] / mid / "ledger.json")


# ---------------------------------------------------------------------------- the terminal
#: Marks the processes this module's terminal runs start (their temporary servers inherit it),
#: so that the process-table check sees ours only, not another suite's on the same machine.
TAG = f"gm-test-{os.getpid()}-{time.time_ns()}"


_STARTED: list[subprocess.Popen] = []


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, GARAGE_MIGRATE_TEST_TAG=TAG)
    env.pop("PREFECT_API_URL", None)
    p = subprocess.Popen([sys.executable, "-m", "garage_migrate.cli", *args], cwd=ROOT, env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, **kw)
    _STARTED.append(p)
    return p


@pytest.fixture(autouse=True)
def _stop_terminal_runs():
    """Every CLI run a test started is stopped (its process group, by PID), even after a failure."""
    yield
    while _STARTED:
        p = _STARTED.pop()
        if p.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                    p.wait(20)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue


def _servers_of(pids_before: set[int]) -> list[str]:
    """Prefect server processes started by a CLI run (temporary homes) that are still running."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) not in pids_before:
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                env = (p / "environ").read_bytes()
            except OSError:
                continue
            if "server start" in cmd and f"GARAGE_MIGRATE_TEST_TAG={TAG}".encode() in env:
                out.append(f"{p.name}: {cmd}")
    return out


@pytest.mark.timeout(900)
def test_two_terminal_runs_one_cluster_unlock_and_nothing_left_running(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    inv = str(lab.dir / "inventory.yaml")
    before = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}
    a = _cli("run", "simple", "--inventory", inv, "--watch", "2", "--gate-deadline", "90")
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                g = _ledger(lab).gate("approve-shutdown")
                if g is not None and g.status == "waiting":
                    break
            except (OSError, ValueError):
                pass
            assert a.poll() is None, a.communicate()
            assert time.monotonic() < deadline, "the first run never paused"
            time.sleep(1)
        t0 = time.time()
        b = _cli("run", "simple", "--inventory", inv)
        out, err = b.communicate(timeout=240)
        assert b.returncode == 3, (b.returncode, out, err)
        assert "still running" in err and "refused" in err, err
        assert "Traceback" not in out + err
        # refused before a temporary server or a flow run was started (lock_precheck)
        assert "flow run " not in out, out
        c = _cli("run", "simple", "--inventory", inv, "--migration-id", "other-migration", "--no-input")
        out, err = c.communicate(timeout=240)
        assert c.returncode == 3 and "cluster is locked by migration" in err, (c.returncode, err)
        assert "flow run " not in out, out
        assert service_events(lab, t0) == [], "a refused terminal run touched a node"
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGTERM)
        out_a, err_a = a.communicate(timeout=60)
    assert "No terminal to ask on: answer at http://127.0.0.1:" in out_a, out_a[-2000:]
    assert out_a.count("Starting temporary server") == 0 and "Errno 98" not in out_a + err_a
    time.sleep(1)
    assert _servers_of(before) == [], "a Prefect server outlived its garage-migrate run"
    # the interrupted migration still holds the cluster: another one stays refused until unlock
    c = _cli("run", "simple", "--inventory", inv, "--migration-id", "other-migration", "--no-input")
    out, err = c.communicate(timeout=240)
    assert c.returncode == 3 and "cluster is locked by migration" in err, (c.returncode, err)
    assert "flow run " not in out, out
    mid = _ledger(lab).doc.migration_id
    u = subprocess.run([sys.executable, "-m", "garage_migrate.cli", "unlock", "--inventory", inv,
                        "--migration-id", mid], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert u.returncode == 0 and "broken on" in u.stdout, (u.stdout, u.stderr)
    assert [e for e in _ledger(lab).doc.events if e.kind == "unlock"]
    d = _cli("run", "simple", "--inventory", inv, "--migration-id", "other-migration", "--no-input",
             "--gate-deadline", "90")
    out, err = d.communicate(timeout=400)
    # it got past the lock: its lock records are on the nodes. What it then does on a cluster
    # the first migration left half-way (here: client ports already moved by the first one's
    # API gate) is that migration's business; with --no-input it can only stop or fail (exit 1)
    assert d.returncode == 1 and "cluster is locked" not in err, (d.returncode, out[-2000:], err[-2000:])
    from garage_migrate.cluster_lock import LockRecord

    for n in lab.nodes:
        rec = os.readlink(str(lab.node_dir(n["name"]) / "meta") + ".garage-migrate.lock")
        assert LockRecord.parse(rec).migration_id == "other-migration", rec
    time.sleep(1)
    assert _servers_of(before) == []


@pytest.mark.timeout(900)
def test_a_terminal_run_asks_at_the_prompt_and_takes_only_a_choice(make_lab):
    """``garage-migrate run`` on a terminal (a pty): the prompt refuses what is not a choice of
    the form (nothing is decided by default), takes "approve", and the run completes; its
    temporary server is gone afterwards."""
    import pty
    import select

    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    inv = str(lab.dir / "inventory.yaml")
    before = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}
    env = dict(os.environ, GARAGE_MIGRATE_TEST_TAG=TAG)
    env.pop("PREFECT_API_URL", None)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI with the pty as its terminal
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "garage_migrate.cli", "run", "simple", "--inventory", inv,
                                   "--watch", "2", "--gate-deadline", "90"], env)
    out = b""

    def expect(text: bytes, after: int = 0, timeout: float = 400) -> int:
        """Read until ``text`` appears after offset ``after``; return where it ends."""
        nonlocal out
        deadline = time.monotonic() + timeout
        while out.find(text, after) < 0:
            assert time.monotonic() < deadline, out[-3000:].decode(errors="replace")
            r, _, _ = select.select([fd], [], [], 1)
            if r:
                try:
                    out += os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal (it exited)
                    raise AssertionError(f"the CLI exited before {text!r}:\n"
                                         + out[-4000:].decode(errors="replace")) from None
        return out.find(text, after) + len(text)

    try:
        pos = 0
        for gate in (b"approve-shutdown", b"approve-reopen"):
            mark = pos = expect(b"PAUSED for a decision at " + gate, pos)
            pos = expect(b"decision ['approve', 'abort']: ", pos)
            os.write(fd, b"yes\n")  # not a choice: refused, asked again
            pos = expect(b"not a decision", pos)
            pos = expect(b"decision ['approve', 'abort']: ", pos)
            os.write(fd, b"approve\n")
            pos = expect(b"note: ", pos)
            os.write(fd, b"from the pty\n")
            assert out.count(b"decision ['approve', 'abort']: ", mark, pos) == 2
        expect(b'"state": "done"', pos, timeout=400)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, out[-3000:]
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
    led = _ledger(lab)
    assert led.doc.state == "done"
    assert [(g, led.gate(g).by, led.gate(g).note) for g in ("approve-shutdown", "approve-reopen")] == \
        [("approve-shutdown", "person", "from the pty"), ("approve-reopen", "person", "from the pty")]
    time.sleep(1)
    assert _servers_of(before) == []
