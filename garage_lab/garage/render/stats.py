"""``stats`` (0.7.3 / 0.8.0 text, 0.8.1+ tables, ``-a`` sections, storage estimate).

Part of :mod:`garage_lab.garage.render` (see its docstring for the conventions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..personality import Personality
from .text import _avail_cell, _capacity, bytesize, format_table


@dataclass(frozen=True)
class TableStats:
    """Counters of one table. ``None`` counts are not available (printed ``NC``)."""

    name: str
    items: int | None
    merkle_items: int | None
    merkle_todo: int
    gc_todo: int


@dataclass(frozen=True)
class StorageNode:
    """A row of the 0.8.2+ ``Storage nodes`` table (late 2.1).

    Attributes:
        id16: node ID.
        hostname: ``?`` if never heard from.
        zone: role zone.
        capacity: role capacity (``None`` = gateway, which never holds partitions).
        partitions: number of partition slots held.
        data_avail: ``(avail, total)`` bytes of the data disk, or ``None`` if not reported.
        meta_avail: the same for the metadata disk.
    """

    id16: str
    hostname: str
    zone: str
    capacity: int | None
    partitions: int
    data_avail: tuple[int, int] | None
    meta_avail: tuple[int, int] | None


@dataclass(frozen=True)
class LocalStats:
    """What one node reports for ``garage stats``.

    Attributes:
        tables: bucket_v2, key, object, version, block_ref, in that order.
        rc_entries: number of RC entries, ``None`` when not counted (``NC``).
        resync_queue: resync queue length.
        resync_errors: blocks with resync errors.
        ring: ``(id16, partition count)`` in hash-map order (0.7.3/0.8.0 ``Ring nodes`` section).
        storage_nodes: rows of the 0.8.2+ Storage nodes section.
        db_engine: ``Sled``, ``LMDB (using Heed crate)`` or ``sqlite3 v<ver> (using rusqlite crate)``.
    """

    tables: tuple[TableStats, ...]
    rc_entries: int | None
    resync_queue: int
    resync_errors: int
    ring: tuple[tuple[str, int], ...]
    storage_nodes: tuple[StorageNode, ...]
    db_engine: str = "Sled"


def _nc(value: int | None) -> str:
    return "NC" if value is None else str(value)


def _stats_header(p: Personality, s: LocalStats) -> str:
    out = f"\nGarage version: {p.stats_version_string}\n"
    if p.rust_version is not None:
        out += f"Rust compiler version: {p.rust_version}\n"
    if p.stats_db_engine:
        out += f"\nDatabase engine: {s.db_engine}\n"
    return out


def _stats_plain(p: Personality, s: LocalStats, detailed: bool) -> str:
    """0.7.3 / 0.8.0 ``gather_stats_local`` (ref 2.10)."""
    out = _stats_header(p, s) + "\nRing nodes & partition count:\n"
    out += "".join(f"  {node} {count}\n" for node, count in s.ring)
    for t in s.tables:
        out += f"\nTable stats for {t.name}\n"
        if detailed:
            out += f"  number of items: {_nc(t.items)}\n  Merkle tree size: {_nc(t.merkle_items)}\n"
        out += f"  Merkle updater todo queue length: {t.merkle_todo}\n  GC todo queue length: {t.gc_todo}\n"
    out += "\nBlock manager stats:\n"
    if detailed:
        out += f"  number of RC entries (~= number of blocks): {_nc(s.rc_entries)}\n"
    return out + f"  resync queue length: {s.resync_queue}\n  blocks with resync errors: {s.resync_errors}\n"


def _stats_tabular(p: Personality, s: LocalStats, detailed: bool, skip_global: bool) -> str:
    """0.8.1+ ``gather_stats_local`` (late 2.1); ``skip_global`` drops the Storage part (``-a``)."""
    out = _stats_header(p, s)
    rows = [["  Table", "Items", "MklItems", "MklTodo", "GcTodo"]]
    rows += [[f"  {t.name}", _nc(t.items), _nc(t.merkle_items), str(t.merkle_todo), str(t.gc_todo)] for t in s.tables]
    out += "\nTable stats:\n" + format_table(rows)
    out += (
        "\nBlock manager stats:\n"
        f"  number of RC entries (~= number of blocks): {_nc(s.rc_entries)}\n"
        f"  resync queue length: {s.resync_queue}\n"
        f"  blocks with resync errors: {s.resync_errors}\n"
    )
    if not p.stats_storage_section:  # 0.8.1 (not simulated, kept for completeness)
        out += "\nRing nodes & partition count:\n" + "".join(f"  {n} {c}\n" for n, c in s.ring)
    if not detailed:
        out += (
            "\nIf values are missing above (marked as NC), consider adding the --detailed flag (this will be slow).\n"
            if p.stats_storage_section
            else "\nIf values are missing (marked as NC), consider adding the --detailed flag - this will be slow.\n"
        )
    if p.stats_storage_section and not skip_global:
        out += "\n" + _cluster_stats(s.storage_nodes)
    return out


def _cluster_stats(nodes: Sequence[StorageNode]) -> str:
    """0.8.2+ ``gather_cluster_stats``: the Storage nodes table and the space estimate (late 2.1)."""
    nodes = [n for n in nodes if n.partitions > 0]
    rows = [["  ID", "Hostname", "Zone", "Capacity", "Part.", "DataAvail", "MetaAvail"]]
    for n in nodes:
        rows.append([f"  {n.id16}", n.hostname, n.zone, _capacity(n.capacity), str(n.partitions),
                     _avail_cell(n.data_avail, True), _avail_cell(n.meta_avail, True)])
    out = "Storage nodes:\n" + format_table(rows)
    # Integer division per node, then x256 partitions: min over nodes (late 2.1).
    data = [n.data_avail[0] // n.partitions for n in nodes if n.data_avail]
    meta = [n.meta_avail[0] // n.partitions for n in nodes if n.meta_avail]
    if data and meta:
        data_sz, meta_sz = bytesize(min(data) * 256, False), bytesize(min(meta) * 256, False)
        out += "\nEstimated available storage space cluster-wide (might be lower in practice):\n"
        if len(data) < len(nodes) or len(meta) < len(nodes):
            out += (
                f"  data: < {data_sz}\n  metadata: < {meta_sz}\n"
                "A precise estimate could not be given as information is missing for some storage nodes.\n"
            )
        else:
            out += f"  data: {data_sz}\n  metadata: {meta_sz}\n"
    return out


def _stats_local(p: Personality, s: LocalStats, detailed: bool, skip_global: bool = False) -> str:
    if p.stats_tabular:
        return _stats_tabular(p, s, detailed, skip_global)
    return _stats_plain(p, s, detailed)


def render_stats(p: Personality, s: LocalStats, detailed: bool) -> str:
    """``garage stats [-d]`` on one node (ref 2.10; late 2.1).

    Args:
        p: the personality: plain layout (0.7.3, 0.8.0) or tables + Storage nodes (0.8.7).
        s: the node's figures.
        detailed: ``-d`` was given.

    Returns:
        The text, which starts with an empty line and, because the CLI ``println!``s a string
        that already ends with a newline, also ends with one.
    """
    return _stats_local(p, s, detailed) + "\n"


def render_stats_all(
    p: Personality,
    sections: list[tuple[str, LocalStats | str]],
    storage_nodes: Sequence[StorageNode],
    detailed: bool = False,
) -> str:
    """``garage stats -a [-d]`` (ref 2.10; late 2.2).

    Args:
        p: the personality.
        sections: ``(id16, stats)`` per layout node, in layout order. A ``str`` is printed as the
            node's inline error line: ``Network error: Not connected: <id16>`` (0.8.1+, where
            unreachable nodes no longer fail the command), ``Remote error: <msg>`` (0.8.1+) or
            ``Error: <msg>`` (0.7.3/0.8.0 handler errors).
        storage_nodes: the cluster-wide Storage nodes rows (0.8.2+).
        detailed: ``-d`` was given.

    Returns:
        One ``Stats for node`` section per node and, from 0.8.2, the ``Cluster statistics`` block.
    """
    out = ""
    for id16, stats in sections:
        out += f"\n======================\nStats for node {id16}:\n"
        out += f"{stats}\n" if isinstance(stats, str) else _stats_local(p, stats, detailed, skip_global=True) + "\n"
    if p.stats_storage_section:
        # [inf] late 2.2 gives "Cluster statistics:\n\n" followed by the block; we take the block
        # to start directly with "Storage nodes:" (one blank line, not two).
        out += "\n======================\nCluster statistics:\n\n" + _cluster_stats(storage_nodes)
    return out + "\n"


