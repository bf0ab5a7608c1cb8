"""Cluster layout and the lab's deterministic data set (pure; no I/O).

Garage places data on a ring of 256 partitions (``PARTITION_BITS = 8``). With replication mode
``3`` each partition has three storage nodes in three distinct zones (ref 8). The object table
and the ``bucket_object_counter`` table are partitioned by bucket ID, so all objects of a bucket
live on the same three nodes; versions are partitioned by version UUID and blocks by hash,
which spreads them over the whole ring.

The assignment below is a simple balanced one, not Garage's exact ``PartitionAss::add``: it
keeps the property the migration relies on (one copy per zone with 3 zones, distinct zones
otherwise) without reproducing which node of a zone gets which partition [guess].
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

N_PARTITIONS = 256
INLINE_THRESHOLD = 3072  # Garage stores smaller objects inline in the object table
BLOCK_SIZE = 1048576


def sha256(*parts: bytes | str) -> bytes:
    """SHA-256 of the concatenated parts (strings are UTF-8 encoded)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
    return h.digest()


def node_keypair(seed: str, name: str) -> tuple[bytes, bytes]:
    """Deterministic stand-in for a node's ed25519 keypair: (64-byte secret, 32-byte public).

    The secret key is laid out like libsodium's (seed || public), as Garage stores it.
    """
    sk_seed = sha256("garage-lab-node-key", seed, name)
    pub = sha256("garage-lab-node-pub", sk_seed)
    return sk_seed + pub, pub


def partition_of(hash_or_id: bytes) -> int:
    """Partition of a 32-byte hash or ID: its first byte (``PARTITION_BITS = 8``)."""
    return hash_or_id[0]


@dataclass(frozen=True)
class Role:
    """A node's role in the layout (capacity ``None`` = gateway)."""

    zone: str
    capacity: int | None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    """A cluster layout: roles by ID64, and three storage nodes per partition."""

    version: int
    replication_factor: int
    roles: dict[str, Role]
    ring: tuple[tuple[str, ...], ...]

    def nodes_of(self, partition: int) -> tuple[str, ...]:
        """The ID64s of the storage nodes that hold ``partition``."""
        return self.ring[partition]

    def storage_nodes(self) -> list[str]:
        """ID64s of the nodes with a capacity, sorted."""
        return sorted(n for n, r in self.roles.items() if r.capacity is not None)

    def to_json(self) -> dict:
        """A JSON-serialisable form (the lab stores layouts as JSON, Garage as msgpack [guess])."""
        return {
            "version": self.version,
            "replication_factor": self.replication_factor,
            "roles": {
                n: {"zone": r.zone, "capacity": r.capacity, "tags": list(r.tags)}
                for n, r in self.roles.items()
            },
            "ring": [list(p) for p in self.ring],
        }

    @classmethod
    def from_json(cls, d: dict) -> "Layout":
        """Inverse of :meth:`to_json`."""
        return cls(
            version=d["version"],
            replication_factor=d["replication_factor"],
            roles={
                n: Role(r["zone"], r["capacity"], tuple(r["tags"])) for n, r in d["roles"].items()
            },
            ring=tuple(tuple(p) for p in d["ring"]),
        )


def compute_layout(roles: dict[str, Role], replication_factor: int = 3, version: int = 1) -> Layout:
    """Assign every partition to ``replication_factor`` storage nodes in distinct zones.

    Zones rotate with the partition number and nodes rotate inside a zone, which balances
    partitions across zones and across the nodes of each zone.
    """
    by_zone: dict[str, list[str]] = {}
    for node_id in sorted(roles):
        role = roles[node_id]
        if role.capacity is not None:
            by_zone.setdefault(role.zone, []).append(node_id)
    zones = sorted(by_zone)
    if not zones:
        raise ValueError("a layout needs at least one storage node")
    ring: list[tuple[str, ...]] = []
    for p in range(N_PARTITIONS):
        chosen: list[str] = []
        for k in range(len(zones)):
            if len(chosen) == replication_factor:
                break
            zone_nodes = by_zone[zones[(p + k) % len(zones)]]
            chosen.append(zone_nodes[(p // len(zones)) % len(zone_nodes)])
        # fewer zones than the replication factor: fill with other nodes, any zone
        all_nodes = [n for z in zones for n in by_zone[z]]
        i = p
        while len(chosen) < min(replication_factor, len(all_nodes)):
            cand = all_nodes[i % len(all_nodes)]
            if cand not in chosen:
                chosen.append(cand)
            i += 1
        ring.append(tuple(chosen))
    return Layout(version, replication_factor, dict(roles), tuple(ring))


@dataclass(frozen=True)
class ObjectSpec:
    """One object of the data set."""

    bucket_id: str
    key: str
    size: int
    version_uuid: str
    blocks: tuple[str, ...]  # block hashes (hex); empty when inline
    timestamp: int
    inline_data: str | None = None  # hex of the content for inline objects


@dataclass(frozen=True)
class BucketSpec:
    """One bucket of the data set."""

    id: str
    alias: str


@dataclass
class DataSet:
    """The deterministic lab data set: buckets, objects, versions, blocks and one access key."""

    buckets: list[BucketSpec] = field(default_factory=list)
    objects: list[ObjectSpec] = field(default_factory=list)
    key_id: str = ""
    key_name: str = ""
    key_secret: str = ""


def make_dataset(seed: str, n_buckets: int = 8, objects_per_bucket: int = 24) -> DataSet:
    """Build the deterministic data set from ``seed``.

    Sizes mix inline objects (< 3 KiB), single-block and multi-block objects, so that
    version, block_ref and block entries spread over the whole ring.
    """
    rng = random.Random(sha256("dataset", seed))
    ds = DataSet()
    ds.key_id = "GK" + sha256("key", seed).hex()[:24]
    ds.key_name = "lab-key"
    ds.key_secret = sha256("secret", seed).hex()
    for b in range(n_buckets):
        ds.buckets.append(BucketSpec(sha256("bucket", seed, str(b)).hex(), f"bucket-{b:02d}"))
    ts = 1_660_000_000_000
    for bucket in ds.buckets:
        for i in range(objects_per_bucket):
            ts += 1000
            kind = rng.random()
            if kind < 0.4:
                size = rng.randint(1, INLINE_THRESHOLD - 1)
            elif kind < 0.85:
                size = rng.randint(INLINE_THRESHOLD, BLOCK_SIZE)
            else:
                size = rng.randint(BLOCK_SIZE + 1, 5 * BLOCK_SIZE)
            key = f"obj/{i:04d}-{rng.getrandbits(32):08x}.bin"
            vuuid = sha256("version", bucket.id, key).hex()
            if size < INLINE_THRESHOLD:
                data = sha256("data", bucket.id, key).hex()
                inline = (data * (size // 64 + 1))[: size * 2]
                ds.objects.append(ObjectSpec(bucket.id, key, size, vuuid, (), ts, inline))
            else:
                n_blocks = (size + BLOCK_SIZE - 1) // BLOCK_SIZE
                blocks = tuple(sha256("block", vuuid, str(k)).hex() for k in range(n_blocks))
                ds.objects.append(ObjectSpec(bucket.id, key, size, vuuid, blocks, ts))
    return ds
