"""Races of the real Garage (source audit, "Races of the real Garage that the orchestrator must
survive"), on the lab: the orchestrator's observations must never cause or miss them."""

from __future__ import annotations

import asyncio
import functools

import pytest

from garage_migrate import probes, steps
from garage_migrate.runtime import open_runtime
from tests.conftest import run


@pytest.fixture
def make_lab(make_lab):
    return functools.partial(make_lab, wait_prometheus=False)


@pytest.mark.timeout(300)
def test_lock_probe_in_a_loop_never_makes_a_starting_daemon_fail(make_lab):
    """Probing sled's lock with ``flock -n`` took it for an instant, so a daemon starting at that
    moment failed to open its DB (0.8.0 panics, late 0.8 exits 1). The probe now reads
    ``/proc/locks``: with probes running back to back over SSH, every one of the starts below
    opens its DB, and the probes see the lock held while it runs and free once it stopped."""
    lab = make_lab(version="0.7.3", zones=1, per_zone=1)
    node = lab.nodes[0]["name"]
    db = lab.node_dir(node) / "meta" / "db" / "db"

    async def scenario():
        async with open_runtime(str(lab.dir / "inventory.yaml"), "simple") as rt:
            shell, ctx, meta = rt.shell(node), rt.node(node).ctx, rt.meta_dir(node)
            seen: list[str] = []
            stop = asyncio.Event()

            async def probe_forever():
                while not stop.is_set():
                    seen.append((await probes.db_lock(shell, ctx, meta)).state)

            prober = asyncio.create_task(probe_forever())
            try:
                for _ in range(4):
                    await steps.stop_node(rt, node)
                    n = len(seen)
                    while len(seen) < n + 2:  # two whole probes of the stopped node
                        await asyncio.sleep(0.05)
                    assert seen[-1] == "free", seen[-5:]
                    await steps.start_node(rt, node, "0.7.3")  # raises if the daemon could not open its DB
                    n = len(seen)
                    while len(seen) < n + 2:
                        await asyncio.sleep(0.05)
                    assert seen[-1] == "held", seen[-5:]
            finally:
                stop.set()
                await prober
            return seen
    seen = run(scenario(), limit=None)
    assert "unknown" not in seen and len(seen) >= 16
    assert db.exists()
    truth = lab.inspect()["nodes"][node]
    assert truth["running_version"] == "0.7.3" and truth["lock_holder"] == truth["pid"], truth

