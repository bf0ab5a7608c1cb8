"""Unit tests of the sync gates: pure, on a FakeClock, with scripted sources.

Scripted sources implement our own :class:`QueueSource` protocol. The Prometheus source is fed
the API's real JSON shape, built from the recorded ``/metrics`` fixtures of each version; the
CLI sources get the recorded ``stats`` / ``worker list`` outputs through a fake
:class:`NodeShell` (our protocol too). Nothing here sleeps for time to pass.
"""

from __future__ import annotations

import json
import logging
import pickle
import threading
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from garage_migrate import commands as C
from garage_migrate.commands import NodeContext, RemoteCommand
from garage_migrate.errors import CommandError, ErrorCode, GateError, TransportError
from garage_migrate.facts import parse_exposition, parse_worker_list
from garage_migrate.gates import (
    CHOICES,
    QUEUE_METRICS,
    REQUIRED_TABLES,
    WORKERS_UNKNOWN,
    CombinedSource,
    FakeClock,
    FrozenMap,
    Gate,
    GateOutcome,
    NodeQueues,
    PrometheusSource,
    QueueSource,
    RoutedSource,
    StatsSource,
    SystemClock,
    WorkerListSource,
    auto_source,
    blocking_workers,
    queues_from_prometheus,
    synced,
    version_family,
)
from garage_migrate.ssh import Result
from tests.conftest import run

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "garage"
NODES = ("node-a1", "node-b1", "node-c1")


def fixture(version: str, name: str) -> str:
    return (FIXTURES / version / f"{name}.txt").read_text()


def ok(node: str, **kw) -> NodeQueues:
    """A node that is synced unless ``kw`` says otherwise."""
    base = dict(reachable=True, source="script", merkle_todo={t: 0 for t in REQUIRED_TABLES},
                gc_todo={t: 0 for t in REQUIRED_TABLES}, resync_queue=0, resync_errors=0)
    base.update(kw)
    return NodeQueues(node=node, **base)


Round = Mapping[str, NodeQueues]


class ScriptedSource:
    """Plays back rounds of observations; the last one repeats once the script is used up.

    ``step`` advances the fake clock during each observation, as a slow source would.
    """

    name = "script"

    def __init__(self, rounds: Sequence[Round | Callable[[], Round] | Exception], clock: FakeClock | None = None,
                 step: float = 0.0) -> None:
        self.rounds = list(rounds)
        self.calls: list[tuple[str, ...]] = []
        self.clock = clock
        self.step = step

    async def observe(self, nodes):
        self.calls.append(tuple(nodes))
        item = self.rounds[min(len(self.calls), len(self.rounds)) - 1]
        if self.clock is not None and self.step:
            self.clock.advance(self.step)
        if isinstance(item, Exception):
            raise item
        return dict(item() if callable(item) else item)


def all_ok(**kw) -> Round:
    return {n: ok(n, **kw) for n in NODES}


def with_node(node: str, **kw) -> Round:
    r = all_ok()
    r[node] = ok(node, **kw)
    return r


def gate(source, clock: FakeClock, **kw) -> Gate:
    kw.setdefault("deadline", 100.0)
    kw.setdefault("consecutive", 3)
    kw.setdefault("interval", 10.0)
    return Gate(name=kw.pop("name", "test"), source=source, nodes=kw.pop("nodes", NODES), clock=clock, **kw)


# ---------------------------------------------------------------------------------- clock


def test_fake_clock_sleep_advances_instantly_and_records():
    clock = FakeClock(5.0)

    async def go():
        await clock.sleep(2.5)
        await clock.sleep(0)
        return clock.monotonic()

    assert run(go()) == 7.5
    assert clock.sleeps == [2.5, 0]
    clock.advance(1)
    assert clock.monotonic() == 8.5
    with pytest.raises(ValueError):
        run(clock.sleep(-1))
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_system_clock_is_monotonic():
    c = SystemClock()
    a = c.monotonic()
    assert c.monotonic() >= a


def test_sources_and_clocks_satisfy_their_protocols():
    assert isinstance(ScriptedSource([all_ok()]), QueueSource)
    assert isinstance(PrometheusSource("http://x:9090"), QueueSource)
    from garage_migrate.gates import Clock
    assert isinstance(FakeClock(), Clock) and isinstance(SystemClock(), Clock)


# ---------------------------------------------------------------------------------- consecutive passes


def test_passes_after_n_consecutive_passes_without_waiting_for_time():
    clock = FakeClock()
    src = ScriptedSource([all_ok()])
    out = run(gate(src, clock).run())
    assert out.status == "passed" and out.passed and not out.decision_needed
    assert out.choices == () and out.reasons == ()
    assert out.passes == 3 and out.observations == 3
    assert clock.sleeps == [10.0, 10.0]
    assert out.elapsed == 20.0
    assert src.calls == [NODES] * 3
    assert [r.streak for r in out.history] == [1, 2, 3]


def test_any_failure_resets_the_count():
    clock = FakeClock()
    busy = with_node("node-b1", resync_queue=4)
    src = ScriptedSource([all_ok(), all_ok(), busy, all_ok(), all_ok(), busy, all_ok(), all_ok(), all_ok()])
    out = run(gate(src, clock, deadline=1000).run())
    assert out.passed
    assert [r.streak for r in out.history] == [1, 2, 0, 1, 2, 0, 1, 2, 3]
    assert [r.passed for r in out.history].count(False) == 2
    assert out.history[2].blocking == ("node-b1: resync queue 4",)
    assert out.observations == 9 and out.elapsed == 80.0


def test_single_pass_gate():
    out = run(gate(ScriptedSource([all_ok()]), FakeClock(), consecutive=1).run())
    assert out.passed and out.observations == 1 and out.elapsed == 0


# ---------------------------------------------------------------------------------- deadline


def test_deadline_times_out_with_a_decision_and_a_final_look_at_or_past_the_deadline():
    clock = FakeClock()
    src = ScriptedSource([with_node("node-a1", resync_queue=12, merkle_todo={**{t: 0 for t in REQUIRED_TABLES}, "object": 3})])
    out = run(gate(src, clock, deadline=25.0).run())
    assert out.status == "timeout"
    assert out.decision_needed and out.choices == ("wait_more", "proceed_anyway", "abort") == CHOICES
    # the last sleep is not cut short: looks stay an interval apart, the last is the first
    # at or past the deadline
    assert clock.sleeps == [10.0, 10.0, 10.0]
    assert out.elapsed == 30.0 and out.observations == 4 and out.passes == 0
    assert out.reasons == ("node-a1: resync queue 12, merkle object 3",)
    assert out.last["node-a1"].resync_queue == 12


def test_slow_observations_count_against_the_deadline():
    clock = FakeClock()
    src = ScriptedSource([with_node("node-c1", resync_queue=1)], clock=clock, step=7.0)
    out = run(gate(src, clock, deadline=30.0, interval=10.0).run())
    assert out.status == "timeout"
    # observe 7 s, sleep 10, observe 7 (24), sleep 10, observe 7 (41 >= 30)
    assert out.elapsed == 41.0 and clock.sleeps == [10.0, 10.0]


def test_not_enough_passes_before_the_deadline_is_not_a_pass():
    src = ScriptedSource([with_node("node-a1", resync_queue=1), with_node("node-a1", resync_queue=1), all_ok()])
    out = run(gate(src, FakeClock(), deadline=30.0).run())
    assert out.status == "timeout" and out.passes == 2 and out.decision_needed
    assert out.reasons and "only 2 of 3 consecutive passes" in out.reasons[0]


def test_a_timed_out_gate_can_be_run_again_to_wait_more():
    import dataclasses

    clock = FakeClock()
    src = ScriptedSource([with_node("node-a1", resync_queue=1)] * 3 + [all_ok()])
    g = gate(src, clock, deadline=20.0)
    first = run(g.run())
    assert first.status == "timeout" and "wait_more" in first.choices
    second = run(dataclasses.replace(g, deadline=40.0).run())
    assert second.passed and second.observations == 3


# ---------------------------------------------------------------------------------- errored blocks


def test_persistent_errored_blocks_stop_the_gate_after_the_grace():
    clock = FakeClock()
    src = ScriptedSource([with_node("node-b1", resync_errors=2, resync_queue=2)])
    out = run(gate(src, clock, deadline=10_000, interval=60, errored_blocks_grace=420).run())
    assert out.status == "errored_blocks" and out.decision_needed
    assert out.elapsed == 420.0
    assert out.reasons == ("node-b1: resync queue 2, errored blocks 2",)
    err = out.error()
    assert isinstance(err, GateError) and err.code == ErrorCode.SYNC_GATE_ERRORS and err.node == "node-b1"


def test_errored_blocks_that_heal_on_retry_do_not_stop_the_gate():
    clock = FakeClock()
    bad = with_node("node-b1", resync_errors=1, resync_queue=1)
    src = ScriptedSource([bad, bad, bad, all_ok()])
    out = run(gate(src, clock, deadline=10_000, interval=60, errored_blocks_grace=420).run())
    assert out.passed
    assert [r.passed for r in out.history] == [False, False, False, True, True, True]


def test_errored_blocks_grace_zero_stops_at_first_sight_and_none_waits_for_the_deadline():
    bad = with_node("node-a1", resync_errors=3, resync_queue=3)
    out = run(gate(ScriptedSource([bad]), FakeClock(), errored_blocks_grace=0).run())
    assert out.status == "errored_blocks" and out.observations == 1
    out = run(gate(ScriptedSource([bad]), FakeClock(), deadline=50, errored_blocks_grace=None).run())
    assert out.status == "errored_blocks" and out.elapsed == 50


def test_errored_blocks_streak_survives_unknown_rounds_but_not_a_zero():
    clock = FakeClock()
    bad = with_node("node-a1", resync_errors=1, resync_queue=1)
    unknown = with_node("node-a1", resync_errors=None)
    clean_busy = with_node("node-a1", resync_errors=0, resync_queue=5)
    src = ScriptedSource([bad, unknown, bad, clean_busy, bad, bad, bad])
    out = run(gate(src, clock, deadline=1000, interval=10, errored_blocks_grace=20).run())
    # streak from t=0 survives the unknown round at t=10 -> stop at t=20; no wait for t=40+
    assert out.status == "errored_blocks" and out.elapsed == 20
    src = ScriptedSource([bad, clean_busy, bad, bad, bad])
    out = run(gate(src, FakeClock(), deadline=1000, interval=10, errored_blocks_grace=20).run())
    # the zero at t=10 resets: errors seen from t=20, so the stop comes at t=40
    assert out.status == "errored_blocks" and out.elapsed == 40


# ---------------------------------------------------------------------------------- unknown never passes


@pytest.mark.parametrize("change, why", [
    (dict(merkle_todo=None), "merkle todo unknown"),
    (dict(merkle_todo={"object": 0}), "merkle todo unknown for bucket_v2, key, version, block_ref"),
    (dict(merkle_todo={}), "merkle todo unknown for"),
    (dict(resync_queue=None), "resync queue unknown"),
    (dict(resync_errors=None), "errored blocks unknown"),
    (dict(reachable=False, detail="connection refused"), "unreachable (connection refused)"),
    (dict(workers_busy=(WORKERS_UNKNOWN,)), "workers busy: (worker list not readable)"),
])
def test_unknown_never_counts_as_synced(change, why):
    q = ok("node-a1", **change)
    assert any(why in r for r in synced(q))
    out = run(gate(ScriptedSource([with_node("node-a1", **change)]), FakeClock(), deadline=30,
                   unreachable_grace=None).run())
    assert not out.passed and out.decision_needed
    assert all(not r.passed for r in out.history)


def test_a_node_left_out_by_the_source_is_not_synced():
    r = all_ok()
    del r["node-c1"]
    out = run(gate(ScriptedSource([r]), FakeClock(), deadline=20, unreachable_grace=None).run())
    assert out.status == "unreachable"
    assert out.last["node-c1"].reachable is False
    assert "returned nothing" in out.reasons[0]


def test_a_source_that_fails_as_a_whole_leaves_every_node_unobserved():
    src = ScriptedSource([TransportError("pool broke"), all_ok()])
    out = run(gate(src, FakeClock()).run())
    assert out.passed
    assert out.history[0].blocking[0].startswith("node-a1: unreachable (script failed: [NODE_UNREACHABLE] pool broke")


def test_a_source_bug_is_not_swallowed():
    with pytest.raises(ZeroDivisionError):
        run(gate(ScriptedSource([ZeroDivisionError()]), FakeClock()).run())


def test_unreachable_node_stops_after_its_grace_and_says_so():
    clock = FakeClock()
    down = with_node("node-c1", reachable=False, merkle_todo=None, resync_queue=None, resync_errors=None,
                     detail="ssh: connection refused")
    out = run(gate(ScriptedSource([down]), clock, deadline=1000, unreachable_grace=30).run())
    assert out.status == "unreachable" and out.elapsed == 30 and out.decision_needed
    assert out.reasons == ("node-c1: unreachable (ssh: connection refused)",)
    assert out.error().code == ErrorCode.SYNC_GATE_TIMEOUT
    out = run(gate(ScriptedSource([down]), FakeClock(), deadline=40, unreachable_grace=None).run())
    assert out.status == "unreachable" and out.elapsed == 40


def test_a_node_back_before_the_grace_resets_it():
    down = with_node("node-c1", reachable=False)
    src = ScriptedSource([down, down, all_ok(), down, down, all_ok()])
    out = run(gate(src, FakeClock(), deadline=1000, unreachable_grace=25, consecutive=1).run())
    assert out.passed and out.observations == 3


# ---------------------------------------------------------------------------------- GC and workers never block wrongly


def test_gc_queues_are_reported_but_never_block():
    r = all_ok(gc_todo={"version": 37, "block_ref": 112})
    out = run(gate(ScriptedSource([r]), FakeClock()).run())
    assert out.passed
    assert out.last["node-a1"].gc_todo == {"version": 37, "block_ref": 112}
    assert "version 37, block_ref 112" in out.render_markdown()


def _scrub(text: str, state: str, done: str) -> str:
    old = "5    Idle   Block scrub worker            4      -        "
    assert old in text
    return text.replace(old, f"5    {state:<5}  Block scrub worker            4      {done:<9}")


@pytest.mark.parametrize("state", ["Busy", "Busy*"])
def test_scrub_busy_never_blocks(state):
    text = _scrub(fixture("0.8.7", "worker-list--after-repairs"), state, "12.34%")
    wl = parse_worker_list(text)
    scrub = wl.by_name("Block scrub worker")
    assert scrub.state in ("Busy", "Throttled") and scrub.progress == "12.34%"
    assert blocking_workers(wl) == ()


def test_throttled_resync_worker_does_not_block_but_its_queue_does():
    wl = parse_worker_list(fixture("0.8.7", "worker-list--after-repairs"))
    assert wl.by_name("Block resync worker #1").state == "Throttled"
    assert blocking_workers(wl) == ()  # the resync queue (12) is read from stats/metrics instead


def test_blocking_workers_087_syncs_and_080_repairs():
    wl = parse_worker_list(fixture("0.8.7", "worker-list"))
    assert blocking_workers(wl) == ("object sync (Busy, queue 143)",
                                    "version sync (Busy*, queue 201, 2 consecutive errors)")
    wl = parse_worker_list(fixture("0.8.0", "worker-list--after-upgrade"))
    # the first 0.8.0 start scrubs at once (ref 3.4): Busy scrub is there and must not count
    assert wl.by_name("Block scrub worker").state == "Busy"
    assert blocking_workers(wl) == ("Block refs repair worker (Busy, 40211 done)", "key sync (Busy, queue 1)")
    wl = parse_worker_list(fixture("0.8.0", "worker-list--errors"))
    assert blocking_workers(wl) == ("block_ref sync (Busy*, 3 consecutive errors)",)


def test_expected_repair_that_has_not_started_blocks():
    wl = parse_worker_list(fixture("0.8.7", "worker-list--after-repairs"))
    assert blocking_workers(wl, ("Block repair worker",)) == ()
    wl = parse_worker_list(fixture("0.8.7", "worker-list"))
    assert "Block refs repair worker (not started)" in blocking_workers(wl, ("Block refs repair worker",))
    with pytest.raises(ValueError):
        WorkerListSource({}, {}, expect_repairs=("Block scrub worker",))


# ---------------------------------------------------------------------------------- Prometheus: real shapes


def _prom_value(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return format(v, "g") if not float(v).is_integer() else str(int(v))


def api_series(exposition: str, node: str | None, instance: str, *, job: str = "garage", up: float = 1.0,
               ts: float = 1_700_000_000.0) -> list[dict]:
    """What Prometheus's /api/v1/query returns for the gate's selector, for one target whose
    /metrics body is ``exposition`` (target labels added as the lab's scrape config does)."""
    target = {"instance": instance, "job": job, **({"node": node} if node else {})}
    out = [{"metric": {"__name__": "up", **target}, "value": [ts, _prom_value(up)]}]
    if up != 1.0:
        return out  # a failed scrape leaves no series behind (staleness markers)
    for name, samples in parse_exposition(exposition).items():
        if name not in QUEUE_METRICS.values():
            continue
        for s in samples:
            out.append({"metric": {"__name__": name, **dict(s.labels), **target}, "value": [ts, _prom_value(s.value)]})
    return out


def api_stamp(node: str | None, instance: str, ts: float, job: str = "garage") -> dict:
    target = {"instance": instance, "job": job, **({"node": node} if node else {})}
    return {"metric": target, "value": [ts + 0.5, _prom_value(ts)]}


class FakePromClient:
    """Stands in for PrometheusConnect: answers the two queries with canned API results."""

    def __init__(self, series: list[dict], stamps: list[dict] = ()):  # type: ignore[assignment]
        self.series = series
        self.stamps = list(stamps)
        self.queries: list[str] = []

    def custom_query(self, query: str) -> list[dict]:
        self.queries.append(query)
        return self.stamps if query.startswith("timestamp(") else self.series


def cluster(version: str, variant: str = "metrics", **per_node) -> list[dict]:
    text = fixture(version, variant)
    out = []
    for i, n in enumerate(NODES, 1):
        out += api_series(per_node.get(n, text), n, f"10.0.0.{i}:3903")
    return out


def test_073_exposition_has_no_queue_series_and_is_never_read_as_zero():
    obs = queues_from_prometheus(NODES, cluster("0.7.3"))
    for n in NODES:
        q = obs[n]
        assert q.reachable  # up == 1: the node is there, its queues are simply not exported
        assert (q.merkle_todo, q.gc_todo, q.resync_queue, q.resync_errors) == (None, None, None, None)
        assert q.detail == "no queue series (0.7.x does not export them)"
        assert synced(q)  # blocks
    client = FakePromClient(cluster("0.7.3"))
    src = PrometheusSource("http://prom:9090", client=client)
    out = run(gate(src, FakeClock(), deadline=300, interval=15).run())
    assert out.status == "timeout" and out.decision_needed
    assert all(not r.passed for r in out.history) and out.observations == 21
    assert out.reasons[0].startswith("node-a1: resync queue unknown, errored blocks unknown, merkle todo unknown")


def test_087_exposition_is_read_exactly():
    obs = queues_from_prometheus(NODES, cluster("0.8.7"))
    q = obs["node-b1"]
    assert q.reachable and q.resync_queue == 0 and q.resync_errors == 0
    assert set(REQUIRED_TABLES) <= set(q.merkle_todo) and all(v == 0 for v in q.merkle_todo.values())
    assert q.complete and synced(q) == ()


def test_080_exposition_values_reach_the_gate():
    obs = queues_from_prometheus(NODES, cluster("0.8.0"))
    assert all(q.complete for q in obs.values())
    m = fixture("0.8.0", "metrics")
    assert "block_resync_queue_length" in m


def test_partial_exposition_leaves_the_missing_series_unknown():
    series = cluster("0.8.7", **{"node-c1": fixture("0.8.7", "metrics--partial")})
    obs = queues_from_prometheus(NODES, series)
    q = obs["node-c1"]
    assert q.merkle_todo == {"object": 0} and q.resync_queue is None and q.resync_errors is None
    assert q.gc_todo is None
    assert "block_resync_queue_length absent" in q.detail
    reasons = synced(q)
    assert "resync queue unknown" in reasons
    assert any("merkle todo unknown for bucket_v2, key, version, block_ref" in r for r in reasons)
    assert obs["node-a1"].complete


def test_nonzero_and_odd_values():
    text = fixture("0.8.7", "metrics").replace("block_resync_queue_length 0", "block_resync_queue_length 4182")
    obs = queues_from_prometheus(NODES, cluster("0.8.7", **{"node-a1": text}))
    assert obs["node-a1"].resync_queue == 4182 and synced(obs["node-a1"]) == ("resync queue 4182",)
    nan = fixture("0.8.7", "metrics").replace("block_resync_errored_blocks 0", "block_resync_errored_blocks NaN")
    obs = queues_from_prometheus(NODES, cluster("0.8.7", **{"node-a1": nan}))
    assert obs["node-a1"].resync_errors is None and "not a count" in obs["node-a1"].detail


def test_up_zero_and_missing_targets_are_unreachable():
    series = (api_series(fixture("0.8.7", "metrics"), "node-a1", "10.0.0.1:3903")
              + api_series("", "node-b1", "10.0.0.2:3903", up=0.0))
    obs = queues_from_prometheus(NODES, series)
    assert obs["node-a1"].reachable
    assert not obs["node-b1"].reachable and "up == 0" in obs["node-b1"].detail
    assert not obs["node-c1"].reachable and "no `up` series" in obs["node-c1"].detail


def test_series_map_by_instance_host_when_there_is_no_node_label():
    text = fixture("0.8.7", "metrics").replace("block_resync_queue_length 0", "block_resync_queue_length 7")
    series = (api_series(text, None, "garage-b.example:3903")
              + api_series(fixture("0.8.7", "metrics"), None, "[fd00::1]:3903"))
    hosts = {"node-a1": "fd00::1", "node-b1": "garage-b.example", "node-c1": "10.9.9.9"}
    obs = queues_from_prometheus(NODES, series, hosts=hosts)
    assert obs["node-b1"].resync_queue == 7
    assert obs["node-a1"].complete
    assert not obs["node-c1"].reachable
    # a node label wins over the instance: a series labelled for another node is not ours
    series = api_series(text, "node-x9", "garage-b.example:3903")
    assert not queues_from_prometheus(NODES, series, hosts=hosts)["node-b1"].reachable


def test_ambiguous_series_are_unknown_not_summed():
    dup = api_series(fixture("0.8.7", "metrics"), "node-a1", "10.0.0.1:3903")
    dup2 = api_series(fixture("0.8.7", "metrics"), "node-a1", "10.0.0.1:9999")
    obs = queues_from_prometheus(NODES, dup + dup2)
    assert not obs["node-a1"].reachable and "2 `up` series" in obs["node-a1"].detail
    # two nodes on one host cannot be told apart by instance
    obs = queues_from_prometheus(("a", "b"), api_series(fixture("0.8.7", "metrics"), None, "h:3903"),
                                 hosts={"a": "h", "b": "h"})
    assert not obs["a"].reachable and not obs["b"].reachable


def test_prometheus_source_queries_one_selector_and_the_scrape_times():
    client = FakePromClient(cluster("0.8.7"), [api_stamp(n, f"10.0.0.{i}:3903", 1000.0) for i, n in enumerate(NODES, 1)])
    src = PrometheusSource("http://prom:9090/", job='gar"age', client=client)
    obs = run(src.observe(NODES))
    sel, stamp = client.queries
    assert sel == ('{__name__=~"up|table_merkle_updater_todo_queue_length|table_gc_todo_queue_length|'
                   'block_resync_queue_length|block_resync_errored_blocks",job="gar\\"age"}')
    assert stamp == 'timestamp(up{job="gar\\"age"})'
    assert obs["node-a1"].observed_at == 1000.0
    with pytest.raises(ValueError):
        PrometheusSource("http://prom:9090", timeout=None)  # type: ignore[arg-type]
    assert "Bearer" not in repr(PrometheusSource("http://p:9090", headers={"Authorization": "Bearer s3cret"}))


class ScrapeScript:
    """A Prometheus client whose scrapes advance only when told to."""

    def __init__(self):
        self.ts = 1000.0
        self.series = cluster("0.8.7")

    def custom_query(self, query):
        if query.startswith("timestamp("):
            return [api_stamp(n, f"10.0.0.{i}:3903", self.ts) for i, n in enumerate(NODES, 1)]
        return self.series


def test_a_repeated_scrape_is_not_a_new_pass():
    client = ScrapeScript()
    clock = FakeClock()
    src = PrometheusSource("http://prom:9090", client=client)
    seen = []

    class Ticking:
        name = "ticking"

        async def observe(self, nodes):
            # one scrape every 2 observations; the first one may predate the gate
            if len(seen) % 2 == 0:
                client.ts += 15
            seen.append(client.ts)
            return await src.observe(nodes)

    out = run(gate(Ticking(), clock, deadline=100, interval=5).run())
    assert out.passed and out.observations == 7
    assert [r.fresh for r in out.history] == [False, False, True, False, True, False, True]
    assert [r.streak for r in out.history] == [0, 0, 1, 1, 2, 2, 3]
    assert "(not counted: no new scrape)" in out.render_markdown()


def test_a_failure_on_a_repeated_scrape_still_resets():
    stamps = iter([100.0, 100.0, 101.0, 102.0, 103.0])
    rounds = [all_ok(), with_node("node-a1", resync_queue=1), all_ok(), all_ok(), all_ok()]

    class Src:
        name = "s"
        i = 0

        async def observe(self, nodes):
            ts, r = next(stamps), rounds[self.i]
            self.i += 1
            return {n: NodeQueues(**{**q.as_dict(), "observed_at": ts}) for n, q in r.items()}

    out = run(gate(Src(), FakeClock(), deadline=100).run())
    assert [r.streak for r in out.history] == [0, 0, 1, 2, 3] and out.passed


class HalfSecondScrapes:
    """Prometheus as the lab runs it: every target scraped once a second (at .5 s), each look
    reads the last scrape and takes ``look_s``; node-a1's queue is non-empty before ``clean_at``
    (client traffic refilling it), every node is synced after."""

    name = "prometheus"

    def __init__(self, clock: FakeClock, clean_at: float, look_s: float, first_look_s: float | None = None):
        self.clock, self.clean_at, self.look_s = clock, clean_at, look_s
        self.first_look_s = look_s if first_look_s is None else first_look_s
        self.looks = 0

    async def observe(self, nodes):
        import math

        t = self.clock.monotonic()
        scrape = math.floor(t - 0.5) + 0.5  # the newest scrape a query at t sees
        self.clock.advance(self.first_look_s if self.looks == 0 else self.look_s)
        self.looks += 1
        busy = scrape < self.clean_at
        return {n: ok(n, observed_at=1000.0 + scrape,
                      merkle_todo={**{tb: 0 for tb in REQUIRED_TABLES}, "object": 1 if busy and n == "node-a1" else 0})
                for n in nodes}


def test_the_pass_that_completes_the_streak_is_not_lost_to_a_look_squeezed_in_at_the_deadline():
    """The sync-after flake (e2e minimal-downtime under traffic): the queues were clean for
    the last two scrapes before the deadline, but the gate timed out with "only 1 of 2
    consecutive passes" and every node passing its last look. It cut its last sleep to look
    exactly at the deadline, sooner than the next scrape: that look repeated the scrape of the
    first pass, was not counted, and was the last one."""
    clock = FakeClock()
    src = HalfSecondScrapes(clock, clean_at=88.0, look_s=0.3, first_look_s=1.5)
    out = run(gate(src, clock, deadline=90.0, consecutive=2, interval=1.0).run())
    # looks start at 0, 2.5, 3.8 ... 1.3 s apart; the one at 88.3 reads the 87.5 scrape (busy),
    # the one at 89.6 the 89.5 scrape (the first pass, 0.1 s before the deadline); a look at
    # 90.0 would read the 89.5 scrape again; the one at 90.9 reads the 90.5 scrape: the second
    first_pass = next(r for r in out.history if r.passed and r.fresh)
    assert first_pass.elapsed == pytest.approx(89.9) and first_pass.streak == 1
    assert out.passed, out.summary()
    assert [(r.passed, r.fresh, r.streak) for r in out.history[-3:]] == [(False, True, 0), (True, True, 1), (True, True, 2)]
    assert out.elapsed == pytest.approx(91.2)
    assert all(s == 1.0 for s in clock.sleeps)


class _PromHandler(BaseHTTPRequestHandler):
    body: bytes = b""
    status = 200
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        type(self).seen.append(self.headers.get("Authorization", ""))
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def prom_http():
    """A local HTTP server answering /api/v1/query like Prometheus (real PrometheusConnect path)."""
    _PromHandler.seen = []
    srv = HTTPServer(("127.0.0.1", 0), _PromHandler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_prometheus_source_through_the_real_client(prom_http):
    srv, url = prom_http
    _PromHandler.status = 200
    _PromHandler.body = json.dumps({"status": "success", "data": {"resultType": "vector",
                                                                  "result": cluster("0.7.3")}}).encode()
    src = PrometheusSource(url, timeout=2, headers={"Authorization": "Bearer tok"})
    obs = run(src.observe(NODES))
    assert all(q.reachable and q.resync_queue is None for q in obs.values())
    assert _PromHandler.seen == ["Bearer tok", "Bearer tok"]
    _PromHandler.status = 400
    _PromHandler.body = b'{"status":"error","error":"bad query"}'
    obs = run(src.observe(NODES))
    assert all(not q.reachable and "prometheus query failed: PrometheusApiClientException" in q.detail
               for q in obs.values())


def test_prometheus_down_leaves_nodes_unobserved():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    obs = run(PrometheusSource(f"http://127.0.0.1:{port}", timeout=1, retries=0).observe(NODES))
    assert all(not q.reachable and "ConnectionError" in q.detail for q in obs.values())


# ---------------------------------------------------------------------------------- CLI sources


class FakeShell:
    """A NodeShell that answers from recorded outputs, and records what it was asked to run."""

    def __init__(self, name: str, answers: dict[str, str | Exception]):
        self.name = name
        self.answers = answers
        self.ran: list[RemoteCommand] = []

    async def run(self, cmd: RemoteCommand, check: bool = True) -> Result:
        self.ran.append(cmd)
        key = " ".join(cmd.argv[3:])  # after <binary> -c <config>
        answer = self.answers[key]
        if isinstance(answer, Exception):
            raise answer
        return Result(stdout=answer, stderr="", exit_status=0, signal=None, returncode=0)


def contexts() -> dict[str, NodeContext]:
    return {n: NodeContext(name=n, binary_path=f"/opt/{n}/garage", config_path=f"/etc/{n}.toml") for n in NODES}


def shells(answers: dict[str, dict[str, str | Exception]]) -> dict[str, FakeShell]:
    return {n: FakeShell(n, answers[n]) for n in NODES}


def test_stats_source_runs_stats_on_each_node_separately_never_with_all_nodes():
    sh = shells({n: {"stats": fixture("0.7.3", "stats")} for n in NODES})
    ctx = contexts()
    src = StatsSource(sh, ctx, timeout=12)
    obs = run(src.observe(NODES))
    for n in NODES:
        assert sh[n].ran == [C.garage(ctx[n], "stats", timeout=12)]
        assert "-a" not in sh[n].ran[0].argv and "--all-nodes" not in sh[n].ran[0].argv
        q = obs[n]
        assert q.source == "stats" and q.reachable
        assert q.resync_queue == 4182 and q.resync_errors == 2
        assert q.merkle_todo == {"bucket_v2": 0, "key": 0, "object": 12, "version": 0, "block_ref": 3}
        assert q.gc_todo == {"bucket_v2": 0, "key": 0, "object": 0, "version": 37, "block_ref": 112}
    assert synced(obs["node-a1"]) == ("resync queue 4182", "errored blocks 2", "merkle object 12", "merkle block_ref 3")


def test_stats_source_087_gc_only_passes():
    sh = shells({n: {"stats": fixture("0.8.7", "stats")} for n in NODES})
    out = run(gate(StatsSource(sh, contexts()), FakeClock()).run())
    assert out.passed
    assert out.last["node-a1"].gc_todo == {"bucket_v2": 0, "key": 0, "object": 0, "version": 37, "block_ref": 112}


def test_stats_source_a_failing_node_is_unreachable_the_others_are_read():
    answers = {n: {"stats": fixture("0.8.0", "stats")} for n in NODES}
    answers["node-b1"] = {"stats": CommandError("node-b1: `garage stats` exited with status 1: Error: Internal error: "
                                                "Netapp error: Not connected", node="node-b1")}
    answers["node-c1"] = {"stats": TransportError("node-c1: cannot connect to 10.0.0.3:22: refused", node="node-c1")}
    obs = run(StatsSource(shells(answers), contexts()).observe(NODES))
    assert obs["node-a1"].reachable and obs["node-a1"].complete
    assert not obs["node-b1"].reachable and "Not connected" in obs["node-b1"].detail
    assert not obs["node-c1"].reachable and "refused" in obs["node-c1"].detail


def test_stats_source_unparsable_output_is_unknown_not_zero():
    answers = {n: {"stats": fixture("0.8.7", "stats")} for n in NODES}
    answers["node-a1"] = {"stats": "Garage version: v0.9.9\nsomething new\n"}
    obs = run(StatsSource(shells(answers), contexts()).observe(NODES))
    q = obs["node-a1"]
    assert q.reachable and q.resync_queue is None and q.merkle_todo is None
    assert "cannot parse `stats`" in q.detail
    assert synced(q)


def test_stats_source_without_a_shell_for_a_node():
    obs = run(StatsSource({}, contexts()).observe(("node-a1",)))
    assert not obs["node-a1"].reachable


def test_worker_list_source_runs_worker_list_and_fills_only_workers():
    sh = shells({n: {"worker list": fixture("0.8.7", "worker-list")} for n in NODES})
    ctx = contexts()
    obs = run(WorkerListSource(sh, ctx, expect_repairs=("Block repair worker",)).observe(NODES))
    assert sh["node-a1"].ran == [C.garage(ctx["node-a1"], "worker", "list", timeout=30)]
    q = obs["node-a1"]
    assert q.resync_queue is None and q.merkle_todo is None
    assert q.workers_busy == ("object sync (Busy, queue 143)", "version sync (Busy*, queue 201, 2 consecutive errors)")


# ---------------------------------------------------------------------------------- combining


def test_combined_source_falls_back_to_stats_for_absent_series_and_merges_workers():
    # node-b1's /metrics fails (up == 0), node-c1 exports no queue series
    series = (api_series(fixture("0.8.7", "metrics"), "node-a1", "10.0.0.1:3903")
              + api_series("", "node-b1", "10.0.0.2:3903", up=0.0)
              + api_series(fixture("0.7.3", "metrics"), "node-c1", "10.0.0.3:3903"))
    prom = PrometheusSource("http://prom:9090", client=FakePromClient(series))
    sh = shells({n: {"stats": fixture("0.8.7", "stats"), "worker list": fixture("0.8.7", "worker-list--after-repairs")}
                 for n in NODES})
    ctx = contexts()
    src = CombinedSource(prom, fallback=StatsSource(sh, ctx), workers=WorkerListSource(sh, ctx))
    assert src.name == "prometheus+stats+worker list"
    obs = run(src.observe(NODES))
    assert obs["node-a1"].source == "prometheus+worker list"
    assert obs["node-b1"].source == "stats+worker list" and "up == 0" in obs["node-b1"].detail
    assert obs["node-c1"].source == "stats+worker list"
    assert all(q.complete and q.workers_busy == () and synced(q) == () for q in obs.values())
    # stats ran only where Prometheus could not tell
    assert [c.argv[3:] for c in sh["node-a1"].ran] == [("worker", "list")]
    assert sorted(c.argv[3] for c in sh["node-b1"].ran) == ["stats", "worker"]


def test_combined_source_worker_list_unreadable_or_unparsable_blocks():
    answers = {n: {"stats": fixture("0.8.7", "stats"), "worker list": fixture("0.8.7", "worker-list--after-repairs")}
               for n in NODES}
    answers["node-b1"]["worker list"] = "TID  State  Name\nwhat is this\n"
    answers["node-c1"]["worker list"] = CommandError("node-c1: `garage worker list` exited with status 1", node="node-c1")
    sh, ctx = shells(answers), contexts()
    src = CombinedSource(StatsSource(sh, ctx), workers=WorkerListSource(sh, ctx))
    obs = run(src.observe(NODES))
    assert synced(obs["node-a1"]) == ()
    assert obs["node-b1"].workers_busy == (WORKERS_UNKNOWN,) and synced(obs["node-b1"])
    assert not obs["node-c1"].reachable and "worker list" in obs["node-c1"].detail


def test_combined_source_both_sources_fail():
    prom = PrometheusSource("http://prom:9090", client=FakePromClient([]))
    answers = {n: {"stats": TransportError(f"{n}: refused", node=n)} for n in NODES}
    sh = shells(answers)
    obs = run(CombinedSource(prom, fallback=StatsSource(sh, contexts())).observe(NODES))
    q = obs["node-a1"]
    assert not q.reachable
    assert "prometheus: no `up` series" in q.detail and "stats: node-a1: refused" in q.detail


def test_auto_source_policy_by_version():
    sh, ctx = shells({n: {} for n in NODES}), contexts()
    prom = PrometheusSource("http://prom:9090", client=FakePromClient([]))
    s = auto_source("0.7.3", prom, sh, ctx)
    assert isinstance(s, StatsSource)  # 0.7.3 exports no queue metrics: Prometheus is not asked
    s = auto_source({n: "v0.8.7" for n in NODES}, prom, sh, ctx, expect_repairs=("Block repair worker",))
    assert isinstance(s, CombinedSource) and s.queues is prom and isinstance(s.fallback, StatsSource)
    assert isinstance(s.workers, WorkerListSource) and s.workers.expect_repairs == ("Block repair worker",)
    s = auto_source("0.8.0", None, sh, ctx)
    assert isinstance(s, CombinedSource) and isinstance(s.queues, StatsSource) and s.fallback is None
    s = auto_source({"node-a1": "0.7.3", "node-b1": "0.8.7", "node-c1": "0.8.7"}, prom, sh, ctx)
    assert isinstance(s, RoutedSource)
    assert isinstance(s.routes["node-a1"], StatsSource) and isinstance(s.routes["node-b1"], CombinedSource)
    with pytest.raises(ValueError, match="0.9.1"):
        auto_source("0.9.1", prom, sh, ctx)


def test_auto_source_073_gate_reads_stats_and_never_passes_with_queues():
    sh = shells({n: {"stats": fixture("0.7.3", "stats"), "worker list": AssertionError("0.7.3 has no worker cmd")}
                 for n in NODES})
    prom = PrometheusSource("http://prom:9090", client=FakePromClient(cluster("0.7.3")))
    out = run(gate(auto_source("0.7.3", prom, sh, contexts()), FakeClock(), deadline=60).run())
    assert out.status == "errored_blocks"  # the fixture has 2 errored blocks on each node
    assert out.reasons[0] == "node-a1: resync queue 4182, errored blocks 2, merkle object 12, merkle block_ref 3"


def test_routed_source_reads_each_group_once():
    a = ScriptedSource([{"node-a1": ok("node-a1")}])
    b = ScriptedSource([{"node-b1": ok("node-b1"), "node-c1": ok("node-c1")}])
    src = RoutedSource({"node-a1": a, "node-b1": b, "node-c1": b})
    obs = run(src.observe(NODES + ("node-z9",)))
    assert a.calls == [("node-a1",)] and b.calls == [("node-b1", "node-c1")]
    assert not obs["node-z9"].reachable and all(obs[n].reachable for n in NODES)


@pytest.mark.parametrize("v, fam", [("0.7.3", (0, 7)), ("v0.8.7", (0, 8)), ("garage v0.8.0 [features: k2v]", (0, 8)),
                                    ((0, 8, 2), (0, 8))])
def test_version_family(v, fam):
    assert version_family(v) == fam


# ---------------------------------------------------------------------------------- gate object and outcome


@pytest.mark.parametrize("kw", [dict(consecutive=0), dict(interval=0), dict(deadline=-1), dict(nodes=()),
                                dict(nodes=("a", "a")), dict(errored_blocks_grace=-1), dict(observe_timeout=0),
                                dict(deadline=10, interval=10, consecutive=3), dict(history_limit=0)])
def test_gate_rejects_inconsistent_settings(kw):
    with pytest.raises(ValueError):
        gate(ScriptedSource([all_ok()]), FakeClock(), **kw)


def test_gate_is_a_frozen_value():
    import dataclasses

    g = gate(ScriptedSource([all_ok()]), FakeClock())
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.deadline = 1  # type: ignore[misc]
    assert g.predicate is synced and g.nodes == NODES


def test_custom_predicate_can_block_on_gc():
    def strict(q: NodeQueues) -> tuple[str, ...]:
        return synced(q) + tuple(f"gc {t} {n}" for t, n in (q.gc_todo or {}).items() if n)

    r = all_ok(gc_todo={"version": 1})
    out = run(gate(ScriptedSource([r]), FakeClock(), deadline=20, predicate=strict).run())
    assert out.status == "timeout" and out.reasons[0] == "node-a1: gc version 1"


def test_node_queues_are_immutable_copies_and_hashable():
    m = {"object": 1, **{t: 0 for t in REQUIRED_TABLES if t != "object"}}
    q = ok("node-a1", merkle_todo=m, workers_busy=["object sync (Busy)"])
    m["object"] = 0
    assert q.merkle_todo["object"] == 1 and isinstance(q.merkle_todo, FrozenMap)
    assert q.workers_busy == ("object sync (Busy)",)
    with pytest.raises(TypeError):
        q.merkle_todo["object"] = 0  # type: ignore[index]
    assert hash(q) == hash(ok("node-a1", merkle_todo=dict(q.merkle_todo), workers_busy=("object sync (Busy)",)))
    assert pickle.loads(pickle.dumps(q)) == q
    with pytest.raises(ValueError):
        FrozenMap([("a", 1), ("a", 2)])


def test_outcome_markdown_json_and_error():
    src = ScriptedSource([with_node("node-a1", resync_queue=12, detail="odd | pipe")])
    out = run(gate(src, FakeClock(), deadline=20).run())
    md = out.render_markdown()
    assert "### Sync gate `test`: TIMED OUT" in md
    assert "**Decision needed**: `wait_more` / `proceed_anyway` / `abort`." in md
    assert "| node-a1 | script | yes | 0 | 12 | 0 | not read | 0 | odd \\| pipe |" in md
    assert "- node-a1: resync queue 12" in md
    data = json.loads(json.dumps(out.as_dict()))
    assert data["status"] == "timeout" and data["decision_needed"] and data["choices"] == list(CHOICES)
    assert data["last"]["node-a1"]["resync_queue"] == 12 and len(data["history"]) == 3
    err = out.error()
    assert err.code == ErrorCode.SYNC_GATE_TIMEOUT and "resync queue 12" in str(err)
    passed = run(gate(ScriptedSource([all_ok()]), FakeClock()).run())
    assert "PASSED" in passed.render_markdown() and "Decision" not in passed.render_markdown()
    with pytest.raises(ValueError):
        passed.error()
    assert isinstance(out, GateOutcome) and hash(out.last)
    assert out.passing_observations == 0 and passed.longest_streak == 3


def test_history_is_bounded_but_counts_everything():
    out = run(gate(ScriptedSource([with_node("node-a1", resync_queue=1)]), FakeClock(), deadline=1000,
                   interval=1, history_limit=5).run())
    assert out.observations == 1001 and len(out.history) == 5 and out.history[-1].index == 1001


def test_every_log_line_names_its_node(caplog):
    caplog.set_level(logging.DEBUG, logger="garage_migrate.gates")
    src = ScriptedSource([with_node("node-b1", resync_queue=3), all_ok()])
    run(gate(src, FakeClock(), deadline=100).run())
    records = [r for r in caplog.records if r.name == "garage_migrate.gates"]
    assert records
    for r in records:
        msg = r.getMessage()
        assert getattr(r, "node", None) in NODES and msg.startswith(f"[{r.node}] ") or all(n in msg for n in NODES), msg
    assert any(r.getMessage() == "[node-b1] gate test: blocking: resync queue 3" for r in records)
    assert any(r.getMessage() == "[node-b1] gate test: passes" for r in records)


# ---------------------------------------------------------------------------------- settle (repair start race)


def test_idle_looks_before_any_work_is_seen_do_not_count_until_settle_is_over():
    # a repair launched just before the gate shows no work at first (source audit, "Repair
    # start"): with nothing seen at work, the passes of the first 25 s do not count
    clock = FakeClock()
    out = run(gate(ScriptedSource([all_ok()]), clock, interval=10.0, settle=25.0).run())
    assert out.passed
    assert [(r.elapsed, r.streak) for r in out.history] == [(0, 0), (10, 0), (20, 0), (30, 1), (40, 2), (50, 3)]


def test_work_seen_ends_the_settle_at_once():
    clock = FakeClock()
    busy = with_node("node-b1", merkle_todo={t: 5 for t in REQUIRED_TABLES})
    out = run(gate(ScriptedSource([all_ok(), busy, all_ok()]), clock, interval=10.0, settle=1000.0).run())
    assert out.passed and out.elapsed == 40.0
    assert [r.streak for r in out.history] == [0, 0, 1, 2, 3]


@pytest.mark.parametrize("change", [{"reachable": False}, {"resync_queue": None}], ids=["unreadable", "unknown"])
def test_an_unreadable_node_or_an_unknown_figure_is_not_work_seen(change):
    clock = FakeClock()
    odd = with_node("node-b1", **change)
    out = run(gate(ScriptedSource([odd, all_ok()]), clock, interval=10.0, settle=25.0).run())
    assert out.passed and [r.streak for r in out.history] == [0, 0, 0, 1, 2, 3]


def test_settle_zero_is_the_plain_gate_and_a_negative_one_is_refused():
    out = run(gate(ScriptedSource([all_ok()]), FakeClock(), settle=0.0).run())
    assert out.passed and out.observations == 3
    with pytest.raises(ValueError, match="settle"):
        gate(ScriptedSource([all_ok()]), FakeClock(), settle=-1)


# ---------------------------------------------------------------------------------- paced CLI reads (issue 13)


class PerNodeSource:
    """A per-node CLI source: answers each node asked, counts the reads."""

    name = "worker list"

    def __init__(self, answer):
        self.answer = answer
        self.asked: list[tuple[str, ...]] = []

    async def observe(self, nodes):
        self.asked.append(tuple(nodes))
        return {n: self.answer(n) for n in nodes}


def test_paced_reads_stay_under_the_rate_and_a_pass_is_a_full_sweep():
    from garage_migrate.gates.paced import PacedSource

    clock = FakeClock(1000.0)
    nodes = tuple(f"n{i:02d}" for i in range(12))
    inner = PerNodeSource(lambda n: ok(n))
    src = PacedSource(inner, per_second=4, wall=clock.monotonic)
    out = run(gate(src, clock, nodes=nodes, interval=1.0, consecutive=2, deadline=60).run())
    assert out.passed
    # never more than 4 nodes per look (1 s apart), never-read nodes first, in name order
    assert all(len(a) <= 4 for a in inner.asked)
    assert inner.asked[:3] == [nodes[0:4], nodes[4:8], nodes[8:12]]
    # a pass counts only once every node was read again since the last counted one: the
    # first sweep ends at look 3, the passes count at looks 5 and 8; 32 reads, not 8 x 12
    assert [r.streak for r in out.history] == [0, 0, 0, 0, 1, 1, 1, 2]
    assert sorted(set(src.reads.values())) == [2, 3] and sum(src.reads.values()) == 32


def test_paced_reads_revisit_a_blocked_node_before_the_idle_ones():
    from garage_migrate.gates.paced import PacedSource

    clock = FakeClock(1000.0)
    nodes = ("a", "b", "c", "d")
    state = {"b": 3}

    def answer(n):
        left = state.get(n, 0)
        if left:
            state[n] = left - 1
            return ok(n, resync_queue=left)
        return ok(n)
    inner = PerNodeSource(answer)
    src = PacedSource(inner, per_second=2, wall=clock.monotonic)
    run(src.observe(nodes))  # a, b (b blocks)
    clock.advance(1.0)
    run(src.observe(nodes))  # c, d: never read come first
    clock.advance(1.0)
    run(src.observe(nodes))  # b (blocked) first, then the stalest of the idle ones
    assert inner.asked == [("a", "b"), ("c", "d"), ("b", "a")]
    not_read = PacedSource(PerNodeSource(ok), per_second=1, wall=clock.monotonic)
    first = run(not_read.observe(nodes))
    assert first["a"].observed_at is not None and first["d"].resync_queue is None and first["d"].reachable
    with pytest.raises(ValueError):
        PacedSource(inner, per_second=0)
