"""Background workers of the simulated daemon: their identities, states and counters.

The daemon's tick loop does the work; this module only models what ``worker list`` /
``worker info`` show, with version-specific names and TIDs (ref 2.11; late 1.1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .personality import Personality
from .store import INSERT_QUEUE_TREE

if TYPE_CHECKING:
    from .daemon import Daemon

EPOCH_MS_FMT = "%Y-%m-%dT%H:%M:%S"

TABLES_08 = ("bucket_v2", "bucket_alias", "key", "object", "bucket_object_counter",
             "version", "block_ref", "k2v_item", "k2v_index_counter_v2")
TABLES_07 = ("bucket_v2", "bucket_alias", "key", "object", "version", "block_ref")
REPAIR_TABLES = ("bucket_v2", "object", "version", "block_ref", "key")  # ref 3.1
STATS_TABLES = ("bucket_v2", "key", "object", "version", "block_ref")  # ref 2.10
COUNTER_TABLES = ("bucket_object_counter", "k2v_index_counter_v2")  # IndexCounter tables


def rfc3339_ms(t: float) -> str:
    """RFC 3339 with milliseconds and ``Z``, as Garage prints scrub times."""
    return time.strftime(EPOCH_MS_FMT, time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def tables_for(p: Personality) -> tuple[str, ...]:
    """The tables a version opens."""
    return TABLES_08 if p.has_counters else TABLES_07


@dataclass
class Worker:
    """One background worker: what the daemon tracks and what ``worker list`` / ``info`` print.

    The same record serves both sides: the daemon updates it and sends ``to_dict()`` over RPC,
    the CLI rebuilds it with ``from_dict()`` and :mod:`.render` formats it.

    Attributes:
        tid: task ID (spawn order, see :class:`WorkerSet`).
        name: worker name.
        state: ``Busy``, ``Idle``, ``Done`` or ``Throttled``.
        throttle_secs: the pause of a Throttled worker (``Thr:1.500`` in 0.8.0).
        tranq: tranquility, if the worker has one (0.8.1+ Tranq column).
        progress: progress string (0.8.1+ Done column), e.g. ``12.34%``.
        queue: queue length (0.8.1+ Queue column).
        errors: total errors.
        consecutive_errors: consecutive errors.
        last_error_secs_ago: seconds since the last error (as the CLI received it).
        last_error: the last error message.
        info: 0.8.0 free-text info lines, printed under the Name column.
        message: ``worker info`` free-text lines.
        persistent_errors: errored blocks (resync) or corruptions found (scrub), late 1.2.
        last_error_time: when the last error happened (daemon side; ``time.time()``).
    """

    tid: int
    name: str
    state: str = "Idle"  # Busy | Idle | Done | Throttled
    throttle_secs: float = 0.0
    tranq: int | None = None
    progress: str | None = None
    queue: int | None = None
    errors: int = 0
    consecutive_errors: int = 0
    last_error_secs_ago: float | None = None
    last_error: str | None = None
    info: tuple[str, ...] | list[str] = ()
    message: tuple[str, ...] | list[str] = ()
    persistent_errors: int | None = None
    last_error_time: float | None = field(default=None, compare=False)

    def record_error(self, msg: str) -> None:
        """Count an error, as Garage's worker runner does."""
        self.errors += 1
        self.consecutive_errors += 1
        self.last_error = msg
        self.last_error_time = time.time()

    def record_success(self) -> None:
        """A successful iteration resets the consecutive-error count."""
        self.consecutive_errors = 0

    def to_dict(self) -> dict:
        """JSON form sent to the CLI (the error time becomes seconds ago)."""
        now = time.time()
        return {
            "tid": self.tid, "name": self.name, "state": self.state,
            "throttle_secs": self.throttle_secs, "tranq": self.tranq,
            "progress": self.progress, "queue": self.queue, "errors": self.errors,
            "consecutive_errors": self.consecutive_errors, "last_error": self.last_error,
            "last_error_secs_ago": None if self.last_error_time is None else now - self.last_error_time,
            "info": list(self.info), "message": list(self.message),
            "persistent_errors": self.persistent_errors,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Worker":
        """The record the CLI received (inverse of :meth:`to_dict`)."""
        names = ("tid", "name", "state", "throttle_secs", "tranq", "progress", "queue", "errors",
                 "consecutive_errors", "last_error_secs_ago", "last_error", "persistent_errors")
        return cls(**{k: d[k] for k in names if k in d}, info=tuple(d.get("info", ())),
                   message=tuple(d.get("message", ())))


class WorkerSet:
    """All workers of a daemon, created in the version's spawn order so TIDs match.

    The order differs between versions (source-audit: 0.8.0's ``model/garage.rs`` opens the
    tables in another order than 0.8.7's ``spawn_workers``): nothing may rely on a TID, the
    orchestrator matches workers by name.
    """

    def __init__(self, p: Personality, n_resync_workers: int = 4):
        self.p = p
        self.by_name: dict[str, Worker] = {}
        self._next_tid = 1
        if p.job_workers:
            for i in range(16):
                self.add(f"Job worker #{i}")
        for i in range(1, n_resync_workers + 1):
            self.add(f"Block resync worker #{i}")
        self.add("Block scrub worker")
        for table in p.table_spawn_order or tables_for(p):
            self.add(f"{table} {p.merkle_worker_suffix}")
            self.add(f"{table} sync")
            self.add(f"{table} GC")
            if p.queue_workers:
                self.add(f"{table} queue")
            if table in COUNTER_TABLES and p.has_counters and not p.queue_workers:
                # 0.8.0's IndexCounter spawns its propagator right after its table (index_counter.rs)
                self.add(f"{table} index counter propagator")

    def add(self, name: str) -> Worker:
        """Spawn a worker with the next TID (a repair spawned twice replaces its entry)."""
        w = Worker(self._next_tid, name)
        self._next_tid += 1
        self.by_name[name] = w
        return w

    def get(self, name: str) -> Worker | None:
        """The worker named ``name``."""
        return self.by_name.get(name)

    def merkle(self, table: str) -> Worker:
        """The Merkle updater of ``table``."""
        return self.by_name[f"{table} {self.p.merkle_worker_suffix}"]

    def all(self) -> list[Worker]:
        """Every worker, in TID order."""
        return sorted(self.by_name.values(), key=lambda w: w.tid)


def refresh_view(node: "Daemon") -> None:
    """Update every worker record from the node's queues and repairs, as ``worker list`` shows them."""
    todo = node.store.tree("merkle_todo")
    gc = node.store.tree("gc_todo")
    stuck = node.faults.find("queues-stuck") is not None
    for table in tables_for(node.p):
        m = node.workers.merkle(table)
        m.queue = todo.get(table, 0)
        m.state = "Busy" if m.queue else "Idle"
        m.info = [f"{m.queue} items in queue"] if m.queue else []
        s = node.workers.get(f"{table} sync")
        left = len(node.sync_todo.get(table, []))
        s.queue = left
        if s.consecutive_errors and not left:
            # after an error the runner throttles the worker 1.5^(n-1) s (at most 1.5^10), then
            # calls work() again; with nothing left that returns Ok(Idle), which resets the count
            # (util/background/worker.rs, read at garage 306a7437; assumed the same in 0.8.x).
            # The failed partition itself waits for the next full sync.
            delay = 1.5 ** min(10, s.consecutive_errors - 1)
            if s.last_error_time is not None and time.time() - s.last_error_time >= delay:
                s.record_success()
        s.state = "Throttled" if s.consecutive_errors else "Busy" if left else "Idle"
        s.throttle_secs = 1.5 ** min(10, s.consecutive_errors - 1) if s.consecutive_errors else 0.0
        s.info = [f"{left} partitions remaining"] if left else []
        g = node.workers.get(f"{table} GC")
        g.queue = len(gc.get(table, []))
        g.state = "Idle"
        g.info = [f"{g.queue} items in queue"] if g.queue else []
        qw = node.workers.get(f"{table} queue")
        if qw is not None:
            qlen = len(node.store.tree(INSERT_QUEUE_TREE)) if table == "bucket_object_counter" else 0
            qw.queue = qlen
            qw.state = ("Throttled" if qw.consecutive_errors else "Busy") if qlen else "Idle"
    rq = len(node.store.tree("block_local_resync_queue"))
    errs = len(node.store.tree("block_local_resync_errors"))
    for i in range(1, 5):
        w = node.workers.get(f"Block resync worker #{i}")
        active = i <= node.resync_cfg["n_workers"]
        w.tranq = node.resync_cfg["tranquility"] if active else None
        w.queue = rq if active else None
        busy = active and rq > 0 and not stuck
        # late 0.8: resync shows Busy* during normal tranquilized work (late 1.1)
        w.state = ("Throttled" if node.p.worker_list_table else "Busy") if busy else "Idle"
        w.throttle_secs = 0.5 if busy else 0.0
        w.persistent_errors = errs if active else None
        if not active:
            w.info = ["(unused)"]
            w.message = ["This worker is currently disabled"]
        else:
            info = f"tranquility = {node.resync_cfg['tranquility']}, {rq} blocks in queue" if rq else ""
            if errs:
                info += (", " if info else "") + f"{errs} blocks in error state"
            w.info = [info] if info else []
    sc = node.workers.get("Block scrub worker")
    prog = node.scrub.get("progress")
    sc.tranq = node.scrub.get("tranquility", 4)
    corr = node.scrub.get("corruptions_detected", 0)
    sc.persistent_errors = corr
    if prog is not None:
        paused = time.time() < node.scrub.get("paused_until", 0)
        sc.state = "Idle" if paused else ("Throttled" if node.p.worker_list_table else "Busy")
        sc.throttle_secs = 4.0 if sc.state == "Throttled" else 0.0
        sc.progress = f"{prog:.2f}%"
        sc.info = [(f"Paused, {prog:.2f}% done, resumes at {rfc3339_ms(node.scrub['paused_until'])}" if paused
                    else f"{prog:.2f}% done (tranquility = {sc.tranq})") + f" ; corruptions detected: {corr}"]
    else:
        sc.state = "Idle"
        sc.progress = None
        sc.info = [f"Last completed scrub: {rfc3339_ms(node.scrub.get('time_last_complete_scrub', 0))} ; corruptions detected: {corr}"]
    sc.message = [f"Last scrub completed at {rfc3339_ms(node.scrub.get('time_last_complete_scrub', 0))}"]
    if node.p.queue_workers:
        sc.message.append(f"Next scrub scheduled for {rfc3339_ms(node.scrub.get('next_run', 0))}")
    rep = node.repairs.get("blocks")
    br = node.workers.get("Block repair worker")
    if rep and br is not None:
        if rep.get("done"):
            br.progress = "100.00%"
            br.info = ["Phase 2: 100.00% done"]
        elif rep["phase"] == 1:
            br.progress = "0.00%"
            pos = rep["hashes"][rep["pos"]][:8] if rep["pos"] < len(rep["hashes"]) else ""
            br.info = [f"Phase 1: {pos}"]
            br.message = [f"Currently in phase 1, iterator position: {pos}"]
        else:
            pct = 100.0 * rep["pos"] / max(1, len(rep["files"]))
            br.progress = f"{pct:.2f}%"
            br.info = [f"Phase 2: {pct:.2f}% done"]
            br.message = ["Currently in phase 2"]
    for what in ("versions", "block_refs"):
        rep = node.repairs.get(what)
        if rep:
            w = node.workers.get(rep["name"])
            if w is not None:
                w.progress = str(rep["pos"])
                w.info = [f"{rep['pos']} items done"]
