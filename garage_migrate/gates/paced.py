"""Per-node CLI reads at a rate that does not grow with the cluster (issue 13, gates that cost
little per node).

A gate looks every ``interval`` seconds. On 0.8 the queue figures of every node come from one
Prometheus query, but ``garage worker list`` (the repair and sync workers, and on 0.8.7 the
insert queues) and, on 0.7.3, ``garage stats`` are one remote command per node per look: 96
nodes polled every second is 96 process starts a second on the cluster, for figures that
change over seconds to minutes.

:class:`PacedSource` wraps such a per-node source and reads at most ``per_second`` nodes per
second across the cluster, those that most need it first: nodes never read, then nodes whose
last reading blocked (they are the ones expected to change), then the stalest. The other
nodes keep their last reading, stamped (``observed_at``) with the time it was made, so the
gate, which counts a pass only when every node's stamp moved since the last pass it counted
(:class:`~garage_migrate.gates.Gate`), counts one pass per full sweep: ``consecutive`` passes
still mean ``consecutive`` fresh readings of every node. The price is latency: a sweep of N
nodes takes ``N / per_second`` seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from .model import NodeQueues
from .sources import QueueSource

__all__ = ["PacedSource"]


class PacedSource:
    """At most ``per_second`` node reads per second through ``inner`` (see the module).

    Args:
        inner: a per-node source (``garage worker list``, ``garage stats``).
        per_second: node reads per second across the cluster (at least one node per look).
        wall: the time the stamps are in; Unix time, as Prometheus stamps its samples, so
            that :class:`~garage_migrate.gates.CombinedSource` can compare the two.
    """

    def __init__(self, inner: QueueSource, per_second: float, *, wall: Callable[[], float] = time.time) -> None:
        if not per_second > 0:
            raise ValueError(f"per_second must be > 0, got {per_second}")
        self.inner = inner
        self.per_second = per_second
        self.wall = wall
        self.name = inner.name
        self.cache: dict[str, NodeQueues] = {}
        self.reads: dict[str, int] = {}  # node -> times read (for the benchmarks and tests)
        self._last: float | None = None

    def __repr__(self) -> str:
        return f"PacedSource({self.inner!r}, per_second={self.per_second:g})"

    def _due(self, nodes: Sequence[str], k: int) -> list[str]:
        def rank(n: str):
            q = self.cache.get(n)
            if q is None:
                return (0, 0.0, n)
            merkle = any(v > 0 for v in (q.merkle_todo or {}).values())
            blocked = not q.reachable or bool(q.workers_busy) or bool(q.resync_queue) or bool(q.resync_errors) or merkle
            return (1 if blocked else 2, q.observed_at or 0.0, n)
        return sorted(nodes, key=rank)[:k]

    async def observe(self, nodes: Sequence[str]) -> dict[str, NodeQueues]:
        """See :meth:`~garage_migrate.gates.QueueSource.observe`: reads the due nodes, returns
        every node's latest reading (a node not read yet: unknown figures, never a pass)."""
        now = self.wall()
        since = 1.0 if self._last is None else max(0.0, now - self._last)
        self._last = now
        k = max(1, math.floor(self.per_second * since))
        due = self._due(nodes, k)
        got = await self.inner.observe(due)
        for n in due:
            q = got.get(n)
            if q is not None:
                self.cache[n] = q if q.observed_at is not None else replace(q, observed_at=now)
                self.reads[n] = self.reads.get(n, 0) + 1
        return {n: self.cache.get(n) or NodeQueues(node=n, reachable=True, source=self.name,
                                                   detail="not read yet (paced reads)")
                for n in nodes}
