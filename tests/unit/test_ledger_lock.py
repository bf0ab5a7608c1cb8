"""The ledger under concurrent writers, its fencing, and the cluster lock's rules.

The cluster-lock tests run the lock's real commands (``ln -sT``, ``readlink``, ``rm``) on
this machine's filesystem through a local shell: the compare-and-set is the kernel's
``symlink(2)``, the same on a node as here. SSH is covered by the lab tier.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import time

import pytest

from garage_migrate import commands as C
from garage_migrate.cluster_lock import ClusterLock, LockRecord, RunIdentity, break_lock, holder_gone, lock_path
from garage_migrate.errors import ClusterLockedError, SupersededError
from garage_migrate.ledger import Ledger
from garage_migrate.ledger_model import Holder


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------- the ledger
def _append_events(root: str, who: str, n: int) -> None:
    led = Ledger.open(root, "c", "m", "simple")
    for i in range(n):
        asyncio.run(led.event("test", f"{who}-{i}"))


def test_two_processes_writing_one_ledger_lose_no_event(tmp_path):
    Ledger.open(tmp_path, "c", "m", "simple")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_events, args=(str(tmp_path), w, 150)) for w in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    msgs = [e.message for e in Ledger.load(tmp_path / "c" / "m" / "ledger.json").doc.events]
    assert sorted(msgs) == sorted(f"{w}-{i}" for w in "ab" for i in range(150))
    assert not list((tmp_path / "c" / "m").glob("*.tmp")), "a temp file was left behind"


def test_ledger_files_are_owner_only(tmp_path):
    led = Ledger.open(tmp_path, "c", "m", "simple")
    run(led.event("x", "y"))
    assert (led.path.stat().st_mode & 0o777) == 0o600
    assert (led.path.parent.stat().st_mode & 0o077) == 0


def test_a_write_applies_to_what_is_on_disk_not_to_a_stale_copy(tmp_path):
    a = Ledger.open(tmp_path, "c", "m", "simple")
    b = Ledger.open(tmp_path, "c", "m", "simple")
    run(a.record_step("n1", "zone:stop", "done"))
    run(b.record_step("n2", "zone:stop", "done"))  # b never read a's write, and keeps it
    d = Ledger.load(a.path).doc
    assert set(d.nodes) == {"n1", "n2"}


def _holder(token: str, **kw) -> Holder:
    return Holder(token=token, flow_run_id=None, controller="here", pid=os.getpid(), kind="migration",
                  since=time.time(), heartbeat=time.time(), **kw)


def test_a_superseded_writer_raises_and_writes_nothing(tmp_path):
    old = Ledger.open(tmp_path, "c", "m", "simple")
    assert run(old.claim(_holder("old"), lambda cur: None)) is None
    new = Ledger.open(tmp_path, "c", "m", "simple")
    assert run(new.claim(_holder("new"), lambda cur: None)) is None
    before = new.path.read_bytes()
    with pytest.raises(SupersededError):
        run(old.record_step("n1", "flip:stop", "running"))
    with pytest.raises(SupersededError):
        old.check_holder()
    assert new.path.read_bytes() == before
    run(new.record_step("n1", "flip:stop", "running"))
    assert [e.kind for e in Ledger.load(new.path).doc.events] == ["takeover"]


def test_claim_is_refused_when_the_rule_says_so_and_nothing_changes(tmp_path):
    a = Ledger.open(tmp_path, "c", "m", "simple")
    run(a.claim(_holder("a"), lambda cur: None))
    b = Ledger.open(tmp_path, "c", "m", "simple")
    refused = run(b.claim(_holder("b"), lambda cur: "alive"))
    assert refused.holder.token == "a" and refused.reason == "alive"
    assert Ledger.load(a.path).doc.holder.token == "a"
    assert b.token is None


def test_a_completed_run_clears_a_stale_error(tmp_path):
    led = Ledger.open(tmp_path, "c", "m", "simple")
    run(led.set(state="failed", error="CancelledError: lease"))
    run(led.set(state="done", error=None))
    d = Ledger.load(led.path).doc
    assert d.state == "done" and d.error is None


# ---------------------------------------------------------------------------- holder rules
def test_holder_gone_rules():
    now = 1000.0
    alive = Holder(token="t", controller="here", pid=os.getpid(), heartbeat=now - 5)
    assert holder_gone(alive, now=now, here="here") is None
    assert "completed" in holder_gone(alive, run_state="COMPLETED", now=now, here="here")
    assert "crashed" in holder_gone(alive, run_state="CRASHED", now=now, here="here")
    assert holder_gone(alive, run_state="PAUSED", now=now, here="here") is None
    assert "heartbeat" in holder_gone(alive.model_copy(update={"heartbeat": now - 61}), now=now, here="here")
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert "no longer exists" in holder_gone(alive.model_copy(update={"pid": dead.pid}), now=now, here="here")
    # a pid on another controller says nothing about this one's process table
    assert holder_gone(alive.model_copy(update={"pid": dead.pid, "controller": "elsewhere"}), now=now,
                       here="here") is None


# ---------------------------------------------------------------------------- the node records
class _Res:
    """What a local command reported (the fields the lock reads of an SSH result)."""

    def __init__(self, stdout: str, stderr: str, returncode: int):
        self.stdout, self.stderr, self.returncode = stdout, stderr, returncode


class LocalShell:
    """Runs a RemoteCommand's argv on this machine (no SSH); counts what it ran."""

    def __init__(self):
        self.ran: list[tuple[str, ...]] = []

    async def run(self, cmd: C.RemoteCommand, check: bool = True):
        self.ran.append(cmd.argv)
        p = await asyncio.create_subprocess_exec(*cmd.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await p.communicate()
        res = _Res(out.decode(), err.decode(), p.returncode)
        if check and p.returncode:
            raise RuntimeError(f"{cmd.render()}: {res.stderr}")
        return res


def _cluster(tmp_path, n=3):
    shells = {f"n{i}": LocalShell() for i in range(n)}
    nodes = []
    for name in shells:
        meta = tmp_path / name / "meta"
        meta.mkdir(parents=True)
        nodes.append((name, lock_path(str(meta)), False))
    return shells, nodes


def _lock(tmp_path, shells, nodes, mid, **kw):
    led = Ledger.open(tmp_path / "backups", "c", mid, "simple")
    return ClusterLock(lambda n: shells[n], nodes, led, "simple", RunIdentity(**kw), heartbeat_s=3600)


def test_lock_path_is_beside_the_metadata_dir_never_inside():
    assert lock_path("/var/lib/garage/meta/") == "/var/lib/garage/meta.garage-migrate.lock"


def test_another_migration_is_refused_and_leaves_no_record(tmp_path):
    shells, nodes = _cluster(tmp_path)
    a = _lock(tmp_path, shells, nodes, "mig-a")

    async def scenario():
        await a.acquire()
        b = _lock(tmp_path, shells, nodes, "mig-b")
        with pytest.raises(ClusterLockedError) as ei:
            await b.acquire()
        await a.stop_heartbeats()
        return ei.value
    err = run(scenario())
    assert "mig-a" in str(err) and "unlock" in str(err)
    for _n, path, _s in nodes:
        assert LockRecord.parse(os.readlink(path)).migration_id == "mig-a"
    assert Ledger.load(tmp_path / "backups" / "c" / "mig-b" / "ledger.json").doc.holder is None


def test_a_record_of_another_migration_on_the_last_node_releases_the_first_ones(tmp_path):
    shells, nodes = _cluster(tmp_path)
    os.symlink(LockRecord("mig-x", "simple", "far", 1.0).render(), nodes[-1][1])
    b = _lock(tmp_path, shells, nodes, "mig-b")
    with pytest.raises(ClusterLockedError, match="mig-x"):
        run(b.acquire())
    assert not os.path.lexists(nodes[0][1]) and not os.path.lexists(nodes[1][1])


def test_racing_migrations_never_both_hold_the_cluster(tmp_path):
    shells, nodes = _cluster(tmp_path, n=5)

    async def race():
        locks = [_lock(tmp_path, shells, nodes, f"mig-{i}") for i in range(6)]
        got = await asyncio.gather(*(lk.acquire() for lk in locks), return_exceptions=True)
        for lk in locks:
            await lk.stop_heartbeats()
        return got
    got = run(race())
    winners = [i for i, g in enumerate(got) if g is None]
    assert len(winners) <= 1, got
    assert all(isinstance(g, ClusterLockedError) for g in got if g is not None)
    held = {LockRecord.parse(os.readlink(p)).migration_id for _n, p, _s in nodes if os.path.lexists(p)}
    assert held == ({f"mig-{winners[0]}"} if winners else set()), held


def test_the_same_migration_takes_over_from_a_dead_run_and_is_reentrant(tmp_path):
    shells, nodes = _cluster(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    first = _lock(tmp_path, shells, nodes, "mig-a", pid=dead.pid)
    run(first.acquire())
    run(first.stop_heartbeats())
    second = _lock(tmp_path, shells, nodes, "mig-a")
    run(second.acquire())
    run(second.stop_heartbeats())
    assert Ledger.load(second.ledger.path).doc.holder.token == second.identity.token
    with pytest.raises(SupersededError):
        first.check()


def test_a_live_run_of_the_same_migration_refuses_another_run(tmp_path):
    shells, nodes = _cluster(tmp_path)
    first = _lock(tmp_path, shells, nodes, "mig-a", flow_run_id="run-1")
    run(first.acquire())
    run(first.stop_heartbeats())
    other = _lock(tmp_path, shells, nodes, "mig-a", flow_run_id="run-2")
    with pytest.raises(ClusterLockedError, match="still running"):
        run(other.acquire())
    # but a new attempt of the same flow run (a Prefect retry) takes it over
    retry = _lock(tmp_path, shells, nodes, "mig-a", flow_run_id="run-1")
    run(retry.acquire())
    run(retry.stop_heartbeats())


def test_release_drops_every_record_and_the_holder(tmp_path):
    shells, nodes = _cluster(tmp_path)
    a = _lock(tmp_path, shells, nodes, "mig-a")
    run(a.acquire())
    run(a.release())
    assert not any(os.path.lexists(p) for _n, p, _s in nodes)
    assert Ledger.load(a.ledger.path).doc.holder is None


def test_unlock_refuses_a_live_holder_and_records_the_break(tmp_path):
    shells, nodes = _cluster(tmp_path)
    a = _lock(tmp_path, shells, nodes, "mig-a")
    run(a.acquire())
    run(a.stop_heartbeats())
    led = Ledger.load(a.ledger.path)
    with pytest.raises(ClusterLockedError, match="still held"):
        run(break_lock(lambda n: shells[n], nodes, "mig-a", led, by="me"))
    assert all(os.path.lexists(p) for _n, p, _s in nodes)
    later = time.time() + 3600  # the holder stopped beating an hour ago (its pid is this test: alive)
    led2 = Ledger.load(a.ledger.path)
    led2.mutate(lambda d: setattr(d.holder, "controller", "elsewhere"), fenced=False)
    removed = run(break_lock(lambda n: shells[n], nodes, "mig-a", Ledger.load(a.ledger.path), by="me", now=later))
    assert removed == ["n0", "n1", "n2"]
    d = Ledger.load(a.ledger.path).doc
    assert d.holder is None and d.events[-1].kind == "unlock" and "me" in d.events[-1].message
    assert d.events[-1].previous.controller == "elsewhere" and d.events[-1].nodes == ["n0", "n1", "n2"]
    # unlocking names the migration to break: a lock of another one is never broken by mistake
    run(_relock(tmp_path, shells, nodes))
    with pytest.raises(ClusterLockedError, match="mig-a"):
        run(break_lock(lambda n: shells[n], nodes, "mig-b", None, by="me"))


async def _relock(tmp_path, shells, nodes):
    lk = _lock(tmp_path, shells, nodes, "mig-a")
    await lk.acquire()
    await lk.stop_heartbeats()
    return True


def test_lock_record_builder_refuses_newlines_and_control_characters():
    with pytest.raises(Exception):
        C.lock_record_take("a\nb", "/x.lock")
    cmd = C.lock_record_take(LockRecord("m", "simple", "h", 1.0).render(), "/var/lib/garage/meta.garage-migrate.lock")
    assert cmd.argv[:3] == ("ln", "-sT", "--")
