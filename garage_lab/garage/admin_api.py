"""The admin HTTP API: ``/metrics``, ``/v0/status``, and from 0.8.1 ``/health`` and ``/v0/health``.

Bearer tokens as Garage checks them (``metrics_token``, ``admin_token``), 403 bodies as
pretty-printed JSON with ``"code": "AccessDenied"`` (ref 10), and the Prometheus exposition of
the version (0.7.3 exports only ``api_*``/``web_*`` series, ref 4.3).
"""

from __future__ import annotations

import json
import time

from . import httpserver, render
from .workers import tables_for


class AdminApi:
    """The admin API server of one node."""

    def __init__(self, node):
        self.node = node

    async def accept(self, reader, writer):
        await httpserver.serve_http(reader, writer, self.handle)

    def error(self, status: int, code: str, message: str, path: str) -> tuple:
        body = json.dumps({"code": code, "message": message, "region": self.node.cfg.s3_region, "path": path}, indent=2).encode()
        reason = {400: "Bad Request", 403: "Forbidden"}[status]
        return status, reason, body, "application/json"

    async def handle(self, method, target, headers, body, peer):
        t0 = time.time()
        path = target.split("?", 1)[0]
        self.node.log("INFO", "garage_api::generic_server", f"{peer[0]}:{peer[1]} {method} {path}")
        auth = headers.get("authorization", "")
        if path == "/metrics" and method == "GET":
            endpoint = "Metrics"
            if self.node.faults.find("metrics-down"):
                return None
            if self.node.cfg.metrics_token:
                if not auth:
                    return self.error(403, "AccessDenied", "Forbidden: Authorization token must be provided", path)
                if auth != f"Bearer {self.node.cfg.metrics_token}":
                    return self.error(403, "AccessDenied", self.node.p.bad_token_text, path)
            res = (200, "OK", self.exposition().encode(), "text/plain; version=0.0.4")
        elif path == "/health" and self.node.p.has_health and method == "GET":
            endpoint = "Health"
            h = self.health()
            text = {"Healthy": "Garage is fully operational", "Degraded": "Garage is operational but some storage nodes are unavailable",
                    "Unavailable": "Quorum is not available for some/all partitions, reads and writes will fail"}[h["status"]]
            text += "\nConsult the full health check API endpoint at /v0/health for more details\n"
            res = (503, "Service Unavailable", text.encode()) if h["status"] == "Unavailable" else (200, "OK", text.encode())
        elif path in ("/v0/status", "/v0/health") and method == "GET" and (path == "/v0/status" or self.node.p.has_health):
            endpoint = "GetClusterStatus" if path == "/v0/status" else "GetClusterHealth"
            if not self.node.cfg.admin_token:
                return self.error(403, "AccessDenied", "Forbidden: Admin token isn't configured, admin API access is disabled for security.", path)
            if not auth:
                return self.error(403, "AccessDenied", "Forbidden: Authorization token must be provided", path)
            if auth != f"Bearer {self.node.cfg.admin_token}":
                return self.error(403, "AccessDenied", self.node.p.bad_token_text, path)
            payload = self.v0_status() if path == "/v0/status" else self.health()
            res = (200, "OK", json.dumps(payload, indent=2).encode(), "application/json")
        else:
            return self.error(400, "InvalidRequest", f"Bad request: Unknown API endpoint: {method} {path}", path)
        self.node.metrics.inc("api_admin_request_counter", {"api_endpoint": endpoint})
        self.node.metrics.observe("api_admin_request_duration", {"api_endpoint": endpoint}, time.time() - t0)
        return res

    def health(self) -> dict:
        storage = self.node.layout.storage_nodes()
        connected = [n for n in storage if self.node.peering.is_up(n)]
        quorum = sum(1 for part in self.node.layout.ring if sum(self.node.peering.is_up(n) for n in part) >= self.node.cfg.write_quorum)
        all_ok = sum(1 for part in self.node.layout.ring if all(self.node.peering.is_up(n) for n in part))
        if quorum == 256 and len(connected) == len(storage):
            status = "Healthy"
        elif quorum == 256:
            status = "Degraded"
        else:
            status = "Unavailable"
        return {"status": status, "known_nodes": len(self.node.peers) + 1,
                "connected_nodes": sum(p.is_up for p in self.node.peers.values()) + 1,
                "storage_nodes": len(storage), "storage_nodes_ok": len(connected),
                "partitions": 256, "partitions_quorum": quorum, "partitions_all_ok": all_ok}

    def v0_status(self) -> dict:
        known = {}
        for p in self.node.peers.values():
            known[p.id64] = {"addr": p.addr, "is_up": p.is_up, "hostname": p.hostname or "",
                             "last_seen_secs_ago": None if p.last_seen is None else int(time.time() - p.last_seen)}
        known[self.node.id64] = {"addr": self.node.cfg.rpc_public_addr, "is_up": True, "hostname": self.node.hostname, "last_seen_secs_ago": 0}
        out = {"node": self.node.id64, "garageVersion": self.node.p.tag}
        if self.node.p.features:
            out["garageFeatures"] = [f.strip() for f in self.node.p.features.split(",")]
        if self.node.p.rust_version:
            out["rustVersion"] = self.node.p.rust_version
        if self.node.p.major_minor == (0, 8):
            out["dbEngine"] = "Sled"
        out["knownNodes"] = known
        out["layout"] = {"version": self.node.layout.version,
                         "roles": {n: {"zone": r.zone, "capacity": r.capacity, "tags": list(r.tags)} for n, r in self.node.layout.roles.items()},
                         "stagedRoleChanges": {}}
        return out

    def exposition(self) -> str:
        fams: list[render.MetricFamily] = []
        p = self.node.p
        if p.full_metrics:
            todo = self.node.store.tree("merkle_todo")
            gc = self.node.store.tree("gc_todo")
            tables = tables_for(p)
            fams.append(render.MetricFamily("table_merkle_updater_todo_queue_length", "Merkle tree updater TODO queue length", "gauge",
                                            [({"table_name": t}, float(todo.get(t, 0))) for t in tables]))
            fams.append(render.MetricFamily("table_gc_todo_queue_length", "Table garbage collector TODO queue length", "gauge",
                                            [({"table_name": t}, float(len(gc.get(t, [])))) for t in tables]))
            fams.append(render.MetricFamily("block_resync_queue_length", "Number of block hashes queued for local check and possible resync", "gauge",
                                            [({}, float(len(self.node.store.tree("block_local_resync_queue"))))]))
            fams.append(render.MetricFamily("block_resync_errored_blocks", "Number of block hashes whose last resync resulted in an error", "gauge",
                                            [({}, float(len(self.node.store.tree("block_local_resync_errors"))))]))
            if p.build_info_metric:
                fams.append(render.MetricFamily("garage_build_info", "Build information", "gauge",
                                                [({"rustversion": p.rust_version or "", "version": p.tag}, 1.0)]))
                fams.append(render.MetricFamily("garage_replication_factor", "Garage replication factor setting", "gauge",
                                                [({}, float(self.node.cfg.replication_factor))]))
                fams.append(render.MetricFamily("block_compression_level", "Garage compression level for node", "gauge", [({}, 1.0)]))
                if self.node.disk_stats:
                    fams.append(render.MetricFamily("garage_local_disk_avail", "Garage available disk space on each node", "gauge",
                                                    [({"volume": v}, float(a)) for v, (a, _t) in sorted(self.node.disk_stats.items())]))
                    fams.append(render.MetricFamily("garage_local_disk_total", "Garage total disk space on each node", "gauge",
                                                    [({"volume": v}, float(t)) for v, (_a, t) in sorted(self.node.disk_stats.items())]))
        by_name: dict[str, list] = {}
        for (name, labels), value in sorted(self.node.metrics.counters.items()):
            if not p.full_metrics and not name.startswith(("api_", "web_")):
                continue  # 0.7.3: table/block/rpc instruments are no-ops (ref 4.3)
            by_name.setdefault(name, []).append((dict(labels), value))
        for name, samples in by_name.items():
            fams.append(render.MetricFamily(name, name.replace("_", " "), "counter", samples))
        hist: dict[str, list] = {}
        for (name, labels), values in sorted(self.node.metrics.hists.items()):
            if not p.full_metrics and not name.startswith(("api_", "web_")):
                continue
            hist.setdefault(name, []).append((dict(labels), values))
        for name, series in hist.items():
            fams.append(render.MetricFamily(name, name.replace("_", " "), "histogram", series))
        return render.render_exposition(p, fams)
