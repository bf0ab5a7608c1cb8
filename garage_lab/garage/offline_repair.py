"""``garage offline-repair``: the repair that runs with the daemon stopped (0.8).

It takes the sled lock itself (a running daemon makes it fail like the version does), and for
``object_counters`` zeroes and recounts the node's local counters from its object table, at the
lab's ``offline_repair_rate``. 0.8.0 writes the counts into the counter table and, like the real
one, runs a whole background runner while it works (see :func:`_drain_runner`); 0.8.2+ queues
the counts for the daemon's ``bucket_object_counter queue`` worker to push after restart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import clap
from .clap import CliError
from .config import ConfigError, load
from .knobs import Knobs
from .lifecycle import fail_lock
from .personality import Personality
from .store import COUNTER_TREES, INSERT_QUEUE_TREE, LockHeld, Store
from .telemetry import log_once as _log
from .workers import WorkerSet, tables_for


def run(p: Personality, parsed: clap.Command, config_path: Path, node_dir: Path | None) -> int:
    """``offline-repair --yes <what>``; returns the exit code (ref 2.12; late 3.2).

    Raises:
        CliError: no ``--yes``, or an unreadable config (printed as ``Error: ...``, exit 1).
    """
    if "yes" not in parsed.flags:
        raise CliError("Please add the --yes flag to launch repair operation")
    verbose = not p.queue_workers or "garage=info" in os.environ.get("RUST_LOG", "")
    state: dict = {}

    def info(target: str, msg: str) -> None:
        if verbose:
            _log(p, "INFO", target, msg, state)

    info("garage::server", "Loading configuration...")
    try:
        cfg = load(p, config_path)
    except ConfigError as exc:
        raise CliError(exc.detail) from None
    if not p.queue_workers:
        info("garage::server", "Initializing background runner...")
    info("garage::server", "Initializing Garage main data store...")
    info("garage_model::garage", "Opening database...")
    info("garage_model::garage", f"Opening Sled database at: {cfg.metadata_dir / 'db'}")
    store = Store(cfg.metadata_dir)
    try:
        store.acquire_lock()
    except LockHeld as exc:
        fail_lock(p, exc, "src/model/garage.rs:98:13")
    store.load()
    what = parsed.path[1]
    if what != "object_counters":
        info("garage::repair::offline", "Launching repair operation...")
        info("garage::repair::offline", "Repair operation finished, shutting down...")
        return 0
    store.ensure_trees(COUNTER_TREES + ((INSERT_QUEUE_TREE,) if p.queue_workers else ()))
    id64 = (cfg.metadata_dir / "node_key.pub").read_bytes().hex()
    knobs = Knobs.load(node_dir / "lab.json") if node_dir else Knobs()
    runner = WorkerSet(p) if p.offline_repair_runs_workers else None
    if runner is not None:
        # 0.8.0: Garage::new as for a server: membership, every table and its workers
        info("garage_rpc::system", "Initialize membership management system...")
        info("garage_rpc::system", f"Node ID of this node: {id64[:16]}")
        for table in tables_for(p):
            info("garage_table::table", f"Initialize {table}_table..." if table != "bucket_object_counter" else "Initialize object counter table...")
    info("garage::repair::offline", "Launching repair operation...")
    local = store.tree("local_counter_v2:bucket_object_counter")
    for i, bucket in enumerate(sorted(local)):
        if i % 1001 == 0:
            info("garage_model::index_counter", f"zeroing old counters... ({bucket})")
        local[bucket] = {"objects": 0, "unfinished_uploads": 0, "bytes": 0}
    counts: dict[str, dict] = {}
    entries = [(b, k, e) for b, objs in sorted(store.tree("object:table").items()) for k, e in sorted(objs.items())]
    for i, (bucket, key, entry) in enumerate(entries):
        if i % 1001 == 0:
            info("garage_model::index_counter", f"counting entries... ({bucket}{key.encode().hex()})")
            # counting is linear in the local object entries: block like the real thing
            time.sleep(min(1001, len(entries) - i) / max(1.0, knobs.offline_repair_rate))
        c = counts.setdefault(bucket, {"objects": 0, "unfinished_uploads": 0, "bytes": 0})
        if not entry.get("deleted"):
            c["objects"] += 1
            c["bytes"] += entry.get("size", 0)
    ts = time.time_ns() // 1000
    for bucket, c in counts.items():
        local[bucket] = dict(c)
        value = dict(c, ts=ts)
        if p.offline_repair_queues_counters:
            store.tree(INSERT_QUEUE_TREE)[bucket] = value
        else:
            store.tree("bucket_object_counter:table").setdefault(bucket, {})[id64] = value
    store.mark_dirty()
    store.flush()
    time.sleep(max(0.0, knobs.offline_repair_delay_s))  # a benchmark's fixed repair time
    if p.queue_workers:
        info("garage::repair::offline", "Repair operation finished, shutting down...")
    else:
        info("garage::repair::offline", "Repair operation finished, shutting down Garage internals...")
        if runner is not None:
            _drain_runner(p, runner, knobs, state)
        info("garage::server", "Cleaning up...")
    store.release_lock()
    return 0


def _drain_runner(p: Personality, runner: WorkerSet, knobs: Knobs, state: dict) -> None:
    """The end of 0.8.0's offline-repair: its own background runner still runs and drains.

    In Garage the table syncs, the scrub and the resync workers of the repair process run
    from its start; this process has no peer connections, so the syncs log RPC errors (after
    about 20 s: the first anti-entropy) and the shutdown can take the 9 s worker drain
    (source-audit). The lab compresses that into ``offline_repair_runner_s`` seconds (a knob,
    so tests stay fast) and logs the same kinds of lines; their exact texts are [inf].
    """
    time.sleep(max(0.0, knobs.offline_repair_runner_s))
    for table in tables_for(p):
        w = runner.get(f"{table} sync")
        if w is not None and table in ("object", "bucket_object_counter", "version", "block_ref"):
            _log(p, "ERROR", "garage_util::background::worker",
                 f"Error in worker {w.name} (TID {w.tid}): Sync failed with too many nodes (should have been: [...]).",
                 state)
    _log(p, "INFO", "garage_util::background", "All workers exited peacefully \\o/", state)


