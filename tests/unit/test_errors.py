"""The error tree: shape, stable codes, context, transience, pickling."""

from __future__ import annotations

import pickle

import pytest

from garage_migrate import errors as E
from garage_migrate.errors import (
    AuthenticationError,
    BackupError,
    ClusterLockedError,
    CommandError,
    CommandRefused,
    CommandTimeout,
    DiscoveryError,
    ErrorCode,
    GarageMigrateError,
    GateError,
    HostKeyError,
    InventoryError,
    LedgerFormatError,
    LockHeldError,
    MigrationAborted,
    NotInPlanError,
    NotReleasedError,
    ParseError,
    PlanError,
    StepError,
    SupersededError,
    TransportError,
    WindowTooShort,
    is_transient,
    tail_text,
)

# class -> (parent, default code, transient); the tree the module docstring draws
TREE = {
    GarageMigrateError: (Exception, "FAILED", False),
    InventoryError: (GarageMigrateError, "INVENTORY_INVALID", False),
    DiscoveryError: (GarageMigrateError, "DISCOVERY_MISMATCH", False),
    PlanError: (GarageMigrateError, "UNSAFE_PLAN", False),
    ParseError: (GarageMigrateError, "PARSE_FAILED", False),
    LedgerFormatError: (GarageMigrateError, "LEDGER_FORMAT", False),
    CommandRefused: (GarageMigrateError, "COMMAND_REFUSED", False),
    NotInPlanError: (CommandRefused, "NOT_IN_PLAN", False),
    TransportError: (GarageMigrateError, "NODE_UNREACHABLE", True),
    HostKeyError: (TransportError, "HOST_KEY_UNKNOWN", False),
    AuthenticationError: (TransportError, "AUTH_FAILED", False),
    CommandError: (GarageMigrateError, "COMMAND_FAILED", False),
    CommandTimeout: (CommandError, "COMMAND_TIMEOUT", True),
    GateError: (GarageMigrateError, "SYNC_GATE_TIMEOUT", False),
    MigrationAborted: (GarageMigrateError, "ABORTED", False),
    ClusterLockedError: (GarageMigrateError, "CLUSTER_LOCKED", False),
    SupersededError: (GarageMigrateError, "SUPERSEDED", False),
    WindowTooShort: (GarageMigrateError, "WINDOW_TOO_SHORT", False),
    StepError: (GarageMigrateError, "STEP_FAILED", False),
    LockHeldError: (StepError, "LOCK_HELD", False),
    BackupError: (StepError, "BACKUP_FAILED", False),
    NotReleasedError: (StepError, "NOT_RELEASED", False),
}


@pytest.mark.parametrize("cls", list(TREE), ids=lambda c: c.__name__)
def test_tree_shape_codes_and_transience_are_pinned(cls):
    parent, code, transient = TREE[cls]
    assert cls.__bases__[0] is parent
    assert cls.code == code
    assert cls.transient is transient
    assert cls.__doc__ and cls.__doc__.strip(), f"{cls.__name__} needs a docstring"
    assert cls.__name__ in E.__doc__, "the module docstring draws every class of the tree"


def test_every_exception_class_in_the_module_is_in_the_pinned_tree():
    found = {v for v in vars(E).values() if isinstance(v, type) and issubclass(v, BaseException)}
    assert found == set(TREE)


def test_error_codes_are_stable():
    # codes are persisted in migration state files: removing or renaming one breaks resumption
    assert {c.value for c in ErrorCode} == {
        "FAILED", "INVENTORY_INVALID", "DISCOVERY_MISMATCH", "UNSAFE_PLAN", "COMMAND_REFUSED",
        "NODE_UNREACHABLE", "HOST_KEY_UNKNOWN", "HOST_KEY_CHANGED", "AUTH_FAILED", "COMMAND_FAILED",
        "COMMAND_TIMEOUT", "SYNC_GATE_TIMEOUT", "SYNC_GATE_ERRORS", "STEP_FAILED", "LOCK_HELD",
        "BACKUP_FAILED", "ABORTED", "CLUSTER_LOCKED", "SUPERSEDED", "PARSE_FAILED", "LEDGER_FORMAT",
        "NOT_IN_PLAN", "WINDOW_TOO_SHORT", "NOT_RELEASED",
    }
    assert all(c.name == c.value for c in ErrorCode)


def test_command_refused_is_also_a_value_error():
    assert issubclass(CommandRefused, ValueError)


def test_parse_error_is_still_a_value_error_and_the_facts_one():
    from garage_migrate.facts import ParseError as FactsParseError

    assert issubclass(ParseError, ValueError) and FactsParseError is ParseError
    exc = ParseError("bad cell", command="status", line_no=3, line="x y")
    assert str(exc) == "status: line 3: bad cell: 'x y'"
    back = pickle.loads(pickle.dumps(exc))
    assert (back.reason, back.line_no, back.line, back.code) == ("bad cell", 3, "x y", "PARSE_FAILED")


def test_context_is_carried_and_rendered():
    exc = CommandError("node-a1: `garage status` exited with status 1", node="node-a1",
                       command="garage status", exit_status=1, stderr="line1\nError: boom\n")
    assert str(exc) == "node-a1: `garage status` exited with status 1"
    assert (exc.node, exc.command, exc.exit_status, exc.signal) == ("node-a1", "garage status", 1, None)
    assert exc.stderr_tail == "line1\nError: boom"
    assert exc.returncode == 1
    ctx = exc.context()
    assert ctx == {"code": "COMMAND_FAILED", "type": "CommandError", "message": str(exc), "node": "node-a1",
                   "command": "garage status", "exit_status": 1, "stderr_tail": "line1\nError: boom",
                   "transient": False}
    text = exc.describe()
    assert text.splitlines()[0] == "[COMMAND_FAILED] node-a1: `garage status` exited with status 1"
    assert "    Error: boom" in text


def test_returncode_is_negative_for_a_signal():
    assert CommandError("x", signal="ABRT").returncode == -6
    assert CommandError("x", signal="SIGKILL").returncode == -9
    assert CommandError("x", signal="NOSUCH").returncode is None
    assert CommandError("x").returncode is None


def test_instance_code_may_only_narrow_to_a_declared_code():
    exc = HostKeyError("changed", code="HOST_KEY_CHANGED")
    assert exc.code == ErrorCode.HOST_KEY_CHANGED
    assert HostKeyError.code == ErrorCode.HOST_KEY_UNKNOWN, "the class default is untouched"
    assert GateError("errored blocks", code=ErrorCode.SYNC_GATE_ERRORS).code == "SYNC_GATE_ERRORS"
    with pytest.raises(ValueError, match="cannot carry code LOCK_HELD"):
        HostKeyError("x", code="LOCK_HELD")
    with pytest.raises(ValueError):
        StepError("x", code="NOT_A_CODE")


def test_inventory_error_keeps_its_problems():
    exc = InventoryError("bad", problems=[("inv.yaml:3 ssh.port", "too big")])
    assert exc.problems == [("inv.yaml:3 ssh.port", "too big")]
    assert InventoryError("bad").problems == []


@pytest.mark.parametrize(("exc", "expected"), [
    (TransportError("reset"), True),
    (CommandTimeout("slow"), True),
    (HostKeyError("unknown"), False),
    (AuthenticationError("denied"), False),
    (CommandError("exit 1"), False),
    (LockHeldError("lock"), False),
    (InventoryError("bad"), False),
    (GarageMigrateError("root"), False),
    (ValueError("not ours"), False),
    (OSError("not converted"), False),
    (None, False),
    (ExceptionGroup("all transient", [TransportError("a"), CommandTimeout("b")]), True),
    (ExceptionGroup("mixed", [TransportError("a"), CommandError("b")]), False),
    (ExceptionGroup("nested", [ExceptionGroup("inner", [TransportError("a")])]), True),
], ids=repr)
def test_is_transient(exc, expected):
    assert is_transient(exc) is expected


def test_pickle_round_trip_keeps_type_code_and_context():
    # Prefect stores a failed task's exception in its state by pickling it
    exc = HostKeyError("node-b1: changed", node="node-b1", command="connect", code="HOST_KEY_CHANGED",
                       stderr="x" * 10)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is HostKeyError
    assert str(back) == "node-b1: changed"
    assert back.code == "HOST_KEY_CHANGED"
    assert back.context() == exc.context()
    inv = pickle.loads(pickle.dumps(InventoryError("bad", problems=[("a", "b")])))
    assert inv.problems == [("a", "b")]


def test_tail_text_keeps_the_last_20_lines():
    text = "\n".join(f"line {i}" for i in range(1, 31)) + "\n"
    tail = tail_text(text)
    lines = tail.split("\n")
    assert lines[0] == "[...]"
    assert lines[1:] == [f"line {i}" for i in range(11, 31)]
    assert tail_text("a\nb\n") == "a\nb"


def test_tail_text_keeps_at_most_2_kib_and_never_half_a_character():
    tail = tail_text("é" * 3000)  # 2 bytes each: the cut may fall inside one
    body = tail.removeprefix("[...]\n")
    assert tail.startswith("[...]\n")
    assert len(body.encode()) <= 2048
    assert set(body) == {"é"}
    assert len(body) >= 1023


def test_tail_text_accepts_bytes_and_nothing():
    assert tail_text(b"ok\xff\n") == "ok\ufffd"
    assert tail_text(None) == ""
    assert tail_text("") == ""
    assert CommandError("x", stderr=b"raw\n").stderr_tail == "raw"
