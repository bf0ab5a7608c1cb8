"""Running a migration as its user does, for the benchmarks: a real ``prefect server start`` and
``garage-migrate run ... --auto-approve`` as a subprocess with no terminal; and what the run
left behind: its ledger (phase times) and its command journal (``commands.jsonl``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def prefect_server(api: str | None = None):
    """Yield a Prefect API URL: ``api`` when given, else one real ``prefect server start`` on a
    fresh SQLite database (the CLI's own temporary server), stopped by PID on exit."""
    if api:
        yield api
        return
    from garage_migrate.cli import _TemporaryServer

    server = _TemporaryServer()
    try:
        yield server.start() + "/api"
    finally:
        server.stop()


@dataclass
class RunResult:
    """One ``garage-migrate run``: exit status, wall time, where its records are."""

    rc: int
    seconds: float
    started: float  # epoch seconds, just before the process started
    ledger: Path
    output: str

    @property
    def journal(self) -> Path:
        """The run's command journal."""
        return self.ledger.parent / "commands.jsonl"


def ledger_path(lab) -> Path:
    """The ledger of the lab's default migration (``<cluster>-to-v<target>``)."""
    inv = yaml.safe_load((lab.dir / "inventory.yaml").read_text())
    mid = f"{inv['cluster']}-to-v{inv['target']['version']}".lower()
    return Path(inv["backup"]["root"]) / inv["cluster"] / mid / "ledger.json"


def run_migration(lab, procedure: str, api: str, *, watch: float = 0.0, gate_deadline: float = 600.0,
                  timeout: float = 3600.0) -> RunResult:
    """``garage-migrate run <procedure> --auto-approve`` on the lab's inventory, no terminal,
    against ``api``; its process group is killed if it outlives ``timeout``."""
    env = dict(os.environ, PREFECT_API_URL=api, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "garage_migrate.cli", "run", procedure, "--inventory", str(lab.dir / "inventory.yaml"),
            "--auto-approve", "--watch", str(watch), "--gate-deadline", str(gate_deadline)]
    t_epoch, t0 = time.time(), time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out = ""
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    return RunResult(proc.returncode, time.monotonic() - t0, t_epoch, ledger_path(lab), out or "")


def phase_times(ledger: Path) -> list[tuple[str, float]]:
    """``(phase, seconds)`` in order, from the ledger's ``phase`` events (start/end)."""
    events = json.loads(ledger.read_text()).get("events", [])
    starts: dict[str, float] = {}
    out = []
    for e in events:
        if e.get("kind") != "phase":
            continue
        verb, _, name = e["message"].partition(" ")
        if verb == "start":
            starts[name] = e["t"]
        elif verb == "end" and name in starts:
            out.append((name, e["t"] - starts.pop(name)))
    return out


def journal(path: Path) -> list[dict]:
    """The command journal's ``finished`` lines (one per command or upload run)."""
    return [e for e in (json.loads(x) for x in path.read_text().splitlines() if x.strip())
            if e.get("event") == "finished"]
