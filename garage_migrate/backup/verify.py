"""Reading a backup back: the archive against its manifest, and against the node.

:func:`verify_backup` decompresses the archive as a stream and walks it with :mod:`tarfile`
in ``r|`` mode (no seeking, bounded memory), hashing every file. It is independent from the
parser that wrote the manifest (:mod:`.tarstream`), so a bug in one is caught by the other.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import zstandard

from ..errors import BackupError
from .manifest import ListingEntry, Manifest, Problem, compare_listing, compare_members
from .tarstream import ENCODING, ERRORS, Member, member_type

__all__ = ["ArchiveScan", "VerifyReport", "scan_archive", "verify_backup"]

_READ = 1 << 20
#: Problems quoted in an exception message; the report keeps them all.
_QUOTED = 8


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of a verification.

    Attributes:
        archive: what was checked (a controller path, or ``node:/path``).
        problems: every difference found; empty when the backup is good.
        members: members read from the archive.
        files: regular files hashed.
        uncompressed_bytes: tar bytes read.
        compressed_bytes: archive bytes read.
        archive_sha256: SHA-256 of the archive as read.
        seconds: how long the check took.
    """

    archive: str
    problems: tuple[Problem, ...]
    members: int
    files: int
    uncompressed_bytes: int
    compressed_bytes: int
    archive_sha256: str
    seconds: float

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    def summary(self) -> str:
        """One line for logs and the ledger."""
        if self.ok:
            return (f"{self.archive}: verified {self.files} files / {self.members} members, "
                    f"{self.uncompressed_bytes} bytes in {self.seconds:.1f}s")
        return f"{self.archive}: {len(self.problems)} problem(s): " + "; ".join(str(p) for p in self.problems[:_QUOTED])

    def raise_for_problems(self, node: str | None = None, what: str = "backup verification failed") -> None:
        """Raise :class:`BackupError` naming the files concerned, if there is any problem.

        Raises:
            BackupError: at least one problem.
        """
        if self.ok:
            return
        more = len(self.problems) - _QUOTED
        lines = "\n".join(f"  - {p}" for p in self.problems[:_QUOTED]) + (f"\n  - ... and {more} more" if more > 0 else "")
        prefix = f"{node}: " if node else ""
        raise BackupError(f"{prefix}{what}: {self.archive}\n{lines}", node=node)


class _HashingReader:
    """Hashes and counts the compressed bytes as the decompressor reads them."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.sha.update(data)
        self.n += len(data)
        return data

    def readinto(self, buf) -> int:
        n = self.fh.readinto(buf)
        if n:
            self.sha.update(memoryview(buf)[:n])
            self.n += n
        return n


class _CountingReader:
    """Counts the uncompressed bytes tarfile pulls."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.n += len(data)
        return data


@dataclass(frozen=True)
class ArchiveScan:
    """What one read of an archive found (see :func:`scan_archive`).

    Attributes:
        members: the members read, in order, with the SHA-256 of every file.
        problems: why the read stopped early (a corrupt frame, a truncated tar), if it did.
        uncompressed_bytes: tar bytes read.
        compressed_bytes: archive bytes read.
        archive_sha256: SHA-256 of the archive bytes.
    """

    members: tuple[Member, ...]
    problems: tuple[Problem, ...]
    uncompressed_bytes: int
    compressed_bytes: int
    archive_sha256: str


def scan_archive(path: str | os.PathLike[str]) -> ArchiveScan:
    """Decompress an archive file as a stream and walk its tar with :mod:`tarfile` ``r|``,
    hashing every file (zstd frame checksums are checked as frames end).

    Never raises for a bad archive: a corrupt byte shows as a problem naming the member being
    read when decompression failed.

    Raises:
        BackupError: the archive cannot be opened at all.
    """
    p = Path(path)
    problems: list[Problem] = []
    found: list[Member] = []
    current: str | None = None
    try:
        raw = open(p, "rb")
    except OSError as exc:
        raise BackupError(f"cannot open backup archive {p}: {exc}") from None
    with raw:
        hashed = _HashingReader(raw)
        dctx = zstandard.ZstdDecompressor()
        reader = dctx.stream_reader(hashed, read_size=_READ, read_across_frames=True, closefd=False)
        counted = _CountingReader(reader)
        try:
            # bufsize: stream mode reads 10 KiB records by default, half the speed of 1 MiB reads
            with tarfile.open(fileobj=counted, mode="r|", bufsize=_READ, encoding=ENCODING, errors=ERRORS) as tf:
                for ti in tf:
                    current = ti.name
                    sha = None
                    if ti.isreg():
                        h = hashlib.sha256()
                        fh = tf.extractfile(ti)
                        while chunk := fh.read(_READ):  # type: ignore[union-attr]
                            h.update(chunk)
                        sha = h.hexdigest()
                    kind = member_type(ti.type)
                    found.append(Member(
                        name=ti.name.rstrip("/") if ti.isdir() else ti.name, type=kind,
                        size=ti.size if kind == "file" else 0, mode=ti.mode & 0o7777, mtime=int(ti.mtime),
                        sha256=sha, linkname=(ti.linkname or None) if kind in ("symlink", "hardlink") else None))
                    current = None
            # tarfile stops at the end marker; the frame's checksum comes after the padding
            while counted.read(_READ):
                pass
        except zstandard.ZstdError as exc:
            problems.append(Problem(current, "corrupt",
                                    f"archive corrupt near compressed byte {hashed.n}"
                                    + (" while reading this file" if current else "") + f": {exc}"))
        except (tarfile.TarError, EOFError) as exc:
            kind = "truncated" if "unexpected end" in str(exc) or isinstance(exc, EOFError) else "corrupt"
            problems.append(Problem(current, kind, f"tar stream unreadable near byte {counted.n}"
                                    + (" while reading this file" if current else "") + f": {exc}"))
        while chunk := hashed.read(_READ):  # whatever the decompressor did not need still counts
            pass
    return ArchiveScan(tuple(found), tuple(problems), counted.n, hashed.n, hashed.sha.hexdigest())


def verify_backup(path: str | os.PathLike[str], manifest: Manifest,
                  node_listing: Mapping[str, ListingEntry] | None = None, *, check_mtime: bool = True) -> VerifyReport:
    """Check an archive file against its manifest and, optionally, against the node.

    Reads it with :func:`scan_archive` and compares member names, types, sizes, modes, link
    targets and SHA-256 with the manifest, then the archive's size and SHA-256.
    With ``node_listing`` (:func:`~.manifest.parse_listing` of a listing taken while the node
    is still stopped), the member list is also compared with what is on the node.

    Args:
        path: the ``.tar.zst`` on the controller.
        manifest: what it should hold.
        node_listing: the node's metadata dir as listed now, or ``None``.
        check_mtime: with ``node_listing``, also require equal file mtimes (a file written
            after the backup makes the backup stale).

    Returns:
        A :class:`VerifyReport`; a corrupt byte shows as a problem naming the member being
        read when decompression failed, or the file whose hash differs, or the archive
        itself (its frame) when no file is affected. It never raises for a bad archive.

    Raises:
        BackupError: the archive cannot be opened at all.
    """
    t0 = time.monotonic()
    scan = scan_archive(path)
    problems = list(scan.problems)
    found = scan.members
    named = {q.path for q in problems if q.path}
    if problems:
        # after a read error the member list is incomplete: only report differences in what was read
        read = {m.name for m in found}
        expected = [m for m in manifest.members if m.name in read]
    else:
        expected = list(manifest.members)
    problems += [q for q in compare_members(expected, found) if q.path not in named]
    sha = scan.archive_sha256
    if not problems:
        if scan.uncompressed_bytes != manifest.uncompressed_bytes:
            problems.append(Problem(None, "archive", f"tar stream is {scan.uncompressed_bytes} bytes, the manifest "
                                                     f"says {manifest.uncompressed_bytes}"))
        if scan.compressed_bytes != manifest.compressed_bytes:
            problems.append(Problem(None, "archive", f"archive is {scan.compressed_bytes} bytes, the manifest says "
                                                     f"{manifest.compressed_bytes}"))
        if sha != manifest.archive_sha256:
            problems.append(Problem(None, "archive", f"archive sha256 {sha} differs from the manifest's "
                                                     f"{manifest.archive_sha256}; every file inside matches, so "
                                                     f"the zstd frame itself (headers or checksum) changed"))
    if node_listing is not None:
        problems += compare_listing(manifest.members, node_listing, check_mtime=check_mtime)
    return VerifyReport(archive=str(Path(path)), problems=tuple(problems), members=len(found),
                        files=sum(1 for m in found if m.type == "file"), uncompressed_bytes=scan.uncompressed_bytes,
                        compressed_bytes=scan.compressed_bytes, archive_sha256=sha, seconds=time.monotonic() - t0)
