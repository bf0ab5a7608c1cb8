"""Crash-resume chains (issue 12 §3): one migration killed (SIGKILL of the flow's process) at
point after point, resumed each time, and the checks that nothing ran twice and nothing was lost.

A *chain* is one migration on one lab and a list of :class:`Point`: each run of the migration
is watched until the ledger (or the lab) shows the next point, then its flow process is
killed; the next run resumes it, and so on; the last run completes. Two ways to resume,
alternated in one chain by :class:`Alternating`:

- :class:`NewRuns`: a new ``garage-migrate run`` with the same migration id each time, from a
  shell with no terminal (the flow runs in that process, which is what is killed);
- :class:`FlowRunRetries`: one flow run of the deployment, run by the worker; its process is
  killed, the worker reports it Crashed, and ``prefect flow-run retry`` starts it again.

What proves the resume right is the lab's ground truth (service events: every stop and start
of a daemon, with the binary it started), the ledger and the command journal, never the
orchestrator's own log.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tests.e2e.faultrun import (
    ledger_doc,
    ledger_path,
    phase_ended,
    service_events,
    step_status,
)
from tests.e2e.stack import ROOT, flow_run_pids, process_gone

TARGET_BINARY = "garage-v0.8.7"


@dataclass
class Point:
    """Where a run is killed.

    Attributes:
        name: for messages.
        reached: ``(ledger dict, lab) -> bool``: kill as soon as this holds.
        arm: run on the lab before the run that must reach this point starts (a fault that
            holds a step long enough to land in it).
        disarm: run on the lab once the run was killed (the fault is lifted).
    """

    name: str
    reached: Callable[[dict, object], bool]
    arm: Callable[[object], None] | None = None
    disarm: Callable[[object], None] | None = None


def at_boundary(phase: str) -> Point:
    """Killed right after the ledger records the end of ``phase``."""
    return Point(f"after {phase}", lambda doc, lab: phase_ended(doc, phase))


def in_step(node: str, key: str, status: str = "running", name: str | None = None) -> Point:
    """Killed while node step ``key`` (``phase:kind``) of ``node`` has ``status``."""
    return Point(name or f"{key} {status} on {node}", lambda doc, lab: step_status(doc, node, key) == status)


def holding_stop(point: Point, slow: str, seconds: float = 30.0) -> Point:
    """``point``, with ``slow``'s shutdown held ``seconds`` (a ``slow-stop`` fault) from the
    run that must reach it on: put on the point before :func:`flip_stopping` (armed=False)
    when that point can land inside the flip, so that the flip's stop of ``slow`` is held
    whichever run makes it."""
    return Point(point.name, point.reached, arm=lambda lab: lab.fault(slow, "slow-stop", seconds=seconds),
                 disarm=point.disarm)


def flip_stopping(stopped: str, slow: str, seconds: float = 30.0, armed: bool = True) -> Point:
    """Inside the simultaneous restart's stop: ``stopped`` is down, ``slow`` still runs 0.7
    (its shutdown is held ``seconds`` by a ``slow-stop`` fault; ``armed=False``: an earlier
    point armed it, :func:`holding_stop`)."""
    return Point(
        f"flip: {stopped} stopped, {slow} still on 0.7",
        # the flip records its stops' results at its barrier (one ledger write for all nodes),
        # so "stopped is down" is read from the lab's ground truth, not from the ledger
        lambda doc, lab: (step_status(doc, slow, "flip:stop") == "running" and _down_while_up(lab, stopped, slow)),
        arm=(lambda lab: lab.fault(slow, "slow-stop", seconds=seconds)) if armed else None,
        disarm=lambda lab: lab.clear_faults(slow))


def _down_while_up(lab, down: str, up: str) -> bool:
    nodes = lab.inspect(checksums=False)["nodes"]
    return nodes[down]["running_version"] is None and nodes[up]["running_version"] not in (None, "0.8.7")


def flip_starting(failing: str) -> Point:
    """Inside the simultaneous restart's start: the others run 0.8, ``failing`` stays stopped
    (its first 0.8 start is refused; the run then waits for a person's flip-failure answer)."""
    return Point(
        f"flip: others on 0.8, {failing} stopped",
        lambda doc, lab: step_status(doc, failing, "flip:start") == "failed",
        arm=lambda lab: lab.fault(failing, "refuse-start", count=1),
        disarm=lambda lab: lab.clear_faults(failing))


# ---------------------------------------------------------------------------- ways to resume
class NewRuns:
    """Each run is a new ``garage-migrate run --migration-id MID --auto-approve`` process, with no
    terminal, on the given Prefect API (so no temporary server is started per run)."""

    def __init__(self, lab, procedure: str, migration_id: str, api: str, extra: tuple[str, ...] = (),
                 temporary_first: bool = False):
        self.lab, self.procedure, self.mid, self.api, self.extra = lab, procedure, migration_id, api, extra
        self.proc: subprocess.Popen | None = None
        self.started: list[subprocess.Popen] = []
        # the first run as an operator's plain terminal run: no PREFECT_API_URL, so it starts its
        # own temporary server, which must not outlive the SIGKILL of the command
        self.temporary_first = temporary_first
        self.tag = f"gm-crash-{os.getpid()}-{time.time_ns()}"
        self.orphans: list[int] = []
        self.servers_seen: list[int] = []

    def start(self) -> None:
        """Start the next run."""
        env = dict(os.environ, PREFECT_API_URL=self.api, GARAGE_MIGRATE_TEST_TAG=self.tag)
        if self.temporary_first and not self.started:
            env.pop("PREFECT_API_URL")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "garage_migrate.cli", "run", self.procedure, "--inventory",
             str(self.lab.dir / "inventory.yaml"), "--migration-id", self.mid, "--auto-approve",
             "--watch", "2", "--gate-deadline", "90", *self.extra],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        self.started.append(self.proc)

    def alive(self) -> bool:
        """Whether the current run still runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> list[int]:
        """SIGKILL the run's process (the flow runs in it); returns the PIDs killed."""
        pid = self.proc.pid
        servers = self.temporary_servers()
        self.servers_seen += servers
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self.proc.wait(30)
        # its temporary server (own session) is told by the kernel that its parent died
        self.orphans += [p for p in servers if not process_gone(p, 60)]
        return [pid]

    def temporary_servers(self) -> list[int]:
        """The live temporary Prefect servers of this chain's runs (tagged through their environment)."""
        want = f"GARAGE_MIGRATE_TEST_TAG={self.tag}".encode()
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    cmd = Path(f"/proc/{d}/cmdline").read_bytes()
                    env = Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"server\0start" in cmd and want in env and not process_gone(int(d), 0):
                    out.append(int(d))
        return out

    def finish(self, timeout: float) -> str:
        """Wait for the current run to end; assert it completed; return its output."""
        out, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, out[-4000:]
        return out

    def output(self) -> str:
        """What the current run printed (once it ended)."""
        return self.proc.communicate(timeout=30)[0] if self.proc.poll() is not None else ""

    def stop(self) -> None:
        """Stop every run still going (by PID), even after a failure."""
        for p in self.started:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)
        for pid in self.temporary_servers():  # a server that outlived its run (the test then fails)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


class FlowRunRetries:
    """One flow run of the procedure's deployment, run by the stack's worker; after each kill,
    ``prefect flow-run retry`` (again if a late crash report overwrote the retry)."""

    DEPLOYMENTS: ClassVar[dict[str, str]] = {"simple": "simple-migration/simple", "minimal-downtime": "minimal-downtime-migration/minimal-downtime"}

    def __init__(self, stack, lab, procedure: str, migration_id: str, options: dict):
        self.stack, self.lab, self.procedure, self.mid, self.options = stack, lab, procedure, migration_id, options
        self.frid = None
        self.killed: set[int] = set()

    def start(self) -> None:
        """The first run, or a retry of the killed one (once the worker reported it Crashed)."""
        if self.frid is None:
            self.frid = self.stack.run_deployment(
                self.DEPLOYMENTS[self.procedure], inventory=str(self.lab.dir / "inventory.yaml"),
                migration_id=self.mid, options=self.options, auto_approve=True, pause_timeout=900)
            return
        self.stack.wait_state(self.frid, lambda s: s.is_crashed(), 180, "Crashed (the worker saw its process die)")
        for _ in range(3):
            try:
                self.stack.retry(self.frid)
            except RuntimeError as exc:
                # a late crash report of the killed process overwrote our retry, and the worker
                # had already taken that retry up (Pending): it runs; wait for it, as a person would
                if "cannot be retried" not in str(exc):
                    raise
            fr = self.stack.wait_state(self.frid, lambda s: s.is_running() or s.is_crashed() or s.is_final(), 300,
                                       "Running after the retry")
            if fr.state.is_running():
                return
        raise AssertionError(f"the retried flow run never ran: {fr.state}")

    def alive(self) -> bool:
        """Whether the flow run is still going (not final, or a live process of it)."""
        fr = self.stack.flow_run(self.frid)
        return not fr.state.is_final() or bool(self._pids())

    def _pids(self) -> list[int]:
        return [p for p in flow_run_pids(self.frid) if p not in self.killed]

    def kill(self) -> list[int]:
        """SIGKILL the flow run's process (the worker's child that runs the flow)."""
        pids = self._pids()
        assert pids, f"flow run {self.frid} has no live process to kill"
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        assert all(process_gone(p) for p in pids), pids
        self.killed |= set(pids)
        self.stack.flow_pids |= set(pids)
        return pids

    def finish(self, timeout: float) -> str:
        """Wait for the flow run to end; assert it completed."""
        fr = self.stack.wait_final(self.frid, timeout=timeout)
        assert fr.state.is_completed(), (fr.state, self.stack.logs())
        return fr.state.message or ""

    def output(self) -> str:
        return self.stack.logs()

    def stop(self) -> None:
        """Kill what is left of the flow run (by PID); the module's stack stops the worker."""
        for p in flow_run_pids(self.frid) if self.frid else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


class Alternating:
    """Each run by the next of ``ways`` in turn (e.g. a flow run of the deployment, killed and
    retried, then a new terminal run, then the retry again...): one chain resumed both ways."""

    def __init__(self, *ways):
        self.ways = ways
        self.n = 0
        self.current = ways[0]

    def start(self) -> None:
        """The next run, by the next way."""
        self.current = self.ways[self.n % len(self.ways)]
        self.n += 1
        self.current.start()

    def alive(self) -> bool:
        return self.current.alive()

    def kill(self) -> list[int]:
        return self.current.kill()

    def finish(self, timeout: float) -> str:
        return self.current.finish(timeout)

    def output(self) -> str:
        return self.current.output()

    def stop(self) -> None:
        for w in self.ways:
            w.stop()


# ---------------------------------------------------------------------------- the chain
@dataclass
class ChainReport:
    """What a chain did: the kill points reached, when, and what each killed."""

    kills: list[tuple[str, float, list[int]]] = field(default_factory=list)
    backups: dict[str, str] = field(default_factory=dict)  # node -> sha256 once recorded
    seconds: float = 0.0


def run_chain(lab, runs, migration_id: str, points: list[Point], *, limit_per_run: float = 400,
              check: Callable[[object, ChainReport], None] | None = None) -> ChainReport:
    """Kill the migration at each of ``points`` in turn, resuming it with ``runs`` each time, then
    let the last run complete. ``check(lab, report)`` runs after each kill (and at the end)."""
    report = ChainReport()
    t0 = time.monotonic()
    killed: set[int] = set()
    for point in points:
        if point.arm is not None:
            point.arm(lab)
        runs.start()
        deadline = time.monotonic() + limit_per_run
        while True:
            doc = ledger_doc(lab, migration_id)
            # only once this run holds the migration: before its takeover, the ledger and the
            # lab still show where the killed run left them (a flip it had begun, say), and a
            # point "reached" then would kill a run that never acted
            holder = (doc or {}).get("holder") or {}
            if holder.get("pid") and holder["pid"] not in killed and point.reached(doc, lab):
                break
            assert runs.alive(), f"the run ended before {point.name}:\n{runs.output()[-4000:]}"
            assert time.monotonic() < deadline, f"{point.name} not reached in {limit_per_run:.0f}s"
            time.sleep(0.1)
        pids = runs.kill()
        killed |= set(pids)
        report.kills.append((point.name, time.time(), pids))
        if point.disarm is not None:
            point.disarm(lab)
        _backups_never_replaced(lab, migration_id, report)
        if check is not None:
            check(lab, report)
    runs.start()
    runs.finish(limit_per_run * 2)
    _backups_never_replaced(lab, migration_id, report)
    report.seconds = time.monotonic() - t0
    return report


def _backups_never_replaced(lab, migration_id: str, report: ChainReport) -> None:
    """A node's backup, once in the ledger, is the one it keeps (the same sha256)."""
    doc = ledger_doc(lab, migration_id)
    for node, rec in (doc.get("nodes") or {}).items():
        b = rec.get("backup")
        if b and b.get("sha256"):
            first = report.backups.setdefault(node, b["sha256"])
            assert b["sha256"] == first, f"{node}: backup {first[:12]} replaced by {b['sha256'][:12]}"


# ---------------------------------------------------------------------------- ground truth
def runs_by_binary(lab) -> dict[str, list[tuple[float, float, str]]]:
    """Per node, each time its daemon ran: ``(start, end, binary)`` from the service events."""
    out: dict[str, list] = {n["name"]: [] for n in lab.nodes}
    up: dict[str, tuple[float, str]] = {}
    for e in sorted(service_events(lab), key=lambda e: e["t"]):
        n = e["node"]
        if e["event"] == "start" and n not in up:
            up[n] = (e["t"], e.get("binary", "?"))
        elif e["event"] in ("stop", "kill") and e.get("signal") != "SIGHUP" and n in up:
            since, binary = up.pop(n)
            out[n].append((since, e["t"], binary))
    for n, (since, binary) in up.items():
        out[n].append((since, float("inf"), binary))
    return out


def split_moments(lab) -> list[str]:
    """Every moment a node ran 0.7 while another ran 0.8 (a split cluster); [] when none."""
    runs = runs_by_binary(lab)
    found = []
    for a, ra in runs.items():
        for b, rb in runs.items():
            for (s1, e1, b1) in ra:
                for (s2, e2, b2) in rb:
                    if a < b and (b1 == TARGET_BINARY) != (b2 == TARGET_BINARY) and s1 < e2 and s2 < e1:
                        found.append(f"{a} on {b1} and {b} on {b2} from {max(s1, s2):.1f} to {min(e1, e2):.1f}")
    return found


def flips(lab) -> dict[str, int]:
    """Per node, how many times it went from running the source to running the target."""
    out = {}
    for n, rs in runs_by_binary(lab).items():
        seq = [b == TARGET_BINARY for _, _, b in rs]
        out[n] = sum(1 for x, y in itertools.pairwise(seq) if not x and y)
    return out


def journal(lab, migration_id: str) -> list[dict]:
    """The migration's command journal (``commands.jsonl``)."""
    path = ledger_path(lab, migration_id).with_name("commands.jsonl")
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def good_archives(lab, migration_id: str) -> dict[str, int]:
    """Per node, how many backup archives the journal shows finished with exit status 0."""
    out: dict[str, int] = {}
    for e in journal(lab, migration_id):
        if e["event"] == "finished" and e.get("step") == "backup" and "tar" in e["argv"] and e.get("exit_status") == 0:
            out[e["node"]] = out.get(e["node"], 0) + 1
    return out
