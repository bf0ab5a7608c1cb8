"""A push parser for tar streams: member list, sizes and SHA-256 as the bytes pass.

The remote ``tar`` writes to an SSH channel whose chunks arrive through a callback, so the
stdlib's pull-based :mod:`tarfile` cannot sit in that path without a thread and a pipe.
:class:`TarStreamReader` takes chunks of any size, keeps at most one 512-byte header (or one
bounded GNU long-name / pax record) in memory, and hashes file contents in place.

It reads what GNU tar writes by default (``gnu`` format: ``L``/``K`` long names) and the
``ustar``/``pax`` formats (``x``/``g`` records for long paths and sizes). GNU sparse members
(``tar -S``) are refused: a plain ``tar -cf`` never writes them. Headers are decoded with
:meth:`tarfile.TarInfo.frombuf`, so names and checksums follow the stdlib exactly and
:func:`garage_migrate.backup.verify.verify_backup` (which walks archives with :mod:`tarfile`)
sees the same names.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from typing import Literal

__all__ = ["BLOCK", "Member", "MemberType", "TarStreamError", "TarStreamReader", "member_type"]

BLOCK = tarfile.BLOCKSIZE
ENCODING = "utf-8"
ERRORS = "surrogateescape"
#: Largest GNU long-name or pax record accepted: real ones are a few hundred bytes.
MAX_META_RECORD = 1 << 20

MemberType = Literal["file", "dir", "symlink", "hardlink", "other"]

_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_META = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
         tarfile.SOLARIS_XHDTYPE)
_NUL_BLOCK = bytes(BLOCK)


class TarStreamError(ValueError):
    """The stream is not a complete, well-formed tar archive.

    Attributes:
        member: the member being read when it went wrong, if any (a truncated stream names the
            file it stopped in).
        offset: byte offset in the uncompressed stream.
    """

    def __init__(self, message: str, *, member: str | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.member = member
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Member:
    """One archive member as the manifest records it.

    Attributes:
        name: path inside the archive (``meta/db/conf``); directories without a trailing ``/``.
        type: ``file``, ``dir``, ``symlink``, ``hardlink`` or ``other`` (devices, fifos).
        size: content bytes (0 for anything but a regular file).
        mode: permission bits (``0o600``).
        mtime: modification time, whole seconds.
        sha256: hex digest of the content, for regular files only.
        linkname: target of a symlink or hard link.
    """

    name: str
    type: MemberType
    size: int
    mode: int
    mtime: int
    sha256: str | None = None
    linkname: str | None = None


def member_type(tartype: bytes) -> MemberType:
    """The manifest's type word for a tar type flag."""
    if tartype in _REGULAR:
        return "file"
    if tartype == tarfile.DIRTYPE:
        return "dir"
    if tartype == tarfile.SYMTYPE:
        return "symlink"
    if tartype == tarfile.LNKTYPE:
        return "hardlink"
    return "other"


def _parse_pax(data: bytes, offset: int) -> dict[str, str]:
    # records are "<len> <key>=<value>\n" where <len> counts the whole record
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break  # NUL padding after the last record
        sp = data.find(b" ", pos)
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise TarStreamError("malformed pax header record", offset=offset) from None
        if sp < 0 or length <= 0 or pos + length > len(data):
            raise TarStreamError("malformed pax header record", offset=offset)
        record = data[sp + 1: pos + length]
        if not record.endswith(b"\n") or b"=" not in record:
            raise TarStreamError("malformed pax header record", offset=offset)
        key, value = record[:-1].split(b"=", 1)
        out[key.decode(ENCODING, ERRORS)] = value.decode(ENCODING, ERRORS)
        pos += length
    return out


def _cstring(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode(ENCODING, ERRORS)


class TarStreamReader:
    """Push parser: call :meth:`feed` with each chunk, then :meth:`finish`.

    Attributes:
        members: the members seen so far, in archive order.
        total: bytes fed so far (the uncompressed stream size).
    """

    def __init__(self) -> None:
        self.members: list[Member] = []
        self.total = 0
        self._state = "header"  # header | data | meta | pad | end
        self._buf = bytearray()
        self._remaining = 0  # data or meta bytes left in the current entry
        self._pad = 0
        self._hash: hashlib._Hash | None = None
        self._pending: tarfile.TarInfo | None = None  # the member whose data is being read
        self._meta_info: tarfile.TarInfo | None = None  # the L/K/x/g entry being read
        self._longname: str | None = None
        self._longlink: str | None = None
        self._pax: dict[str, str] = {}
        self._gpax: dict[str, str] = {}
        self._entry_offset = 0
        self._finished = False

    @property
    def current(self) -> str | None:
        """The member whose data is being read right now, if any."""
        return self._pending.name if self._pending is not None and self._state in ("data", "pad") else None

    @property
    def ended(self) -> bool:
        """Whether the end-of-archive marker has been seen."""
        return self._state == "end"

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Consume the next chunk of the stream.

        Raises:
            TarStreamError: a corrupt header, an unsupported member, or bytes after the end.
        """
        mv = memoryview(data).cast("B")
        n = len(mv)
        pos = 0
        while pos < n:
            state = self._state
            if state == "data":
                take = min(self._remaining, n - pos)
                self._hash.update(mv[pos: pos + take])  # type: ignore[union-attr]
                self._remaining -= take
                pos += take
                if self._remaining == 0:
                    self._close_member()
            elif state == "header":
                take = min(BLOCK - len(self._buf), n - pos)
                self._buf += mv[pos: pos + take]
                pos += take
                if len(self._buf) == BLOCK:
                    block = bytes(self._buf)
                    self._buf.clear()
                    self._header(block, self.total + pos - BLOCK)
            elif state == "pad":
                take = min(self._pad, n - pos)
                self._pad -= take
                pos += take
                if self._pad == 0:
                    self._pending = None
                    self._state = "header"
            elif state == "meta":
                take = min(self._remaining, n - pos)
                self._buf += mv[pos: pos + take]
                self._remaining -= take
                pos += take
                if self._remaining == 0:
                    self._meta_done()
            else:  # end: GNU tar pads the archive to its record size with zeros
                rest = mv[pos:]
                if any(rest):
                    raise TarStreamError("data after the end-of-archive marker", offset=self.total + pos)
                pos = n
        self.total += n

    def finish(self) -> list[Member]:
        """Check the stream ended cleanly and return the members.

        Raises:
            TarStreamError: the stream stopped inside a member or before the end marker
                (a truncated transfer); the error names the member when there is one.
        """
        if self._state == "end":
            self._finished = True
            return self.members
        if self._state in ("data", "pad") and self._pending is not None:
            name = self._pending.name
            where = f"{self._remaining} of its bytes missing" if self._state == "data" else "in its padding"
            raise TarStreamError(f"stream truncated inside {name!r} ({where})", member=name, offset=self.total)
        if self._state == "meta":
            raise TarStreamError("stream truncated inside a long-name or pax header", offset=self.total)
        raise TarStreamError(f"stream truncated: no end-of-archive marker after {self.total} bytes"
                             + (f" (last member {self.members[-1].name!r})" if self.members else ""),
                             member=self.members[-1].name if self.members else None, offset=self.total)

    # ------------------------------------------------------------------ internals
    def _header(self, block: bytes, offset: int) -> None:
        if block == _NUL_BLOCK:
            # tarfile also ends at the first zero block; GNU tar writes two and pads with zeros
            self._state = "end"
            return
        try:
            info = tarfile.TarInfo.frombuf(block, ENCODING, ERRORS)
        except tarfile.HeaderError as exc:
            raise TarStreamError(f"corrupt tar header at byte {offset}: {exc}", offset=offset) from None
        self._entry_offset = offset
        if info.type in _META:
            if info.size > MAX_META_RECORD:
                raise TarStreamError(f"{info.size}-byte extended header at byte {offset} is not credible",
                                     offset=offset)
            self._meta_info = info
            self._remaining = info.size
            self._pad = -info.size % BLOCK
            self._state = "meta" if info.size else "header"
            if not info.size:
                self._meta_done()
            return
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise TarStreamError(f"GNU sparse member {info.name!r} is not supported", member=info.name, offset=offset)
        pax = {**self._gpax, **self._pax}
        if self._longname is not None:
            info.name = self._longname
        elif "path" in pax:
            info.name = pax["path"]
        if self._longlink is not None:
            info.linkname = self._longlink
        elif "linkpath" in pax:
            info.linkname = pax["linkpath"]
        try:
            if "size" in pax:
                info.size = int(pax["size"])
            if "mtime" in pax:
                info.mtime = float(pax["mtime"])
        except ValueError:
            raise TarStreamError(f"malformed pax size or mtime for {info.name!r}", member=info.name,
                                 offset=offset) from None
        self._longname = self._longlink = None
        self._pax = {}
        if info.type == tarfile.DIRTYPE:
            info.name = info.name.rstrip("/")
        has_data = info.type in _REGULAR or info.type not in tarfile.SUPPORTED_TYPES
        size = info.size if has_data else 0
        self._pending = info
        self._hash = hashlib.sha256() if info.type in _REGULAR else _Discard()
        self._remaining = size
        self._pad = -size % BLOCK
        if size:
            self._state = "data"
        else:
            self._close_member()

    def _meta_done(self) -> None:
        info = self._meta_info
        assert info is not None
        data = bytes(self._buf)
        self._buf.clear()
        if info.type == tarfile.GNUTYPE_LONGNAME:
            self._longname = _cstring(data)
        elif info.type == tarfile.GNUTYPE_LONGLINK:
            self._longlink = _cstring(data)
        elif info.type == tarfile.XGLTYPE:
            self._gpax.update(_parse_pax(data, self._entry_offset))
        else:
            self._pax.update(_parse_pax(data, self._entry_offset))
        self._meta_info = None
        self._state = "pad" if self._pad else "header"

    def _close_member(self) -> None:
        info = self._pending
        assert info is not None
        kind = member_type(info.type)
        self.members.append(Member(
            name=info.name, type=kind, size=info.size if kind == "file" else 0, mode=info.mode & 0o7777,
            mtime=int(info.mtime), sha256=self._hash.hexdigest() if kind == "file" else None,  # type: ignore[union-attr]
            linkname=(info.linkname or None) if kind in ("symlink", "hardlink") else None))
        self._hash = None
        if self._pad:
            # keep _pending while skipping the padding: a stream cut here names this member
            self._state = "pad"
        else:
            self._pending = None
            self._state = "header"


class _Discard:
    """Stands in for a hash when a member's data is not hashed (unknown member types)."""

    def update(self, _data) -> None:
        pass

    def hexdigest(self) -> str:
        return ""
