"""The RPC methods a node serves to the CLI and to its peers (``rpc_<name>``).

The CLI's commands (``status``, ``repair``, ``stats``, ``worker ...``, ``bucket ...``,
``block list-errors``) and the node-to-node calls (object writes and reads, table sync,
counters) all arrive here through :meth:`.peering.Peering.handle`. Errors are
:class:`.rpc.RpcError` with the text and kind Garage's CLI prints (``BadRequest`` is shown as
is, anything else as ``Internal error: ...``).
"""

from __future__ import annotations

import json
import time

from . import rpc, workers
from .units import parse_size
from .workers import STATS_TABLES, rfc3339_ms


class RpcApi:
    """The RPC methods of one node."""

    def __init__(self, node):
        self.node = node

    async def rpc_ping(self):
        """netapp's ping: answered at once; a peer that stops answering is disconnected."""
        return {}

    async def rpc_status(self):
        known = {}
        for p in self.node.peers.values():
            known[p.id64] = {"addr": p.addr, "is_up": p.is_up, "hostname": p.hostname,
                             "last_seen_secs_ago": None if p.last_seen is None else max(0.0, time.time() - p.last_seen)}
        known[self.node.id64] = {"addr": self.node.cfg.rpc_public_addr or self.node.cfg.rpc_bind_addr, "is_up": True,
                            "hostname": self.node.hostname, "last_seen_secs_ago": 0.0}
        return {"node": self.node.id64, "known": known, "layout": self.node.layout.to_json(),
                "disk": self.node.disk_stats}

    async def rpc_repair(self, what: str, yes: bool, all_nodes: bool, extra: dict | None = None):
        if not yes:
            raise rpc.RpcError("remote", "Please provide the --yes flag to initiate repair operations.", "BadRequest")
        if not all_nodes:
            self.node.background.launch_repair(what, extra or {})
            return {"launched": self.node.id16}
        failed = []
        for nid in self.node.layout.roles:  # layout.node_ids(): gateways and itself included
            try:
                await self.node.peering.call_node(nid, "repair_local", {"what": what, "extra": extra or {}})
            except rpc.RpcError:
                failed.append(nid[:16])
        if failed:
            raise rpc.RpcError("remote", "Could not launch repair on nodes: [" + ", ".join(failed) +
                               "] (launched successfully on other nodes)", "BadRequest")
        return {"launched": "all"}

    async def rpc_repair_local(self, what: str, extra: dict):
        self.node.background.launch_repair(what, extra)
        return True

    async def rpc_stats(self, all_nodes: bool, detailed: bool):
        if not all_nodes:
            return {"nodes": [[self.node.id16, self.local_stats(detailed)]], "storage": self.storage_rows()}
        out = []
        for nid in self.node.layout.roles:
            try:
                out.append([nid[:16], await self.node.peering.call_node(nid, "stats_local", {"detailed": detailed})])
            except rpc.RpcError as exc:
                if not self.node.p.stats_all_tolerant:
                    # 0.7.3 / 0.8.0: one unreachable node fails the whole command (ref 2.10)
                    raise rpc.RpcError("remote", f"Remote error: Netapp error: {exc}", "Internal")
                out.append([nid[:16], f"Network error: {exc}"])
        return {"nodes": out, "storage": self.storage_rows()}

    async def rpc_stats_local(self, detailed: bool):
        return self.local_stats(detailed)

    async def rpc_block_errors(self):
        now = time.time()
        queue = self.node.store.tree("block_local_resync_queue")
        rc = self.node.store.tree("block_local_rc")
        return [[h, rc.get(h, 0), e["errors"], now - e.get("last", now), queue.get(h, now) - now]
                for h, e in sorted(self.node.store.tree("block_local_resync_errors").items())]

    async def rpc_worker_list(self):
        workers.refresh_view(self.node)
        return [w.to_dict() for w in self.node.workers.all()]

    async def rpc_worker_set(self, variable: str, value: str, all_nodes: bool = False):
        if all_nodes:
            rows = []
            for nid in self.node.layout.roles:
                try:
                    rows += await self.node.peering.call_node(nid, "worker_set", {"variable": variable, "value": value})
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
            self.node.resync_cfg["n_workers"] = n
        elif variable == "resync-tranquility":
            self.node.resync_cfg["tranquility"] = n
        elif variable == "scrub-tranquility":
            self.node.scrub["tranquility"] = n
            self.node.save_scrub()
        else:
            raise rpc.RpcError("remote", f"Remote error: Cannot set value of {variable}", "Internal")
        (self.node.cfg.metadata_dir / "resync_cfg").write_text(json.dumps(self.node.resync_cfg))
        return [[self.node.id16, variable, value]]

    async def rpc_worker_get(self, variable: str | None = None, all_nodes: bool = False):
        if all_nodes:
            rows = []
            for nid in self.node.layout.roles:
                try:
                    rows += await self.node.peering.call_node(nid, "worker_get", {"variable": variable})
                except rpc.RpcError as exc:
                    raise rpc.RpcError("remote", f"Remote error: {exc}", "Internal")
            return rows
        vars_ = self.worker_vars()
        if variable is not None:
            if variable not in vars_:
                raise rpc.RpcError("remote", "Remote error: variable does not exist", "Internal")
            return [[self.node.id16, variable, vars_[variable]]]
        return [[self.node.id16, k, v] for k, v in sorted(vars_.items())]

    async def rpc_bucket_list(self):
        buckets = self.node.store.tree("bucket_v2:table")
        return [[[b["alias"]] if b.get("alias") else [], bid] for bid, b in sorted(buckets.items())
                if not b.get("deleted")]

    async def rpc_bucket_info(self, name: str):
        bid = self.find_bucket(name)
        b = self.node.store.tree("bucket_v2:table")[bid]
        info = {"id": bid, "alias": b.get("alias"), "website": b.get("website", False),
                "keys": b.get("keys", {}), "quotas": b.get("quotas", {}),
                "key_names": {k: v.get("name", "") for k, v in self.node.store.tree("key:table").items()}}
        if self.node.p.has_counters:
            info["counters"] = await self.node.tables.read_counters(bid)
        return info

    async def rpc_bucket_set_quotas(self, name: str, max_size: str | None, max_objects: str | None):
        bid = self.find_bucket(name)
        quotas = dict(self.node.store.tree("bucket_v2:table")[bid].get("quotas", {}))
        if max_size is not None:
            quotas["max_size"] = None if max_size == "none" else parse_size(max_size)
        if max_objects is not None:
            quotas["max_objects"] = None if max_objects == "none" else int(max_objects)
        # bucket_v2 is fully replicated: write to every layout node, quorum all-but-one (ref 8)
        ok = 0
        for nid in self.node.layout.roles:
            try:
                await self.node.peering.call_node(nid, "bucket_apply_quotas", {"bucket": bid, "quotas": quotas})
                ok += 1
            except rpc.RpcError:
                pass
        if ok < max(1, len(self.node.layout.roles) - 1):
            raise rpc.RpcError("remote", "Could not reach quorum of 2 (sets=[..]). 0 of 0 request succeeded, others returned errors", "Internal")
        return {"name": name}

    async def rpc_bucket_apply_quotas(self, bucket: str, quotas: dict):
        self.node.store.tree("bucket_v2:table")[bucket]["quotas"] = quotas
        self.node.store.mark_dirty()
        self.node.tables.bump_merkle("bucket_v2", 1)
        return True

    async def rpc_obj_apply(self, bucket: str, key: str, entry: dict):
        self.node.tables.apply_object(bucket, key, entry)
        return True

    async def rpc_obj_list(self, bucket: str, prefix: str = ""):
        """The bucket's entries under ``prefix``, without their bodies (for ``ListObjectsV2``)."""
        objs = self.node.store.tree("object:table").get(bucket, {})
        return {k: {f: v for f, v in e.items() if f != "inline"} for k, e in objs.items() if k.startswith(prefix)}

    async def rpc_obj_read(self, bucket: str, key: str):
        return self.node.store.tree("object:table").get(bucket, {}).get(key)

    async def rpc_sync_pull(self, table: str, partition: int):
        return self.node.tables.partition_items(table, partition)

    async def rpc_sync_push(self, table: str, items: dict, sender: str):
        n = self.node.tables.merge_items(table, items)
        if n:
            self.node.metrics.inc("table_sync_items_received", {"from": sender[:16], "table_name": table}, n)
        return n

    async def rpc_counter_push(self, bucket: str, node: str, value: dict):
        return self.node.tables.merge_items("bucket_object_counter", {bucket: {node: value}})

    async def rpc_counter_read(self, bucket: str):
        return self.node.store.tree("bucket_object_counter:table").get(bucket, {})

    def worker_vars(self) -> dict[str, str]:
        return {
            "resync-worker-count": str(self.node.resync_cfg["n_workers"]),
            "resync-tranquility": str(self.node.resync_cfg["tranquility"]),
            "scrub-tranquility": str(self.node.scrub.get("tranquility", 4)),
            "scrub-last-completed": rfc3339_ms(self.node.scrub.get("time_last_complete_scrub", 0)),
            "scrub-next-run": rfc3339_ms(self.node.scrub.get("next_run", 0)),
            "scrub-corruptions_detected": str(self.node.scrub.get("corruptions_detected", 0)),
        }

    def find_bucket(self, name: str) -> str:
        aliases = self.node.store.tree("bucket_alias:table")
        if name in aliases:
            return aliases[name]
        buckets = self.node.store.tree("bucket_v2:table")
        matches = [b for b in buckets if b.startswith(name)] if len(name) >= 8 else []
        if len(matches) == 1:
            return matches[0]
        raise rpc.RpcError("remote", "Bucket not found", "BadRequest")

    def local_stats(self, detailed: bool) -> dict:
        todo = self.node.store.tree("merkle_todo")
        gc = self.node.store.tree("gc_todo")
        tables = []
        for t in STATS_TABLES:
            items = None
            if detailed:
                items = self.count_items(t)
            tables.append({"name": t, "items": items, "merkle_items": items,
                           "merkle_todo": todo.get(t, 0), "gc_todo": len(gc.get(t, []))})
        ring: dict[str, int] = {}
        for part in self.node.layout.ring:
            for n in part:
                ring[n[:16]] = ring.get(n[:16], 0) + 1
        return {"version": self.node.p.version, "tables": tables,
                "rc_entries": len(self.node.store.tree("block_local_rc")) if detailed else None,
                "resync_queue": len(self.node.store.tree("block_local_resync_queue")),
                "resync_errors": len(self.node.store.tree("block_local_resync_errors")),
                "ring": sorted(ring.items())}

    def count_items(self, table: str) -> int:
        tree = self.node.store.tree(f"{table}:table")
        if table == "object":
            return sum(len(v) for v in tree.values())
        return len(tree)

    def storage_rows(self) -> list[dict]:
        rows = []
        parts: dict[str, int] = {}
        for part in self.node.layout.ring:
            for n in part:
                parts[n] = parts.get(n, 0) + 1
        for nid, role in self.node.layout.roles.items():
            if role.capacity is None:
                continue
            peer = self.node.peers.get(nid)
            host = self.node.hostname if nid == self.node.id64 else (peer.hostname if peer and peer.hostname else "?")
            disk = self.node.disk_stats if nid == self.node.id64 else None
            rows.append({"id16": nid[:16], "hostname": host, "zone": role.zone, "capacity": role.capacity,
                         "partitions": parts.get(nid, 0),
                         "data_avail": disk["data"] if disk else None,
                         "meta_avail": disk["metadata"] if disk else None})
        return rows
