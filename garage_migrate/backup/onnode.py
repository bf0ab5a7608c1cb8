"""The ``on-node`` backup: the guide's ``tar -acf`` into a private dir on the node, checked by
streaming the archive back (frames, members against the node's listing, ``sha256sum`` of
every file on the node)."""

from __future__ import annotations

import contextlib
import logging
import time

import zstandard

from .. import commands as C
from ..actions import on_node_temp
from ..commands import NodeContext
from ..errors import (
    BackupError,
    CommandError,
    CommandTimeout,
    TransportError,
)
from ..ssh import NodeShell
from .common import (
    BackupOptions,
    BackupRecord,
    _command_failed,
    _df,
    _node_hashes,
    _remote_sha256,
    _report,
    _run,
    _Step,
    _stream,
)
from .manifest import (
    ListingEntry,
    Manifest,
    Problem,
    compare_hashes,
    compare_listing,
    compare_members,
    remote_backup_paths,
    write_private_file,
)
from .pipeline import ArchiveChecker, StreamStats, describe_stream_error
from .tarstream import TarStreamError
from .verify import VerifyReport

__all__ = ["verify_remote_archive"]

logger = logging.getLogger("garage_migrate.backup")

#: ``systemctl is-active`` words that mean the daemon is not running.
STOPPED_STATES = frozenset({"inactive", "failed"})
_MiB = 1 << 20





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
