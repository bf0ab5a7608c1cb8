"""Backing up a stopped node's metadata, checking it, and restoring it, over the node's shell.

Every remote command comes from :mod:`garage_migrate.commands` and runs through the
:class:`~garage_migrate.ssh.NodeShell` the caller injects; the only other I/O is the
controller's backup directory. Log lines go to ``garage_migrate.backup`` prefixed ``[<node>]``.

Failure handling, in short:

- a running daemon (service active, or sled's ``db/db`` flock held) -> :class:`LockHeldError`
  before anything is read;
- a transfer that breaks -> :class:`TransportError` / :class:`CommandTimeout` unchanged (they
  are transient and the step is idempotent), everything else -> :class:`BackupError`; in both
  cases the partial archive is removed first, so nothing that looks like a backup remains;
- the manifest is written last: an archive without its manifest is never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Literal

import zstandard

from .. import commands as C
from .. import probes
from ..commands import NodeContext
from ..errors import (
    BackupError,
    CommandError,
    CommandTimeout,
    LockHeldError,
    TransportError,
)
from ..nodelog import NodeLog
from ..ssh import NodeShell
from .common import (
    BackupOptions,
    BackupRecord,
    _check_node_id,
    _command_failed,
    _du,
    _listing,
    _log,
    _meta_dir,
    _Step,
    _stream,
    _utcnow,
)
from .manifest import (
    DIR_MODE,
    backup_paths,
    fsync_dir,
    load_manifest,
    write_private_file,
)
from .nodezstd import check_received, receive_compressed
from .onnode import _on_node_backup, verify_remote_archive
from .pipeline import ArchiveWriter, StreamStats, describe_stream_error
from .tarstream import TarStreamError
from .verify import verify_backup

__all__ = ["BackupOptions", "BackupRecord", "StopProof", "backup_node", "check_offline", "observe_stopped", "verify_remote_archive"]

logger = logging.getLogger("garage_migrate.backup")

#: ``systemctl is-active`` words that mean the daemon is not running.
STOPPED_STATES = frozenset({"inactive", "failed"})
_MiB = 1 << 20


@dataclass(frozen=True)
class StopProof:
    """What the stop step saw: the service reported stopped at ``observed_at``.

    Backups and restores require one, and check the DB lock on the node on top of it.

    Attributes:
        node: the node name.
        state: the service state printed by ``is-active`` (``inactive`` or ``failed``).
        observed_at: Unix time of the observation.
    """

    node: str
    state: str
    observed_at: float

# ---------------------------------------------------------------------------- stopped?


async def observe_stopped(shell: NodeShell, ctx: NodeContext) -> StopProof:
    """Ask the service manager whether the daemon is stopped and return the proof.

    Raises:
        LockHeldError: the service is active (or activating, deactivating ...).
    """
    svc = await probes.service_state(shell, ctx)
    if svc.active or svc.state not in STOPPED_STATES:
        raise LockHeldError(f"{ctx.name}: the Garage service is {svc.state!r}: stop it before touching its metadata",
                            node=ctx.name, command=svc.command)
    return StopProof(node=ctx.name, state=svc.state, observed_at=time.time())


async def check_offline(shell: NodeShell, ctx: NodeContext, metadata_dir: str, stopped: StopProof) -> None:
    """Refuse unless the daemon is stopped: the caller's proof, the service state now, and
    sled's flock on ``<metadata_dir>/db/db`` free (ref 6: never copy a running node's metadata).

    Raises:
        LockHeldError: the proof is missing or for another node, the service runs, or the
            DB lock is held (by a daemon or an offline repair).
        BackupError: the lock could not be probed (no ``db/db``: not a sled metadata dir).
    """
    if not isinstance(stopped, StopProof) or stopped.node != ctx.name or stopped.state not in STOPPED_STATES:
        raise LockHeldError(f"{ctx.name}: no proof that the daemon is stopped ({stopped!r}); refusing to "
                            f"touch a running node's metadata", node=ctx.name)
    await observe_stopped(shell, ctx)
    lock = await probes.db_lock(shell, ctx, metadata_dir)
    res = lock.result
    if lock.state == "held":
        raise LockHeldError(f"{ctx.name}: sled's lock on {metadata_dir}/db/db is held although the service is "
                            f"stopped: a daemon or an offline repair still has the DB open", node=ctx.name,
                            command=lock.command, exit_status=res.exit_status)
    if lock.state == "unknown":
        raise BackupError(f"{ctx.name}: cannot probe the DB lock of {metadata_dir}: "
                          f"{res.stderr.strip() or f'exit {res.returncode}'}", node=ctx.name,
                          command=lock.command, exit_status=res.exit_status, signal=res.signal, stderr=res.stderr)

# ---------------------------------------------------------------------------- helpers


def _make_private_dirs(root: Path, leaf: Path) -> None:
    """Create ``leaf`` and the levels between ``root`` and it with mode 0700."""
    if not root.exists():
        root.mkdir(mode=DIR_MODE, parents=True)
        root.chmod(DIR_MODE)
    rel = leaf.relative_to(root)
    cur = root
    for part in rel.parts:
        cur = cur / part
        with contextlib.suppress(FileExistsError):
            cur.mkdir(mode=DIR_MODE)
        # an existing level with a wider mode would expose the secrets inside
        if cur.stat().st_mode & 0o777 != DIR_MODE:
            cur.chmod(DIR_MODE)


@contextlib.contextmanager
def _dir_lock(path: Path, node: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BackupError(f"{node}: another backup or restore of this node is running on this controller "
                                  f"({path} is locked)", node=node) from None
            raise
        yield
    finally:
        os.close(fd)


def _remove_stale_temps(d: Path, prefix: str, log: NodeLog) -> None:
    # only a crashed run leaves these, and the directory lock says no run is active
    for p in d.glob(prefix + "*"):
        log.warning("removing the partial archive %s left by an interrupted backup", p)
        p.unlink(missing_ok=True)


def _free_bytes(path: Path) -> int:
    """Free bytes for us on the controller filesystem holding ``path``."""
    return shutil.disk_usage(path).free

# ---------------------------------------------------------------------------- backup


async def backup_node(shell: NodeShell, ctx: NodeContext, *, node_id: str, metadata_dir: str, stopped: StopProof,
                      dest_root: str | os.PathLike[str], cluster: str, migration_id: str, source_version: str,
                      level: int = 3, mode: Literal["controller", "on-node"] = "controller",
                      node_root: str | None = None, options: BackupOptions | None = None,
                      archive_timeout: float | None = None, max_age_s: float | None = None,
                      compress_on: Literal["controller", "node"] = "controller") -> BackupRecord:
    """Back up a stopped node's metadata dir, verify it, and return the record.

    ``controller`` mode streams ``tar -C <parent> -cf - <name>`` over the node's SSH
    connection, compresses it here (zstd, ``threads=-1``, checksum on) and records every
    member's size and SHA-256 as the bytes pass; or, with ``compress_on="node"``, the node
    compresses with its own ``zstd`` and the controller only hashes and writes the stream
    (:mod:`.nodezstd`: the manifest's file hashes are then taken on the node). The archive goes
    to a 0600 temp file, is fsynced, read back in full (against the manifest or the node's
    hashes, and the node listing), then renamed to
    ``<dest_root>/<cluster>/<migration>/<node>/meta-<version>.tar.zst``; ``manifest.json`` is
    written last. ``on-node`` mode runs the guide's ``tar -acf`` into
    ``<node_root>/<cluster>/<migration>/<node>/`` on the node, streams the archive back to check
    it (zstd frames, members against the node's listing and ``sha256sum`` of every file) and
    keeps the manifest on the controller (a copy goes beside the archive).

    A backup already present for this node and migration is reused when it still verifies
    against its manifest and the node's current listing. Running the step twice therefore
    changes nothing the second time.

    Args:
        shell: the node's shell.
        ctx: the node's command context (``ctx.name`` is the node name).
        node_id: the node's 64-hex ID, recorded in the manifest.
        metadata_dir: the node's ``metadata_dir`` (from its ``garage.toml``).
        stopped: proof from the stop step; the lock is checked again here.
        dest_root: the controller's backup root (manifests live there in both modes).
        cluster: cluster name (a path component).
        migration_id: migration ID (a path component).
        source_version: the running Garage version (``0.7.3``).
        level: zstd level (``controller`` mode).
        compress_on: ``controller`` mode: ``node`` (the node's ``zstd``, as the plan's stream
            command says) or ``controller``.
        mode: ``controller`` or ``on-node``.
        node_root: ``on-node`` mode: the backup root on the node (the inventory's ``backup.root``).
        options: tuning; defaults otherwise.
        archive_timeout: the archive command's timeout as the plan shows it
            (:func:`garage_migrate.actions.backup_timeout`); default: from the size measured.
        max_age_s: an existing backup completed longer ago than this is not reused: a new one
            is taken (``None``: any age).

    Returns:
        The :class:`BackupRecord` (``reused`` tells whether an existing backup was kept).

    Raises:
        LockHeldError: the daemon runs or holds the DB lock.
        BackupError: not enough space, tar failed or was cut, verification failed; no file
            that looks like a backup is left behind.
        TransportError, CommandTimeout: the node stopped answering (transient; retry).
    """
    opts = options or BackupOptions()
    node = ctx.name
    meta, parent, root = _meta_dir(metadata_dir, node)
    if mode == "on-node" and not node_root:
        raise BackupError(f"{node}: on-node backups need the node's backup root", node=node)
    step = _Step(shell=shell, ctx=ctx, paths=backup_paths(dest_root, cluster, migration_id, node, source_version),
                 cluster=cluster, migration_id=migration_id, version=source_version.removeprefix("v"),
                 node_id=_check_node_id(node_id, node), meta=meta, parent=parent, mode=mode, opts=opts,
                 log=_log(node), t0=time.monotonic(), archive_timeout=archive_timeout)
    _make_private_dirs(Path(dest_root), step.paths.dir)
    with _dir_lock(step.paths.lock, node):
        await check_offline(shell, ctx, meta, stopped)
        step = dataclasses.replace(step, listing=await _listing(shell, ctx, meta, root, node),
                                   du=await _du(shell, ctx, meta, node))
        reused = await _reuse(step, max_age_s)
        if reused is not None:
            return reused
        if mode == "controller":
            return await _controller_backup(step, level, compress_on)
        return await _on_node_backup(step, node_root)  # type: ignore[arg-type]


async def _reuse(step: _Step, max_age_s: float | None = None) -> BackupRecord | None:
    paths, log = step.paths, step.log
    if not paths.manifest.exists():
        return None
    try:
        m = load_manifest(paths.manifest)
    except BackupError as exc:
        log.warning("existing backup not reused: %s", exc)
        return None
    created = m.created_at if m.created_at.tzinfo else m.created_at.replace(tzinfo=timezone.utc)
    age = (_utcnow() - created).total_seconds()
    if max_age_s is not None and age > max_age_s:
        log.warning("existing backup not reused, taking a new one: it was completed %s (%.1f h ago), "
                    "older than the %.1f h a backup may be", m.created_at.isoformat(), age / 3600, max_age_s / 3600)
        return None
    if m.identity() != step.identity():
        log.warning("existing backup not reused: it is of %s, not %s", m.identity(), step.identity())
        return None
    if m.mode == "controller":
        if not paths.archive.exists():
            log.warning("existing manifest not reused: %s is missing", paths.archive)
            return None
        report = await asyncio.to_thread(verify_backup, paths.archive, m, step.listing,
                                         check_mtime=step.opts.check_mtime)
        archive_path, remote = paths.archive, None
    else:
        report = await verify_remote_archive(step.shell, step.ctx, m, step.listing, options=step.opts)
        archive_path, remote = None, m.archive
    if not report.ok:
        log.warning("existing backup not reused, taking a new one: %s", report.summary())
        return None
    log.info("reusing the verified backup %s (sha256 %s)", report.archive, m.archive_sha256[:16])
    return BackupRecord(node=step.node, manifest=m, manifest_path=paths.manifest, archive_path=archive_path,
                        remote_archive=remote, reused=True, verify=report, seconds=time.monotonic() - step.t0,
                        transfer_seconds=0.0)


async def _controller_backup(step: _Step, level: int, compress_on: str) -> BackupRecord:
    paths, meta, du, opts, log = step.paths, step.meta, step.du, step.opts, step.log
    node = step.node
    _remove_stale_temps(paths.dir, paths.temp_prefix(), log)
    need = du + opts.space_headroom
    free = _free_bytes(paths.dir)
    if free < need:
        raise BackupError(f"{node}: not enough space on the controller for the backup: {paths.dir} has "
                          f"{free} bytes free, the metadata dir is {du} bytes (+{opts.space_headroom} headroom)",
                          node=node)
    tmp = paths.dir / f"{paths.temp_prefix()}{os.getpid()}-{secrets.token_hex(4)}"
    log.info("streaming %s (%d bytes) to %s, compressed on the %s", meta, du, paths.archive, compress_on)
    installed = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            t1 = time.monotonic()
            if compress_on == "node":
                received = await receive_compressed(step, level, fh)
            else:
                stats = await _compress_here(step, level, fh)
            transfer = time.monotonic() - t1
            fh.flush()
            os.fsync(fh.fileno())
        if compress_on == "node":
            manifest, report = await check_received(step, tmp, paths.archive.name, level, received)
        else:
            manifest = step.manifest(paths.archive.name, level, stats)
            report = await asyncio.to_thread(verify_backup, tmp, manifest, step.listing, check_mtime=opts.check_mtime)
        report.raise_for_problems(node, "the new backup does not match the node")
        # the old manifest goes first: never a manifest beside an archive it does not describe
        paths.manifest.unlink(missing_ok=True)
        os.replace(tmp, paths.archive)
        installed = True
        fsync_dir(paths.dir)
        write_private_file(paths.manifest, manifest.to_json().encode())
        report = dataclasses.replace(report, archive=str(paths.archive))
    except BaseException:
        tmp.unlink(missing_ok=True)
        if installed:
            paths.archive.unlink(missing_ok=True)
        raise
    mib_s = manifest.uncompressed_bytes / _MiB / transfer if transfer else 0.0
    log.info("backup done: %d bytes -> %d (x%.2f) in %.1fs (%.0f MiB/s), verified in %.1fs, sha256 %s",
             manifest.uncompressed_bytes, manifest.compressed_bytes,
             manifest.uncompressed_bytes / max(1, manifest.compressed_bytes), transfer, mib_s, report.seconds,
             manifest.archive_sha256[:16])
    return BackupRecord(node=node, manifest=manifest, manifest_path=paths.manifest, archive_path=paths.archive,
                        remote_archive=None, reused=False, verify=report, seconds=time.monotonic() - step.t0,
                        transfer_seconds=transfer)


async def _compress_here(step: _Step, level: int, fh) -> StreamStats:
    """Stream the node's plain tar and compress it here, recording members and hashes as the
    bytes pass (the fallback for a node without ``zstd``)."""
    node, meta = step.node, step.meta
    cmd = C.tar_stream(meta, timeout=step.tar_timeout(), sudo=step.ctx.sudo)
    writer = ArchiveWriter(fh, level=level, job_size=step.opts.zstd_job_size)
    try:
        await _stream(step.shell, cmd, writer.feed, step.opts)
        return writer.close()
    except (CommandTimeout, TransportError):
        raise
    except CommandError as exc:
        raise _command_failed(exc, node, f"tar of {meta} failed, the partial archive was removed") from None
    except (TarStreamError, zstandard.ZstdError) as exc:
        member, msg = describe_stream_error(exc, writer.reader)
        raise BackupError(f"{node}: the tar stream of {meta} is incomplete or corrupt"
                          + (f" at {member}" if member else "") + f": {msg}", node=node) from None
    except OSError as exc:
        raise BackupError(f"{node}: cannot write the backup to {step.paths.dir}: {exc}", node=node) from None
