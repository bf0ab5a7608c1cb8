"""Every text the simulated Garage prints, as pure functions of plain data.

Standard library only: this module is imported by the simulated daemon and CLI, which must start
fast. Each function returns the exact text Garage writes, including its trailing newline, so a
caller only has to ``write()`` it. Formats differ between versions; they are selected with the
flags of :class:`~garage_lab.garage.personality.Personality`, never by comparing versions.

References: ``garage-0.7-to-0.8.md`` (cited as "ref") and ``garage-0.8-late.md`` (cited as
"late"). Where the text had to be reconstructed beyond those references, the docstring or a
comment says so with "[guess]" or "[inf]".
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from .personality import Personality
from .workers import Worker

# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def format_table(rows: list[list[str]]) -> str:
    """Align rows like Garage's ``format_table_to_string`` (ref 2.3).

    Every column but a row's last cell is padded to the widest cell of that column plus two
    spaces; the last cell is written as is. Column widths count every cell, including the cells
    that are last in their row, so a ``NO ROLE ASSIGNED`` cell widens the Tags column (late 3.1)
    and an empty last cell leaves the padded previous cell, i.e. trailing spaces (late 1.1).

    Args:
        rows: the cells of each row; ``[""]`` (or ``[]``) is an empty line.

    Returns:
        One line per row, each ending with ``\\n``; ``""`` when there are no rows.
    """
    rows = [row or [""] for row in rows]
    widths: list[int] = []
    for row in rows:
        for i, cell in enumerate(row):
            if i == len(widths):
                widths.append(0)
            widths[i] = max(widths[i], len(cell))
    out = []
    for row in rows:
        padded = "".join(cell.ljust(widths[i] + 2) for i, cell in enumerate(row[:-1]))
        out.append(padded + row[-1] + "\n")
    return "".join(out)


# bytesize 1.1.0 swaps its two logarithm constants: LN_KB is ln(1024) and LN_KIB is ln(1000).
# The exponent of the base-1000 form is therefore picked with ln(1024) and vice versa, which is
# why 1 MiB prints as "1048.6 KB" (ref 2.13). The constants are copied digit for digit because
# ln(1048576)/ln(1024) must come out just below 2.0 as it does in Rust.
_LN_1024 = 6.931471806
_LN_1000 = 6.907755279


def bytesize(n: int, si: bool) -> str:
    """``bytesize::ByteSize::b(n).to_string_as(si)`` of bytesize 1.1.0 (ref 2.13).

    ``si=True`` is the binary form (``kiB``, ``MiB``...; base 1024), ``si=False`` the decimal one
    (``KB``, ``MB``...; base 1000), which is also what ``ByteSize``'s ``Display`` prints.

    Args:
        n: a byte count, 0 <= n < 2**64 (cast negative counters with ``n % 2**64`` first).
        si: which of the two forms.

    Returns:
        ``"<n> B"`` below one unit, else one decimal and a unit, e.g. ``"1.2 GiB"``.
    """
    if not 0 <= n < 2**64:
        raise ValueError(f"bytesize takes a u64, got {n}")
    unit, ln_base = (1024, _LN_1000) if si else (1000, _LN_1024)
    if n < unit:
        return f"{n} B"
    size = float(n)
    exp = max(1, int(math.log(size) / ln_base))
    prefix = ("kMGTPE" if si else "KMGTPE")[exp - 1]
    return f"{size / float(unit**exp):.1f} {prefix}{'iB' if si else 'B'}"


def _avail_cell(avail_total: tuple[int, int] | None, with_total: bool) -> str:
    """``1.2 TB (61.7%)`` (status) or ``1.2 TB/2.0 TB (61.7%)`` (stats); ``?`` when unknown."""
    if avail_total is None:
        return "?"
    avail, total = avail_total
    pct = avail / total * 100.0 if total else float("nan")
    shown = f"{bytesize(avail, False)}/{bytesize(total, False)}" if with_total else bytesize(avail, False)
    return f"{shown} ({pct:.1f}%)"


def data_avail_cell(avail: int, total: int) -> str:
    """The ``DataAvail`` cell of ``status`` for a node that reported its disk (late 3.1).

    Args:
        avail: available bytes on the data disk.
        total: total bytes of the data disk.

    Returns:
        e.g. ``"1.2 TB (61.7%)"`` (bytesize Display, base 1000).
    """
    return _avail_cell((avail, total), with_total=False)


# timeago 0.3.1: a month is S_IN_MNTH = 2_628_003 s and a year is 12 months.
_TIMEAGO_UNITS = (
    ("year", 12 * 2_628_003),
    ("month", 2_628_003),
    ("week", 7 * 86_400),
    ("day", 86_400),
    ("hour", 3_600),
    ("minute", 60),
    ("second", 1),
)


def _timeago_amount(secs: float) -> str | None:
    """The largest unit that fits, floored (``17 seconds``); ``None`` under one second."""
    for name, size in _TIMEAGO_UNITS:
        if secs >= size:
            count = int(secs // size)
            return f"{count} {name}{'' if count == 1 else 's'}"
    return None


def timeago(secs: float) -> str:
    """``timeago::Formatter::new().convert(d)`` as Garage 0.8 uses it (ref 2.7).

    Args:
        secs: the elapsed time in seconds.

    Returns:
        ``now`` under 1 s, else one unit only: ``1 second ago``, ``3 hours ago``, ``2 days ago``.
    """
    amount = _timeago_amount(secs)
    return "now" if amount is None else f"{amount} ago"


def timeago_future(secs: float) -> str:
    """The ``Next try`` cell of ``block list-errors`` (late 3.3).

    Args:
        secs: seconds until the event; negative when it is overdue.

    Returns:
        ``in 3 minutes``, ``in now`` under 1 s, ``in asap`` when overdue (0.8.3+; 0.8.1-0.8.2
        underflowed instead, which the lab does not simulate).
    """
    if secs < 0:
        return "in asap"
    return f"in {_timeago_amount(secs) or 'now'}"


def _f32(x: float) -> float:
    """The value Rust holds in an ``f32`` (Garage's throttle durations are ``f32``)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _tags(tags: Sequence[str]) -> str:
    return ",".join(tags)


def _capacity(capacity: int | None) -> str:
    """``NodeRole::capacity_string``: the number, or ``gateway``."""
    return "gateway" if capacity is None else str(capacity)


# ---------------------------------------------------------------------------------------------
# status / layout show
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusRow:
    """One node as ``garage status`` sees it.

    Attributes:
        id16: the node ID (16 hex).
        hostname: as reported; ``?`` if nothing received since start, ``??`` if unknown.
        addr: ``ip:port``, or ``??``.
        tags: role tags.
        zone: role zone (``None`` without a role).
        capacity: role capacity; ``None`` means gateway.
        has_role: the node has a role in the current layout.
        pending: a role is staged for it (shown as ``(pending)`` instead of NO ROLE ASSIGNED).
        data_avail: preformatted DataAvail cell (see :func:`data_avail_cell`); ``None`` is ``?``.
            Gateways always show ``N/A``.
        last_seen_secs: seconds since last seen; ``None`` is ``never seen``.
    """

    id16: str
    hostname: str
    addr: str
    tags: tuple[str, ...]
    zone: str | None
    capacity: int | None
    has_role: bool
    pending: bool
    data_avail: str | None
    last_seen_secs: float | None


_STATUS_HEADER = ["ID", "Hostname", "Address", "Tags", "Zone", "Capacity"]


def _last_seen(p: Personality, secs: float | None) -> str:
    if secs is None:
        return "never seen"
    # Garage holds last_seen_secs_ago as whole seconds (u64) in both versions.
    whole = int(secs)
    return timeago(whole) if p.last_seen_timeago else f"{whole}s ago"


def _role_cells(r: StatusRow) -> list[str]:
    return [r.id16, r.hostname, r.addr, f"[{_tags(r.tags)}]", r.zone or "", _capacity(r.capacity)]


def render_status(p: Personality, healthy: list[StatusRow], failed: list[StatusRow]) -> str:
    """``garage status`` (ref 2.7; late 3.1 for the DataAvail column).

    Args:
        p: the personality.
        healthy: the connected nodes, in netapp's peer order.
        failed: layout nodes that are down or unknown, in Garage's order (known ones first).
            Rows without a role are ignored, as Garage lists only role holders there.

    Returns:
        The HEALTHY block, and the FAILED block only when some failed row has a role.
    """
    header = _STATUS_HEADER + (["DataAvail"] if p.status_data_avail else [])
    rows = [header]
    for r in healthy:
        if not r.has_role:
            rows.append([r.id16, r.hostname, r.addr, "(pending)" if r.pending else "NO ROLE ASSIGNED"])
            continue
        row = _role_cells(r)
        if p.status_data_avail:
            row.append("N/A" if r.capacity is None else (r.data_avail or "?"))
        rows.append(row)
    out = "==== HEALTHY NODES ====\n" + format_table(rows)
    down = [_role_cells(r) + [_last_seen(p, r.last_seen_secs)] for r in failed if r.has_role]
    if down:
        out += "\n==== FAILED NODES ====\n" + format_table([_STATUS_HEADER + ["Last seen"]] + down)
    return out


@dataclass(frozen=True)
class LayoutRole:
    """A node role of the current layout: ID16, tags, zone, capacity (``None`` = gateway)."""

    id16: str
    tags: tuple[str, ...]
    zone: str
    capacity: int | None


def render_layout_show(p: Personality, roles: list[LayoutRole], version: int) -> str:
    """``garage layout show`` without staged changes (ref 2.8; same in every version).

    Args:
        p: the personality (the format does not vary; kept for a uniform API).
        roles: the roles of the current layout, in any order (printed sorted by ID).
        version: the current layout version.

    Returns:
        The layout table, or the two "no role" lines, then the version line.
    """
    out = "==== CURRENT CLUSTER LAYOUT ====\n"
    if roles:
        rows = [["ID", "Tags", "Zone", "Capacity"]]
        for r in sorted(roles, key=lambda r: r.id16):
            rows.append([r.id16, _tags(r.tags), r.zone, _capacity(r.capacity)])
        out += format_table(rows)
    else:
        out += "No nodes currently have a role in the cluster.\nSee `garage status` to view available nodes.\n"
    return out + f"\nCurrent cluster layout version: {version}\n"


# ---------------------------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# worker list / info / get / set
# ---------------------------------------------------------------------------------------------


# The record the worker renderers format is the daemon's own (one worker record in the lab).
WorkerRow = Worker


_STATE_RANK = {"Busy": 0, "Throttled": 0, "Idle": 1, "Done": 2}


def _state_cell(p: Personality, w: WorkerRow) -> str:
    """``WorkerState``'s Display: ``Thr:1.500`` in 0.8.0, ``Busy*`` from 0.8.1."""
    if w.state != "Throttled":
        return w.state
    return "Busy*" if p.worker_list_table else f"Thr:{_f32(w.throttle_secs):.3f}"


def _listed_workers(workers: Iterable[WorkerRow], busy: bool, errors: bool) -> list[WorkerRow]:
    """Sort (Busy/Throttled, Idle, Done; then TID) and apply ``-b`` / ``-e`` (ref 2.11, late 1.1)."""
    listed = sorted(workers, key=lambda w: (_STATE_RANK[w.state], w.tid))
    if busy:
        listed = [w for w in listed if w.state in ("Busy", "Throttled")]
    if errors:
        listed = [w for w in listed if w.errors > 0]
    return listed


def _dash(value: object | None) -> str:
    return "-" if value is None else str(value)


def render_worker_list(p: Personality, workers: list[WorkerRow], busy: bool, errors: bool) -> str:
    """``garage worker list [-b] [-e]`` (ref 2.11 for 0.8.0; late 1.1 for 0.8.1+).

    Args:
        p: the personality: headerless 3 columns with info lines, or the 9-column table.
        workers: every worker of the node, in any order.
        busy: ``-b``: keep Busy and Throttled workers only.
        errors: ``-e``: keep workers with errors only (0.8.0 then also shows the message of
            non-consecutive errors).

    Returns:
        The table; in 0.8.0 an empty selection prints nothing at all.
    """
    listed = _listed_workers(workers, busy, errors)
    if p.worker_list_table:
        rows = [["TID", "State", "Name", "Tranq", "Done", "Queue", "Errors", "Consec", "Last"]]
        for w in listed:
            has_errors = w.errors > 0
            last = timeago(w.last_error_secs_ago) if w.last_error_secs_ago is not None else ""
            rows.append([str(w.tid), _state_cell(p, w), w.name, _dash(w.tranq), _dash(w.progress), _dash(w.queue),
                         str(w.errors) if has_errors else "-", str(w.consecutive_errors) if has_errors else "-", last])
        return format_table(rows)
    rows = []
    for w in listed:
        rows.append([str(w.tid), _state_cell(p, w), w.name])
        sub = list(w.info)
        ago = timeago(w.last_error_secs_ago) if w.last_error_secs_ago is not None else "(?) ago"
        message = w.last_error if w.last_error is not None else "(?)"
        if w.consecutive_errors > 0:
            sub += [f"{w.consecutive_errors} consecutive errors ({w.errors} total), last {ago}", message]
        elif w.errors > 0:
            sub.append(f"({w.errors} errors, last {ago})")
            if errors:
                sub.append(message)
        rows += [["", "", f"  {line}"] for line in sub]
    return format_table(rows)


def render_worker_info(
    p: Personality, w: WorkerRow, message_lines: tuple[str, ...], persistent_errors: int | None
) -> str:
    """``garage worker info <TID>`` (late 1.2; 0.8.1+).

    Args:
        p: the personality.
        w: the worker (tranq, progress and queue are shown when set).
        message_lines: free-text status lines (the first goes after ``Message:``).
        persistent_errors: errored blocks (resync) or corruptions (scrub), else ``None``.

    Returns:
        The headerless two-column table.
    """
    if w.state == "Throttled":
        state = f"Busy (throttled, paused for {_f32(w.throttle_secs):.3f}s)"
    else:
        state = _state_cell(p, w)
    rows = [["Task id:", str(w.tid)], ["Worker name:", w.name], ["Worker state:", state]]
    if w.tranq is not None:
        rows.append(["Tranquility:", str(w.tranq)])
    rows += [[""], ["Total errors:", str(w.errors)], ["Consecutive errs:", str(w.consecutive_errors)]]
    if w.last_error is not None:
        ago = timeago(w.last_error_secs_ago) if w.last_error_secs_ago is not None else "now"
        rows += [["Last error:", w.last_error], ["Last error time:", ago]]
    rows.append([""])
    for label, value in (("Progress:", w.progress), ("Queue length:", w.queue), ("Persistent errors:", persistent_errors)):
        if value is not None:
            rows.append([label, str(value)])
    for i, line in enumerate(message_lines):
        if i == 0:
            if rows[-1] != [""]:
                rows.append([""])
            rows.append(["Message:", line])
        else:
            rows.append(["", line])
    return format_table(rows)


def render_worker_vars(rows: list[tuple[str, str, str]]) -> str:
    """``worker get`` / 0.8.2+ ``worker set``: ``<ID16>  <var>  <value>`` rows (late 1.3).

    Args:
        rows: ``(id16, variable, value)`` in the order to print (``get`` sorts by name per node).

    Returns:
        The headerless table.
    """
    return format_table([list(r) for r in rows])


_WORKER_SET_REPLIES = {
    "resync-n-workers": "Number of resync workers updated",
    "scrub-tranquility": "Scrub tranquility updated",
    "resync-tranquility": "Resync tranquility updated",
}


def render_worker_set_legacy(variable: str) -> str:
    """The one-line reply of 0.8.0 ``worker set <variable> <N>`` (ref 2.11).

    Args:
        variable: ``resync-n-workers``, ``scrub-tranquility`` or ``resync-tranquility``.

    Returns:
        e.g. ``"Scrub tranquility updated\\n"``.
    """
    return _WORKER_SET_REPLIES[variable] + "\n"


# ---------------------------------------------------------------------------------------------
# buckets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketInfo:
    """What ``garage bucket info`` shows.

    Attributes:
        id64: full bucket ID.
        global_aliases: active global aliases.
        local_aliases: ``(key_id, alias)`` or ``(key_id, key_name, alias)``; with two items the
            key name is taken from ``keys`` when the key is listed there.
        keys: ``(perm, key_id, key_name)``, perm being three characters like ``"RW "``.
        website: website access enabled.
        objects: object counter (may be negative, ref 7).
        bytes: byte counter (a negative value is printed cast to u64).
        unfinished_uploads: unfinished multipart uploads counter.
        quota_max_size: size quota in bytes, if set.
        quota_max_objects: object quota, if set.
    """

    id64: str
    global_aliases: tuple[str, ...]
    local_aliases: tuple[tuple[str, ...], ...]
    keys: tuple[tuple[str, str, str], ...]
    website: bool
    objects: int
    bytes: int
    unfinished_uploads: int
    quota_max_size: int | None = None
    quota_max_objects: int | None = None


def _both_sizes(n: int) -> str:
    """``<binary> (<decimal>)``; an i64 counter goes through ``as u64`` first (ref 2.13)."""
    n %= 2**64
    return f"{bytesize(n, True)} ({bytesize(n, False)})"


def render_bucket_info(p: Personality, b: BucketInfo) -> str:
    """``garage bucket info <name>`` (ref 2.13).

    0.7.3 has no size/objects lines and no quotas. Alias and key tables come out sorted, as
    Garage reads them from sorted CRDT maps.

    Args:
        p: the personality (``has_counters``: size, objects and quotas exist).
        b: the bucket.

    Returns:
        The text.
    """
    out = f"Bucket: {b.id64}\n"
    if p.has_counters:
        out += (
            f"\nSize: {_both_sizes(b.bytes)}\n"
            f"Objects: {b.objects}\n"
            f"Unfinished multipart uploads: {b.unfinished_uploads}\n\n"
        )
    out += f"Website access: {'true' if b.website else 'false'}\n"
    if p.has_counters and (b.quota_max_size is not None or b.quota_max_objects is not None):
        out += "\nQuotas:\n"
        if b.quota_max_size is not None:
            out += f" maximum size: {_both_sizes(b.quota_max_size)}\n"
        if b.quota_max_objects is not None:
            out += f" maximum number of objects: {b.quota_max_objects}\n"
    out += "\nGlobal aliases:\n" + "".join(f"  {a}\n" for a in sorted(b.global_aliases))
    names = {key_id: name for _perm, key_id, name in b.keys}
    local_rows = []
    for entry in sorted(b.local_aliases):
        key_id, alias = entry[0], entry[-1]
        name = entry[1] if len(entry) == 3 else names.get(key_id, "")
        # [guess] row layout "\t<key id> (<key name>)\t<alias>"; the references give none.
        local_rows.append(["", f"{key_id} ({name})", alias])
    out += "\nKey-specific aliases:\n" + format_table(local_rows)
    key_rows = [["", perm, key_id, name] for perm, key_id, name in sorted(b.keys, key=lambda k: k[1]) if perm.strip()]
    return out + "\nAuthorized keys:\n" + format_table(key_rows)


def render_bucket_list(p: Personality, buckets: list[tuple[tuple[str, ...], str]]) -> str:
    """``garage bucket list`` for 0.7.3 and 0.8.x. [guess]: the references give no sample.

    Reconstructed from memory of ``print_bucket_list`` in 0.7/0.8 ``cli/util.rs``: one row
    per bucket, ``"" / <global aliases, comma-joined> / <local alias cell> / <ID64>`` through
    the table formatter. The local alias cell is empty here: the lab's buckets have none.
    (An older format printed one row per alias with a 16-hex ID and a note about unaliased
    buckets; the orchestrator's parser accepts both, because neither is verified.)

    Args:
        p: the personality (same format in every simulated version).
        buckets: ``(global aliases, id64)`` per bucket.

    Returns:
        The text.
    """
    rows = [["", ",".join(aliases), "", id64] for aliases, id64 in buckets]
    return "List of buckets:\n" + format_table(rows)


# ---------------------------------------------------------------------------------------------
# logs and panics
# ---------------------------------------------------------------------------------------------

# ansi_term escapes used by tracing-subscriber 0.3 [dep, from memory]: dimmed timestamp and
# target, level coloured by severity.
_DIM, _RESET = "\x1b[2m", "\x1b[0m"
_TRACING_LEVELS = {
    "TRACE": ("\x1b[35m", "TRACE"),
    "DEBUG": ("\x1b[34m", "DEBUG"),
    "INFO": ("\x1b[32m", " INFO"),
    "WARN": ("\x1b[33m", " WARN"),
    "ERROR": ("\x1b[31m", "ERROR"),
}
# pretty_env_logger 0.4 pads every level to five characters.
_ENV_LOGGER_LEVELS = {"TRACE": "TRACE", "DEBUG": "DEBUG", "INFO": "INFO ", "WARN": "WARN ", "ERROR": "ERROR"}


def _level(level: str) -> str:
    level = level.upper()
    return "WARN" if level == "WARNING" else level


def rfc3339_micros(epoch: float) -> str:
    """tracing-subscriber's ``SystemTime`` timestamp: ``2022-11-21T14:05:33.123456Z``."""
    micros = round(epoch * 1_000_000)
    dt = datetime.fromtimestamp(micros // 1_000_000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{micros % 1_000_000:06d}Z"


def log_line(p: Personality, level: str, target: str, msg: str, now_epoch: float, state: dict) -> str:
    """One daemon/CLI log line on stderr (ref 13 item 16).

    0.8 (tracing-subscriber 0.3 ``fmt``, ANSI always on; escape codes [inf] from memory of the
    crate)::

        ESC[2m2022-11-21T14:05:33.123456ZESC[0m ESC[32m INFOESC[0m ESC[2mgarage::repair::onlineESC[0mESC[2m:ESC[0m msg

    which reads ``2022-11-21T14:05:33.123456Z  INFO garage::repair::online: msg`` once the escape
    codes are removed. 0.7.3 (pretty_env_logger 0.4, no timestamp, colour only on a TTY, which
    the lab's log files are not): `` INFO  garage::repair > msg`` with the target padded to the
    longest target seen so far by this process.

    Args:
        p: the personality (``log_timestamps`` selects the 0.8 format).
        level: ``TRACE``, ``DEBUG``, ``INFO``, ``WARN`` or ``ERROR`` (any case).
        target: the Rust module path.
        msg: the message.
        now_epoch: the time of the event, in seconds since the epoch.
        state: per-process mutable state; keeps the 0.7.3 target width under
            ``"max_target_width"``.

    Returns:
        The line, with its newline.
    """
    level = _level(level)
    if p.log_timestamps:
        colour, text = _TRACING_LEVELS[level]
        return (
            f"{_DIM}{rfc3339_micros(now_epoch)}{_RESET} {colour}{text}{_RESET} "
            f"{_DIM}{target}{_RESET}{_DIM}:{_RESET} {msg}\n"
        )
    width = max(state.get("max_target_width", 0), len(target))
    state["max_target_width"] = width
    return f" {_ENV_LOGGER_LEVELS[level]} {target.ljust(width)} > {msg}\n"


# The explanation of Garage 0.8's panic hook, reconstructed from memory of src/garage/main.rs
# [inf]; the typos ("a the following", "the the full") are believed to be in the original.
_PANIC_EXPLANATION = """\
Panics are internal errors that Garage is unable to handle on its own.
They can be caused by bugs in Garage's code, or by corrupted data in
the node's storage. If you feel that this error is likely to be a bug
in Garage, please report it on our issue tracker a the following address:

        https://git.deuxfleurs.fr/Deuxfleurs/garage/issues

Please include the last log messages and the the full backtrace below in
your bug report, as well as any relevant information on the context in
which Garage was running when this error occurred.
"""

# A stand-in for backtrace::Backtrace's Debug output [invented: a real one lists ~40 frames].
_FAKE_BACKTRACE = """\
   0: garage::main::{{closure}}
   1: std::panicking::rust_panic_with_hook
   2: std::panicking::begin_panic_handler::{{closure}}
   3: std::sys_common::backtrace::__rust_end_short_backtrace
   4: rust_begin_unwind
   5: core::panicking::panic_fmt
   6: core::result::unwrap_failed
"""


def panic_banner(p: Personality, msg: str, location: str, *, server: bool = False, log_state: dict | None = None) -> str:
    """What a panic writes on stderr before the process aborts or exits (ref 2.2).

    0.8 installs its hook for every command: the PANIC banner, then ``abort()`` (returncode
    -6). 0.7.3 hooks only ``server``, logging the panic at ERROR before ``abort()``; any other
    0.7.3 command panics the default Rust way (exit code 101).

    Args:
        p: the personality.
        msg: the panic message.
        location: ``<file>:<line>:<col>``.
        server: the panicking command is ``server`` (matters for 0.7.3 only).
        log_state: the 0.7.3 logger state (see :func:`log_line`).

    Returns:
        The text; the caller then aborts (or exits 101 for 0.7.3 non-server commands).
    """
    panicked = f"panicked at '{msg}', {location}"
    if p.log_timestamps:
        return (
            "======== PANIC (internal Garage error) ========\n"
            f"{panicked}\n\n{_PANIC_EXPLANATION}\n"
            f"GARAGE VERSION: {p.stats_version_string}\n\nBACKTRACE:\n{_FAKE_BACKTRACE}"
        )
    if server:
        return log_line(p, "ERROR", "garage", panicked, 0.0, {} if log_state is None else log_state)
    return f"thread 'main' {panicked}\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n"


# ---------------------------------------------------------------------------------------------
# Prometheus text exposition
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistogramSample:
    """A histogram series: cumulative bucket counts, sum and count.

    Attributes:
        buckets: ``(le, cumulative count)`` for each finite bound, ``le`` as printed (``"0.5"``).
        sum: sum of the observations.
        count: number of observations (the ``+Inf`` bucket).
    """

    buckets: tuple[tuple[str, int], ...]
    sum: float
    count: int

    @classmethod
    def from_observations(cls, bounds: Sequence[str], values: Iterable[float]) -> HistogramSample:
        """Bucket raw observations the way the opentelemetry 0.17 SDK does.

        The SDK puts a value in the first bucket whose bound is strictly greater than it, so a
        value equal to a bound is counted in the *next* bucket [dep-inf]. ``+Inf`` in ``bounds``
        is ignored (it is always implied).

        Args:
            bounds: the ``le`` strings, e.g. ``p.histogram_buckets``.
            values: the observations.

        Returns:
            The sample.
        """
        finite = [b for b in bounds if b != "+Inf"]
        limits = [float(b) for b in finite]
        per_bucket = [0] * (len(limits) + 1)
        total, count = 0.0, 0
        for v in values:
            index = next((i for i, limit in enumerate(limits) if v < limit), len(limits))
            per_bucket[index] += 1
            total += v
            count += 1
        cumulative, running = [], 0
        for le, n in zip(finite, per_bucket):
            running += n
            cumulative.append((le, running))
        return cls(tuple(cumulative), total, count)


@dataclass(frozen=True)
class MetricFamily:
    """One metric family for :func:`render_exposition`.

    Attributes:
        name: metric name (dots already replaced by underscores; no ``_total`` suffix).
        help: description for ``# HELP`` (omitted when empty).
        type: ``counter``, ``gauge`` or ``histogram``.
        samples: ``(labels, value)``; for histograms the value is a :class:`HistogramSample` or
            the raw observations (bucketed with the personality's ``histogram_buckets``).
    """

    name: str
    help: str
    type: str
    samples: list[tuple[dict[str, str], float | HistogramSample | Sequence[float]]]


def format_float(value: float) -> str:
    """Rust's ``f64`` Display, as the prometheus crate prints sample values.

    Integral values have no ``.0`` (``1``, ``4182``), there is never an exponent
    (``0.0000001``), and the specials are ``inf``, ``-inf`` and ``NaN``.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == int(value):
        return str(int(value))
    return format(Decimal(repr(value)), "f")


def _escape(text: str, quotes: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quotes else text


def _labels(labels: dict[str, str], extra: tuple[str, str] | None = None) -> str:
    pairs = sorted(labels.items()) + ([extra] if extra else [])
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v, True)}"' for k, v in pairs) + "}"


def _series_order(sample: tuple[dict[str, str], object]) -> tuple:
    """prometheus' ``Registry::gather`` order: label count, then label values by label name."""
    labels = sample[0]
    return (len(labels), [v for _k, v in sorted(labels.items())])


def render_exposition(p: Personality, families: list[MetricFamily]) -> str:
    """``GET /metrics``: prometheus text format as opentelemetry-prometheus 0.10 serves it (ref 4.2).

    Following the prometheus crate 0.13 (``Registry::gather`` + ``TextEncoder``) [dep, from
    memory]: families sorted by name, empty families dropped, series sorted by label values,
    label names sorted, ``# HELP`` only when there is a description, values in Rust ``f64``
    Display form (so integers print without ``.0``), histograms as ``_bucket{le=...}`` with a
    final ``+Inf`` bucket, then ``_sum`` and ``_count``.

    Args:
        p: the personality; gives the ``le`` bounds for raw histogram observations.
        families: the metric families.

    Returns:
        The exposition text.
    """
    out = []
    for fam in sorted(families, key=lambda f: f.name):
        if not fam.samples:
            continue
        if fam.help:
            out.append(f"# HELP {fam.name} {_escape(fam.help, False)}\n")
        out.append(f"# TYPE {fam.name} {fam.type}\n")
        for labels, value in sorted(fam.samples, key=_series_order):
            if fam.type != "histogram":
                out.append(f"{fam.name}{_labels(labels)} {format_float(float(value))}\n")
                continue
            h = value if isinstance(value, HistogramSample) else HistogramSample.from_observations(p.histogram_buckets, value)
            for le, n in h.buckets + (("+Inf", h.count),):
                out.append(f"{fam.name}_bucket{_labels(labels, ('le', le))} {n}\n")
            out.append(f"{fam.name}_sum{_labels(labels)} {format_float(h.sum)}\n")
            out.append(f"{fam.name}_count{_labels(labels)} {h.count}\n")
    return "".join(out)
