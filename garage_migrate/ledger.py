"""The persisted migration ledger: what happened to every node, step by step.

One JSON file per migration, ``<backup_root>/<cluster>/<migration id>/ledger.json``. Several
processes may hold the same ledger open: a flow run and its retry, a paused run and a rollback,
the CLI's ``status``. So every change is a read-modify-write under an exclusive ``fcntl.flock``
on ``ledger.lock`` beside it: the file is read again under the lock, the change is applied to
what is on disk (never to a stale copy in memory), and the result is written through a temp
file of this process's own, fsync and an atomic rename. No run ever erases another's events,
and a crash leaves either the previous or the next state, never half of one.

**Fencing.** A run that holds the migration (see :mod:`garage_migrate.cluster_lock`) binds
its ledger to its holder token. Every later write checks, under the lock, that the ledger's
holder is still that token; if another attempt took the migration over, the write raises
:class:`~garage_migrate.errors.SupersededError` and changes nothing. Since every step records
``running`` before it touches a node, a superseded process can never act on a node.

**Typed.** The document is a :class:`~garage_migrate.ledger_model.LedgerDoc`: every read
returns typed records and every write is validated first (see :mod:`garage_migrate.ledger_model`,
which also reads older formats, or refuses a file completely). The file keeps no secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import LedgerFormatError, SupersededError
from .ledger_model import (FORMAT, STEP_STATES, BackupRef, ClusterStepRecord, Event, GateRecord, Holder, LedgerDoc,
                           NodeRecord, StepRecord, StepStatus, dump, parse)

__all__ = ["FORMAT", "STEP_STATES", "BackupRef", "ClaimRefused", "Ledger", "LedgerDoc", "LedgerFormatError",
           "NodeRecord"]

T = TypeVar("T")


@dataclass(frozen=True)
class ClaimRefused:
    """:meth:`Ledger.claim` was refused: who holds the migration (``None``: nobody) and why."""

    holder: Holder | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """The holder's fields and ``refused`` (for :class:`~garage_migrate.errors.ClusterLockedError`)."""
        return dict(self.holder.model_dump() if self.holder else {}, refused=self.reason)


class Ledger:
    """A migration's ledger, bound to its file.

    Attributes:
        path: the ledger file.
        doc: the last state read or written by this process (a snapshot: refreshed on every
            write, and by :meth:`refresh`).
        persist: ``False`` for read-only use (``plan``, dry runs): nothing is ever written.
        token: the holder token this process writes under (see the module docstring), or
            ``None`` before the run claimed the migration.
    """

    def __init__(self, path: Path, doc: LedgerDoc):
        self.path = Path(path)
        self.doc = doc
        self.persist = True
        self.token: str | None = None
        self._lock = asyncio.Lock()
        # node -> original garage.toml read from a format-1 file (never written back; see
        # legacy_config_original)
        self._legacy_originals: dict[str, str] = {}

    # ------------------------------------------------------------------ life cycle
    @classmethod
    def open(cls, root: str | Path, cluster: str, migration_id: str, procedure: str,
             persist: bool = True) -> "Ledger":
        """Load the ledger of ``migration_id``, or start a new one.

        With ``persist=False`` (``garage-migrate plan``, dry runs) an existing ledger is read
        but nothing is ever written, and a missing one is not created.

        Raises:
            LedgerFormatError: the existing file is of an unknown format or invalid (it is
                left as it is).
        """
        path = Path(root) / cluster / migration_id / "ledger.json"
        fresh = LedgerDoc.new(migration_id, cluster, procedure)
        if not persist:
            led = cls.load(path) if path.exists() else cls(path, fresh)
            led.persist = False
            return led
        led = cls(path, fresh)
        with led._flocked():
            if path.exists():
                led.doc = led._read()
            else:
                led._write_unlocked(fresh)
        return led

    @classmethod
    def load(cls, path: str | Path) -> "Ledger":
        """Read a ledger file (a snapshot; writing through it is allowed).

        Raises:
            LedgerFormatError: unknown format version, or a document that does not validate.
        """
        led = cls(Path(path), LedgerDoc.model_construct())  # replaced at once by what is read
        led.doc = led._read()
        return led

    def refresh(self) -> LedgerDoc:
        """Read the file again (what other processes wrote since) and return the document."""
        if self.path.exists():
            self.doc = self._read()
        return self.doc

    def _read(self) -> LedgerDoc:
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise LedgerFormatError(f"{self.path}: not a ledger (not UTF-8 text: {exc}); refused, "
                                    f"nothing was read") from None
        parsed = parse(text, str(self.path))
        self._legacy_originals.update(parsed.legacy_config_originals)
        return parsed.doc

    def legacy_config_original(self, node: str) -> str | None:
        """The original ``garage.toml`` of ``node`` from a format-1 ledger (``config_original``).

        Format 2 never stores the text: reading a format-1 file replaced it by its sha256 and
        kept it in this process only, so the step that restores the API can move it to the
        node (where format 2 keeps it). ``None`` unless this process read such a file and the
        node's recorded digest is still that text's.
        """
        text = self._legacy_originals.get(node)
        rec = self.doc.nodes.get(node)
        if text is None or rec is None or rec.config_original_sha256 != hashlib.sha256(text.encode()).hexdigest():
            return None
        return text

    @contextlib.contextmanager
    def _flocked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_name("ledger.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the lock

    def _write_unlocked(self, doc: LedgerDoc) -> None:
        doc.updated = time.time()
        text, back = dump(doc, str(self.path))  # raises before anything is written
        # a temp name of this process's own: two writers never rename each other's file
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{id(self):x}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.doc = back

    def mutate(self, change: Callable[[LedgerDoc], T], *, fenced: bool = True) -> T:
        """Apply ``change`` to the ledger on disk, under the file lock, and save.

        Args:
            change: called with the document as read under the lock; changes it in place.
            fenced: check first that this process still holds the migration (when it has
                claimed it); :meth:`claim` itself writes unfenced.

        Raises:
            SupersededError: another attempt holds the migration now; nothing was written.
            LedgerFormatError: the file on disk cannot be read, or the change would make the
                document invalid; nothing was written.
        """
        if not self.persist:
            # on a copy, validated as a write would be: a refused change leaves the snapshot as it was
            doc = self.doc.model_copy(deep=True)
            out = change(doc)
            self.doc = dump(doc, str(self.path))[1]
            return out
        with self._flocked():
            doc = self._read() if self.path.exists() else self.doc
            if fenced:
                self._check_fence(doc)
            out = change(doc)
            self._write_unlocked(doc)
            return out

    def _check_fence(self, doc: LedgerDoc) -> None:
        if self.token is None:
            return
        holder = doc.holder
        if holder is None or holder.token != self.token:
            raise SupersededError(
                f"migration {doc.migration_id} was taken over by another run "
                f"({(holder.flow_run_id or holder.pid) if holder else 'nobody'}): this run stops and touches nothing")

    def check_holder(self) -> None:
        """Raise :class:`SupersededError` if this process no longer holds the migration."""
        if self.persist and self.path.exists():
            self._check_fence(self.refresh())

    async def _change(self, change: Callable[[LedgerDoc], T], fenced: bool = True) -> T:
        async with self._lock:
            return self.mutate(change, fenced=fenced)

    async def save(self) -> None:
        """Persist now (a no-op change under the lock)."""
        await self._change(lambda d: None)

    # ------------------------------------------------------------------ nodes
    def node(self, name: str) -> NodeRecord:
        """The record of node ``name`` in the snapshot (an empty, detached one if none yet)."""
        return self.doc.nodes.get(name) or NodeRecord()

    async def set_node(self, name: str, **fields) -> None:
        """Set fields of a node record (``zone``, ``version_before``, ``backup``...) and save.

        Raises:
            ValueError: a field :class:`NodeRecord` does not have, or a value it refuses
                (a pydantic ``ValidationError``); nothing was written.
        """
        def change(d: LedgerDoc) -> None:
            rec = d.nodes.setdefault(name, NodeRecord())
            for k, v in fields.items():
                setattr(rec, k, v)
        await self._change(change)

    def step(self, node: str, key: str) -> StepRecord | None:
        """The record of step ``key`` on ``node``, if any."""
        return self.node(node).steps.get(key)

    def step_done(self, node: str, key: str) -> bool:
        """Whether ``key`` completed on ``node`` in this migration."""
        rec = self.step(node, key)
        return rec is not None and rec.completed

    async def record_step(self, node: str, key: str, status: StepStatus, detail: str = "", *,
                          code: str | None = None, retried: int | None = None) -> None:
        """Record a step's state for a node and save (fenced: a superseded run raises here,
        before the step touches the node). ``running`` starts a new attempt.

        Args:
            code: the error code of a failure.
            retried: the number of the "retry the node" decision this result comes from.
        """
        if status not in STEP_STATES:
            raise ValueError(f"step state {status!r} is not one of {', '.join(STEP_STATES)}")

        def change(d: LedgerDoc) -> None:
            now = time.time()
            steps = d.nodes.setdefault(node, NodeRecord()).steps
            rec = steps.get(key)
            if rec is None:
                rec = steps[key] = StepRecord(status=status, started=now)
            rec.record(status, detail, code, now)
            if retried is not None:
                rec.retried = retried
        await self._change(change)

    async def record_steps(self, records, node_fields=None) -> None:
        """Record many node steps in one fenced write (the flip's barrier, all nodes at once:
        one write instead of one per node and step).

        Args:
            records: ``(node, key, status, detail, code[, retried])`` tuples, applied in order
                as :meth:`record_step` would.
            node_fields: node -> fields of its :class:`NodeRecord` to set in the same write.
        """
        records = list(records)
        for r in records:
            if r[2] not in STEP_STATES:
                raise ValueError(f"step state {r[2]!r} is not one of {', '.join(STEP_STATES)}")

        def change(d: LedgerDoc) -> None:
            now = time.time()
            for node, key, status, detail, code, *retried in records:
                steps = d.nodes.setdefault(node, NodeRecord()).steps
                rec = steps.get(key)
                if rec is None:
                    rec = steps[key] = StepRecord(status=status, started=now)
                rec.record(status, detail, code, now)
                if retried and retried[0] is not None:
                    rec.retried = retried[0]
            for node, fields in (node_fields or {}).items():
                rec = d.nodes.setdefault(node, NodeRecord())
                for k, v in fields.items():
                    setattr(rec, k, v)
        await self._change(change)

    # ------------------------------------------------------------------ cluster-wide steps
    def cluster_step_done(self, key: str) -> bool:
        """Whether the cluster-wide step ``key`` (``phase:wave:kind:args``) completed."""
        rec = self.doc.cluster_steps.get(key)
        return rec is not None and rec.status == "done"

    async def record_cluster_step(self, key: str, status: StepStatus, detail: str = "") -> None:
        """Record a cluster-wide step (a repair launch, a gate that passed...) and save."""
        def change(d: LedgerDoc) -> None:
            d.cluster_steps[key] = ClusterStepRecord(status=status, detail=detail, at=time.time())
        await self._change(change)

    # ------------------------------------------------------------------ gates, decisions & events
    def gate(self, key: str) -> GateRecord | None:
        """The recorded outcome or decision of gate ``key``, if any."""
        return self.doc.gates.get(key)

    async def record_gate(self, key: str, **fields) -> None:
        """Record a gate's outcome or a decision (fields of :class:`GateRecord`) and save.

        Raises:
            ValueError: a field :class:`GateRecord` does not have, or a value it refuses.
        """
        def change(d: LedgerDoc) -> None:
            now = time.time()
            rec = d.gates.get(key) or GateRecord(at=now)
            for k, v in fields.items():
                setattr(rec, k, v)
            rec.at = now
            d.gates[key] = rec
        await self._change(change)

    async def event(self, kind: str, message: str, **extra) -> None:
        """Append an event (phase start/end, decisions, failures; fields of :class:`Event`) and save."""
        ev = Event(t=time.time(), kind=kind, message=message, **extra)  # a bad field raises before the lock
        await self._change(lambda d: d.events.append(ev))

    async def set(self, **fields) -> None:
        """Set top-level fields (``state``, ``plan_digest``, ``error``...) and save; ``error=None``
        clears it (a run that completes clears a stale error)."""
        def change(d: LedgerDoc) -> None:
            for k, v in fields.items():
                if k in ("format", "nodes", "gates", "cluster_steps", "events", "holder"):
                    raise ValueError(f"{k} is not set through Ledger.set")
                setattr(d, k, v)
        await self._change(change)

    # ------------------------------------------------------------------ holder (see cluster_lock)
    async def claim(self, holder: Holder, may_take: Callable[[Holder | None], str | None]) -> ClaimRefused | None:
        """Make ``holder`` the ledger's holder if ``may_take(current)`` allows it.

        ``may_take`` is called under the file lock with the current holder (or ``None``) and
        returns ``None`` to allow, or the reason to refuse. The check and the write are one
        step under the lock, so two runs can never both claim the migration.

        Returns:
            ``None`` when claimed (this ledger is then fenced by ``holder.token``), else who
            holds it and why this claim was refused.
        """
        def change(d: LedgerDoc) -> ClaimRefused | None:
            cur = d.holder
            reason = may_take(cur)
            if reason is not None:
                return ClaimRefused(cur, reason)
            if cur is not None and cur.token != holder.token:
                d.events.append(Event(
                    t=time.time(), kind="takeover",
                    message=f"run {holder.who()} took the migration over from run {cur.who()}",
                    previous=cur.info()))
            d.holder = holder.model_copy()
            return None
        async with self._lock:
            refused = self.mutate(change, fenced=False)
        if refused is None:
            self.token = holder.token
        return refused

    async def heartbeat(self) -> None:
        """Refresh the holder's heartbeat (fenced)."""
        now = time.time()

        def change(d: LedgerDoc) -> None:
            if d.holder is not None:  # fenced: it is ours
                d.holder.heartbeat = now
        await self._change(change)

    async def release_holder(self) -> None:
        """Drop this run's hold on the migration (fenced: only the holder releases)."""
        def change(d: LedgerDoc) -> None:
            d.holder = None
        await self._change(change)
        self.token = None

    # ------------------------------------------------------------------ views
    def table_rows(self, step_keys: list[str]) -> list[dict[str, str]]:
        """One row per node for a table artifact: zone, versions, backup, the node's attempts
        (how many, and which steps took more than one), each step's state (``×N``: N attempts)."""
        rows = []
        for name, rec in sorted(self.doc.nodes.items()):
            row = {"node": name, "zone": rec.zone or "", "version before": rec.version_before or "",
                   "version after": rec.running_version or "",
                   "backup": rec.backup.path if rec.backup else "",
                   "backup sha256": (rec.backup.sha256 or "")[:16] if rec.backup else "",
                   "attempts": attempts_summary(rec)}
            for key in step_keys:
                s = rec.steps.get(key)
                row[key] = (f"{s.status} {time.strftime('%H:%M:%S', time.localtime(s.when))}"
                            + (f" ×{len(s.attempts)}" if len(s.attempts) > 1 else "")) if s else ""
            rows.append(row)
        return rows

    def progress(self, total_steps: int) -> float:
        """Completed node-steps as a percentage of ``total_steps`` (0-100)."""
        done = sum(1 for rec in self.doc.nodes.values() for s in rec.steps.values() if s.completed)
        return min(100.0, 100.0 * done / max(1, total_steps))


def attempts_summary(rec: NodeRecord) -> str:
    """``7`` or ``8 (rolling-backup:backup ×2)``: a node's step attempts, and the steps that
    took more than one (a failure retried, a crashed run resumed)."""
    total = sum(max(1, len(s.attempts)) for s in rec.steps.values())
    again = [f"{k} ×{len(s.attempts)}" for k, s in rec.steps.items() if len(s.attempts) > 1]
    return f"{total}" + (f" ({', '.join(again)})" if again else "")
