"""Metadata backups you can restore: streamed, verified, and put back (issue 5).

The guide's first step is "back up all your data", and Garage's metadata holds every S3
secret key, so a backup here is a copy off the node, proven complete, kept owner-only::

    proof = await observe_stopped(shell, ctx)                 # after the stop step
    rec = await backup_node(shell, ctx, node_id=..., metadata_dir=..., stopped=proof,
                            dest_root="/var/backups/garage", cluster="prod",
                            migration_id="m-2024-01", source_version="0.7.3")
    verify_backup(rec.archive_path, rec.manifest).raise_for_problems(ctx.name)
    ...
    await restore_metadata(shell, ctx, rec, stopped=proof)   # rollback

Modules: :mod:`.tarstream` (push tar parser), :mod:`.pipeline` (compress / check as bytes
pass), :mod:`.manifest` (paths, manifest, comparisons: pure), :mod:`.verify` (read an archive
back with :mod:`tarfile`), :mod:`.engine` (the backup step over a :class:`~garage_migrate.ssh.NodeShell`),
:mod:`.common` (what its modes share), :mod:`.nodezstd` (compressed on the node, written here),
:mod:`.onnode` (kept on the node), :mod:`.restore`.
"""

from .engine import (
    BackupOptions,
    BackupRecord,
    StopProof,
    backup_node,
    check_offline,
    observe_stopped,
    verify_remote_archive,
)
from .manifest import (
    BackupPaths,
    ListingEntry,
    Manifest,
    Problem,
    backup_paths,
    load_manifest,
    parse_listing,
)
from .restore import RestoreReport, restore_metadata
from .tarstream import Member, TarStreamError, TarStreamReader
from .verify import VerifyReport, verify_backup

__all__ = [
    "BackupOptions",
    "BackupPaths",
    "BackupRecord",
    "ListingEntry",
    "Manifest",
    "Member",
    "Problem",
    "RestoreReport",
    "StopProof",
    "TarStreamError",
    "TarStreamReader",
    "VerifyReport",
    "backup_node",
    "backup_paths",
    "check_offline",
    "load_manifest",
    "observe_stopped",
    "parse_listing",
    "restore_metadata",
    "verify_backup",
    "verify_remote_archive",
]
