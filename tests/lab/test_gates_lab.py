"""Sync gates against a real lab: real sshd (SshPool from the lab's inventory), the lab's real
Prometheus (job ``garage``, ``node`` label), simulated Garage daemons, the real clock.

Deadlines are a few seconds; knobs make queues drain in seconds. Ground truth comes from
``lab.inspect()``, which the gates themselves never read.
"""

from __future__ import annotations

import asyncio
import functools
import time


from garage_migrate import commands as C
from garage_migrate.errors import ErrorCode
from garage_migrate.gates import (
    CombinedSource,
    Gate,
    PrometheusSource,
    StatsSource,
    auto_source,
)
from garage_migrate.inventory import Inventory, load_inventory
from garage_migrate.ssh import SshPool
from tests.conftest import run


run = functools.partial(run, limit=60)  # the gates of this file finish well within a minute


class Cluster:
    """What the orchestrator knows of a lab: its inventory, SSH shells and Prometheus."""

    def __init__(self, lab, pool: SshPool):
        self.lab = lab
        self.inv: Inventory = load_inventory(lab.dir / "inventory.yaml")
        self.pool = pool
        self.nodes = tuple(n.name for n in self.inv.resolved_nodes())
        self.ctx = {n.name: n.ctx for n in self.inv.resolved_nodes()}
        self.shells = {n: pool.shell(n) for n in self.nodes}
        self.prom = PrometheusSource.from_inventory(self.inv, timeout=5)

    async def garage(self, node: str, *args: str, check: bool = True):
        return await self.shells[node].run(C.garage(self.ctx[node], *args, timeout=20), check=check)

    def source(self, version: str, **kw):
        return auto_source(version, self.prom, self.shells, self.ctx, **kw)

    def gate(self, source, **kw) -> Gate:
        kw.setdefault("nodes", self.nodes)
        kw.setdefault("interval", 0.5)
        kw.setdefault("consecutive", 3)
        return Gate(name=kw.pop("name", "lab-gate"), source=source, **kw)


def with_cluster(lab, body):
    """Run ``body(cluster)`` with an SSH pool built from the lab's own inventory."""
    async def go():
        inv = load_inventory(lab.dir / "inventory.yaml")
        async with SshPool.from_inventory(inv) as pool:
            return await body(Cluster(lab, pool))
    return run(go())


def truth(lab) -> dict:
    return lab.inspect(checksums=False)["nodes"]


def wait_truth(lab, pred, timeout: float = 10.0) -> dict:
    """Wait (test scaffolding only) until the lab's ground truth satisfies ``pred``.

    Ground truth is read from the persisted trees, which the daemons flush every 2 s
    (``sled_flush_every_ms``), so it lags what the daemon reports by up to that much.
    """
    deadline = time.monotonic() + timeout
    while True:
        t = truth(lab)
        if pred(t):
            return t
        if time.monotonic() > deadline:
            raise AssertionError(f"lab never reached the expected state: {t}")
        time.sleep(0.2)


# ---------------------------------------------------------------------------------- 0.7.3


def test_073_with_nonempty_queues_is_never_reported_synced(make_lab):
    """Issue 3's criterion: not through Prometheus (no series), not through stats."""
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    for n in lab.nodes:
        lab.fault(n["name"], "queues-stuck")

    async def body(c: Cluster):
        r = await c.garage("node-a1", "repair", "--all-nodes", "--yes", "blocks")
        assert "Repair launched on all nodes" in r.stdout
        t = await asyncio.to_thread(wait_truth, lab, lambda t: all(v["resync_queue"] > 0 for v in t.values()))

        # Prometheus alone: every node is up, its queue series are simply absent
        prom_out = await c.gate(c.prom, name="073-prometheus", deadline=3, unreachable_grace=None).run()
        # stats on each node: the queues are read, and they are not empty
        stats_out = await c.gate(StatsSource(c.shells, c.ctx), name="073-stats", deadline=3).run()
        # the version policy picks stats for 0.7.3
        auto = c.source("0.7.3")
        auto_out = await c.gate(auto, name="073-auto", deadline=3).run()
        return t, prom_out, stats_out, auto, auto_out

    t, prom_out, stats_out, auto, auto_out = with_cluster(lab, body)

    assert prom_out.status == "timeout" and prom_out.decision_needed
    assert prom_out.choices == ("wait_more", "proceed_anyway", "abort")
    assert prom_out.observations >= 3 and not any(r.passed for r in prom_out.history)
    for n, q in prom_out.last.items():
        assert q.reachable, f"{n}: Prometheus scraped it (up == 1)"
        assert (q.merkle_todo, q.gc_todo, q.resync_queue, q.resync_errors) == (None, None, None, None)
        assert "no queue series" in q.detail
    assert len(prom_out.reasons) == 3 and all("resync queue unknown" in r for r in prom_out.reasons)

    assert isinstance(auto, StatsSource)
    for out in (stats_out, auto_out):
        assert out.status == "timeout" and out.decision_needed
        assert not any(r.passed for r in out.history)
        for n, q in out.last.items():
            assert q.source == "stats" and q.reachable
            assert q.resync_queue and q.resync_queue >= t[n]["resync_queue"] > 0  # stuck: it cannot shrink
            assert q.resync_errors == 0
        assert all(": resync queue " in r for r in out.reasons)
    assert "TIMED OUT" in stats_out.render_markdown()

    # control: once the queues may drain, the same gate does pass
    for n in lab.nodes:
        lab.clear_faults(n["name"])

    async def after(c: Cluster):
        return await c.gate(c.source("0.7.3"), name="073-drained", deadline=20, consecutive=2).run()

    out = with_cluster(lab, after)
    assert out.passed, out.summary()
    wait_truth(lab, lambda t: all(v["resync_queue"] == 0 for v in t.values()), timeout=5)


def test_073_node_down_is_unreachable_and_the_others_are_still_read(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)

    async def body(c: Cluster):
        await c.shells["node-c1"].run(C.service_stop(c.ctx["node-c1"]))
        all_nodes = await c.garage("node-a1", "stats", "-a", check=False)
        out = await c.gate(c.source("0.7.3"), name="073-node-down", deadline=10, unreachable_grace=2).run()
        return all_nodes, out

    all_nodes, out = with_cluster(lab, body)
    # why the stats source reads nodes one by one: `stats -a` fails as a whole on 0.7.3
    assert all_nodes.exit_status != 0
    assert out.status == "unreachable" and out.decision_needed and out.elapsed < 8
    assert len(out.reasons) == 1 and out.reasons[0].startswith("node-c1: unreachable (")
    assert not out.last["node-c1"].reachable
    for n in ("node-a1", "node-b1"):
        q = out.last[n]
        assert q.reachable and q.complete and q.resync_queue == 0
    err = out.error()
    assert err.code == ErrorCode.SYNC_GATE_TIMEOUT and err.node == "node-c1"


# ---------------------------------------------------------------------------------- 0.8.7


def test_087_repair_blocks_gate_fails_then_passes_with_consecutive_scrapes(make_lab):
    # resync drains ~190 blocks per node in ~10 s; the periodic full sync is pushed away
    # so that nothing else keeps the nodes busy during the test
    lab = make_lab(version="0.8.7", zones=3, per_zone=1,
                   knobs={"resync_rate": 20, "anti_entropy_startup_s": 3600})

    async def body(c: Cluster):
        r = await c.garage("node-a1", "repair", "--all-nodes", "--yes", "blocks")
        assert "Repair launched on all nodes" in r.stdout
        src = c.source("0.8.7", expect_repairs=("Block repair worker",))
        out = await c.gate(src, name="after-repair-blocks", deadline=25, consecutive=3).run()
        return src, out

    src, out = with_cluster(lab, body)
    assert isinstance(src, CombinedSource)
    assert out.passed and not out.decision_needed, out.summary()
    assert out.passes == 3
    hist = out.history
    fails = [r for r in hist if not r.passed]
    assert fails, "the gate must have seen the queues first"
    assert any("resync queue" in b for r in fails for b in r.blocking)
    # after the last failure: passes only, and exactly three of them were counted
    tail = hist[hist.index(fails[-1]) + 1:]
    assert tail and all(r.passed for r in tail) and sum(r.fresh for r in tail) == 3
    for n, q in out.last.items():
        assert q.source == "prometheus+worker list"
        assert q.resync_queue == 0 and q.resync_errors == 0 and q.workers_busy == ()
        assert q.observed_at is not None
    wait_truth(lab, lambda t: all(v["resync_queue"] == 0 for v in t.values()), timeout=5)


def test_087_errored_blocks_need_a_decision(make_lab):
    lab = make_lab(version="0.8.7", zones=3, per_zone=1, knobs={"anti_entropy_startup_s": 3600})
    lab.fault("node-b1", "errored-blocks", blocks=2)
    wait_truth(lab, lambda t: t["node-b1"]["resync_errors"] == 2)

    async def body(c: Cluster):
        return await c.gate(c.source("0.8.7"), name="errored", deadline=45, errored_blocks_grace=2).run()

    out = with_cluster(lab, body)
    assert out.status == "errored_blocks" and out.decision_needed, out.summary()
    assert out.choices == ("wait_more", "proceed_anyway", "abort")
    assert out.elapsed < out.deadline  # stopped by the grace, not by the deadline
    assert len(out.reasons) == 1
    assert out.reasons[0].startswith("node-b1: ") and "errored blocks 2" in out.reasons[0]
    assert out.last["node-b1"].resync_errors == 2 and out.last["node-b1"].resync_queue == 2
    assert out.last["node-a1"].resync_errors == 0
    assert out.error().code == ErrorCode.SYNC_GATE_ERRORS
    assert "ERRORED BLOCKS" in out.render_markdown()


def test_087_metrics_down_falls_back_to_stats_for_that_node(make_lab):
    lab = make_lab(version="0.8.7", zones=3, per_zone=1, knobs={"anti_entropy_startup_s": 3600})
    lab.fault("node-a1", "metrics-down")

    async def body(c: Cluster):
        deadline = time.monotonic() + 10
        while (await c.prom.observe(c.nodes))["node-a1"].reachable:  # scaffolding: Prometheus notices
            assert time.monotonic() < deadline, "Prometheus never marked node-a1 down"
            await asyncio.sleep(0.3)
        return await c.gate(c.source("0.8.7"), name="metrics-down", deadline=40, consecutive=2).run()

    out = with_cluster(lab, body)
    assert out.passed, out.summary()
    q = out.last["node-a1"]
    assert q.source == "stats+worker list" and "up == 0" in q.detail and q.complete
    assert out.last["node-b1"].source == "prometheus+worker list"


def _work_started(lab, node: str) -> bool:
    log = (lab.node_dir(node) / "log" / "garage.log").read_text(errors="replace")
    return "repair tables: work started" in log


def test_087_a_gate_right_after_repair_tables_is_fooled_without_settle_and_not_with_it(make_lab):
    """The lab reproduces the repair-start race (source audit): ``worker list`` and the queue
    metrics read idle until the sync workers get the full-sync request (knob
    ``repair_start_delay_s``). A gate with no settle time passes on those idle figures before
    the repair has even begun (shown with a start that never comes); with the migration's
    settle time it passes only once the work began, and was seen or the settle was over."""
    from garage_migrate.plan import MigrationOptions

    lab = make_lab(version="0.8.7", zones=1, per_zone=1, knobs={"anti_entropy_startup_s": 3600,
                                                               "repair_start_delay_s": 3600})
    node = lab.nodes[0]["name"]

    async def gate_after_repair(c: Cluster, **kw):
        r = await c.garage(node, "repair", "--all-nodes", "--yes", "tables")
        assert "Repair launched" in r.stdout
        return await c.gate(c.source("0.8.7"), name="race", interval=1.0, consecutive=2, **kw).run()

    async def fooled(c: Cluster):
        return await gate_after_repair(c, deadline=30, settle=0)

    out = with_cluster(lab, fooled)
    assert out.passed and not _work_started(lab, node), "the lab did not reproduce the race"

    lab.set_knobs(node, repair_start_delay_s=2.5)
    time.sleep(1.5)  # the daemon re-reads its knobs within a second

    async def settled(c: Cluster):
        return await gate_after_repair(c, deadline=45, settle=MigrationOptions().gate_settle_s)

    out = with_cluster(lab, settled)
    assert out.passed and _work_started(lab, node), out.summary()
    assert any(r.blocking for r in out.history) or out.elapsed >= MigrationOptions().gate_settle_s, out.history
