"""Background workers of the simulated daemon: their identities, states and counters.

The daemon's tick loop does the work; this module only models what ``worker list`` /
``worker info`` show, with version-specific names and TIDs (ref 2.11; late 1.1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .personality import Personality

TABLES_08 = ("bucket_v2", "bucket_alias", "key", "object", "bucket_object_counter",
             "version", "block_ref", "k2v_item", "k2v_index_counter_v2")
TABLES_07 = ("bucket_v2", "bucket_alias", "key", "object", "version", "block_ref")
REPAIR_TABLES = ("bucket_v2", "object", "version", "block_ref", "key")  # ref 3.1
STATS_TABLES = ("bucket_v2", "key", "object", "version", "block_ref")  # ref 2.10


def tables_for(p: Personality) -> tuple[str, ...]:
    """The tables a version opens."""
    return TABLES_08 if p.has_counters else TABLES_07


@dataclass
class Worker:
    """One background worker as the CLI shows it."""

    tid: int
    name: str
    state: str = "Idle"  # Busy | Idle | Done | Throttled
    throttle_secs: float = 0.0
    tranq: int | None = None
    progress: str | None = None
    queue: int | None = None
    errors: int = 0
    consecutive_errors: int = 0
    last_error: str | None = None
    last_error_time: float | None = None
    info: list[str] = field(default_factory=list)
    message: list[str] = field(default_factory=list)
    persistent_errors: int | None = None

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
        """JSON form sent to the CLI."""
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


class WorkerSet:
    """All workers of a daemon, created in Garage's spawn order so TIDs match."""

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
        for table in tables_for(p):
            self.add(f"{table} {p.merkle_worker_suffix}")
            self.add(f"{table} sync")
            self.add(f"{table} GC")
            if p.queue_workers:
                self.add(f"{table} queue")
        if p.has_counters and not p.queue_workers:
            for counter in ("bucket_object_counter", "k2v_index_counter_v2"):
                self.add(f"{counter} index counter propagator")

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
