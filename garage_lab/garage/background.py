"""Background work of a node: Merkle updaters, table syncs, block resync, repairs, scrub, queues.

One tick loop (every 0.1 s) advances each kind of work by what its lab-knob rate allows in the
elapsed time (``rate_budget`` carries fractions over), so queues rise and drain in seconds
instead of hours, with the same shapes as Garage's. The Merkle updater is its own loop because a
real one keeps its queue near 0 under load (see ``merkle_loop``). What ``worker list`` shows of
this work is computed in :mod:`.workers`.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time

from . import rpc
from .cluster import partition_of
from .store import INSERT_QUEUE_TREE
from .workers import REPAIR_TABLES, tables_for

SCRUB_INTERVAL_08 = 30 * 86400


class Background:
    """The background runner of one node."""

    def __init__(self, node):
        self.node = node
        self._carry: dict[str, float] = {}
        self._last_flush = time.time()
        self.next_anti_entropy = node.started + node.knobs.anti_entropy_startup_s
        self.merkle_wakeup = asyncio.Event()
        self.pending_repairs: list[tuple[float, str]] = []  # (due, what): launched, not started yet

    async def merkle_loop(self) -> None:
        """The Merkle tree updaters: items are processed as they come, at ``merkle_rate``.

        A real updater handles an item in about a millisecond, so under moderate write load
        its queue reads 0 nearly all the time; a coarse periodic drain would show a
        permanently non-zero queue and no sync gate could ever pass under traffic.
        """
        todo = self.node.store.tree("merkle_todo")
        while True:
            await self.merkle_wakeup.wait()
            self.merkle_wakeup.clear()
            while any(todo.values()) and not self.node.faults.find("queues-stuck"):
                for table in list(todo):
                    if todo[table]:
                        todo[table] -= 1
                self.node.store.mark_dirty()
                await asyncio.sleep(1.0 / max(1.0, self.node.knobs.merkle_rate))

    def launch_repair(self, what: str, extra: dict) -> None:
        """Queue a repair; it runs in the background (checklist 1).

        The launch returns at once, and its work becomes visible only ``repair_start_delay_s``
        later (source audit, "Repair start"): a repair worker appears in ``worker list`` after
        its first ``step()``, and a table's sync queue fills once the sync worker receives the
        full-sync request. Until then the figures show an idle sync with queue 0.
        """
        now = time.time()
        legacy = self.node.p.major_minor == (0, 7)
        if legacy:
            self.node.log("INFO", "garage_util::background", "Worker started: Repair worker")
        if what == "tables":
            self.node.log("INFO", "garage::repair", "Launching a full sync of tables")
        elif what == "blocks":
            self.node.log("INFO", "garage::repair", "Repairing the stored blocks")
        elif what in ("versions", "block_refs"):
            self.node.log("INFO", "garage::repair", "Repairing the versions table" if what == "versions" else "Repairing the block refs table")
        elif what == "scrub":
            cmd = extra.get("cmd", "start")
            if legacy:
                self.node.log("INFO", "garage::repair", "Verifying integrity of stored blocks")
                self.node.repairs["scrub07"] = {"progress": 0.0}
            else:
                self.node.log("INFO", "garage::repair", f"Sending command to scrub worker: {cmd.capitalize()}")
                self.scrub_command(cmd, extra)
        if what in ("tables", "blocks", "versions", "block_refs"):
            self.pending_repairs.append((now + self.node.knobs.repair_start_delay_s, what))
            self.begin_due_repairs(now)
        if legacy and what != "blocks":
            # the 0.7.3 repair task exits within milliseconds: the work is only queued (ref 3.1)
            self.node.log("INFO", "garage_util::background", "Worker exited: Repair worker")

    def begin_due_repairs(self, now: float) -> None:
        """Start the work of the launched repairs whose start delay is over."""
        due = [r for r in self.pending_repairs if r[0] <= now]
        if not due:
            return
        self.pending_repairs = [r for r in self.pending_repairs if r[0] > now]
        legacy = self.node.p.major_minor == (0, 7)
        for _, what in due:
            # not a Garage log line: the lab's own trace, so that tests can tell when the work began
            self.node.log("INFO", "garage_lab", f"repair {what}: work started")
            if what == "tables":
                for table in REPAIR_TABLES:
                    self.start_full_sync(table)
            elif what == "blocks":
                self.node.repairs["blocks"] = {"phase": 1, "pos": 0, "started": now,
                                               "hashes": sorted(self.node.store.tree("block_local_rc"))}
                if not legacy:
                    self.node.workers.add("Block repair worker").state = "Busy"
            else:
                table = "version:table" if what == "versions" else "block_ref:table"
                name = "Version repair worker" if what == "versions" else "Block refs repair worker"
                self.node.repairs[what] = {"pos": 0, "total": len(self.node.store.tree(table)), "name": name}
                if not legacy:
                    self.node.workers.add(name).state = "Busy"

    def scrub_command(self, cmd: str, extra: dict) -> None:
        if cmd == "start":
            if self.node.scrub.get("progress") is not None:
                self.node.log("ERROR", "garage_block::repair", "Cannot start scrub worker: already running!")
                return
            self.node.scrub["progress"] = 0.0
        elif cmd == "cancel":
            self.node.scrub["progress"] = None
        elif cmd == "pause":
            self.node.scrub["paused_until"] = time.time() + 86400
        elif cmd == "resume":
            self.node.scrub.pop("paused_until", None)
        elif cmd == "set-tranquility":
            self.node.scrub["tranquility"] = int(extra.get("tranquility", 4))
        self.node.save_scrub()

    def start_full_sync(self, table: str) -> None:
        full_copy = table in ("bucket_v2", "bucket_alias", "key")
        parts = [0] if full_copy else list(range(256))
        random.shuffle(parts)
        self.node.sync_todo[table] = parts

    def rate_budget(self, name: str, rate: float, dt: float) -> int:
        """Whole items a worker may process this tick, carrying fractions over."""
        self._carry[name] = self._carry.get(name, 0.0) + rate * dt
        n = int(self._carry[name])
        self._carry[name] -= n
        return n

    async def tick_loop(self) -> None:
        last = time.time()
        while True:
            await asyncio.sleep(0.1)
            now = time.time()
            dt = now - last
            last = now
            self.node.knobs_w.refresh()
            self.node.faults_w.refresh()
            try:
                await self.tick(now, dt)
            except Exception as exc:  # noqa: BLE001 - a lab bug must show in the log, not kill the node
                self.node.log("ERROR", "garage_lab", f"tick failed: {type(exc).__name__}: {exc}")
            if now - self._last_flush >= self.node.cfg.sled_flush_every_ms / 1000:
                self.node.store.flush()
                self._last_flush = now

    async def tick(self, now: float, dt: float) -> None:
        k = self.node.knobs
        stuck = self.node.faults.find("queues-stuck") is not None
        self.apply_errored_blocks_fault()
        self.begin_due_repairs(now)
        if any(self.node.store.tree("merkle_todo").values()):
            self.merkle_wakeup.set()  # re-check after a queues-stuck fault is cleared
        # GC queues drain only after TABLE_GC_DELAY
        for table, dues in self.node.store.tree("gc_todo").items():
            keep = [d for d in dues if d > now]
            if len(keep) != len(dues):
                self.node.store.tree("gc_todo")[table] = keep
                self.node.store.mark_dirty()
        # periodic anti-entropy full sync (20 s after start, then every 10 min)
        if now >= self.next_anti_entropy:
            self.next_anti_entropy = now + k.anti_entropy_interval_s
            for table in tables_for(self.node.p):
                if table not in ("k2v_item", "k2v_index_counter_v2"):
                    self.start_full_sync(table)
        await self.tick_sync(dt)
        self.tick_block_repair(dt)
        if not stuck:
            await self.tick_resync(now, dt)
        self.tick_items_repair(dt)
        self.tick_scrub(now, dt)
        await self.tick_counter_queue(dt)
        if self.node.p.build_info_metric and now - self.node.started >= k.disk_stats_interval_s and self.node.disk_stats is None:
            self.node.disk_stats = self.measure_disks()

    async def tick_sync(self, dt: float) -> None:
        for table, parts in self.node.sync_todo.items():
            if not parts:
                continue
            n = self.rate_budget("sync:" + table, self.node.knobs.sync_rate, dt)
            batch = [parts.pop() for _ in range(min(n, len(parts)))]
            if batch:
                await asyncio.gather(*(self.sync_partition(table, p) for p in batch))

    async def sync_partition(self, table: str, partition: int) -> None:
        """Reconcile one partition of ``table`` with the other replicas (LWW merge)."""
        w = self.node.workers.get(f"{table} sync")
        if table not in ("object", "bucket_object_counter"):
            return  # the other tables do not change in the lab: their Merkle roots agree
        nodes = self.node.layout.nodes_of(partition)
        if self.node.id64 not in nodes:
            return
        others = [n for n in nodes if n != self.node.id64]
        down = [n for n in others if not self.node.peering.is_up(n)]
        for nid in others:
            if nid in down:
                continue
            try:
                theirs = await self.node.peering.call_node(nid, "sync_pull", {"table": table, "partition": partition})
                got = self.node.tables.merge_items(table, theirs)
                if got:
                    self.node.metrics.inc("table_sync_items_received", {"from": nid[:16], "table_name": table}, got)
                mine = self.node.tables.partition_items(table, partition)
                sent = await self.node.peering.call_node(nid, "sync_push", {"table": table, "items": mine, "sender": self.node.id64})
                if sent:
                    self.node.metrics.inc("table_sync_items_sent", {"table_name": table, "to": nid[:16]}, sent)
                    self.node.log("INFO", "garage_table::sync", f"({table}) Sending {sent} items to {nid[:16]}")
            except rpc.RpcError:
                down.append(nid)
        if down and w is not None:
            msg = "Sync failed with too many nodes (should have been: [" + ", ".join(n[:16] for n in nodes) + "])."
            w.record_error(msg)
            self.node.log("ERROR", "garage_util::background::worker", f"Error in worker {table} sync (TID {w.tid}): {msg}")
        elif w is not None:
            w.record_success()

    def tick_block_repair(self, dt: float) -> None:
        rep = self.node.repairs.get("blocks")
        if not rep or rep.get("done"):
            return
        queue = self.node.store.tree("block_local_resync_queue")
        n = self.rate_budget("block_repair", self.node.knobs.block_repair_rate, dt)
        if rep["phase"] == 1:
            hashes = rep["hashes"]
            for h in hashes[rep["pos"]: rep["pos"] + n]:
                queue.setdefault(h, time.time())
            rep["pos"] = min(len(hashes), rep["pos"] + n)
            if rep["pos"] >= len(hashes):
                rep["phase"] = 2
                rep["pos"] = 0
                rep["files"] = sorted(self.data_blocks())
        else:
            files = rep["files"]
            for h in files[rep["pos"]: rep["pos"] + n]:
                queue.setdefault(h, time.time())
            rep["pos"] = min(len(files), rep["pos"] + n)
            if rep["pos"] >= len(files):
                rep["done"] = True
                if self.node.p.major_minor == (0, 7):
                    self.node.log("INFO", "garage_util::background", "Worker exited: Repair worker")
                else:
                    w = self.node.workers.get("Block repair worker")
                    w.state = "Done"
                    self.node.log("INFO", "garage_util::background::worker", f"Worker Block repair worker (TID {w.tid}) exited")
        self.node.store.mark_dirty()

    def data_blocks(self) -> list[str]:
        out = []
        root = self.node.cfg.data_dir
        if not root.is_dir():
            return out
        for d1 in os.scandir(root):
            if d1.is_dir() and len(d1.name) == 2:
                for d2 in os.scandir(d1.path):
                    if d2.is_dir():
                        out.extend(f.name.split(".")[0] for f in os.scandir(d2.path) if len(f.name.split(".")[0]) == 64)
        return out

    def apply_errored_blocks_fault(self) -> None:
        fault = self.node.faults.find("errored-blocks")
        want = int(fault.get("count_blocks", fault.get("blocks", 3))) if fault else 0
        bad = self.node.store.tree("lab_bad_blocks")
        if want and len(bad) < want:
            for h in sorted(self.node.store.tree("block_local_rc"))[: want]:
                if h not in bad:
                    bad[h] = True
                    self.node.store.tree("block_local_resync_queue")[h] = time.time()
            self.node.store.mark_dirty()
        elif not want and bad:
            bad.clear()
            self.node.store.mark_dirty()

    async def tick_resync(self, now: float, dt: float) -> None:
        queue = self.node.store.tree("block_local_resync_queue")
        errors = self.node.store.tree("block_local_resync_errors")
        if not queue:
            return
        n = self.rate_budget("resync", self.node.knobs.resync_rate * self.node.resync_cfg["n_workers"], dt)
        due = sorted((t, h) for h, t in queue.items() if t <= now)[:n]
        bad = self.node.store.tree("lab_bad_blocks")
        for _, h in due:
            if h in bad:
                e = errors.setdefault(h, {"errors": 0})
                e["errors"] += 1
                e["last"] = now
                delay = self.node.knobs.resync_backoff_base_s * 2 ** min(e["errors"] - 1, 6)
                queue[h] = now + delay
                self.node.metrics.inc("block_resync_error_counter", {})
                self.node.log("WARN", "garage_block::resync", f"Error when resyncing {h}: NotFound")
            else:
                del queue[h]
                errors.pop(h, None)
                self.node.metrics.inc("block_resync_counter", {})
                self.ensure_block_file(h)
        if due:
            self.node.store.mark_dirty()

    def ensure_block_file(self, h: str) -> None:
        needed = self.node.store.tree("block_local_rc").get(h, 0) > 0
        path = self.node.cfg.data_dir / h[:2] / h[2:4] / h
        if needed and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes.fromhex(h))
            self.node.log("INFO", "garage_block::resync", f"Resync block {h[:16]}: fetching absent but needed block (refcount > 0)")
        elif not needed and path.exists():
            path.unlink()
            self.node.log("INFO", "garage_block::resync", f"Resync block {h[:16]}: offloading and deleting")

    def tick_items_repair(self, dt: float) -> None:
        for what in ("versions", "block_refs"):
            rep = self.node.repairs.get(what)
            if not rep or rep.get("done"):
                continue
            rep["pos"] = min(rep["total"], rep["pos"] + self.rate_budget("rep:" + what, self.node.knobs.items_repair_rate, dt))
            if rep["pos"] >= rep["total"]:
                rep["done"] = True
                if self.node.p.major_minor == (0, 7):
                    self.node.log("INFO", "garage_util::background", "Worker exited: Repair worker")
                else:
                    w = self.node.workers.get(rep["name"])
                    w.state = "Done"
                    fn = "repair_versions" if what == "versions" else "repair_block_ref"
                    self.node.log("INFO", "garage_model::repair", f"{fn}: finished, done {rep['pos']}")
                    self.node.log("INFO", "garage_util::background::worker", f"Worker {rep['name']} (TID {w.tid}) exited")

    def tick_scrub(self, now: float, dt: float) -> None:
        if self.node.p.major_minor == (0, 7):
            rep = self.node.repairs.get("scrub07")
            if rep and rep["progress"] < 100:
                rep["progress"] = min(100.0, rep["progress"] + self.node.knobs.scrub_rate_pct * dt)
                if rep["progress"] >= 100:
                    self.node.log("INFO", "garage_util::background", "Worker exited: Repair worker")
            return
        if self.node.scrub.get("progress") is None and now >= self.node.scrub.get("next_run", now + 1):
            self.node.scrub["progress"] = 0.0
            if self.node.p.queue_workers:
                self.node.log("INFO", "garage_block::repair", "Scrub worker initializing, now performing datastore scrub")
        prog = self.node.scrub.get("progress")
        if prog is not None and now >= self.node.scrub.get("paused_until", 0):
            prog = min(100.0, prog + self.node.knobs.scrub_rate_pct * dt)
            self.node.scrub["progress"] = prog
            if prog >= 100.0:
                self.node.scrub["progress"] = None
                self.node.scrub["time_last_complete_scrub"] = now
                self.node.scrub["next_run"] = now + (SCRUB_INTERVAL_08 if self.node.p.first_scrub_immediate
                                                else 25 * 86400 + random.uniform(0, 10 * 86400))
                self.node.save_scrub()

    async def tick_counter_queue(self, dt: float) -> None:
        if not self.node.p.queue_workers:
            return
        q = self.node.store.tree(INSERT_QUEUE_TREE)
        if not q:
            return
        n = self.rate_budget("counterq", self.node.knobs.counter_queue_rate, dt)
        w = self.node.workers.get("bucket_object_counter queue")
        for bucket in sorted(q)[:n]:
            value = q[bucket]
            replicas = self.node.layout.nodes_of(partition_of(bytes.fromhex(bucket)))
            ok = 0
            for nid in replicas:
                try:
                    await self.node.peering.call_node(nid, "counter_push", {"bucket": bucket, "node": self.node.id64, "value": value})
                    ok += 1
                except rpc.RpcError:
                    pass
            if ok >= self.node.cfg.write_quorum:
                del q[bucket]
                w.record_success()
            else:
                w.record_error("Could not reach quorum")
            self.node.store.mark_dirty()

    def measure_disks(self) -> dict:
        out = {}
        for vol, path in (("data", self.node.cfg.data_dir), ("metadata", self.node.cfg.metadata_dir)):
            st = shutil.disk_usage(path)
            out[vol] = [st.free, st.total]
        return out
