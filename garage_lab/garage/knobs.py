"""Lab knobs and faults for one node, read from ``<node_dir>/lab.json`` and ``faults.json``.

Knobs set the speed of the simulated background work (rates are per second of wall time) so
tests see queues rise and drain in seconds rather than hours. Faults are injected by
``garage-lab fault``. Both files are re-read when they change, so a running daemon picks up a
new fault without a restart. These files belong to the lab, not to Garage: the orchestrator
never reads them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path


@dataclass
class Knobs:
    """Speeds and delays of the simulated daemon (defaults give a lively but quick lab)."""

    # Merkle updater items/s: a real updater handles an item in about a millisecond; at 400/s
    # the 3 counter-table items of each client write kept a replica's todo visible ~8% of the
    # time at 10 writes/s, and a gate under traffic saw a non-empty queue in ~45% of its looks
    merkle_rate: float = 1000.0
    sync_rate: float = 64.0  # partitions/s per table during a full sync
    resync_rate: float = 60.0  # blocks/s per active resync worker
    block_repair_rate: float = 4000.0  # entries/s queued by the block repair worker
    items_repair_rate: float = 400.0  # versions / block_refs repair items/s
    scrub_rate_pct: float = 0.25  # scrub progress in %/s
    counter_queue_rate: float = 40.0  # insert-queue entries/s (0.8.2+)
    offline_repair_rate: float = 2000.0  # object entries/s counted by offline-repair
    # 0.8.0's offline-repair runs a full background runner; how long it lives after the repair
    # (the real one logs RPC errors after ~20 s and may take the 9 s drain to shut down)
    offline_repair_runner_s: float = 1.5
    # seconds from a repair's launch to its work showing (a worker listed after its first
    # step(), a sync queue filled once the sync worker gets the request). The source fixes no
    # number: on an idle node it is a scheduling delay, more under load; 0.5 s is our estimate
    repair_start_delay_s: float = 0.5
    anti_entropy_startup_s: float = 20.0  # first periodic full sync after start (src: 20 s)
    anti_entropy_interval_s: float = 600.0  # then every 10 min (ANTI_ENTROPY_INTERVAL)
    gc_delay_s: float = 86400.0  # TABLE_GC_DELAY
    resync_backoff_base_s: float = 60.0  # 60 s x 2^min(errors-1, 6)
    # reconnection attempts to a down peer (a peer counts as up only once this node has
    # connected to it, so each lab start and each restart waited up to this long: 0.25 s
    # brings a 6-node lab up in ~1.1 s instead of ~1.8 s)
    peer_retry_s: float = 0.25
    # netapp's fullmesh pings every connected peer (PING_INTERVAL 15 s, PING_TIMEOUT 10 s) and
    # closes the connection after more than FAILED_PING_THRESHOLD (4) failed pings in a row:
    # how a node notices a peer cut off by the network (on loopback a link never dies silently)
    ping_interval_s: float = 15.0
    ping_timeout_s: float = 10.0
    failed_ping_threshold: float = 4.0
    disk_stats_interval_s: float = 10.0  # 0.8.2+ disk figures refresh
    # fixed simulated work, for benchmarks (benchmarks/flow_overhead.py); 0: as fast as it goes.
    # A slow stop is the ``slow-stop`` fault
    start_delay_s: float = 0.0  # seconds a starting daemon takes before it listens
    offline_repair_delay_s: float = 0.0  # seconds an offline repair takes beyond its counting
    s3_anonymous: float = 1.0  # serve S3 requests without Authorization (0: refuse them like Garage)

    @classmethod
    def load(cls, path: Path) -> "Knobs":
        """Read knobs from ``path``; missing file or keys keep the defaults."""
        k = cls()
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return k
        names = {f.name for f in fields(cls)}
        for key, value in d.items():
            if key in names:
                setattr(k, key, float(value))
        return k


FAULT_KINDS = (
    "fail-command",  # the next N garage CLI calls matching `match` fail (exit 1)
    "slow-stop",  # shutdown takes `seconds` longer (ends early once the fault is cleared)
    "hang-stop",  # the daemon ignores shutdown signals (only SIGKILL stops it)
    "refuse-start",  # the next N starts fail at once (exit 1)
    "ssh-refuse",  # sshd stops listening on the node's address (harness)
    "metrics-down",  # /metrics drops the connection
    "queues-stuck",  # Merkle and resync queues never drain
    "errored-blocks",  # N blocks fail to resync forever
    "disk-full",  # writes under `path` fail with ENOSPC (tar/df shims)
    "kill-tar",  # tar is killed after `bytes` bytes of output
    "corrupt-tar",  # the byte at offset `bytes` of tar's output is flipped (tar exits 0)
    "no-zstd",  # the node has no zstd CLI (zstd shim: exit 127)
    "net-delay",  # netns lab: `ms` more per round trip on SSH and admin connections (relay)
    "net-loss",  # netns lab: `pct` % of packets dropped each way (nftables)
    "net-partition",  # netns lab: cut from the controller, the other zones or both (`side`)
    "ssh-drop",  # netns lab: the SSH session running a command matching `match` is killed
)


@dataclass
class Faults:
    """The faults currently injected on a node."""

    entries: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "Faults":
        """Read the fault list; a missing or broken file means no faults."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return cls()
        return cls(list(d.get("faults", [])))

    def find(self, kind: str) -> dict | None:
        """The first active fault of ``kind``, if any."""
        for entry in self.entries:
            if entry.get("kind") == kind and entry.get("count", 1) != 0:
                return entry
        return None


def save_faults(path: Path, faults: Faults) -> None:
    """Write the fault list atomically."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps({"faults": faults.entries}, indent=1))
    os.replace(tmp, path)


def consume_fault(path: Path, kind: str, predicate=lambda e: True) -> dict | None:
    """Take one use of the first fault of ``kind`` matching ``predicate``.

    A fault with ``count`` N is removed after N uses; without ``count`` it stays. The
    read-modify-write is done under an flock, as several CLI calls can race.
    """
    import fcntl

    path = Path(path)
    if not path.exists():
        return None
    with open(str(path) + ".lock", "a") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        faults = Faults.load(path)
        for entry in faults.entries:
            if entry.get("kind") == kind and predicate(entry):
                if "count" in entry:
                    entry["count"] -= 1
                    if entry["count"] <= 0:
                        faults.entries.remove(entry)
                    save_faults(path, faults)
                return entry
    return None


class Watched:
    """Re-reads a file-backed value when the file's mtime changes."""

    def __init__(self, path: Path, loader):
        self.path = Path(path)
        self.loader = loader
        self._mtime: float | None = -1.0
        self.value = loader(self.path)

    def refresh(self):
        """Reload if the file changed; return the current value."""
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            mtime = None
        if mtime != self._mtime:
            self._mtime = mtime
            self.value = self.loader(self.path)
        return self.value
