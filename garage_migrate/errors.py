"""The rooted error tree of garage-migrate.

Every failure the engine reports on purpose is a :class:`GarageMigrateError`. Library errors
(asyncssh, OSError, pydantic, yaml) are converted into this tree where they are caught, so the
layers above catch one family and read a stable :attr:`~GarageMigrateError.code` that can be
persisted in the migration state and shown to an operator::

    class                              code                                 transient
    GarageMigrateError                 FAILED                               no
    ├── InventoryError                 INVENTORY_INVALID                    no
    ├── DiscoveryError                 DISCOVERY_MISMATCH                   no
    ├── PlanError                      UNSAFE_PLAN                          no
    ├── ParseError                     PARSE_FAILED                         no
    ├── LedgerFormatError              LEDGER_FORMAT                        no
    ├── CommandRefused                 COMMAND_REFUSED                      no
    │   └── NotInPlanError             NOT_IN_PLAN                          no
    ├── TransportError                 NODE_UNREACHABLE                     yes
    │   ├── HostKeyError               HOST_KEY_UNKNOWN | HOST_KEY_CHANGED  no
    │   └── AuthenticationError        AUTH_FAILED                          no
    ├── CommandError                   COMMAND_FAILED                       no
    │   └── CommandTimeout             COMMAND_TIMEOUT                      yes
    ├── GateError                      SYNC_GATE_TIMEOUT | SYNC_GATE_ERRORS no
    ├── MigrationAborted               ABORTED                              no
    ├── ClusterLockedError             CLUSTER_LOCKED                       no
    ├── SupersededError                SUPERSEDED                           no
    ├── WindowTooShort                 WINDOW_TOO_SHORT                     no
    └── StepError                      STEP_FAILED                          no
        ├── LockHeldError              LOCK_HELD                            no
        ├── BackupError                BACKUP_FAILED                        no
        └── NotReleasedError           NOT_RELEASED                         no

``transient`` is what :func:`is_transient` answers, and so what the Prefect layer's
``retry_condition_fn`` retries. Only faults of the path to a node are transient; an operator
error (wrong host key, wrong credentials, a command that failed) is never retried blindly.

``CommandTimeout`` is a ``CommandError`` (as asyncssh's ``TimeoutError`` is a ``ProcessError``)
because it carries the same context; catch ``CommandTimeout`` first when the two need
different handling.
"""

from __future__ import annotations

import signal as _signal
from enum import StrEnum
from typing import Any, ClassVar

__all__ = [
    "AuthenticationError",
    "BackupError",
    "ClusterLockedError",
    "CommandError",
    "CommandRefused",
    "CommandTimeout",
    "DiscoveryError",
    "ErrorCode",
    "GarageMigrateError",
    "GateError",
    "HostKeyError",
    "InventoryError",
    "LockHeldError",
    "LedgerFormatError",
    "MigrationAborted",
    "NotInPlanError",
    "NotReleasedError",
    "ParseError",
    "PlanError",
    "StepError",
    "SupersededError",
    "TransportError",
    "WindowTooShort",
    "is_transient",
    "tail_text",
]

STDERR_TAIL_LINES = 20
STDERR_TAIL_BYTES = 2048


class ErrorCode(StrEnum):
    """Stable codes: persisted in the migration state, so never renamed, only added."""

    FAILED = "FAILED"
    INVENTORY_INVALID = "INVENTORY_INVALID"
    DISCOVERY_MISMATCH = "DISCOVERY_MISMATCH"
    UNSAFE_PLAN = "UNSAFE_PLAN"
    COMMAND_REFUSED = "COMMAND_REFUSED"
    NODE_UNREACHABLE = "NODE_UNREACHABLE"
    HOST_KEY_UNKNOWN = "HOST_KEY_UNKNOWN"
    HOST_KEY_CHANGED = "HOST_KEY_CHANGED"
    AUTH_FAILED = "AUTH_FAILED"
    COMMAND_FAILED = "COMMAND_FAILED"
    COMMAND_TIMEOUT = "COMMAND_TIMEOUT"
    SYNC_GATE_TIMEOUT = "SYNC_GATE_TIMEOUT"
    SYNC_GATE_ERRORS = "SYNC_GATE_ERRORS"
    STEP_FAILED = "STEP_FAILED"
    LOCK_HELD = "LOCK_HELD"
    BACKUP_FAILED = "BACKUP_FAILED"
    ABORTED = "ABORTED"
    CLUSTER_LOCKED = "CLUSTER_LOCKED"
    SUPERSEDED = "SUPERSEDED"
    PARSE_FAILED = "PARSE_FAILED"
    LEDGER_FORMAT = "LEDGER_FORMAT"
    NOT_IN_PLAN = "NOT_IN_PLAN"
    WINDOW_TOO_SHORT = "WINDOW_TOO_SHORT"
    NOT_RELEASED = "NOT_RELEASED"


def tail_text(text: str | bytes | None, max_lines: int = STDERR_TAIL_LINES,
              max_bytes: int = STDERR_TAIL_BYTES) -> str:
    """The end of a command's output, small enough to keep in an error and a state file.

    Args:
        text: the whole output (bytes are decoded as UTF-8, replacing what is not).
        max_lines: keep at most this many trailing lines.
        max_bytes: and at most this many trailing bytes of UTF-8.

    Returns:
        The tail, prefixed with ``[...]`` when something was cut; ``""`` for no output.
    """
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = text.rstrip("\n")
    lines = text.split("\n")
    cut = len(lines) > max_lines
    out = "\n".join(lines[-max_lines:])
    raw = out.encode("utf-8")
    if len(raw) > max_bytes:
        # cutting inside a multi-byte character leaves a fragment at the start: drop it
        out = raw[-max_bytes:].decode("utf-8", errors="ignore")
        cut = True
    return f"[...]\n{out}" if cut else out


def _rebuild(cls: type[GarageMigrateError], args: tuple, state: dict) -> GarageMigrateError:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class GarageMigrateError(Exception):
    """Root of every error garage-migrate raises on purpose.

    Attributes:
        code: stable code (:class:`ErrorCode`); a class default that an instance may narrow to
            another code its class declares in ``codes``.
        transient: whether retrying the same operation may succeed (see :func:`is_transient`).
        message: the human message (also ``str(exc)``).
        node: the node the error is about, if any.
        command: the rendered remote command, if any.
        exit_status: the command's exit status, if it exited.
        signal: the signal name (``"ABRT"``) if the command died of a signal.
        stderr_tail: the last lines of the command's stderr (see :func:`tail_text`).
    """

    code: ClassVar[ErrorCode] = ErrorCode.FAILED
    codes: ClassVar[frozenset[ErrorCode]] = frozenset()
    transient: ClassVar[bool] = False

    def __init__(self, message: str, *, node: str | None = None, command: str | None = None,
                 exit_status: int | None = None, signal: str | None = None,
                 stderr: str | bytes | None = None, code: ErrorCode | str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.node = node
        self.command = command
        self.exit_status = exit_status
        self.signal = signal
        self.stderr_tail = tail_text(stderr)
        if code is not None:
            code = ErrorCode(code)
            if code != type(self).code and code not in type(self).codes:
                raise ValueError(f"{type(self).__name__} cannot carry code {code}")
            # shadows the class default for this instance only
            self.code = code  # type: ignore[misc]

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        # Prefect pickles exceptions into task states; keyword-only context would otherwise be lost
        return _rebuild, (type(self), self.args, dict(self.__dict__))

    @property
    def returncode(self) -> int | None:
        """asyncssh/subprocess style: ``-signum`` for a signal, else the exit status."""
        if self.signal:
            try:
                return -_signal.Signals["SIG" + self.signal.removeprefix("SIG")].value
            except KeyError:
                return None
        return self.exit_status

    def context(self) -> dict[str, Any]:
        """The code, message and every context field that is set, for logs and state files."""
        out: dict[str, Any] = {"code": str(self.code), "type": type(self).__name__, "message": self.message}
        for key in ("node", "command", "exit_status", "signal", "stderr_tail"):
            value = getattr(self, key)
            if value not in (None, ""):
                out[key] = value
        out["transient"] = self.transient
        return out

    def describe(self) -> str:
        """A multi-line explanation: ``[CODE] message`` followed by the context."""
        lines = [f"[{self.code}] {self.message}"]
        for key in ("node", "command", "exit_status", "signal"):
            value = getattr(self, key)
            if value is not None:
                lines.append(f"  {key}: {value}")
        if self.stderr_tail:
            lines.append("  stderr (tail):")
            lines.extend(f"    {line}" for line in self.stderr_tail.split("\n"))
        return "\n".join(lines)


class InventoryError(GarageMigrateError):
    """The inventory is invalid: a missing or malformed field, a duplicate node, a missing file.

    Attributes:
        problems: one ``(location, message)`` per problem; the location names the field and,
            when loaded from YAML, the file and line (``inventory.yaml:12 nodes[2].host``).
    """

    code = ErrorCode.INVENTORY_INVALID

    def __init__(self, message: str, *, problems: list[tuple[str, str]] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.problems = list(problems or [])


class DiscoveryError(GarageMigrateError):
    """What the cluster reports contradicts the inventory (a node missing from the layout,
    a zone disagreement, a version outside 0.7.x ...)."""

    code = ErrorCode.DISCOVERY_MISMATCH


class PlanError(GarageMigrateError):
    """The requested plan would be unsafe (e.g. more nodes down than the replication survives)."""

    code = ErrorCode.UNSAFE_PLAN


class ParseError(GarageMigrateError, ValueError):
    """Garage output did not have the shape the parser expects.

    Raised instead of guessing: a parser that meets an unknown line, a missing section or a
    cell it cannot read stops here, naming the command and, when there is one, the line. Also
    a ``ValueError``, as it always was.

    Attributes:
        command: what was being parsed (``"status"``, ``"worker list"``, ``"garage.toml"`` ...).
        line_no: 1-based number of the offending line, or ``None`` when the problem is the
            input as a whole (e.g. a section that never came because the output was truncated).
        line: the offending line as received, or ``None``.
        reason: the bare explanation, without the command/line decoration.
    """

    code = ErrorCode.PARSE_FAILED

    def __init__(self, reason: str, *, command: str, line_no: int | None = None, line: str | None = None,
                 **kw: Any) -> None:
        where = f"{command}: line {line_no}" if line_no is not None else command
        message = f"{where}: {reason}"
        if line is not None:
            message += f": {line!r}"
        super().__init__(message, command=command, **kw)
        self.reason = reason
        self.line_no = line_no
        self.line = line


class LedgerFormatError(GarageMigrateError):
    """A ledger file has a format this version does not understand: refused, never half-read."""

    code = ErrorCode.LEDGER_FORMAT


class CommandRefused(GarageMigrateError, ValueError):
    """A remote command was not built: its executable is not on the allow-list, or an
    argument is malformed (a relative remote path, a NUL byte, a flag in a place Garage
    rejects). A programming or inventory error, never retried."""

    code = ErrorCode.COMMAND_REFUSED


class NotInPlanError(CommandRefused):
    """A step tried a changing command its plan step does not list: a bug, refused before it
    runs (the plan a person approved is the program)."""

    code = ErrorCode.NOT_IN_PLAN


class TransportError(GarageMigrateError):
    """The node could not be reached or the SSH connection broke (refused, reset, timed out
    while connecting, channel open failed). Transient: the operation may be retried."""

    code = ErrorCode.NODE_UNREACHABLE
    transient = True


class HostKeyError(TransportError):
    """The node's SSH host key is not in known_hosts (``HOST_KEY_UNKNOWN``) or differs from
    the one recorded there (``HOST_KEY_CHANGED``). Never transient: a person must verify the
    fingerprint and fix known_hosts; the message says how."""

    code = ErrorCode.HOST_KEY_UNKNOWN
    codes = frozenset({ErrorCode.HOST_KEY_CHANGED})
    transient = False


class AuthenticationError(TransportError):
    """The node refused our credentials (wrong user or key). Never transient."""

    code = ErrorCode.AUTH_FAILED
    transient = False


class CommandError(GarageMigrateError):
    """A remote command ran and failed: non-zero exit status or death by a signal.

    The context carries the rendered command, the exit status or signal and the stderr tail.
    """

    code = ErrorCode.COMMAND_FAILED


class CommandTimeout(CommandError):
    """A remote command did not finish in its timeout. The node-side ``timeout`` wrapper
    killed it (exit 124/137), or the client stopped waiting. Transient."""

    code = ErrorCode.COMMAND_TIMEOUT
    transient = True


class GateError(GarageMigrateError):
    """A safety gate did not pass and the caller chose to stop: it timed out
    (``SYNC_GATE_TIMEOUT``) or saw errors such as errored blocks (``SYNC_GATE_ERRORS``)."""

    code = ErrorCode.SYNC_GATE_TIMEOUT
    codes = frozenset({ErrorCode.SYNC_GATE_ERRORS})


class MigrationAborted(GarageMigrateError):
    """A person chose to abort at a gate, or a rule refused to go on (recorded in the ledger)."""

    code = ErrorCode.ABORTED


class ClusterLockedError(GarageMigrateError):
    """Another migration (or a live run of this one) holds the cluster lock.

    Attributes:
        holder: the lock record that refused us (migration id, run, controller, since).
    """

    code = ErrorCode.CLUSTER_LOCKED

    def __init__(self, message: str, *, holder: dict | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.holder = dict(holder or {})


class SupersededError(GarageMigrateError):
    """This run's hold on the migration was taken over by a newer attempt: stop, touch nothing."""

    code = ErrorCode.SUPERSEDED


class WindowTooShort(GarageMigrateError):
    """What is left of the maintenance window is shorter than the next phase's estimate: the
    run stops before it, in a safe state (recorded in the ledger); the next window's run resumes."""

    code = ErrorCode.WINDOW_TOO_SHORT


class StepError(GarageMigrateError):
    """A migration step could not reach its goal (a precondition or a post-check failed)."""

    code = ErrorCode.STEP_FAILED


class LockHeldError(StepError):
    """The metadata DB lock is held (the daemon still runs): offline work refused. Not
    retried blindly: the stop must be verified first."""

    code = ErrorCode.LOCK_HELD


class BackupError(StepError):
    """A metadata backup failed, or could not be verified (size, checksum, archive test)."""

    code = ErrorCode.BACKUP_FAILED


class NotReleasedError(StepError):
    """An armed call of the simultaneous restart was aborted before it acted: another node's
    part failed first, or could not be armed in time, so this node was left as it was."""

    code = ErrorCode.NOT_RELEASED


def is_transient(exc: BaseException | None) -> bool:
    """Whether retrying may help: the test behind the Prefect tasks' ``retry_condition_fn``.

    Args:
        exc: the exception a task raised (``None`` answers ``False``).

    Returns:
        ``True`` only for errors of this tree whose class is transient (transport faults and
        timeouts), or for an exception group made only of such errors. Anything else,
        including exceptions from outside the tree, is not retried.
    """
    if isinstance(exc, BaseExceptionGroup):
        return bool(exc.exceptions) and all(is_transient(e) for e in exc.exceptions)
    return isinstance(exc, GarageMigrateError) and type(exc).transient
