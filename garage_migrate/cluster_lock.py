"""One migration per cluster, whatever Prefect does: the cluster lock.

The lock belongs to a **migration** (its id), not to a flow run. It is taken when the
migration starts, held through pauses, failures and crashes, and released only when the
migration is done or rolled back: a failed migration leaves the cluster half-way, and no other
migration may start on it.

It lives in two places, so that every controller and every Prefect server sees it:

- **On the cluster**: a lock record on every node, a symlink beside the node's metadata dir
  (``<metadata_dir>.garage-migrate.lock``) whose target is the record (migration id,
  procedure, controller, since). ``symlink(2)`` is an atomic create-if-absent, so taking a
  node is a compare-and-set that cannot race. Nodes are taken in a fixed order (sorted by
  name); when one is held by another migration, the ones this attempt took are released again
  and the migration is refused.
- **In the ledger**: the *holder*, the run of the migration that is executing it (a token of
  the process, its flow run, controller host, pid, since, last heartbeat). A run of the same
  migration takes the migration over without ceremony when the holder is gone: a new attempt
  of the same flow run (a Prefect retry), a holder whose flow run is in a terminal state, a
  holder process that no longer exists on this controller, or a heartbeat older than
  :data:`STALE_AFTER_S`. Any other case is refused. The ledger is then fenced by the token:
  a superseded process can no longer write it, so it can no longer start a step.

Breaking another migration's lock is never silent: :func:`break_lock` (``garage-migrate
unlock``) checks that its holder is no longer running and records the choice in its ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import posixpath
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

from . import commands as C
from .errors import ClusterLockedError, GarageMigrateError, SupersededError
from .ledger import Ledger
from .ledger_model import Event, Holder, HolderInfo

__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "ClusterLock", "LockRecord", "RunIdentity", "break_lock",
           "holder_gone", "lock_path", "read_records"]

#: Seconds between two heartbeats of the holder (also while it is paused).
HEARTBEAT_S = 10.0
#: A holder whose last heartbeat is older than this is gone (its process died without a trace).
STALE_AFTER_S = 60.0
#: Prefect state types after which a flow run will never act again by itself.
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
_RECORD_PREFIX = "garage-migrate-lock "

#: ``flow_run_id -> Prefect state type`` (or ``None`` when unknown); supplied by the Prefect layer.
RunStateLookup = Callable[[str], Awaitable[str | None]]


def lock_path(metadata_dir: str) -> str:
    """The node's lock record: beside the metadata dir, never inside it (backups tar that)."""
    return metadata_dir.rstrip("/") + ".garage-migrate.lock"


@dataclass(frozen=True)
class RunIdentity:
    """Who is running: one per process that executes (part of) a migration.

    Attributes:
        token: unique per process attempt (fences the ledger).
        flow_run_id: the Prefect flow run, if any.
        controller: this host's name.
        pid: this process.
        kind: ``migration``, ``rollback``, ``cli``...
    """

    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    flow_run_id: str | None = None
    controller: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    kind: str = "migration"

    def holder(self) -> Holder:
        """The ledger's holder record for this run (with ``since`` and ``heartbeat`` now)."""
        now = time.time()
        return Holder(**asdict(self), since=now, heartbeat=now)


@dataclass(frozen=True)
class LockRecord:
    """A node's lock record: which migration holds the cluster."""

    migration_id: str
    procedure: str
    controller: str
    since: float
    ledger: str = ""

    def render(self) -> str:
        body = json.dumps({"m": self.migration_id, "p": self.procedure, "c": self.controller,
                           "s": round(self.since, 3), "l": self.ledger}, separators=(",", ":"), sort_keys=True)
        return _RECORD_PREFIX + body

    @classmethod
    def parse(cls, text: str) -> "LockRecord":
        """Parse a record; a text that is not ours gives ``migration_id="?"`` (held by something else)."""
        text = text.strip()
        if text.startswith(_RECORD_PREFIX):
            try:
                d = json.loads(text[len(_RECORD_PREFIX):])
                return cls(str(d["m"]), str(d.get("p", "")), str(d.get("c", "")), float(d.get("s", 0)),
                           str(d.get("l", "")))
            except (ValueError, KeyError, TypeError):
                pass
        return cls("?", "", "", 0.0, text[:200])

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since)) if self.since else "?"
        return (f"migration {self.migration_id} ({self.procedure or '?'} procedure) from controller "
                f"{self.controller or '?'} since {when}" + (f", ledger {self.ledger}" if self.ledger else ""))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_gone(holder: HolderInfo | None, *, run_state: str | None = None, now: float | None = None,
                stale_after: float = STALE_AFTER_S, here: str | None = None) -> str | None:
    """Why ``holder`` is gone (a string), or ``None`` if it may still be running.

    Args:
        holder: the ledger's holder record.
        run_state: the Prefect state type of the holder's flow run, when known.
        now: the time (injectable for tests).
        stale_after: heartbeat age after which the holder is gone.
        here: this controller's host name (default: ``socket.gethostname()``).
    """
    if holder is None:
        return "no holder"
    now = time.time() if now is None else now
    if run_state in TERMINAL_STATES:
        return f"its flow run is {run_state.lower()}"
    here = socket.gethostname() if here is None else here
    if holder.controller == here and holder.pid and not _pid_alive(holder.pid):
        return f"its process {holder.pid} on {here} no longer exists"
    age = now - (holder.heartbeat or 0.0)
    if age > stale_after:
        return f"its last heartbeat is {age:.0f} s old (more than {stale_after:.0f} s)"
    return None


def describe_holder(holder: HolderInfo, now: float | None = None) -> str:
    """``run <flow run> on <host> (pid N), heartbeat Ns ago``."""
    now = time.time() if now is None else now
    age = now - (holder.heartbeat or 0.0)
    run = holder.flow_run_id or "(no flow run)"
    return (f"{holder.kind or 'run'} {run} on {holder.controller or '?'} (pid {holder.pid or '?'}), "
            f"last heartbeat {age:.0f} s ago")


async def read_records(shells, nodes: list[tuple[str, str, bool]]) -> dict[str, LockRecord | None]:
    """The lock record of every node: ``(name, lock path, sudo)`` -> record or ``None``."""
    async def one(name: str, path: str, sudo: bool):
        res = await shells(name).run(C.lock_record_read(path, sudo=sudo), check=False)
        return LockRecord.parse(res.stdout) if res.returncode == 0 and res.stdout.strip() else None
    got = await asyncio.gather(*(one(*n) for n in nodes))
    return {n[0]: r for n, r in zip(nodes, got)}


def locked_by(other: LockRecord, where: str, migration_id: str, node: str) -> ClusterLockedError:
    """The refusal of ``migration_id`` by ``other``'s lock record (found at ``where``)."""
    return ClusterLockedError(
        f"cluster is locked by {other.describe()} ({where}); this migration ({migration_id}) was refused "
        f"and changed nothing. When that migration is done or rolled back the lock is released; if its run "
        f"is gone for good, `garage-migrate unlock --migration-id {other.migration_id}` breaks it",
        node=node, holder=asdict(other))


class ClusterLock:
    """The cluster lock of one migration, as held by one run.

    Args:
        shells: ``name -> NodeShell``.
        nodes: ``(name, lock path, sudo)`` of every node of the cluster.
        ledger: the migration's ledger.
        procedure: the migration's procedure (written in the node records).
        identity: this run.
        run_state: how to ask Prefect for a flow run's state (``None``: no Prefect).
        log: where to say what happens.
        stale_after: see :data:`STALE_AFTER_S`.
    """

    def __init__(self, shells, nodes: list[tuple[str, str, bool]], ledger: Ledger, procedure: str,
                 identity: RunIdentity, run_state: RunStateLookup | None = None, log=None,
                 stale_after: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S):
        self.shells = shells
        self.nodes = sorted(nodes)  # the fixed order every controller takes them in
        self.ledger = ledger
        self.procedure = procedure
        self.identity = identity
        self.run_state = run_state
        self.log = log
        self.stale_after = stale_after
        self.heartbeat_s = heartbeat_s
        self.superseded = asyncio.Event()
        self._beat: asyncio.Task | None = None

    @property
    def migration_id(self) -> str:
        return self.ledger.doc.migration_id

    def _info(self, msg: str, *args) -> None:
        if self.log is not None:
            self.log.info(msg, *args)

    # ------------------------------------------------------------------ taking it
    async def acquire(self) -> None:
        """Hold the migration (ledger) and the cluster (node records), or raise.

        Raises:
            ClusterLockedError: a live run of this migration, or another migration, holds it.
                Nothing on any node was changed (the records this call took are released).
        """
        await self._claim_ledger()
        try:
            await self._take_nodes()
        except BaseException:
            with contextlib.suppress(GarageMigrateError):
                await self.ledger.release_holder()
            raise
        self._beat = asyncio.create_task(self._heartbeats(), name="cluster-lock-heartbeat")

    async def _claim_ledger(self) -> None:
        mine = self.identity.holder()
        cur = self.ledger.refresh().holder
        state = None
        if cur and cur.token != mine.token and cur.flow_run_id and self.run_state is not None:
            with contextlib.suppress(Exception):  # Prefect unreachable: decide on the heartbeat
                state = await self.run_state(cur.flow_run_id)
        seen_token = cur.token if cur else None

        def may_take(current: Holder | None) -> str | None:
            if current is None or current.token == mine.token:
                return None
            if current.token != seen_token:
                return "the holder changed while this run was checking it"
            if mine.flow_run_id and current.flow_run_id == mine.flow_run_id:
                return None  # a new attempt of the same flow run: Prefect ended the previous one
            if holder_gone(current, run_state=state, stale_after=self.stale_after) is not None:
                return None
            return f"{describe_holder(current)} is still running it"

        refused = await self.ledger.claim(mine, may_take)
        if refused is not None:
            raise ClusterLockedError(
                f"migration {self.migration_id} is held by another run: {refused.reason}; "
                f"this run was refused and touched nothing", holder=refused.as_dict())
        gone = holder_gone(cur, run_state=state, stale_after=self.stale_after) if cur else None
        if cur and cur.token != mine.token:
            why = "a new attempt of the same flow run" if cur.flow_run_id and cur.flow_run_id == mine.flow_run_id else gone
            self._info("took migration %s over from %s (%s)", self.migration_id, describe_holder(cur), why)

    async def _take_nodes(self) -> None:
        rec = LockRecord(self.migration_id, self.procedure, self.identity.controller, time.time(),
                         str(self.ledger.path))
        taken: list[tuple[str, str, bool]] = []
        try:
            await self._take_each(rec, taken)
        except BaseException:
            # never leave half a lock behind: release what this attempt took (best effort; a
            # record left on an unreachable node names this migration and is re-entrant)
            for t in reversed(taken):
                with contextlib.suppress(Exception):
                    await self.shells(t[0]).run(C.lock_record_remove(t[1], sudo=t[2]), check=False)
            raise
        if taken:
            self._info("cluster lock taken for migration %s on %s", self.migration_id,
                       ", ".join(t[0] for t in taken))

    async def _take_each(self, rec: LockRecord, taken: list[tuple[str, str, bool]]) -> None:
        for name, path, sudo in self.nodes:
            sh = self.shells(name)
            res = await sh.run(C.lock_record_take(rec.render(), path, sudo=sudo), check=False)
            if res.returncode == 0:
                taken.append((name, path, sudo))
                continue
            cur = await sh.run(C.lock_record_read(path, sudo=sudo), check=False)
            other = LockRecord.parse(cur.stdout) if cur.returncode == 0 and cur.stdout.strip() else None
            if other is not None and other.migration_id == self.migration_id:
                continue  # ours already (a resumed run, a takeover)
            if other is None:
                raise ClusterLockedError(
                    f"cannot take the cluster lock on {name}: {path}: {(res.stderr or cur.stderr).strip()}",
                    node=name, holder={})
            raise locked_by(other, f"lock record {path} on {name}", self.migration_id, name)

    # ------------------------------------------------------------------ holding it
    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.ledger.heartbeat()
            except SupersededError as exc:
                self._info("%s", exc)
                self.superseded.set()
                return
            except (OSError, ValueError) as exc:  # a full disk must not kill the run; staleness will show
                self._info("heartbeat not written: %s", exc)

    def check(self) -> None:
        """Raise :class:`SupersededError` if another attempt took the migration over."""
        if self.superseded.is_set():
            raise SupersededError(f"migration {self.migration_id} was taken over by another run")
        self.ledger.check_holder()

    async def stop_heartbeats(self) -> None:
        """Stop the heartbeat task (the hold itself stays: a failed migration keeps the cluster)."""
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._beat
            self._beat = None

    async def release(self) -> None:
        """The migration is done or rolled back: drop the node records and the ledger's holder."""
        await self.stop_heartbeats()
        self.ledger.check_holder()
        for name, path, sudo in reversed(self.nodes):
            sh = self.shells(name)
            cur = await sh.run(C.lock_record_read(path, sudo=sudo), check=False)
            if cur.returncode == 0 and LockRecord.parse(cur.stdout).migration_id == self.migration_id:
                await sh.run(C.lock_record_remove(path, sudo=sudo), check=True)
        await self.ledger.release_holder()
        self._info("cluster lock of migration %s released", self.migration_id)


async def break_lock(shells, nodes: list[tuple[str, str, bool]], migration_id: str, ledger: Ledger | None,
                     by: str, run_state: str | None = None, now: float | None = None,
                     stale_after: float = STALE_AFTER_S) -> list[str]:
    """Break migration ``migration_id``'s cluster lock (``garage-migrate unlock``).

    Refused while its holder may still run (see :func:`holder_gone`). The choice is recorded
    in that migration's ledger (when there is one) before any record is removed.

    Returns:
        The nodes whose record was removed.

    Raises:
        ClusterLockedError: the holder may still be running, or the records name another migration.
    """
    records = await read_records(shells, nodes)
    held = {n: r for n, r in records.items() if r is not None}
    if not held:
        return []
    others = {r.migration_id for r in held.values()} - {migration_id}
    if others:
        raise ClusterLockedError(f"the cluster is locked by {', '.join(sorted(others))}, not by {migration_id}",
                                 holder={"migrations": sorted(others)})
    holder = None
    if ledger is not None:
        holder = ledger.refresh().holder
        if holder is not None:
            why = holder_gone(holder, run_state=run_state, now=now, stale_after=stale_after)
            if why is None:
                raise ClusterLockedError(
                    f"migration {migration_id} is still held by {describe_holder(holder)}: not unlocked "
                    f"(stop or cancel that run first, or wait {stale_after:.0f} s after its last heartbeat)",
                    holder=holder.model_dump())

        def change(d):
            d.holder = None
            d.events.append(Event(t=time.time(), kind="unlock", message=f"cluster lock broken by {by}",
                                  previous=holder.info() if holder else None, nodes=sorted(held)))
        ledger.mutate(change, fenced=False)
    removed = []
    for name, path, sudo in sorted(nodes):
        if name in held:
            await shells(name).run(C.lock_record_remove(path, sudo=sudo), check=True)
            removed.append(name)
    return removed


def lock_nodes(inv, facts) -> list[tuple[str, str, bool]]:
    """``(name, lock path, sudo)`` for every node of ``facts`` (lock path from its metadata dir)."""
    return [(n.name, lock_path(posixpath.normpath(n.config.metadata_dir)), inv.node(n.name).ctx.sudo)
            for n in facts.nodes]
