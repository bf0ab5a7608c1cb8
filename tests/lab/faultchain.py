"""The chain of fault-matrix runs behind ``tests/lab/test_faults_lab.py``: one simple migration
(the engine, no Prefect) on one 3x1 lab, driven through the faults of rows 1, 4, 5, 7-12, 20, 21,
23 and 24 with the same migration id. Each stage injects its faults, runs, records what the
ledger and the lab's ground truth say under its row number, and lifts its faults; the last run
completes. :func:`run_chain` runs them all and returns the evidence (``broken`` names the
exception that stopped it early).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from garage_migrate.actions import STOP_TIMEOUT, staged_path
from garage_migrate.cluster_lock import ClusterLock, RunIdentity, lock_nodes
from garage_migrate.errors import GarageMigrateError, MigrationAborted
from garage_migrate.executor import EngineSteps, NullReporter, run_migration
from garage_migrate.gates import SystemClock
from garage_migrate.ledger import Ledger
from garage_migrate.plan import MigrationOptions
from garage_migrate.runtime import open_runtime, plan_for
from tests.conftest import run
from tests.e2e.faultrun import (
    backups_verify,
    service_events,
)

MID = "faults-simple"
OPTS = MigrationOptions(watch_s=0.0, gate_deadline_s=60.0, gate_consecutive=1)
NODES = ("node-a1", "node-b1", "node-c1")
#: every run of the chain is an attempt of one "flow run": each takes the migration over from
#: the one before (same process, fresh heartbeat), as Prefect's next attempt would
RUN = "faults-lab-chain"


class SkipClock(SystemClock):
    """The real clock, plus an offset the test moves forward (so a timeout passes at once)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        """See :meth:`garage_migrate.gates.Clock.monotonic`."""
        return time.monotonic() + self.offset


class NoOne:
    """Nobody answers: only clean approvals pass (by rule); anything else ends the run."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def ask(self, kind, key, description, choices=()):
        self.asked.append(key)
        raise MigrationAborted(f"no person in this test to answer {kind} {key}")


def _inventory(lab, tmp: Path, name: str, change=None) -> Path:
    inv = yaml.safe_load((lab.dir / "inventory.yaml").read_text())
    if change is not None:
        change(inv)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path


async def _migrate(inv: Path, migration_id: str = MID, clock=None, watch=None) -> dict:
    async with open_runtime(str(inv), "simple", migration_id) as rt:
        if clock is not None:
            rt = dataclasses.replace(rt, clock=clock)

        async def hold(held):
            lock = ClusterLock(held.shell, lock_nodes(held.inv, held.facts), held.ledger, "simple",
                               RunIdentity(kind="migration", flow_run_id=RUN), heartbeat_s=1.0)
            await lock.acquire()
            return lock
        watcher = asyncio.ensure_future(watch(rt)) if watch is not None else None
        try:
            return await run_migration(rt, plan_for(rt, "simple", OPTS), OPTS, dry_run=False, hold=hold,
                                       decider_for=lambda lock: NoOne(), steps=EngineSteps(),
                                       reporter=NullReporter(), auto_approve=True)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher


def attempt(inv: Path, **kw) -> tuple[dict | None, GarageMigrateError | None]:
    """One run; its result, or the error it ended with."""
    try:
        return run(_migrate(inv, **kw), limit=600), None
    except GarageMigrateError as exc:
        return None, exc


def ledger(lab) -> Ledger:
    inv = yaml.safe_load((lab.dir / "inventory.yaml").read_text())
    return Ledger.load(Path(inv["backup"]["root"]) / inv["cluster"] / MID / "ledger.json")


def step(led: Ledger, node: str, key: str):
    return led.node(node).steps.get(key)


def truth(lab) -> dict:
    """What every node runs now (None: stopped) and what its binary_path points to."""
    nodes = lab.inspect(checksums=False)["nodes"]
    return {n: (t["running_version"], os.path.basename(os.path.realpath(lab.node_dir(n) / "usr/local/bin/garage")))
            for n, t in nodes.items()}


def journal_acts(lab) -> list[dict]:
    path = ledger(lab).path.parent / "commands.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [j for j in map(json.loads, lines) if j.get("kind") == "act" and j.get("event") == "finished"]


def looks_like_backups(lab, node: str) -> list[str]:
    d = ledger(lab).path.parent / node
    return sorted(p.name for p in d.iterdir() if p.name == "manifest.json" or p.name.endswith(".tar.zst")) \
        if d.is_dir() else []


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refusals(lab, tmp: Path, ev: dict) -> None:
    """Rows 24, 1, 20 (the inventory's checksum): refused before any act, the cluster untouched."""
    before = (len(service_events(lab)), truth(lab))

    def untouched() -> bool:
        return (len(service_events(lab)), truth(lab)) == before and not journal_acts(lab)

    def wrong_zone(inv):
        inv["nodes"][0]["zone"] = "dc2"
    _res, err = attempt(_inventory(lab, tmp, "wrong-zone", wrong_zone))
    ev[24] = {"error": err, "untouched": untouched()}

    lab.fault("node-b1", "ssh-refuse")
    try:
        _res, err = attempt(lab.dir / "inventory.yaml")
        ev[1] = {"error": err, "untouched": untouched()}

        # with node-b1 still refused, the wrong checksum is refused before connecting to any node:
        # its error is the inventory's, not node-b1's unreachability
        def wrong_sha(inv):
            inv["target"]["sha256"] = _sha256(lab.launcher("0.8.0"))
        _res, err = attempt(_inventory(lab, tmp, "wrong-sha", wrong_sha))
        ev[20] = {"local": err, "untouched": untouched()}
    finally:
        lab.clear_faults("node-b1")


def _hung_stop(lab, ev: dict) -> None:
    """Row 4: node-a1's daemon ignores SIGINT when the API cut restarts it."""
    lab.fault("node-a1", "hang-stop")
    clock = SkipClock()
    t0 = time.time()
    seen: dict = {}

    async def watch(rt):
        # once the others are through their restart (their polls share the clock) and node-a1
        # got its SIGINT, the stop's timeout is skipped, not waited for
        while True:
            await asyncio.sleep(0.2)
            led = rt.ledger.refresh()
            others = all((led.nodes.get(n) and led.nodes[n].steps.get("disable-api:disable-api")
                          and led.nodes[n].steps["disable-api:disable-api"].status == "done")
                         for n in ("node-b1", "node-c1"))
            sigint = [e for e in service_events(lab) if e["node"] == "node-a1" and e["t"] > t0
                      and e["event"] == "kill" and e.get("signal") == "SIGINT"]
            if others and sigint:
                seen["sigint"] = sigint[0]["t"]
                clock.offset += STOP_TIMEOUT + 1
                return
    try:
        _res, err = attempt(lab.dir / "inventory.yaml", clock=clock, watch=watch)
        led = ledger(lab)
        ev[4] = {"error": err, "sigint": seen.get("sigint"), "truth": truth(lab),
                 "a1": step(led, "node-a1", "disable-api:disable-api"),
                 "a1_ends": [e for e in service_events(lab) if e["node"] == "node-a1" and e["t"] > t0
                             and (e["event"] == "stop" or e.get("signal") == "SIGKILL")],
                 "state": led.doc.state, "lock": led.doc.holder}
    finally:
        lab.clear_faults("node-a1")


def _on_node_disk_full(lab, tmp: Path, ev: dict) -> None:
    """Row 10: on-node backups, and no space left where they go on any node."""
    root = str(lab.dir / "backups")

    def on_node(inv):
        inv["backup"]["mode"] = "on-node"
    for n in NODES:
        lab.fault(n, "disk-full", path=root)
    try:
        _res, err = attempt(_inventory(lab, tmp, "on-node", on_node))
        led = ledger(lab)
        ev[10] = {"error": err, "steps": {n: step(led, n, "backup:backup") for n in NODES},
                  "files": {n: looks_like_backups(lab, n) for n in NODES}, "truth": truth(lab)}
    finally:
        for n in NODES:
            lab.clear_faults(n)


@contextlib.contextmanager
def _small_disk(path: Path):
    """A real 256 KiB filesystem (tmpfs) at ``path``: the controller's disk for one node's backups."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def _backup_faults(lab, ev: dict) -> None:
    """Rows 9, 11, 12: in one backup wave, node-b1's controller disk is full, node-c1's tar
    stream is cut, node-a1's archive arrives damaged."""
    lab.fault("node-c1", "kill-tar", bytes=1 << 20, count=1)
    lab.fault("node-a1", "corrupt-tar", bytes=2 << 20, count=1)
    try:
        with _small_disk(ledger(lab).path.parent / "node-b1"):
            _res, err = attempt(lab.dir / "inventory.yaml")
            led = ledger(lab)
            ev["backups"] = {"error": err, "steps": {n: step(led, n, "backup:backup") for n in NODES},
                             "files": {n: looks_like_backups(lab, n) for n in NODES}, "truth": truth(lab),
                             "faults_left": {n: json.loads((lab.node_dir(n) / "faults.json").read_text())["faults"]
                                             for n in ("node-a1", "node-c1")}}
    finally:
        for n in NODES:
            lab.clear_faults(n)


def _wrong_version(lab, tmp: Path, ev: dict) -> None:
    """Row 21: the inventory's binary (checksum right) is 0.8.0, not the 0.8.7 it names."""
    def older(inv):
        inv["target"]["binary"] = str(lab.launcher("0.8.0"))
        inv["target"]["sha256"] = _sha256(lab.launcher("0.8.0"))
    before, acts_before = (len(service_events(lab)), truth(lab)), len(journal_acts(lab))
    _res, err = attempt(_inventory(lab, tmp, "wrong-version", older))
    led = ledger(lab)
    ev[21] = {"error": err, "steps": {n: step(led, n, "stage:stage") for n in NODES},
              "switched": {n: step(led, n, "install:switch") for n in NODES}, "truth": truth(lab),
              "unchanged": (len(service_events(lab)), truth(lab)) == before,
              "acts": [(j["phase"], j["step"], j["argv"][0]) for j in journal_acts(lab)[acts_before:]
                       if j["step"] != "cluster-lock"],  # the lock's own writes are not the plan's
              "phases": [e.message for e in led.doc.events if e.kind == "phase"]}


@contextlib.contextmanager
def _db_held(lab, node: str):
    """A process that still has ``node``'s sled DB open (its flock on ``db/db``), unknown to the
    service manager: a daemon that was not really stopped. Killed by PID at the end."""
    db = lab.node_dir(node) / "meta" / "db" / "db"
    code = ("import fcntl, sys, time\n"
            f"f = open({str(db)!r}, 'rb')\n"
            "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "print('held', flush=True)\n"
            "time.sleep(3600)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "held"
        yield p
    finally:
        p.kill()
        p.wait(30)


def _offline_repair_faults(lab, ev: dict) -> None:
    """Rows 20 (a staged file of the wrong checksum), 7 and 8: node-c1's DB is still held,
    node-b1's offline-repair fails."""
    staged = Path(staged_path(str(lab.node_dir("node-a1") / "usr/local/bin/garage"), "0.8.7"))
    ev[20]["staged_before"] = _sha256(staged) if staged.exists() else None
    # first a run that takes the backups (row 21's run ended before them; a held DB would stop
    # node-c1's backup, not its offline repair) and halts at the offline repairs
    for n in NODES:
        lab.fault(n, "fail-command", count=1, match="offline-repair")
    try:
        _res, err = attempt(lab.dir / "inventory.yaml")
        ev["repairs-first"] = {"error": err, "steps": {n: step(ledger(lab), n, "backup:backup") for n in NODES}}
        ev[20]["stage"] = {n: step(ledger(lab), n, "stage:stage") for n in NODES}  # the run that met it
    finally:
        for n in NODES:
            lab.clear_faults(n)
    lab.fault("node-b1", "fail-command", count=1, match="offline-repair",
              message="offline repair failed: Internal error: sled: Io(Custom { kind: Other, error: \"injected\" })")
    try:
        with _db_held(lab, "node-c1") as holder:
            _res, err = attempt(lab.dir / "inventory.yaml")
            led = ledger(lab)
            ev["repairs"] = {"error": err, "steps": {n: step(led, n, "offline-repair:offline-repair") for n in NODES},
                             "truth": truth(lab), "holder_alive": holder.poll() is None,
                             "starts": {n: step(led, n, "start:start") for n in NODES}}
        ev[20]["staged_after"] = _sha256(staged)
        ev[20]["truth"] = truth(lab)
        ev[20]["verify"] = backups_verify(lab, MID)  # the backups this run took (row 21 stopped before them)
    finally:
        lab.clear_faults("node-b1")


def _refused_start(lab, ev: dict) -> None:
    """Row 5: node-b1's 0.8.7 daemon exits at once when started."""
    lab.fault("node-b1", "refuse-start", count=1)
    try:
        t0 = time.time()
        _res, err = attempt(lab.dir / "inventory.yaml")
        led = ledger(lab)
        ev[5] = {"error": err, "truth": truth(lab), "b1": step(led, "node-b1", "start:start"),
                 "starts": [e for e in service_events(lab) if e["t"] > t0 and e["event"] == "start"]}
    finally:
        lab.clear_faults("node-b1")


def _resumed_on_08(lab, ev: dict) -> None:
    """Row 23: nodes already on 0.8 when a run starts: a fresh migration is refused, the
    resumed one finishes."""
    before = (len(service_events(lab)), truth(lab))
    _res, err = attempt(lab.dir / "inventory.yaml", migration_id="faults-fresh")
    ev[23] = {"fresh": err, "fresh_untouched": (len(service_events(lab)), truth(lab)) == before,
              "a1_start_attempts": len(step(ledger(lab), "node-a1", "start:start").attempts)}
    res, err = attempt(lab.dir / "inventory.yaml")
    ev[23].update(result=res, error=err, led=ledger(lab))
    ev[23]["a1_start_attempts_after"] = len(step(ev[23]["led"], "node-a1", "start:start").attempts)


def run_chain(lab, tmp: Path) -> dict:
    """Every stage in order, once; the evidence by row (``broken``: where it stopped)."""
    ev: dict = {"target_sha256": _sha256(lab.launcher("0.8.7"))}
    t0 = time.monotonic()
    try:
        _refusals(lab, tmp, ev)
        _hung_stop(lab, ev)
        _on_node_disk_full(lab, tmp, ev)
        _backup_faults(lab, ev)
        _wrong_version(lab, tmp, ev)
        _offline_repair_faults(lab, ev)
        _refused_start(lab, ev)
        _resumed_on_08(lab, ev)
    except BaseException as exc:  # noqa: BLE001 - each row's test reports what it lacks
        ev["broken"] = f"{type(exc).__name__}: {exc}"
    print(f"fault chain on 3x1: {time.monotonic() - t0:.1f}s")
    for key, value in ev.items():  # what each row saw, for whoever reads the test's output
        if isinstance(value, dict):
            print(f"row {key}:", {k: (v.describe() if isinstance(v, GarageMigrateError) else
                                     {n: (s.code, s.detail[:300]) for n, s in v.items() if s is not None}
                                     if k == "steps" else None) for k, v in value.items()
                                  if k in ("error", "local", "fresh", "steps")})
    return ev
