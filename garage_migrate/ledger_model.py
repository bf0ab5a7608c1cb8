"""The ledger's document: typed records, the on-disk format, and reading older formats.

A ledger file is one JSON object, :class:`LedgerDoc`::

    LedgerDoc                      the migration (format, id, cluster, procedure, state, plan digest,
     ├── holder: Holder            the run executing it (fencing token, flow run, pid, heartbeat)
     ├── nodes: {name: NodeRecord} facts at preflight, versions, backup, restore, config digest
     │    └── steps: {key: StepRecord}   latest state of each step ...
     │         └── attempts: [StepAttempt]  ... and every attempt of it
     ├── gates: {key: GateRecord}  gate outcomes, and decisions (who, why, for which plan)
     ├── cluster_steps: {key: ClusterStepRecord}
     └── events: [Event]           phases, decisions, takeovers, lock breaks, ...

Every record forbids unknown fields, so a writer's typo fails (in the tests) instead of being
stored and never read. A document is validated as a whole, both when read and before it is
written: a file is read completely or refused with :class:`~garage_migrate.errors.LedgerFormatError`,
never half-read, and a write that would not read back is refused before anything is written.

**No secret.** No field can hold a ``garage.toml``: the node record keeps only the sha256 of
the original config and the path of the copy kept on the node. Format 1 of versions before
1ad4641 stored the whole file (``config_original``); :func:`migrate_1_to_2` replaces it by its
sha256 and hands the text back to the caller, which keeps it in memory only (see
:meth:`garage_migrate.ledger.Ledger.legacy_config_original`), so it is never written again.

**Formats.** 1: the untyped ledger (until this module). 2: this one; differences: each step
keeps its attempts, the restore record's ``from`` is ``source``, events name a previous
holder without its token, and ``config_original`` is gone.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import LedgerFormatError

__all__ = ["FORMAT", "READABLE_FORMATS", "STEP_STATES", "BackupRef", "ClusterStepRecord", "Event", "GateRecord",
           "Holder", "HolderInfo", "LedgerDoc", "NodeRecord", "Parsed", "RestoreRef", "StepAttempt", "StepRecord",
           "dump", "migrate_1_to_2", "parse"]

#: The format this version writes.
FORMAT = 2
#: The formats this version reads (older ones are migrated on read).
READABLE_FORMATS = (1, 2)
STEP_STATES = ("running", "done", "skipped", "failed", "would-run")
StepStatus = Literal["running", "done", "skipped", "failed", "would-run"]
MigrationState = Literal["running", "done", "failed", "rolled-back"]
#: A gate's outcome (:data:`garage_migrate.gates.model.GateStatus`), or where its decision is.
GateStatus = Literal["passed", "timeout", "errored_blocks", "unreachable", "waiting", "decided", "done"]
_SHA256 = r"^[0-9a-f]{64}$"


class Record(BaseModel):
    """Base of every ledger record: unknown fields are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------- steps
class StepAttempt(Record):
    """One attempt of a step: from ``running`` (or a result recorded directly) to its result."""

    started: float
    finished: float | None = None
    status: StepStatus
    detail: str = ""
    code: str | None = None


class StepRecord(Record):
    """A node step (``<phase>:<kind>``): the state of its latest attempt, and all attempts.

    Attributes:
        retried: the number of the "retry the node" decision that produced the latest result.
    """

    status: StepStatus
    detail: str = ""
    code: str | None = None
    started: float
    finished: float | None = None
    retried: int | None = None
    attempts: list[StepAttempt] = []

    @property
    def completed(self) -> bool:
        """Done or skipped: a resumed run does not run it again."""
        return self.status in ("done", "skipped")

    @property
    def when(self) -> float:
        """When it last changed (finished, else started)."""
        return self.finished or self.started

    def record(self, status: StepStatus, detail: str, code: str | None, now: float) -> None:
        """Apply a new state: ``running`` opens an attempt, any other state closes the open one
        (or is an attempt of its own, when none is open: a result recorded without ``running``)."""
        last = self.attempts[-1] if self.attempts else None
        if status == "running" or last is None or last.finished is not None:
            last = StepAttempt(started=now, status=status)
            self.attempts.append(last)
        last.status, last.detail, last.code = status, detail, code
        last.finished = None if status == "running" else now
        self.status, self.detail, self.code = status, detail, code
        self.started, self.finished = last.started, last.finished


class ClusterStepRecord(Record):
    """A cluster-wide step (``phase:wave:kind:args``): a repair launch, a gate that passed..."""

    status: StepStatus
    detail: str = ""
    at: float


# ---------------------------------------------------------------------------- nodes
class BackupRef(Record):
    """The verified backup of a node's metadata that this migration relies on (restore source)."""

    path: str  # the archive: on the controller, or on the node (on-node mode)
    manifest: str
    sha256: str | None = Field(pattern=_SHA256)
    bytes: int | None = Field(None, ge=0)  # the archive's size (format 1 did not record it)
    version: str  # the Garage version whose metadata it holds
    reused: bool = False
    # when the archive was completed (Unix time, its manifest's created_at); None in ledgers
    # written before it was recorded (the manifest still says)
    taken_at: float | None = None
    # a dry run's stand-in (in memory only: a dry run never writes its ledger): no archive, no hash
    dry_run: bool = False

    @model_validator(mode="after")
    def _hash_unless_dry_run(self):
        if (self.sha256 is None) != self.dry_run:
            raise ValueError("a backup has a sha256, and only a dry run's stand-in has none")
        return self


class RestoreRef(Record):
    """A restore of a node's metadata from its backup (rollback)."""

    source: str
    moved_aside: str | None  # where the previous metadata dir went (never deleted); None: there was none


class NodeRecord(Record):
    """What the migration knows and did on one node.

    Attributes:
        version_before: the version found at preflight (what a rollback returns to).
        running_version: the version the daemon last answered with after a start (or a skipped
            start: it was running already); the "version after" of the table and the report.
        binary_before: where ``binary_path`` pointed at preflight (the switch back).
        config_original_sha256: digest of the original ``garage.toml`` while the API is cut.
        config_original_path: the owner-only copy of it kept on the node.
    """

    zone: str | None = None
    id64: str | None = None
    version_before: str | None = None
    metadata_bytes: int | None = Field(None, ge=0)
    binary_before: str | None = None
    running_version: str | None = None
    backup: BackupRef | None = None
    restored: RestoreRef | None = None
    config_original_sha256: str | None = Field(None, pattern=_SHA256)
    config_original_path: str | None = None
    steps: dict[str, StepRecord] = {}

    @field_validator("config_original_path")
    @classmethod
    def _a_path_not_a_file(cls, v: str | None) -> str | None:
        # a path, never the file's text (which holds rpc_secret)
        if v is not None and (not v.startswith("/") or "\n" in v or len(v) > 4096):
            raise ValueError("must be an absolute path on the node (the config itself never goes in the ledger)")
        return v


# ---------------------------------------------------------------------------- gates, holder, events
class GateRecord(Record):
    """A gate's latest outcome, and the decision taken there (who, why, for which plan).

    Attributes:
        status: the gate outcome, ``waiting`` (asked), ``decided`` (answered) or ``done``.
        by: ``person`` or ``auto-approve`` (the rule); ``None`` while nobody has decided.
        at: when the record last changed.
    """

    status: GateStatus | None = None
    attempt: int | None = Field(None, ge=1)
    reasons: list[str] = []
    decision: str | None = None
    by: Literal["person", "auto-approve"] | None = None
    note: str | None = None
    plan_digest: str | None = None
    flow_run_id: str | None = None
    pause_key: str | None = None
    decided_at: float | None = None
    host: str | None = None
    at: float


class HolderInfo(Record):
    """Who ran (or runs) the migration, as events name it: no fencing token."""

    flow_run_id: str | None = None
    controller: str | None = None
    pid: int | None = None
    kind: str | None = None
    since: float | None = None
    heartbeat: float | None = None

    def who(self) -> str:
        """The flow run, else the pid."""
        return str(self.flow_run_id or self.pid)


class Holder(HolderInfo):
    """The run that holds the migration; its token fences the ledger (see :mod:`garage_migrate.ledger`)."""

    token: str = Field(min_length=1)

    def info(self) -> HolderInfo:
        """This holder without its token (for events)."""
        return HolderInfo.model_validate(self.model_dump(exclude={"token"}))


class Event(Record):
    """Something that happened: a phase start/end, a decision, a takeover, a lock break..."""

    t: float
    kind: str
    message: str
    note: str | None = None
    by: str | None = None
    pause_key: str | None = None
    reasons: list[str] | None = None
    previous: HolderInfo | None = None  # takeover, unlock: the run that held it before
    nodes: list[str] | None = None  # unlock: the nodes whose lock record was removed


# ---------------------------------------------------------------------------- the document
class LedgerDoc(Record):
    """A migration's ledger (see the module docstring)."""

    format: Literal[2] = FORMAT
    migration_id: str = Field(min_length=1)
    cluster: str = Field(min_length=1)
    procedure: Literal["simple", "minimal-downtime"]
    state: MigrationState = "running"
    plan_digest: str | None = None
    error: str | None = None
    created: float
    updated: float
    holder: Holder | None = None
    nodes: dict[str, NodeRecord] = {}
    gates: dict[str, GateRecord] = {}
    cluster_steps: dict[str, ClusterStepRecord] = {}
    events: list[Event] = []

    @classmethod
    def new(cls, migration_id: str, cluster: str, procedure: str, now: float | None = None) -> "LedgerDoc":
        """An empty ledger of a migration that starts now."""
        now = time.time() if now is None else now
        return cls(migration_id=migration_id, cluster=cluster, procedure=procedure, created=now, updated=now)


# ---------------------------------------------------------------------------- reading and writing
@dataclass
class Parsed:
    """A document read from disk.

    Attributes:
        doc: the document, in the current format.
        source_format: the format the file had.
        legacy_config_originals: ``node -> garage.toml text`` found in a format-1 file's
            ``config_original`` (removed from ``doc``: keep it in memory only).
    """

    doc: LedgerDoc
    source_format: int
    legacy_config_originals: dict[str, str] = field(default_factory=dict)


def _problems(exc: ValidationError, limit: int = 5) -> str:
    errs = exc.errors()
    shown = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}" for e in errs[:limit])
    return shown + (f"; and {len(errs) - limit} more" if len(errs) > limit else "")


def parse(text: str, source: str) -> Parsed:
    """Read a ledger document of any readable format, completely or not at all.

    Args:
        text: the file's contents.
        source: how to name the file in errors (its path).

    Raises:
        LedgerFormatError: not JSON, no format number, a format this version does not read
            (a newer garage-migrate wrote it), or a document that does not validate.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LedgerFormatError(f"{source}: not a ledger (not JSON: {exc}); refused, nothing was read") from None
    if not isinstance(data, dict) or "format" not in data:
        raise LedgerFormatError(f"{source}: not a garage-migrate ledger (no format number); refused")
    fmt = data["format"]
    if fmt not in READABLE_FORMATS or isinstance(fmt, bool):
        newer = isinstance(fmt, int) and fmt > FORMAT
        raise LedgerFormatError(
            f"{source}: ledger format {fmt!r}; this garage-migrate reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}"
            + (": a newer garage-migrate wrote it, upgrade to resume this migration" if newer else "")
            + "; the file was left as it is")
    legacy: dict[str, str] = {}
    if fmt == 1:
        try:
            data, legacy = migrate_1_to_2(data)
        except (AttributeError, TypeError, KeyError) as exc:  # a structure that is not format 1
            raise LedgerFormatError(f"{source}: not a valid format-1 ledger ({type(exc).__name__}: {exc}); "
                                    f"refused, nothing was read") from None
    try:
        doc = LedgerDoc.model_validate(data)
    except ValidationError as exc:
        raise LedgerFormatError(f"{source}: not a valid format-{fmt} ledger: {_problems(exc)}; "
                                f"refused, nothing was read") from None
    return Parsed(doc, fmt, legacy)


def dump(doc: LedgerDoc, source: str) -> tuple[str, LedgerDoc]:
    """The JSON text of ``doc``, and the document as it will read back.

    The dump is validated again as a whole (a record appended as a plain dict, or a list
    changed in place, escapes the checks on assignment): what is written always reads back.

    Raises:
        LedgerFormatError: the document would not read back; nothing should be written.
    """
    data = doc.model_dump(mode="json", warnings=False)
    try:
        back = LedgerDoc.model_validate(data)
    except ValidationError as exc:
        raise LedgerFormatError(f"{source}: refusing to write an invalid ledger: {_problems(exc)}") from None
    return json.dumps(data, indent=1, sort_keys=True), back


def migrate_1_to_2(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A format-1 document in format 2 (a new dict; ``data`` is not changed).

    Returns:
        The document, and ``node -> config text`` of any legacy ``config_original`` (replaced
        by its sha256 in the document, unless a digest was recorded already).
    """
    out = json.loads(json.dumps(data))  # a deep copy: the caller's dict stays format 1
    out["format"] = 2
    out.setdefault("holder", None)
    legacy: dict[str, str] = {}
    for name, node in out.get("nodes", {}).items():
        text = node.pop("config_original", None)
        if isinstance(text, str):
            legacy[name] = text
            node.setdefault("config_original_sha256", hashlib.sha256(text.encode()).hexdigest())
        if isinstance(node.get("restored"), dict) and "from" in node["restored"]:
            node["restored"]["source"] = node["restored"].pop("from")
        for step in node.get("steps", {}).values():
            # format 1 kept one record per step: it becomes the step's one known attempt
            attempt = {k: step[k] for k in ("started", "finished", "status", "detail", "code") if k in step}
            if step.get("status") in ("done", "skipped", "would-run"):
                # format 1 never removed a failed attempt's code when a later attempt succeeded
                attempt.pop("code", None)
                step.pop("code", None)
            step["attempts"] = [attempt]
    for ev in out.get("events", []):
        if isinstance(ev.get("previous"), dict):
            ev["previous"].pop("token", None)  # events name the previous run, not its fencing token
    return out, legacy
