"""Fault-matrix rows 1, 4, 5, 7-12, 20, 21, 23 and 24 (``docs/faults.md``) on one 3x1 lab.

One simple migration (the engine's executor, steps and cluster lock, no Prefect: these rows
halt, and a halt needs no task retry) is driven through a chain of faults with the same
migration id: each run meets the next faults, halts in a safe state, the test records what the
ledger, the journal and the lab's ground truth say, lifts the faults and runs again. The last
run completes. Before the first run, the rows that are refused before any act (an inventory
that disagrees with the layout, a node whose SSH is refused, a binary whose checksum is wrong)
are tried against the untouched cluster.

The module fixture ``chain`` runs it all once and keeps each row's evidence; each row's test
asserts its own, so each can fail alone. Time is skipped, never waited for: the hung stop of
row 4 ends when the test moves the runtime's injected clock past the stop timeout.
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

import pytest
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
    assert_done_and_nothing_lost,
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


@pytest.fixture(scope="module")
def lab(module_lab):
    # 4 MiB of metadata per node, so a tar stream can be cut or damaged in its middle
    return module_lab(version="0.7.3", zones=3, per_zone=1, meta_size=4 << 20)


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
    _res, err = attempt(_inventory(lab, tmp, "wrong-version", older))
    led = ledger(lab)
    ev[21] = {"error": err, "steps": {n: step(led, n, "install:stage") for n in NODES},
              "switched": {n: step(led, n, "install:switch") for n in NODES}, "truth": truth(lab),
              "backups": {n: led.node(n).backup for n in NODES}}
    ev[21]["verify"] = backups_verify(lab, MID)


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
        ev[20]["stage"] = {n: step(led, n, "install:stage") for n in NODES}
        ev[20]["truth"] = truth(lab)
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


@pytest.fixture(scope="module")
def chain(lab, tmp_path_factory):
    """Every run of the chain, once; each row's evidence (``broken`` says where it stopped)."""
    tmp = tmp_path_factory.mktemp("faults-lab")
    ev: dict = {"target_sha256": _sha256(lab.launcher("0.8.7"))}
    t0 = time.monotonic()
    try:
        for stage in (lambda: _refusals(lab, tmp, ev), lambda: _hung_stop(lab, ev),
                      lambda: _on_node_disk_full(lab, tmp, ev), lambda: _backup_faults(lab, ev),
                      lambda: _wrong_version(lab, tmp, ev), lambda: _offline_repair_faults(lab, ev),
                      lambda: _refused_start(lab, ev), lambda: _resumed_on_08(lab, ev)):
            stage()
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


def row(chain, n):
    assert n in chain, f"the chain stopped before row {n}: {chain.get('broken')}"
    return chain[n]


ALL_073 = {n: ("0.7.3", "garage-v0.7.3") for n in NODES}


def test_fault_24_inventory_disagreeing_with_the_layout_is_refused_before_any_act(chain):
    ev = row(chain, 24)
    err = ev["error"]
    assert err is not None and err.code == "DISCOVERY_MISMATCH", err
    assert "node-a1: inventory says zone dc2, the layout says dc1" in str(err)
    assert ev["untouched"]  # no service event, every node still serving 0.7.3, no act journalled


def test_fault_01_ssh_refused_for_one_node_before_preflight_is_refused_before_any_act(chain):
    ev = row(chain, 1)
    err = ev["error"]
    assert err is not None and err.code == "NODE_UNREACHABLE" and err.node == "node-b1", err.context()
    assert ev["untouched"]


def test_fault_04_stop_hanging_past_its_timeout_halts_without_killing(chain):
    ev = row(chain, 4)
    err = ev["error"]
    assert ev["sigint"] is not None  # not vacuous: the daemon got its SIGINT and ignored it
    assert err is not None and err.code == "STEP_FAILED" and err.node == "node-a1", err
    assert f"still running {STOP_TIMEOUT:.0f}s after SIGINT: it was not killed" in str(err)
    assert ev["a1"].status == "failed" and ev["a1"].code == "STEP_FAILED"
    # nothing escalated: no service stop (SIGTERM then SIGKILL) and no SIGKILL of node-a1
    assert ev["a1_ends"] == []
    # the safe state: node-a1 still runs 0.7.3 (hung), the others restarted on 0.7.3 (API cut);
    # the run failed with the lock held: the same migration id resumes
    assert ev["truth"] == ALL_073
    assert ev["state"] == "failed" and ev["lock"] is not None


def test_fault_10_on_node_backup_disk_full_halts_and_leaves_no_archive(chain):
    ev = row(chain, 10)
    assert ev["error"] is not None and ev["error"].code == "BACKUP_FAILED", ev["error"]
    for n in NODES:
        s = ev["steps"][n]
        assert s.status == "failed" and s.code == "BACKUP_FAILED" and "not enough space on the node" in s.detail, s
        assert ev["files"][n] == []
    # stopped for their backups, nothing switched: every node on its 0.7.3 binary
    assert ev["truth"] == {n: (None, "garage-v0.7.3") for n in NODES}


def _backups(chain):
    return row(chain, "backups")


def test_fault_09_controller_backup_disk_full_halts_before_streaming(chain):
    ev = _backups(chain)
    s = ev["steps"]["node-b1"]
    assert s.status == "failed" and s.code == "BACKUP_FAILED", s
    assert "not enough space on the controller" in s.detail
    assert ev["files"]["node-b1"] == []
    assert ev["truth"]["node-b1"] == (None, "garage-v0.7.3")


def test_fault_11_truncated_tar_stream_halts_and_leaves_nothing_that_looks_valid(chain):
    ev = _backups(chain)
    s = ev["steps"]["node-c1"]
    assert ev["faults_left"]["node-c1"] == []  # not vacuous: the stream was cut
    assert s.status == "failed" and s.code == "BACKUP_FAILED", s
    assert "the stream was cut short" in s.detail and "zstd?" not in s.detail, s.detail  # said as it is
    assert ev["files"]["node-c1"] == []
    assert ev["truth"]["node-c1"] == (None, "garage-v0.7.3")


def test_fault_12_corrupted_archive_at_verify_time_halts_and_keeps_nothing(chain):
    ev = _backups(chain)
    s = ev["steps"]["node-a1"]
    assert ev["faults_left"]["node-a1"] == []  # not vacuous: a byte of the stream was flipped
    assert s.status == "failed" and s.code == "BACKUP_FAILED", s
    assert "the new backup does not match the node" in s.detail, s.detail
    assert ev["files"]["node-a1"] == []
    assert ev["truth"]["node-a1"] == (None, "garage-v0.7.3")
    assert ev["error"] is not None and ev["error"].code == "BACKUP_FAILED"


def test_fault_21_staged_binary_of_the_wrong_version_halts_before_any_switch(chain):
    ev = row(chain, 21)
    err = ev["error"]
    assert err is not None and err.code == "STEP_FAILED", err
    for n in NODES:
        s = ev["steps"][n]
        assert s.status == "failed" and "staged binary reports 0.8.0, expected 0.8.7" in s.detail, s
        assert ev["switched"][n] is None
        assert ev["backups"][n] is not None and ev["backups"][n].version == "0.7.3"
    # every node stopped on its 0.7.3 binary, with a backup that reads back against its manifest
    assert ev["truth"] == {n: (None, "garage-v0.7.3") for n in NODES}
    assert "3 of 3 backups verified" in ev["verify"], ev["verify"]


def test_fault_20_binary_with_a_wrong_checksum_is_never_used(chain):
    ev = row(chain, 20)
    # the inventory's binary does not match its checksum: refused before connecting to any node
    local = ev["local"]
    assert local is not None and local.code == "INVENTORY_INVALID" and "target.sha256" in str(local), local
    assert ev["untouched"]
    # a staged file on the node with the wrong checksum (row 21's 0.8.0) is uploaded again and
    # checked before the switch: the switched binary is the inventory's
    want = _sha256_of_target(chain)
    assert ev["staged_before"] is not None and ev["staged_before"] != want
    assert ev["staged_after"] == want
    assert ev["stage"]["node-a1"].status == "done" and "sha256 ok" in ev["stage"]["node-a1"].detail
    assert {n: t[1] for n, t in ev["truth"].items()} == {n: "garage-v0.8.7" for n in NODES}


def _sha256_of_target(chain):
    return chain["target_sha256"]


def _repairs(chain):
    return row(chain, "repairs")


def test_fault_07_offline_repair_hitting_the_lock_halts_with_lock_held(chain):
    ev = _repairs(chain)
    s = ev["steps"]["node-c1"]
    assert ev["holder_alive"]
    assert s.status == "failed" and s.code == "LOCK_HELD", s
    assert ev["steps"]["node-a1"].status == "done"
    # no 0.8 start anywhere: every node stopped on the switched binary
    assert {n: t[0] for n, t in ev["truth"].items()} == {n: None for n in NODES}
    assert all(v is None for v in ev["starts"].values())


def test_fault_08_offline_repair_failing_halts_before_any_08_start(chain):
    ev = _repairs(chain)
    s = ev["steps"]["node-b1"]
    assert s.status == "failed" and s.code == "STEP_FAILED" and "offline-repair failed" in s.detail, s
    assert {n: t[0] for n, t in ev["truth"].items()} == {n: None for n in NODES}


def test_fault_05_daemon_refusing_to_start_on_08_halts_and_says_so(chain):
    ev = row(chain, 5)
    err = ev["error"]
    assert err is not None and err.node == "node-b1" and "refuses to start" in str(err), err
    assert ev["b1"].status == "failed"
    # the others run 0.8.7; node-b1 is stopped: no node runs 0.7 (never a mixed cluster)
    assert {n: t[0] for n, t in ev["truth"].items()} == {"node-a1": "0.8.7", "node-b1": None, "node-c1": "0.8.7"}
    assert any(e["node"] == "node-b1" for e in ev["starts"])  # not vacuous: its start was tried


def test_fault_23_nodes_already_on_08_a_fresh_run_is_refused_the_resumed_one_completes(lab, chain):
    ev = row(chain, 23)
    fresh = ev["fresh"]
    assert fresh is not None and fresh.code == "DISCOVERY_MISMATCH" and "node-a1 runs 0.8.7" in str(fresh), fresh
    assert ev["fresh_untouched"]
    assert ev["error"] is None, ev["error"]
    led = assert_done_and_nothing_lost(lab, ev["result"])
    # the resumed run re-planned from the nodes as they are, and did not start node-a1 again
    assert any(e.kind == "replan" for e in led.doc.events)
    assert ev["a1_start_attempts_after"] == ev["a1_start_attempts"]
