"""Builders of the node commands: the Garage CLI, files, processes and the service."""

from __future__ import annotations

import posixpath
import re
import signal as _signal

from ..errors import CommandRefused
from .core import (DEFAULT_TIMEOUT, GARAGE_TIMEOUT, OFFLINE_REPAIR_WHATS, READ_ONLY_GARAGE,
                   REPAIR_WHATS, NodeContext, RemoteCommand, _abs, _cmd, _observing, _split)


# ---------------------------------------------------------------------------- garage


def garage(ctx: NodeContext, *args: str, timeout: float = GARAGE_TIMEOUT) -> RemoteCommand:
    """``<binary_path> -c <config_path> <args...>`` on the node of ``ctx``.

    Top-level options come before the subcommand (Garage rejects ``garage status -c x``), so
    the builder owns ``-c`` and ``args`` must start with the subcommand.

    Raises:
        CommandRefused: no subcommand, a ``-c``/``--config`` in ``args``, or a
            ``repair``/``offline-repair`` flag placed after its WHAT (Garage rejects it).
    """
    if not args or args[0].startswith("-"):
        raise CommandRefused(f"garage needs a subcommand first, got {list(args)!r}")
    if any(a in ("-c", "--config") or a.startswith("--config=") for a in args):
        raise CommandRefused("the config path comes from the inventory: do not pass -c")
    if args[0] in ("repair", "offline-repair"):
        seen_what = False
        for a in args[1:]:
            if not a.startswith("-"):
                seen_what = True
            elif seen_what and not _is_number(a):
                raise CommandRefused(f"flag {a!r} after the WHAT of `garage {args[0]}`: flags go before it")
    cmd = _cmd((ctx.binary_path, "-c", ctx.config_path, *args), timeout=timeout, sudo=ctx.sudo, ctx=ctx)
    read_only = tuple(args[:1]) in READ_ONLY_GARAGE or tuple(args[:2]) in READ_ONLY_GARAGE
    return cmd.replace(kind="observe") if read_only else cmd


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def repair(ctx: NodeContext, what: str, *what_args: str, all_nodes: bool = True, yes: bool = True,
           timeout: float = GARAGE_TIMEOUT) -> RemoteCommand:
    """``garage repair [--all-nodes] [--yes] <what> [args]``: launches a repair and returns.

    Args:
        ctx: the node to send the request from.
        what: one of :data:`REPAIR_WHATS`.
        what_args: e.g. ``start`` for ``scrub`` on 0.8.
        all_nodes: launch on every node of the layout.
        yes: confirm (the daemon refuses without it).
        timeout: for the launch, not for the repair.
    """
    if what not in REPAIR_WHATS:
        raise CommandRefused(f"unknown repair {what!r}; Garage knows {sorted(REPAIR_WHATS)}")
    flags = (["--all-nodes"] if all_nodes else []) + (["--yes"] if yes else [])
    return garage(ctx, "repair", *flags, what, *what_args, timeout=timeout)


def offline_repair(ctx: NodeContext, what: str, *, timeout: float, yes: bool = True) -> RemoteCommand:
    """``garage offline-repair [--yes] <what>`` (0.8.x; the daemon must be stopped).

    Args:
        ctx: the node.
        what: one of :data:`OFFLINE_REPAIR_WHATS`.
        timeout: required: the run is linear in the node's object count.
        yes: confirm (refused without it).
    """
    if what not in OFFLINE_REPAIR_WHATS:
        raise CommandRefused(f"unknown offline repair {what!r}; Garage knows {sorted(OFFLINE_REPAIR_WHATS)}")
    return garage(ctx, "offline-repair", *(["--yes"] if yes else []), what, timeout=timeout)


@_observing
def garage_version(path: str, *, ctx: NodeContext | None = None, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``<path> --version``: the version of a Garage binary, e.g. a staged one.

    ``path`` must be the configured binary of ``ctx`` or match :data:`GARAGE_BINARY_NAME`.
    """
    return _cmd((_abs(path, "garage binary"), "--version"), timeout=timeout, ctx=ctx)


# ---------------------------------------------------------------------------- files


@_observing
def cat(path: str, *, sudo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``cat <path>``."""
    return _cmd(("cat", _abs(path)), timeout=timeout, sudo=sudo)


@_observing
def sha256sum(path: str, *, sudo: bool = False, timeout: float = 600.0) -> RemoteCommand:
    """``sha256sum <path>`` (prints ``<hex>  <path>``)."""
    return _cmd(("sha256sum", _abs(path)), timeout=timeout, sudo=sudo)


@_observing
def readlink_f(path: str, *, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``readlink -f <path>``: where a symlink finally points (exit 1 if a parent is missing)."""
    return _cmd(("readlink", "-f", _abs(path)), timeout=timeout)


@_observing
def stat(path: str, *, sudo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``stat -L -c '%s %a %U %Y %F' <path>``: size, mode, owner, mtime, type (last: it has spaces)."""
    return _cmd(("stat", "-L", "-c", "%s %a %U %Y %F", _abs(path)), timeout=timeout, sudo=sudo)


@_observing
def exists(path: str, *, sudo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``test -e <path>``: exit 0 if it exists, 1 if not (run with ``check=False``)."""
    return _cmd(("test", "-e", _abs(path)), timeout=timeout, sudo=sudo)


def mkdir_p(path: str, *, sudo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``mkdir -p <path>``."""
    return _cmd(("mkdir", "-p", _abs(path)), timeout=timeout, sudo=sudo)


def remove_file(path: str, *, sudo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``rm -f <path>``: one file (staged binary, partial upload). Never recursive."""
    _split(path)
    return _cmd(("rm", "-f", _abs(path)), timeout=timeout, sudo=sudo)


@_observing
def list_files(path: str, *, sudo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``find <dir> -mindepth 1 -maxdepth 1 -printf '%y %s %T@ %f\\n'``: type, size, mtime, name."""
    return _cmd(("find", _abs(path), "-mindepth", "1", "-maxdepth", "1", "-printf", "%y %s %T@ %f\\n"),
                timeout=timeout, sudo=sudo)


@_observing
def du_bytes(path: str, *, sudo: bool = False, timeout: float = 300.0) -> RemoteCommand:
    """``du -sb <path>``: apparent size in bytes of a tree (the metadata dir before a backup)."""
    return _cmd(("du", "-sb", _abs(path)), timeout=timeout, sudo=sudo)


@_observing
def df_avail(path: str, *, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``df -B1 --output=avail,target <path>``: free bytes and mount point of ``path``'s filesystem."""
    return _cmd(("df", "-B1", "--output=avail,target", _abs(path)), timeout=timeout)


def symlink(target: str, link: str, *, sudo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``ln -sfn <target> <link>``: (re)point ``link`` without following an old link to a dir."""
    return _cmd(("ln", "-sfn", _abs(target, "symlink target"), _abs(link, "link")), timeout=timeout, sudo=sudo)


def rename(src: str, dst: str, *, sudo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``mv -T <src> <dst>``: rename(2), atomic on one filesystem; ``-T`` never moves *into* ``dst``."""
    return _cmd(("mv", "-T", _abs(src), _abs(dst)), timeout=timeout, sudo=sudo)


def switch_symlink(target: str, link: str, *, sudo: bool = False,
                   timeout: float = DEFAULT_TIMEOUT) -> tuple[RemoteCommand, RemoteCommand]:
    """The atomic flip of ``link`` to ``target``: a new link beside it, renamed over it.

    Readers see the old or the new target, never a missing link; running it again is a no-op
    and running it with the old target reverses it.

    Returns:
        ``(ln -sfn <target> <link>.garage-migrate.tmp, mv -T <link>.garage-migrate.tmp <link>)``
    """
    _split(link, "link")
    tmp = _abs(link).rstrip("/") + ".garage-migrate.tmp"
    return symlink(target, tmp, sudo=sudo, timeout=timeout), rename(tmp, link, sudo=sudo, timeout=timeout)


#: What a cluster-lock record on a node may hold: one line of printable ASCII, no NUL.
_LOCK_RECORD = re.compile(r"[ -~]{1,2000}")


def lock_record_take(record: str, path: str, *, sudo: bool = False,
                     timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``ln -sT -- <record> <path>``: create the cluster-lock record, only if there is none.

    A symlink whose target is the record: ``symlink(2)`` creates it atomically or fails with
    ``EEXIST``, so two controllers can never both take the same node (the compare-and-set of
    the cluster lock). ``-T`` never creates the link *inside* an existing directory, and
    there is no ``-f``: an existing record is never replaced.
    """
    if not _LOCK_RECORD.fullmatch(record):
        raise CommandRefused("a lock record must be one line of printable ASCII (at most 2000 characters)")
    return _cmd(("ln", "-sT", "--", record, _abs(path, "lock path")), timeout=timeout, sudo=sudo)


@_observing
def lock_record_read(path: str, *, sudo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``readlink -- <path>``: the record (the link's target, not followed); exit 1 if none."""
    return _cmd(("readlink", "--", _abs(path, "lock path")), timeout=timeout, sudo=sudo)


def lock_record_remove(path: str, *, sudo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``rm -f -- <path>``: drop the record (the caller checked it is the one to drop)."""
    return _cmd(("rm", "-f", "--", _abs(path, "lock path")), timeout=timeout, sudo=sudo)


def sync(*, sudo: bool = False, timeout: float = 120.0) -> RemoteCommand:
    """``sync``: flush page caches before a flip or after an on-node backup."""
    return _cmd(("sync",), timeout=timeout, sudo=sudo)


# ---------------------------------------------------------------------------- processes and service


def signal_name(sig: str | int | _signal.Signals) -> str:
    """``"INT"``, ``"sigint"``, ``2`` or ``Signals.SIGINT`` -> ``"SIGINT"``.

    Raises:
        CommandRefused: not a signal name.
    """
    try:
        if isinstance(sig, str):
            s = sig.strip().upper()
            return _signal.Signals["SIG" + s.removeprefix("SIG")].name
        return _signal.Signals(sig).name
    except (KeyError, ValueError):
        raise CommandRefused(f"unknown signal {sig!r}") from None


def kill(pid: int, sig: str | int = "TERM", *, sudo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``kill -s <SIG> <pid>``."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        raise CommandRefused(f"refusing to signal pid {pid!r}")
    return _cmd(("kill", "-s", signal_name(sig).removeprefix("SIG"), str(pid)), timeout=timeout, sudo=sudo)


def _service(ctx: NodeContext, verb: str, timeout: float, extra: tuple[str, ...] = ()) -> RemoteCommand:
    svc = ctx.service
    if svc.kind == "systemd":
        argv = {
            "start": ("systemctl", "start", svc.unit),
            "stop": ("systemctl", "stop", svc.unit),
            "status": ("systemctl", "is-active", svc.unit),
            "signal": ("systemctl", "kill", "-s", *extra, svc.unit),
        }[verb]
    else:
        argv = (*getattr(svc, verb), *extra)
    return _cmd(argv, timeout=timeout, sudo=ctx.sudo, ctx=ctx)


def service_start(ctx: NodeContext, *, timeout: float = 120.0) -> RemoteCommand:
    """Start the node's Garage service (returns once spawned; readiness is checked apart)."""
    return _service(ctx, "start", timeout)


def service_stop(ctx: NodeContext, *, timeout: float = 120.0) -> RemoteCommand:
    """Stop the node's Garage service with its configured stop semantics (systemd: SIGTERM,
    which kills 0.7.3 at once: send :func:`service_signal` ``INT`` first on 0.7)."""
    return _service(ctx, "stop", timeout)


@_observing
def service_status(ctx: NodeContext, *, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``is-active``: prints the state, exit 0 when running, 3 otherwise (run with ``check=False``)."""
    return _service(ctx, "status", timeout)


def service_signal(ctx: NodeContext, sig: str | int, *, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """Deliver ``sig`` to the service (``systemctl kill -s SIGINT garage``) without waiting."""
    return _service(ctx, "signal", timeout, (signal_name(sig),))


@_observing
def db_file_id(metadata_dir: str, *, sudo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``stat -c %d:%i <metadata_dir>/db/db``: the device and inode of the file sled locks.

    Half of the read-only DB lock probe (:func:`garage_migrate.probes.db_lock`); exits 1 when
    the file is missing (not a metadata dir a daemon has run on).
    """
    return _cmd(("stat", "-c", "%d:%i", posixpath.join(_abs(metadata_dir, "metadata_dir"), "db", "db")),
                timeout=timeout, sudo=sudo)


@_observing
def proc_locks(*, timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``cat /proc/locks``: every file lock the node's kernel holds, read without taking any.

    The other half of the DB lock probe. It replaces ``flock -n <meta>/db/db true``, which
    *takes* sled's lock for an instant: a daemon or an offline repair starting at that moment
    fails to open its DB (0.8.0 panics, late 0.8 exits 1), and util-linux ``flock`` creates
    ``db/db`` when it is missing (source audit, "Lock probe").
    """
    return _cmd(("cat", "/proc/locks"), timeout=timeout)


