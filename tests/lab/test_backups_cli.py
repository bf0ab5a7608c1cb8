"""``garage-migrate backups list|verify|prune`` on backups taken from a real lab.

One 3-node lab serves the module. Backups are taken the way the flows take them: stop the node
with ``steps.stop_node``, then ``backup_step.backup_metadata`` through ``open_runtime``, each
migration id with its own ledger. The CLI tests then work on a copy of the backup tree (an
inventory pointing at it), so a test that corrupts or prunes never affects another.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from garage_migrate import backup_step, steps
from garage_migrate.backup import load_manifest
from garage_migrate.cli import main
from garage_migrate.inventory import load_inventory
from garage_migrate.ledger import Ledger
from garage_migrate.runtime import open_runtime

# oldest first; the state each migration's ledger ends in, and the nodes backed up
MIGRATIONS = {"m-old": ("done", ["node-a1", "node-b1"]),
              "m-crashed": ("running", ["node-a1"]),
              "m-mid": ("failed", ["node-b1"]),
              "m-new": ("done", ["node-a1", "node-b1"])}


@pytest.fixture(scope="module")
def lab(module_lab):
    return module_lab(version="0.7.3", zones=3, per_zone=1, meta_size=4 << 20, timeout=90, wait_prometheus=False)


@pytest.fixture(scope="module")
def backups(lab):
    """Take the backups of :data:`MIGRATIONS`; returns the lab's inventory path."""
    inv = str(lab.dir / "inventory.yaml")

    async def take():
        for mid, (state, names) in MIGRATIONS.items():
            async with open_runtime(inv, "minimal-downtime", mid) as rt:
                for n in names:
                    await steps.preflight(rt, n)
                    await steps.stop_node(rt, n)
                    res = await backup_step.backup_metadata(rt, n)
                    assert res.status == "done", res
                    await steps.start_node(rt, n, "0.7.3")
                await rt.ledger.set(state=state)
    asyncio.run(asyncio.wait_for(take(), 240))
    return inv


@pytest.fixture
def inv_copy(backups, tmp_path):
    """An inventory whose backup root is a private copy of the module's backups."""
    data = yaml.safe_load(Path(backups).read_text())
    root = tmp_path / "backups"
    shutil.copytree(data["backup"]["root"], root, symlinks=True)
    # ledgers record absolute paths: point them at the copy too
    for ledger in root.glob("*/*/ledger.json"):
        ledger.write_text(ledger.read_text().replace(data["backup"]["root"], str(root)))
    data["backup"]["root"] = str(root)
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    inv = load_inventory(path)
    return str(path), root / inv.cluster


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_list_shows_every_backup_from_its_manifest(inv_copy, capsys):
    inv, cluster_dir = inv_copy
    rc, out = _cli(capsys, "backups", "list", "--inventory", inv, "--json")
    assert rc == 0, out
    listed = json.loads(out)
    assert [m["migration_id"] for m in listed] == list(MIGRATIONS)  # oldest first
    for mig in listed:
        state, names = MIGRATIONS[mig["migration_id"]]
        assert mig["state"] == state
        assert [b["node"] for b in mig["backups"]] == names
        for b in mig["backups"]:
            archive = Path(b["archive"])
            m = load_manifest(cluster_dir / mig["migration_id"] / b["node"] / "manifest.json")
            assert archive == cluster_dir / mig["migration_id"] / b["node"] / "meta-0.7.3.tar.zst"
            assert b["size"] == b["on_disk"] == archive.stat().st_size == m.compressed_bytes
            assert b["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
            assert b["source_version"] == "0.7.3"
            assert b["time"] == m.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")

    # the text form, for one migration: one line per node with the same facts
    rc, out = _cli(capsys, "backups", "list", "--inventory", inv, "--migration-id", "m-old")
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("migration m-old (state done, created ")
    for b, line in zip(listed[0]["backups"], lines[1:]):
        for fact in (b["node"], b["source_version"], b["time"], f"{b['size']} B", b["sha256"], b["archive"]):
            assert fact in line, (fact, line)
    assert len(lines) == 3

    rc, out = _cli(capsys, "backups", "list", "--inventory", inv, "--migration-id", "m-none")
    assert rc == 1 and "no backups" in out


def test_verify_passes_then_fails_naming_the_corrupted_file(inv_copy, capsys):
    inv, cluster_dir = inv_copy
    rc, out = _cli(capsys, "backups", "verify", "--inventory", inv)
    assert rc == 0, out
    assert out.count("  ok   ") == 6 and "6 of 6 backups verified" in out, out

    archive = cluster_dir / "m-new" / "node-b1" / "meta-0.7.3.tar.zst"
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # inside the padding blob, most of the archive
    archive.write_bytes(bytes(raw))
    rc, out = _cli(capsys, "backups", "verify", "--inventory", inv, "--migration-id", "m-new")
    assert rc == 1, out
    assert f"FAIL node-b1: {archive}" in out, out
    assert "meta/db/blobs/" in out, out  # the member being read when the damage was found
    assert "ok   node-a1" in out and "1 of 2 backups verified, 1 FAILED" in out, out
    # the other migrations are still fine
    rc, out = _cli(capsys, "backups", "verify", "--inventory", inv, "--migration-id", "m-old")
    assert rc == 0, out


def test_verify_fails_on_a_missing_archive_and_on_a_ledger_that_disagrees(inv_copy, capsys):
    inv, cluster_dir = inv_copy
    archive = cluster_dir / "m-old" / "node-a1" / "meta-0.7.3.tar.zst"
    archive.unlink()
    rc, out = _cli(capsys, "backups", "verify", "--inventory", inv, "--migration-id", "m-old")
    assert rc == 1 and f"FAIL node-a1: {archive}" in out, out
    assert "cannot open" in out

    led = Ledger.load(cluster_dir / "m-new" / "ledger.json")
    led.mutate(lambda d: setattr(d.nodes["node-a1"].backup, "sha256", "0" * 64), fenced=False)
    rc, out = _cli(capsys, "backups", "verify", "--inventory", inv, "--migration-id", "m-new")
    assert rc == 1 and "FAIL node-a1" in out and "the ledger records sha256 " + "0" * 64 in out, out

    # a backup the ledger relies on for a rollback, whose manifest is gone
    (cluster_dir / "m-mid" / "node-b1" / "manifest.json").unlink()
    rc, out = _cli(capsys, "backups", "verify", "--inventory", inv, "--migration-id", "m-mid")
    assert rc == 1 and "FAIL node-b1: the ledger records the backup" in out, out


def test_prune_keeps_the_newest_and_never_a_running_migration(inv_copy, capsys):
    inv, cluster_dir = inv_copy
    before = sorted(p.name for p in cluster_dir.iterdir())
    assert before == sorted(MIGRATIONS)

    rc, out = _cli(capsys, "backups", "prune", "--inventory", inv, "--keep", "1", "--dry-run")
    assert rc == 0, out
    assert sorted(p.name for p in cluster_dir.iterdir()) == before  # a dry run deletes nothing
    assert f"would delete {cluster_dir / 'm-mid'} " in out and f"would delete {cluster_dir / 'm-old'} " in out, out
    assert "keep   m-crashed: its ledger says the migration is running" in out, out
    assert "keep   m-new (one of the 1 newest" in out, out

    rc, out = _cli(capsys, "backups", "prune", "--inventory", inv, "--keep", "1")
    assert rc == 0, out
    assert sorted(p.name for p in cluster_dir.iterdir()) == ["m-crashed", "m-new"]
    assert f"deleting {cluster_dir / 'm-old'} " in out

    # nothing left to prune; what remains still verifies
    rc, out = _cli(capsys, "backups", "prune", "--inventory", inv, "--keep", "1")
    assert rc == 0 and "nothing to prune" in out, out
    rc, out = _cli(capsys, "backups", "verify", "--inventory", inv)
    assert rc == 0, out


def test_prune_keeps_a_migration_whose_backup_is_in_progress(inv_copy, capsys):
    import fcntl
    import os

    inv, cluster_dir = inv_copy
    lock = cluster_dir / "m-old" / "node-a1" / ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as backup_node / restore_metadata hold it
        rc, out = _cli(capsys, "backups", "prune", "--inventory", inv, "--keep", "0")
    finally:
        os.close(fd)
    assert rc == 0, out
    assert "keep   m-old: a backup or restore of one of its nodes is running" in out, out
    assert sorted(p.name for p in cluster_dir.iterdir()) == ["m-crashed", "m-old"]
