"""The byte pipelines a backup stream goes through on the controller, as plain sync objects.

- :class:`ArchiveWriter`: tar bytes in -> per-file SHA-256 (:class:`TarStreamReader`) and
  zstd compression (``threads=-1``, checksum on) -> a file, hashing the compressed bytes on the
  way out. Used for the streamed backup.
- :class:`ArchiveChecker`: ``.tar.zst`` bytes in -> archive SHA-256 and size, zstd
  decompression (frame checksums checked) -> :class:`TarStreamReader`. Used to check an
  archive streamed back from a node (on-node mode).

Both take chunks of any size and hold at most a few zstd jobs and one chunk in memory, so
memory is bounded whatever the metadata size. Neither does I/O other than writing to the file
object it was given.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO

import zstandard

from .tarstream import Member, TarStreamError, TarStreamReader

__all__ = ["ArchiveChecker", "ArchiveWriter", "StreamStats"]

#: Output granularity of the (de)compressors: bounds what one write hands over.
_WRITE_SIZE = 1 << 20


class StreamStats:
    """Sizes and hashes of a finished pipeline.

    Attributes:
        members: the tar members, with per-file SHA-256.
        uncompressed_bytes: tar stream bytes.
        compressed_bytes: archive bytes.
        archive_sha256: SHA-256 of the archive bytes.
    """

    __slots__ = ("members", "uncompressed_bytes", "compressed_bytes", "archive_sha256")

    def __init__(self, members: list[Member], uncompressed: int, compressed: int, sha256: str) -> None:
        self.members = members
        self.uncompressed_bytes = uncompressed
        self.compressed_bytes = compressed
        self.archive_sha256 = sha256


class _HashingWriter:
    """Counts and hashes what the compressor writes, then passes it to the file."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.n = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.n += len(data)
        self.fh.write(data)
        return len(data)

    def flush(self) -> None:
        self.fh.flush()


class ArchiveWriter:
    """Compress a tar stream into ``fh`` while recording its members and hashes.

    Args:
        fh: a binary file opened for writing; not closed here.
        level: zstd level.
        threads: zstd worker threads (``-1``: one per core).
        job_size: bytes per worker job (``0``: zstd's default); smaller jobs hold less memory.
    """

    def __init__(self, fh: BinaryIO, *, level: int = 3, threads: int = -1, job_size: int = 0) -> None:
        self.reader = TarStreamReader()
        self._out = _HashingWriter(fh)
        params = zstandard.ZstdCompressionParameters.from_level(level, threads=threads, job_size=job_size,
                                                                 write_checksum=True)
        cctx = zstandard.ZstdCompressor(compression_params=params)
        self._zw = cctx.stream_writer(self._out, closefd=False, write_size=_WRITE_SIZE)
        self._done = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Hash and compress the next chunk of tar bytes.

        Raises:
            TarStreamError: the tar stream is malformed.
            OSError: writing the file failed (a full disk).
        """
        self.reader.feed(data)
        self._zw.write(data)

    def close(self) -> StreamStats:
        """End the zstd frame and check the tar stream was complete.

        Raises:
            TarStreamError: the stream was truncated (names the member it stopped in).
        """
        if not self._done:
            self._done = True
            self._zw.flush(zstandard.FLUSH_FRAME)
            self._zw.close()
        members = self.reader.finish()
        return StreamStats(members, self.reader.total, self._out.n, self._out.sha.hexdigest())


class _ReaderSink:
    def __init__(self, reader: TarStreamReader) -> None:
        self.reader = reader

    def write(self, data) -> int:
        self.reader.feed(data)
        return len(data)


class ArchiveChecker:
    """Check ``.tar.zst`` bytes as they arrive: archive hash, frame checksums, tar members."""

    def __init__(self) -> None:
        self.reader = TarStreamReader()
        self._sha = hashlib.sha256()
        self._n = 0
        dctx = zstandard.ZstdDecompressor()
        self._zw = dctx.stream_writer(_ReaderSink(self.reader), write_size=_WRITE_SIZE, closefd=False)

    @property
    def compressed_bytes(self) -> int:
        """Archive bytes consumed so far."""
        return self._n

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Consume the next chunk of the archive.

        Raises:
            zstandard.ZstdError: corrupt compressed data or a frame checksum mismatch.
            TarStreamError: the decompressed tar is malformed.
        """
        self._sha.update(data)
        self._n += len(data)
        self._zw.write(data)

    def close(self) -> StreamStats:
        """Check the archive ended cleanly.

        A stream cut at a zstd frame boundary can still hold a complete tar; callers also
        compare :attr:`StreamStats.archive_sha256` with a hash taken where the file lives.

        Raises:
            TarStreamError: the tar inside was truncated.
        """
        self._zw.flush()
        members = self.reader.finish()
        return StreamStats(members, self.reader.total, self._n, self._sha.hexdigest())


def describe_stream_error(exc: BaseException, reader: TarStreamReader) -> tuple[str | None, str]:
    """``(member, message)`` for an error raised while a pipeline was fed."""
    if isinstance(exc, TarStreamError):
        return exc.member or reader.current, str(exc)
    return reader.current, f"{type(exc).__name__}: {exc}"
