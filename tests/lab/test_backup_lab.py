"""Backups against a real lab: real sshd, the lab's tar/df fault shims, a stopped 0.7.3 node.

One 3-node lab (16 MiB of metadata per node) serves the module. Each test stops the node it
uses and the fixture starts it again, so tests do not depend on each other.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from garage_lab import shims
from garage_migrate import backup as B
from garage_migrate.backup import engine
from garage_migrate.errors import BackupError, LockHeldError
from garage_migrate.inventory import load_inventory
from garage_migrate.ssh import SshPool
from tests.conftest import run, service

MIGRATION = "m-test"
CLUSTER = "lab"


@pytest.fixture(scope="module")
def lab(module_lab):
    lab = module_lab(version="0.7.3", zones=3, per_zone=1, meta_size=16 << 20, timeout=90)
    shims.install(lab.dir)  # Lab.up installs them too; installing again is harmless
    return lab


@pytest.fixture(scope="module")
def inv(lab):
    return load_inventory(lab.dir / "inventory.yaml")


@pytest.fixture
def stopped(lab):
    """``stopped(name)`` stops a node (SIGINT: graceful on 0.7.3); it is started again after."""
    names = []

    def stop(name: str) -> str:
        r = service(lab, name, "stop", "--signal", "INT")
        assert r.returncode == 0, r.stderr
        names.append(name)
        return name

    yield stop
    for name in names:
        lab.clear_faults(name)
        service(lab, name, "start")
    if names:
        lab.wait_ready(60, prometheus=False)


class Node:
    """What the tests need of one lab node, as an orchestrator would know it."""

    def __init__(self, lab, inv, name: str, dest_root: Path):
        self.lab, self.name = lab, name
        self.ctx = inv.node(name).ctx
        self.pool = SshPool.from_inventory(inv)
        self.meta = str(lab.node_dir(name) / "meta")
        self.node_id = lab.node(name)["id64"]
        self.dest_root = dest_root
        self.node_root = str(lab.dir / "backups")

    @property
    def shell(self):
        return self.pool.shell(self.name)

    async def proof(self):
        return await B.observe_stopped(self.shell, self.ctx)

    async def backup(self, migration: str = MIGRATION, **kw):
        proof = kw.pop("stopped", None) or await self.proof()
        return await B.backup_node(self.shell, self.ctx, node_id=self.node_id, metadata_dir=self.meta, stopped=proof,
                                   dest_root=self.dest_root, cluster=CLUSTER, migration_id=migration,
                                   source_version="0.7.3", node_root=self.node_root, **kw)

    async def restore(self, record, **kw):
        return await B.restore_metadata(self.shell, self.ctx, record, stopped=await self.proof(), **kw)


@pytest.fixture
def node(lab, inv, tmp_path):
    made = []

    def make(name: str) -> Node:
        n = Node(lab, inv, name, tmp_path / "backups")
        made.append(n)
        return n

    yield make
    for n in made:
        asyncio.run(n.pool.close())


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _looks_valid(d: Path) -> list[str]:
    """Files in a node's backup dir that a reader could take for a backup."""
    if not d.exists():
        return []
    return sorted(p.name for p in d.iterdir() if p.name != ".lock")


# ---------------------------------------------------------------------------- backup, verify, reuse


def test_backup_then_verify_then_reuse(lab, stopped, node):
    n = node(stopped("node-a1"))
    before = lab.meta_checksum("node-a1")

    async def go():
        first = await n.backup()
        second = await n.backup()
        return first, second

    first, second = run(go())
    assert not first.reused and first.verify.ok
    archive = first.archive_path
    assert archive == n.dest_root / CLUSTER / MIGRATION / "node-a1" / "meta-0.7.3.tar.zst"
    assert first.verify.archive == str(archive)
    # secrets inside: owner-only, every level we created
    assert _mode(archive) == 0o600 and _mode(first.manifest_path) == 0o600
    for d in (archive.parent, archive.parent.parent, archive.parent.parent.parent):
        assert _mode(d) == 0o700
    m = B.load_manifest(first.manifest_path)
    assert m == first.manifest
    assert (m.node, m.node_id, m.source_version, m.metadata_dir, m.mode) == (
        "node-a1", n.node_id, "0.7.3", n.meta, "controller")
    assert m.compressed_bytes == archive.stat().st_size and m.uncompressed_bytes > 16 << 20
    assert m.du_bytes >= 16 << 20
    names = {mm.name for mm in m.members}
    assert {"meta", "meta/node_key", "meta/db/db", "meta/db/conf"} <= names
    # the manifest's hashes are the node's files
    for mm in m.files():
        assert mm.sha256 == _sha256(lab.node_dir("node-a1") / mm.name)
    # independently re-verified, and against a listing of the still-stopped node
    listing = run(_listing(n))
    assert B.verify_backup(archive, m, listing).ok
    # second run: nothing redone
    assert second.reused and second.manifest == first.manifest
    assert second.archive_path.stat().st_mtime_ns == archive.stat().st_mtime_ns
    assert lab.meta_checksum("node-a1") == before  # a backup never writes to the node


def test_refuses_a_running_node_even_with_a_proof(lab, node):
    n = node("node-b1")
    fake = B.StopProof(node="node-b1", state="inactive", observed_at=0.0)
    with pytest.raises(LockHeldError) as info:
        run(n.backup(stopped=fake))
    assert info.value.code == "LOCK_HELD"
    assert not (n.dest_root / CLUSTER / MIGRATION / "node-b1" / "manifest.json").exists()


def test_refuses_when_the_db_lock_is_held_although_the_service_is_stopped(lab, stopped, node):
    import fcntl

    n = node(stopped("node-b1"))
    # an offline repair (or a stray daemon) holding sled's lock
    fd = os.open(lab.node_dir("node-b1") / "meta" / "db" / "db", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LockHeldError, match="lock on .*db/db is held"):
            run(n.backup())
    finally:
        os.close(fd)
    with pytest.raises(LockHeldError, match="no proof"):
        run(n.backup(stopped=B.StopProof(node="node-c1", state="inactive", observed_at=0.0)))


# ---------------------------------------------------------------------------- damaged archives


def test_one_corrupt_byte_fails_verification_naming_the_file_and_the_backup_is_redone(lab, stopped, node):
    n = node(stopped("node-c1"))
    rec = run(n.backup())
    archive = rec.archive_path
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    archive.write_bytes(bytes(raw))
    report = B.verify_backup(archive, rec.manifest)
    assert not report.ok
    # the padding blob is most of the archive: the damaged byte is in it
    named = [p.path for p in report.problems if p.path]
    assert any(p.startswith("meta/db/blobs/") for p in named), report.summary()
    with pytest.raises(BackupError, match="meta/db/blobs/"):
        report.raise_for_problems("node-c1")
    # the step, run again, notices and takes a new backup
    again = run(n.backup())
    assert not again.reused and again.verify.ok
    assert B.verify_backup(again.archive_path, again.manifest).ok


def test_truncated_stream_leaves_no_file_that_looks_valid(lab, stopped, node):
    n = node(stopped("node-b1"))
    lab.fault("node-b1", "kill-tar", bytes=3 << 20, count=1)
    with pytest.raises(BackupError) as info:
        run(n.backup())
    assert info.value.code == "BACKUP_FAILED"
    assert info.value.signal == "KILL" or info.value.exit_status == 137, info.value.describe()
    assert _looks_valid(n.dest_root / CLUSTER / MIGRATION / "node-b1") == []
    # the fault is used up: the retry succeeds
    rec = run(n.backup())
    assert rec.verify.ok and not rec.reused


def test_controller_without_space_refuses_before_streaming(lab, stopped, node, monkeypatch):
    n = node(stopped("node-b1"))
    monkeypatch.setattr(engine, "_free_bytes", lambda path: 1 << 20)
    with pytest.raises(BackupError, match="not enough space on the controller"):
        run(n.backup(migration="m-space"))
    assert _looks_valid(n.dest_root / CLUSTER / "m-space" / "node-b1") == []


# ---------------------------------------------------------------------------- restore


def test_restore_returns_the_original_checksums(lab, stopped, node):
    n = node(stopped("node-c1"))
    original = lab.inspect()["nodes"]["node-c1"]["meta_checksum"]
    rec = run(n.backup(migration="m-restore"))
    # what a failed 0.8 start could leave: a changed file, a new file, a lost file
    meta = lab.node_dir("node-c1") / "meta"
    (meta / "scrub_info").write_text('{"written by": "0.8"}')
    (meta / "db" / "conf").write_text("changed\n")
    (meta / "peer_list").unlink()
    assert lab.meta_checksum("node-c1") != original
    report = run(n.restore(rec))
    assert lab.inspect()["nodes"]["node-c1"]["meta_checksum"] == original
    # the damaged dir was moved aside, not deleted
    aside = Path(report.moved_aside)
    assert aside.parent == meta.parent and aside.name.startswith("meta.pre-restore-")
    assert (aside / "scrub_info").exists() and not (aside / "peer_list").exists()
    assert report.files_verified == len(rec.manifest.files())
    # nothing else left beside the metadata dir (no staging dir, no uploaded archive)
    assert sorted(p.name for p in meta.parent.iterdir() if p.name.startswith(".meta")) == []
    # the node starts on its restored metadata
    assert service(lab, "node-c1", "start").returncode == 0
    lab.wait_ready(60, prometheus=False)
    assert lab.daemon_info("node-c1")["version"] == "0.7.3"


def test_restore_refuses_a_running_node_and_a_backup_that_does_not_verify(lab, stopped, node):
    n = node(stopped("node-a1"))
    rec = run(n.backup(migration="m-refuse"))
    assert service(lab, "node-a1", "start").returncode == 0
    lab.wait_ready(60, prometheus=False)
    with pytest.raises(LockHeldError):
        run(B.restore_metadata(n.shell, n.ctx, rec, stopped=B.StopProof("node-a1", "inactive", 0.0)))
    stopped("node-a1")
    raw = bytearray(rec.archive_path.read_bytes())
    raw[len(raw) // 3] ^= 0x40
    rec.archive_path.write_bytes(bytes(raw))
    before = lab.meta_checksum("node-a1")
    with pytest.raises(BackupError, match="does not verify"):
        run(n.restore(rec.manifest_path))
    assert lab.meta_checksum("node-a1") == before


# ---------------------------------------------------------------------------- on-node mode


def test_on_node_backup_is_verified_by_streaming_it_back(lab, stopped, node):
    n = node(stopped("node-a1"))
    rec = run(n.backup(migration="m-onnode", mode="on-node"))
    assert rec.verify.ok and rec.archive_path is None
    remote = Path(rec.remote_archive)
    assert remote == lab.dir / "backups" / CLUSTER / "m-onnode" / "node-a1" / "meta-0.7.3.tar.zst"
    assert _mode(remote.parent) == 0o700
    assert (remote.parent / "manifest.json").read_text() == rec.manifest_path.read_text()
    assert sorted(p.name for p in remote.parent.iterdir()) == ["manifest.json", "meta-0.7.3.tar.zst"]
    m = rec.manifest
    assert m.mode == "on-node" and m.archive == str(remote) and m.compressed_bytes == remote.stat().st_size
    for mm in m.files():
        assert mm.sha256 == _sha256(lab.node_dir("node-a1") / mm.name)
    # the controller can check it the same way as its own archives (same members, same hashes)
    again = run(n.backup(migration="m-onnode", mode="on-node"))
    assert again.reused
    # damage on the node is noticed by the stream-back check, and the backup is redone
    raw = bytearray(remote.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    remote.write_bytes(bytes(raw))
    report = run(B.verify_remote_archive(n.shell, n.ctx, m))
    assert not report.ok and any(p.path and p.path.startswith("meta/") for p in report.problems), report.summary()
    redone = run(n.backup(migration="m-onnode", mode="on-node"))
    assert not redone.reused and redone.verify.ok
    # and it restores like the others
    original = lab.meta_checksum("node-a1")
    (lab.node_dir("node-a1") / "meta" / "db" / "conf").write_text("changed\n")
    run(n.restore(redone))
    assert lab.meta_checksum("node-a1") == original


def test_on_node_backup_on_a_full_disk_fails_and_leaves_nothing(lab, stopped, node):
    n = node(stopped("node-b1"))
    root = lab.dir / "backups" / CLUSTER / "m-full"
    lab.fault("node-b1", "disk-full", path=str(root))
    with pytest.raises(BackupError, match="not enough space on the node"):
        run(n.backup(migration="m-full", mode="on-node"))
    # past the space check (as if df lied), tar itself hits ENOSPC: the partial file goes
    with pytest.raises(BackupError) as info:
        run(n.backup(migration="m-full", mode="on-node",
                     options=B.BackupOptions(space_headroom=-(1 << 60))))
    assert "No space left on device" in info.value.stderr_tail and info.value.exit_status == 2
    assert sorted(p.name for p in (root / "node-b1").iterdir()) == []
    assert _looks_valid(n.dest_root / CLUSTER / "m-full" / "node-b1") == []
    # the df shim: 0 available under the path, the real figure elsewhere; tar args parsed as GNU tar does
    from garage_migrate import commands as C

    async def df(path):
        res = await n.shell.run(C.df_avail(path))
        await n.pool.close()
        return int(res.stdout.split()[-2])

    assert run(df(str(root / "node-b1"))) == 0
    assert run(df(str(lab.dir / "nodes"))) > 0
    assert shims.parse_tar_args(["-acf", "/b/x.tar.zst", "-C", "/a", "meta"]) == {
        "mode": "c", "file": "/b/x.tar.zst", "dirs": ["/a"]}
    assert shims.parse_tar_args(["--zstd", "-x", "-p", "-k", "-f", "/v/a", "-C", "/v", "--transform=s|a|b|S", "m"]) == {
        "mode": "x", "file": "/v/a", "dirs": ["/v"]}


def test_a_stop_proof_for_another_node_is_no_proof(lab, stopped, node):
    # the concurrency of backups is the scheduler's now (one bound for every step of a wave)
    n = node(stopped("node-a1"))
    with pytest.raises(LockHeldError):
        run(n.backup(stopped=B.StopProof("node-b1", "inactive", 0.0)))
    assert not (n.dest_root / CLUSTER / MIGRATION / "node-a1" / "manifest.json").exists()


# ---------------------------------------------------------------------------- helpers


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def _listing(n: Node):
    from garage_migrate import commands as C

    res = await n.shell.run(C.list_tree(n.meta))
    await n.pool.close()
    return B.parse_listing(res.stdout, "meta")


# ---------------------------------------------------------------------------- compressed on the node


def test_node_compressed_backup_is_checked_against_the_nodes_own_hashes_and_reused(lab, stopped, node):
    n = node(stopped("node-a1"))

    async def go():
        return await n.backup(migration="m-nodezstd", compress_on="node"), \
            await n.backup(migration="m-nodezstd", compress_on="node")

    first, second = run(go())
    m = first.manifest
    assert not first.reused and first.verify.ok and m.compressed_on == "node" and m.mode == "controller"
    assert m.compressed_bytes == first.archive_path.stat().st_size and m.uncompressed_bytes > 16 << 20
    for mm in m.files():
        assert mm.sha256 == _sha256(lab.node_dir("node-a1") / mm.name)
    # the archive the node's zstd wrote reads back with the controller's verifier and the node's listing
    assert B.verify_backup(first.archive_path, m, run(_listing(n))).ok
    assert second.reused and second.manifest == m


def test_a_node_without_zstd_is_found_by_discovery_and_backed_up_compressed_here(lab, inv, stopped, node):
    from garage_migrate import actions as A
    from garage_migrate.discovery import discover

    lab.fault("node-c1", "no-zstd")  # cleared by the `stopped` fixture
    pool = SshPool.from_inventory(inv)

    async def facts():
        try:
            return await discover(inv, pool.shell)
        finally:
            await pool.close()

    f = run(facts())
    assert f.node("node-c1").zstd_version is None and f.node("node-a1").zstd_version
    with_zstd = A.for_node_backup(inv, f, "m-x", "node-a1", "0.7.3")
    without = A.for_node_backup(inv, f, "m-x", "node-c1", "0.7.3")
    assert (with_zstd.compress_on, without.compress_on) == ("node", "controller")
    assert "--use-compress-program=zstd -T0 -3" in with_zstd.stream.source.argv
    assert without.stream.source.argv[-3:] == ("-cf", "-", "meta") and len(without.stream.source.argv) == 6
    n = node(stopped("node-c1"))
    # asked to compress on a node that has no zstd, the step fails and leaves nothing
    with pytest.raises(BackupError, match="zstd"):
        run(n.backup(migration="m-nozstd", compress_on="node"))
    assert _looks_valid(n.dest_root / CLUSTER / "m-nozstd" / "node-c1") == []
    rec = run(n.backup(migration="m-nozstd", compress_on=without.compress_on))
    assert rec.verify.ok and rec.manifest.compressed_on == "controller"


def test_truncated_node_compressed_stream_leaves_nothing(lab, stopped, node):
    n = node(stopped("node-b1"))
    lab.fault("node-b1", "kill-tar", bytes=1 << 20, count=1)
    with pytest.raises(BackupError) as info:
        run(n.backup(migration="m-nodecut", compress_on="node"))
    assert info.value.signal == "KILL" or info.value.exit_status == 137, info.value.describe()
    assert _looks_valid(n.dest_root / CLUSTER / "m-nodecut" / "node-b1") == []
