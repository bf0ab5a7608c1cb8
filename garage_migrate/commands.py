"""Every remote command garage-migrate runs is built here, as a value.

A :class:`RemoteCommand` is an argv tuple plus how to run it (node-side timeout, ``sudo -n``,
optional stdin). It renders to one shell string in which every word went through
:func:`shlex.quote`, because sshd hands the command to the login shell. Commands compare with
``==``, so tests assert on the exact command a step would run, and the dry run shows the same
strings as the real run.

Only allow-listed executables are built (:data:`FIXED_EXECUTABLES`), plus what the inventory
configures for a node (its Garage binary, its service commands, API-gate commands) and Garage
binaries named by version (``.../garage-v0.8.7``) for staging. :func:`check_allowed` is called
by every builder here and again by the SSH runner before anything leaves the controller.

Remote paths must be absolute: nothing here depends on the remote working directory, and an
absolute path can never be read as an option.
"""

from __future__ import annotations

import functools
import math
import posixpath
import re
import shlex
import signal as _signal
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Literal

from .errors import CommandRefused

__all__ = [
    "DEFAULT_TIMEOUT",
    "FIXED_EXECUTABLES",
    "FLIP_HELPER_NAME",
    "GARAGE_BINARY_NAME",
    "KILL_AFTER",
    "OFFLINE_REPAIR_WHATS",
    "REPAIR_WHATS",
    "WRAPPERS",
    "ConfigFlip",
    "NodeContext",
    "RemoteCommand",
    "ServiceControl",
    "cat",
    "check_allowed",
    "db_file_id",
    "df_avail",
    "du_bytes",
    "exists",
    "flip_helper_path",
    "flip_start",
    "flip_stop",
    "flip_switch",
    "garage",
    "garage_version",
    "is_allowed",
    "kill",
    "list_files",
    "lock_record_read",
    "lock_record_remove",
    "lock_record_take",
    "mkdir_p",
    "offline_repair",
    "proc_locks",
    "readlink_f",
    "remove_file",
    "rename",
    "repair",
    "service_signal",
    "service_start",
    "service_status",
    "service_stop",
    "sha256sum",
    "signal_name",
    "stat",
    "switch_symlink",
    "symlink",
    "sync",
    "tar_archive",
    "tar_stream",
    "tar_zstd_stream",
    "zstd_test",
    "zstd_version",
]

#: Executables any node may run, by basename. A test pins this set: growing it is a decision.
FIXED_EXECUTABLES: frozenset[str] = frozenset({
    "cat", "df", "du", "find", "kill", "ln", "mkdir", "mv", "readlink", "rm", "sha256sum",
    "stat", "sync", "systemctl", "tar", "test", "zstd",
})
#: Executables that :meth:`RemoteCommand.render` puts in front of a command. Never ``argv[0]``:
#: ``timeout 5 anything`` would otherwise launder any program through the allow-list.
WRAPPERS: frozenset[str] = frozenset({"sudo", "timeout"})
#: Basename of a Garage binary at an absolute path that is not the configured one: the
#: unversioned name, or one named after its version as the staging step writes it.
GARAGE_BINARY_NAME = re.compile(r"garage(-v\d+\.\d+\.\d+)?")
#: Basename of the flip helper (``garage_migrate/node/flip.sh``), staged beside the Garage
#: binary and checked by sha256 before use; allowed only at an absolute path.
FLIP_HELPER_NAME = "garage-migrate-flip"

#: Seconds between the node-side ``timeout``'s SIGTERM and its SIGKILL.
KILL_AFTER = 5
#: Timeout of the short builders when the caller does not give one.
DEFAULT_TIMEOUT = 30.0
#: Garage CLI commands talk to a daemon over RPC; a cluster under load answers slowly.
GARAGE_TIMEOUT = 60.0
_MAX_TIMEOUT = 7 * 86400.0

#: ``garage repair <WHAT>`` in both 0.7.3 and 0.8.x (ref 2.9).
REPAIR_WHATS = frozenset({"tables", "blocks", "versions", "block_refs", "scrub"})
#: ``garage offline-repair <WHAT>`` (0.8.x only, ref 2.12).
OFFLINE_REPAIR_WHATS = frozenset({"object_counters", "k2v_item_counters"})


@dataclass(frozen=True)
class RemoteCommand:
    """One command to run on a node: a value, compared with ``==``.

    Attributes:
        argv: the program and its arguments, unquoted.
        timeout: seconds the command may run; enforced on the node by ``timeout
            --kill-after=5`` and by the runner on the client. ``None``: no limit.
        sudo: run through ``sudo -n`` (never prompts; fails if a password is needed).
        stdin: bytes to feed to the command's standard input, if any.
        kind: ``observe`` (read-only) or ``act`` (changes something; the default, so an
            unmarked command is journalled as a change). Not part of ``==``: two commands
            that run the same words are the same command.
    """

    argv: tuple[str, ...]
    timeout: float | None = None
    sudo: bool = False
    stdin: bytes | None = field(default=None, repr=False)
    kind: Literal["observe", "act"] = field(default="act", compare=False)

    def __post_init__(self) -> None:
        argv = tuple(self.argv)
        if not argv:
            raise CommandRefused("empty command")
        for word in argv:
            if not isinstance(word, str):
                raise CommandRefused(f"argument {word!r} of {argv[0]!r} is not a string")
            if "\0" in word:
                raise CommandRefused(f"argument of {argv[0]!r} contains a NUL byte")
        object.__setattr__(self, "argv", argv)
        if self.timeout is not None:
            t = float(self.timeout)
            if not (0 < t <= _MAX_TIMEOUT):
                raise CommandRefused(f"timeout {self.timeout!r} of {argv[0]!r} is not in (0, {_MAX_TIMEOUT:.0f}]")
            object.__setattr__(self, "timeout", t)
        if self.stdin is not None and not isinstance(self.stdin, bytes):
            raise CommandRefused("stdin must be bytes")
        if self.kind not in ("observe", "act"):
            raise CommandRefused(f"kind {self.kind!r} is neither observe nor act")

    @property
    def executable(self) -> str:
        """``argv[0]``: what the allow-list is checked against."""
        return self.argv[0]

    def replace(self, **changes) -> RemoteCommand:
        """A copy with some fields changed (``cmd.replace(sudo=True)``)."""
        return replace(self, **changes)

    def words(self) -> tuple[str, ...]:
        """The argv the node executes, wrappers included, before quoting."""
        out: list[str] = []
        if self.sudo:
            out += ["sudo", "-n"]
        if self.timeout is not None:
            # sudo outside timeout: a root command can only be killed by a root timeout.
            # No --foreground: timeout then signals the command's whole process group.
            out += ["timeout", f"--kill-after={KILL_AFTER}", _fmt_seconds(self.timeout)]
        return (*out, *self.argv)

    def render(self) -> str:
        """The shell string sent to sshd, every word quoted with :func:`shlex.quote`."""
        return " ".join(shlex.quote(w) for w in self.words())

    def __str__(self) -> str:
        return self.render()


def _fmt_seconds(t: float) -> str:
    # whole milliseconds, rounded up: "0" would mean "no timeout" to coreutils timeout
    ms = max(1, math.ceil(t * 1000 - 1e-6))
    whole, frac = divmod(ms, 1000)
    return f"{whole}.{frac:03d}".rstrip("0").rstrip(".") if frac else str(whole)


# ---------------------------------------------------------------------------- node context


@dataclass(frozen=True)
class ServiceControl:
    """How a node's Garage service is driven.

    Attributes:
        kind: ``systemd`` (``systemctl <verb> <unit>``) or ``custom`` (the argv lists below).
        unit: the systemd unit.
        start: custom start argv.
        stop: custom stop argv.
        status: custom status argv; exit 0 means running (like ``systemctl is-active``).
        signal: custom argv that delivers a signal; the signal name (``SIGINT``) is appended.
    """

    kind: Literal["systemd", "custom"] = "systemd"
    unit: str = "garage"
    start: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    signal: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("systemd", "custom"):
            raise CommandRefused(f"unknown service kind {self.kind!r}")
        for verb in ("start", "stop", "status", "signal"):
            argv = tuple(getattr(self, verb))
            object.__setattr__(self, verb, argv)
            if self.kind == "custom" and not argv:
                raise CommandRefused(f"custom service control needs a {verb} command")

    def argv_prefixes(self) -> tuple[tuple[str, ...], ...]:
        """The configured custom commands (empty for systemd)."""
        if self.kind != "custom":
            return ()
        return (self.start, self.stop, self.status, self.signal)


@dataclass(frozen=True)
class NodeContext:
    """What the builders need to know about a node; made by the inventory.

    Attributes:
        name: the node name (for messages).
        binary_path: the Garage binary the service runs (usually a symlink).
        config_path: its ``garage.toml``.
        sudo: whether privileged commands go through ``sudo -n``.
        service: how the service is driven.
        trusted: further configured argv prefixes this node may run (API-gate commands).
    """

    name: str
    binary_path: str = "/usr/local/bin/garage"
    config_path: str = "/etc/garage.toml"
    sudo: bool = False
    service: ServiceControl = ServiceControl()
    trusted: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        _abs(self.binary_path, "binary_path")
        _abs(self.config_path, "config_path")
        object.__setattr__(self, "trusted", tuple(tuple(p) for p in self.trusted))

    def trusted_prefixes(self) -> tuple[tuple[str, ...], ...]:
        """Configured argv prefixes: the binary, the custom service commands, ``trusted``."""
        return ((self.binary_path,), *self.service.argv_prefixes(), *self.trusted)


def is_allowed(cmd: RemoteCommand, ctx: NodeContext | None = None, extra: Iterable[str] = ()) -> bool:
    """Whether ``cmd`` may run on the node of ``ctx``.

    Allowed: an executable of :data:`FIXED_EXECUTABLES` (bare or at an absolute path), an
    absolute path whose basename matches :data:`GARAGE_BINARY_NAME`, a command starting with
    one of ``ctx``'s configured argv prefixes, or an executable named in ``extra`` (exact
    string; for tests and diagnostics only).
    """
    exe = cmd.executable
    if exe in set(extra):
        return True
    if ctx is not None:
        for prefix in ctx.trusted_prefixes():
            if prefix and cmd.argv[: len(prefix)] == prefix:
                return True
    base = posixpath.basename(exe)
    if exe != base and not exe.startswith("/"):
        return False  # a relative path depends on the remote cwd
    if base in FIXED_EXECUTABLES:
        return True
    if exe.startswith("/") and base == FLIP_HELPER_NAME:
        return True
    return exe.startswith("/") and GARAGE_BINARY_NAME.fullmatch(base) is not None


def check_allowed(cmd: RemoteCommand, ctx: NodeContext | None = None, extra: Iterable[str] = ()) -> RemoteCommand:
    """Return ``cmd`` if :func:`is_allowed`, else raise.

    Raises:
        CommandRefused: the executable is not on the allow-list for this node.
    """
    if not is_allowed(cmd, ctx, extra):
        where = f" on {ctx.name}" if ctx is not None else ""
        raise CommandRefused(f"executable {cmd.executable!r} is not on the allow-list{where}",
                             node=ctx.name if ctx else None, command=cmd.render())
    return cmd


def _abs(path: str | PurePosixPath, what: str = "path") -> str:
    p = str(path)
    if not p.startswith("/"):
        raise CommandRefused(f"{what} must be an absolute remote path, got {p!r}")
    if "\0" in p or "\n" in p:
        raise CommandRefused(f"{what} {p!r} contains a NUL or newline")
    if ".." in PurePosixPath(p).parts:
        raise CommandRefused(f"{what} {p!r} contains '..'")
    return p


def _split(path: str | PurePosixPath, what: str = "path") -> tuple[str, str]:
    p = _abs(path, what).rstrip("/")
    parent, name = posixpath.split(p)
    if not name:
        raise CommandRefused(f"{what} must name something below /, got {str(path)!r}")
    return parent or "/", name


def _cmd(argv: Iterable[str], *, timeout: float | None, sudo: bool = False,
         ctx: NodeContext | None = None, stdin: bytes | None = None) -> RemoteCommand:
    return check_allowed(RemoteCommand(tuple(argv), timeout=timeout, sudo=sudo, stdin=stdin), ctx)


def _observing(builder):
    """Mark what ``builder`` returns as read-only (``kind="observe"``)."""
    @functools.wraps(builder)
    def wrapped(*args, **kwargs):
        return builder(*args, **kwargs).replace(kind="observe")
    return wrapped


#: ``garage`` subcommands that only read (``garage <sub> [<sub2>]``)
READ_ONLY_GARAGE = frozenset({("stats",), ("status",), ("layout", "show"), ("node", "id"), ("worker", "list"),
                              ("worker", "get"), ("bucket", "list"), ("bucket", "info"), ("key", "list"),
                              ("block", "list-errors"), ("block", "info")})


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


# ---------------------------------------------------------------------------- the flip helper


def flip_helper_path(binary_path: str) -> str:
    """Where the flip helper is staged: beside the node's Garage binary."""
    return posixpath.join(posixpath.dirname(_abs(binary_path, "binary_path")), FLIP_HELPER_NAME)


def _groups(*cmds: RemoteCommand) -> tuple[str, ...]:
    # each command's own argv (already allow-listed by its builder), preceded by its word
    # count: the helper never reads a word as a separator, and never evaluates one
    out: list[str] = []
    for c in cmds:
        out += [str(len(c.argv)), *c.argv]
    return tuple(out)


def _whole(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def flip_stop(ctx: NodeContext, metadata_dir: str, sig: str, *, wait: float, timeout: float) -> RemoteCommand:
    """``garage-migrate-flip stop <wait> <meta>/db/db <is-active> <signal> <stop>``: signal the
    service, wait on the node until it is inactive and nothing holds the DB lock (read from
    ``/proc/locks``), then settle the unit with the service's stop; one round trip.

    Args:
        ctx: the node (its binary's directory holds the helper; its service commands).
        metadata_dir: the node's metadata dir (``db/db`` is what sled locks).
        sig: the stop signal (0.7.3 is graceful on SIGINT only).
        wait: seconds the daemon has to exit after the signal (never escalated to a kill).
        timeout: the node-side limit of the whole call.
    """
    db = posixpath.join(_abs(metadata_dir, "metadata_dir"), "db", "db")
    argv = (flip_helper_path(ctx.binary_path), "stop", _whole(wait), db,
            *_groups(service_status(ctx), service_signal(ctx, sig), service_stop(ctx)))
    return _cmd(argv, timeout=timeout, sudo=ctx.sudo, ctx=ctx)


@dataclass(frozen=True)
class ConfigFlip:
    """``garage.toml``'s part of the flip's switch: the staged 0.8 config renamed over the live
    one, the live one kept first; both files checked by sha256 on the node (the plan's digests,
    from discovery: never the text, which holds ``rpc_secret``).

    Attributes:
        staged: the staged 0.8 config.
        live: the node's ``config_path``.
        keep: where the live config is kept for a rollback.
        source_sha256: the live config's digest at discovery.
        target_sha256: its 0.8 translation's digest (what ``staged`` must hold).
    """

    staged: str
    live: str
    keep: str
    source_sha256: str
    target_sha256: str

    def argv(self) -> tuple[str, ...]:
        """The helper's five config arguments.

        Raises:
            CommandRefused: a relative path, or a digest that is not 64 lowercase hex digits.
        """
        for what, sha in (("source_sha256", self.source_sha256), ("target_sha256", self.target_sha256)):
            if not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise CommandRefused(f"{what} {sha!r} is not a sha256 digest")
        return (_abs(self.staged, "staged config"), _abs(self.live, "config_path"), _abs(self.keep, "kept config"),
                self.source_sha256, self.target_sha256)


def flip_switch(ctx: NodeContext, target: str, *, config: ConfigFlip | None = None,
                timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``garage-migrate-flip switch <target> <binary_path> [<config...>]``: the atomic symlink
    flip (:func:`switch_symlink`'s two commands, in one round trip; a no-op when it points
    there) and, with ``config``, ``garage.toml`` moved with it in the same call (the helper
    refuses, changing nothing, when either file is not the plan's)."""
    argv = (flip_helper_path(ctx.binary_path), "switch", _abs(target, "switch target"), ctx.binary_path,
            *(config.argv() if config is not None else ()))
    return _cmd(argv, timeout=timeout, sudo=ctx.sudo, ctx=ctx)


def flip_start(ctx: NodeContext, version: str, *, wait: float, timeout: float) -> RemoteCommand:
    """``garage-migrate-flip start <wait> <version> <is-active> <start> <garage stats>``: start
    the service and wait on the node until the daemon answers ``stats`` with ``version``
    (or its unit fails); one round trip.

    Raises:
        CommandRefused: ``version`` is not ``X.Y.Z``.
    """
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise CommandRefused(f"version {version!r} is not X.Y.Z")
    argv = (flip_helper_path(ctx.binary_path), "start", _whole(wait), version,
            *_groups(service_status(ctx), service_start(ctx), garage(ctx, "stats")))
    return _cmd(argv, timeout=timeout, sudo=ctx.sudo, ctx=ctx)
