"""The SSH runner: the only module that talks to nodes over SSH.

Steps see a node through the narrow :class:`NodeShell` protocol (run a command, stream a
command's binary output, upload a file), so a dry run or a test can inject another
implementation. :class:`SshPool` is the asyncssh one:

- one connection per node per event loop, opened on first use and reused; channels on it
  are bounded by a semaphore (OpenSSH's ``MaxSessions`` defaults to 10);
- ``connect_timeout`` and ``keepalive_interval`` always set; host keys always checked against
  the inventory's known_hosts; ``~/.ssh/config`` is not read (the inventory decides);
- every command is allow-listed (:func:`garage_migrate.commands.check_allowed`) and carries
  its own timeout, enforced on the node by ``timeout --kill-after`` and on the client with a
  grace period on top;
- asyncssh and OS errors are converted here into :mod:`garage_migrate.errors`.

Log lines go to the ``garage_migrate.ssh`` logger, prefixed with ``[<node>]`` and with
``extra={"node": <node>}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import asyncssh

from .commands import KILL_AFTER, RemoteCommand, check_allowed
from .errors import (
    AuthenticationError,
    CommandError,
    CommandTimeout,
    HostKeyError,
    InventoryError,
    StepError,
    TransportError,
)
from .inventory import SshTarget
from .nodelog import node_log
from .precheck import check_ssh_inputs, known_host_match

if TYPE_CHECKING:
    from .inventory import Inventory

__all__ = ["NodeShell", "Result", "Sink", "SshNodeShell", "SshPool", "DEFAULT_CHUNK"]

logger = logging.getLogger("garage_migrate.ssh")

#: Bytes per read of a streamed command's stdout.
DEFAULT_CHUNK = 256 * 1024
#: Bytes of a streamed command's stderr kept in memory (its tail).
_STREAM_STDERR_KEEP = 64 * 1024
#: Exit status of coreutils ``timeout`` when it had to stop the command.
_TIMEOUT_EXIT = (124, 137)
#: ``returncode`` of a channel that closed without an exit status or signal (as OpenSSH's ssh).
_NO_STATUS = 255
#: how long a command that ended without a status waits for its connection to report closing
_LOST_GRACE = 1.0

Sink = Callable[[bytes], Awaitable[None] | None]  # sync or async; called with each chunk


@dataclass(frozen=True)
class Result:
    """What a finished remote command reported.

    Attributes:
        stdout: standard output, decoded as UTF-8 (invalid bytes replaced); ``""`` for
            :meth:`NodeShell.stream`, whose output went to the sink.
        stderr: standard error, decoded likewise (for a stream: its last 64 KiB).
        exit_status: the exit status, or ``None`` if the command died of a signal.
        signal: the signal name (``"ABRT"``) if it died of one, else ``None``.
        returncode: ``exit_status``, or ``-signum`` for a signal (subprocess convention), or
            255 if the channel closed without reporting either (as OpenSSH's ``ssh`` does).
        streamed: bytes handed to the sink by :meth:`NodeShell.stream`.
    """

    stdout: str
    stderr: str
    exit_status: int | None
    signal: str | None
    returncode: int
    streamed: int = 0

    @property
    def ok(self) -> bool:
        """Exit status 0."""
        return self.exit_status == 0


#: What an armed command awaits once armed: its release word (``True`` is ``"go"``), or a
#: false value to abort it (it acts not).
Release = Callable[[], Awaitable[bool | str]]
#: The line an armed command prints when it is ready and waits for its release.
ARMED_LINE = b"armed="


def release_line(answer: bool | str) -> bytes:
    """The line an armed command reads: the release word (``True``: ``go``), or ``abort``."""
    word = "go" if answer is True else (answer or "abort")
    if not word.replace("-", "").isalnum():
        raise ValueError(f"release word {word!r} is not a plain word")
    return word.encode() + b"\n"


@runtime_checkable
class NodeShell(Protocol):
    """A node as the steps see it. Implementations convert their errors into the error tree."""

    name: str

    async def run(self, cmd: RemoteCommand, check: bool = True) -> Result:
        """Run ``cmd`` to completion and return its output.

        Raises:
            CommandError: with ``check``, a non-zero exit status or death by a signal.
            CommandTimeout: it exceeded ``cmd.timeout`` (whatever ``check`` says).
            TransportError: the node could not be reached or the connection broke.
            CommandRefused: ``cmd`` is not allowed on this node.
        """
        ...

    async def stream(self, cmd: RemoteCommand, sink: Sink, chunk: int = DEFAULT_CHUNK,
                     check: bool = True) -> Result:
        """Run ``cmd`` and hand its raw stdout to ``sink`` chunk by chunk.

        The exit status is checked only after EOF: a tar that fails half-way has already
        written partial output, so the caller must discard it when this raises.
        """
        ...

    async def run_armed(self, cmd: RemoteCommand, release: Release, check: bool = True) -> Result:
        """Run ``cmd``, an armed call (it prints ``armed=...`` on a line of its own, then waits
        for one line on stdin before it acts), to completion: once armed, ``release()`` is
        awaited and its answer written to the command (:func:`release_line`); a command that
        ends before arming never waits. Errors as :meth:`run`.
        """
        ...

    async def put_file(self, local: str | os.PathLike[str], remote: str, *, timeout: float = 600.0) -> None:
        """Upload ``local`` to the absolute path ``remote`` (mode preserved, atomic rename)."""
        ...


class _SinkFailed(Exception):
    """Carries an exception raised by a stream's sink past the transport handlers."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(exc)
        self.exc = exc


class _Slot:
    """A node's connection in one event loop, with the semaphore bounding its channels."""

    def __init__(self, max_channels: int) -> None:
        self.lock = asyncio.Lock()
        self.channels = asyncio.Semaphore(max_channels)
        self.conn: asyncssh.SSHClientConnection | None = None
        self.opened = 0  # connections opened so far (observability and tests)


class SshPool:
    """Reusable SSH connections to the inventory's hosts.

    Args:
        targets: the hosts (usually ``inventory.resolved_nodes()`` targets).
        extra_executables: executables allowed on every host on top of the allow-list; for
            tests and diagnostics only, never for migration steps.
        client_grace: seconds the client waits past a command's node-side deadline
            (``timeout`` + ``KILL_AFTER``) before it gives up on the channel itself.
        on_trust: awaited with the record of every host key accepted on first use (a target
            with ``trust_on_first_use``), after it is written to known_hosts: the runtime
            records it in the ledger. The records are also kept in :attr:`trusted_keys`.
    """

    def __init__(self, targets: Iterable[SshTarget], *, extra_executables: Iterable[str] = (),
                 client_grace: float = 10.0, on_trust: Callable[[dict], Awaitable[None]] | None = None) -> None:
        self._targets: dict[str, SshTarget] = {}
        for t in targets:
            if t.name in self._targets:
                raise InventoryError(f"two SSH targets named {t.name!r}")
            self._targets[t.name] = t
        self.extra_executables = frozenset(extra_executables)
        self.client_grace = client_grace
        self.on_trust = on_trust
        self.trusted_keys: list[dict] = []
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Slot]] = weakref.WeakKeyDictionary()
        self._slots_guard = threading.Lock()  # Prefect may drive several loops from threads
        # connections this pool closed itself: a command cut by our own close is not a broken link
        self._closed_here: weakref.WeakSet[asyncssh.SSHClientConnection] = weakref.WeakSet()

    @classmethod
    def from_inventory(cls, inventory: Inventory, **kwargs) -> SshPool:
        """A pool for every node of ``inventory`` and its API-gate hosts.

        Raises:
            InventoryError: known_hosts lacks a host (without trust on first use), or the key
                does not open: refused before any connection (:mod:`garage_migrate.precheck`).
        """
        targets = [n.ssh for n in inventory.resolved_nodes()] + list(inventory.gate_targets())
        problems = check_ssh_inputs(targets)
        if problems:
            lines = "\n".join(f"  {w}: {m}" for w, m in problems)
            raise InventoryError(f"refused before connecting to any node ({len(problems)} problem"
                                 f"{'s' if len(problems) != 1 else ''}):\n{lines}", problems=problems)
        return cls(targets, **kwargs)

    @property
    def names(self) -> tuple[str, ...]:
        """Target names, in inventory order."""
        return tuple(self._targets)

    def target(self, name: str) -> SshTarget:
        """The target ``name``.

        Raises:
            InventoryError: unknown name.
        """
        try:
            return self._targets[name]
        except KeyError:
            raise InventoryError(f"no SSH target {name!r} (known: {', '.join(self._targets)})") from None

    def shell(self, name: str) -> SshNodeShell:
        """The :class:`NodeShell` of node ``name``."""
        return SshNodeShell(self, self.target(name))

    def connections_opened(self, name: str) -> int:
        """How many connections to ``name`` this event loop has opened (1 while reused)."""
        slot = self._slots.get(asyncio.get_running_loop(), {}).get(name)
        return slot.opened if slot else 0

    def _slot(self, target: SshTarget) -> _Slot:
        loop = asyncio.get_running_loop()
        with self._slots_guard:
            per_loop = self._slots.setdefault(loop, {})
            slot = per_loop.get(target.name)
            if slot is None:
                slot = per_loop[target.name] = _Slot(target.max_channels)
            return slot

    async def _connection(self, target: SshTarget, log: logging.LoggerAdapter) -> tuple[_Slot, asyncssh.SSHClientConnection]:
        slot = self._slot(target)
        async with slot.lock:
            if slot.conn is None or slot.conn.is_closed():
                slot.conn = await _connect(target, log, self._trusted)
                slot.opened += 1
            return slot, slot.conn

    async def _trusted(self, record: dict) -> None:
        self.trusted_keys.append(record)
        if self.on_trust is not None:
            await self.on_trust(record)

    @staticmethod
    def _drop(slot: _Slot, conn: asyncssh.SSHClientConnection) -> None:
        # the next command reconnects instead of reusing a broken connection
        if slot.conn is conn:
            slot.conn = None
        conn.close()

    async def close(self) -> None:
        """Close every connection: awaited in this loop, scheduled in the others."""
        here = asyncio.get_running_loop()
        with self._slots_guard:
            items = list(self._slots.items())
            self._slots = weakref.WeakKeyDictionary()
        waits = []
        for loop, slots in items:
            for slot in slots.values():
                conn, slot.conn = slot.conn, None
                if conn is None:
                    continue
                self._closed_here.add(conn)
                if loop is here:
                    conn.close()
                    waits.append(conn.wait_closed())
                elif not loop.is_closed():
                    loop.call_soon_threadsafe(conn.close)
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)

    async def __aenter__(self) -> SshPool:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


#: SSH handshakes in flight at once, per event loop. A run opens a connection to every node at
#: the start: 96 key exchanges at once on a busy controller make some miss their
#: ``connect_timeout`` (seen at 96 nodes on 2 cores: "no answer within 5s") although every
#: node answers. The timeout counts from a handshake's start, not from its wait for a turn.
MAX_HANDSHAKES = 16
_handshakes: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


def _handshake_turn() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    for old in [lp for lp in _handshakes if lp.is_closed()]:
        del _handshakes[old]
    return _handshakes.setdefault(loop, asyncio.Semaphore(MAX_HANDSHAKES))


async def _connect(t: SshTarget, log: logging.LoggerAdapter,
                   trusted: Callable[[dict], Awaitable[None]] | None = None) -> asyncssh.SSHClientConnection:
    """One authenticated connection to ``t`` (host key checked), at most :data:`MAX_HANDSHAKES`
    handshakes at once."""
    async with _handshake_turn():
        return await _connect_now(t, log, trusted)


async def _connect_now(t: SshTarget, log: logging.LoggerAdapter,
                       trusted: Callable[[dict], Awaitable[None]] | None) -> asyncssh.SSHClientConnection:
    kh = Path(t.known_hosts)
    if t.trust_on_first_use and not _has_entry(kh, t):
        record = await _trust_first_key(t, kh, log)
        if trusted is not None:
            await trusted(record)
    if not kh.is_file():
        raise HostKeyError(
            f"{t.name}: known_hosts file {kh} does not exist; host keys are always verified. "
            f"Create it with the nodes' verified keys (ssh-keyscan -p {t.port} {t.host} >> {kh}, "
            f"after checking the fingerprint on the node)", node=t.name)
    if t.key_file is not None and not Path(t.key_file).is_file():
        raise InventoryError(f"{t.name}: ssh.key_file {t.key_file} does not exist", node=t.name)
    kwargs: dict = {}
    if t.key_file is not None:
        # only the configured key: agent keys tried first can exhaust sshd's MaxAuthTries
        kwargs.update(client_keys=[str(t.key_file)], agent_path=None)
    if t.key_passphrase_env is not None:
        passphrase = os.environ.get(t.key_passphrase_env)
        if not passphrase:
            raise InventoryError(f"{t.name}: ssh.key_passphrase_env: ${t.key_passphrase_env} is not set", node=t.name)
        kwargs.update(passphrase=passphrase)
    t0 = time.monotonic()
    try:
        conn = await asyncssh.connect(
            t.host, port=t.port, username=t.user, known_hosts=str(kh), config=None,
            connect_timeout=t.connect_timeout, keepalive_interval=t.keepalive_interval,
            keepalive_count_max=3, **kwargs)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise await _host_key_error(t, exc) from None
    except asyncssh.PermissionDenied as exc:
        raise AuthenticationError(
            f"{t.name}: {t.user}@{t.host}:{t.port} refused our credentials ({exc.reason}); "
            f"check ssh.user and ssh.key_file", node=t.name) from None
    except asyncssh.KeyEncryptionError:
        # asyncssh's text is generic; ours names the variable, never the passphrase
        raise InventoryError(f"{t.name}: cannot open ssh.key_file {t.key_file}: wrong or missing passphrase"
                             + (f" (from ${t.key_passphrase_env})" if t.key_passphrase_env else ""),
                             node=t.name) from None
    except asyncssh.KeyImportError as exc:
        raise InventoryError(f"{t.name}: cannot use ssh.key_file {t.key_file}: {exc}", node=t.name) from None
    except (asyncssh.Error, OSError) as exc:
        # TimeoutError is an OSError: the connect_timeout expired
        reason = f"no answer within {t.connect_timeout:g}s" if isinstance(exc, TimeoutError) else _reason(exc)
        raise TransportError(f"{t.name}: cannot connect to {t.host}:{t.port}: {reason}", node=t.name) from None
    log.info("connected to %s@%s:%s in %.2fs", t.user, t.host, t.port, time.monotonic() - t0)
    return conn


def _pattern(t: SshTarget) -> str:
    return t.host if t.port == 22 else f"[{t.host}]:{t.port}"


def _has_entry(kh: Path, t: SshTarget) -> bool:
    """Whether known_hosts names ``t`` at all (with any key: a changed key is never trusted)."""
    if not kh.is_file():
        return False
    try:
        m = known_host_match(asyncssh.read_known_hosts(str(kh)), t.host, t.port)
    except (OSError, ValueError, asyncssh.Error):
        return True  # unreadable: let the connection refuse it with the usual message
    return any(m)  # any of its lists: trusted keys, CAs, revoked keys, X.509 certificates and names


async def _trust_first_key(t: SshTarget, kh: Path, log: logging.LoggerAdapter) -> dict:
    """Fetch the key ``t`` offers, append it to known_hosts (owner-only) and say so.

    The connection that follows verifies against the file as always: a key swapped between the
    two is refused.
    """
    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(t.host, t.port, config=None), t.connect_timeout)
    except (asyncssh.Error, OSError) as exc:
        reason = f"no answer within {t.connect_timeout:g}s" if isinstance(exc, TimeoutError) else _reason(exc)
        raise TransportError(f"{t.name}: cannot read the host key of {t.host}:{t.port}: {reason}",
                             node=t.name) from None
    if key is None:
        raise HostKeyError(f"{t.name}: {t.host}:{t.port} offered no host key", node=t.name)
    public = key.export_public_key("openssh").decode().split()
    line = f"{_pattern(t)} {public[0]} {public[1]}\n"
    kh.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(kh, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    record = {"node": t.name, "host": _pattern(t), "algorithm": key.get_algorithm(),
              "fingerprint": key.get_fingerprint(), "known_hosts": str(kh)}
    log.warning("TRUST ON FIRST USE: accepted %s key %s of %s without verification and recorded it in %s",
                record["algorithm"], record["fingerprint"], record["host"], kh)
    return record


async def _host_key_error(t: SshTarget, exc: asyncssh.HostKeyNotVerifiable) -> HostKeyError:
    kh = Path(t.known_hosts)
    pattern = t.host if t.port == 22 else f"[{t.host}]:{t.port}"
    try:
        recorded = asyncssh.read_known_hosts(str(kh)).match(t.host, t.host, t.port)[0]
    except (OSError, ValueError, asyncssh.Error):
        recorded = []
    offered = ""
    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(t.host, t.port, config=None), t.connect_timeout)
        if key is not None:
            offered = f" (it offers {key.get_algorithm()} {key.get_fingerprint()})"
    except (asyncssh.Error, OSError):
        pass  # the fingerprint only decorates the message
    if recorded:
        return HostKeyError(
            f"{t.name}: HOST KEY CHANGED for {pattern}{offered}: it does not match the key recorded "
            f"in {kh}. Either the node was reinstalled or something is intercepting the connection. "
            f"Verify the fingerprint on the node (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub); "
            f"only then replace the entry: ssh-keygen -R '{pattern}' -f {kh} && "
            f"ssh-keyscan -p {t.port} {t.host} >> {kh}",
            node=t.name, code="HOST_KEY_CHANGED")
    return HostKeyError(
        f"{t.name}: unknown host key for {pattern}{offered}: it is not in {kh}. "
        f"Verify the fingerprint on the node (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), "
        f"then add it: ssh-keyscan -p {t.port} {t.host} >> {kh}",
        node=t.name, code="HOST_KEY_UNKNOWN")


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


class SshNodeShell:
    """:class:`NodeShell` over the pool's connection to one node."""

    def __init__(self, pool: SshPool, target: SshTarget) -> None:
        self.pool = pool
        self.target = target
        self.name = target.name
        self.log = node_log(logger, target.name)

    # ------------------------------------------------------------------ helpers
    def _deadline(self, cmd: RemoteCommand) -> float | None:
        if cmd.timeout is None:
            return None
        return cmd.timeout + KILL_AFTER + self.pool.client_grace

    def _result(self, proc: asyncssh.SSHClientProcess, stdout: bytes | str | None, stderr: bytes | str | None,
                streamed: int = 0) -> Result:
        sig = proc.exit_signal[0] if proc.exit_signal else None
        status = None if sig else proc.exit_status
        if proc.returncode is not None:
            rc = proc.returncode
        else:
            rc = _NO_STATUS if status is None else status
        return Result(stdout=_decode(stdout), stderr=_decode(stderr), exit_status=status, signal=sig,
                      returncode=rc, streamed=streamed)

    def _judge(self, cmd: RemoteCommand, res: Result, elapsed: float, check: bool) -> Result:
        text = cmd.render()
        timed_out = cmd.timeout is not None and elapsed >= cmd.timeout * 0.99 and (
            res.exit_status in _TIMEOUT_EXIT or res.signal == "KILL")
        if timed_out:
            self.log.warning("killed on the node after its %gs timeout: %s", cmd.timeout, text)
            raise CommandTimeout(f"{self.name}: `{text}` exceeded its {cmd.timeout:g}s timeout and was "
                                 f"killed on the node", node=self.name, command=text,
                                 exit_status=res.exit_status, signal=res.signal, stderr=res.stderr)
        self.log.debug("exit %s in %.2fs: %s", res.signal and f"signal {res.signal}" or res.exit_status, elapsed, text)
        if check and (res.exit_status != 0):
            if res.signal:
                how = f"died of signal {res.signal}"
            elif res.exit_status is None:
                how = "ended without reporting an exit status"
            else:
                how = f"exited with status {res.exit_status}"
            last = next((ln for ln in reversed(res.stderr.strip().splitlines()) if ln.strip()), "")
            raise CommandError(f"{self.name}: `{text}` {how}" + (f": {last}" if last else ""),
                               node=self.name, command=text, exit_status=res.exit_status,
                               signal=res.signal, stderr=res.stderr)
        return res

    def _client_timeout(self, cmd: RemoteCommand, partial_stderr: bytes | str | None = None) -> CommandTimeout:
        text = cmd.render()
        self.log.warning("no answer %gs past the node-side deadline; channel closed: %s", self.pool.client_grace, text)
        return CommandTimeout(f"{self.name}: `{text}` did not finish within {cmd.timeout:g}s "
                              f"(+{KILL_AFTER + self.pool.client_grace:g}s grace); the client gave up",
                              node=self.name, command=text, stderr=partial_stderr)

    def _transport(self, exc: BaseException, cmd_text: str, slot: _Slot,
                   conn: asyncssh.SSHClientConnection) -> TransportError:
        if isinstance(exc, (asyncssh.DisconnectError, OSError)) or conn.is_closed():
            self.pool._drop(slot, conn)
        return TransportError(f"{self.name}: connection failed while running `{cmd_text}`: {_reason(exc)}",
                              node=self.name, command=cmd_text)

    async def _lost_under(self, res: Result, text: str, slot: _Slot, conn: asyncssh.SSHClientConnection) -> None:
        """Raise :class:`TransportError` when the connection broke under the command.

        A channel that closes with neither an exit status nor a signal, on a connection that
        closes with it, did not end on the node: the link (or the node's SSH session) died
        while it ran. That is transport trouble (retried; every step observes before it acts),
        not a failed command; its outcome on the node is unknown and the retry observes it.
        """
        if res.exit_status is not None or res.signal is not None or conn in self.pool._closed_here:
            return
        try:
            # the channels are closed just before the connection reports itself closed
            await asyncio.wait_for(conn.wait_closed(), _LOST_GRACE)
        except TimeoutError:
            return
        if conn in self.pool._closed_here:  # the pool is closing under it (its owner gave up)
            return
        self.pool._drop(slot, conn)
        raise TransportError(f"{self.name}: the connection broke while running `{text}` "
                             "(its outcome on the node is unknown)", node=self.name, command=text)

    def _check(self, cmd: RemoteCommand) -> str:
        check_allowed(cmd, self.target.ctx, self.pool.extra_executables)
        return cmd.render()

    @staticmethod
    def _stdin_kwargs(cmd: RemoteCommand) -> dict:
        # without input, stdin gets EOF at once: a command that reads stdin must not hang
        return {"input": cmd.stdin} if cmd.stdin is not None else {"stdin": asyncssh.DEVNULL}

    # ------------------------------------------------------------------ NodeShell
    async def run(self, cmd: RemoteCommand, check: bool = True) -> Result:
        """See :meth:`NodeShell.run`."""
        text = self._check(cmd)
        slot, conn = await self.pool._connection(self.target, self.log)
        async with slot.channels:
            self.log.debug("run: %s", text)
            t0 = time.monotonic()
            proc = None
            try:
                async with asyncio.timeout(self._deadline(cmd)):
                    proc = await conn.create_process(text, encoding=None, **self._stdin_kwargs(cmd))
                    stdout, stderr = await proc.communicate()
            except TimeoutError:
                raise self._client_timeout(cmd, proc.collect_output()[1] if proc else None) from None
            except (asyncssh.Error, OSError) as exc:
                raise self._transport(exc, text, slot, conn) from None
            finally:
                if proc is not None:
                    proc.close()
            res = self._result(proc, stdout, stderr)
            await self._lost_under(res, text, slot, conn)
        return self._judge(cmd, res, time.monotonic() - t0, check)

    async def _drive(self, cmd: RemoteCommand, check: bool, what: str, body, **create) -> Result:
        """Open ``cmd``'s channel, drain its stderr as it comes (a full stderr window would
        stall stdout too), hand the process to ``body`` (which reads its stdout and returns
        ``(stdout bytes or None, bytes streamed)``), wait for its exit status, then judge it."""
        text = self._check(cmd)
        slot, conn = await self.pool._connection(self.target, self.log)
        async with slot.channels:
            self.log.debug("%s: %s", what, text)
            t0 = time.monotonic()
            proc = None
            err_task: asyncio.Task | None = None
            err_tail = bytearray()

            async def drain_stderr() -> None:
                while data := await proc.stderr.read(65536):
                    err_tail.extend(data)
                    del err_tail[:-_STREAM_STDERR_KEEP]

            try:
                async with asyncio.timeout(self._deadline(cmd)):
                    proc = await conn.create_process(text, encoding=None, **create)
                    err_task = asyncio.create_task(drain_stderr())
                    stdout, streamed = await body(proc)
                    await err_task
                    await proc.wait_closed()  # the exit status arrives around EOF, not before
            except _SinkFailed as failed:
                # the caller's own error (e.g. a full local disk): not a transport fault
                raise failed.exc from None
            except TimeoutError:
                raise self._client_timeout(cmd, bytes(err_tail)) from None
            except (asyncssh.Error, OSError) as exc:
                raise self._transport(exc, text, slot, conn) from None
            finally:
                if err_task is not None and not err_task.done():
                    err_task.cancel()
                if proc is not None:
                    proc.close()
            res = self._result(proc, stdout, bytes(err_tail), streamed=streamed)
            await self._lost_under(res, text, slot, conn)
        return self._judge(cmd, res, time.monotonic() - t0, check)

    async def stream(self, cmd: RemoteCommand, sink: Sink, chunk: int = DEFAULT_CHUNK,
                     check: bool = True) -> Result:
        """See :meth:`NodeShell.stream`. An exception raised by ``sink`` closes the channel
        and propagates unchanged."""
        async def body(proc) -> tuple[None, int]:
            total = 0
            while data := await proc.stdout.read(chunk):
                total += len(data)
                try:
                    out = sink(data)
                    if inspect.isawaitable(out):
                        await out
                except Exception as exc:
                    raise _SinkFailed(exc) from None
            return None, total
        return await self._drive(cmd, check, "stream", body, **self._stdin_kwargs(cmd))

    async def run_armed(self, cmd: RemoteCommand, release: Release, check: bool = True) -> Result:
        """See :meth:`NodeShell.run_armed`. The release is one write on a channel opened before
        it: no exec, no login, no observation between ``release()`` and the command acting."""
        async def body(proc) -> tuple[bytes, int]:
            out = bytearray()
            while line := await proc.stdout.readline():
                out.extend(line)
                if line.startswith(ARMED_LINE):
                    proc.stdin.write(release_line(await release()))
                    proc.stdin.write_eof()
                    break
            out.extend(await proc.stdout.read())
            return bytes(out), 0
        return await self._drive(cmd, check, "run armed", body)

    async def put_file(self, local: str | os.PathLike[str], remote: str, *, timeout: float = 600.0) -> None:
        """See :meth:`NodeShell.put_file`: SFTP to ``<remote>.part``, size check, then an atomic
        ``posix-rename`` over ``remote``.

        Raises:
            StepError: ``local`` is not a readable file.
            CommandError: the node refused (no SFTP subsystem, permission, missing directory,
                size mismatch).
            CommandTimeout: the upload took longer than ``timeout``.
            TransportError: the connection failed.
        """
        src = Path(local)
        if not src.is_file() or not os.access(src, os.R_OK):
            raise StepError(f"{self.name}: cannot upload {src}: not a readable file on the controller", node=self.name)
        if not remote.startswith("/"):
            raise StepError(f"{self.name}: upload destination must be absolute, got {remote!r}", node=self.name)
        size = src.stat().st_size
        part = remote + ".part"
        what = f"sftp put {src} {remote}"
        slot, conn = await self.pool._connection(self.target, self.log)
        async with slot.channels:
            self.log.info("upload %s (%d bytes) -> %s", src, size, remote)
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(timeout):
                    try:
                        sftp = await conn.start_sftp_client()
                    except asyncssh.ChannelOpenError as exc:
                        if conn.is_closed():
                            raise
                        raise CommandError(
                            f"{self.name}: the SFTP subsystem is not available ({exc.reason}); sshd needs "
                            f"`Subsystem sftp internal-sftp` (or sftp-server)", node=self.name, command=what) from None
                    renamed = False
                    try:
                        await sftp.put(str(src), part, preserve=True)
                        got = (await sftp.stat(part)).size
                        if got != size:
                            raise CommandError(f"{self.name}: uploaded {got} of {size} bytes to {part}",
                                               node=self.name, command=what)
                        await sftp.posix_rename(part, remote)
                        renamed = True
                    finally:
                        if not renamed and not conn.is_closed():
                            with contextlib.suppress(asyncssh.Error, OSError):
                                # no half-written file left behind; bounded: the link may be the problem
                                await asyncio.wait_for(sftp.remove(part), 5)
                        sftp.exit()
            except TimeoutError:
                raise CommandTimeout(f"{self.name}: `{what}` took longer than {timeout:g}s",
                                     node=self.name, command=what) from None
            except asyncssh.SFTPError as exc:
                raise CommandError(f"{self.name}: `{what}` failed: {exc.reason}", node=self.name,
                                   command=what) from None
            except (asyncssh.Error, OSError) as exc:
                raise self._transport(exc, what, slot, conn) from None
            self.log.info("uploaded %s in %.2fs", remote, time.monotonic() - t0)
