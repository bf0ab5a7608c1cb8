"""Builders of the backup and restore commands (tar, zstd, listings and digests)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import CommandRefused
from .core import DEFAULT_TIMEOUT, RemoteCommand, _abs, _cmd, _observing, _split


# ---------------------------------------------------------------------------- backups


@_observing
def tar_stream(path: str, *, timeout: float, sudo: bool = False) -> RemoteCommand:
    """``tar -C <parent> -cf - <name>``: the tree at ``path`` as an uncompressed tar on stdout.

    Args:
        path: the directory to archive (the metadata dir), absolute.
        timeout: required: proportional to the metadata size.
        sudo: read as root.
    """
    parent, name = _split(path)
    return _cmd(("tar", "-C", parent, "-cf", "-", name), timeout=timeout, sudo=sudo)


@_observing
def tar_zstd_stream(path: str, *, level: int, timeout: float, sudo: bool = False) -> RemoteCommand:
    """``tar -C <parent> --use-compress-program='zstd -T0 -<level>' -cf - <name>``: the tree at
    ``path`` compressed on the node, as ``tar -cf - <name> | zstd -T0 -<level>`` would, on stdout.

    tar runs the compressor itself (no shell, no pipe to quote), so the node-side ``timeout``
    signals both: they share its process group. Needs ``zstd`` on the node (the guide's tool).

    Args:
        path: the directory to archive (the metadata dir), absolute.
        level: zstd level, 1..19.
        timeout: required: proportional to the metadata size.
        sudo: read as root.

    Raises:
        CommandRefused: a level outside 1..19.
    """
    if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= 19:
        raise CommandRefused(f"zstd level {level!r} is not in 1..19")
    parent, name = _split(path)
    return _cmd(("tar", "-C", parent, f"--use-compress-program=zstd -T0 -{level}", "-cf", "-", name),
                timeout=timeout, sudo=sudo)


@_observing
def zstd_version(*, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``zstd --version``: whether the node has the zstd CLI (exit 127 when it has none)."""
    return _cmd(("zstd", "--version"), timeout=timeout)


def tar_archive(path: str, archive: str, *, timeout: float, sudo: bool = False) -> RemoteCommand:
    """``tar -acf <archive> -C <parent> <name>``: the guide's on-node backup (ref 6).

    ``-a`` picks the compressor from the suffix (``.tar.zst`` needs ``zstd`` on the node).

    Args:
        path: the directory to archive, absolute.
        archive: the archive to write, absolute.
        timeout: required: proportional to the metadata size.
        sudo: run as root.
    """
    parent, name = _split(path)
    return _cmd(("tar", "-acf", _abs(archive, "archive"), "-C", parent, name), timeout=timeout, sudo=sudo)


@_observing
def zstd_test(archive: str, *, sudo: bool = False, timeout: float = 600.0) -> RemoteCommand:
    """``zstd -tq <archive>``: check a ``.zst`` archive's frames and checksums."""
    return _cmd(("zstd", "-tq", _abs(archive, "archive")), timeout=timeout, sudo=sudo)


# --- backup/restore builders ---
# Added for garage_migrate.backup (issue 5); only executables already on the allow-list.

_DIR_NAME_RE = re.compile(r"[A-Za-z0-9._+-]+")


@_observing
def list_tree(path: str, *, sudo: bool = False, timeout: float = 120.0) -> RemoteCommand:
    """``find <dir> -printf '%y %s %T@ %P\\0'``: every entry of a tree, the dir itself first.

    One NUL-terminated record per entry: type letter, size, mtime (seconds with fraction) and
    the path relative to ``path`` (empty for ``path`` itself). NUL because a file name may
    hold a newline.
    """
    return _cmd(("find", _abs(path), "-printf", "%y %s %T@ %P\\0"), timeout=timeout, sudo=sudo)


@_observing
def sha256sum_files(paths: Iterable[str], *, sudo: bool = False, timeout: float = 600.0) -> RemoteCommand:
    """``sha256sum <path>...``: one ``<hex>  <path>`` line per file (coreutils escapes a name
    holding a newline or backslash and starts its line with ``\\``).

    Raises:
        CommandRefused: no path, or one that is not absolute.
    """
    ps = tuple(_abs(p) for p in paths)
    if not ps:
        raise CommandRefused("sha256sum_files needs at least one path")
    return _cmd(("sha256sum", *ps), timeout=timeout, sudo=sudo)


def mkdir_private(path: str, *, sudo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``mkdir -p -m 0700 <path>``: the leaf is created owner-only (backups hold S3 secrets).

    An existing leaf keeps its mode: check it with :func:`stat`.
    """
    return _cmd(("mkdir", "-p", "-m", "0700", _abs(path)), timeout=timeout, sudo=sudo)


def tar_extract_as(archive: str, parent: str, member_root: str, new_root: str, *, timeout: float,
                   sudo: bool = False) -> RemoteCommand:
    """Extract the tree ``member_root`` of a ``.tar.zst`` into ``<parent>/<new_root>``.

    ``tar --zstd -x -p -k -f <archive> -C <parent> --transform=s|^<root>\\(/\\|$\\)|<new>\\1|S <root>``:
    only members under ``member_root`` are extracted, renamed on the fly (symlink targets are
    left alone, hard-link targets follow), permissions kept, and ``-k`` refuses to overwrite
    anything, so the live metadata dir next to it can never be touched. GNU tar and ``zstd``
    are needed on the node.

    Args:
        archive: the ``.tar.zst`` on the node, absolute.
        parent: where ``new_root`` is created, absolute.
        member_root: the archive's top directory (the metadata dir's name when archived).
        new_root: the name to give it under ``parent``.
        timeout: required: proportional to the metadata size.
        sudo: run as root (restores owners too).

    Raises:
        CommandRefused: a root name outside ``[A-Za-z0-9._+-]`` (it goes into a regex), or a
            relative path.
    """
    for what, name in (("member_root", member_root), ("new_root", new_root)):
        if not _DIR_NAME_RE.fullmatch(name) or name in (".", ".."):
            raise CommandRefused(f"{what} {name!r} must be a plain directory name of [A-Za-z0-9._+-]")
    expr = "s|^" + member_root.replace(".", "\\.") + "\\(/\\|$\\)|" + new_root + "\\1|S"
    return _cmd(("tar", "--zstd", "-x", "-p", "-k", "-f", _abs(archive, "archive"), "-C", _abs(parent, "parent"),
                 f"--transform={expr}", member_root), timeout=timeout, sudo=sudo)


