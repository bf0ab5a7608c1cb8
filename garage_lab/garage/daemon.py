"""``garage server``: the simulated daemon of one node.

One OS process per node. It holds the sled lock on ``<metadata_dir>/db/db`` for its whole life,
serves RPC (peers and CLI, with the version-tag handshake), the admin API (``/metrics``,
``/v0/status``, ``/health`` from 0.8.1), a minimal object API on the S3 port, and runs the
background work (Merkle updaters, table syncs, block resync, scrub, repairs, GC) at the speeds
set by the lab knobs.

Signals follow the reference (checklist 15): 0.8 shuts down gracefully on SIGINT, SIGTERM and
SIGHUP; 0.7.3 only on SIGINT, and SIGTERM kills it at once (unflushed writes are lost, as with
sled's 2 s flush interval [inf]).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from . import render, rpc
from .cluster import Layout, partition_of
from .config import NodeConfig
from .knobs import Faults, Knobs, Watched, consume_fault
from .personality import Personality
from .store import COUNTER_TREES, INSERT_QUEUE_TREE, LockHeld, Store
from .workers import REPAIR_TABLES, STATS_TABLES, WorkerSet, tables_for

COUNTER_FIELDS = ("objects", "unfinished_uploads", "bytes")
SCRUB_INTERVAL_08 = 30 * 86400
EPOCH_MS_FMT = "%Y-%m-%dT%H:%M:%S"


def rfc3339_ms(t: float) -> str:
    """RFC 3339 with milliseconds and ``Z``, as Garage prints scrub times."""
    return time.strftime(EPOCH_MS_FMT, time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


class Logger:
    """Daemon log lines on stderr in the version's format (checklist 16)."""

    def __init__(self, p: Personality):
        self.p = p
        self.state: dict = {}
        # 0.8.0 built tracing with `log-always`, which probably prints every line twice [inf]
        self.repeat = 2 if p.version == "0.8.0" else 1

    def __call__(self, level: str, target: str, msg: str) -> None:
        line = render.log_line(self.p, level, target, msg, time.time(), self.state)
        for _ in range(self.repeat):
            sys.stderr.write(line if line.endswith("\n") else line + "\n")
        sys.stderr.flush()


class Peer:
    """What this node knows of another node."""

    def __init__(self, id64: str, addr: str):
        self.id64 = id64
        self.addr = addr
        self.hostname: str | None = None
        self.conn: rpc.Connection | None = None
        self.last_seen: float | None = None

    @property
    def is_up(self) -> bool:
        return self.conn is not None and not self.conn.closed.is_set()


class Metrics:
    """Counters and histograms; gauges are computed at scrape time."""

    def __init__(self):
        self.counters: dict[tuple[str, tuple], float] = {}
        self.hists: dict[tuple[str, tuple], list[float]] = {}

    def inc(self, name: str, labels: dict, by: float = 1.0) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0.0) + by

    def observe(self, name: str, labels: dict, value: float) -> None:
        self.hists.setdefault((name, tuple(sorted(labels.items()))), []).append(value)


class Daemon:
    """The state and behaviour of one running node."""

    def __init__(self, p: Personality, cfg: NodeConfig, node_dir: Path | None):
        self.p = p
        self.cfg = cfg
        self.log = Logger(p)
        self.node_dir = node_dir
        self.knobs_w = Watched(node_dir / "lab.json" if node_dir else Path("/nonexistent"), Knobs.load)
        self.faults_w = Watched(node_dir / "faults.json" if node_dir else Path("/nonexistent"), Faults.load)
        self.store = Store(cfg.metadata_dir)
        self.started = time.time()
        self.peers: dict[str, Peer] = {}
        self.metrics = Metrics()
        self.workers = WorkerSet(p)
        self.sync_todo: dict[str, list[int]] = {}
        self.sync_failed_nodes: dict[str, set] = {}
        self.scrub: dict = {}
        self.repairs: dict[str, dict] = {}
        self.next_anti_entropy = self.started + self.knobs.anti_entropy_startup_s
        self.servers: list[asyncio.AbstractServer] = []
        self.stopping = asyncio.Event()
        self._merkle_wakeup = asyncio.Event()
        self.stop_signal: str | None = None
        self.resync_cfg = {"n_workers": 1, "tranquility": 2}
        self.disk_stats: dict | None = None
        self._carry: dict[str, float] = {}
        self._last_flush = time.time()
        self.hostname = socket.gethostname()
        if node_dir is not None:
            self.hostname = node_dir.name

    # ------------------------------------------------------------------ properties
    @property
    def knobs(self) -> Knobs:
        return self.knobs_w.value

    @property
    def faults(self) -> Faults:
        return self.faults_w.value

    # ------------------------------------------------------------------ start-up
    def open(self) -> None:
        """Open the metadata: key, layout, DB lock and trees (exits like Garage on failure)."""
        self.log("INFO", "garage::server", "Loading configuration...")
        if self.p.major_minor == (0, 8) and not self.p.queue_workers:
            self.log("INFO", "garage::server", "Initializing background runner...")
        self.log("INFO", "garage::server", "Initializing Garage main data store...")
        self.log("INFO", "garage_model::garage", "Opening database...")
        self.log("INFO", "garage_model::garage", f"Opening Sled database at: {self.cfg.metadata_dir / 'db'}")
        meta = self.cfg.metadata_dir
        meta.mkdir(parents=True, exist_ok=True)
        try:
            self.store.acquire_lock()
        except LockHeld as exc:
            fail_lock(self.p, exc, "src/model/garage.rs:98:13" if self.p.major_minor == (0, 8) else "src/garage/server.rs:40:10")
        self.store.load()
        key_pub = meta / "node_key.pub"
        if not key_pub.exists():
            sk = os.urandom(64)
            (meta / "node_key").write_bytes(sk)
            os.chmod(meta / "node_key", 0o600)
            key_pub.write_bytes(sk[32:])
        self.id64 = key_pub.read_bytes().hex()
        self.id16 = self.id64[:16]
        self.log("INFO", "garage_rpc::system", "Initialize membership management system...")
        self.log("INFO", "garage_rpc::system", f"Node ID of this node: {self.id16}")
        layout_path = meta / "cluster_layout"
        try:
            self.layout = Layout.from_json(json.loads(layout_path.read_text()))
        except (OSError, ValueError, KeyError) as exc:
            self.log("INFO", "garage_rpc::system", f"No valid previous cluster layout stored ({exc}), starting fresh.")
            self.layout = Layout(0, self.cfg.replication_factor, {}, tuple(() for _ in range(256)))
        if self.p.major_minor == (0, 8) and self.layout.version > 0 and \
                self.layout.replication_factor != self.cfg.replication_factor:
            sys.stderr.write(
                f"Error: Prevous cluster layout has replication factor {self.layout.replication_factor}, "
                f"which is different than the one specified in the config file ({self.cfg.replication_factor}). "
                "The previous cluster layout can be purged, if you know what you are doing, simply by "
                "deleting the `cluster_layout` file in your metadata directory.\n")
            sys.exit(1)
        if self.p.has_counters:
            self.store.ensure_trees(COUNTER_TREES)
            if self.p.queue_workers:
                self.store.ensure_trees((INSERT_QUEUE_TREE,))
            self._open_08_files()
        for table in tables_for(self.p):
            self.log("INFO", "garage_table::table", f"Initialize {table}_table..." if table != "bucket_object_counter" else "Initialize object counter table...")
        self._load_peers()

    def _open_08_files(self) -> None:
        meta = self.cfg.metadata_dir
        resync = meta / "resync_cfg"
        if resync.exists():
            try:
                self.resync_cfg.update(json.loads(resync.read_text()))
            except ValueError:
                pass
        else:
            resync.write_text(json.dumps(self.resync_cfg))
        scrub_info = meta / "scrub_info"
        now = time.time()
        if scrub_info.exists():
            try:
                self.scrub = json.loads(scrub_info.read_text())
            except ValueError:
                self.scrub = {}
        if not self.scrub:
            # No scrub_info: the first 0.8 start after 0.7 (ref 3.4; late 7.2)
            self.scrub = {"time_last_complete_scrub": 0, "tranquility": 4, "corruptions_detected": 0}
            if self.p.first_scrub_immediate:
                self.scrub["next_run"] = 0.0
                self.scrub["progress"] = 0.0  # the scrub starts with the daemon, not a tick later
            else:
                self.scrub["next_run"] = now + 25 * 86400 + random.uniform(0, 10 * 86400)
        self.scrub.setdefault("progress", None)
        self._save_scrub()

    def _save_scrub(self) -> None:
        (self.cfg.metadata_dir / "scrub_info").write_text(json.dumps(self.scrub, sort_keys=True))

    def _load_peers(self) -> None:
        # netapp knows peers from bootstrap_peers and the persisted peer list
        entries: list[tuple[str, str]] = []
        for spec in self.cfg.bootstrap_peers:
            if "@" in spec:
                pid, addr = spec.split("@", 1)
                entries.append((pid, addr))
        try:
            for pid, addr in json.loads((self.cfg.metadata_dir / "peer_list").read_text()):
                entries.append((pid, addr))
        except (OSError, ValueError):
            pass
        for pid, addr in entries:
            if pid != self.id64 and pid not in self.peers:
                self.peers[pid] = Peer(pid, addr)

    def _save_peer_list(self) -> None:
        path = self.cfg.metadata_dir / "peer_list"
        content = json.dumps(sorted([p.id64, p.addr] for p in self.peers.values()))
        try:
            if path.read_text() == content:
                return
        except OSError:
            pass
        path.write_text(content)

    # ------------------------------------------------------------------ main loop
    async def run(self) -> int:
        """Serve until a shutdown signal; return the exit code."""
        loop = asyncio.get_running_loop()
        graceful = ["SIGINT"] + (["SIGTERM", "SIGHUP"] if self.p.sigterm_graceful else [])
        for name in graceful:
            loop.add_signal_handler(getattr(signal, name), self._on_signal, name)
        if not self.p.sigterm_graceful:
            # 0.7.3 installs no SIGTERM handler: the default action kills the process at once
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.log("INFO", "garage::server", "Initialize Admin API server and metrics collector...")
        self.log("INFO", "garage::server", "Launching internal Garage cluster communications...")
        host, port = self.cfg.rpc_bind_addr.rsplit(":", 1)
        self.servers.append(await asyncio.start_server(self._rpc_accept, host, int(port)))
        self.log("INFO", "garage::server", "Create admin RPC handler...")
        if self.cfg.s3_api_bind_addr:
            self.log("INFO", "garage::server", "Initializing S3 API server...")
            h, pt = self.cfg.s3_api_bind_addr.rsplit(":", 1)
            self.servers.append(await asyncio.start_server(self._s3_accept, h, int(pt)))
            self.log("INFO", "garage_api::generic_server", f"S3 API server listening on http://{self.cfg.s3_api_bind_addr}")
        if self.cfg.web_bind_addr:
            h, pt = self.cfg.web_bind_addr.rsplit(":", 1)
            self.servers.append(await asyncio.start_server(self._web_accept, h, int(pt)))
            self.log("INFO", "garage_web::web_server", f"Web server listening on http://{self.cfg.web_bind_addr}")
        if self.cfg.admin_bind_addr:
            h, pt = self.cfg.admin_bind_addr.rsplit(":", 1)
            self.servers.append(await asyncio.start_server(self._admin_accept, h, int(pt)))
            self.log("INFO", "garage_api::generic_server", f"Admin API server listening on http://{self.cfg.admin_bind_addr}")
        self._write_runfile()
        peer_task = asyncio.ensure_future(self._peer_loop())
        tick_task = asyncio.ensure_future(self._tick_loop())
        merkle_task = asyncio.ensure_future(self._merkle_loop())
        await self.stopping.wait()
        return await self._shutdown([peer_task, tick_task, merkle_task])

    def _write_runfile(self) -> None:
        if self.node_dir is None:
            return
        run = self.node_dir / "run"
        run.mkdir(exist_ok=True)
        tmp = run / "daemon.json.tmp"
        tmp.write_text(json.dumps({"pid": os.getpid(), "version": self.p.version,
                                   "id64": self.id64, "started": self.started}))
        os.replace(tmp, run / "daemon.json")

    def _on_signal(self, name: str) -> None:
        self.faults_w.refresh()  # a fault injected a moment ago must apply to this stop
        if self.faults.find("hang-stop"):
            self.log("WARN", "garage::server", f"Received {name}, but the lab's hang-stop fault ignores it")
            return
        if self.stop_signal is None:
            self.stop_signal = name
            self.log("INFO", "garage::server", f"Received {name}, shutting down.")
            self.stopping.set()

    async def _shutdown(self, tasks) -> int:
        slow = self.faults.find("slow-stop")
        for srv in self.servers:
            srv.close()
        for desc in ("S3 API", "Web", "Admin"):
            self.log("INFO", "garage::server", f"{desc} server exited without error.")
        for t in tasks:
            t.cancel()
        for peer in self.peers.values():
            if peer.conn is not None:
                peer.conn.close()
        self.log("INFO", "garage::server", "Netapp exited")
        if self.p.queue_workers:
            for w in self.workers.all():
                self.log("INFO", "garage_util::background::worker",
                         f"Worker {w.name} (TID {w.tid}) exited (last state: {w.state})")
        if slow:
            await asyncio.sleep(float(slow.get("seconds", 5)))
        self.log("INFO", "garage_util::background", "All workers exited peacefully \\o/")
        self.store.flush()
        if self.p.has_counters:
            self._save_scrub()
        self._save_peer_list()
        self.store.release_lock()
        self.log("INFO", "garage::server", "Cleaning up...")
        return 0

    # ------------------------------------------------------------------ peers
    def hello(self) -> dict:
        return {"tag": self.p.rpc_tag, "netkey": rpc.network_key(self.cfg.rpc_secret),
                "node": self.id64, "hostname": self.hostname,
                "addr": self.cfg.rpc_public_addr or self.cfg.rpc_bind_addr}

    async def _rpc_accept(self, reader, writer) -> None:
        try:
            theirs = await asyncio.wait_for(rpc.recv(reader), 5)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError, OSError):
            writer.close()
            return
        if theirs.get("tag") != self.p.rpc_tag or theirs.get("netkey") != rpc.network_key(self.cfg.rpc_secret):
            # [inf] netapp logs a handshake error; its exact text is not in the reference
            self.log("WARN", "netapp::server", f"Error in handshake with {writer.get_extra_info('peername')}: version tag or network key mismatch")
            writer.close()
            return
        try:
            await rpc.send(writer, self.hello())
        except (ConnectionError, OSError):
            return
        rpc.Connection(reader, writer, theirs, self._handle)
        pid = theirs.get("node", "")
        if pid and pid != "cli" and pid not in self.peers and pid != self.id64:
            self.peers[pid] = Peer(pid, theirs.get("addr", ""))

    async def _peer_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._ensure_peer(p) for p in list(self.peers.values())))
            for p in self.peers.values():
                if p.is_up:
                    p.last_seen = time.time()
            self._save_peer_list()
            await asyncio.sleep(self.knobs.peer_retry_s)

    async def _ensure_peer(self, peer: Peer) -> None:
        if peer.is_up:
            return
        host, port = peer.addr.rsplit(":", 1)
        try:
            conn = await rpc.connect(host, int(port), self.hello(), self._handle, timeout=2.0)
        except rpc.RpcError:
            return
        if conn.peer.get("node") != peer.id64:
            conn.close()
            return
        peer.conn = conn
        peer.hostname = conn.peer.get("hostname")
        peer.last_seen = time.time()
        self.log("INFO", "netapp::peering::fullmesh", f"Successfully connected to {peer.id64[:16]} at {peer.addr}")

    def is_up(self, id64: str) -> bool:
        """Whether ``id64`` is this node or a connected peer."""
        if id64 == self.id64:
            return True
        peer = self.peers.get(id64)
        return peer is not None and peer.is_up

    async def call_node(self, id64: str, method: str, args: dict, timeout: float = 10.0):
        """Run ``method`` on node ``id64`` (locally when it is this node)."""
        if id64 == self.id64:
            return await self._handle(method, args, {"node": self.id64})
        peer = self.peers.get(id64)
        if peer is None or not peer.is_up:
            raise rpc.RpcError("closed", f"Not connected: {id64[:16]}")
        self.metrics.inc("rpc_request_counter", {"from": self.id16, "rpc_endpoint": f"garage_lab/{method}", "to": id64[:16]})
        return await peer.conn.call(method, args, timeout)

    # ------------------------------------------------------------------ RPC handlers
    async def _handle(self, method: str, args: dict, caller: dict):
        fn = getattr(self, "rpc_" + method, None)
        if fn is None:
            raise rpc.RpcError("remote", f"Unknown RPC {method}", "Internal")
        return await fn(**args)

    async def rpc_status(self):
        known = {}
        for p in self.peers.values():
            known[p.id64] = {"addr": p.addr, "is_up": p.is_up, "hostname": p.hostname,
                             "last_seen_secs_ago": None if p.last_seen is None else max(0.0, time.time() - p.last_seen)}
        known[self.id64] = {"addr": self.cfg.rpc_public_addr or self.cfg.rpc_bind_addr, "is_up": True,
                            "hostname": self.hostname, "last_seen_secs_ago": 0.0}
        return {"node": self.id64, "known": known, "layout": self.layout.to_json(),
                "disk": self.disk_stats}

    async def rpc_repair(self, what: str, yes: bool, all_nodes: bool, extra: dict | None = None):
        if not yes:
            raise rpc.RpcError("remote", "Please provide the --yes flag to initiate repair operations.", "BadRequest")
        if not all_nodes:
            self.launch_repair(what, extra or {})
            return {"launched": self.id16}
        failed = []
        for nid in self.layout.roles:  # layout.node_ids(): gateways and itself included
            try:
                await self.call_node(nid, "repair_local", {"what": what, "extra": extra or {}})
            except rpc.RpcError:
                failed.append(nid[:16])
        if failed:
            raise rpc.RpcError("remote", "Could not launch repair on nodes: [" + ", ".join(failed) +
                               "] (launched successfully on other nodes)", "BadRequest")
        return {"launched": "all"}

    async def rpc_repair_local(self, what: str, extra: dict):
        self.launch_repair(what, extra)
        return True

    async def rpc_stats(self, all_nodes: bool, detailed: bool):
        if not all_nodes:
            return {"nodes": [[self.id16, self.local_stats(detailed)]], "storage": self.storage_rows()}
        out = []
        for nid in self.layout.roles:
            try:
                out.append([nid[:16], await self.call_node(nid, "stats_local", {"detailed": detailed})])
            except rpc.RpcError as exc:
                if not self.p.stats_all_tolerant:
                    # 0.7.3 / 0.8.0: one unreachable node fails the whole command (ref 2.10)
                    raise rpc.RpcError("remote", f"Remote error: Netapp error: {exc}", "Internal")
                out.append([nid[:16], f"Network error: {exc}"])
        return {"nodes": out, "storage": self.storage_rows()}

    async def rpc_stats_local(self, detailed: bool):
        return self.local_stats(detailed)

    async def rpc_block_errors(self):
        now = time.time()
        queue = self.store.tree("block_local_resync_queue")
        rc = self.store.tree("block_local_rc")
        return [[h, rc.get(h, 0), e["errors"], now - e.get("last", now), queue.get(h, now) - now]
                for h, e in sorted(self.store.tree("block_local_resync_errors").items())]

    async def rpc_worker_list(self):
        self._refresh_worker_view()
        return [w.to_dict() for w in self.workers.all()]

    async def rpc_worker_set(self, variable: str, value: str, all_nodes: bool = False):
        if all_nodes:
            rows = []
            for nid in self.layout.roles:
                try:
                    rows += await self.call_node(nid, "worker_set", {"variable": variable, "value": value})
                except rpc.RpcError as exc:
                    raise rpc.RpcError("remote", f"Remote error: {exc}", "Internal")
            return rows
        variable = {"resync-n-workers": "resync-worker-count"}.get(variable, variable)
        if variable not in self.worker_vars():
            raise rpc.RpcError("remote", "Remote error: variable does not exist", "Internal")
        try:
            n = int(value)
        except ValueError:
            raise rpc.RpcError("remote", f"Remote error: invalid value: {value}", "Internal") from None
        if variable == "resync-worker-count":
            if not 1 <= n <= 4:
                raise rpc.RpcError("remote", "Remote error: Invalid number of resync workers, must be between 1 and 4", "Internal")
            self.resync_cfg["n_workers"] = n
        elif variable == "resync-tranquility":
            self.resync_cfg["tranquility"] = n
        elif variable == "scrub-tranquility":
            self.scrub["tranquility"] = n
            self._save_scrub()
        else:
            raise rpc.RpcError("remote", f"Remote error: Cannot set value of {variable}", "Internal")
        (self.cfg.metadata_dir / "resync_cfg").write_text(json.dumps(self.resync_cfg))
        return [[self.id16, variable, value]]

    async def rpc_worker_get(self, variable: str | None = None, all_nodes: bool = False):
        if all_nodes:
            rows = []
            for nid in self.layout.roles:
                try:
                    rows += await self.call_node(nid, "worker_get", {"variable": variable})
                except rpc.RpcError as exc:
                    raise rpc.RpcError("remote", f"Remote error: {exc}", "Internal")
            return rows
        vars_ = self.worker_vars()
        if variable is not None:
            if variable not in vars_:
                raise rpc.RpcError("remote", "Remote error: variable does not exist", "Internal")
            return [[self.id16, variable, vars_[variable]]]
        return [[self.id16, k, v] for k, v in sorted(vars_.items())]

    def worker_vars(self) -> dict[str, str]:
        return {
            "resync-worker-count": str(self.resync_cfg["n_workers"]),
            "resync-tranquility": str(self.resync_cfg["tranquility"]),
            "scrub-tranquility": str(self.scrub.get("tranquility", 4)),
            "scrub-last-completed": rfc3339_ms(self.scrub.get("time_last_complete_scrub", 0)),
            "scrub-next-run": rfc3339_ms(self.scrub.get("next_run", 0)),
            "scrub-corruptions_detected": str(self.scrub.get("corruptions_detected", 0)),
        }

    async def rpc_bucket_list(self):
        buckets = self.store.tree("bucket_v2:table")
        return [[[b["alias"]] if b.get("alias") else [], bid] for bid, b in sorted(buckets.items())
                if not b.get("deleted")]

    def _find_bucket(self, name: str) -> str:
        aliases = self.store.tree("bucket_alias:table")
        if name in aliases:
            return aliases[name]
        buckets = self.store.tree("bucket_v2:table")
        matches = [b for b in buckets if b.startswith(name)] if len(name) >= 8 else []
        if len(matches) == 1:
            return matches[0]
        raise rpc.RpcError("remote", "Bucket not found", "BadRequest")

    async def rpc_bucket_info(self, name: str):
        bid = self._find_bucket(name)
        b = self.store.tree("bucket_v2:table")[bid]
        info = {"id": bid, "alias": b.get("alias"), "website": b.get("website", False),
                "keys": b.get("keys", {}), "quotas": b.get("quotas", {}),
                "key_names": {k: v.get("name", "") for k, v in self.store.tree("key:table").items()}}
        if self.p.has_counters:
            info["counters"] = await self.read_counters(bid)
        return info

    async def rpc_bucket_set_quotas(self, name: str, max_size: str | None, max_objects: str | None):
        bid = self._find_bucket(name)
        quotas = dict(self.store.tree("bucket_v2:table")[bid].get("quotas", {}))
        if max_size is not None:
            quotas["max_size"] = None if max_size == "none" else parse_size(max_size)
        if max_objects is not None:
            quotas["max_objects"] = None if max_objects == "none" else int(max_objects)
        # bucket_v2 is fully replicated: write to every layout node, quorum all-but-one (ref 8)
        ok = 0
        for nid in self.layout.roles:
            try:
                await self.call_node(nid, "bucket_apply_quotas", {"bucket": bid, "quotas": quotas})
                ok += 1
            except rpc.RpcError:
                pass
        if ok < max(1, len(self.layout.roles) - 1):
            raise rpc.RpcError("remote", "Could not reach quorum of 2 (sets=[..]). 0 of 0 request succeeded, others returned errors", "Internal")
        return {"name": name}

    async def rpc_bucket_apply_quotas(self, bucket: str, quotas: dict):
        self.store.tree("bucket_v2:table")[bucket]["quotas"] = quotas
        self.store.mark_dirty()
        self.bump_merkle("bucket_v2", 1)
        return True

    # -- objects --------------------------------------------------------------
    async def rpc_obj_apply(self, bucket: str, key: str, entry: dict):
        self.apply_object(bucket, key, entry)
        return True

    async def rpc_obj_read(self, bucket: str, key: str):
        return self.store.tree("object:table").get(bucket, {}).get(key)

    async def rpc_sync_pull(self, table: str, partition: int):
        return self.partition_items(table, partition)

    async def rpc_sync_push(self, table: str, items: dict, sender: str):
        n = self.merge_items(table, items)
        if n:
            self.metrics.inc("table_sync_items_received", {"from": sender[:16], "table_name": table}, n)
        return n

    async def rpc_counter_push(self, bucket: str, node: str, value: dict):
        return self.merge_items("bucket_object_counter", {bucket: {node: value}})

    async def rpc_counter_read(self, bucket: str):
        return self.store.tree("bucket_object_counter:table").get(bucket, {})

    # ------------------------------------------------------------------ data model
    def bump_merkle(self, table: str, n: int) -> None:
        todo = self.store.tree("merkle_todo")
        todo[table] = todo.get(table, 0) + n
        self.store.mark_dirty()
        self._merkle_wakeup.set()

    async def _merkle_loop(self) -> None:
        """The Merkle tree updaters: items are processed as they come, at ``merkle_rate``.

        A real updater handles an item in about a millisecond, so under moderate write load
        its queue reads 0 nearly all the time; a coarse periodic drain would show a
        permanently non-zero queue and no sync gate could ever pass under traffic.
        """
        todo = self.store.tree("merkle_todo")
        while True:
            await self._merkle_wakeup.wait()
            self._merkle_wakeup.clear()
            while any(todo.values()) and not self.faults.find("queues-stuck"):
                for table in list(todo):
                    if todo[table]:
                        todo[table] -= 1
                self.store.mark_dirty()
                await asyncio.sleep(1.0 / max(1.0, self.knobs.merkle_rate))

    def apply_object(self, bucket: str, key: str, entry: dict) -> bool:
        """Insert an object entry if it is newer (LWW); update counters like 0.8 does."""
        objs = self.store.tree("object:table").setdefault(bucket, {})
        old = objs.get(key)
        if old is not None and (old["ts"], old.get("node", "")) >= (entry["ts"], entry.get("node", "")):
            return False
        objs[key] = entry
        self.bump_merkle("object", 1)
        if entry.get("deleted"):
            self.store.tree("gc_todo").setdefault("object", []).append(time.time() + self.knobs.gc_delay_s)
        if self.p.has_counters:
            delta = {f: counter_of(entry)[f] - counter_of(old)[f] for f in COUNTER_FIELDS}
            local = self.store.tree("local_counter_v2:bucket_object_counter").setdefault(
                bucket, {f: 0 for f in COUNTER_FIELDS})
            for f in COUNTER_FIELDS:
                local[f] += delta[f]
            self._publish_own_counter(bucket, dict(local))
        self.store.mark_dirty()
        return True

    def _publish_own_counter(self, bucket: str, values: dict) -> None:
        value = dict(values, ts=time.time_ns() // 1000)
        self.merge_items("bucket_object_counter", {bucket: {self.id64: value}})
        for nid in self.layout.nodes_of(partition_of(bytes.fromhex(bucket))):
            if nid != self.id64 and self.is_up(nid):
                asyncio.ensure_future(self._quiet_call(nid, "counter_push", {"bucket": bucket, "node": self.id64, "value": value}))

    async def _quiet_call(self, nid: str, method: str, args: dict) -> None:
        try:
            await self.call_node(nid, method, args)
        except rpc.RpcError:
            pass

    def partition_items(self, table: str, partition: int) -> dict:
        """Items of a bucket-partitioned table that fall in ``partition``."""
        tree = self.store.tree("object:table" if table == "object" else "bucket_object_counter:table")
        return {b: v for b, v in tree.items() if partition_of(bytes.fromhex(b)) == partition}

    def merge_items(self, table: str, items: dict) -> int:
        """Merge items received from a peer; return how many changed locally."""
        changed = 0
        if table == "object":
            for bucket, objs in items.items():
                for key, entry in objs.items():
                    changed += self.apply_object(bucket, key, entry)
        elif table == "bucket_object_counter" and self.p.has_counters:
            tree = self.store.tree("bucket_object_counter:table")
            for bucket, per_node in items.items():
                mine = tree.setdefault(bucket, {})
                for node, value in per_node.items():
                    if node not in mine or mine[node]["ts"] < value["ts"]:
                        mine[node] = value
                        changed += 1
            if changed:
                self.bump_merkle("bucket_object_counter", changed)
                self.store.mark_dirty()
        return changed

    async def read_counters(self, bucket: str) -> dict:
        """Counters as ``bucket info`` shows them: per field, the max over layout nodes."""
        merged: dict[str, dict] = {}
        for nid in self.layout.nodes_of(partition_of(bytes.fromhex(bucket))):
            try:
                entries = await self.call_node(nid, "counter_read", {"bucket": bucket})
            except rpc.RpcError:
                continue
            for node, value in entries.items():
                if node not in merged or merged[node]["ts"] < value["ts"]:
                    merged[node] = value
        vals = [v for n, v in merged.items() if n in self.layout.roles]
        return {f: max((v[f] for v in vals), default=0) for f in COUNTER_FIELDS}

    def launch_repair(self, what: str, extra: dict) -> None:
        """Queue a repair; it runs in the background (checklist 1)."""
        now = time.time()
        legacy = self.p.major_minor == (0, 7)
        if legacy:
            self.log("INFO", "garage_util::background", "Worker started: Repair worker")
        if what == "tables":
            self.log("INFO", "garage::repair", "Launching a full sync of tables")
            for table in REPAIR_TABLES:
                self.start_full_sync(table)
        elif what == "blocks":
            self.log("INFO", "garage::repair", "Repairing the stored blocks")
            self.repairs["blocks"] = {"phase": 1, "pos": 0, "started": now,
                                      "hashes": sorted(self.store.tree("block_local_rc"))}
            if not legacy:
                w = self.workers.add("Block repair worker")
                w.state = "Busy"
        elif what in ("versions", "block_refs"):
            table = "version:table" if what == "versions" else "block_ref:table"
            name = "Version repair worker" if what == "versions" else "Block refs repair worker"
            self.log("INFO", "garage::repair", "Repairing the versions table" if what == "versions" else "Repairing the block refs table")
            self.repairs[what] = {"pos": 0, "total": len(self.store.tree(table)), "name": name}
            if not legacy:
                self.workers.add(name).state = "Busy"
        elif what == "scrub":
            cmd = extra.get("cmd", "start")
            if legacy:
                self.log("INFO", "garage::repair", "Verifying integrity of stored blocks")
                self.repairs["scrub07"] = {"progress": 0.0}
            else:
                self.log("INFO", "garage::repair", f"Sending command to scrub worker: {cmd.capitalize()}")
                self.scrub_command(cmd, extra)
        if legacy and what != "blocks":
            # the 0.7.3 repair task exits within milliseconds: the work is only queued (ref 3.1)
            self.log("INFO", "garage_util::background", "Worker exited: Repair worker")

    def scrub_command(self, cmd: str, extra: dict) -> None:
        if cmd == "start":
            if self.scrub.get("progress") is not None:
                self.log("ERROR", "garage_block::repair", "Cannot start scrub worker: already running!")
                return
            self.scrub["progress"] = 0.0
        elif cmd == "cancel":
            self.scrub["progress"] = None
        elif cmd == "pause":
            self.scrub["paused_until"] = time.time() + 86400
        elif cmd == "resume":
            self.scrub.pop("paused_until", None)
        elif cmd == "set-tranquility":
            self.scrub["tranquility"] = int(extra.get("tranquility", 4))
        self._save_scrub()

    def start_full_sync(self, table: str) -> None:
        full_copy = table in ("bucket_v2", "bucket_alias", "key")
        parts = [0] if full_copy else list(range(256))
        random.shuffle(parts)
        self.sync_todo[table] = parts

    # ------------------------------------------------------------------ background
    def rate_budget(self, name: str, rate: float, dt: float) -> int:
        """Whole items a worker may process this tick, carrying fractions over."""
        self._carry[name] = self._carry.get(name, 0.0) + rate * dt
        n = int(self._carry[name])
        self._carry[name] -= n
        return n

    async def _tick_loop(self) -> None:
        last = time.time()
        while True:
            await asyncio.sleep(0.1)
            now = time.time()
            dt = now - last
            last = now
            self.knobs_w.refresh()
            self.faults_w.refresh()
            try:
                await self.tick(now, dt)
            except Exception as exc:  # noqa: BLE001 - a lab bug must show in the log, not kill the node
                self.log("ERROR", "garage_lab", f"tick failed: {type(exc).__name__}: {exc}")
            if now - self._last_flush >= self.cfg.sled_flush_every_ms / 1000:
                self.store.flush()
                self._last_flush = now

    async def tick(self, now: float, dt: float) -> None:
        k = self.knobs
        stuck = self.faults.find("queues-stuck") is not None
        self._apply_errored_blocks_fault()
        if any(self.store.tree("merkle_todo").values()):
            self._merkle_wakeup.set()  # re-check after a queues-stuck fault is cleared
        # GC queues drain only after TABLE_GC_DELAY
        for table, dues in self.store.tree("gc_todo").items():
            keep = [d for d in dues if d > now]
            if len(keep) != len(dues):
                self.store.tree("gc_todo")[table] = keep
                self.store.mark_dirty()
        # periodic anti-entropy full sync (20 s after start, then every 10 min)
        if now >= self.next_anti_entropy:
            self.next_anti_entropy = now + k.anti_entropy_interval_s
            for table in tables_for(self.p):
                if table not in ("k2v_item", "k2v_index_counter_v2"):
                    self.start_full_sync(table)
        await self._tick_sync(dt)
        self._tick_block_repair(dt)
        if not stuck:
            await self._tick_resync(now, dt)
        self._tick_items_repair(dt)
        self._tick_scrub(now, dt)
        await self._tick_counter_queue(dt)
        if self.p.build_info_metric and now - self.started >= k.disk_stats_interval_s and self.disk_stats is None:
            self.disk_stats = self._measure_disks()

    async def _tick_sync(self, dt: float) -> None:
        for table, parts in self.sync_todo.items():
            if not parts:
                continue
            n = self.rate_budget("sync:" + table, self.knobs.sync_rate, dt)
            batch = [parts.pop() for _ in range(min(n, len(parts)))]
            if batch:
                await asyncio.gather(*(self.sync_partition(table, p) for p in batch))

    async def sync_partition(self, table: str, partition: int) -> None:
        """Reconcile one partition of ``table`` with the other replicas (LWW merge)."""
        w = self.workers.get(f"{table} sync")
        if table not in ("object", "bucket_object_counter"):
            return  # the other tables do not change in the lab: their Merkle roots agree
        nodes = self.layout.nodes_of(partition)
        if self.id64 not in nodes:
            return
        others = [n for n in nodes if n != self.id64]
        down = [n for n in others if not self.is_up(n)]
        for nid in others:
            if nid in down:
                continue
            try:
                theirs = await self.call_node(nid, "sync_pull", {"table": table, "partition": partition})
                got = self.merge_items(table, theirs)
                if got:
                    self.metrics.inc("table_sync_items_received", {"from": nid[:16], "table_name": table}, got)
                mine = self.partition_items(table, partition)
                sent = await self.call_node(nid, "sync_push", {"table": table, "items": mine, "sender": self.id64})
                if sent:
                    self.metrics.inc("table_sync_items_sent", {"table_name": table, "to": nid[:16]}, sent)
                    self.log("INFO", "garage_table::sync", f"({table}) Sending {sent} items to {nid[:16]}")
            except rpc.RpcError:
                down.append(nid)
        if down and w is not None:
            msg = "Sync failed with too many nodes (should have been: [" + ", ".join(n[:16] for n in nodes) + "])."
            w.record_error(msg)
            self.log("ERROR", "garage_util::background::worker", f"Error in worker {table} sync (TID {w.tid}): {msg}")
        elif w is not None:
            w.record_success()

    def _tick_block_repair(self, dt: float) -> None:
        rep = self.repairs.get("blocks")
        if not rep or rep.get("done"):
            return
        queue = self.store.tree("block_local_resync_queue")
        n = self.rate_budget("block_repair", self.knobs.block_repair_rate, dt)
        if rep["phase"] == 1:
            hashes = rep["hashes"]
            for h in hashes[rep["pos"]: rep["pos"] + n]:
                queue.setdefault(h, time.time())
            rep["pos"] = min(len(hashes), rep["pos"] + n)
            if rep["pos"] >= len(hashes):
                rep["phase"] = 2
                rep["pos"] = 0
                rep["files"] = sorted(self._data_blocks())
        else:
            files = rep["files"]
            for h in files[rep["pos"]: rep["pos"] + n]:
                queue.setdefault(h, time.time())
            rep["pos"] = min(len(files), rep["pos"] + n)
            if rep["pos"] >= len(files):
                rep["done"] = True
                if self.p.major_minor == (0, 7):
                    self.log("INFO", "garage_util::background", "Worker exited: Repair worker")
                else:
                    w = self.workers.get("Block repair worker")
                    w.state = "Done"
                    self.log("INFO", "garage_util::background::worker", f"Worker Block repair worker (TID {w.tid}) exited")
        self.store.mark_dirty()

    def _data_blocks(self) -> list[str]:
        out = []
        root = self.cfg.data_dir
        if not root.is_dir():
            return out
        for d1 in os.scandir(root):
            if d1.is_dir() and len(d1.name) == 2:
                for d2 in os.scandir(d1.path):
                    if d2.is_dir():
                        out.extend(f.name.split(".")[0] for f in os.scandir(d2.path) if len(f.name.split(".")[0]) == 64)
        return out

    def _apply_errored_blocks_fault(self) -> None:
        fault = self.faults.find("errored-blocks")
        want = int(fault.get("count_blocks", fault.get("blocks", 3))) if fault else 0
        bad = self.store.tree("lab_bad_blocks")
        if want and len(bad) < want:
            for h in sorted(self.store.tree("block_local_rc"))[: want]:
                if h not in bad:
                    bad[h] = True
                    self.store.tree("block_local_resync_queue")[h] = time.time()
            self.store.mark_dirty()
        elif not want and bad:
            bad.clear()
            self.store.mark_dirty()

    async def _tick_resync(self, now: float, dt: float) -> None:
        queue = self.store.tree("block_local_resync_queue")
        errors = self.store.tree("block_local_resync_errors")
        if not queue:
            return
        n = self.rate_budget("resync", self.knobs.resync_rate * self.resync_cfg["n_workers"], dt)
        due = sorted((t, h) for h, t in queue.items() if t <= now)[:n]
        bad = self.store.tree("lab_bad_blocks")
        for _, h in due:
            if h in bad:
                e = errors.setdefault(h, {"errors": 0})
                e["errors"] += 1
                e["last"] = now
                delay = self.knobs.resync_backoff_base_s * 2 ** min(e["errors"] - 1, 6)
                queue[h] = now + delay
                self.metrics.inc("block_resync_error_counter", {})
                self.log("WARN", "garage_block::resync", f"Error when resyncing {h}: NotFound")
            else:
                del queue[h]
                errors.pop(h, None)
                self.metrics.inc("block_resync_counter", {})
                self._ensure_block_file(h)
        if due:
            self.store.mark_dirty()

    def _ensure_block_file(self, h: str) -> None:
        needed = self.store.tree("block_local_rc").get(h, 0) > 0
        path = self.cfg.data_dir / h[:2] / h[2:4] / h
        if needed and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes.fromhex(h))
            self.log("INFO", "garage_block::resync", f"Resync block {h[:16]}: fetching absent but needed block (refcount > 0)")
        elif not needed and path.exists():
            path.unlink()
            self.log("INFO", "garage_block::resync", f"Resync block {h[:16]}: offloading and deleting")

    def _tick_items_repair(self, dt: float) -> None:
        for what in ("versions", "block_refs"):
            rep = self.repairs.get(what)
            if not rep or rep.get("done"):
                continue
            rep["pos"] = min(rep["total"], rep["pos"] + self.rate_budget("rep:" + what, self.knobs.items_repair_rate, dt))
            if rep["pos"] >= rep["total"]:
                rep["done"] = True
                if self.p.major_minor == (0, 7):
                    self.log("INFO", "garage_util::background", "Worker exited: Repair worker")
                else:
                    w = self.workers.get(rep["name"])
                    w.state = "Done"
                    fn = "repair_versions" if what == "versions" else "repair_block_ref"
                    self.log("INFO", "garage_model::repair", f"{fn}: finished, done {rep['pos']}")
                    self.log("INFO", "garage_util::background::worker", f"Worker {rep['name']} (TID {w.tid}) exited")

    def _tick_scrub(self, now: float, dt: float) -> None:
        if self.p.major_minor == (0, 7):
            rep = self.repairs.get("scrub07")
            if rep and rep["progress"] < 100:
                rep["progress"] = min(100.0, rep["progress"] + self.knobs.scrub_rate_pct * dt)
                if rep["progress"] >= 100:
                    self.log("INFO", "garage_util::background", "Worker exited: Repair worker")
            return
        if self.scrub.get("progress") is None and now >= self.scrub.get("next_run", now + 1):
            self.scrub["progress"] = 0.0
            if self.p.queue_workers:
                self.log("INFO", "garage_block::repair", "Scrub worker initializing, now performing datastore scrub")
        prog = self.scrub.get("progress")
        if prog is not None and now >= self.scrub.get("paused_until", 0):
            prog = min(100.0, prog + self.knobs.scrub_rate_pct * dt)
            self.scrub["progress"] = prog
            if prog >= 100.0:
                self.scrub["progress"] = None
                self.scrub["time_last_complete_scrub"] = now
                self.scrub["next_run"] = now + (SCRUB_INTERVAL_08 if self.p.first_scrub_immediate
                                                else 25 * 86400 + random.uniform(0, 10 * 86400))
                self._save_scrub()

    async def _tick_counter_queue(self, dt: float) -> None:
        if not self.p.queue_workers:
            return
        q = self.store.tree(INSERT_QUEUE_TREE)
        if not q:
            return
        n = self.rate_budget("counterq", self.knobs.counter_queue_rate, dt)
        w = self.workers.get("bucket_object_counter queue")
        for bucket in sorted(q)[:n]:
            value = q[bucket]
            replicas = self.layout.nodes_of(partition_of(bytes.fromhex(bucket)))
            ok = 0
            for nid in replicas:
                try:
                    await self.call_node(nid, "counter_push", {"bucket": bucket, "node": self.id64, "value": value})
                    ok += 1
                except rpc.RpcError:
                    pass
            if ok >= self.cfg.write_quorum:
                del q[bucket]
                w.record_success()
            else:
                w.record_error("Could not reach quorum")
            self.store.mark_dirty()

    def _measure_disks(self) -> dict:
        out = {}
        for vol, path in (("data", self.cfg.data_dir), ("metadata", self.cfg.metadata_dir)):
            st = shutil.disk_usage(path)
            out[vol] = [st.free, st.total]
        return out

    # ------------------------------------------------------------------ views
    def local_stats(self, detailed: bool) -> dict:
        todo = self.store.tree("merkle_todo")
        gc = self.store.tree("gc_todo")
        tables = []
        for t in STATS_TABLES:
            items = None
            if detailed:
                items = self._count_items(t)
            tables.append({"name": t, "items": items, "merkle_items": items,
                           "merkle_todo": todo.get(t, 0), "gc_todo": len(gc.get(t, []))})
        ring: dict[str, int] = {}
        for part in self.layout.ring:
            for n in part:
                ring[n[:16]] = ring.get(n[:16], 0) + 1
        return {"version": self.p.version, "tables": tables,
                "rc_entries": len(self.store.tree("block_local_rc")) if detailed else None,
                "resync_queue": len(self.store.tree("block_local_resync_queue")),
                "resync_errors": len(self.store.tree("block_local_resync_errors")),
                "ring": sorted(ring.items())}

    def _count_items(self, table: str) -> int:
        tree = self.store.tree(f"{table}:table")
        if table == "object":
            return sum(len(v) for v in tree.values())
        return len(tree)

    def storage_rows(self) -> list[dict]:
        rows = []
        parts: dict[str, int] = {}
        for part in self.layout.ring:
            for n in part:
                parts[n] = parts.get(n, 0) + 1
        for nid, role in self.layout.roles.items():
            if role.capacity is None:
                continue
            peer = self.peers.get(nid)
            host = self.hostname if nid == self.id64 else (peer.hostname if peer and peer.hostname else "?")
            disk = self.disk_stats if nid == self.id64 else None
            rows.append({"id16": nid[:16], "hostname": host, "zone": role.zone, "capacity": role.capacity,
                         "partitions": parts.get(nid, 0),
                         "data_avail": disk["data"] if disk else None,
                         "meta_avail": disk["metadata"] if disk else None})
        return rows

    def _refresh_worker_view(self) -> None:
        todo = self.store.tree("merkle_todo")
        gc = self.store.tree("gc_todo")
        stuck = self.faults.find("queues-stuck") is not None
        for table in tables_for(self.p):
            m = self.workers.merkle(table)
            m.queue = todo.get(table, 0)
            m.state = "Busy" if m.queue else "Idle"
            m.info = [f"{m.queue} items in queue"] if m.queue else []
            s = self.workers.get(f"{table} sync")
            left = len(self.sync_todo.get(table, []))
            s.queue = left
            s.state = ("Throttled" if s.consecutive_errors else "Busy") if left else "Idle"
            s.throttle_secs = 1.5 if s.consecutive_errors else 0.0
            s.info = [f"{left} partitions remaining"] if left else []
            g = self.workers.get(f"{table} GC")
            g.queue = len(gc.get(table, []))
            g.state = "Idle"
            g.info = [f"{g.queue} items in queue"] if g.queue else []
            qw = self.workers.get(f"{table} queue")
            if qw is not None:
                qlen = len(self.store.tree(INSERT_QUEUE_TREE)) if table == "bucket_object_counter" else 0
                qw.queue = qlen
                qw.state = ("Throttled" if qw.consecutive_errors else "Busy") if qlen else "Idle"
        rq = len(self.store.tree("block_local_resync_queue"))
        errs = len(self.store.tree("block_local_resync_errors"))
        for i in range(1, 5):
            w = self.workers.get(f"Block resync worker #{i}")
            active = i <= self.resync_cfg["n_workers"]
            w.tranq = self.resync_cfg["tranquility"] if active else None
            w.queue = rq if active else None
            busy = active and rq > 0 and not stuck
            # late 0.8: resync shows Busy* during normal tranquilized work (late 1.1)
            w.state = ("Throttled" if self.p.worker_list_table else "Busy") if busy else "Idle"
            w.throttle_secs = 0.5 if busy else 0.0
            w.persistent_errors = errs if active else None
            if not active:
                w.info = ["(unused)"]
                w.message = ["This worker is currently disabled"]
            else:
                info = f"tranquility = {self.resync_cfg['tranquility']}, {rq} blocks in queue" if rq else ""
                if errs:
                    info += (", " if info else "") + f"{errs} blocks in error state"
                w.info = [info] if info else []
        sc = self.workers.get("Block scrub worker")
        prog = self.scrub.get("progress")
        sc.tranq = self.scrub.get("tranquility", 4)
        corr = self.scrub.get("corruptions_detected", 0)
        sc.persistent_errors = corr
        if prog is not None:
            paused = time.time() < self.scrub.get("paused_until", 0)
            sc.state = "Idle" if paused else ("Throttled" if self.p.worker_list_table else "Busy")
            sc.throttle_secs = 4.0 if sc.state == "Throttled" else 0.0
            sc.progress = f"{prog:.2f}%"
            sc.info = [(f"Paused, {prog:.2f}% done, resumes at {rfc3339_ms(self.scrub['paused_until'])}" if paused
                        else f"{prog:.2f}% done (tranquility = {sc.tranq})") + f" ; corruptions detected: {corr}"]
        else:
            sc.state = "Idle"
            sc.progress = None
            sc.info = [f"Last completed scrub: {rfc3339_ms(self.scrub.get('time_last_complete_scrub', 0))} ; corruptions detected: {corr}"]
        sc.message = [f"Last scrub completed at {rfc3339_ms(self.scrub.get('time_last_complete_scrub', 0))}"]
        if self.p.queue_workers:
            sc.message.append(f"Next scrub scheduled for {rfc3339_ms(self.scrub.get('next_run', 0))}")
        rep = self.repairs.get("blocks")
        br = self.workers.get("Block repair worker")
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
            rep = self.repairs.get(what)
            if rep:
                w = self.workers.get(rep["name"])
                if w is not None:
                    w.progress = str(rep["pos"])
                    w.info = [f"{rep['pos']} items done"]

    # ------------------------------------------------------------------ HTTP servers
    async def _read_http(self, reader) -> tuple[str, str, dict, bytes] | None:
        line = await reader.readline()
        if not line:
            return None
        try:
            method, target, _ = line.decode("latin-1").split(" ", 2)
        except ValueError:
            return None
        headers = {}
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        body = b""
        n = int(headers.get("content-length", "0") or 0)
        if n:
            body = await reader.readexactly(n)
        return method, target, headers, body

    @staticmethod
    async def _respond(writer, status: int, reason: str, body: bytes, ctype: str = "text/plain") -> None:
        writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()

    async def _serve_http(self, reader, writer, handler) -> None:
        try:
            while True:
                req = await self._read_http(reader)
                if req is None:
                    break
                res = await handler(*req, writer.get_extra_info("peername"))
                if res is None:  # drop the connection (fault)
                    break
                await self._respond(writer, *res)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    async def _admin_accept(self, reader, writer):
        await self._serve_http(reader, writer, self._admin)

    async def _s3_accept(self, reader, writer):
        await self._serve_http(reader, writer, self._s3)

    async def _web_accept(self, reader, writer):
        async def web(method, target, headers, body, peer):
            self.metrics.inc("web_request_counter", {"method": method})
            self.metrics.inc("web_error_counter", {"method": method, "status_code": "404 Not Found"})
            return 404, "Not Found", b"Not found\n"
        await self._serve_http(reader, writer, web)

    def _admin_error(self, status: int, code: str, message: str, path: str) -> tuple:
        body = json.dumps({"code": code, "message": message, "region": self.cfg.s3_region, "path": path}, indent=2).encode()
        reason = {400: "Bad Request", 403: "Forbidden"}[status]
        return status, reason, body, "application/json"

    async def _admin(self, method, target, headers, body, peer):
        t0 = time.time()
        path = target.split("?", 1)[0]
        self.log("INFO", "garage_api::generic_server", f"{peer[0]}:{peer[1]} {method} {path}")
        auth = headers.get("authorization", "")
        if path == "/metrics" and method == "GET":
            endpoint = "Metrics"
            if self.faults.find("metrics-down"):
                return None
            if self.cfg.metrics_token:
                if not auth:
                    return self._admin_error(403, "AccessDenied", "Forbidden: Authorization token must be provided", path)
                if auth != f"Bearer {self.cfg.metrics_token}":
                    return self._admin_error(403, "AccessDenied", self.p.bad_token_text, path)
            res = (200, "OK", self.exposition().encode(), "text/plain; version=0.0.4")
        elif path == "/health" and self.p.has_health and method == "GET":
            endpoint = "Health"
            h = self.health()
            text = {"Healthy": "Garage is fully operational", "Degraded": "Garage is operational but some storage nodes are unavailable",
                    "Unavailable": "Quorum is not available for some/all partitions, reads and writes will fail"}[h["status"]]
            text += "\nConsult the full health check API endpoint at /v0/health for more details\n"
            res = (503, "Service Unavailable", text.encode()) if h["status"] == "Unavailable" else (200, "OK", text.encode())
        elif path in ("/v0/status", "/v0/health") and method == "GET" and (path == "/v0/status" or self.p.has_health):
            endpoint = "GetClusterStatus" if path == "/v0/status" else "GetClusterHealth"
            if not self.cfg.admin_token:
                return self._admin_error(403, "AccessDenied", "Forbidden: Admin token isn't configured, admin API access is disabled for security.", path)
            if not auth:
                return self._admin_error(403, "AccessDenied", "Forbidden: Authorization token must be provided", path)
            if auth != f"Bearer {self.cfg.admin_token}":
                return self._admin_error(403, "AccessDenied", self.p.bad_token_text, path)
            payload = self.v0_status() if path == "/v0/status" else self.health()
            res = (200, "OK", json.dumps(payload, indent=2).encode(), "application/json")
        else:
            return self._admin_error(400, "InvalidRequest", f"Bad request: Unknown API endpoint: {method} {path}", path)
        self.metrics.inc("api_admin_request_counter", {"api_endpoint": endpoint})
        self.metrics.observe("api_admin_request_duration", {"api_endpoint": endpoint}, time.time() - t0)
        return res

    def health(self) -> dict:
        storage = self.layout.storage_nodes()
        connected = [n for n in storage if self.is_up(n)]
        quorum = sum(1 for part in self.layout.ring if sum(self.is_up(n) for n in part) >= self.cfg.write_quorum)
        all_ok = sum(1 for part in self.layout.ring if all(self.is_up(n) for n in part))
        if quorum == 256 and len(connected) == len(storage):
            status = "Healthy"
        elif quorum == 256:
            status = "Degraded"
        else:
            status = "Unavailable"
        return {"status": status, "known_nodes": len(self.peers) + 1,
                "connected_nodes": sum(p.is_up for p in self.peers.values()) + 1,
                "storage_nodes": len(storage), "storage_nodes_ok": len(connected),
                "partitions": 256, "partitions_quorum": quorum, "partitions_all_ok": all_ok}

    def v0_status(self) -> dict:
        known = {}
        for p in self.peers.values():
            known[p.id64] = {"addr": p.addr, "is_up": p.is_up, "hostname": p.hostname or "",
                             "last_seen_secs_ago": None if p.last_seen is None else int(time.time() - p.last_seen)}
        known[self.id64] = {"addr": self.cfg.rpc_public_addr, "is_up": True, "hostname": self.hostname, "last_seen_secs_ago": 0}
        out = {"node": self.id64, "garageVersion": self.p.tag}
        if self.p.features:
            out["garageFeatures"] = [f.strip() for f in self.p.features.split(",")]
        if self.p.rust_version:
            out["rustVersion"] = self.p.rust_version
        if self.p.major_minor == (0, 8):
            out["dbEngine"] = "Sled"
        out["knownNodes"] = known
        out["layout"] = {"version": self.layout.version,
                         "roles": {n: {"zone": r.zone, "capacity": r.capacity, "tags": list(r.tags)} for n, r in self.layout.roles.items()},
                         "stagedRoleChanges": {}}
        return out

    def exposition(self) -> str:
        fams: list[render.MetricFamily] = []
        p = self.p
        if p.full_metrics:
            todo = self.store.tree("merkle_todo")
            gc = self.store.tree("gc_todo")
            tables = tables_for(p)
            fams.append(render.MetricFamily("table_merkle_updater_todo_queue_length", "Merkle tree updater TODO queue length", "gauge",
                                            [({"table_name": t}, float(todo.get(t, 0))) for t in tables]))
            fams.append(render.MetricFamily("table_gc_todo_queue_length", "Table garbage collector TODO queue length", "gauge",
                                            [({"table_name": t}, float(len(gc.get(t, [])))) for t in tables]))
            fams.append(render.MetricFamily("block_resync_queue_length", "Number of block hashes queued for local check and possible resync", "gauge",
                                            [({}, float(len(self.store.tree("block_local_resync_queue"))))]))
            fams.append(render.MetricFamily("block_resync_errored_blocks", "Number of block hashes whose last resync resulted in an error", "gauge",
                                            [({}, float(len(self.store.tree("block_local_resync_errors"))))]))
            if p.build_info_metric:
                fams.append(render.MetricFamily("garage_build_info", "Build information", "gauge",
                                                [({"rustversion": p.rust_version or "", "version": p.tag}, 1.0)]))
                fams.append(render.MetricFamily("garage_replication_factor", "Garage replication factor setting", "gauge",
                                                [({}, float(self.cfg.replication_factor))]))
                fams.append(render.MetricFamily("block_compression_level", "Garage compression level for node", "gauge", [({}, 1.0)]))
                if self.disk_stats:
                    fams.append(render.MetricFamily("garage_local_disk_avail", "Garage available disk space on each node", "gauge",
                                                    [({"volume": v}, float(a)) for v, (a, _t) in sorted(self.disk_stats.items())]))
                    fams.append(render.MetricFamily("garage_local_disk_total", "Garage total disk space on each node", "gauge",
                                                    [({"volume": v}, float(t)) for v, (_a, t) in sorted(self.disk_stats.items())]))
        by_name: dict[str, list] = {}
        for (name, labels), value in sorted(self.metrics.counters.items()):
            if not p.full_metrics and not name.startswith(("api_", "web_")):
                continue  # 0.7.3: table/block/rpc instruments are no-ops (ref 4.3)
            by_name.setdefault(name, []).append((dict(labels), value))
        for name, samples in by_name.items():
            fams.append(render.MetricFamily(name, name.replace("_", " "), "counter", samples))
        hist: dict[str, list] = {}
        for (name, labels), values in sorted(self.metrics.hists.items()):
            if not p.full_metrics and not name.startswith(("api_", "web_")):
                continue
            hist.setdefault(name, []).append((dict(labels), values))
        for name, series in hist.items():
            fams.append(render.MetricFamily(name, name.replace("_", " "), "histogram", series))
        return render.render_exposition(p, fams)

    async def _s3(self, method, target, headers, body, peer):
        path = target.split("?", 1)[0].lstrip("/")
        bucket_name, _, key = path.partition("/")
        endpoint = {"PUT": "PutObject", "GET": "GetObject", "DELETE": "DeleteObject"}.get(method, "Unknown")
        self.metrics.inc("api_s3_request_counter", {"api_endpoint": endpoint})
        aliases = self.store.tree("bucket_alias:table")
        if bucket_name not in aliases or not key or endpoint == "Unknown":
            self.metrics.inc("api_s3_error_counter", {"api_endpoint": endpoint, "status_code": "404"})
            return 404, "Not Found", b'{"error":"NoSuchBucket"}', "application/json"
        bucket = aliases[bucket_name]
        replicas = self.layout.nodes_of(partition_of(bytes.fromhex(bucket)))
        if method in ("PUT", "DELETE"):
            if method == "PUT" and self.p.has_counters:
                err = await self._check_quota(bucket, len(body))
                if err:
                    return 403, "Forbidden", json.dumps({"error": err}).encode(), "application/json"
            entry = {"ts": time.time_ns() // 1000, "node": self.id64, "deleted": method == "DELETE",
                     "size": 0 if method == "DELETE" else len(body),
                     "inline": None if method == "DELETE" else base64.b64encode(body).decode()}
            results = await asyncio.gather(*(self.call_node(n, "obj_apply", {"bucket": bucket, "key": key, "entry": entry}, timeout=5)
                                             for n in replicas), return_exceptions=True)
            ok = sum(1 for r in results if r is True)
            if ok < self.cfg.write_quorum:
                self.metrics.inc("api_s3_error_counter", {"api_endpoint": endpoint, "status_code": "503"})
                msg = f"Could not reach quorum of {self.cfg.write_quorum}. {ok} of {len(replicas)} request succeeded"
                return 503, "Service Unavailable", json.dumps({"error": msg}).encode(), "application/json"
            return 200, "OK", json.dumps({"ts": entry["ts"], "replicas": ok}).encode(), "application/json"
        results = await asyncio.gather(*(self.call_node(n, "obj_read", {"bucket": bucket, "key": key}, timeout=5)
                                         for n in replicas), return_exceptions=True)
        answers = [r for r in results if not isinstance(r, Exception)]
        if len(answers) < self.cfg.read_quorum:
            return 503, "Service Unavailable", b'{"error":"Could not reach read quorum"}', "application/json"
        entries = [a for a in answers if a]
        if not entries:
            return 404, "Not Found", b'{"error":"NoSuchKey"}', "application/json"
        newest = max(entries, key=lambda e: (e["ts"], e.get("node", "")))
        if newest.get("deleted"):
            return 404, "Not Found", b'{"error":"NoSuchKey"}', "application/json"
        return 200, "OK", base64.b64decode(newest["inline"] or ""), "application/octet-stream"

    async def _check_quota(self, bucket: str, size: int) -> str | None:
        quotas = self.store.tree("bucket_v2:table").get(bucket, {}).get("quotas") or {}
        if not quotas.get("max_size") and not quotas.get("max_objects"):
            return None
        c = await self.read_counters(bucket)
        if quotas.get("max_objects") is not None and c["objects"] >= quotas["max_objects"]:
            return f"Object quota is reached, maximum objects for this bucket: {quotas['max_objects']}"
        if quotas.get("max_size") is not None and c["bytes"] + size > quotas["max_size"]:
            return f"Bucket size quota is reached, maximum total size of objects for this bucket: {quotas['max_size']}. The bucket is already {c['bytes']} bytes, and this object would add {size} bytes."
        return None


def counter_of(entry: dict | None) -> dict:
    """The (objects, unfinished_uploads, bytes) an object entry contributes to its bucket."""
    if entry is None or entry.get("deleted"):
        return {"objects": 0, "unfinished_uploads": 0, "bytes": 0}
    return {"objects": 1, "unfinished_uploads": 0, "bytes": entry.get("size", 0)}


def parse_size(text: str) -> int:
    """Parse ``10GiB`` / ``5M`` / ``123`` like the bytesize crate's ``FromStr`` (approximately)."""
    units = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 1 << 20,
             "g": 10**9, "gb": 10**9, "gib": 1 << 30, "t": 10**12, "tb": 10**12, "tib": 1 << 40}
    s = text.strip().lower()
    i = len(s)
    while i and not s[i - 1].isdigit() and s[i - 1] != ".":
        i -= 1
    return int(float(s[:i]) * units[s[i:].strip()])


def fail_lock(p: Personality, exc: LockHeld, location: str) -> None:
    """Exit the way the version does when the sled lock is held (ref 2.12; late 3.2)."""
    if p.offline_repair_lock_panics:
        msg = f'Unable to open sled DB: Io(Custom {{ kind: Other, error: "{exc.text.replace(chr(34), chr(92) + chr(34))}" }})'
        sys.stderr.write(render.panic_banner(p, msg, location))
        sys.stderr.flush()
        os.abort()
    sys.stderr.write(f"Error: Unable to open sled DB: IO error: {exc.text}\n")
    sys.exit(1)


def run_server(p: Personality, cfg: NodeConfig, node_dir: Path | None) -> int:
    """Entry point of ``garage server``."""
    if node_dir is not None:
        fault = consume_fault(node_dir / "faults.json", "refuse-start")
        if fault:
            sys.stderr.write(f"Error: {fault.get('message', 'lab fault: refusing to start')}\n")
            return 1
    daemon = Daemon(p, cfg, node_dir)
    daemon.open()

    async def main() -> int:
        return await daemon.run()

    return asyncio.run(main())
