"""What a backup is: where it lives, its manifest, and how its contents are compared.

Everything here is pure (no network); file I/O is limited to reading and atomically writing
manifests. A backup of one node for one migration lives at::

    <backup_root>/<cluster>/<migration id>/<node>/meta-<version>.tar.zst
    <backup_root>/<cluster>/<migration id>/<node>/manifest.json

directories 0700, files 0600: the metadata holds every S3 secret key. The manifest is written
last, so an archive without one is never taken for a backup.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import BackupError
from .tarstream import Member, MemberType

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "BackupPaths",
    "ListingEntry",
    "Manifest",
    "Problem",
    "archive_name",
    "backup_paths",
    "check_name",
    "compare_hashes",
    "compare_listing",
    "compare_members",
    "load_manifest",
    "parse_listing",
    "parse_sha256sum",
    "remote_backup_paths",
    "write_private_file",
]

FORMAT = "garage-migrate/metadata-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DIR_MODE = 0o700
FILE_MODE = 0o600

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION_RE = re.compile(r"v?\d+\.\d+\.\d+[0-9A-Za-z.+-]*")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is safe as one path component, else raise.

    Raises:
        BackupError: ``value`` is empty, ``.``/``..``, or holds a character outside
            ``[A-Za-z0-9._-]`` (it becomes a directory on the controller).
    """
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or value in (".", ".."):
        raise BackupError(f"{what} {value!r} cannot be used in a backup path: use letters, digits, '.', '_' or '-'")
    return value


def archive_name(version: str) -> str:
    """``meta-<version>.tar.zst`` (``v`` prefix dropped).

    Raises:
        BackupError: not a version string.
    """
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise BackupError(f"source version {version!r} is not a Garage version such as 0.7.3")
    return f"meta-{version.removeprefix('v')}.tar.zst"


@dataclass(frozen=True)
class BackupPaths:
    """Where one node's backup for one migration lives on the controller.

    Attributes:
        dir: ``<root>/<cluster>/<migration>/<node>``.
        archive: ``<dir>/meta-<version>.tar.zst``.
        manifest: ``<dir>/manifest.json``.
        lock: ``<dir>/.lock``: held while a backup or a check of this node runs.
    """

    dir: Path
    archive: Path
    manifest: Path
    lock: Path

    def temp_prefix(self) -> str:
        """Prefix of temp files in :attr:`dir` (left over only by a crashed run)."""
        return f".{self.archive.name}.tmp-"


def backup_paths(root: str | os.PathLike[str], cluster: str, migration_id: str, node: str,
                 version: str) -> BackupPaths:
    """The controller paths of a backup (nothing is created).

    Raises:
        BackupError: a name unfit for a path.
    """
    d = Path(root) / check_name(cluster, "cluster") / check_name(migration_id, "migration id") / check_name(node, "node")
    return BackupPaths(dir=d, archive=d / archive_name(version), manifest=d / MANIFEST_NAME, lock=d / ".lock")


def remote_backup_paths(root: str, cluster: str, migration_id: str, node: str, version: str) -> tuple[str, str, str]:
    """``(dir, archive, manifest)`` on the node for the on-node mode, same layout as the controller.

    Raises:
        BackupError: a relative ``root`` or a name unfit for a path.
    """
    if not root.startswith("/"):
        raise BackupError(f"the on-node backup root must be absolute, got {root!r}")
    d = posixpath.join(root, check_name(cluster, "cluster"), check_name(migration_id, "migration id"),
                       check_name(node, "node"))
    return d, posixpath.join(d, archive_name(version)), posixpath.join(d, MANIFEST_NAME)


# ---------------------------------------------------------------------------- the manifest


class Manifest(BaseModel):
    """Everything needed to check a backup and to restore it.

    Attributes:
        format: always :data:`FORMAT`.
        format_version: bumped on incompatible changes; readers refuse unknown versions.
        cluster: the inventory's cluster name.
        migration_id: the migration this backup belongs to.
        node: node name.
        node_id: the node's 64-hex public key (``garage node id``).
        source_version: the Garage version whose metadata this is.
        metadata_dir: the archived directory on the node.
        mode: ``controller`` (streamed here) or ``on-node`` (``tar -acf`` on the node).
        archive: the archive's file name beside the manifest (``controller``) or its absolute
            path on the node (``on-node``).
        created_at: when the archive was completed (UTC).
        zstd_level: the compression level (``None``: the node's ``zstd`` default).
        du_bytes: ``du -sb`` of the metadata dir before the backup.
        uncompressed_bytes: size of the tar stream.
        compressed_bytes: size of the archive.
        archive_sha256: SHA-256 of the archive file.
        members: every archive member in order, with per-file SHA-256.
        compressed_on: where a ``controller`` archive was compressed: ``controller`` (the
            manifest computed from the tar stream as it passed) or ``node`` (its ``zstd``; the
            file hashes taken on the node by ``sha256sum`` and found again in the archive).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["garage-migrate/metadata-backup"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION
    cluster: str
    migration_id: str
    node: str
    node_id: str
    source_version: str
    metadata_dir: str
    mode: Literal["controller", "on-node"]
    archive: str
    created_at: datetime
    zstd_level: int | None
    du_bytes: int = Field(ge=0)
    uncompressed_bytes: int = Field(ge=0)
    compressed_bytes: int = Field(ge=0)
    archive_sha256: str
    members: tuple[Member, ...]
    compressed_on: Literal["controller", "node"] = "controller"

    @field_validator("archive_sha256", "node_id")
    @classmethod
    def _hex64(cls, v: str) -> str:
        v = v.lower()
        if not _HEX64_RE.fullmatch(v):
            raise ValueError("must be 64 hexadecimal digits")
        return v

    @property
    def root(self) -> str:
        """The archive's top directory: the metadata dir's name."""
        return posixpath.basename(self.metadata_dir.rstrip("/"))

    def files(self) -> tuple[Member, ...]:
        """The regular-file members."""
        return tuple(m for m in self.members if m.type == "file")

    def identity(self) -> tuple[str, ...]:
        """What must match for a backup to be reused: cluster, migration, node, ID, version,
        metadata dir and mode."""
        return (self.cluster, self.migration_id, self.node, self.node_id, self.source_version.removeprefix("v"),
                self.metadata_dir, self.mode)

    def to_json(self) -> str:
        """The manifest as written to disk."""
        return json.dumps(self.model_dump(mode="json"), indent=1) + "\n"


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a manifest.

    Raises:
        BackupError: unreadable, not JSON, or not a manifest of a format this version reads.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8", errors="surrogateescape"))
    except (OSError, ValueError) as exc:
        raise BackupError(f"cannot read backup manifest {p}: {exc}") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(x) for x in first["loc"])
        raise BackupError(f"{p} is not a valid backup manifest ({len(exc.errors())} problem(s); "
                          f"{where}: {first['msg']})") from None


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600: temp file, fsync, rename, fsync dir."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """fsync a directory, so a rename in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One difference found by a check.

    Attributes:
        path: the archive member concerned (``meta/db/conf``), or ``None`` for the archive
            as a whole (its frame, size or checksum).
        kind: ``missing`` (expected, not found), ``unexpected`` (found, not expected),
            ``type``, ``size``, ``sha256``, ``mtime``, ``mode``, ``link``, ``corrupt``,
            ``truncated`` or ``archive``.
        detail: a sentence for the operator.
    """

    path: str | None
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}" if self.path else self.detail


def compare_members(expected: Sequence[Member], found: Sequence[Member], *, what: str = "archive") -> list[Problem]:
    """Compare two member lists (manifest vs what an archive holds).

    Returns:
        One :class:`Problem` per difference, files named; empty when identical.
    """
    out: list[Problem] = []
    exp = {m.name: m for m in expected}
    got = {m.name: m for m in found}
    for name, e in exp.items():
        g = got.get(name)
        if g is None:
            out.append(Problem(name, "missing", f"in the manifest but not in the {what}"))
            continue
        if g.type != e.type:
            out.append(Problem(name, "type", f"is a {g.type} in the {what}, the manifest says {e.type}"))
            continue
        if g.size != e.size:
            out.append(Problem(name, "size", f"{g.size} bytes in the {what}, the manifest says {e.size}"))
        if e.sha256 and g.sha256 != e.sha256:
            out.append(Problem(name, "sha256", f"content differs: sha256 {g.sha256} in the {what}, "
                                               f"the manifest says {e.sha256}"))
        if g.mode != e.mode:
            out.append(Problem(name, "mode", f"mode {g.mode:o} in the {what}, the manifest says {e.mode:o}"))
        if g.linkname != e.linkname:
            out.append(Problem(name, "link", f"points to {g.linkname!r} in the {what}, the manifest says {e.linkname!r}"))
    for name in got.keys() - exp.keys():
        out.append(Problem(name, "unexpected", f"in the {what} but not in the manifest"))
    return out


# ---------------------------------------------------------------------------- node listings

_FIND_TYPES: dict[str, MemberType] = {"f": "file", "d": "dir", "l": "symlink"}


@dataclass(frozen=True)
class ListingEntry:
    """One entry of ``find -printf '%y %s %T@ %P\\0'`` (see :func:`garage_migrate.commands.list_tree`).

    Attributes:
        name: path as an archive member of the same tree (``meta/db/conf``).
        type: ``file``, ``dir``, ``symlink`` or ``other``.
        size: bytes (meaningful for files).
        mtime: whole seconds.
    """

    name: str
    type: MemberType
    size: int
    mtime: int


def parse_listing(stdout: str, root: str) -> dict[str, ListingEntry]:
    """Parse a :func:`~garage_migrate.commands.list_tree` output of a dir archived as ``root``.

    Raises:
        BackupError: a record that does not parse.
    """
    out: dict[str, ListingEntry] = {}
    for rec in stdout.split("\0"):
        if not rec:
            continue
        parts = rec.split(" ", 3)
        if len(parts) != 4:
            raise BackupError(f"unexpected find output record {rec[:120]!r}")
        kind, size, mtime, rel = parts
        try:
            entry = ListingEntry(name=f"{root}/{rel}" if rel else root, type=_FIND_TYPES.get(kind, "other"),
                                 size=int(size), mtime=int(mtime.split(".", 1)[0]))
        except ValueError:
            raise BackupError(f"unexpected find output record {rec[:120]!r}") from None
        out[entry.name] = entry
    return out


def compare_listing(members: Sequence[Member], listing: Mapping[str, ListingEntry], *,
                    check_mtime: bool = True, where: str = "on the node") -> list[Problem]:
    """Compare an archive's members with a listing of the tree it should equal.

    Hard links count as the files they are on disk. ``mtime`` is compared for files only
    (a directory's changes whenever an entry is added).

    Returns:
        One :class:`Problem` per difference; empty when the tree matches.
    """
    out: list[Problem] = []
    by_name = {m.name: m for m in members}
    for m in members:
        e = listing.get(m.name)
        if e is None:
            out.append(Problem(m.name, "missing", f"in the backup but not {where}"))
            continue
        mtype, msize, mtime = m.type, m.size, m.mtime
        if m.type == "hardlink":
            target = by_name.get(m.linkname or "")
            mtype, msize, mtime = "file", target.size if target else -1, target.mtime if target else -1
        if mtype != e.type:
            out.append(Problem(m.name, "type", f"is a {e.type} {where}, a {mtype} in the backup"))
        elif mtype == "file":
            if e.size != msize:
                out.append(Problem(m.name, "size", f"{e.size} bytes {where}, {msize} in the backup"))
            elif check_mtime and e.mtime != mtime:
                out.append(Problem(m.name, "mtime", f"modified {where} after the backup (mtime {e.mtime}, "
                                                    f"backup {mtime})"))
    for name in listing.keys() - by_name.keys():
        out.append(Problem(name, "unexpected", f"{where} but not in the backup"))
    return out


def parse_sha256sum(stdout: str) -> dict[str, str]:
    """``{path: hex}`` from ``sha256sum`` output, undoing its escaping of odd names.

    Raises:
        BackupError: a line that does not parse.
    """
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        if not line:
            continue
        escaped = line.startswith("\\")
        if escaped:
            line = line[1:]
        digest, sep, path = line[:64], line[64:66], line[66:]
        if not _HEX64_RE.fullmatch(digest) or sep not in ("  ", " *"):
            raise BackupError(f"unexpected sha256sum output line {line[:120]!r}")
        if escaped:
            path = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "\\": "\\"}.get(m.group(1), m.group(1)), path)
        out[path] = digest
    return out


def compare_hashes(members: Iterable[Member], hashes: Mapping[str, str], *, where: str = "on the node") -> list[Problem]:
    """Compare file members' SHA-256 with hashes keyed by member name.

    Returns:
        One :class:`Problem` per file whose hash is missing or differs.
    """
    out: list[Problem] = []
    for m in members:
        if m.type != "file":
            continue
        got = hashes.get(m.name)
        if got is None:
            out.append(Problem(m.name, "missing", f"no checksum {where}"))
        elif got != m.sha256:
            out.append(Problem(m.name, "sha256", f"content differs {where}: sha256 {got}, backup {m.sha256}"))
    return out
