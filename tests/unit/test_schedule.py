"""The scheduler (issue 9 §2), pure: every field of the fan-out policy changes what runs together,
and the simultaneous restart is never split, whatever ``max_parallel_nodes``."""

from __future__ import annotations

import pytest

from garage_migrate.executor.schedule import (canary_round, offline_zone_groups, rolling_rounds, schedule,
                                              schedule_wave, zone_rounds)
from garage_migrate.plan import FanoutPolicy, MigrationOptions, Step, Wave, make_plan

from builders import inventory_and_facts

ZONES = ("dc1", "dc2", "dc3")


def _wave(n: int, **kw) -> Wave:
    return Wave("w", tuple(s for i in range(1, n + 1) for s in (Step("stop", f"n{i}"), Step("start", f"n{i}"))), **kw)


def _simulate(ws) -> dict[str, int]:
    """Simulate the executor's loop: a batch starts when the previous one has finished, so a
    node's tick is its batch's index; nodes of one tick run at the same time."""
    return {q.node: tick for tick, batch in enumerate(ws.batches) for q in batch}


def _plan(zones: dict[str, int], procedure="minimal-downtime", mode="3-dangerous", **fanout):
    inv, facts = inventory_and_facts(zones, mode)
    return make_plan(inv, facts, procedure, "m1", MigrationOptions(fanout=FanoutPolicy(**fanout)))


# ---------------------------------------------------------------------------- zones
def test_max_zones_down_groups_the_rolling_rounds():
    assert rolling_rounds(ZONES, FanoutPolicy(max_zones_down=1)) == (("dc1",), ("dc2",), ("dc3",))
    assert rolling_rounds(ZONES, FanoutPolicy(max_zones_down=2)) == (("dc1", "dc2"), ("dc3",))
    assert zone_rounds(ZONES, 3) == (ZONES,)
    with pytest.raises(ValueError):
        zone_rounds(ZONES, 0)


def test_zones_in_parallel_groups_the_offline_phases():
    assert offline_zone_groups(ZONES, FanoutPolicy(zones_in_parallel=True)) == (ZONES,)
    assert offline_zone_groups(ZONES, FanoutPolicy(zones_in_parallel=False)) == (("dc1",), ("dc2",), ("dc3",))


def test_stop_after_zone_picks_the_round_that_holds_it():
    rounds = (("dc1", "dc2"), ("dc3",))
    assert canary_round(rounds, None) is None
    assert canary_round(rounds, "dc2") == 0 and canary_round(rounds, "dc3") == 1
    with pytest.raises(ValueError):
        canary_round(rounds, "dcX")


# ---------------------------------------------------------------------------- waves
def test_a_parallel_wave_runs_at_most_max_parallel_nodes_at_once():
    ws = schedule_wave(_wave(40), 32)
    assert [len(b) for b in ws.batches] == [32, 8] and ws.rule == "bounded"
    ticks = _simulate(ws)
    assert max(list(ticks.values()).count(t) for t in set(ticks.values())) == 32
    assert [ticks[f"n{i}"] for i in (1, 32, 33, 40)] == [0, 0, 1, 1]  # plan order is kept
    # each node keeps its own steps, in plan order
    assert [s.kind for s in ws.batches[0][0].steps] == ["stop", "start"]
    assert ws.label() == "up to 32 at once, in 2 batches"
    assert [len(b) for b in schedule_wave(_wave(3), 2).batches] == [2, 1]
    assert schedule_wave(_wave(3), 1).label() == "one at a time"
    assert schedule_wave(_wave(3), 32).label() == "up to 32 at once"


def test_a_wave_that_is_not_parallel_runs_its_nodes_one_after_the_other():
    ws = schedule_wave(_wave(5, parallel=False), 32)
    assert ws.rule == "one-at-a-time" and [len(b) for b in ws.batches] == [1] * 5
    assert list(_simulate(ws).values()) == [0, 1, 2, 3, 4]
    assert ws.label() == "one at a time"


@pytest.mark.parametrize("nodes", [40, 96])
@pytest.mark.parametrize("limit", [1, 32])
def test_a_together_wave_is_never_split(nodes, limit):
    ws = schedule_wave(_wave(nodes, together=True), limit)
    assert ws.rule == "together" and len(ws.batches) == 1 and len(ws.batches[0]) == nodes
    assert set(_simulate(ws).values()) == {0}
    assert ws.label() == "together"


def test_cluster_steps_come_first_and_are_not_node_sequences():
    w = Wave("healthy", (Step("wait-healthy", args=(("scope", "dc1"),)), Step("wait-healthy", args=(("scope", "dc2"),))))
    ws = schedule_wave(w, 32)
    assert [s.arg("scope") for s in ws.cluster_steps] == ["dc1", "dc2"] and ws.batches == ()
    assert ws.label() == "one at a time"


def test_a_together_wave_must_be_parallel():
    with pytest.raises(ValueError, match="together"):
        Wave("w", (), parallel=False, together=True)


def test_max_parallel_nodes_below_one_is_refused():
    with pytest.raises(ValueError):
        schedule_wave(_wave(2), 0)


# ---------------------------------------------------------------------------- whole plans
@pytest.mark.parametrize("per_zone", [14, 32])  # 42 and 96 nodes
def test_the_flip_of_a_large_cluster_is_one_batch_and_the_rest_is_bounded(per_zone):
    plan = _plan({z: per_zone for z in ZONES}, mode="3", max_parallel_nodes=32)
    n = 3 * per_zone
    sched = {ps.phase: ps for ps in schedule(plan)}
    flip = {ws.wave: ws for ws in sched["flip"].waves}
    for name in ("stop", "switch", "start"):
        assert flip[name].rule == "together" and [len(b) for b in flip[name].batches] == [n]
    # the waves around it stay bounded by the SSH fan-out
    stage = sched["stage"].waves[0]
    assert stage.rule == "bounded" and max(len(b) for b in stage.batches) == 32 and len(stage.nodes) == n
    rolling = sched["rolling-backup"].waves[0]
    assert max(len(b) for b in rolling.batches) == min(32, per_zone)


def test_schedule_uses_the_plans_max_parallel_nodes_unless_given():
    plan = _plan({z: 2 for z in ZONES}, max_parallel_nodes=1)
    pre = next(ps for ps in schedule(plan) if ps.phase == "preflight").waves[0]
    assert [len(b) for b in pre.batches] == [1] * 6
    pre = next(ps for ps in schedule(plan, 4) if ps.phase == "preflight").waves[0]
    assert [len(b) for b in pre.batches] == [4, 2]


def test_simple_procedure_flags_nothing_together_and_zones_in_parallel_shapes_its_offline_waves():
    plan = _plan({z: 2 for z in ZONES}, procedure="simple", mode="3", zones_in_parallel=False)
    assert not [w for ph in plan.phases for w in ph.waves if w.together]
    sched = {ps.phase: ps for ps in schedule(plan)}
    assert [ws.nodes for ws in sched["backup"].waves] == [("n1", "n2"), ("n3", "n4"), ("n5", "n6")]
    par = _plan({z: 2 for z in ZONES}, procedure="simple", mode="3", zones_in_parallel=True)
    backup = next(ps for ps in schedule(par) if ps.phase == "backup")
    assert [ws.nodes for ws in backup.waves] == [("n1", "n2", "n3", "n4", "n5", "n6")]
