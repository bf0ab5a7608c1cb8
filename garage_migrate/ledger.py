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

The format carries a version number; readers refuse a format they do not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import LedgerFormatError, SupersededError

FORMAT = 1
STEP_STATES = ("running", "done", "skipped", "failed", "would-run")


class Ledger:
    """A migration's ledger, bound to its file.

    Attributes:
        path: the ledger file.
        data: the last state read or written by this process (a snapshot: refreshed on every
            write, and by :meth:`refresh`).
        persist: ``False`` for read-only use (``plan``, dry runs): nothing is ever written.
        token: the holder token this process writes under (see the module docstring), or
            ``None`` before the run claimed the migration.
    """

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = Path(path)
        self.data = data
        self.persist = True
        self.token: str | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ life cycle
    @classmethod
    def open(cls, root: str | Path, cluster: str, migration_id: str, procedure: str,
             persist: bool = True) -> "Ledger":
        """Load the ledger of ``migration_id``, or start a new one.

        With ``persist=False`` (``garage-migrate plan``, dry runs) an existing ledger is read
        but nothing is ever written, and a missing one is not created.
        """
        path = Path(root) / cluster / migration_id / "ledger.json"
        fresh = {"format": FORMAT, "migration_id": migration_id, "cluster": cluster, "procedure": procedure,
                 "created": time.time(), "updated": time.time(), "state": "running", "nodes": {},
                 "gates": {}, "events": [], "plan_digest": None, "holder": None}
        if not persist:
            led = cls.load(path) if path.exists() else cls(path, fresh)
            led.persist = False
            return led
        led = cls(path, fresh)
        with led._flocked():
            if path.exists():
                led.data = _read(path)
            else:
                led._write_unlocked(fresh)
        return led

    @classmethod
    def load(cls, path: str | Path) -> "Ledger":
        """Read a ledger file (a snapshot; writing through it is allowed).

        Raises:
            LedgerFormatError: unknown format version.
        """
        return cls(Path(path), _read(Path(path)))

    def refresh(self) -> dict[str, Any]:
        """Read the file again (what other processes wrote since) and return the data."""
        if self.path.exists():
            self.data = _read(self.path)
        return self.data

    @contextlib.contextmanager
    def _flocked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_name("ledger.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the lock

    def _write_unlocked(self, data: dict[str, Any]) -> None:
        data["updated"] = time.time()
        # a temp name of this process's own: two writers never rename each other's file
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{id(self):x}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.data = data

    def mutate(self, change: Callable[[dict[str, Any]], Any], *, fenced: bool = True) -> Any:
        """Apply ``change`` to the ledger on disk, under the file lock, and save.

        Args:
            change: called with the data as read under the lock; mutates it in place.
            fenced: check first that this process still holds the migration (when it has
                claimed it); :meth:`claim` itself writes unfenced.

        Raises:
            SupersededError: another attempt holds the migration now; nothing was written.
        """
        if not self.persist:
            return change(self.data)
        with self._flocked():
            data = _read(self.path) if self.path.exists() else self.data
            if fenced:
                self._check_fence(data)
            out = change(data)
            self._write_unlocked(data)
            return out

    def _check_fence(self, data: dict[str, Any]) -> None:
        if self.token is None:
            return
        holder = data.get("holder") or {}
        if holder.get("token") != self.token:
            raise SupersededError(
                f"migration {data.get('migration_id')} was taken over by another run "
                f"({holder.get('flow_run_id') or holder.get('pid') or 'nobody'}): this run stops and touches nothing")

    def check_holder(self) -> None:
        """Raise :class:`SupersededError` if this process no longer holds the migration."""
        if self.persist and self.path.exists():
            self._check_fence(self.refresh())

    async def _change(self, change: Callable[[dict[str, Any]], Any], fenced: bool = True) -> Any:
        async with self._lock:
            return self.mutate(change, fenced=fenced)

    async def save(self) -> None:
        """Persist now (a no-op change under the lock)."""
        await self._change(lambda d: None)

    # ------------------------------------------------------------------ nodes
    def node(self, name: str) -> dict:
        """The record of node ``name`` in the snapshot (an empty one if none yet)."""
        return self.data["nodes"].get(name) or {"steps": {}}

    async def set_node(self, name: str, **fields) -> None:
        """Set fields of a node record (zone, version_before, backup, ...) and save."""
        await self._change(lambda d: d["nodes"].setdefault(name, {"steps": {}}).update(fields))

    def step(self, node: str, key: str) -> dict | None:
        """The record of step ``key`` on ``node``, if any."""
        return self.node(node)["steps"].get(key)

    def step_done(self, node: str, key: str) -> bool:
        """Whether ``key`` completed on ``node`` in this migration."""
        rec = self.step(node, key)
        return rec is not None and rec["status"] in ("done", "skipped")

    async def record_step(self, node: str, key: str, status: str, detail: str = "", **extra) -> None:
        """Record a step's state for a node and save (fenced: a superseded run raises here,
        before the step touches the node)."""
        assert status in STEP_STATES, status

        def change(d):
            steps = d["nodes"].setdefault(node, {"steps": {}})["steps"]
            rec = steps.setdefault(key, {"started": time.time()})
            if status == "running":
                rec["started"] = time.time()
            rec.update(status=status, detail=detail, finished=None if status == "running" else time.time(), **extra)
        await self._change(change)

    # ------------------------------------------------------------------ cluster-wide steps
    def cluster_step_done(self, key: str) -> bool:
        """Whether the cluster-wide step ``key`` (``phase:wave:kind:args``) completed."""
        return (self.data.get("cluster_steps") or {}).get(key, {}).get("status") == "done"

    async def record_cluster_step(self, key: str, status: str, detail: str = "") -> None:
        """Record a cluster-wide step (a repair launch, a gate that passed...) and save."""
        await self._change(lambda d: d.setdefault("cluster_steps", {}).__setitem__(
            key, {"status": status, "detail": detail, "at": time.time()}))

    # ------------------------------------------------------------------ gates, decisions & events
    def gate(self, key: str) -> dict | None:
        """The recorded outcome or decision of gate ``key``, if any."""
        return self.data["gates"].get(key)

    async def record_gate(self, key: str, **fields) -> None:
        """Record a gate's outcome or a decision and save."""
        await self._change(lambda d: d["gates"].setdefault(key, {}).update(fields, at=time.time()))

    async def clear_decision(self, key: str) -> None:
        """Forget the decision recorded for ``key`` (it was given for another plan)."""
        def change(d):
            rec = d["gates"].get(key)
            if rec:
                for k in ("decision", "by", "note", "plan_digest", "flow_run_id", "decided_at"):
                    rec.pop(k, None)
        await self._change(change)

    async def event(self, kind: str, message: str, **extra) -> None:
        """Append an event (phase start/end, decisions, failures) and save."""
        await self._change(lambda d: d["events"].append({"t": time.time(), "kind": kind, "message": message, **extra}))

    async def set(self, **fields) -> None:
        """Set top-level fields (state, plan_digest, ...) and save; a field set to ``None``
        is removed (a run that completes clears a stale ``error``)."""
        def change(d):
            for k, v in fields.items():
                if v is None and k not in ("plan_digest", "holder"):
                    d.pop(k, None)
                else:
                    d[k] = v
        await self._change(change)

    # ------------------------------------------------------------------ holder (see cluster_lock)
    async def claim(self, holder: dict[str, Any], may_take: Callable[[dict | None], str | None]) -> dict | None:
        """Make ``holder`` the ledger's holder if ``may_take(current)`` allows it.

        ``may_take`` is called under the file lock with the current holder record (or
        ``None``) and returns ``None`` to allow, or the reason to refuse. The check and the
        write are one step under the lock, so two runs can never both claim the migration.

        Returns:
            ``None`` when claimed (this ledger is then fenced by ``holder["token"]``), else the
            current holder, with the refusal reason under ``"refused"``.
        """
        def change(d):
            cur = d.get("holder")
            reason = may_take(cur)
            if reason is not None:
                return dict(cur or {}, refused=reason)
            if cur and cur.get("token") != holder["token"]:
                d.setdefault("events", []).append({
                    "t": time.time(), "kind": "takeover",
                    "message": f"run {holder.get('flow_run_id') or holder.get('pid')} took the migration over "
                               f"from run {cur.get('flow_run_id') or cur.get('pid')}",
                    "previous": {k: cur.get(k) for k in ("flow_run_id", "controller", "pid", "heartbeat")}})
            d["holder"] = holder
            return None
        async with self._lock:
            refused = self.mutate(change, fenced=False)
        if refused is None:
            self.token = holder["token"]
        return refused

    async def heartbeat(self, **fields) -> None:
        """Refresh the holder's heartbeat (fenced)."""
        now = time.time()
        await self._change(lambda d: d["holder"].update(heartbeat=now, **fields))

    async def release_holder(self) -> None:
        """Drop this run's hold on the migration (fenced: only the holder releases)."""
        def change(d):
            d["holder"] = None
        await self._change(change)
        self.token = None

    # ------------------------------------------------------------------ views
    def table_rows(self, step_keys: list[str]) -> list[dict]:
        """One row per node for a table artifact: zone, versions, backup, each step's state."""
        rows = []
        for name, rec in sorted(self.data["nodes"].items()):
            row = {"node": name, "zone": rec.get("zone", ""), "version before": rec.get("version_before", ""),
                   "version after": rec.get("running_version", ""),
                   "backup": (rec.get("backup") or {}).get("path", ""),
                   "backup sha256": ((rec.get("backup") or {}).get("sha256") or "")[:16]}
            for key in step_keys:
                s = rec["steps"].get(key)
                row[key] = f"{s['status']} {time.strftime('%H:%M:%S', time.localtime(s.get('finished') or s['started']))}" if s else ""
            rows.append(row)
        return rows

    def progress(self, total_steps: int) -> float:
        """Completed node-steps as a percentage of ``total_steps`` (0-100)."""
        done = sum(1 for rec in self.data["nodes"].values() for s in rec["steps"].values()
                   if s["status"] in ("done", "skipped"))
        return min(100.0, 100.0 * done / max(1, total_steps))


def _read(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise LedgerFormatError(f"{path}: ledger format {data.get('format')!r}, this version reads {FORMAT}")
    data.setdefault("holder", None)
    return data
