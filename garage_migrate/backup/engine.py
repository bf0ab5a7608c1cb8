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
import posixpath
import queue
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import zstandard

from .. import commands as C
from .. import probes
from ..actions import BACKUP_MIN_RATE, BACKUP_TIMEOUT_FLOOR, on_node_temp, restore_paths
from ..commands import NodeContext, RemoteCommand
from ..errors import BackupError, CommandError, CommandRefused, CommandTimeout, LockHeldError, TransportError
from ..nodelog import NodeLog, node_log
from ..ssh import NodeShell
from .manifest import (
    DIR_MODE,
    BackupPaths,
    ListingEntry,
    Manifest,
    Problem,
    backup_paths,
    compare_hashes,
    compare_listing,
    compare_members,
    fsync_dir,
    load_manifest,
    parse_listing,
    parse_sha256sum,
    remote_backup_paths,
    write_private_file,
)
from .pipeline import ArchiveChecker, ArchiveWriter, StreamStats, describe_stream_error
from .tarstream import Member, TarStreamError
from .verify import VerifyReport, verify_backup

__all__ = [
    "BackupOptions",
    "BackupRecord",
    "RestoreReport",
    "StopProof",
    "backup_node",
    "check_offline",
    "observe_stopped",
    "restore_metadata",
    "verify_remote_archive",
]

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


@dataclass(frozen=True)
class BackupOptions:
    """Knobs of backups and restores; the defaults suit real clusters.

    Attributes:
        chunk: bytes per read from the SSH channel.
        batch: bytes gathered before they are hashed and compressed (fewer, larger calls).
        queue_depth: batches in flight to the compression thread (memory: depth x batch).
        min_rate: bytes/s assumed at worst, to derive timeouts from the metadata size.
        timeout_floor: seconds added to every size-derived timeout.
        space_headroom: bytes kept free on top of the metadata size.
        check_mtime: treat a file modified since the backup as a mismatch.
        hash_batch: files per ``sha256sum`` call on the node.
        zstd_job_size: bytes per zstd worker job; ``0`` keeps zstd's default (8 MiB at level
            3), which costs ~50 MiB more memory on two cores for no measurable speed.
    """

    chunk: int = 1 * _MiB
    batch: int = 4 * _MiB
    queue_depth: int = 4
    min_rate: float = BACKUP_MIN_RATE  # the plan's timeouts use the same figures
    timeout_floor: float = BACKUP_TIMEOUT_FLOOR
    space_headroom: int = 64 * _MiB
    check_mtime: bool = True
    hash_batch: int = 256
    zstd_job_size: int = 4 * _MiB

    def timeout_for(self, nbytes: int) -> float:
        """A command timeout for moving or reading ``nbytes``."""
        return self.timeout_floor + nbytes / self.min_rate


@dataclass(frozen=True)
class BackupRecord:
    """A verified backup of one node.

    Attributes:
        node: node name.
        manifest: its manifest.
        manifest_path: the manifest on the controller.
        archive_path: the archive on the controller (``controller`` mode), else ``None``.
        remote_archive: the archive on the node (``on-node`` mode), else ``None``.
        reused: an existing verified backup was kept instead of taking a new one.
        verify: the verification that passed.
        seconds: duration of the whole step.
        transfer_seconds: duration of the tar stream (0 when reused).
    """

    node: str
    manifest: Manifest
    manifest_path: Path
    archive_path: Path | None
    remote_archive: str | None
    reused: bool
    verify: VerifyReport
    seconds: float
    transfer_seconds: float


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


def _log(node: str) -> NodeLog:
    return node_log(logger, node)


def _check_node_id(node_id: str, node: str) -> str:
    v = node_id.lower() if isinstance(node_id, str) else ""
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise BackupError(f"{node}: node ID {node_id!r} is not the 64-hex ID of `garage node id`", node=node)
    return v


def _meta_dir(metadata_dir: str, node: str) -> tuple[str, str, str]:
    """``(metadata_dir, parent, name)`` of a remote metadata dir."""
    if not metadata_dir.startswith("/") or metadata_dir.rstrip("/") in ("", "/"):
        raise BackupError(f"{node}: metadata_dir must be an absolute directory, got {metadata_dir!r}", node=node)
    meta = metadata_dir.rstrip("/")
    parent, name = posixpath.split(meta)
    return meta, parent or "/", name


def _command_failed(exc: CommandError, node: str, what: str) -> BackupError:
    return BackupError(f"{node}: {what}: {exc}", node=node, command=exc.command, exit_status=exc.exit_status,
                       signal=exc.signal, stderr=exc.stderr_tail)


async def _run(shell: NodeShell, cmd: RemoteCommand, node: str, what: str):
    """Run a command; a failure becomes a :class:`BackupError` saying what we were doing.
    Transport faults and timeouts stay as they are (transient)."""
    try:
        return await shell.run(cmd)
    except (CommandTimeout, TransportError):
        raise
    except CommandError as exc:
        raise _command_failed(exc, node, what) from None


async def _listing(shell: NodeShell, ctx: NodeContext, path: str, root: str, node: str) -> dict[str, ListingEntry]:
    res = await _run(shell, C.list_tree(path, sudo=ctx.sudo), node, f"cannot list {path}")
    return parse_listing(res.stdout, root)


async def _du(shell: NodeShell, ctx: NodeContext, path: str, node: str) -> int:
    res = await _run(shell, C.du_bytes(path, sudo=ctx.sudo), node, f"cannot measure {path}")
    try:
        return int(res.stdout.split()[0])
    except (IndexError, ValueError):
        raise BackupError(f"{node}: unexpected `du -sb` output {res.stdout[:80]!r}", node=node) from None


async def _df(shell: NodeShell, path: str, node: str) -> int:
    res = await _run(shell, C.df_avail(path), node, f"cannot read free space of {path}")
    lines = res.stdout.strip().splitlines()
    try:
        return int(lines[-1].split()[0])
    except (IndexError, ValueError):
        raise BackupError(f"{node}: unexpected `df` output {res.stdout[:120]!r}", node=node) from None


async def _remote_sha256(shell: NodeShell, ctx: NodeContext, path: str, nbytes: int, node: str,
                         opts: BackupOptions) -> str:
    res = await _run(shell, C.sha256sum_files([path], sudo=ctx.sudo, timeout=opts.timeout_for(nbytes)), node,
                     f"cannot hash {path}")
    got = parse_sha256sum(res.stdout)
    if path not in got:
        raise BackupError(f"{node}: sha256sum printed no hash for {path}", node=node)
    return got[path]


async def _node_hashes(shell: NodeShell, ctx: NodeContext, parent: str, members: Sequence[Member], node: str,
                       opts: BackupOptions, root_as: str | None = None) -> dict[str, str]:
    """SHA-256 on the node of every file member, keyed by member name. ``root_as`` reads the
    tree from another top directory (a restore's staging dir)."""
    files = [m for m in members if m.type == "file"]
    out: dict[str, str] = {}
    for i in range(0, len(files), opts.hash_batch):
        batch = files[i: i + opts.hash_batch]
        paths = {}
        for m in batch:
            rel = m.name if root_as is None else root_as + m.name[m.name.index("/"):]
            paths[posixpath.join(parent, rel)] = m.name
        size = sum(m.size for m in batch)
        res = await _run(shell, C.sha256sum_files(list(paths), sudo=ctx.sudo, timeout=opts.timeout_for(size)),
                         node, "cannot hash the metadata files")
        for path, digest in parse_sha256sum(res.stdout).items():
            if path in paths:
                out[paths[path]] = digest
    return out


class _Offload:
    """Runs a sync ``feed`` in one worker thread behind a bounded queue, so hashing and
    compressing overlap with receiving the next bytes."""

    def __init__(self, feed: Callable[[bytes], None], depth: int) -> None:
        self._feed = feed
        self._q: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=max(1, depth))
        self.error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name="garage-migrate-backup", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (item := self._q.get()) is not None:
            if self.error is None and not self._stopped:
                try:
                    for chunk in item:
                        self._feed(chunk)
                except BaseException as exc:  # noqa: BLE001 - handed to the event loop side
                    self.error = exc
            # after an error or abort keep draining, so a producer blocked on put() is released

    async def put(self, data: list[bytes]) -> None:
        if self.error is not None:
            raise self.error
        try:
            self._q.put_nowait(data)
        except queue.Full:
            await asyncio.to_thread(self._q.put, data)

    async def close(self) -> None:
        """Wait until every batch is fed; re-raise the feed's error."""
        await asyncio.to_thread(self._q.put, None)
        await asyncio.to_thread(self._thread.join)
        if self.error is not None:
            raise self.error

    async def abort(self, timeout: float = 60.0) -> None:
        """Drop what is queued and wait for the worker, so nothing writes to the output after."""
        self._stopped = True
        await asyncio.to_thread(self._q.put, None)
        await asyncio.to_thread(self._thread.join, timeout)


async def _stream(shell: NodeShell, cmd: RemoteCommand, feed: Callable[[bytes], None], opts: BackupOptions) -> int:
    """Stream ``cmd``'s stdout into ``feed`` in a worker thread. Returns the bytes streamed.

    Chunks are handed over in lists of about ``opts.batch`` bytes, as asyncssh returned them:
    no copy, and one thread hand-off per batch rather than per SSH read.
    """
    off = _Offload(feed, opts.queue_depth)
    pending: list[bytes] = []
    size = 0
    done = False

    async def sink(data: bytes) -> None:
        nonlocal pending, size
        pending.append(data)
        size += len(data)
        if size >= opts.batch:
            batch, pending, size = pending, [], 0
            await off.put(batch)

    try:
        res = await shell.stream(cmd, sink, chunk=opts.chunk)
        if pending:
            await off.put(pending)
        await off.close()
        done = True
        return res.streamed
    finally:
        if not done:
            await off.abort()


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


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _report(archive: str, problems: list[Problem], stats: StreamStats | None, t0: float) -> VerifyReport:
    return VerifyReport(archive=archive, problems=tuple(problems), members=len(stats.members) if stats else 0,
                        files=sum(1 for m in stats.members if m.type == "file") if stats else 0,
                        uncompressed_bytes=stats.uncompressed_bytes if stats else 0,
                        compressed_bytes=stats.compressed_bytes if stats else 0,
                        archive_sha256=stats.archive_sha256 if stats else "", seconds=time.monotonic() - t0)


@dataclass(frozen=True)
class _Step:
    """One backup in progress: what every phase of it needs."""

    shell: NodeShell
    ctx: NodeContext
    paths: BackupPaths
    cluster: str
    migration_id: str
    version: str
    node_id: str
    meta: str
    parent: str
    mode: Literal["controller", "on-node"]
    opts: BackupOptions
    log: NodeLog
    t0: float
    listing: dict[str, ListingEntry] = dataclasses.field(default_factory=dict)
    du: int = 0
    archive_timeout: float | None = None

    def tar_timeout(self) -> float:
        """The archive command's timeout: the plan's when it gave one (the plan shows the very
        command that runs), else derived from the size measured now."""
        return self.archive_timeout if self.archive_timeout is not None else self.opts.timeout_for(self.du)

    @property
    def node(self) -> str:
        return self.ctx.name

    def identity(self) -> tuple[str, ...]:
        """What an existing manifest must match to be reused (see :meth:`Manifest.identity`)."""
        return (self.cluster, self.migration_id, self.node, self.node_id, self.version, self.meta, self.mode)

    def manifest(self, archive: str, level: int | None, stats: StreamStats) -> Manifest:
        """The manifest of a backup made by this step."""
        return Manifest(cluster=self.cluster, migration_id=self.migration_id, node=self.node, node_id=self.node_id,
                        source_version=self.version, metadata_dir=self.meta, mode=self.mode, archive=archive,
                        created_at=_utcnow(), zstd_level=level, du_bytes=self.du,
                        uncompressed_bytes=stats.uncompressed_bytes, compressed_bytes=stats.compressed_bytes,
                        archive_sha256=stats.archive_sha256, members=tuple(stats.members))


# ---------------------------------------------------------------------------- backup


async def backup_node(shell: NodeShell, ctx: NodeContext, *, node_id: str, metadata_dir: str, stopped: StopProof,
                      dest_root: str | os.PathLike[str], cluster: str, migration_id: str, source_version: str,
                      level: int = 3, mode: Literal["controller", "on-node"] = "controller",
                      node_root: str | None = None, options: BackupOptions | None = None,
                      archive_timeout: float | None = None, max_age_s: float | None = None) -> BackupRecord:
    """Back up a stopped node's metadata dir, verify it, and return the record.

    ``controller`` mode streams ``tar -C <parent> -cf - <name>`` over the node's SSH
    connection, compresses it here (zstd, ``threads=-1``, checksum on) and records every
    member's size and SHA-256 as the bytes pass; the archive goes to a 0600 temp file, is
    fsynced, read back by :func:`verify_backup` (manifest and node listing), then renamed to
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
            return await _controller_backup(step, level)
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


async def _controller_backup(step: _Step, level: int) -> BackupRecord:
    shell, ctx, paths, meta, du, opts, log = step.shell, step.ctx, step.paths, step.meta, step.du, step.opts, step.log
    node = step.node
    _remove_stale_temps(paths.dir, paths.temp_prefix(), log)
    need = du + opts.space_headroom
    free = _free_bytes(paths.dir)
    if free < need:
        raise BackupError(f"{node}: not enough space on the controller for the backup: {paths.dir} has "
                          f"{free} bytes free, the metadata dir is {du} bytes (+{opts.space_headroom} headroom)",
                          node=node)
    tmp = paths.dir / f"{paths.temp_prefix()}{os.getpid()}-{secrets.token_hex(4)}"
    cmd = C.tar_stream(meta, timeout=step.tar_timeout(), sudo=ctx.sudo)
    log.info("streaming %s (%d bytes) to %s", meta, du, paths.archive)
    installed = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            writer = ArchiveWriter(fh, level=level, job_size=opts.zstd_job_size)
            t1 = time.monotonic()
            try:
                await _stream(shell, cmd, writer.feed, opts)
                stats = writer.close()
            except (CommandTimeout, TransportError):
                raise
            except CommandError as exc:
                raise _command_failed(exc, node, f"tar of {meta} failed, the partial archive was removed") from None
            except (TarStreamError, zstandard.ZstdError) as exc:
                member, msg = describe_stream_error(exc, writer.reader)
                raise BackupError(f"{node}: the tar stream of {meta} is incomplete or corrupt"
                                  + (f" at {member}" if member else "") + f": {msg}", node=node) from None
            except OSError as exc:
                raise BackupError(f"{node}: cannot write the backup to {paths.dir}: {exc}", node=node) from None
            transfer = time.monotonic() - t1
            fh.flush()
            os.fsync(fh.fileno())
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
    mib_s = stats.uncompressed_bytes / _MiB / transfer if transfer else 0.0
    log.info("backup done: %d bytes -> %d (x%.2f) in %.1fs (%.0f MiB/s), verified in %.1fs, sha256 %s",
             stats.uncompressed_bytes, stats.compressed_bytes,
             stats.uncompressed_bytes / max(1, stats.compressed_bytes), transfer, mib_s, report.seconds,
             stats.archive_sha256[:16])
    return BackupRecord(node=node, manifest=manifest, manifest_path=paths.manifest, archive_path=paths.archive,
                        remote_archive=None, reused=False, verify=report, seconds=time.monotonic() - step.t0,
                        transfer_seconds=transfer)


async def _stream_check(shell: NodeShell, ctx: NodeContext, archive: str, size: int,
                        opts: BackupOptions) -> tuple[StreamStats | None, list[Problem]]:
    """Stream a node's ``.tar.zst`` back and check it; ``(stats, problems)``."""
    checker = ArchiveChecker()
    try:
        await _stream(shell, C.cat(archive, sudo=ctx.sudo, timeout=opts.timeout_for(size)), checker.feed, opts)
        return checker.close(), []
    except (CommandTimeout, TransportError):
        raise
    except CommandError as exc:
        raise _command_failed(exc, ctx.name, f"cannot read back {archive}") from None
    except (TarStreamError, zstandard.ZstdError) as exc:
        member, msg = describe_stream_error(exc, checker.reader)
        kind = "truncated" if isinstance(exc, TarStreamError) and "truncated" in msg else "corrupt"
        return None, [Problem(member, kind, f"{archive} near compressed byte {checker.compressed_bytes}: {msg}")]


async def verify_remote_archive(shell: NodeShell, ctx: NodeContext, manifest: Manifest,
                                node_listing: dict[str, ListingEntry] | None = None, *,
                                options: BackupOptions | None = None) -> VerifyReport:
    """Verify an on-node archive by streaming it back: frames, members and hashes against the
    manifest, the archive's SHA-256, and optionally the node's listing.

    Returns:
        A :class:`VerifyReport` (``archive`` is ``<node>:<path>``).
    """
    opts = options or BackupOptions()
    t0 = time.monotonic()
    stats, problems = await _stream_check(shell, ctx, manifest.archive, manifest.compressed_bytes, opts)
    if stats is not None:
        problems += compare_members(manifest.members, stats.members)
        if not problems and stats.archive_sha256 != manifest.archive_sha256:
            problems.append(Problem(None, "archive", f"archive sha256 {stats.archive_sha256} differs from the "
                                                     f"manifest's {manifest.archive_sha256}"))
    if node_listing is not None:
        problems += compare_listing(manifest.members, node_listing, check_mtime=opts.check_mtime)
    return _report(f"{ctx.name}:{manifest.archive}", problems, stats, t0)


async def _on_node_backup(step: _Step, node_root: str) -> BackupRecord:
    shell, ctx, paths, meta, du, opts, log = step.shell, step.ctx, step.paths, step.meta, step.du, step.opts, step.log
    node = step.node
    rdir, rarchive, rmanifest = remote_backup_paths(node_root, step.cluster, step.migration_id, node, step.version)
    if rdir == meta or rdir.startswith(meta + "/"):
        raise BackupError(f"{node}: the on-node backup dir {rdir} is inside the metadata dir {meta}", node=node)
    await _run(shell, C.mkdir_private(rdir, sudo=ctx.sudo), node, f"cannot create {rdir}")
    st = await _run(shell, C.stat(rdir, sudo=ctx.sudo), node, f"cannot stat {rdir}")
    if st.stdout.split()[1:2] != ["700"]:
        raise BackupError(f"{node}: {rdir} has mode {st.stdout.split()[1:2]}, not 700: the backup would expose "
                          f"the node's secrets; fix it (chmod 700) and retry", node=node)
    free = await _df(shell, rdir, node)
    if free < du + opts.space_headroom:
        raise BackupError(f"{node}: not enough space on the node for an on-node backup: {rdir} has {free} bytes "
                          f"free, the metadata dir is {du} bytes (+{opts.space_headroom} headroom)", node=node)
    tmp = on_node_temp(rarchive)  # fixed, as the plan shows it (the dir lock keeps a second writer away)
    log.info("archiving %s on the node into %s", meta, rarchive)
    renamed = False
    try:
        t1 = time.monotonic()
        await _run(shell, C.tar_archive(meta, tmp, timeout=step.tar_timeout(), sudo=ctx.sudo), node,
                   f"tar of {meta} on the node failed, the partial archive was removed")
        await _run(shell, C.sync(sudo=ctx.sudo), node, "sync failed")
        transfer = time.monotonic() - t1
        size_out = await _run(shell, C.stat(tmp, sudo=ctx.sudo), node, f"cannot stat {tmp}")
        size = int(size_out.stdout.split()[0])
        stats, problems = await _stream_check(shell, ctx, tmp, size, opts)
        if stats is not None:
            if stats.compressed_bytes != size:
                problems.append(Problem(None, "archive", f"read {stats.compressed_bytes} of {size} archive bytes"))
            elif await _remote_sha256(shell, ctx, tmp, size, node, opts) != stats.archive_sha256:
                problems.append(Problem(None, "archive", "the archive changed while it was read back"))
            problems += compare_listing(stats.members, step.listing, check_mtime=opts.check_mtime)
            if not problems:
                hashes = await _node_hashes(shell, ctx, step.parent, stats.members, node, opts)
                problems += compare_hashes(stats.members, hashes)
        report = _report(f"{node}:{rarchive}", problems, stats, t1)
        report.raise_for_problems(node, "the on-node archive does not match the node's metadata")
        assert stats is not None
        manifest = step.manifest(rarchive, None, stats)
        paths.manifest.unlink(missing_ok=True)
        await _run(shell, C.rename(tmp, rarchive, sudo=ctx.sudo), node, f"cannot rename {tmp}")
        renamed = True
        write_private_file(paths.manifest, manifest.to_json().encode())
        # a copy beside the archive, for an operator working on the node alone
        await shell.put_file(paths.manifest, rmanifest, timeout=opts.timeout_floor)
    except BaseException:
        with contextlib.suppress(Exception):
            await shell.run(C.remove_file(rarchive if renamed else tmp, sudo=ctx.sudo), check=False)
        if renamed:
            paths.manifest.unlink(missing_ok=True)
        raise
    log.info("on-node backup done: %d bytes -> %d in %.1fs, streamed back and verified, sha256 %s",
             stats.uncompressed_bytes, stats.compressed_bytes, transfer, stats.archive_sha256[:16])
    return BackupRecord(node=node, manifest=manifest, manifest_path=paths.manifest, archive_path=None,
                        remote_archive=rarchive, reused=False, verify=report, seconds=time.monotonic() - step.t0,
                        transfer_seconds=transfer)


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
