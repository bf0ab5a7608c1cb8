"""What the backup modes share: options, the record, the step in progress, and the remote
calls (each failure turned into a :class:`BackupError` saying what was being done; transport
faults and timeouts left as they are, since they are transient)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import posixpath
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from .. import commands as C
from ..actions import BACKUP_MIN_RATE, BACKUP_TIMEOUT_FLOOR
from ..commands import NodeContext, RemoteCommand
from ..errors import (
    BackupError,
    CommandError,
    CommandTimeout,
    TransportError,
)
from ..nodelog import NodeLog, node_log
from ..ssh import NodeShell
from .manifest import (
    BackupPaths,
    ListingEntry,
    Manifest,
    Problem,
    parse_listing,
    parse_sha256sum,
)
from .pipeline import StreamStats
from .tarstream import Member
from .verify import VerifyReport

__all__ = ["BackupOptions", "BackupRecord"]

logger = logging.getLogger("garage_migrate.backup")

#: ``systemctl is-active`` words that mean the daemon is not running.
STOPPED_STATES = frozenset({"inactive", "failed"})
_MiB = 1 << 20


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

    def manifest(self, archive: str, level: int | None, stats: StreamStats,
                 compressed_on: Literal["controller", "node"] = "controller") -> Manifest:
        """The manifest of a backup made by this step."""
        return Manifest(cluster=self.cluster, migration_id=self.migration_id, node=self.node, node_id=self.node_id,
                        source_version=self.version, metadata_dir=self.meta, mode=self.mode, archive=archive,
                        created_at=_utcnow(), zstd_level=level, du_bytes=self.du,
                        uncompressed_bytes=stats.uncompressed_bytes, compressed_bytes=stats.compressed_bytes,
                        archive_sha256=stats.archive_sha256, members=tuple(stats.members),
                        compressed_on=compressed_on)
