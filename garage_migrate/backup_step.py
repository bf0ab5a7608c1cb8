"""The backup and restore steps of the flows, on top of :mod:`garage_migrate.backup`.

The step proves the daemon is stopped (service state + sled lock probe inside the backup
engine), takes or reuses a verified backup, and records its path and sha256 in the ledger:
the start step refuses any 0.8 start without that record.
"""

from __future__ import annotations

from .backup.engine import BackupRecord, backup_node, observe_stopped, restore_metadata
from .ledger_model import BackupRef, RestoreRef
from .actions import for_node_backup as backup_actions
from .steps import Runtime, StepResult, service_active


async def backup_metadata(rt: Runtime, node: str) -> StepResult:
    """Back up ``node``'s metadata (stopped), verified; reuse a verified one of this migration
    unless it is older than ``rt.backup_max_age_s`` (then a new one is taken)."""
    n = rt.node(node)
    f = rt.nfacts(node)
    stopped = await observe_stopped(rt.shell(node), n.ctx)
    version = rt.ledger.node(node).version_before or f.version
    acts = backup_actions(rt.inv, rt.facts, rt.ledger.doc.migration_id, node, version)
    planned = acts.stream.source if acts.stream is not None else acts.archive
    rec: BackupRecord = await backup_node(
        rt.shell(node), n.ctx, node_id=f.id64, metadata_dir=f.config.metadata_dir, stopped=stopped,
        dest_root=rt.inv.backup.root, cluster=rt.inv.cluster, migration_id=rt.ledger.doc.migration_id,
        source_version=version, level=rt.inv.backup.zstd_level, mode=rt.inv.backup.mode,
        node_root=n.backup_root if rt.inv.backup.mode == "on-node" else None, archive_timeout=planned.timeout,
        max_age_s=rt.backup_max_age_s)
    where = str(rec.archive_path or rec.remote_archive)
    await rt.ledger.set_node(node, backup=BackupRef(path=where, manifest=str(rec.manifest_path),
                                                    sha256=rec.manifest.archive_sha256,
                                                    bytes=rec.manifest.compressed_bytes, version=version,
                                                    reused=rec.reused,
                                                    taken_at=rec.manifest.created_at.timestamp()))
    return StepResult("backup", node, "skipped" if rec.reused else "done",
                      f"{'reused ' if rec.reused else ''}{where} ({rec.manifest.archive_sha256[:16]}, verified)")


async def restore_node(rt: Runtime, node: str, tag: str | None = None) -> StepResult:
    """Restore ``node``'s metadata from this migration's verified backup (node stopped)."""
    n = rt.node(node)
    b = rt.ledger.node(node).backup
    if b is None:
        raise_missing(node)
    if await service_active(rt, node):
        from .errors import StepError

        raise StepError("refusing to restore metadata while the daemon runs", node=node)
    stopped = await observe_stopped(rt.shell(node), n.ctx)
    rep = await restore_metadata(rt.shell(node), n.ctx, b.manifest, stopped=stopped,
                                 metadata_dir=rt.nfacts(node).config.metadata_dir, tag=tag)
    await rt.ledger.set_node(node, restored=RestoreRef(source=b.path, moved_aside=rep.moved_aside))
    return StepResult("restore", node, "done", f"restored {rep.files_verified} files; old dir kept at {rep.moved_aside}")


def raise_missing(node: str):
    """No backup of this node in the ledger: a rollback cannot restore it."""
    from .errors import BackupError

    raise BackupError("no backup of this node recorded for this migration", node=node)
