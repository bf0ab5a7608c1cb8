"""The persisted migration ledger: what happened to every node, step by step.

One JSON file per migration, ``<backup_root>/<cluster>/<migration id>/ledger.json``, written
through a temp file, fsync and an atomic rename after every change, so a crash leaves either
the previous or the next state, never half of one. A later run (a flow-run retry, a new run of
the same migration id, the CLI's ``status``) reads it back: steps consult it before acting, and
gate decisions taken by a person are never asked again.

The format carries a version number; readers refuse a format they do not know.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

FORMAT = 1
STEP_STATES = ("running", "done", "skipped", "failed", "would-run")


class LedgerFormatError(Exception):
    """The ledger file has a format this version does not understand."""


class Ledger:
    """A migration's ledger, bound to its file."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = Path(path)
        self.data = data
        self.persist = True
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ life cycle
    @classmethod
    def open(cls, root: str | Path, cluster: str, migration_id: str, procedure: str,
             persist: bool = True) -> "Ledger":
        """Load the ledger of ``migration_id``, or start a new one.

        With ``persist=False`` (``garage-migrate plan``) an existing ledger is read but nothing
        is ever written.
        """
        path = Path(root) / cluster / migration_id / "ledger.json"
        if path.exists():
            led = cls.load(path)
            led.persist = persist
            return led
        data = {"format": FORMAT, "migration_id": migration_id, "cluster": cluster, "procedure": procedure,
                "created": time.time(), "updated": time.time(), "state": "running", "nodes": {},
                "gates": {}, "events": [], "plan_digest": None}
        led = cls(path, data)
        led.persist = persist
        led._write()
        return led

    @classmethod
    def load(cls, path: str | Path) -> "Ledger":
        """Read a ledger file.

        Raises:
            LedgerFormatError: unknown format version.
        """
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise LedgerFormatError(f"{path}: ledger format {data.get('format')!r}, this version reads {FORMAT}")
        return cls(Path(path), data)

    def _write(self) -> None:
        self.data["updated"] = time.time()
        if not self.persist:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(self.data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    async def save(self) -> None:
        """Persist now (steps call the helpers below, which save)."""
        async with self._lock:
            self._write()

    # ------------------------------------------------------------------ nodes
    def node(self, name: str) -> dict:
        """The mutable record of node ``name`` (created on first use)."""
        return self.data["nodes"].setdefault(name, {"steps": {}})

    async def set_node(self, name: str, **fields) -> None:
        """Set fields of a node record (zone, version_before, backup, ...) and save."""
        async with self._lock:
            self.node(name).update(fields)
            self._write()

    def step(self, node: str, key: str) -> dict | None:
        """The record of step ``key`` on ``node``, if any."""
        return self.node(node)["steps"].get(key)

    def step_done(self, node: str, key: str) -> bool:
        """Whether ``key`` completed on ``node`` in this migration."""
        rec = self.step(node, key)
        return rec is not None and rec["status"] in ("done", "skipped")

    async def record_step(self, node: str, key: str, status: str, detail: str = "", **extra) -> None:
        """Record a step's state for a node and save."""
        assert status in STEP_STATES, status
        async with self._lock:
            steps = self.node(node)["steps"]
            rec = steps.setdefault(key, {"started": time.time()})
            if status == "running":
                rec["started"] = time.time()
            rec.update(status=status, detail=detail, finished=None if status == "running" else time.time(), **extra)
            self._write()

    # ------------------------------------------------------------------ gates & events
    def gate(self, key: str) -> dict | None:
        """The recorded decision of gate ``key``, if any."""
        return self.data["gates"].get(key)

    async def record_gate(self, key: str, **fields) -> None:
        """Record a gate's outcome or a person's decision and save."""
        async with self._lock:
            self.data["gates"].setdefault(key, {}).update(fields, at=time.time())
            self._write()

    async def event(self, kind: str, message: str, **extra) -> None:
        """Append an event (phase start/end, decisions, failures) and save."""
        async with self._lock:
            self.data["events"].append({"t": time.time(), "kind": kind, "message": message, **extra})
            self._write()

    async def set(self, **fields) -> None:
        """Set top-level fields (state, plan_digest, ...) and save."""
        async with self._lock:
            self.data.update(fields)
            self._write()

    # ------------------------------------------------------------------ views
    def table_rows(self, step_keys: list[str]) -> list[dict]:
        """One row per node for a table artifact: zone, versions, backup, each step's state."""
        rows = []
        for name, rec in sorted(self.data["nodes"].items()):
            row = {"node": name, "zone": rec.get("zone", ""), "version before": rec.get("version_before", ""),
                   "version after": rec.get("version_after", ""),
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
