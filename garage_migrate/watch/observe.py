"""Take a :class:`~garage_migrate.watch.model.Snapshot` of a cluster (the only I/O of the watch).

Per node: the request and error rates from Prometheus (``rate(<counter>[window])``, one query
per counter), reachability, queues and errored blocks from the gates' source (Prometheus on
0.8, ``garage stats`` on 0.7, :func:`garage_migrate.gates.auto_source`), and the object
table's items from ``garage stats -d``; per bucket, ``bucket info``'s counters, read through
the first node that answers. A read that fails leaves its values ``None`` and says why in
``notes``: the snapshot itself never fails because one read did.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from .. import commands as C
from ..errors import GarageMigrateError
from ..facts import ParseError, parse_bucket_info, parse_bucket_list, parse_stats
from ..gates.sources import _instance_host, _promql_string
from ..steps import Runtime
from .model import RATE_METRICS, BucketSnapshot, NodeSnapshot, Snapshot

#: the rates' window of the baseline (before the migration, the node's usual traffic)
BASELINE_WINDOW_S = 300.0
#: copies of each object entry, by replication mode (as the counters check reads it)
COPIES = {"3": 3, "3-degraded": 3, "3-dangerous": 3, "2": 2, "2-dangerous": 2}


def rate_window_s(every_s: float) -> float:
    """The rates' window for observations ``every_s`` apart: the interval itself, kept between
    10 s (a few scrapes of a fast Prometheus) and 5 min (what a dashboard shows)."""
    return float(min(300.0, max(10.0, every_s)))


def rates_query(metric: str, job: str, window_s: float) -> str:
    """The PromQL of one counter's per-second rate, per target."""
    return f"sum by (instance, node) (rate({metric}{{job={_promql_string(job)}}}[{round(window_s)}s]))"


def rates_from_results(nodes: Iterable[str], results: Mapping[str, list[dict[str, Any]]],
                       hosts: Mapping[str, str]) -> dict[str, dict[str, float | None]]:
    """Per node and key of :data:`RATE_METRICS`, the rate in ``results`` (``None`` when absent).

    A series belongs to a node by its ``node`` label, else by its ``instance``'s host.
    """
    by_host = {hosts.get(n, n): n for n in nodes}
    out: dict[str, dict[str, float | None]] = {n: {k: None for k in RATE_METRICS} for n in nodes}
    for key, series in results.items():
        for s in series:
            metric = s.get("metric", {})
            n = metric.get("node") if metric.get("node") in out else by_host.get(_instance_host(metric.get("instance")) or "")
            try:
                value = float(s["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if n is not None and not math.isnan(value):  # NaN: no sample in the window
                out[n][key] = (out[n][key] or 0.0) + value
    return out


def _query_rates(rt: Runtime, window_s: float) -> dict[str, list]:
    ps = rt.inv.prometheus
    token = ps.bearer_token()
    retry = Retry(total=1, backoff_factor=0.2, status_forcelist=(502, 503, 504))
    with requests.Session() as session:
        pc = PrometheusConnect(ps.url, headers={"Authorization": f"Bearer {token}"} if token else None,
                               retry=retry, timeout=ps.timeout, session=session)
        return {k: pc.custom_query(rates_query(m, ps.job, window_s)) for k, m in RATE_METRICS.items()}


async def _rates(rt: Runtime, names: list[str], window_s: float, notes: list[str]):
    if rt.inv.prometheus is None:
        notes.append("no Prometheus in the inventory: request and error rates unknown")
        return {n: {} for n in names}
    try:
        results = await asyncio.to_thread(_query_rates, rt, window_s)
    except (PrometheusApiClientException, requests.RequestException, ValueError, KeyError, TypeError) as exc:
        notes.append(f"Prometheus query failed: {type(exc).__name__}: {exc}")
        return {n: {} for n in names}
    return rates_from_results(names, results, {n.name: n.host for n in rt.facts.nodes})


async def _stats_items(rt: Runtime, node: str) -> tuple[int | None, str | None]:
    try:
        res = await rt.observe(node, C.garage(rt.node(node).ctx, "stats", "-d"))
        st = parse_stats(res.stdout)
        return st.table("object").items, st.version.version
    except (GarageMigrateError, ParseError, KeyError, OSError) as exc:
        return None, f"stats -d: {type(exc).__name__}: {exc}"[:300]


async def _buckets(rt: Runtime, via: str, notes: list[str]) -> dict[str, BucketSnapshot]:
    ctx = rt.node(via).ctx
    try:
        listing = parse_bucket_list((await rt.observe(via, C.garage(ctx, "bucket", "list"))).stdout)
        aliases = {b.id64: b.global_aliases[0] if b.global_aliases else b.id64 for b in listing.buckets}
        infos = await asyncio.gather(*(rt.observe(via, C.garage(ctx, "bucket", "info", a)) for a in aliases.values()))
        out = {}
        for (bid, alias), res in zip(aliases.items(), infos):
            info = parse_bucket_info(res.stdout)
            out[bid] = BucketSnapshot(alias=alias, objects=info.objects, bytes=info.size_bytes)
        return out
    except (GarageMigrateError, ParseError, OSError) as exc:
        notes.append(f"buckets not read through {via}: {type(exc).__name__}: {exc}"[:300])
        return {}


async def take_snapshot(rt: Runtime, window_s: float) -> Snapshot:
    """One :class:`Snapshot` of the cluster of ``rt`` (see the module docstring)."""
    from ..runtime import (  # the gates' policy of which source to trust
        _gate_source,
        _live_versions,
    )

    at = time.time()
    names = [n.name for n in rt.facts.nodes]
    notes: list[str] = []
    async def queues_now():
        try:
            return await _gate_source(rt, await _live_versions(rt)).observe(names)
        except GarageMigrateError as exc:
            notes.append(f"queues not read: {type(exc).__name__}: {exc}"[:300])
            return {}

    # independent reads, concurrently (a snapshot is taken twice per migration and per observation)
    rates, queues, *counted = await asyncio.gather(_rates(rt, names, window_s, notes), queues_now(),
                                                   *(_stats_items(rt, n) for n in names))
    items = dict(zip(names, counted))
    nodes = {}
    for n in names:
        q = queues.get(n)
        count, version_or_error = items[n]
        up = bool(q and q.reachable)
        nodes[n] = NodeSnapshot(
            up=up, version=version_or_error if count is not None else None, rates=rates.get(n, {}),
            resync_queue=q.resync_queue if q else None, resync_errors=q.resync_errors if q else None,
            merkle_todo=sum(q.merkle_todo.values()) if q and q.merkle_todo is not None else None,
            object_items=count, detail=(q.detail if q else "not observed") if not up else "")
        if count is None and version_or_error:
            notes.append(f"{n}: {version_or_error}")
    copies = COPIES.get(rt.facts.replication_mode, 1)
    counts = [s.object_items for s in nodes.values()]
    implied = -(-sum(counts) // copies) if counts and all(c is not None for c in counts) else None
    via = next((n for n in names if nodes[n].up), None)
    buckets = await _buckets(rt, via, notes) if via else {}
    if via is None:
        notes.append("no node answered: buckets not read")
    return Snapshot(at=at, window_s=window_s, copies=copies, nodes=nodes, buckets=buckets,
                    implied_objects=implied, notes=notes)
