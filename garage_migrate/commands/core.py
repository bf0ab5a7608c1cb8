"""The command value (:class:`RemoteCommand`: an argv rendered word by word through
:func:`shlex.quote`), the node context (:class:`NodeContext`, :class:`ServiceControl`) and the
allow-list (:func:`check_allowed`, called by every builder and again by the SSH runner): what
every builder of :mod:`garage_migrate.commands` builds on. Remote paths are absolute (:func:`_abs`).
"""

from __future__ import annotations

import functools
import math
import posixpath
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Literal

from ..errors import CommandRefused


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


