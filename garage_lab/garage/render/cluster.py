"""``status`` and ``layout show``.

Part of :mod:`garage_lab.garage.render` (see its docstring for the conventions).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..personality import Personality
from .text import _capacity, _tags, format_table, timeago


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


