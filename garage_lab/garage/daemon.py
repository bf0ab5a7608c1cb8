"""``garage server``: the simulated daemon of one node, composed of its parts.

One OS process per node. It holds the sled lock on ``<metadata_dir>/db/db`` for its whole life
and runs, each in its own module:

- :mod:`.lifecycle`: opening the metadata (key, layout, lock, trees), signals, shutdown;
- :mod:`.peering`: the RPC server with the version-tag handshake, the peer connections, and
  ``call_node`` (how every part reaches a node, this one included);
- :mod:`.rpc_api`: the RPC methods the CLI and the peers call;
- :mod:`.tables`: the object and counter tables (LWW merge, counters, Merkle work);
- :mod:`.background`: the background runner (Merkle, syncs, resync, repairs, scrub, queues);
- :mod:`.workers`: what ``worker list`` shows of that work;
- :mod:`.admin_api`: ``/metrics``, ``/v0/status``, ``/health``;
- :mod:`.object_api`: the S3 API (path-style, SigV4) and the web port.

:class:`Daemon` holds the state they share (personality, config, store, layout, peers, worker
records, scrub and resync settings) and wires them together; it has no behaviour of its own
beyond starting and stopping them in order.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from pathlib import Path

from .admin_api import AdminApi
from .background import Background
from .config import NodeConfig
from .knobs import Faults, Knobs, Watched, consume_fault
from .lifecycle import Lifecycle
from .object_api import ObjectApi
from .peering import Peering
from .personality import Personality
from .rpc_api import RpcApi
from .store import Store
from .tables import Tables
from .telemetry import Logger, Metrics
from .workers import WorkerSet

NOWHERE = Path("/nonexistent")  # a daemon run outside a lab has no knob or fault files


class Daemon:
    """The state of one running node, and the parts that act on it."""

    def __init__(self, p: Personality, cfg: NodeConfig, node_dir: Path | None):
        self.p = p
        self.cfg = cfg
        self.log = Logger(p)
        self.node_dir = node_dir
        self.knobs_w = Watched(node_dir / "lab.json" if node_dir else NOWHERE, Knobs.load)
        self.faults_w = Watched(node_dir / "faults.json" if node_dir else NOWHERE, Faults.load)
        self.store = Store(cfg.metadata_dir)
        self.started = time.time()
        self.hostname = node_dir.name if node_dir is not None else socket.gethostname()
        # set by Lifecycle.open()
        self.id64 = ""
        self.id16 = ""
        self.layout = None
        # shared state of the parts
        self.peers: dict = {}
        self.metrics = Metrics()
        self.workers = WorkerSet(p)
        self.sync_todo: dict[str, list[int]] = {}
        self.scrub: dict = {}
        self.repairs: dict[str, dict] = {}
        self.resync_cfg = {"n_workers": 1, "tranquility": 2}
        self.disk_stats: dict | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.stopping = asyncio.Event()
        self.stop_signal: str | None = None
        # the parts
        self.lifecycle = Lifecycle(self)
        self.peering = Peering(self)
        self.rpc_api = RpcApi(self)
        self.tables = Tables(self)
        self.background = Background(self)
        self.admin = AdminApi(self)
        self.s3 = ObjectApi(self)

    @property
    def knobs(self) -> Knobs:
        """The lab knobs as last read (refreshed by the tick loop)."""
        return self.knobs_w.value

    @property
    def faults(self) -> Faults:
        """The injected faults as last read (refreshed by the tick loop and on signals)."""
        return self.faults_w.value

    def save_scrub(self) -> None:
        """Persist ``scrub_info`` (0.8 keeps the scrub state across restarts)."""
        (self.cfg.metadata_dir / "scrub_info").write_text(json.dumps(self.scrub, sort_keys=True))

    def open(self) -> None:
        """Open the metadata (exits like Garage on failure): see :meth:`.Lifecycle.open`."""
        self.lifecycle.open()

    async def _listen(self, addr: str, accept) -> None:
        host, port = addr.rsplit(":", 1)
        self.servers.append(await asyncio.start_server(accept, host, int(port)))

    async def run(self) -> int:
        """Serve until a shutdown signal; return the exit code."""
        self.lifecycle.install_signals(asyncio.get_running_loop())
        if self.knobs.start_delay_s > 0:  # a benchmark's fixed start time (before any listener)
            await asyncio.sleep(self.knobs.start_delay_s)
        self.log("INFO", "garage::server", "Initialize Admin API server and metrics collector...")
        self.log("INFO", "garage::server", "Launching internal Garage cluster communications...")
        await self._listen(self.cfg.rpc_bind_addr, self.peering.accept)
        self.log("INFO", "garage::server", "Create admin RPC handler...")
        if self.cfg.s3_api_bind_addr:
            self.log("INFO", "garage::server", "Initializing S3 API server...")
            await self._listen(self.cfg.s3_api_bind_addr, self.s3.accept)
            self.log("INFO", "garage_api::generic_server", f"S3 API server listening on http://{self.cfg.s3_api_bind_addr}")
        if self.cfg.web_bind_addr:
            await self._listen(self.cfg.web_bind_addr, self.s3.web_accept)
            self.log("INFO", "garage_web::web_server", f"Web server listening on http://{self.cfg.web_bind_addr}")
        if self.cfg.admin_bind_addr:
            await self._listen(self.cfg.admin_bind_addr, self.admin.accept)
            self.log("INFO", "garage_api::generic_server", f"Admin API server listening on http://{self.cfg.admin_bind_addr}")
        self.lifecycle.write_runfile()
        loops = [asyncio.ensure_future(self.peering.loop()),
                 asyncio.ensure_future(self.background.tick_loop()),
                 asyncio.ensure_future(self.background.merkle_loop())]
        await self.stopping.wait()
        return await self.lifecycle.shutdown(loops)


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
