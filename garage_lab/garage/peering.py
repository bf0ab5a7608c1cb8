"""Peering: the RPC server, the connections to the other nodes, and calls to them.

netapp in the real Garage: every node listens on ``rpc_bind_addr``, handshakes with the version
tag and the network key (nodes and CLIs of another tag or secret are refused), keeps one
connection per known peer (from ``bootstrap_peers`` and the persisted ``peer_list``) and
retries the down ones every ``peer_retry_s``, and pings the connected ones every
``ping_interval_s``, closing a connection whose pings fail more than ``failed_ping_threshold``
times in a row (fullmesh's ping; on a netns lab that is how a partition is noticed). ``call_node`` is how every other component
reaches a node, itself included, so quorum code never special-cases the local node.
"""

from __future__ import annotations

import asyncio
import json
import time

from . import rpc


class Peer:
    """What this node knows of another node."""

    def __init__(self, id64: str, addr: str):
        self.id64 = id64
        self.addr = addr
        self.hostname: str | None = None
        self.conn: rpc.Connection | None = None
        self.last_seen: float | None = None
        self.last_ping = 0.0
        self.failed_pings = 0
        self.pinging = False

    @property
    def is_up(self) -> bool:
        """Whether a live connection to the peer is open."""
        return self.conn is not None and not self.conn.closed.is_set()


class Peering:
    """The RPC server and the peer connections of one node."""

    def __init__(self, node):
        self.node = node

    def load_peers(self) -> None:
        # netapp knows peers from bootstrap_peers and the persisted peer list
        entries: list[tuple[str, str]] = []
        for spec in self.node.cfg.bootstrap_peers:
            if "@" in spec:
                pid, addr = spec.split("@", 1)
                entries.append((pid, addr))
        try:
            for pid, addr in json.loads((self.node.cfg.metadata_dir / "peer_list").read_text()):
                entries.append((pid, addr))
        except (OSError, ValueError):
            pass
        for pid, addr in entries:
            if pid != self.node.id64 and pid not in self.node.peers:
                self.node.peers[pid] = Peer(pid, addr)

    def save_peer_list(self) -> None:
        path = self.node.cfg.metadata_dir / "peer_list"
        content = json.dumps(sorted([p.id64, p.addr] for p in self.node.peers.values()))
        try:
            if path.read_text() == content:
                return
        except OSError:
            pass
        path.write_text(content)

    def hello(self) -> dict:
        return {"tag": self.node.p.rpc_tag, "netkey": rpc.network_key(self.node.cfg.rpc_secret),
                "node": self.node.id64, "hostname": self.node.hostname,
                "addr": self.node.cfg.rpc_public_addr or self.node.cfg.rpc_bind_addr}

    async def accept(self, reader, writer) -> None:
        try:
            theirs = await asyncio.wait_for(rpc.recv(reader), 5)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError, OSError):
            writer.close()
            return
        if theirs.get("tag") != self.node.p.rpc_tag or theirs.get("netkey") != rpc.network_key(self.node.cfg.rpc_secret):
            # [inf] netapp logs a handshake error; its exact text is not in the reference
            self.node.log("WARN", "netapp::server", f"Error in handshake with {writer.get_extra_info('peername')}: version tag or network key mismatch")
            writer.close()
            return
        try:
            await rpc.send(writer, self.hello())
        except (ConnectionError, OSError):
            return
        rpc.Connection(reader, writer, theirs, self.handle)
        pid = theirs.get("node", "")
        if pid and pid != "cli" and pid not in self.node.peers and pid != self.node.id64:
            self.node.peers[pid] = Peer(pid, theirs.get("addr", ""))

    async def loop(self) -> None:
        while True:
            await asyncio.gather(*(self.ensure_peer(p) for p in list(self.node.peers.values())))
            now = time.monotonic()
            for p in self.node.peers.values():
                if p.is_up:
                    p.last_seen = time.time()
                if p.is_up and not p.pinging and now - p.last_ping >= self.node.knobs.ping_interval_s:
                    p.pinging = True
                    p.last_ping = now
                    asyncio.ensure_future(self.ping(p))
            self.save_peer_list()
            await asyncio.sleep(self.node.knobs.peer_retry_s)

    async def ping(self, peer: Peer) -> None:
        """One ping of a connected peer: success refreshes ``last_seen``; too many failures in a
        row close the connection (the peer is then down until a reconnection succeeds)."""
        conn = peer.conn
        try:
            if conn is None:
                return
            try:
                await conn.call("ping", {}, self.node.knobs.ping_timeout_s)
            except (rpc.RpcError, TimeoutError, ConnectionError, OSError):
                peer.failed_pings += 1
                if peer.failed_pings > self.node.knobs.failed_ping_threshold and peer.conn is conn:
                    self.node.log("WARN", "netapp::peering::fullmesh",
                                  f"Too many failed pings from {peer.id64[:16]}, closing connection.")
                    conn.close()
                return
            peer.failed_pings = 0
        finally:
            peer.pinging = False

    async def ensure_peer(self, peer: Peer) -> None:
        if peer.is_up:
            return
        host, port = peer.addr.rsplit(":", 1)
        try:
            conn = await rpc.connect(host, int(port), self.hello(), self.handle, timeout=2.0)
        except rpc.RpcError:
            return
        if conn.peer.get("node") != peer.id64:
            conn.close()
            return
        peer.conn = conn
        peer.failed_pings = 0
        peer.hostname = conn.peer.get("hostname")
        peer.last_seen = time.time()
        self.node.log("INFO", "netapp::peering::fullmesh", f"Successfully connected to {peer.id64[:16]} at {peer.addr}")

    def is_up(self, id64: str) -> bool:
        """Whether ``id64`` is this node or a connected peer."""
        if id64 == self.node.id64:
            return True
        peer = self.node.peers.get(id64)
        return peer is not None and peer.is_up

    async def call_node(self, id64: str, method: str, args: dict, timeout: float = 10.0):
        """Run ``method`` on node ``id64`` (locally when it is this node)."""
        if id64 == self.node.id64:
            return await self.handle(method, args, {"node": self.node.id64})
        peer = self.node.peers.get(id64)
        if peer is None or not peer.is_up:
            raise rpc.RpcError("closed", f"Not connected: {id64[:16]}")
        self.node.metrics.inc("rpc_request_counter", {"from": self.node.id16, "rpc_endpoint": f"garage_lab/{method}", "to": id64[:16]})
        return await peer.conn.call(method, args, timeout)

    async def handle(self, method: str, args: dict, caller: dict):
        fn = getattr(self.node.rpc_api, "rpc_" + method, None)
        if fn is None:
            raise rpc.RpcError("remote", f"Unknown RPC {method}", "Internal")
        return await fn(**args)

    async def quiet_call(self, nid: str, method: str, args: dict) -> None:
        try:
            await self.call_node(nid, method, args)
        except rpc.RpcError:
            pass
