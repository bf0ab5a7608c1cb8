"""Typed, immutable facts parsed from Garage CLI output, the admin API and ``/metrics``.

Every model is a frozen dataclass with slots whose collection fields are tuples, so a fact is
hashable and cannot be changed after parsing. Absent information is ``None``, never a made-up
``0``: an orchestrator gate must be able to tell "the queue is empty" from "nobody told us".

Parsers raise :class:`~garage_migrate.errors.ParseError` (code ``PARSE_FAILED``, also a
``ValueError``), part of the project's one error tree in :mod:`garage_migrate.errors`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from .. import errors as _errors

__all__ = [
    "BucketInfo",
    "BucketKeyAlias",
    "BucketKeyPermission",
    "BucketList",
    "BucketListEntry",
    "BucketQuotas",
    "ClusterStats",
    "ClusterStatus",
    "GarageConfig",
    "GarageVersion",
    "Layout",
    "LayoutRole",
    "NodeId",
    "NodeStats",
    "NodeStatsError",
    "OfflineRepairOutcome",
    "ParseError",
    "QueueMetrics",
    "Sample",
    "SpaceEstimate",
    "StagedRoleChange",
    "StatusNode",
    "StorageNode",
    "TableQueue",
    "Worker",
    "WorkerList",
    "WorkerVariable",
    "REPAIR_WORKER_NAMES",
    "to_jsonable",
]


ParseError = _errors.ParseError  # one error tree: defined in garage_migrate.errors


def _rebuild_parse_error(
    reason: str, command: str, line_no: int | None, line: str | None
) -> ParseError:
    return ParseError(reason, command=command, line_no=line_no, line=line)


_FROZEN = {"frozen": True, "slots": True}

# ---------------------------------------------------------------------------------------------
# Versions and identity
# ---------------------------------------------------------------------------------------------


@dataclass(**_FROZEN)
class GarageVersion:
    """A Garage build's version, from ``--version``, ``stats`` or ``/v0/status``.

    Attributes:
        version: ``"0.8.0"``-style semantic version, best effort for non-release builds
            (``git:v0.8.0-3-gabc`` gives ``"0.8.0"``); ``None`` when no version is visible
            (``git:unknown``-style strings).
        features: the ``[features: ...]`` list in print order; empty for 0.7.3, which prints none.
        raw: the version string exactly as printed (``v0.8.0``, ``git:v0.8.0-3-gabc``, ...),
            without the ``garage`` / ``Garage version:`` prefix or the feature list.
        official: ``True`` only for a CI release build, whose string is the bare tag ``vX.Y.Z``.
    """

    version: str | None
    features: tuple[str, ...]
    raw: str
    official: bool

    @property
    def version_tuple(self) -> tuple[int, int, int] | None:
        """``(0, 8, 0)``, or ``None`` when the version is unknown."""
        if self.version is None:
            return None
        major, minor, patch = self.version.split(".")
        return int(major), int(minor), int(patch)


@dataclass(**_FROZEN)
class NodeId:
    """Output of ``garage node id -q``.

    Attributes:
        id64: the full public key, 64 lowercase hex characters.
        id16: its first 16 characters, the form every table prints.
        public_addr: the part after ``@`` (``rpc_public_addr``), or ``None`` when not configured.
    """

    id64: str
    id16: str
    public_addr: str | None


# ---------------------------------------------------------------------------------------------
# status / layout
# ---------------------------------------------------------------------------------------------

Role = Literal["assigned", "none", "pending"]


@dataclass(**_FROZEN)
class StatusNode:
    """One row of ``garage status``.

    Attributes:
        id16: node ID (16 hex).
        hostname: the reported hostname; ``None`` for ``?`` (nothing received since the daemon
            started) and ``??`` (node not known to the peering layer at all).
        address: ``ip:port``; ``None`` for ``??``.
        tags: role tags; empty for untagged nodes and for rows without a role.
        zone: role zone; ``None`` for rows without a role.
        capacity: role capacity; ``None`` for gateways and rows without a role.
        gateway: the role has no capacity (printed ``gateway``).
        role: ``assigned``; ``none`` (``NO ROLE ASSIGNED``); ``pending`` (a role is staged).
        known: ``False`` for ``??`` rows, i.e. layout nodes the daemon never heard of.
        last_seen: the raw "Last seen" cell (failed nodes only), e.g. ``2 minutes ago``.
        last_seen_secs: ``last_seen`` in seconds, a lower bound because timeago keeps one unit;
            ``None`` for ``never seen`` and for healthy rows, which have no such column.
        data_avail: the raw DataAvail cell (0.8.2+ healthy rows): ``1.2 TB (61.7%)``, ``N/A``
            or ``?``; ``None`` when the column is absent.
    """

    id16: str
    hostname: str | None
    address: str | None
    tags: tuple[str, ...]
    zone: str | None
    capacity: int | None
    gateway: bool
    role: Role
    known: bool = True
    last_seen: str | None = None
    last_seen_secs: float | None = None
    data_avail: str | None = None


@dataclass(**_FROZEN)
class StagedRoleChange:
    """One row of ``==== STAGED ROLE CHANGES ====``.

    Attributes:
        id16: node ID.
        removed: the row reads ``REMOVED``; the role fields are then empty/``None``.
        tags: staged tags.
        zone: staged zone.
        capacity: staged capacity, ``None`` for a gateway or a removal.
        gateway: the staged role is a gateway.
    """

    id16: str
    removed: bool
    tags: tuple[str, ...] = ()
    zone: str | None = None
    capacity: int | None = None
    gateway: bool = False


@dataclass(**_FROZEN)
class ClusterStatus:
    """Output of ``garage status``.

    Attributes:
        healthy: rows of ``==== HEALTHY NODES ====`` in print order.
        failed: rows of ``==== FAILED NODES ====``; empty when that section is absent.
        staged_changes: rows of the trailing staged-changes section, if any.
    """

    healthy: tuple[StatusNode, ...]
    failed: tuple[StatusNode, ...]
    staged_changes: tuple[StagedRoleChange, ...] = ()

    @property
    def nodes(self) -> tuple[StatusNode, ...]:
        """Healthy then failed rows."""
        return self.healthy + self.failed

    def find(self, id_prefix: str) -> StatusNode | None:
        """Return the row whose ID starts with ``id_prefix`` (an ID16 or ID64 works).

        Raises:
            KeyError: more than one row matches.
        """
        prefix = id_prefix[:16]
        hits = [n for n in self.nodes if n.id16.startswith(prefix)]
        if len(hits) > 1:
            raise KeyError(f"ambiguous node id prefix {id_prefix!r}")
        return hits[0] if hits else None


@dataclass(**_FROZEN)
class LayoutRole:
    """One row of a ``layout show`` table.

    Attributes:
        id16: node ID.
        tags: tags (printed comma-joined without brackets; may be empty).
        zone: zone name.
        capacity: capacity, ``None`` for a gateway.
        gateway: the role has no capacity.
    """

    id16: str
    tags: tuple[str, ...]
    zone: str
    capacity: int | None
    gateway: bool


@dataclass(**_FROZEN)
class Layout:
    """Output of ``garage layout show``.

    Attributes:
        version: ``Current cluster layout version``.
        roles: the current roles, sorted by node ID as Garage prints them; empty when no node
            has a role.
        staged: a ``==== STAGED ROLE CHANGES ====`` section is present.
        staged_changes: its rows.
        new_roles: the ``NEW CLUSTER LAYOUT AFTER APPLYING CHANGES`` table, ``None`` when absent.
        apply_version: ``N`` from ``garage layout apply --version N`` when printed.
        trailer: the partition statistics lines printed after the new layout, kept verbatim
            because their exact format is not in the references.
    """

    version: int
    roles: tuple[LayoutRole, ...]
    staged: bool
    staged_changes: tuple[StagedRoleChange, ...] = ()
    new_roles: tuple[LayoutRole, ...] | None = None
    apply_version: int | None = None
    trailer: tuple[str, ...] = ()

    def role(self, id_prefix: str) -> LayoutRole | None:
        """Return the current role of the node whose ID starts with ``id_prefix``."""
        prefix = id_prefix[:16]
        for r in self.roles:
            if r.id16.startswith(prefix):
                return r
        return None


# ---------------------------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------------------------


@dataclass(**_FROZEN)
class TableQueue:
    """Per-table counters from ``garage stats``.

    Attributes:
        name: table name (``bucket_v2``, ``key``, ``object``, ``version``, ``block_ref``).
        items: number of items; ``None`` when not printed (plain layout without ``-d``) or
            printed as ``NC`` (sled without ``-d``).
        merkle_items: Merkle tree size, same rules as ``items``.
        merkle_todo: Merkle updater todo queue length (always printed).
        gc_todo: GC todo queue length (always printed; may stay above 0 for 24 h).
    """

    name: str
    items: int | None
    merkle_items: int | None
    merkle_todo: int
    gc_todo: int


@dataclass(**_FROZEN)
class StorageNode:
    """One row of the 0.8.2+ ``Storage nodes:`` table.

    Attributes:
        id16: node ID.
        hostname: reported hostname, ``None`` for ``?``.
        zone: zone, ``None`` for ``?``.
        capacity: capacity, ``None`` for ``?``/``gateway``.
        partitions: the ``Part.`` column (partition slots held).
        data_avail: raw ``<avail>/<total> (<pct>%)`` cell, ``None`` for ``?``.
        meta_avail: same for the metadata disk.
    """

    id16: str
    hostname: str | None
    zone: str | None
    capacity: int | None
    partitions: int
    data_avail: str | None
    meta_avail: str | None


@dataclass(**_FROZEN)
class SpaceEstimate:
    """The ``Estimated available storage space cluster-wide`` block.

    Attributes:
        data: raw size string, e.g. ``1.2 TB``.
        metadata: raw size string.
        lower_bound_only: printed with ``< `` because some node did not report its disks.
    """

    data: str
    metadata: str
    lower_bound_only: bool


StatsLayout = Literal["plain", "table"]


@dataclass(**_FROZEN)
class NodeStats:
    """Output of ``garage stats`` (one node).

    Attributes:
        version: the ``Garage version:`` line.
        rust_version: ``Rust compiler version:`` (0.8.2+), else ``None``.
        db_engine: ``Database engine:`` (0.8), ``None`` on 0.7.3 which prints none.
        tables: per-table counters in print order.
        rc_entries: ``number of RC entries``; ``None`` when not printed or ``NC``.
        resync_queue: ``resync queue length``.
        resync_errors: ``blocks with resync errors``.
        ring: ``(id16, partitions)`` pairs of ``Ring nodes & partition count`` (0.7.3-0.8.1),
            ``None`` when the section is absent.
        layout: ``plain`` (0.7.3/0.8.0 ``Table stats for X`` blocks) or ``table`` (0.8.1+).
        storage_nodes: the ``Storage nodes:`` table (0.8.2+ without ``-a``), else ``None``.
        estimate: the cluster-wide space estimate, when printed.
    """

    version: GarageVersion
    db_engine: str | None
    tables: tuple[TableQueue, ...]
    rc_entries: int | None
    resync_queue: int
    resync_errors: int
    ring: tuple[tuple[str, int], ...] | None
    layout: StatsLayout
    rust_version: str | None = None
    storage_nodes: tuple[StorageNode, ...] | None = None
    estimate: SpaceEstimate | None = None

    def table(self, name: str) -> TableQueue:
        """Return the counters of table ``name``.

        Raises:
            KeyError: the table is not listed.
        """
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def merkle_todo_total(self) -> int:
        """Sum of the Merkle todo queues of all listed tables."""
        return sum(t.merkle_todo for t in self.tables)


@dataclass(**_FROZEN)
class NodeStatsError:
    """A node section of ``stats -a`` that carries an error instead of statistics.

    Attributes:
        kind: ``network`` (``Network error:``, 0.8.1+), ``remote`` (``Remote error:``),
            ``bad_answer`` (``Bad answer:``) or ``error`` (``Error:``, 0.7.3/0.8.0).
        message: the text after the prefix (continuation lines joined with ``\\n``).
    """

    kind: Literal["network", "remote", "bad_answer", "error"]
    message: str


@dataclass(**_FROZEN)
class ClusterStats:
    """Output of ``garage stats -a``.

    Attributes:
        nodes: ``(id16, NodeStats | NodeStatsError)`` in print (layout) order.
        storage_nodes: rows of the trailing ``Cluster statistics:`` block (0.8.2+), else ``None``.
        estimate: its space estimate, when printed.
    """

    nodes: tuple[tuple[str, NodeStats | NodeStatsError], ...]
    storage_nodes: tuple[StorageNode, ...] | None = None
    estimate: SpaceEstimate | None = None

    @property
    def unreachable(self) -> tuple[str, ...]:
        """IDs of the nodes whose section is an error."""
        return tuple(i for i, s in self.nodes if isinstance(s, NodeStatsError))


# ---------------------------------------------------------------------------------------------
# workers
# ---------------------------------------------------------------------------------------------

WorkerState = Literal["Busy", "Throttled", "Idle", "Done"]

REPAIR_WORKER_NAMES = ("Block repair worker", "Version repair worker", "Block refs repair worker")


@dataclass(**_FROZEN)
class Worker:
    """One worker of ``garage worker list``.

    Attributes:
        tid: task id.
        state: ``Busy``, ``Throttled`` (0.8.0 ``Thr:x.xxx``, 0.8.1+ ``Busy*``), ``Idle``, ``Done``.
        name: worker name, e.g. ``object sync``.
        tranquility: ``Tranq`` column, or ``tranquility = N`` from a 0.8.0 info line.
        progress: ``Done`` column / 0.8.0 ``x.xx% done`` or ``N items done``.
        queue: ``Queue`` column / 0.8.0 ``N partitions remaining``, ``N items in queue``,
            ``N blocks in queue``; ``None`` when not shown. On 0.8.0 a sync, Merkle, GC or resync
            worker with an empty queue shows no info at all, hence ``None`` there too.
        errors: total errors (0 for ``-``).
        consecutive_errors: consecutive errors (0 for ``-``).
        last_error_ago: timeago of the last error, e.g. ``5 seconds ago``; ``None`` when unknown.
        last_error: the last error message (0.8.0 info line), when printed.
        throttled_for: seconds of 0.8.0 ``Thr:1.500``; ``None`` otherwise.
        info: the 0.8.0 info lines verbatim (without indentation), empty for the table format.
    """

    tid: int
    state: WorkerState
    name: str
    tranquility: int | None = None
    progress: str | None = None
    queue: int | None = None
    errors: int = 0
    consecutive_errors: int = 0
    last_error_ago: str | None = None
    last_error: str | None = None
    throttled_for: float | None = None
    info: tuple[str, ...] = ()


@dataclass(**_FROZEN)
class WorkerList:
    """Output of ``garage worker list``.

    Attributes:
        workers: workers in print order (busy first, then idle, then done).
        format: ``0.8.0`` (headerless with info lines) or ``table`` (0.8.1+, header ``TID ...``).
    """

    workers: tuple[Worker, ...]
    format: Literal["0.8.0", "table"]

    def by_name(self, name: str) -> Worker | None:
        """Return the worker called ``name`` (names are unique per daemon), or ``None``."""
        for w in self.workers:
            if w.name == name:
                return w
        return None

    def repairs_done(self, expected: tuple[str, ...] = ()) -> bool:
        """Tell whether every one-shot repair worker listed is ``Done``.

        Done workers stay listed until the daemon restarts, so this is the completion signal
        for ``repair blocks|versions|block_refs``. A repair that has not spawned its worker
        yet is invisible, so pass the names you launched in ``expected``: they must be listed.

        Args:
            expected: repair worker names that must be present (e.g. ``("Block repair worker",)``).

        Returns:
            ``True`` when each ``expected`` name is listed and no repair worker is unfinished.
        """
        for name in expected:
            if self.by_name(name) is None:
                return False
        return all(w.state == "Done" for w in self.workers if w.name in REPAIR_WORKER_NAMES)

    def sync_idle(self, table: str) -> bool:
        """Tell whether ``<table> sync`` is idle with nothing left and no pending error.

        On 0.8.0 an idle sync with an empty to-do list prints no info line, so an absent queue
        counts as empty there; the table format always prints the number. A sync whose last
        partition failed shows ``consecutive_errors > 0`` (Throttled) until its next ``work()``
        finds the to-do list empty, at most ~57 s later (the runner resets the count on any
        ``Ok``); it does not count as idle meanwhile. The failed partition is not retried before
        the next full sync.

        Args:
            table: table name, e.g. ``object``.

        Returns:
            ``False`` also when no such worker is listed.
        """
        w = self.by_name(f"{table} sync")
        if w is None or w.state != "Idle" or w.consecutive_errors:
            return False
        if w.queue is None:
            return self.format == "0.8.0"
        return w.queue == 0


class WorkerVariable(NamedTuple):
    """One row of ``garage worker get`` (0.8.2+): ``(id16, variable, value)``."""

    id16: str
    variable: str
    value: str


# ---------------------------------------------------------------------------------------------
# buckets
# ---------------------------------------------------------------------------------------------


@dataclass(**_FROZEN)
class BucketListEntry:
    """One row of ``garage bucket list``.

    Attributes:
        id64: bucket ID (64 hex).
        global_aliases: global aliases, possibly none.
        local_aliases: ``<key id>:<alias>`` when exactly one local alias is shown.
        local_alias_count: number of local aliases (``[N local aliases]`` gives N, none gives 0).
    """

    id64: str
    global_aliases: tuple[str, ...]
    local_aliases: tuple[str, ...]
    local_alias_count: int


@dataclass(**_FROZEN)
class BucketList:
    """Output of ``garage bucket list``."""

    buckets: tuple[BucketListEntry, ...]

    def by_alias(self, alias: str) -> BucketListEntry | None:
        """Return the bucket with global alias ``alias``, or ``None``."""
        for b in self.buckets:
            if alias in b.global_aliases:
                return b
        return None


@dataclass(**_FROZEN)
class BucketQuotas:
    """The ``Quotas:`` section of ``bucket info`` (0.8).

    Attributes:
        max_size: approximate bytes (display is rounded); ``None`` when unset.
        max_size_display: the exact displayed text, e.g. ``10.0 GiB (10.7 GB)``.
        max_objects: maximum number of objects, ``None`` when unset.
    """

    max_size: int | None = None
    max_size_display: str | None = None
    max_objects: int | None = None


@dataclass(**_FROZEN)
class BucketKeyAlias:
    """A ``Key-specific aliases`` row: ``key_id (key_name)  alias``."""

    key_id: str
    key_name: str
    alias: str


@dataclass(**_FROZEN)
class BucketKeyPermission:
    """An ``Authorized keys`` row.

    Attributes:
        key_id: access key ID.
        key_name: key name (may be empty or ``<deleted>``).
        read: ``R`` flag.
        write: ``W`` flag.
        owner: ``O`` flag.
    """

    key_id: str
    key_name: str
    read: bool
    write: bool
    owner: bool


@dataclass(**_FROZEN)
class BucketInfo:
    """Output of ``garage bucket info <bucket>``.

    Attributes:
        id64: bucket ID.
        size_bytes: approximate byte count from ``Size:`` (display is rounded to one decimal);
            ``None`` on 0.7.3 which has no counters. A negative counter wraps to about 2**64.
        size_display: the exact ``Size:`` text, e.g. ``1.2 GiB (1.3 GB)``.
        objects: ``Objects:`` (may be negative), ``None`` on 0.7.3.
        unfinished_uploads: ``Unfinished multipart uploads:``, ``None`` on 0.7.3.
        website: ``Website access:``.
        global_aliases: ``Global aliases:`` entries.
        quotas: the ``Quotas:`` section, ``None`` when absent (no quota set, or 0.7.3).
        local_aliases: ``Key-specific aliases:`` rows.
        keys: ``Authorized keys:`` rows.
    """

    id64: str
    size_bytes: int | None
    objects: int | None
    unfinished_uploads: int | None
    website: bool
    global_aliases: tuple[str, ...]
    quotas: BucketQuotas | None
    size_display: str | None = None
    local_aliases: tuple[BucketKeyAlias, ...] = ()
    keys: tuple[BucketKeyPermission, ...] = ()

    @property
    def size_wrapped_negative(self) -> bool:
        """The byte counter is negative and was printed cast to u64 (a size of >= 8 EiB)."""
        return self.size_bytes is not None and self.size_bytes >= 2**63

    @property
    def counters_suspicious(self) -> bool:
        """Some counter is negative or wrapped, a sign the counters were never initialised."""
        return (
            self.size_wrapped_negative
            or (self.objects is not None and self.objects < 0)
            or (self.unfinished_uploads is not None and self.unfinished_uploads < 0)
        )


# ---------------------------------------------------------------------------------------------
# offline-repair
# ---------------------------------------------------------------------------------------------


@dataclass(**_FROZEN)
class OfflineRepairOutcome:
    """How one ``garage offline-repair`` run ended.

    Attributes:
        kind: ``ok``; ``lock_held`` (the daemon still holds the sled lock: stop it and retry);
            ``missing_yes``; ``unknown_command`` (0.7.3 has no offline-repair); ``other_error``.
        returncode: as reported by the runner (negative = killed by that signal).
        detail: the line that decided the kind (the lock message, the clap error, ...), or the
            last non-empty stderr line for ``other_error``.
    """

    kind: Literal["ok", "lock_held", "missing_yes", "unknown_command", "other_error"]
    returncode: int
    detail: str


# ---------------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------------


@dataclass(**_FROZEN)
class Sample:
    """One exposition sample.

    Attributes:
        name: sample name as written (``rpc_duration_bucket``, ...).
        labels: ``(key, value)`` pairs in written order, values unescaped.
        value: the value; ``+Inf``/``-Inf``/``NaN`` become the float specials.
    """

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> str | None:
        """Return the value of label ``key``, or ``None``."""
        for k, v in self.labels:
            if k == key:
                return v
        return None


@dataclass(**_FROZEN)
class QueueMetrics:
    """The queue gauges a sync gate reads from ``/metrics``.

    Every field is ``None`` when its series is absent from the scrape; 0.7.3 exports none of
    them, so all are ``None`` there. An absent series must never be read as an empty queue.

    Attributes:
        merkle_todo: ``(table_name, value)`` of ``table_merkle_updater_todo_queue_length``.
        gc_todo: ``(table_name, value)`` of ``table_gc_todo_queue_length``.
        resync_queue: ``block_resync_queue_length``.
        resync_errors: ``block_resync_errored_blocks``.
    """

    merkle_todo: tuple[tuple[str, int], ...] | None
    gc_todo: tuple[tuple[str, int], ...] | None
    resync_queue: int | None
    resync_errors: int | None

    def merkle_todo_for(self, table: str) -> int | None:
        """Merkle todo of ``table``, ``None`` when that series is absent."""
        return dict(self.merkle_todo or ()).get(table)

    def gc_todo_for(self, table: str) -> int | None:
        """GC todo of ``table``, ``None`` when that series is absent."""
        return dict(self.gc_todo or ()).get(table)


# ---------------------------------------------------------------------------------------------
# garage.toml
# ---------------------------------------------------------------------------------------------


@dataclass(**_FROZEN)
class GarageConfig:
    """The parts of ``garage.toml`` the migration reads.

    Secrets themselves are not kept, only whether they are configured; tokens the orchestrator
    needs (to scrape or call the admin API) are kept but hidden from ``repr``.

    Attributes:
        metadata_dir: ``metadata_dir``.
        data_dir: ``data_dir``.
        db_engine: normalised engine (``sled``, ``lmdb`` or ``sqlite``); ``sled`` when unset.
        replication_mode: ``replication_mode`` as written.
        rpc_bind_addr: ``rpc_bind_addr``.
        rpc_public_addr: ``rpc_public_addr`` or ``None``.
        rpc_secret_present: ``rpc_secret`` or ``rpc_secret_file`` is set.
        rpc_secret_file: ``rpc_secret_file`` (0.8.2+), or ``None``.
        s3_api_bind_addr: ``[s3_api] api_bind_addr``.
        s3_region: ``[s3_api] s3_region``.
        web_bind_addr: ``[s3_web] bind_addr``.
        admin_api_bind_addr: ``[admin] api_bind_addr``.
        metrics_token: ``[admin] metrics_token``.
        metrics_token_file: ``[admin] metrics_token_file`` (0.8.2+).
        admin_token: ``[admin] admin_token``.
        admin_token_file: ``[admin] admin_token_file`` (0.8.2+).
        deprecated_keys: keys present that 0.8 ignores without a word (0.7 Consul/Kubernetes
            discovery keys, ``block_manager_background_tranquility``), in file order.
    """

    metadata_dir: str
    data_dir: str
    db_engine: str
    replication_mode: str
    rpc_bind_addr: str
    rpc_public_addr: str | None
    rpc_secret_present: bool
    rpc_secret_file: str | None = None
    s3_api_bind_addr: str | None = None
    s3_region: str | None = None
    web_bind_addr: str | None = None
    admin_api_bind_addr: str | None = None
    metrics_token: str | None = field(default=None, repr=False)
    metrics_token_file: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    admin_token_file: str | None = None
    deprecated_keys: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """Turn a fact into plain JSON data (dicts, lists, str, int, float, bool, None).

    Dataclasses and named tuples become dicts keyed by field name (including ``repr=False``
    fields), other tuples become lists. Used by the fixture tests and for logging facts.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {k: to_jsonable(v) for k, v in zip(value._fields, value)}
    if isinstance(value, (tuple, list)):
        return [to_jsonable(v) for v in value]
    return value
