"""What the post-migration watch records: one :class:`Snapshot` of the cluster.

The baseline is the snapshot taken before the first disruptive step (kept in the ledger,
``LedgerDoc.baseline``); every watch observation is another snapshot, compared with it by
:mod:`garage_migrate.watch.compare`. A value that could not be read is ``None``: absent is
never zero (an absent rate is not "no traffic", an unread queue is not "empty").

No import of the ledger here: the ledger's model imports this one.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: The request/error counter pairs a snapshot reads per node (names as Garage exports them,
#: ref 4.3: no ``_total`` suffix; 0.7.3 exports only ``api_*``/``web_*``, which is all of these).
RATE_METRICS: dict[str, str] = {
    "s3_requests": "api_s3_request_counter",
    "s3_errors": "api_s3_error_counter",
    "web_requests": "web_request_counter",
    "web_errors": "web_error_counter",
    "admin_requests": "api_admin_request_counter",
    "admin_errors": "api_admin_error_counter",
}
#: ``api name -> (requests key, errors key)`` of :data:`RATE_METRICS`.
APIS: dict[str, tuple[str, str]] = {"s3": ("s3_requests", "s3_errors"), "web": ("web_requests", "web_errors"),
                                    "admin": ("admin_requests", "admin_errors")}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeSnapshot(_Model):
    """One node at one moment.

    Attributes:
        up: the node answered (``garage stats`` over SSH, or its Prometheus target is up).
        version: the version its daemon reported, when known.
        rates: per second, over the snapshot's window, for each key of :data:`RATE_METRICS`
            (``None``: the series is absent, e.g. a counter never incremented since the start).
        resync_queue: blocks queued for resync.
        resync_errors: blocks whose last resync failed (errored blocks).
        merkle_todo: the Merkle updater's queues, summed over tables.
        object_items: items of the node's object table (``stats -d``).
    """

    up: bool
    version: str | None = None
    rates: dict[str, float | None] = {}
    resync_queue: int | None = None
    resync_errors: int | None = None
    merkle_todo: int | None = None
    object_items: int | None = None
    detail: str = ""


class BucketSnapshot(_Model):
    """One bucket at one moment: ``bucket info``'s counters (``None`` on 0.7, which has none)."""

    alias: str
    objects: int | None = None
    bytes: int | None = None


class Snapshot(_Model):
    """The cluster at one moment (see the module docstring).

    Attributes:
        at: Unix time of the snapshot.
        window_s: the window of the rates, seconds.
        copies: how many nodes store each object entry (from the replication mode).
        nodes: per inventory node.
        buckets: per bucket id.
        implied_objects: the object count the object tables imply, cluster-wide: the sum of
            ``object_items`` over the nodes divided by ``copies`` (as the counters check bounds
            it). 0.7 keeps no per-bucket counter, so this is what its tables say.
        notes: what could not be read, and why.
    """

    at: float
    window_s: float = Field(gt=0)
    copies: int = Field(1, ge=1)
    nodes: dict[str, NodeSnapshot] = {}
    buckets: dict[str, BucketSnapshot] = {}
    implied_objects: int | None = None
    notes: list[str] = []
