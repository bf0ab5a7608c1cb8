"""A streamed backup compressed on the node: the node's ``zstd`` does the work, the controller
only hashes and writes the bytes it receives.

The node runs ``tar -C <parent> --use-compress-program='zstd -T0 -<level>' -cf - <name>``
(:func:`garage_migrate.commands.tar_zstd_stream`, as the plan shows it); the compressed stream
crosses SSH and goes straight into the controller's temp file. No compression, hashing or tar parsing
happen on the controller while the bytes arrive.

The manifest comes from the node and the archive, checked against each other: every file's
SHA-256 by ``sha256sum`` on the node (still stopped) while the controller reads the written
file back in full (:func:`~.verify.scan_archive`: decompress, walk the tar, hash every file).
A backup passes only when the file is the bytes received, every member matches the node's
listing and every file's hash matches the node's: a full decompress-and-compare, against the
node's own reading of its files rather than against a hash of the same stream.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import BinaryIO

from .. import commands as C
from ..errors import BackupError, CommandError, CommandTimeout, TransportError
from .common import _command_failed, _node_hashes, _Step, _stream
from .manifest import Manifest, Problem, compare_hashes, compare_listing
from .pipeline import StreamStats
from .verify import VerifyReport, scan_archive

__all__ = ["check_received", "receive_compressed"]


class _Receiver:
    """Writes what arrives to the file, counting it. Not hashed here: the archive's SHA-256 is
    taken when the written file is read back, and every file inside is compared with the node's,
    so a byte changed between the wire and the disk shows there (one hash pass fewer)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.n = 0

    def feed(self, data: bytes) -> None:
        self.n += len(data)
        self.fh.write(data)


async def receive_compressed(step: _Step, level: int, fh: BinaryIO) -> int:
    """Stream the node-compressed archive into ``fh``; the number of bytes that arrived.

    Raises:
        BackupError: tar or zstd failed on the node (a node without ``zstd`` says so here), or
            the controller could not write.
        TransportError, CommandTimeout: the node stopped answering (transient).
    """
    cmd = C.tar_zstd_stream(step.meta, level=level, timeout=step.tar_timeout(), sudo=step.ctx.sudo)
    rx = _Receiver(fh)
    try:
        await _stream(step.shell, cmd, rx.feed, step.opts)
    except (CommandTimeout, TransportError):
        raise
    except CommandError as exc:
        raise _command_failed(exc, step.node, f"tar | zstd of {step.meta} on the node failed ({_why(exc)}), "
                                              f"the partial archive was removed") from None
    except OSError as exc:
        raise BackupError(f"{step.node}: cannot write the backup to {step.paths.dir}: {exc}", node=step.node) from None
    return rx.n


def _why(exc: CommandError) -> str:
    """What a failed ``tar | zstd`` most likely means: a missing zstd only when it says so."""
    if exc.exit_status == 127 or "zstd: not found" in (exc.stderr_tail or ""):
        return "the node has no zstd"
    if exc.signal or exc.exit_status in (124, 137):
        # killed (by its timeout's SIGKILL, the OOM killer, a person): the stream stopped short
        return f"killed ({'SIG' + exc.signal.removeprefix('SIG') if exc.signal else f'exit {exc.exit_status}'}): " \
               "the stream was cut short"
    return f"exit {exc.exit_status}"


async def check_received(step: _Step, tmp: Path, archive_name: str, level: int,
                         received: int) -> tuple[Manifest, VerifyReport]:
    """Read the written archive back in full and compare it with the node; the manifest and
    the report (raise with :meth:`VerifyReport.raise_for_problems`).

    The node hashes its files while the controller decompresses: the two run at once.
    """
    t0 = time.monotonic()
    files = [e for e in step.listing.values() if e.type == "file"]
    scan, hashes = await asyncio.gather(
        asyncio.to_thread(scan_archive, tmp),
        _node_hashes(step.shell, step.ctx, step.parent, files, step.node, step.opts))  # type: ignore[arg-type]
    problems = list(scan.problems)
    if scan.compressed_bytes != received:
        problems.append(Problem(None, "archive", f"the file holds {scan.compressed_bytes} bytes, {received} were "
                                                 f"received"))
    problems += compare_listing(scan.members, step.listing, check_mtime=step.opts.check_mtime)
    problems += compare_hashes(scan.members, hashes)
    stats = StreamStats(list(scan.members), scan.uncompressed_bytes, scan.compressed_bytes, scan.archive_sha256)
    report = VerifyReport(archive=str(tmp), problems=tuple(problems), members=len(scan.members),
                          files=sum(1 for m in scan.members if m.type == "file"),
                          uncompressed_bytes=scan.uncompressed_bytes, compressed_bytes=scan.compressed_bytes,
                          archive_sha256=scan.archive_sha256, seconds=time.monotonic() - t0)
    return step.manifest(archive_name, level, stats, compressed_on="node"), report
