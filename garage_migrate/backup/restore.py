"""Putting a verified backup back as a node's metadata dir (the rollback's restore)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import commands as C
from ..actions import restore_paths
from ..commands import NodeContext
from ..errors import (
    BackupError,
    CommandRefused,
)
from ..nodelog import NodeLog
from ..ssh import NodeShell
from .common import (
    BackupOptions,
    _df,
    _listing,
    _log,
    _meta_dir,
    _node_hashes,
    _remote_sha256,
    _report,
    _run,
)
from .engine import BackupRecord, StopProof, _dir_lock, check_offline
from .manifest import (
    Manifest,
    compare_hashes,
    compare_listing,
    load_manifest,
)
from .verify import verify_backup

__all__ = ["RestoreReport", "restore_metadata"]

logger = logging.getLogger("garage_migrate.backup")


@dataclass(frozen=True)
class RestoreReport:
    """What :func:`restore_metadata` did.

    Attributes:
        node: node name.
        metadata_dir: the restored directory.
        moved_aside: where the previous metadata dir went (never deleted), or ``None`` if
            there was none.
        files_verified: files whose SHA-256 was checked on the node after extraction.
        bytes: tar bytes restored.
        seconds: duration.
    """

    node: str
    metadata_dir: str
    moved_aside: str | None
    files_verified: int
    bytes: int
    seconds: float

# ---------------------------------------------------------------------------- restore


async def restore_metadata(shell: NodeShell, ctx: NodeContext, backup: BackupRecord | str | os.PathLike[str], *,
                           stopped: StopProof, metadata_dir: str | None = None,
                           options: BackupOptions | None = None, tag: str | None = None) -> RestoreReport:
    """Put a verified backup back as the node's metadata dir.

    The node must be stopped (proof plus lock probe). The archive is verified first (on the
    controller, or by its SHA-256 on the node for on-node backups), uploaded next to the
    metadata dir if needed, and extracted under a temporary name beside it; every file's
    SHA-256 and the listing are checked against the manifest on the node; only then is the
    current metadata dir renamed to ``<metadata_dir>.pre-restore-<stamp>`` (never deleted)
    and the restored one renamed into place.

    Args:
        shell: the node's shell.
        ctx: the node's command context.
        backup: a :class:`BackupRecord`, or the path of a ``manifest.json``.
        stopped: proof the daemon is stopped.
        metadata_dir: where to restore; the manifest's ``metadata_dir`` by default.
        options: tuning.
        tag: names the restore's paths on the node (:func:`garage_migrate.actions.restore_paths`):
            the rollback plan's, so the commands are the ones it shows; default: a new one.

    Returns:
        A :class:`RestoreReport`.

    Raises:
        LockHeldError: the daemon runs.
        BackupError: the backup does not verify, is of another node, the node lacks space,
            or the extracted tree does not match; the current metadata dir is then untouched.
    """
    opts = options or BackupOptions()
    node = ctx.name
    log = _log(node)
    t0 = time.monotonic()
    if isinstance(backup, BackupRecord):
        manifest, manifest_path = backup.manifest, backup.manifest_path
    else:
        manifest_path = Path(backup)
        manifest = load_manifest(manifest_path)
    if manifest.node != node:
        raise BackupError(f"{node}: refusing to restore the backup of node {manifest.node!r}", node=node)
    # never while a backup of this node (or another restore) runs from this controller
    with _dir_lock(manifest_path.parent / ".lock", node):
        return await _restore(shell, ctx, manifest, manifest_path, stopped, metadata_dir, opts, log, t0, tag)


async def _restore(shell: NodeShell, ctx: NodeContext, manifest: Manifest, manifest_path: Path, stopped: StopProof,
                   metadata_dir: str | None, opts: BackupOptions, log: NodeLog, t0: float,
                   tag: str | None) -> RestoreReport:
    node = ctx.name
    meta, parent, name = _meta_dir(metadata_dir or manifest.metadata_dir, node)
    local_archive = manifest_path.parent / manifest.archive if manifest.mode == "controller" else None
    if local_archive is not None:
        report = await asyncio.to_thread(verify_backup, local_archive, manifest)
        report.raise_for_problems(node, "refusing to restore a backup that does not verify")
    await check_offline(shell, ctx, meta, stopped)

    # the rollback plan names the paths (so it shows the very commands); a restore outside a
    # plan gets a tag of its own
    tag = tag or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
    rp = restore_paths(meta, tag, None if local_archive else manifest.archive)
    staging_name, staging, aside = rp.staging_name, rp.staging, rp.aside
    need = manifest.uncompressed_bytes + (manifest.compressed_bytes if local_archive else 0) + opts.space_headroom
    free = await _df(shell, parent, node)
    if free < need:
        raise BackupError(f"{node}: not enough space in {parent} to restore: {free} bytes free, {need} needed",
                          node=node)
    remote_archive = rp.remote_archive
    uploaded = False
    try:
        if local_archive is not None:
            log.info("uploading %s to %s", local_archive, remote_archive)
            await shell.put_file(local_archive, remote_archive, timeout=opts.timeout_for(manifest.compressed_bytes))
            uploaded = True
        got = await _remote_sha256(shell, ctx, remote_archive, manifest.compressed_bytes, node, opts)
        if got != manifest.archive_sha256:
            raise BackupError(f"{node}: {remote_archive} has sha256 {got}, the manifest says "
                              f"{manifest.archive_sha256}: not restoring it", node=node)
        try:
            extract = C.tar_extract_as(remote_archive, parent, manifest.root, staging_name,
                                       timeout=opts.timeout_for(manifest.uncompressed_bytes), sudo=ctx.sudo)
        except CommandRefused as exc:
            raise BackupError(f"{node}: cannot restore into {meta}: {exc}", node=node) from None
        log.info("extracting into %s", staging)
        await _run(shell, extract, node, f"extracting {remote_archive} into {staging} failed (left for inspection)")
        listing = await _listing(shell, ctx, staging, manifest.root, node)
        problems = compare_listing(manifest.members, listing, check_mtime=True, where="as extracted")
        if not problems:
            hashes = await _node_hashes(shell, ctx, parent, manifest.members, node, opts, root_as=staging_name)
            problems = compare_hashes(manifest.members, hashes, where="as extracted")
        if problems:
            _report(staging, problems, None, t0).raise_for_problems(
                node, f"the extracted metadata does not match the backup; {meta} was not touched, the extracted "
                      f"copy stays at {staging} for inspection")
        exists = await shell.run(C.exists(meta, sudo=ctx.sudo), check=False)
        moved = None
        if exists.exit_status == 0:
            await _run(shell, C.rename(meta, aside, sudo=ctx.sudo), node, f"cannot move {meta} aside")
            moved = aside
        try:
            await _run(shell, C.rename(staging, meta, sudo=ctx.sudo), node, f"cannot move {staging} into place")
        except BaseException:
            if moved:
                with contextlib.suppress(Exception):
                    await shell.run(C.rename(aside, meta, sudo=ctx.sudo))
            raise
        await _run(shell, C.sync(sudo=ctx.sudo), node, "sync failed")
    finally:
        if uploaded:
            with contextlib.suppress(Exception):
                await shell.run(C.remove_file(remote_archive, sudo=ctx.sudo), check=False)
    nfiles = sum(1 for m in manifest.members if m.type == "file")
    log.info("restored %s from %s (%d files verified); the previous dir is at %s", meta, manifest.archive, nfiles,
             moved or "(there was none)")
    return RestoreReport(node=node, metadata_dir=meta, moved_aside=moved, files_verified=nfiles,
                         bytes=manifest.uncompressed_bytes, seconds=time.monotonic() - t0)
