"""Start and stop of a node: opening the metadata, the signals, the shutdown sequence.

Signals follow the reference (checklist 15): 0.8 shuts down gracefully on SIGINT, SIGTERM and
SIGHUP; 0.7.3 only on SIGINT, and SIGTERM kills it at once (unflushed writes are lost, as with
sled's 2 s flush interval [inf]). A second process on a locked DB fails like the version does
(``fail_lock``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time

from . import render
from .cluster import Layout
from .personality import Personality
from .store import COUNTER_TREES, INSERT_QUEUE_TREE, LockHeld
from .workers import tables_for


def fail_lock(p: Personality, exc: LockHeld, location: str, log_state: dict | None = None) -> None:
    """Exit the way the version does when the sled lock is held (ref 2.12; late 3.2).

    0.8.0 and 0.7.3 panic and abort (SIGABRT). 0.7.3's panic hook is the server's own: it logs
    the panic with ``error!`` in the daemon's log format (``log_state``: the logger's, for the
    target padding), where 0.8.0 prints its PANIC banner (source-audit). 0.8.2+ exits 1.
    """
    if p.offline_repair_lock_panics:
        msg = f'Unable to open sled DB: Io(Custom {{ kind: Other, error: "{exc.text.replace(chr(34), chr(92) + chr(34))}" }})'
        sys.stderr.write(render.panic_banner(p, msg, location, server=log_state is not None, log_state=log_state))
        sys.stderr.flush()
        os.abort()
    sys.stderr.write(f"Error: Unable to open sled DB: IO error: {exc.text}\n")
    sys.exit(1)


class Lifecycle:
    """Opening, signals and shutdown of one node."""

    def __init__(self, node):
        self.node = node

    def install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """Graceful signals per version; 0.7.3 leaves SIGTERM at its default (kill at once)."""
        graceful = ["SIGINT"] + (["SIGTERM", "SIGHUP"] if self.node.p.sigterm_graceful else [])
        for name in graceful:
            loop.add_signal_handler(getattr(signal, name), self.on_signal, name)
        if not self.node.p.sigterm_graceful:
            # 0.7.3 installs no SIGTERM handler: the default action kills the process at once
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def open(self) -> None:
        """Open the metadata: key, layout, DB lock and trees (exits like Garage on failure)."""
        log = self.node.log
        log("INFO", "garage::server", "Loading configuration...")
        meta = self.node.cfg.metadata_dir
        meta.mkdir(parents=True, exist_ok=True)
        if self.node.p.major_minor == (0, 7):
            # 0.7.3's server.rs opens sled itself, before the runner and the data store
            # (source-audit: a second server on a locked DB logs these two lines, then panics)
            log("INFO", "garage::server", "Opening database...")
            try:
                self.node.store.acquire_lock()
            except LockHeld as exc:
                fail_lock(self.node.p, exc, "src/garage/server.rs:40:10", log_state=log.state)
            log("INFO", "garage::server", "Initialize background runner...")
            log("INFO", "garage::server", "Initializing Garage main data store...")
        else:
            if not self.node.p.queue_workers:
                log("INFO", "garage::server", "Initializing background runner...")
            log("INFO", "garage::server", "Initializing Garage main data store...")
            log("INFO", "garage_model::garage", "Opening database...")
            log("INFO", "garage_model::garage", f"Opening Sled database at: {meta / 'db'}")
            try:
                self.node.store.acquire_lock()
            except LockHeld as exc:
                fail_lock(self.node.p, exc, "src/model/garage.rs:98:13")
        self.node.store.load()
        key_pub = meta / "node_key.pub"
        if not key_pub.exists():
            sk = os.urandom(64)
            (meta / "node_key").write_bytes(sk)
            os.chmod(meta / "node_key", 0o600)
            key_pub.write_bytes(sk[32:])
        self.node.id64 = key_pub.read_bytes().hex()
        self.node.id16 = self.node.id64[:16]
        self.node.log("INFO", "garage_rpc::system", "Initialize membership management system...")
        self.node.log("INFO", "garage_rpc::system", f"Node ID of this node: {self.node.id16}")
        layout_path = meta / "cluster_layout"
        try:
            self.node.layout = Layout.from_json(json.loads(layout_path.read_text()))
        except (OSError, ValueError, KeyError) as exc:
            self.node.log("INFO", "garage_rpc::system", f"No valid previous cluster layout stored ({exc}), starting fresh.")
            self.node.layout = Layout(0, self.node.cfg.replication_factor, {}, tuple(() for _ in range(256)))
        if self.node.p.major_minor == (0, 8) and self.node.layout.version > 0 and \
                self.node.layout.replication_factor != self.node.cfg.replication_factor:
            sys.stderr.write(
                f"Error: Prevous cluster layout has replication factor {self.node.layout.replication_factor}, "
                f"which is different than the one specified in the config file ({self.node.cfg.replication_factor}). "
                "The previous cluster layout can be purged, if you know what you are doing, simply by "
                "deleting the `cluster_layout` file in your metadata directory.\n")
            sys.exit(1)
        if self.node.p.has_counters:
            self.node.store.ensure_trees(COUNTER_TREES)
            if self.node.p.queue_workers:
                self.node.store.ensure_trees((INSERT_QUEUE_TREE,))
            self.open_08_files()
        for table in tables_for(self.node.p):
            self.node.log("INFO", "garage_table::table", f"Initialize {table}_table..." if table != "bucket_object_counter" else "Initialize object counter table...")
        self.node.peering.load_peers()

    def open_08_files(self) -> None:
        meta = self.node.cfg.metadata_dir
        resync = meta / "resync_cfg"
        if resync.exists():
            try:
                self.node.resync_cfg.update(json.loads(resync.read_text()))
            except ValueError:
                pass
        else:
            resync.write_text(json.dumps(self.node.resync_cfg))
        scrub_info = meta / "scrub_info"
        now = time.time()
        if scrub_info.exists():
            try:
                self.node.scrub = json.loads(scrub_info.read_text())
            except ValueError:
                self.node.scrub = {}
        if not self.node.scrub:
            # No scrub_info: the first 0.8 start after 0.7 (ref 3.4; late 7.2)
            self.node.scrub = {"time_last_complete_scrub": 0, "tranquility": 4, "corruptions_detected": 0}
            if self.node.p.first_scrub_immediate:
                self.node.scrub["next_run"] = 0.0
                self.node.scrub["progress"] = 0.0  # the scrub starts with the daemon, not a tick later
            else:
                self.node.scrub["next_run"] = now + 25 * 86400 + random.uniform(0, 10 * 86400)
        self.node.scrub.setdefault("progress", None)
        self.node.save_scrub()

    def write_runfile(self) -> None:
        if self.node.node_dir is None:
            return
        run = self.node.node_dir / "run"
        run.mkdir(exist_ok=True)
        tmp = run / "daemon.json.tmp"
        tmp.write_text(json.dumps({"pid": os.getpid(), "version": self.node.p.version,
                                   "id64": self.node.id64, "started": self.node.started,
                                   "discovery": list(self.node.cfg.discovery)}))
        os.replace(tmp, run / "daemon.json")

    def on_signal(self, name: str) -> None:
        self.node.faults_w.refresh()  # a fault injected a moment ago must apply to this stop
        if self.node.faults.find("hang-stop"):
            self.node.log("WARN", "garage::server", f"Received {name}, but the lab's hang-stop fault ignores it")
            return
        if self.node.stop_signal is None:
            self.node.stop_signal = name
            if self.node.p.major_minor == (0, 7):
                # 0.7.3 waits with netapp's watch_ctrl_c() (tokio ctrl_c): SIGINT only, and this
                # text (source-audit); the module path under netapp is [inf]
                self.node.log("INFO", "netapp::util", "Received CTRL+C, shutting down.")
            else:
                self.node.log("INFO", "garage::server", f"Received {name}, shutting down.")
            self.node.stopping.set()

    async def shutdown(self, tasks) -> int:
        slow = self.node.faults.find("slow-stop")
        for srv in self.node.servers:
            srv.close()
        for desc in ("S3 API", "Web", "Admin"):
            self.node.log("INFO", "garage::server", f"{desc} server exited without error.")
        for t in tasks:
            t.cancel()
        for peer in self.node.peers.values():
            if peer.conn is not None:
                peer.conn.close()
        self.node.log("INFO", "garage::server", "Netapp exited")
        if self.node.p.queue_workers:
            for w in self.node.workers.all():
                self.node.log("INFO", "garage_util::background::worker",
                         f"Worker {w.name} (TID {w.tid}) exited (last state: {w.state})")
        if slow:
            # held while the fault is injected: clearing it (``garage-lab clear``) lets the stop
            # end at once, as a stuck shutdown that comes unstuck (a test that lifts the fault
            # does not then wait out the rest of the delay)
            end = time.monotonic() + float(slow.get("seconds", 5))
            while time.monotonic() < end and self.node.faults_w.refresh().find("slow-stop"):
                await asyncio.sleep(min(0.1, max(0.0, end - time.monotonic())))
        self.node.log("INFO", "garage_util::background", "All workers exited peacefully \\o/")
        self.node.store.flush()
        if self.node.p.has_counters:
            self.node.save_scrub()
        self.node.peering.save_peer_list()
        self.node.store.release_lock()
        self.node.log("INFO", "garage::server", "Cleaning up...")
        return 0
