"""Pure parsers from Garage CLI output (and admin-API bodies) to typed facts.

Each ``parse_xxx`` takes the exact text a command printed on stdout and returns a model from
:mod:`garage_migrate.facts.models`, or raises :class:`~garage_migrate.facts.models.ParseError`
naming the command and the line it could not read. Nothing here runs a command or touches the
network. Formats follow ``shared/reference/garage-0.7-to-0.8.md`` (0.7.3, 0.8.0) and
``garage-0.8-late.md`` (0.8.1-0.8.7); where a reference is unsure, the docstring says so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from ._table import (
    Line,
    cut_row,
    header_offsets,
    numbered_lines,
    split_headerless,
    split_headerless_anchored,
    split_sections,
    strip_ansi,
)
from ._units import parse_ago, parse_size_pair
from .models import (
    BucketInfo,
    BucketKeyAlias,
    BucketKeyPermission,
    BucketList,
    BucketListEntry,
    BucketQuotas,
    ClusterStats,
    ClusterStatus,
    GarageVersion,
    Layout,
    LayoutRole,
    NodeId,
    NodeStats,
    NodeStatsError,
    OfflineRepairOutcome,
    ParseError,
    SpaceEstimate,
    StagedRoleChange,
    StatusNode,
    StorageNode,
    TableQueue,
    Worker,
    WorkerList,
    WorkerVariable,
)

__all__ = [
    "parse_admin_status_version",
    "parse_bucket_info",
    "parse_bucket_list",
    "parse_layout",
    "parse_node_id",
    "parse_offline_repair",
    "parse_stats",
    "parse_stats_all",
    "parse_stats_version_line",
    "parse_status",
    "parse_version",
    "parse_worker_get",
    "parse_worker_list",
]

_ID16_RE = re.compile(r"[0-9a-f]{16}")
_ID64_RE = re.compile(r"[0-9a-f]{64}")
_INT_RE = re.compile(r"-?\d+")
_T = TypeVar("_T")


def _fail(command: str, reason: str, line: Line | None = None) -> ParseError:
    if line is None:
        return ParseError(reason, command=command)
    return ParseError(reason, command=command, line_no=line[0], line=line[1])


def _convert(command: str, line: Line, what: str, fn: Callable[[str], _T], cell: str) -> _T:
    """Apply ``fn`` to ``cell``, turning its ValueError into a ParseError on ``line``."""
    try:
        return fn(cell)
    except ValueError as exc:
        raise _fail(command, f"bad {what} {cell!r} ({exc})", line) from None


def _int(command: str, line: Line, what: str, cell: str, *, nc: bool = False) -> int | None:
    if nc and cell == "NC":
        return None
    if not _INT_RE.fullmatch(cell):
        raise _fail(command, f"bad {what} {cell!r}", line)
    return int(cell)


def _id16(command: str, line: Line, cell: str) -> str:
    if not _ID16_RE.fullmatch(cell):
        raise _fail(command, f"bad node id {cell!r}", line)
    return cell


def _nonblank(lines: Sequence[Line]) -> list[Line]:
    return [ln for ln in lines if ln[1].strip()]


def _table_lines(text: str, command: str) -> list[Line]:
    """Lines of a one-table output: outer blank lines dropped, an inner one is an error."""
    lines = numbered_lines(text)
    while lines and not lines[0][1].strip():
        lines.pop(0)
    while lines and not lines[-1][1].strip():
        lines.pop()
    for line in lines:
        if not line[1].strip():
            raise _fail(command, "blank line inside a table", line)
    return lines


def _single_line(text: str, command: str) -> Line:
    lines = _nonblank(numbered_lines(text))
    if not lines:
        raise _fail(command, "empty output")
    if len(lines) > 1:
        raise _fail(command, "expected a single line", lines[1])
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------

_VERSION_BODY_RE = re.compile(r"(?P<raw>[^\s\[\]]+)(?: \[features: (?P<features>[^\]]*)\])?")
_SEMVER_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_FEATURE_RE = re.compile(r"[a-z0-9][a-z0-9-]*")


def _version_body(body: str, command: str, line: Line) -> GarageVersion:
    m = _VERSION_BODY_RE.fullmatch(body)
    if m is None:
        raise _fail(command, "not a Garage version string", line)
    raw = m.group("raw")
    features: tuple[str, ...] = ()
    if m.group("features") is not None and m.group("features") != "(unknown)":
        features = tuple(m.group("features").split(", "))
        if not all(_FEATURE_RE.fullmatch(f) for f in features):
            raise _fail(command, "bad feature list", line)
    sem = _SEMVER_RE.search(raw)
    return GarageVersion(
        version=".".join(sem.groups()) if sem else None,
        features=features,
        raw=raw,
        # CI release builds set GIT_VERSION to the bare tag; git:/cargo: builds are local.
        official=re.fullmatch(r"v\d+\.\d+\.\d+", raw) is not None,
    )


def parse_version(text: str) -> GarageVersion:
    """Parse ``garage --version`` (or ``garage <sub> --version``).

    Accepts ``garage v0.7.3``, ``garage v0.8.0 [features: k2v, sled, ...]``,
    ``garage git:v0.8.0-3-gabc [features: ...]``, ``garage cargo:0.8.0 ...`` and clap's
    ``garage-server v0.8.0`` for subcommands.

    Raises:
        ParseError: not exactly one such line.
    """
    command = "--version"
    line = _single_line(text, command)
    m = re.fullmatch(r"garage(?:-[a-z-]+)? (.+)", line[1])
    if m is None:
        raise _fail(command, "does not start with 'garage '", line)
    return _version_body(m.group(1), command, line)


def parse_stats_version_line(line: str) -> GarageVersion:
    """Parse the ``Garage version: ...`` line that starts ``garage stats`` output.

    Raises:
        ParseError: not such a line.
    """
    return _stats_version((1, line), "stats")


def _stats_version(line: Line, command: str) -> GarageVersion:
    prefix = "Garage version: "
    if not line[1].startswith(prefix):
        raise _fail(command, "expected 'Garage version: ...'", line)
    return _version_body(line[1][len(prefix):], command, line)


def parse_admin_status_version(body: str | Mapping[str, Any]) -> GarageVersion:
    """Read the daemon version from an admin ``GET /v0/status`` response.

    Args:
        body: the JSON text, or the already-decoded object. 0.8 adds ``garageFeatures``
            (a list, or ``null`` for builds that do not know theirs); 0.7.3 has none.

    Raises:
        ParseError: not JSON, or no string ``garageVersion``.
    """
    command = "GET /v0/status"
    if isinstance(body, str):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as exc:
            raise ParseError(f"not JSON ({exc.msg})", command=command,
                             line_no=exc.lineno) from None
    else:
        obj = body
    if not isinstance(obj, Mapping) or not isinstance(obj.get("garageVersion"), str):
        raise ParseError("no string 'garageVersion'", command=command)
    features = obj.get("garageFeatures")
    if features is not None and not (
        isinstance(features, list) and all(isinstance(f, str) for f in features)
    ):
        raise ParseError("'garageFeatures' is not a list of strings", command=command)
    body_text = obj["garageVersion"]
    if features:
        body_text += f" [features: {', '.join(features)}]"
    return _version_body(body_text, command, (1, obj["garageVersion"]))


# ---------------------------------------------------------------------------------------------
# node id
# ---------------------------------------------------------------------------------------------


def parse_node_id(text: str) -> NodeId:
    """Parse ``garage node id -q``: ``<ID64>@<rpc_public_addr>`` or ``<ID64>``.

    0.7.3 prints the parsed socket address, 0.8 the configured string (possibly a hostname);
    either is returned as written.

    Raises:
        ParseError: not exactly one such line.
    """
    command = "node id"
    line = _single_line(text, command)
    m = re.fullmatch(r"([0-9a-f]{64})(?:@(\S+))?", line[1])
    if m is None:
        raise _fail(command, "expected '<64 hex>[@<address>]'", line)
    return NodeId(id64=m.group(1), id16=m.group(1)[:16], public_addr=m.group(2))


# ---------------------------------------------------------------------------------------------
# status / layout
# ---------------------------------------------------------------------------------------------

_HEALTHY_COLS = ("ID", "Hostname", "Address", "Tags", "Zone", "Capacity")
_FAILED_COLS = _HEALTHY_COLS + ("Last seen",)
_ROLE_COLS = ("ID", "Tags", "Zone", "Capacity")
_NO_ROLE = {"NO ROLE ASSIGNED": "none", "(pending)": "pending"}
_ASSIGN_HEAD = "Calculating updated partition assignation, this may take some time..."
_ASSIGN_TAILS = (
    r"You can also revert all proposed changes with: garage layout revert --version \d+",
    r"This new layout cannot yet be applied\.",
)
_STAGE_HINT = "Please use `garage layout show` to check the proposed new layout and apply it."


def _capacity(command: str, line: Line, cell: str) -> tuple[int | None, bool]:
    if cell == "gateway":
        return None, True
    cap = _int(command, line, "capacity", cell)
    assert cap is not None
    if cap <= 0:
        raise _fail(command, f"bad capacity {cell!r}", line)
    return cap, False


def _status_tags(command: str, line: Line, cell: str) -> tuple[str, ...]:
    if not (cell.startswith("[") and cell.endswith("]")):
        raise _fail(command, f"tags {cell!r} are not bracketed", line)
    inner = cell[1:-1]
    return tuple(inner.split(",")) if inner else ()


class _Cursor:
    """Walks numbered lines; blank lines are skipped only where a caller asks."""

    def __init__(self, lines: list[Line], command: str) -> None:
        self.lines = lines
        self.i = 0
        self.command = command

    def peek(self) -> Line | None:
        return self.lines[self.i] if self.i < len(self.lines) else None

    def skip_blank(self) -> None:
        while self.i < len(self.lines) and not self.lines[self.i][1].strip():
            self.i += 1

    def take(self, what: str) -> Line:
        line = self.peek()
        if line is None:
            raise _fail(self.command, f"output ends before {what} (truncated?)")
        self.i += 1
        return line

    def expect(self, text: str) -> Line:
        line = self.take(repr(text))
        if line[1] != text:
            raise _fail(self.command, f"expected {text!r}", line)
        return line

    def table_rows(self) -> list[Line]:
        rows = []
        while (line := self.peek()) is not None and line[1].strip():
            rows.append(line)
            self.i += 1
        return rows

    def done(self) -> bool:
        self.skip_blank()
        return self.peek() is None


def _status_row(command: str, line: Line, offsets: list[int], failed: bool) -> StatusNode:
    # A row without a role has only four cells; its last one sits in the Tags column and may
    # overflow past Zone/Capacity (0.7.3/0.8.0 do not widen Tags for it, 0.8.2+ do).
    if not failed and line[1][offsets[3]:].rstrip(" ") in _NO_ROLE:
        head = cut_row(line, offsets[:4], command)
        return StatusNode(
            id16=_id16(command, line, head[0]),
            hostname=None if head[1] in ("?", "??") else head[1],
            address=None if head[2] == "??" else head[2],
            tags=(),
            zone=None,
            capacity=None,
            gateway=False,
            role=_NO_ROLE[head[3]],  # type: ignore[arg-type]
        )
    cells = cut_row(line, offsets, command)
    if any(c == "" for c in cells[:6]):
        raise _fail(command, "empty cell in a status row", line)
    cap, gw = _capacity(command, line, cells[5])
    node = dict(
        id16=_id16(command, line, cells[0]),
        hostname=None if cells[1] in ("?", "??") else cells[1],
        address=None if cells[2] == "??" else cells[2],
        tags=_status_tags(command, line, cells[3]),
        zone=cells[4],
        capacity=cap,
        gateway=gw,
        role="assigned",
    )
    if failed:
        node["known"] = not (cells[1] == "??" and cells[2] == "??")
        node["last_seen"] = cells[6]
        node["last_seen_secs"] = _convert(command, line, "last seen", parse_ago, cells[6])
    elif len(cells) == 7:
        if cells[6] == "":
            raise _fail(command, "empty DataAvail cell", line)
        node["data_avail"] = cells[6]
    return StatusNode(**node)  # type: ignore[arg-type]


def _layout_role(command: str, line: Line, offsets: list[int]) -> LayoutRole:
    cells = cut_row(line, offsets, command)
    if not cells[2] or not cells[3]:
        raise _fail(command, "empty zone or capacity", line)
    cap, gw = _capacity(command, line, cells[3])
    return LayoutRole(
        id16=_id16(command, line, cells[0]),
        tags=tuple(cells[1].split(",")) if cells[1] else (),
        zone=cells[2],
        capacity=cap,
        gateway=gw,
    )


def _role_rows(cur: _Cursor) -> tuple[LayoutRole, ...]:
    header = cur.take("the role table header")
    offsets = header_offsets(header, _ROLE_COLS, cur.command)
    rows = cur.table_rows()
    if not rows:
        raise _fail(cur.command, "role table has no rows", header)
    return tuple(_layout_role(cur.command, r, offsets) for r in rows)


def _staged_rows(cur: _Cursor) -> tuple[StagedRoleChange, ...]:
    header = cur.take("the staged changes header")
    offsets = header_offsets(header, _ROLE_COLS, cur.command)
    out = []
    for line in cur.table_rows():
        # A removal row has two cells; its last one may overflow the Tags column.
        if line[1][offsets[1]:].rstrip(" ") == "REMOVED":
            head = cut_row(line, offsets[:2], cur.command)
            out.append(StagedRoleChange(id16=_id16(cur.command, line, head[0]), removed=True))
            continue
        role = _layout_role(cur.command, line, offsets)
        out.append(StagedRoleChange(id16=role.id16, removed=False, tags=role.tags,
                                    zone=role.zone, capacity=role.capacity, gateway=role.gateway))
    if not out:
        raise _fail(cur.command, "staged changes table has no rows", header)
    return tuple(out)


def parse_status(text: str) -> ClusterStatus:
    """Parse ``garage status`` (0.7.3, 0.8.0, 0.8.2+ with DataAvail).

    Raises:
        ParseError: unknown section, misaligned row, bad cell, or truncated output.
    """
    command = "status"
    cur = _Cursor(numbered_lines(text), command)
    cur.skip_blank()
    cur.expect("==== HEALTHY NODES ====")
    header = cur.take("the HEALTHY NODES header")
    cols = _HEALTHY_COLS + (("DataAvail",) if header[1].rstrip().endswith("DataAvail") else ())
    offsets = header_offsets(header, cols, command)
    healthy = tuple(_status_row(command, r, offsets, False) for r in cur.table_rows())
    failed: tuple[StatusNode, ...] = ()
    staged: tuple[StagedRoleChange, ...] = ()
    cur.skip_blank()
    if (line := cur.peek()) is not None and line[1] == "==== FAILED NODES ====":
        cur.i += 1
        fheader = cur.take("the FAILED NODES header")
        foffsets = header_offsets(fheader, _FAILED_COLS, command)
        rows = cur.table_rows()
        if not rows:
            raise _fail(command, "FAILED NODES section has no rows", fheader)
        failed = tuple(_status_row(command, r, foffsets, True) for r in rows)
        cur.skip_blank()
    if (line := cur.peek()) is not None and line[1] == "==== STAGED ROLE CHANGES ====":
        cur.i += 1
        staged = _staged_rows(cur)
        cur.skip_blank()
        cur.expect(_STAGE_HINT)
    if not cur.done():
        raise _fail(command, "unexpected line", cur.peek())
    return ClusterStatus(healthy=healthy, failed=failed, staged_changes=staged)


def parse_layout(text: str) -> Layout:
    """Parse ``garage layout show`` (same format in 0.7.3 through 0.8.7).

    The partition statistics printed after a staged layout are kept verbatim in
    ``Layout.trailer``: the references give their headings but not their exact shape.

    Raises:
        ParseError: unknown section, misaligned row, bad cell, or truncated output.
    """
    command = "layout show"
    cur = _Cursor(numbered_lines(text), command)
    cur.skip_blank()
    cur.expect("==== CURRENT CLUSTER LAYOUT ====")
    line = cur.peek()
    if line is not None and line[1] == "No nodes currently have a role in the cluster.":
        cur.i += 1
        cur.expect("See `garage status` to view available nodes.")
        roles: tuple[LayoutRole, ...] = ()
    else:
        roles = _role_rows(cur)
    cur.skip_blank()
    vline = cur.take("'Current cluster layout version: N'")
    m = re.fullmatch(r"Current cluster layout version: (\d+)", vline[1])
    if m is None:
        raise _fail(command, "expected 'Current cluster layout version: N'", vline)
    version = int(m.group(1))
    if cur.done():
        return Layout(version=version, roles=roles, staged=False)

    cur.expect("==== STAGED ROLE CHANGES ====")
    staged = _staged_rows(cur)
    cur.skip_blank()
    cur.expect("==== NEW CLUSTER LAYOUT AFTER APPLYING CHANGES ====")
    line = cur.peek()
    if line is not None and line[1] == "No nodes have a role in the new layout.":
        cur.i += 1
        new_roles: tuple[LayoutRole, ...] = ()
    else:
        new_roles = _role_rows(cur)
    cur.skip_blank()
    trailer = list(cur.lines[cur.i:])
    while trailer and not trailer[-1][1].strip():
        trailer.pop()
    # Only the first and last lines of the partition statistics are pinned down (reference
    # 2.8 and the source's closing messages); the lines between are kept unchecked.
    if not trailer or trailer[0][1] != _ASSIGN_HEAD:
        raise _fail(command, f"expected {_ASSIGN_HEAD!r}", trailer[0] if trailer else None)
    if not any(re.fullmatch(pat, trailer[-1][1]) for pat in _ASSIGN_TAILS):
        raise _fail(command, "partition statistics do not end as expected (truncated?)",
                    trailer[-1])
    apply_version = None
    for ln in trailer:
        am = re.fullmatch(r"\s*garage layout apply --version (\d+)", ln[1])
        if am:
            apply_version = int(am.group(1))
            if apply_version != version + 1:
                raise _fail(command, f"apply version is not {version + 1}", ln)
    return Layout(version=version, roles=roles, staged=True, staged_changes=staged,
                  new_roles=new_roles, apply_version=apply_version,
                  trailer=tuple(ln[1] for ln in trailer))


# ---------------------------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------------------------

_TABLE_STATS_COLS = ("Table", "Items", "MklItems", "MklTodo", "GcTodo")
_STORAGE_COLS = ("ID", "Hostname", "Zone", "Capacity", "Part.", "DataAvail", "MetaAvail")
_NC_HINTS = (
    # 0.8.2+
    "If values are missing above (marked as NC), consider adding the --detailed flag "
    "(this will be slow).",
    # 0.8.1
    "If values are missing (marked as NC), consider adding the --detailed flag - this will "
    "be slow.",
)
_ESTIMATE_HEAD = "Estimated available storage space cluster-wide (might be lower in practice):"
_ESTIMATE_NOTE = (
    "A precise estimate could not be given as information is missing for some storage nodes."
)
_PLAIN_TABLE_LINES = {
    "number of items": "items",
    "Merkle tree size": "merkle_items",
    "Merkle updater todo queue length": "merkle_todo",
    "GC todo queue length": "gc_todo",
}
_BLOCK_LINES = {
    "number of RC entries (~= number of blocks)": "rc_entries",
    "resync queue length": "resync_queue",
    "blocks with resync errors": "resync_errors",
}


def _kv_lines(command: str, block: list[Line], keys: Mapping[str, str],
              nc: bool) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for line in block:
        m = re.fullmatch(r"  (.+?): (\S+)", line[1])
        if m is None or m.group(1) not in keys:
            raise _fail(command, "unexpected line", line)
        field = keys[m.group(1)]
        if field in out:
            raise _fail(command, "repeated line", line)
        out[field] = _int(command, line, m.group(1), m.group(2), nc=nc)
    return out


def _storage_block(command: str, block: list[Line]) -> tuple[StorageNode, ...]:
    offsets = header_offsets(block[1], _STORAGE_COLS, command, indent=2)
    out = []
    for line in block[2:]:
        if not line[1].startswith("  "):
            raise _fail(command, "storage row is not indented", line)
        c = cut_row(line, offsets, command)
        if any(x == "" for x in c):
            raise _fail(command, "empty cell in a storage row", line)
        cap = None if c[3] in ("?", "gateway") else _capacity(command, line, c[3])[0]
        parts = _int(command, line, "partition count", c[4])
        assert parts is not None
        out.append(StorageNode(
            id16=_id16(command, line, c[0]),
            hostname=None if c[1] == "?" else c[1],
            zone=None if c[2] == "?" else c[2],
            capacity=cap,
            partitions=parts,
            data_avail=None if c[5] == "?" else c[5],
            meta_avail=None if c[6] == "?" else c[6],
        ))
    return tuple(out)


def _estimate_block(command: str, block: list[Line]) -> SpaceEstimate:
    if len(block) not in (3, 4):
        raise _fail(command, "estimate block has an unexpected length", block[0])
    values = []
    for line, key in zip(block[1:3], ("data", "metadata")):
        m = re.fullmatch(rf"  {key}: (< )?(\S.*)", line[1])
        if m is None:
            raise _fail(command, f"expected '  {key}: ...'", line)
        values.append((m.group(1) is not None, m.group(2)))
    lower = values[0][0]
    if values[1][0] != lower or (len(block) == 4) != lower:
        raise _fail(command, "estimate is partly a lower bound", block[0])
    if len(block) == 4 and block[3][1] != _ESTIMATE_NOTE:
        raise _fail(command, "unexpected line", block[3])
    return SpaceEstimate(data=values[0][1], metadata=values[1][1], lower_bound_only=lower)


def _cluster_blocks(command: str, blocks: list[list[Line]]
                    ) -> tuple[tuple[StorageNode, ...] | None, SpaceEstimate | None]:
    """Parse the optional Storage nodes block and the estimate block after it."""
    storage = estimate = None
    for block in blocks:
        head = block[0][1]
        if head == "Storage nodes:" and storage is None:
            if len(block) < 2:
                raise _fail(command, "Storage nodes without a table", block[0])
            storage = _storage_block(command, block)
        elif head == _ESTIMATE_HEAD and storage is not None and estimate is None:
            estimate = _estimate_block(command, block)
        else:
            raise _fail(command, "unexpected line", block[0])
    return storage, estimate


def _node_stats(lines: Sequence[Line], command: str,
                layout: Literal["plain", "table"] | None, standalone: bool) -> NodeStats:
    blocks = split_sections(lines)
    if not blocks:
        raise _fail(command, "empty output")
    first = blocks[0]
    version = _stats_version(first[0], command)
    rust = None
    if len(first) > 1:
        m = re.fullmatch(r"Rust compiler version: (\S+)", first[1][1])
        if m is None or len(first) > 2:
            raise _fail(command, "unexpected line", first[1] if m is None else first[2])
        rust = m.group(1)

    db_engine: str | None = None
    ring: list[tuple[str, int]] | None = None
    tables: list[TableQueue] = []
    seen_layout: str | None = None
    block_stats: dict[str, int | None] | None = None
    rest: list[list[Line]] = []
    for block in blocks[1:]:
        head = block[0]
        if rest:
            # Storage/estimate blocks come last; nothing of the node part may follow them.
            rest.append(block)
            continue
        if head[1].startswith("Database engine: ") and db_engine is None and not tables:
            db_engine = head[1][len("Database engine: "):]
            if not db_engine or len(block) > 1:
                raise _fail(command, "unexpected line", block[1] if len(block) > 1 else head)
        elif head[1] == "Ring nodes & partition count:" and ring is None and not tables:
            ring = []
            for line in block[1:]:
                m = re.fullmatch(r"  ([0-9a-f]{16}) (\d+)", line[1])
                if m is None:
                    raise _fail(command, "expected '  <node id> <partitions>'", line)
                ring.append((m.group(1), int(m.group(2))))
        elif head[1].startswith("Table stats for "):
            if seen_layout == "table" or block_stats is not None:
                raise _fail(command, "plain table stats out of place", head)
            seen_layout = "plain"
            name = head[1][len("Table stats for "):]
            if not re.fullmatch(r"[a-z0-9_]+", name):
                raise _fail(command, "bad table name", head)
            kv = _kv_lines(command, block[1:], _PLAIN_TABLE_LINES, nc=False)
            if "merkle_todo" not in kv or "gc_todo" not in kv:
                raise _fail(command, f"queue lines missing for table {name} (truncated?)", head)
            tables.append(TableQueue(name=name, items=kv.get("items"),
                                     merkle_items=kv.get("merkle_items"),
                                     merkle_todo=kv["merkle_todo"],  # type: ignore[arg-type]
                                     gc_todo=kv["gc_todo"]))  # type: ignore[arg-type]
        elif head[1] == "Table stats:":
            if seen_layout is not None or block_stats is not None or len(block) < 3:
                raise _fail(command, "table stats out of place or empty", head)
            seen_layout = "table"
            offsets = header_offsets(block[1], _TABLE_STATS_COLS, command, indent=2)
            for line in block[2:]:
                if not line[1].startswith("  "):
                    raise _fail(command, "table stats row is not indented", line)
                c = cut_row(line, offsets, command)
                if not re.fullmatch(r"[a-z0-9_]+", c[0]):
                    raise _fail(command, "bad table name", line)
                mt = _int(command, line, "MklTodo", c[3])
                gc = _int(command, line, "GcTodo", c[4])
                assert mt is not None and gc is not None
                tables.append(TableQueue(
                    name=c[0],
                    items=_int(command, line, "Items", c[1], nc=True),
                    merkle_items=_int(command, line, "MklItems", c[2], nc=True),
                    merkle_todo=mt, gc_todo=gc))
        elif head[1] == "Block manager stats:" and block_stats is None:
            block_stats = _kv_lines(command, block[1:], _BLOCK_LINES, nc=True)
            if "resync_queue" not in block_stats or "resync_errors" not in block_stats:
                raise _fail(command, "resync lines missing (truncated?)", head)
            if block_stats["resync_queue"] is None or block_stats["resync_errors"] is None:
                raise _fail(command, "resync counters are never NC", head)
        elif head[1] in _NC_HINTS and block_stats is not None and len(block) == 1:
            pass
        elif head[1] == "Storage nodes:" and block_stats is not None:
            rest.append(block)
        else:
            raise _fail(command, "unexpected line", head)
    storage, estimate = _cluster_blocks(command, rest)

    if not tables:
        raise _fail(command, "no table statistics (truncated?)")
    if block_stats is None:
        raise _fail(command, "no 'Block manager stats:' section (truncated?)")
    if standalone and rust is not None and storage is None:
        # 0.8.2+ (the releases with the Rust line) always end a single-node report with the
        # Storage nodes table; only the node sections of `stats -a` leave it out.
        raise _fail(command, "no 'Storage nodes:' section (truncated?)")
    assert seen_layout in ("plain", "table")
    if layout is not None and seen_layout != layout:
        raise _fail(command, f"expected the {layout} stats layout, got the {seen_layout} one")
    return NodeStats(
        version=version,
        rust_version=rust,
        db_engine=db_engine,
        tables=tuple(tables),
        rc_entries=block_stats.get("rc_entries"),
        resync_queue=block_stats["resync_queue"],  # type: ignore[arg-type]
        resync_errors=block_stats["resync_errors"],  # type: ignore[arg-type]
        ring=tuple(ring) if ring is not None else None,
        layout=seen_layout,  # type: ignore[arg-type]
        storage_nodes=storage,
        estimate=estimate,
    )


def parse_stats(text: str, layout: Literal["plain", "table"] | None = None) -> NodeStats:
    """Parse ``garage stats`` / ``garage stats -d`` of one node.

    Handles the plain layout of 0.7.3/0.8.0 (``Table stats for X`` blocks, ring section) and
    the table layout of 0.8.1+ (``NC`` = unknown = ``None``; Rust line, Storage nodes and the
    estimate from 0.8.2).

    Args:
        text: stdout of the command.
        layout: when given, the layout the caller's Garage version must print; the other one
            is rejected instead of being accepted silently.

    Raises:
        ParseError: unknown or misplaced section, bad value, truncated output, wrong layout.
    """
    return _node_stats(numbered_lines(text), "stats", layout, standalone=True)


_SEPARATOR = "======================"
_NODE_ERRORS = (
    ("Network error: ", "network"),
    ("Remote error: ", "remote"),
    ("Bad answer: ", "bad_answer"),
    ("Error: ", "error"),
)


def parse_stats_all(text: str, layout: Literal["plain", "table"] | None = None) -> ClusterStats:
    """Parse ``garage stats -a`` (optionally with ``-d``).

    Each node section is ``Stats for node <ID16>:`` followed by that node's stats or by an
    inline error (``Network error:``, 0.8.1+; ``Remote error:``/``Bad answer:``; ``Error:``
    in 0.7.3/0.8.0). 0.8.2+ ends with a ``Cluster statistics:`` section.

    Args:
        text: stdout of the command.
        layout: as for :func:`parse_stats`, applied to every node section.

    Raises:
        ParseError: anything outside that structure, or a node section that does not parse.
    """
    command = "stats -a"
    lines = numbered_lines(text)
    sections: list[tuple[Line, list[Line]]] = []
    for line in lines:
        if line[1] == _SEPARATOR:
            sections.append((line, []))
        elif sections:
            sections[-1][1].append(line)
        elif line[1].strip():
            raise _fail(command, "text before the first node section", line)
    nodes: list[tuple[str, NodeStats | NodeStatsError]] = []
    storage = estimate = None
    cluster_seen = False
    for sep, body in sections:
        body_ne = _nonblank(body)
        if not body_ne:
            raise _fail(command, "empty section (truncated?)", sep)
        title = body_ne[0]
        if cluster_seen:
            raise _fail(command, "section after 'Cluster statistics:'", title)
        m = re.fullmatch(r"Stats for node ([0-9a-f]{16}):", title[1])
        if m:
            rest = body[body.index(title) + 1:]
            rest_ne = _nonblank(rest)
            if not rest_ne:
                raise _fail(command, f"no statistics for node {m.group(1)} (truncated?)", title)
            first = rest_ne[0][1]
            for prefix, kind in _NODE_ERRORS:
                if first.startswith(prefix):
                    msg = "\n".join([first[len(prefix):]] + [ln[1] for ln in rest_ne[1:]])
                    error = NodeStatsError(kind=kind, message=msg)  # type: ignore[arg-type]
                    nodes.append((m.group(1), error))
                    break
            else:
                nodes.append((m.group(1), _node_stats(rest, command, layout, standalone=False)))
        elif title[1] == "Cluster statistics:":
            cluster_seen = True
            rest = body[body.index(title) + 1:]
            storage, estimate = _cluster_blocks(command, split_sections(rest))
            if storage is None:
                raise _fail(command, "no storage nodes in cluster statistics (truncated?)", title)
        else:
            raise _fail(command, "expected 'Stats for node <id>:' or 'Cluster statistics:'",
                        title)
    if not nodes:
        raise _fail(command, "no node sections")
    return ClusterStats(nodes=tuple(nodes), storage_nodes=storage, estimate=estimate)


# ---------------------------------------------------------------------------------------------
# workers
# ---------------------------------------------------------------------------------------------

_WORKER_COLS = ("TID", "State", "Name", "Tranq", "Done", "Queue", "Errors", "Consec", "Last")
_TABLE_STATES = {"Busy": "Busy", "Busy*": "Throttled", "Idle": "Idle", "Done": "Done"}
_ERR_CONSEC_RE = re.compile(r"(\d+) consecutive errors \((\d+) total\), last (.+)")
_ERR_TOTAL_RE = re.compile(r"\((\d+) errors, last (.+)\)")


def _dash_int(command: str, line: Line, what: str, cell: str) -> int | None:
    return None if cell == "-" else _int(command, line, what, cell)


def _worker_table(lines: list[Line], command: str) -> WorkerList:
    offsets = header_offsets(lines[0], _WORKER_COLS, command)
    workers = []
    for line in lines[1:]:
        c = cut_row(line, offsets, command)
        if c[1] not in _TABLE_STATES:
            raise _fail(command, f"unknown worker state {c[1]!r}", line)
        if not c[2] or any(x == "" for x in c[3:8]):
            raise _fail(command, "empty cell in a worker row", line)
        if (c[6] == "-") != (c[7] == "-"):
            raise _fail(command, "Errors and Consec must both be '-' or both numbers", line)
        tid = _int(command, line, "TID", c[0])
        assert tid is not None
        if c[8]:
            _convert(command, line, "last error age", parse_ago, c[8])
        workers.append(Worker(
            tid=tid,
            state=_TABLE_STATES[c[1]],  # type: ignore[arg-type]
            name=c[2],
            tranquility=_dash_int(command, line, "Tranq", c[3]),
            progress=None if c[4] == "-" else c[4],
            queue=_dash_int(command, line, "Queue", c[5]),
            errors=_dash_int(command, line, "Errors", c[6]) or 0,
            consecutive_errors=_dash_int(command, line, "Consec", c[7]) or 0,
            last_error_ago=c[8] or None,
        ))
    return WorkerList(workers=tuple(workers), format="table")


def _apply_info(w: dict[str, Any], text: str) -> None:
    """Extract typed values from a 0.8.0 worker info string; the text itself is kept too."""
    if m := re.search(r"tranquility = (\d+)", text):
        w["tranquility"] = int(m.group(1))
    if m := re.search(r"(\d+) (?:blocks|items) in queue|(\d+) partitions remaining", text):
        w["queue"] = int(m.group(1) or m.group(2))
    if m := re.search(r"(\d+\.\d+)% done", text):
        w["progress"] = m.group(1) + "%"
    elif m := re.fullmatch(r"(\d+) items done", text):
        w["progress"] = m.group(1)


def _worker_v080(lines: list[Line], command: str) -> WorkerList:
    for line in lines:
        if not re.match(r"\d+ {2,}\S+ {2,}\S| {4,}\S", line[1]):
            raise _fail(command, "neither a worker row nor an info line of the 0.8.0 format",
                        line)
    rows, starts = split_headerless(lines, 3, command)
    workers: list[dict[str, Any]] = []
    phase = ""  # "", "info", "error", "message": what the next info line may be
    for line, (tid, state, name) in zip(lines, rows):
        if tid:
            if state in ("Busy", "Idle", "Done"):
                extra: dict[str, Any] = {"state": state}
            elif m := re.fullmatch(r"Thr:(\d+\.\d{3})", state):
                extra = {"state": "Throttled", "throttled_for": float(m.group(1))}
            else:
                raise _fail(command, f"unknown worker state {state!r}", line)
            if not re.fullmatch(r"\d+", tid) or not name or name.startswith(" "):
                raise _fail(command, "bad worker row", line)
            workers.append({"tid": int(tid), "name": name, "info": [], **extra})
            phase = "info"
            continue
        if state or not workers or not name.startswith("  ") or name[2:3] in ("", " "):
            raise _fail(command, "info line is not under the Name column + 2", line)
        info = name[2:]
        w = workers[-1]
        w["info"].append(info)
        if m := _ERR_CONSEC_RE.fullmatch(info):
            if phase not in ("info", "error"):
                raise _fail(command, "unexpected error summary", line)
            w["consecutive_errors"], w["errors"] = int(m.group(1)), int(m.group(2))
            w["last_error_ago"] = None if m.group(3) == "(?) ago" else m.group(3)
            phase = "message"
        elif m := _ERR_TOTAL_RE.fullmatch(info):
            if phase not in ("info", "error"):
                raise _fail(command, "unexpected error summary", line)
            w["errors"] = int(m.group(1))
            w["last_error_ago"] = None if m.group(2) == "(?) ago" else m.group(2)
            phase = "message"  # the message follows only under -e
        elif phase == "info":
            _apply_info(w, info)
            phase = "error"
        elif phase == "message":
            w["last_error"] = None if info == "(?)" else info
            phase = "done"
        else:
            raise _fail(command, "unexpected extra info line", line)
    return WorkerList(
        workers=tuple(Worker(**{**w, "info": tuple(w["info"])}) for w in workers),
        format="0.8.0",
    )


def parse_worker_list(text: str, format: Literal["0.8.0", "table"] | None = None
                      ) -> WorkerList:
    """Parse ``garage worker list [-b] [-e]``.

    The format is detected by the ``TID`` header of 0.8.1+; 0.8.0 prints a headerless
    ``TID  State  Name`` table with info lines indented under the Name column + 2.

    Args:
        text: stdout of the command.
        format: when given, the format the caller's Garage version must print; the other is
            rejected.

    Raises:
        ParseError: wrong format, unknown state, misaligned row or unexpected info line.
    """
    command = "worker list"
    lines = _table_lines(text, command)
    detected = "table" if lines and lines[0][1].startswith("TID") else "0.8.0"
    fmt = format or detected
    if fmt == "table":
        if not lines:
            raise _fail(command, "empty output has no TID header")
        return _worker_table(lines, command)
    if fmt != "0.8.0":
        raise ValueError(f"unknown worker list format {format!r}")
    return _worker_v080(lines, command)


def parse_worker_get(text: str) -> tuple[WorkerVariable, ...]:
    """Parse ``garage worker get [-a] [<var>]`` / ``worker set`` (0.8.2+).

    Rows are a headerless ``<ID16>  <variable>  <value>`` table.

    Raises:
        ParseError: a row that does not fit.
    """
    command = "worker get"
    lines = _table_lines(text, command)
    rows, _ = split_headerless(lines, 3, command)
    out = []
    for line, (node, var, value) in zip(lines, rows):
        _id16(command, line, node)
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", var):
            raise _fail(command, f"bad variable name {var!r}", line)
        out.append(WorkerVariable(node, var, value))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# buckets
# ---------------------------------------------------------------------------------------------


def parse_bucket_list(text: str) -> BucketList:
    """Parse ``garage bucket list``.

    GUESS: the references do not give this format. It is read as ``List of buckets:`` and a
    headerless table of rows ``""  <global aliases, comma-joined>  <local alias cell>  <ID64>``,
    where the local alias cell is empty, ``<key id>:<alias>`` or ``[N local aliases]``
    (recollection of ``print_bucket_list`` in Garage's ``cli/util.rs``, not checked here).

    Raises:
        ParseError: anything else.
    """
    command = "bucket list"
    if text.rstrip("\n").endswith(_LEGACY_BUCKET_NOTE):
        return _parse_bucket_list_legacy(text)
    lines = _table_lines(text, command)
    if not lines or lines[0][1] != "List of buckets:":
        raise _fail(command, "expected 'List of buckets:'", lines[0] if lines else None)
    rows = lines[1:]
    out = []
    for line, (empty, glob, local, bid) in zip(rows, split_headerless_anchored(rows, 4, command)):
        if empty or not _ID64_RE.fullmatch(bid):
            raise _fail(command, "expected an indented row ending with a 64-hex bucket id", line)
        if m := re.fullmatch(r"\[(\d+) local aliases\]", local):
            locals_, count = (), int(m.group(1))
        elif local == "":
            locals_, count = (), 0
        elif re.fullmatch(r"[^\s:]+:\S+", local):
            locals_, count = (local,), 1
        else:
            raise _fail(command, f"bad local alias cell {local!r}", line)
        out.append(BucketListEntry(id64=bid, global_aliases=tuple(glob.split(",")) if glob else (),
                                   local_aliases=locals_, local_alias_count=count))
    return BucketList(buckets=tuple(out))


_LEGACY_BUCKET_NOTE = ("Buckets that don't have a global alias (i.e. that only exist in the namespace of "
                       "an access key) are not shown.")


def _parse_bucket_list_legacy(text: str) -> BucketList:
    """The other remembered format (GUESS, older releases): one row per global alias with the
    bucket ID in its 16-hex Debug form, then a note about unaliased buckets. Accepted because
    neither format is verified against a real 0.7/0.8 binary. Bucket names cannot contain
    spaces, so each row is exactly two words.
    """
    command = "bucket list"
    lines = text.rstrip("\n").split("\n")
    if lines[0] != "List of buckets:":
        raise ParseError("expected 'List of buckets:'", command=command, line_no=1, line=lines[0])
    by_id: dict[str, list[str]] = {}
    for no, line in enumerate(lines[1:-1], 2):
        if not line.strip():
            continue
        words = line.split()
        if len(words) != 2 or not line.startswith("  ") or not re.fullmatch(r"[0-9a-f]{16}|[0-9a-f]{64}", words[1]):
            raise ParseError("expected '  <alias>  <bucket id>'", command=command, line_no=no, line=line)
        by_id.setdefault(words[1], []).append(words[0])
    return BucketList(buckets=tuple(BucketListEntry(id64=i, global_aliases=tuple(a), local_aliases=(), local_alias_count=0)
                                    for i, a in by_id.items()))


def _size_display(command: str, line: Line, text: str) -> int:
    return _convert(command, line, "size", parse_size_pair, text)


def parse_bucket_info(text: str) -> BucketInfo:
    """Parse ``garage bucket info <bucket>`` (0.7.3: no counters; 0.8: Size/Objects/quotas).

    The position of the ``Quotas:`` section (after ``Website access``) is from memory of the
    0.8 source, not from the references; any order of the known sections is accepted.

    Raises:
        ParseError: unknown section or line, missing section (truncated), deleted bucket.
    """
    command = "bucket info"
    blocks = split_sections(numbered_lines(text))
    if not blocks:
        raise _fail(command, "empty output")
    first = blocks[0]
    m = re.fullmatch(r"Bucket: ([0-9a-f]{64})", first[0][1])
    if m is None:
        raise _fail(command, "expected 'Bucket: <64 hex>'", first[0])
    fields: dict[str, Any] = {"id64": m.group(1)}
    pending = [first[1:]] if len(first) > 1 else []
    if pending and pending[0][0][1] == "Bucket is deleted.":
        raise _fail(command, "the bucket is deleted", pending[0][0])

    def once(key: str, line: Line) -> None:
        if key in fields:
            raise _fail(command, "repeated section", line)

    for block in pending + blocks[1:]:
        head = block[0]
        if head[1].startswith("Size: "):
            once("size_bytes", head)
            if len(block) != 3:
                raise _fail(command, "counter block must have 3 lines", head)
            fields["size_display"] = head[1][len("Size: "):]
            fields["size_bytes"] = _size_display(command, head, fields["size_display"])
            for line, (label, key) in zip(block[1:], (("Objects", "objects"),
                                           ("Unfinished multipart uploads", "unfinished_uploads"))):
                mm = re.fullmatch(rf"{label}: (-?\d+)", line[1])
                if mm is None:
                    raise _fail(command, f"expected '{label}: N'", line)
                fields[key] = int(mm.group(1))
        elif mm := re.fullmatch(r"Website access: (true|false)", head[1]):
            once("website", head)
            if len(block) != 1:
                raise _fail(command, "unexpected line", block[1])
            fields["website"] = mm.group(1) == "true"
        elif head[1] == "Quotas:":
            once("quotas", head)
            q: dict[str, Any] = {}
            for line in block[1:]:
                if (mm := re.fullmatch(r" maximum size: (.+)", line[1])) and "max_size" not in q:
                    q["max_size_display"] = mm.group(1)
                    q["max_size"] = _size_display(command, line, mm.group(1))
                elif (mm := re.fullmatch(r" maximum number of objects: (\d+)", line[1])) \
                        and "max_objects" not in q:
                    q["max_objects"] = int(mm.group(1))
                else:
                    raise _fail(command, "unexpected quota line", line)
            if not q:
                raise _fail(command, "empty Quotas section", head)
            fields["quotas"] = BucketQuotas(**q)
        elif head[1] == "Global aliases:":
            once("global_aliases", head)
            aliases = []
            for line in block[1:]:
                if not re.fullmatch(r"  \S+", line[1]):
                    raise _fail(command, "expected '  <alias>'", line)
                aliases.append(line[1][2:])
            fields["global_aliases"] = tuple(aliases)
        elif head[1] == "Key-specific aliases:":
            once("local_aliases", head)
            rows = block[1:]
            out = []
            for line, (empty, key, alias) in zip(rows, split_headerless_anchored(rows, 3, command)):
                km = re.fullmatch(r"(\S+) \((.*)\)", key)
                if empty or km is None:
                    raise _fail(command, "expected '  <key id> (<key name>)  <alias>'", line)
                out.append(BucketKeyAlias(key_id=km.group(1), key_name=km.group(2), alias=alias))
            fields["local_aliases"] = tuple(out)
        elif head[1] == "Authorized keys:":
            once("keys", head)
            fields["keys"] = _authorized_keys(command, block[1:])
        else:
            raise _fail(command, "unexpected line", head)
    for key, title in (("website", "Website access"), ("global_aliases", "Global aliases"),
                       ("local_aliases", "Key-specific aliases"), ("keys", "Authorized keys")):
        if key not in fields:
            raise _fail(command, f"no '{title}' section (truncated?)")
    fields.setdefault("size_bytes", None)
    fields.setdefault("objects", None)
    fields.setdefault("unfinished_uploads", None)
    fields.setdefault("quotas", None)
    return BucketInfo(**fields)


def _authorized_keys(command: str, rows: list[Line]) -> tuple[BucketKeyPermission, ...]:
    # The flag cell is always 3 characters and may start with a space (" W "), so whitespace
    # cannot locate it: it sits at offset 2 (after the empty first column) and the key column
    # at 2 + 3 + 2. The key and name columns are then derived from the rows as usual.
    for line in rows:
        if not re.fullmatch(r"  [R ][W ][O ]  \S.*", line[1]) or line[1][2:5] == "   ":
            raise _fail(command, "expected '  <RWO flags>  <key id>  <key name>'", line)
    cells, _ = split_headerless([(no, t[7:]) for no, t in rows], 2, command)
    return tuple(
        BucketKeyPermission(key_id=key, key_name=name, read=t[2] == "R", write=t[3] == "W",
                            owner=t[4] == "O")
        for (_no, t), (key, name) in zip(rows, cells)
    )


# ---------------------------------------------------------------------------------------------
# offline-repair
# ---------------------------------------------------------------------------------------------

_PANIC_BANNER = "======== PANIC (internal Garage error) ========"
_MISSING_YES = "Please add the --yes flag to launch repair operation"
# clap 2 words an unknown subcommand either way, depending on whether it has a suggestion.
_CLAP_UNKNOWN_RE = re.compile(
    r"error: (?:The subcommand '[^']+' wasn't recognized|"
    r"Found argument '[^']+' which wasn't expected, or isn't valid in this context)"
)


def parse_offline_repair(returncode: int, stdout: str, stderr: str) -> OfflineRepairOutcome:
    """Classify the end of a ``garage offline-repair --yes <what>`` run.

    - 0.8.0 with the daemon running: the sled lock panic, aborted by SIGABRT (returncode -6,
      or 134 through a shell), PANIC banner with ``could not acquire lock``.
    - 0.8.2+ (0.8.7): exit 1, ``Error: Unable to open sled DB: IO error: could not acquire
      lock on ...``.
    - Without ``--yes``: exit 1, ``Error: Please add the --yes flag to launch repair operation``.
    - 0.7.3: clap error for the unknown subcommand, exit 1.

    Args:
        returncode: the process return code (negative when killed by a signal).
        stdout: its stdout (offline-repair prints nothing there; kept for ``other_error``).
        stderr: its stderr; ANSI colours are ignored.

    Returns:
        The outcome; ``other_error`` for anything unrecognised, never ``ok`` unless the exit
        code is 0 and no panic banner was printed.
    """
    err = strip_ansi(stderr)
    err_lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    lock = next((ln for ln in err_lines if "could not acquire lock" in ln), None)
    panicked = _PANIC_BANNER in err
    if returncode == 0 and not panicked:
        return OfflineRepairOutcome(kind="ok", returncode=0, detail="")
    if lock is not None and (
        (returncode in (-6, 134) and panicked)
        or (returncode == 1 and "Error: Unable to open sled DB" in lock)
    ):
        return OfflineRepairOutcome(kind="lock_held", returncode=returncode, detail=lock)
    if returncode == 1:
        for ln in err_lines:
            if ln == f"Error: {_MISSING_YES}":
                return OfflineRepairOutcome(kind="missing_yes", returncode=1, detail=ln)
            if _CLAP_UNKNOWN_RE.match(ln) and "offline-repair" in ln:
                return OfflineRepairOutcome(kind="unknown_command", returncode=1, detail=ln)
    out_lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    detail = next((ln for ln in err_lines if ln.startswith("panicked at")), None)
    if detail is None:
        detail = (err_lines or out_lines or [""])[-1]
    return OfflineRepairOutcome(kind="other_error", returncode=returncode, detail=detail)
