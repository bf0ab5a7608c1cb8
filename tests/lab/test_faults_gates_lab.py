"""Fault-matrix rows 13-16 (``docs/faults.md``): the sync gate under Prometheus and queue faults.

One 3x1 lab on 0.8.7 for the module (real sshd, the lab's real Prometheus, simulated daemons);
each test injects its fault, runs the gate as the migration builds it (``auto_source`` over the
inventory's Prometheus, ``stats`` and ``worker list`` through SSH: what
:func:`garage_migrate.runtime.run_sync_gate` runs, with a short deadline), asserts the outcome
the executor acts on, and lifts the fault. The executor turns an outcome that needs a decision
into the question ``sync-<gate>-<attempt>`` (``wait_more`` / ``proceed_anyway`` / ``abort``),
never answered by a default (:mod:`garage_migrate.executor.decisions`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time

import pytest

from garage_lab import processes
from garage_migrate import commands as C
from garage_migrate.errors import ErrorCode
from garage_migrate.gates import Gate, PrometheusSource, auto_source
from garage_migrate.inventory import load_inventory
from garage_migrate.ssh import SshPool
from tests.conftest import run

run = functools.partial(run, limit=90)
NODES = ("node-a1", "node-b1", "node-c1")


@pytest.fixture(scope="module")
def lab(module_lab):
    # the periodic full sync is pushed away: nothing but the fault keeps a queue busy
    return module_lab(version="0.8.7", zones=3, per_zone=1, knobs={"anti_entropy_startup_s": 3600})


def gate_run(lab, **kw):
    """The migration's gate (same sources, same predicate) against the lab; its outcome."""
    async def go():
        inv = load_inventory(lab.dir / "inventory.yaml")
        async with SshPool.from_inventory(inv) as pool:
            names = tuple(n.name for n in inv.resolved_nodes())
            prom = PrometheusSource.from_inventory(inv, timeout=3)
            src = auto_source("0.8.7", prom, {n: pool.shell(n) for n in names},
                              {n.name: n.ctx for n in inv.resolved_nodes()})
            kw.setdefault("deadline", 30)
            kw.setdefault("consecutive", 2)
            return await Gate(name=kw.pop("name", "fault"), source=src, nodes=names, interval=0.5, **kw).run()
    return run(go())


def fill_resync_queue(lab, node: str) -> None:
    """``garage repair --yes blocks`` on ``node`` (fills its resync queue), and wait until the
    lab's ground truth shows the queue non-empty (test scaffolding)."""
    async def go():
        inv = load_inventory(lab.dir / "inventory.yaml")
        ctx = {n.name: n.ctx for n in inv.resolved_nodes()}
        async with SshPool.from_inventory(inv) as pool:
            r = await pool.shell(node).run(C.garage(ctx[node], "repair", "--yes", "blocks", timeout=20))
            assert "Repair launched" in r.stdout, r.stdout
    run(go())
    deadline = time.monotonic() + 15
    while lab.inspect(checksums=False)["nodes"][node]["resync_queue"] == 0:
        assert time.monotonic() < deadline, f"{node}'s resync queue never filled"
        time.sleep(0.2)


def _stop_prometheus(lab) -> int:
    pid = lab.info["pids"]["prometheus"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}"), "Prometheus did not stop"
    return pid


def test_fault_13_prometheus_down_the_gate_reads_every_node_through_stats(lab):
    _stop_prometheus(lab)
    try:
        out = gate_run(lab, name="prometheus-down")
    finally:
        processes.start_prometheus(lab)  # by PID, recorded in lab.json; the next tests need it
        lab.wait_ready(timeout=60)
    # recovered: every node read through `stats` + `worker list` over SSH, none read as idle
    # from a Prometheus it could not reach
    assert out.passed and not out.decision_needed, out.summary()
    for n in NODES:
        q = out.last[n]
        assert q.source == "stats+worker list" and q.complete, (n, q)
        assert "prometheus query failed" in q.detail, (n, q.detail)


def test_fault_14_queue_metrics_absent_are_never_read_as_zero(lab):
    # node-a1's /metrics goes away (its queue series go absent) while its queues never drain:
    # an absent series read as 0 would let the gate pass
    lab.fault("node-a1", "metrics-down")
    lab.fault("node-a1", "queues-stuck")
    try:
        fill_resync_queue(lab, "node-a1")
        async def prom_sees_it_down():
            inv = load_inventory(lab.dir / "inventory.yaml")
            prom = PrometheusSource.from_inventory(inv, timeout=3)
            deadline = time.monotonic() + 20
            while (await prom.observe(NODES))["node-a1"].reachable:  # scaffolding: Prometheus notices
                assert time.monotonic() < deadline, "Prometheus never marked node-a1 down"
                await asyncio.sleep(0.3)
        run(prom_sees_it_down())
        out = gate_run(lab, name="metrics-absent", deadline=8)
    finally:
        lab.clear_faults("node-a1")
    q = out.last["node-a1"]
    assert q.source == "stats+worker list" and "up == 0" in q.detail, q
    assert not out.passed and out.decision_needed and out.status == "timeout", out.summary()
    assert out.choices == ("wait_more", "proceed_anyway", "abort")
    assert [r for r in out.reasons if r.startswith("node-a1: ") and "resync queue" in r], out.reasons
    assert out.last["node-b1"].source == "prometheus+worker list"


def test_fault_15_queues_that_never_drain_stop_at_the_deadline_for_a_person(lab):
    lab.fault("node-b1", "queues-stuck")
    try:
        fill_resync_queue(lab, "node-b1")
        out = gate_run(lab, name="stuck", deadline=8)
    finally:
        lab.clear_faults("node-b1")
    assert out.status == "timeout" and out.decision_needed and not out.passed, out.summary()
    assert out.elapsed >= out.deadline
    assert out.choices == ("wait_more", "proceed_anyway", "abort")
    assert out.error().code == ErrorCode.SYNC_GATE_TIMEOUT and out.error().node == "node-b1"
    assert [r for r in out.reasons if r.startswith("node-b1: ") and "resync queue" in r], out.reasons


def test_fault_16_errored_blocks_stop_the_gate_for_a_person(lab):
    lab.fault("node-c1", "errored-blocks", blocks=2)
    try:
        out = gate_run(lab, name="errored", deadline=45, errored_blocks_grace=2)
    finally:
        lab.clear_faults("node-c1")
    assert out.status == "errored_blocks" and out.decision_needed, out.summary()
    assert out.elapsed < out.deadline  # stopped by the grace, not by the deadline
    assert out.choices == ("wait_more", "proceed_anyway", "abort")
    assert out.error().code == ErrorCode.SYNC_GATE_ERRORS
    assert out.last["node-c1"].resync_errors == 2 and out.last["node-a1"].resync_errors == 0
