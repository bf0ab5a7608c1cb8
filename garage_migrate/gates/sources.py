"""Where a gate reads per-node queues: Prometheus, ``garage stats``, ``garage worker list``.

Every source implements :class:`QueueSource`: ``await source.observe(nodes)`` returns one
:class:`~garage_migrate.gates.model.NodeQueues` per requested node. A source never raises
because one node failed; that node comes back ``reachable=False`` (or with unknown fields)
and a ``detail`` saying why. Which source to trust depends on the version (ref 4.3, 11):

- 0.7.x exports no queue metrics (its instruments are bound to the no-op provider), so only
  ``garage stats``, run on each live node separately (``stats -a`` fails while a node is down);
- 0.8.x exports them; Prometheus is read first and ``stats`` fills in any node whose series
  are absent, and ``worker list`` tells whether repair workers are done and syncs are idle.

:func:`auto_source` applies that policy.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from ..commands import NodeContext, RemoteCommand, garage
from ..errors import CommandError, TransportError
from ..facts import (
    REPAIR_WORKER_NAMES,
    GarageVersion,
    ParseError,
    WorkerList,
    parse_stats,
    parse_worker_list,
)
from ..nodelog import node_log as _node_log
from .model import WORKERS_UNKNOWN, NodeQueues, unobserved

if TYPE_CHECKING:
    from ..inventory import Inventory
    from ..ssh import NodeShell, SshPool

__all__ = [
    "QUEUE_METRICS",
    "CombinedSource",
    "PromClient",
    "PrometheusSource",
    "QueueSource",
    "RoutedSource",
    "StatsSource",
    "WorkerListSource",
    "auto_source",
    "blocking_workers",
    "queues_from_prometheus",
    "version_family",
]

logger = logging.getLogger("garage_migrate.gates")

#: The gauges a gate reads (names as exported by 0.8, without a ``_total`` suffix, ref 4.2).
QUEUE_METRICS = {
    "merkle_todo": "table_merkle_updater_todo_queue_length",
    "gc_todo": "table_gc_todo_queue_length",
    "resync_queue": "block_resync_queue_length",
    "resync_errors": "block_resync_errored_blocks",
}

#: Seconds a CLI read (``stats``, ``worker list``) may take before the node counts as unreachable.
DEFAULT_CLI_TIMEOUT = 30.0


def node_log(node: str) -> logging.LoggerAdapter:
    """The gates logger with ``[<node>]`` in front of each line and ``extra={"node": ...}``."""
    return _node_log(logger, node)


@runtime_checkable
class QueueSource(Protocol):
    """Anything a gate can read queues from."""

    name: str

    async def observe(self, nodes: Sequence[str]) -> Mapping[str, NodeQueues]:
        """Observe ``nodes`` now.

        Returns:
            One :class:`NodeQueues` per node of ``nodes`` (a node it cannot read comes back
            ``reachable=False``; it is not left out and does not raise).
        """
        ...


# ---------------------------------------------------------------------------------- Prometheus


class PromClient(Protocol):
    """The part of :class:`prometheus_api_client.PrometheusConnect` a source uses."""

    def custom_query(self, query: str) -> list[dict[str, Any]]:
        """Run an instant query; ``[{"metric": {...}, "value": [ts, "str"]}, ...]``."""
        ...


def _promql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _instance_host(instance: str | None) -> str | None:
    if not instance:
        return None
    if instance.startswith("["):  # [::1]:3903
        end = instance.find("]")
        return instance[1:end] if end > 0 else None
    return instance.rsplit(":", 1)[0] if instance.count(":") == 1 else instance


def _sample_value(series: Mapping[str, Any]) -> float | None:
    try:
        return float(series["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _count(value: float | None) -> int | None:
    if value is None or value != value or value in (float("inf"), float("-inf")) or value < 0:
        return None
    return int(value) if float(value).is_integer() else None


def queues_from_prometheus(nodes: Sequence[str], series: Iterable[Mapping[str, Any]],
                           stamps: Iterable[Mapping[str, Any]] = (), *,
                           hosts: Mapping[str, str] | None = None) -> dict[str, NodeQueues]:
    """Turn instant-query results into per-node observations (pure; the heart of the source).

    A series belongs to a node by its ``node`` label when it has one, else by the host part of
    its ``instance`` label, which must equal the node's host (``hosts[node]``, or the node
    name when no host is given). A node is observed only if exactly one ``up`` series is
    ``1``; each queue field is ``None`` when its series is absent (never 0), ambiguous or not
    a count.

    Args:
        nodes: the expected nodes.
        series: result of ``{__name__=~"up|<queue gauges>", job="..."}``.
        stamps: result of ``timestamp(up{job="..."})``: when each target was last scraped.
        hosts: node name to host, for series without a ``node`` label.

    Returns:
        One :class:`NodeQueues` per node, source ``prometheus``.
    """
    wanted = set(nodes)
    by_host: dict[str, str | None] = {}
    for n in nodes:
        h = (hosts or {}).get(n, n)
        # two nodes behind one host cannot be told apart by instance: neither gets its series
        by_host[h] = None if h in by_host else n

    def owner(metric: Mapping[str, str]) -> str | None:
        if "node" in metric:
            return metric["node"] if metric["node"] in wanted else None
        return by_host.get(_instance_host(metric.get("instance")) or "")

    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for s in series:
        metric = s.get("metric", {})
        n = owner(metric)
        if n is not None:
            grouped.setdefault((n, metric.get("__name__", "")), []).append(s)
    scraped: dict[str, list[float | None]] = {}
    for s in stamps:
        n = owner(s.get("metric", {}))
        if n is not None:
            scraped.setdefault(n, []).append(_sample_value(s))

    out: dict[str, NodeQueues] = {}
    for n in nodes:
        up = grouped.get((n, "up"), [])
        if not up:
            out[n] = unobserved(n, "prometheus", "no `up` series: not a scrape target of this job, "
                                                 "or its series went stale")
            continue
        if len(up) > 1:
            out[n] = unobserved(n, "prometheus", f"{len(up)} `up` series match this node; cannot tell which")
            continue
        if _sample_value(up[0]) != 1.0:
            out[n] = unobserved(n, "prometheus", "up == 0: the last scrape of /metrics failed")
            continue
        notes: list[str] = []
        values: dict[str, Any] = {}
        for field, metric_name in QUEUE_METRICS.items():
            found = grouped.get((n, metric_name), [])
            if not found:
                values[field] = None
                notes.append(f"{metric_name} absent")
            elif field in ("merkle_todo", "gc_todo"):
                per_table: dict[str, int] = {}
                bad = None
                for s in found:
                    table = s.get("metric", {}).get("table_name")
                    value = _count(_sample_value(s))
                    if table is None or table in per_table or value is None:
                        bad = f"{metric_name} has an unusable series {dict(s.get('metric', {}))!r}"
                        break
                    per_table[table] = value
                values[field] = None if bad else per_table
                if bad:
                    notes.append(bad)
            elif len(found) > 1:
                values[field] = None
                notes.append(f"{metric_name} has {len(found)} series")
            else:
                values[field] = _count(_sample_value(found[0]))
                if values[field] is None:
                    notes.append(f"{metric_name} is not a count: {found[0].get('value')!r}")
        if len(notes) == len(QUEUE_METRICS):
            notes = ["no queue series (0.7.x does not export them)"]
        ts = scraped.get(n, [])
        out[n] = NodeQueues(node=n, reachable=True, source="prometheus", detail="; ".join(notes),
                            observed_at=ts[0] if len(ts) == 1 else None, **values)
    return out


class PrometheusSource:
    """Queues from Prometheus (prometheus-api-client, called in a thread: it is synchronous).

    Each observation runs two instant queries: the ``up`` and queue gauges of the job in one
    selector (one evaluation, so they agree), and ``timestamp(up)`` to know which scrape the
    values come from; the gate counts a repeated scrape only once.

    Args:
        url: Prometheus base URL.
        job: the scrape job of the Garage nodes.
        timeout: seconds per HTTP request; required, a request without one can hang forever.
        headers: HTTP headers, e.g. ``{"Authorization": "Bearer ..."}`` (kept out of ``repr``).
        hosts: node name to host, to match series that have no ``node`` label by ``instance``.
        client: a ready client (anything with ``custom_query``); built per observation from
            the other arguments when ``None``.
        retries: HTTP retries per request (prometheus-api-client retries 3 times with 1 s
            backoff by default, which would stretch a poll far past ``timeout``).

    Raises:
        ValueError: ``timeout`` is not a positive number.
    """

    name = "prometheus"

    def __init__(self, url: str, job: str = "garage", timeout: float = 10.0,
                 headers: Mapping[str, str] | None = None, *, hosts: Mapping[str, str] | None = None,
                 client: PromClient | None = None, retries: int = 1) -> None:
        if timeout is None or not timeout > 0:
            raise ValueError(f"PrometheusSource needs a positive timeout, got {timeout!r}")
        self.url = url.rstrip("/")
        self.job = job
        self.timeout = float(timeout)
        self._headers = dict(headers) if headers else None
        self.hosts = dict(hosts or {})
        self._client = client
        self.retries = retries

    @classmethod
    def from_inventory(cls, inventory: Inventory, **kwargs: Any) -> PrometheusSource:
        """The inventory's Prometheus (URL, job, timeout, bearer token) with its node hosts.

        Args:
            inventory: the loaded inventory.
            **kwargs: constructor arguments that override the inventory's.

        Raises:
            ValueError: the inventory configures no Prometheus.
            InventoryError: its bearer-token variable is configured but unset.
        """
        p = inventory.prometheus
        if p is None:
            raise ValueError("the inventory has no prometheus section")
        token = p.bearer_token()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        hosts = {n.name: n.host for n in inventory.resolved_nodes()}
        args: dict[str, Any] = {"url": p.url, "job": p.job, "timeout": p.timeout, "headers": headers, "hosts": hosts}
        return cls(**{**args, **kwargs})

    def __repr__(self) -> str:
        return f"PrometheusSource(url={self.url!r}, job={self.job!r}, timeout={self.timeout:g})"

    @property
    def selector(self) -> str:
        """The PromQL selector of ``up`` and the queue gauges of the job."""
        names = "|".join(("up", *QUEUE_METRICS.values()))
        return f'{{__name__=~"{names}",job={_promql_string(self.job)}}}'

    @property
    def stamp_query(self) -> str:
        """The PromQL query of each target's last scrape time."""
        return f"timestamp(up{{job={_promql_string(self.job)}}})"

    def _query(self) -> tuple[list, list]:
        if self._client is not None:
            return self._client.custom_query(self.selector), self._client.custom_query(self.stamp_query)
        retry = Retry(total=self.retries, backoff_factor=0.2, status_forcelist=(502, 503, 504))
        # a fresh session per observation: a requests session is not shared across threads,
        # and observations of several gates may run in several at once
        with requests.Session() as session:
            pc = PrometheusConnect(self.url, headers=self._headers, retry=retry, timeout=self.timeout,
                                   session=session)
            return pc.custom_query(self.selector), pc.custom_query(self.stamp_query)

    async def observe(self, nodes: Sequence[str]) -> dict[str, NodeQueues]:
        """See :meth:`QueueSource.observe`. A failed query leaves every node unobserved."""
        try:
            series, stamps = await asyncio.to_thread(self._query)
        except (PrometheusApiClientException, requests.RequestException, ValueError, KeyError, TypeError) as exc:
            # requests' timeouts and connection errors are RequestException; a body that is
            # not the API's JSON shape is ValueError/KeyError/TypeError
            detail = f"prometheus query failed: {type(exc).__name__}: {exc}"
            for n in nodes:
                node_log(n).warning("%s", detail)
            return {n: unobserved(n, self.name, detail) for n in nodes}
        out = queues_from_prometheus(nodes, series, stamps, hosts=self.hosts)
        for n, q in out.items():
            node_log(n).debug("prometheus: reachable=%s merkle=%s resync=%s errors=%s gc=%s %s", q.reachable,
                              q.merkle_todo and dict(q.merkle_todo), q.resync_queue, q.resync_errors,
                              q.gc_todo and dict(q.gc_todo), q.detail)
        return out


# ---------------------------------------------------------------------------------- CLI sources


class _CliSource:
    """Runs one Garage command on each node separately and concurrently."""

    name = "cli"

    def __init__(self, shells: Mapping[str, NodeShell], contexts: Mapping[str, NodeContext], *,
                 timeout: float = DEFAULT_CLI_TIMEOUT) -> None:
        if not timeout > 0:
            raise ValueError(f"{type(self).__name__} needs a positive timeout, got {timeout!r}")
        self.shells = dict(shells)
        self.contexts = dict(contexts)
        self.timeout = float(timeout)

    @classmethod
    def from_inventory(cls, inventory: Inventory, pool: SshPool, nodes: Iterable[str] | None = None,
                       **kwargs: Any) -> Self:
        """A source over ``pool`` for ``nodes`` (default: every inventory node).

        Args:
            inventory: the loaded inventory (command contexts).
            pool: the SSH pool (shells).
            nodes: node names; default every node of the inventory.
            **kwargs: further constructor arguments (``timeout``, ``expect_repairs`` ...).
        """
        resolved = inventory.resolved_nodes()
        names = list(nodes) if nodes is not None else [n.name for n in resolved]
        ctx = {n.name: n.ctx for n in resolved if n.name in names}
        return cls({n: pool.shell(n) for n in names}, ctx, **kwargs)

    def command(self, node: str) -> RemoteCommand:
        """The command run on ``node``.

        Raises:
            KeyError: no context for ``node``.
        """
        raise NotImplementedError

    def _parse(self, node: str, stdout: str) -> NodeQueues:
        raise NotImplementedError

    async def observe(self, nodes: Sequence[str]) -> dict[str, NodeQueues]:
        """See :meth:`QueueSource.observe`."""
        results = await asyncio.gather(*(self._one(n) for n in nodes))
        return dict(zip(nodes, results))

    async def _one(self, node: str) -> NodeQueues:
        log = node_log(node)
        shell, ctx = self.shells.get(node), self.contexts.get(node)
        if shell is None or ctx is None:
            return unobserved(node, self.name, f"no SSH shell or command context for {node}")
        cmd = self.command(node)
        try:
            res = await shell.run(cmd)
        except (TransportError, CommandError) as exc:
            # CommandError: the daemon did not answer the CLI (down, or another version);
            # CommandTimeout is one too. Either way this node cannot be read now.
            log.info("%s: cannot read: %s", self.name, exc.message)
            return unobserved(node, self.name, exc.message)
        try:
            q = self._parse(node, res.stdout)
        except ParseError as exc:
            log.warning("%s: output does not parse: %s", self.name, exc)
            return NodeQueues(node=node, reachable=True, source=self.name,
                              detail=f"cannot parse `{' '.join(cmd.argv[3:])}`: {exc}")
        log.debug("%s: merkle=%s resync=%s errors=%s workers=%s", self.name,
                  q.merkle_todo and dict(q.merkle_todo), q.resync_queue, q.resync_errors, q.workers_busy)
        return q


class StatsSource(_CliSource):
    """Queues from ``garage stats`` run on each node (never ``stats -a``: on 0.7.3 and 0.8.0 it
    fails as a whole while any layout node is down, ref 2.10).

    Args:
        shells: node name to its shell.
        contexts: node name to its command context (binary and config paths, sudo).
        timeout: seconds the command may run on a node.
    """

    name = "stats"

    def command(self, node: str) -> RemoteCommand:
        """``garage stats`` for ``node`` (local node only, no ``-a``)."""
        return garage(self.contexts[node], "stats", timeout=self.timeout)

    def _parse(self, node: str, stdout: str) -> NodeQueues:
        st = parse_stats(stdout)
        return NodeQueues(
            node=node, reachable=True, source=self.name,
            merkle_todo={t.name: t.merkle_todo for t in st.tables},
            gc_todo={t.name: t.gc_todo for t in st.tables},
            resync_queue=st.resync_queue, resync_errors=st.resync_errors)


def _state(w) -> str:
    return "Busy*" if w.state == "Throttled" else w.state


def blocking_workers(wl: WorkerList, expect_repairs: Iterable[str] = ()) -> tuple[str, ...]:
    """The workers that keep a node from being done (ref 3.2-3.4, 11; late 1.1).

    Blocking: a one-shot repair worker (``Block repair worker``, ``Version repair worker``,
    ``Block refs repair worker``) that is not ``Done``; a name of ``expect_repairs`` that is
    not listed yet (a just-launched repair); a ``<table> sync`` that is not idle with an empty
    to-do list and no pending error. Not blocking: the scrub worker (it starts on its own and
    runs for days), resync workers (``Busy*`` is their normal tranquilized state; the resync
    queue is checked instead), Merkle/GC/queue workers (their queues are read elsewhere).

    Args:
        wl: the parsed worker list.
        expect_repairs: repair worker names that must be listed.

    Returns:
        Descriptions such as ``"object sync (Busy, queue 143)"``; ``()`` when nothing blocks.
    """
    out: list[str] = []
    for name in expect_repairs:
        if wl.by_name(name) is None:
            out.append(f"{name} (not started)")
    for w in wl.workers:
        if w.name in REPAIR_WORKER_NAMES and w.state != "Done":
            out.append(f"{w.name} ({_state(w)}" + (f", {w.progress} done" if w.progress else "") + ")")
    tables = list(dict.fromkeys(w.name[: -len(" sync")] for w in wl.workers if w.name.endswith(" sync")))
    if not tables:
        out.append("no <table> sync worker listed")
    for t in tables:
        if not wl.sync_idle(t):
            w = wl.by_name(f"{t} sync")
            bits = [_state(w)]
            if w.queue:
                bits.append(f"queue {w.queue}")
            if w.consecutive_errors:
                bits.append(f"{w.consecutive_errors} consecutive errors")
            out.append(f"{w.name} ({', '.join(bits)})")
    return tuple(out)


class WorkerListSource(_CliSource):
    """Worker state from ``garage worker list`` (0.8.x only; 0.7.3 has no ``worker`` command).

    Fills only ``workers_busy`` (see :func:`blocking_workers`); the queue fields stay unknown,
    so combine it with a queue source (:class:`CombinedSource`).

    Args:
        shells: node name to its shell.
        contexts: node name to its command context.
        expect_repairs: repair worker names that must be listed (the repairs just launched).
        timeout: seconds the command may run on a node.
    """

    name = "worker list"

    def __init__(self, shells: Mapping[str, NodeShell], contexts: Mapping[str, NodeContext], *,
                 expect_repairs: Iterable[str] = (), timeout: float = DEFAULT_CLI_TIMEOUT) -> None:
        super().__init__(shells, contexts, timeout=timeout)
        self.expect_repairs = tuple(expect_repairs)
        unknown = set(self.expect_repairs) - set(REPAIR_WORKER_NAMES)
        if unknown:
            raise ValueError(f"not repair worker names: {sorted(unknown)}; known: {REPAIR_WORKER_NAMES}")

    def command(self, node: str) -> RemoteCommand:
        """``garage worker list`` for ``node``."""
        return garage(self.contexts[node], "worker", "list", timeout=self.timeout)

    def _parse(self, node: str, stdout: str) -> NodeQueues:
        wl = parse_worker_list(stdout)
        return NodeQueues(node=node, reachable=True, source=self.name,
                          workers_busy=blocking_workers(wl, self.expect_repairs))


# ---------------------------------------------------------------------------------- combining


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _stalest(a: float | None, b: float | None) -> float | None:
    """The stamp of a reading made of two parts: as fresh as its stalest part."""
    return a if b is None else b if a is None else min(a, b)


class CombinedSource:
    """Queues from a primary source, a fallback for nodes it cannot fully read, plus workers.

    For each node: the ``queues`` observation is used when it is complete (reachable, resync
    queue, errored blocks and every required Merkle table known); otherwise the ``fallback``
    is asked for that node, and its observation is used if it could read the node. When a
    ``workers`` source is given, its ``workers_busy`` is merged in; a node whose worker list
    cannot be read is unreachable, and one whose list does not parse is blocked with
    :data:`~garage_migrate.gates.model.WORKERS_UNKNOWN`.

    Args:
        queues: the primary queue source (usually :class:`PrometheusSource`).
        fallback: read for the nodes ``queues`` left incomplete (usually :class:`StatsSource`).
        workers: a worker source (usually :class:`WorkerListSource`).
    """

    def __init__(self, queues: QueueSource, fallback: QueueSource | None = None,
                 workers: QueueSource | None = None) -> None:
        self.queues = queues
        self.fallback = fallback
        self.workers = workers
        self.name = "+".join(s.name for s in (queues, fallback, workers) if s is not None)

    def __repr__(self) -> str:
        return f"CombinedSource(queues={self.queues!r}, fallback={self.fallback!r}, workers={self.workers!r})"

    async def observe(self, nodes: Sequence[str]) -> dict[str, NodeQueues]:
        """See :meth:`QueueSource.observe`."""
        if self.workers is not None:
            q_obs, w_obs = await asyncio.gather(self.queues.observe(nodes), self.workers.observe(nodes))
        else:
            q_obs, w_obs = await self.queues.observe(nodes), {}

        def got(obs: Mapping[str, NodeQueues], n: str, src: QueueSource) -> NodeQueues:
            return obs.get(n) or unobserved(n, src.name, f"{src.name} returned nothing for this node")

        chosen = {n: got(q_obs, n, self.queues) for n in nodes}
        need = [n for n in nodes if not chosen[n].complete]
        if need and self.fallback is not None:
            f_obs = await self.fallback.observe(need)
            for n in need:
                q, f = chosen[n], got(f_obs, n, self.fallback)
                why = f"{q.source}: {q.detail or 'incomplete'}"
                if f.reachable:
                    node_log(n).info("%s incomplete (%s); using %s", q.source, q.detail or "incomplete", f.source)
                    chosen[n] = replace(f, detail=_join(why, f.detail))
                else:
                    chosen[n] = replace(f, detail=_join(why, f"{f.source}: {f.detail}"))
        if self.workers is None:
            return chosen
        out = {}
        for n in nodes:
            q, w = chosen[n], got(w_obs, n, self.workers)
            busy = w.workers_busy if w.reachable else None
            if w.reachable and busy is None:
                busy = (WORKERS_UNKNOWN,)
            out[n] = NodeQueues(
                node=n, reachable=q.reachable and w.reachable, source=f"{q.source}+{w.source}",
                merkle_todo=q.merkle_todo, gc_todo=q.gc_todo, resync_queue=q.resync_queue,
                resync_errors=q.resync_errors, workers_busy=busy, observed_at=_stalest(q.observed_at, w.observed_at),
                detail=_join(q.detail, f"{w.source}: {w.detail}" if w.detail else ""))
        return out


class RoutedSource:
    """Each node read by its own source (a cluster caught between two versions).

    Args:
        routes: node name to the source that reads it; nodes sharing a source are read in one
            call to it.
    """

    def __init__(self, routes: Mapping[str, QueueSource]) -> None:
        self.routes = dict(routes)
        self.name = "routed(" + ", ".join(dict.fromkeys(s.name for s in self.routes.values())) + ")"

    async def observe(self, nodes: Sequence[str]) -> dict[str, NodeQueues]:
        """See :meth:`QueueSource.observe`."""
        groups: dict[int, tuple[QueueSource, list[str]]] = {}
        for n in nodes:
            src = self.routes.get(n)
            if src is not None:
                groups.setdefault(id(src), (src, []))[1].append(n)
        results = await asyncio.gather(*(src.observe(ns) for src, ns in groups.values()))
        merged: dict[str, NodeQueues] = {}
        for r in results:
            merged.update(r)
        return {n: merged.get(n) or unobserved(n, self.name, "no source configured for this node") for n in nodes}


VersionLike = str | GarageVersion | tuple[int, int, int]


def version_family(version: VersionLike) -> tuple[int, int]:
    """``(0, 7)`` or ``(0, 8)`` from ``"0.8.7"``, ``"v0.7.3"``, a :class:`GarageVersion` ...

    Raises:
        ValueError: the version is unknown or outside 0.7.x and 0.8.x.
    """
    vt: tuple[int, ...] | None
    if isinstance(version, GarageVersion):
        vt = version.version_tuple
    elif isinstance(version, tuple):
        vt = version
    else:
        m = re.search(r"(\d+)\.(\d+)\.(\d+)", version)
        vt = tuple(int(x) for x in m.groups()) if m else None
    if vt is None or tuple(vt[:2]) not in ((0, 7), (0, 8)):
        raise ValueError(f"no sync-gate policy for Garage version {version!r} (only 0.7.x and 0.8.x)")
    return int(vt[0]), int(vt[1])


def auto_source(versions: Mapping[str, VersionLike] | VersionLike, prometheus: PrometheusSource | None,
                shells: Mapping[str, NodeShell], contexts: Mapping[str, NodeContext], *,
                expect_repairs: Iterable[str] = (), timeout: float = DEFAULT_CLI_TIMEOUT,
                cli_per_second: float | None = None) -> QueueSource:
    """The source policy of ref 4.3 and 11, per node version.

    - 0.7.x: :class:`StatsSource` only (no queue metrics; Prometheus would only show absent
      series, which never pass but say nothing).
    - 0.8.x: Prometheus (when given) with ``stats`` as fallback for any node whose series are
      absent, plus :class:`WorkerListSource`; without Prometheus, ``stats`` plus workers.
    - Mixed: a :class:`RoutedSource` applying the above per node.

    Args:
        versions: node name to its running version, or one version for every node of
            ``contexts``.
        prometheus: the Prometheus source, or ``None``.
        shells: node name to shell.
        contexts: node name to command context.
        expect_repairs: repair worker names that must be listed on 0.8 nodes.
        timeout: per-command timeout of the CLI sources.
        cli_per_second: read ``stats`` (0.7) and ``worker list`` (0.8) on at most this many
            nodes per second across the cluster (:class:`~garage_migrate.gates.paced.PacedSource`);
            ``None``: every node at every look.

    Raises:
        ValueError: a version outside 0.7.x/0.8.x.
    """
    per_node = dict(versions) if isinstance(versions, Mapping) else {n: versions for n in contexts}
    families = {n: version_family(v) for n, v in per_node.items()}
    from .paced import PacedSource  # noqa: PLC0415 - paced imports this module

    def paced(src: QueueSource) -> QueueSource:
        return src if cli_per_second is None else PacedSource(src, cli_per_second)

    stats = StatsSource(shells, contexts, timeout=timeout)
    primary07 = paced(stats)
    v08 = CombinedSource(
        prometheus if prometheus is not None else primary07,
        fallback=stats if prometheus is not None else None,  # only the nodes whose series are absent
        workers=paced(WorkerListSource(shells, contexts, expect_repairs=expect_repairs, timeout=timeout)))
    kinds = set(families.values())
    if kinds == {(0, 7)}:
        return primary07
    if kinds == {(0, 8)}:
        return v08
    return RoutedSource({n: primary07 if f == (0, 7) else v08 for n, f in families.items()})
