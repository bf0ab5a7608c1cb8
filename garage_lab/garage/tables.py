"""The tables' data model: object entries, bucket counters and the Merkle work they cause.

Last-writer-wins on ``(ts, node)`` like Garage's CRDT merge; from 0.8 every applied entry also
updates the node's local counter and publishes it to the bucket's replicas (index_counter.rs).
In the lab an object lives on the replicas of its *bucket's* partition (a simplification that
keeps one bucket's objects together); the RPC methods that expose this are in ``rpc_api``.
"""

from __future__ import annotations

import asyncio
import time

from . import rpc
from .cluster import partition_of

COUNTER_FIELDS = ("objects", "unfinished_uploads", "bytes")


def counter_of(entry: dict | None) -> dict:
    """The (objects, unfinished_uploads, bytes) an object entry contributes to its bucket."""
    if entry is None or entry.get("deleted"):
        return {"objects": 0, "unfinished_uploads": 0, "bytes": 0}
    return {"objects": 1, "unfinished_uploads": 0, "bytes": entry.get("size", 0)}


class Tables:
    """A node's object and counter tables."""

    def __init__(self, node):
        self.node = node

    def bump_merkle(self, table: str, n: int) -> None:
        todo = self.node.store.tree("merkle_todo")
        todo[table] = todo.get(table, 0) + n
        self.node.store.mark_dirty()
        self.node.background.merkle_wakeup.set()

    def apply_object(self, bucket: str, key: str, entry: dict) -> bool:
        """Insert an object entry if it is newer (LWW); update counters like 0.8 does."""
        objs = self.node.store.tree("object:table").setdefault(bucket, {})
        old = objs.get(key)
        if old is not None and (old["ts"], old.get("node", "")) >= (entry["ts"], entry.get("node", "")):
            return False
        objs[key] = entry
        self.bump_merkle("object", 1)
        if entry.get("deleted"):
            self.node.store.tree("gc_todo").setdefault("object", []).append(time.time() + self.node.knobs.gc_delay_s)
        if self.node.p.has_counters:
            delta = {f: counter_of(entry)[f] - counter_of(old)[f] for f in COUNTER_FIELDS}
            local = self.node.store.tree("local_counter_v2:bucket_object_counter").setdefault(
                bucket, {f: 0 for f in COUNTER_FIELDS})
            for f in COUNTER_FIELDS:
                local[f] += delta[f]
            self.publish_own_counter(bucket, dict(local))
        self.node.store.mark_dirty()
        return True

    def publish_own_counter(self, bucket: str, values: dict) -> None:
        value = dict(values, ts=time.time_ns() // 1000)
        self.merge_items("bucket_object_counter", {bucket: {self.node.id64: value}})
        for nid in self.node.layout.nodes_of(partition_of(bytes.fromhex(bucket))):
            if nid != self.node.id64 and self.node.peering.is_up(nid):
                asyncio.ensure_future(self.node.peering.quiet_call(nid, "counter_push", {"bucket": bucket, "node": self.node.id64, "value": value}))

    def partition_items(self, table: str, partition: int) -> dict:
        """Items of a bucket-partitioned table that fall in ``partition``."""
        tree = self.node.store.tree("object:table" if table == "object" else "bucket_object_counter:table")
        return {b: v for b, v in tree.items() if partition_of(bytes.fromhex(b)) == partition}

    def merge_items(self, table: str, items: dict) -> int:
        """Merge items received from a peer; return how many changed locally."""
        changed = 0
        if table == "object":
            for bucket, objs in items.items():
                for key, entry in objs.items():
                    changed += self.apply_object(bucket, key, entry)
        elif table == "bucket_object_counter" and self.node.p.has_counters:
            tree = self.node.store.tree("bucket_object_counter:table")
            for bucket, per_node in items.items():
                mine = tree.setdefault(bucket, {})
                for node, value in per_node.items():
                    if node not in mine or mine[node]["ts"] < value["ts"]:
                        mine[node] = value
                        changed += 1
            if changed:
                self.bump_merkle("bucket_object_counter", changed)
                self.node.store.mark_dirty()
        return changed

    async def read_counters(self, bucket: str) -> dict:
        """Counters as ``bucket info`` shows them: per field, the max over layout nodes."""
        merged: dict[str, dict] = {}
        for nid in self.node.layout.nodes_of(partition_of(bytes.fromhex(bucket))):
            try:
                entries = await self.node.peering.call_node(nid, "counter_read", {"bucket": bucket})
            except rpc.RpcError:
                continue
            for node, value in entries.items():
                if node not in merged or merged[node]["ts"] < value["ts"]:
                    merged[node] = value
        vals = [v for n, v in merged.items() if n in self.node.layout.roles]
        return {f: max((v[f] for v in vals), default=0) for f in COUNTER_FIELDS}
