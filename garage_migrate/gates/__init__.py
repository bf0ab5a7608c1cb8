"""Sync gates: wait until every node's background work is done before a disruptive step.

A :class:`Gate` reads per-node queues (:class:`NodeQueues`) from a source, applies a
predicate (default :func:`synced`), and needs ``consecutive`` passing observations in a row
before its ``deadline``. It never proceeds silently: a gate that times out, sees persistent
errored blocks or cannot read a node returns a :class:`GateOutcome` with
``decision_needed`` and ``choices == ("wait_more", "proceed_anyway", "abort")``.

Sources (:mod:`.sources`): :class:`PrometheusSource` (0.8 metrics), :class:`StatsSource`
(``garage stats`` per node; the only queue source on 0.7.3), :class:`WorkerListSource`
(``garage worker list``, 0.8), combined by :func:`auto_source` according to the version.

Absent information is ``None`` and never passes: a 0.7.3 node exports no queue series, so
Prometheus alone can never declare it synced.

Logs go to the ``garage_migrate.gates`` logger, prefixed with ``[<node>]``.
"""

from .clock import Clock, FakeClock, SystemClock
from .gate import Gate
from .model import (
    CHOICES,
    REQUIRED_TABLES,
    WORKERS_UNKNOWN,
    FrozenMap,
    GateOutcome,
    GateRound,
    GateStatus,
    NodeQueues,
    Predicate,
    synced,
)
from .sources import (
    QUEUE_METRICS,
    CombinedSource,
    PromClient,
    PrometheusSource,
    QueueSource,
    RoutedSource,
    StatsSource,
    WorkerListSource,
    auto_source,
    blocking_workers,
    queues_from_prometheus,
    version_family,
)

__all__ = [
    "CHOICES",
    "QUEUE_METRICS",
    "REQUIRED_TABLES",
    "WORKERS_UNKNOWN",
    "Clock",
    "CombinedSource",
    "FakeClock",
    "FrozenMap",
    "Gate",
    "GateOutcome",
    "GateRound",
    "GateStatus",
    "NodeQueues",
    "Predicate",
    "PromClient",
    "PrometheusSource",
    "QueueSource",
    "RoutedSource",
    "StatsSource",
    "SystemClock",
    "WorkerListSource",
    "auto_source",
    "blocking_workers",
    "queues_from_prometheus",
    "synced",
    "version_family",
]
