"""The fan-out policy on a real lab (issue 9 §2): the executor runs the planner's real phases with
the engine's real steps through the scheduler, and the lab's service events (every stop and
start of a daemon: the ground truth) show that each field changes the order as the policy says.

One 3 zones x 2 nodes lab on 0.7.3 with replication mode ``3-dangerous`` (write quorum 1, so
two zones may be down at once) serves the whole module; the runs are ordered so that the last
one flips it to 0.8.7. Every run has its own migration id, hence its own ledger, so no step is
skipped as done earlier, except the flip, which reuses the first run's backups on purpose.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from garage_migrate.executor import Answer, EngineSteps, Executor
from garage_migrate.plan import FanoutPolicy, MigrationOptions
from garage_migrate.runtime import open_runtime, plan_for
from tests.conftest import run

ZONE = {"dc1": ("node-a1", "node-a2"), "dc2": ("node-b1", "node-b2"), "dc3": ("node-c1", "node-c2")}
NODES = {n for ns in ZONE.values() for n in ns}


@pytest.fixture(scope="module")
def lab(module_lab):
    lab = module_lab(version="0.7.3", zones=3, per_zone=2, replication_mode="3-dangerous", wait_prometheus=False)
    assert {z: tuple(n["name"] for n in lab.nodes if n["zone"] == z) for z in ZONE} == ZONE
    return lab


class Approver:
    """Approves every question and records when it was asked (wall time, as the service events)."""

    def __init__(self):
        self.asked: list[tuple[str, float]] = []

    async def ask(self, kind, key, description, choices=()):
        self.asked.append((key, time.time()))
        return Answer(action="approve", note="lab test", pause_key=key, flow_run_id="")


class Recording(EngineSteps):
    """The engine's steps, recording when each node step began and returned."""

    def __init__(self):
        self.spans: list[tuple[str, str, str, float]] = []

    async def _span(self, step, node, coro):
        self.spans.append(("begin", step, node, time.time()))
        res = await coro
        self.spans.append(("end", step, node, time.time()))
        return res

    async def stop_node(self, rt, node):
        return await self._span("stop", node, super().stop_node(rt, node))

    async def switch_binary(self, rt, node, to="target"):
        return await self._span("switch", node, super().switch_binary(rt, node, to))

    async def start_node(self, rt, node, version):
        return await self._span("start", node, super().start_node(rt, node, version))


def _execute(lab, mid: str, procedure: str, fanout: FanoutPolicy, phases: tuple[str, ...], steps=None,
             decider=None, after=None):
    """Run ``phases`` of the real plan of ``mid`` wave by wave, as ``Executor.run`` would; then
    ``after(rt)`` if given. Returns the plan, the decider and the first error (or None)."""
    decider = decider or Approver()

    async def go():
        async with open_runtime(str(lab.dir / "inventory.yaml"), procedure, migration_id=mid) as rt:
            opts = MigrationOptions(fanout=fanout)
            plan = plan_for(rt, procedure, opts)
            ex = Executor(rt, plan, opts, steps=steps or EngineSteps(), decider=decider)
            err = None
            try:
                for name in phases:
                    for w in plan.phase(name).waves:
                        await ex.run_wave(plan.phase(name), w)
            except Exception as exc:  # noqa: BLE001 - returned to the test, which expects it or not
                err = exc
            if after is not None:
                await after(rt)
            return plan, err
    plan, err = run(go(), limit=300)
    return plan, decider, err


def _windows(lab, since: float) -> dict[str, list[tuple[float, float]]]:
    """Each node's downtime windows (service events) that began after ``since``, all closed."""
    out = {n: [w for w in ws if w[0] >= since] for n, ws in lab.downtime_windows().items()}
    assert all(e != float("inf") for ws in out.values() for _s, e in ws), out
    return out


def _overlapping(windows) -> set[frozenset[str]]:
    """Pairs of nodes that were down at the same time."""
    items = [(n, w) for n, ws in windows.items() for w in ws]
    return {frozenset((a, b)) for a, wa in items for b, wb in items
            if a < b and wa[0] < wb[1] and wb[0] < wa[1]}


def _zone_of(node: str) -> str:
    return next(z for z, ns in ZONE.items() if node in ns)


def _rolling(lab, mid: str, **fanout) -> dict:
    t0 = time.time()
    plan, decider, err = _execute(lab, mid, "minimal-downtime", FanoutPolicy(**fanout), ("rolling-backup",))
    assert err is None, err
    windows = _windows(lab, t0)
    assert {n: len(ws) for n, ws in windows.items()} == {n: 1 for n in NODES}  # not vacuous
    return {"plan": plan, "windows": windows, "pairs": _overlapping(windows), "asked": decider.asked}


@pytest.fixture(scope="module")
def rolling(lab):
    """Three rolling-backup runs that differ by one field at a time."""
    return {
        "serial": _rolling(lab, "sched-r1", max_zones_down=1, max_parallel_nodes=1, stop_after_zone="dc2"),
        "zone": _rolling(lab, "sched-r2", max_zones_down=1, max_parallel_nodes=32, stop_after_zone="dc1"),
        "two-zones": _rolling(lab, "sched-r3", max_zones_down=2, max_parallel_nodes=32, stop_after_zone="dc1"),
    }


def _cross_zone(pairs) -> set[frozenset[str]]:
    return {p for p in pairs if len({_zone_of(n) for n in p}) == 2}


@pytest.mark.timeout(600)
def test_max_parallel_nodes_1_runs_a_rounds_nodes_one_after_the_other_and_2_together(rolling):
    assert rolling["serial"]["pairs"] == set(), "two nodes were down at once with max_parallel_nodes=1"
    within = {frozenset(ns) for ns in ZONE.values()}
    assert rolling["zone"]["pairs"] & within, "no two nodes of a zone were down together with max_parallel_nodes=32"


@pytest.mark.timeout(600)
def test_max_zones_down_2_takes_two_zones_down_together_and_1_never(rolling):
    assert _cross_zone(rolling["zone"]["pairs"]) == set(), "two zones were down at once with max_zones_down=1"
    cross = _cross_zone(rolling["two-zones"]["pairs"])
    assert cross, "dc1 and dc2 were never down together with max_zones_down=2"
    assert {frozenset(_zone_of(n) for n in p) for p in cross} == {frozenset(("dc1", "dc2"))}  # dc3: its own round
    assert rolling["zone"]["plan"].digest() != rolling["two-zones"]["plan"].digest()


@pytest.mark.timeout(600)
def test_the_canary_comes_after_the_round_that_holds_stop_after_zone(rolling):
    def zone_span(r, zone):
        ws = [w for n in ZONE[zone] for w in r["windows"][n]]
        return min(s for s, _e in ws), max(e for _s, e in ws)

    for run_, gate, done, next_zone in (("zone", "approve-canary-dc1", ("dc1",), "dc2"),
                                       ("serial", "approve-canary-dc2", ("dc1", "dc2"), "dc3"),
                                       # dc1's canary with two zones per round waits for dc2 as well
                                       ("two-zones", "approve-canary-dc1", ("dc1", "dc2"), "dc3")):
        r = rolling[run_]
        assert [k for k, _t in r["asked"]] == [gate], (run_, r["asked"])
        asked = r["asked"][0][1]
        assert all(zone_span(r, z)[1] < asked for z in done), (run_, "canary before its round was back")
        assert asked < zone_span(r, next_zone)[0], (run_, f"{next_zone} went down before the canary")


def _manifests(lab, mid: str) -> set[str]:
    """Nodes with a backup manifest of migration ``mid`` on the controller (the backups' ground truth)."""
    root = lab.dir / "backups"
    return {p.parent.name for p in root.rglob("manifest.json") if f"/{mid}/" in str(p)}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("in_parallel", [True, False])
def test_zones_in_parallel_backs_up_every_zone_at_once_or_zone_after_zone(lab, rolling, in_parallel):
    # backups leave no service event: the order shows in what a failure leaves behind. n1's tar is
    # killed mid-stream; with zones in parallel the other zones were backed up alongside it, zone
    # after zone they never started (n2 runs alongside n1 in zone dc1 either way)
    mid = f"sched-zip-{int(in_parallel)}"
    first = ZONE["dc1"][0]
    lab.fault(first, "kill-tar", bytes=1024)

    async def restart(rt):
        lab.clear_faults(first)
        await asyncio.gather(*(EngineSteps().start_node(rt, n, "0.7.3") for n in sorted(NODES)))
    t0 = time.time()
    plan, _d, err = _execute(lab, mid, "simple", FanoutPolicy(zones_in_parallel=in_parallel), ("stop", "backup"),
                             after=restart)
    assert err is not None and err.node == first, err
    expected = NODES - {first} if in_parallel else set(ZONE["dc1"]) - {first}
    assert _manifests(lab, mid) == expected
    assert [len(w.steps) for w in plan.phase("backup").waves] == ([6] if in_parallel else [2, 2, 2])
    assert all(len(ws) == 1 for ws in _windows(lab, t0).values())  # every node stopped once, restarted


@pytest.mark.timeout(600)
def test_the_flip_stops_and_starts_every_node_together_with_max_parallel_nodes_1(lab, rolling):
    # the first run's migration (its backups allow the 0.8 starts); max_parallel_nodes=1 would
    # serialize any other wave (first test). Every daemon takes 4 s longer to stop, so a stop
    # that waited for another node's stop would come after that node's stop step returned.
    for n in NODES:
        lab.fault(n, "slow-stop", seconds=4)
    steps = Recording()
    t0 = time.time()
    try:
        plan, _d, err = _execute(lab, "sched-r1", "minimal-downtime", FanoutPolicy(max_parallel_nodes=1),
                                 ("stage", "flip"), steps=steps)
    finally:
        for n in NODES:
            lab.clear_faults(n)
    assert err is None, err
    assert [w.name for w in plan.phase("flip").waves if w.together] == ["stop", "switch", "start"]
    events = [e for e in _service_events(lab) if e["t"] >= t0]
    kills = {e["node"]: e["t"] for e in events if e["event"] in ("kill", "stop")}
    starts = {e["node"]: e for e in events if e["event"] == "start"}
    assert set(kills) == NODES and set(starts) == NODES, events
    first_stop_returned = min(t for edge, s, _n, t in steps.spans if edge == "end" and s == "stop")
    assert max(kills.values()) < first_stop_returned, "a node was stopped only after another's stop finished"
    # no 0.8 daemon started before every 0.7 daemon was told to stop
    assert max(kills.values()) < min(e["t"] for e in starts.values())
    assert {e["binary"] for e in starts.values()} == {"garage-v0.8.7"}
    for step in ("switch", "start"):
        began = [t for edge, s, _n, t in steps.spans if edge == "begin" and s == step]
        returned = [t for edge, s, _n, t in steps.spans if edge == "end" and s == step]
        assert len(began) == 6 and max(began) < min(returned), f"the {step}s did not all run together"
    assert all(d["version"] == "0.8.7" for d in (lab.daemon_info(n) for n in NODES))


def _service_events(lab) -> list[dict]:
    import json

    return [json.loads(x) for x in (lab.dir / "events.jsonl").read_text().splitlines() if x.strip()]
