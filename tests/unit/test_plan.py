"""The planner: pure, from facts + options to a frozen plan; unsafe policies refused."""

from __future__ import annotations

import pytest

from garage_migrate.errors import PlanError
from garage_migrate.plan import FanoutPolicy, MigrationOptions, make_plan

from builders import inventory_and_facts


def _inventory(zones: dict[str, int], mode: str = "3"):
    return inventory_and_facts(zones, mode)


def test_simple_plan_follows_the_guide_order():
    inv, facts = _inventory({"dc1": 2, "dc2": 2, "dc3": 2})
    plan = make_plan(inv, facts, "simple", "m1")
    assert [p.name for p in plan.phases] == [
        "preflight", "stage", "disable-api", "repair", "sync-gate", "approve-shutdown", "stop", "backup", "install",
        "offline-repair", "start", "repair-after", "counters", "approve-reopen", "enable-api", "watch"]
    # offline repair of every node comes before any 0.8 start
    kinds = [s.kind for s in plan.steps()]
    # the binary is staged (and checked) before anything disrupts a client; switched offline
    assert max(i for i, k in enumerate(kinds) if k == "stage") < kinds.index("disable-api")
    assert [s.kind for w in plan.phase("install").waves for s in w.steps] == ["switch"] * 6
    assert max(i for i, k in enumerate(kinds) if k == "offline-repair") < kinds.index("start")
    assert plan.phase("approve-shutdown").risky and plan.phase("approve-reopen").risky


def test_minimal_downtime_plan_takes_one_zone_down_at_a_time_then_flips_all():
    inv, facts = _inventory({"dc1": 2, "dc2": 2, "dc3": 2})
    plan = make_plan(inv, facts, "minimal-downtime", "m1")
    rolling = plan.phase("rolling-backup")
    zones = [w.zone for w in rolling.waves if w.name.startswith("backup-")]
    assert zones == ["dc1", "dc2", "dc3"]
    for w in rolling.waves:
        if w.name.startswith("backup-"):
            assert {s.node for s in w.steps} == {n.name for n in facts.nodes if n.zone == w.zone}
            per_node = [s.kind for s in w.steps if s.node == w.steps[0].node]
            assert per_node == ["stop", "backup", "start"]
    flip = plan.phase("flip")
    assert [w.name for w in flip.waves] == ["stop", "switch", "start", "healthy"]
    assert len(flip.waves[0].steps) == 6  # every node stops together
    assert all(s.arg("version") == "0.8.7" for s in flip.waves[2].steps)


def test_planner_refuses_two_zones_down_with_replication_3():
    inv, facts = _inventory({"dc1": 1, "dc2": 1, "dc3": 1})
    with pytest.raises(PlanError, match="max_zones_down=2 is unsafe"):
        make_plan(inv, facts, "minimal-downtime", "m1", MigrationOptions(fanout=FanoutPolicy(max_zones_down=2)))


def test_planner_refuses_minimal_downtime_with_two_zones():
    inv, facts = _inventory({"dc1": 2, "dc2": 2})
    with pytest.raises(PlanError, match="2 zone"):
        make_plan(inv, facts, "minimal-downtime", "m1")


def test_planner_refuses_minimal_downtime_with_replication_2():
    inv, facts = _inventory({"dc1": 1, "dc2": 1, "dc3": 1}, mode="2")
    with pytest.raises(PlanError, match="unsafe"):
        make_plan(inv, facts, "minimal-downtime", "m1")


def test_canary_pauses_after_the_chosen_zone():
    inv, facts = _inventory({"dc1": 1, "dc2": 1, "dc3": 1})
    plan = make_plan(inv, facts, "minimal-downtime", "m1", MigrationOptions(fanout=FanoutPolicy(stop_after_zone="dc1")))
    names = [w.name for w in plan.phase("rolling-backup").waves]
    assert names.index("canary-dc1") == names.index("healthy-dc1") + 1
    with pytest.raises(PlanError, match="not a zone"):
        make_plan(inv, facts, "minimal-downtime", "m1", MigrationOptions(fanout=FanoutPolicy(stop_after_zone="dcX")))


def test_plan_renders_commands_and_is_deterministic():
    inv, facts = _inventory({"dc1": 1, "dc2": 1, "dc3": 1})
    a = make_plan(inv, facts, "minimal-downtime", "m1")
    b = make_plan(inv, facts, "minimal-downtime", "m1")
    assert a == b and a.digest() == b.digest()
    text = a.to_text()
    assert "systemctl kill -s SIGINT garage" in text  # 0.7 stops gracefully on SIGINT only
    assert "/usr/local/bin/garage -c /etc/garage.toml offline-repair --yes object_counters" in text
    assert "repair --all-nodes --yes tables" in text
    md = a.to_markdown()
    assert md.startswith("### Migration plan `m1`") and "(needs approval)" in md


def test_zone_of_two_nodes_warns_about_bucket_changes():
    inv, facts = _inventory({"dc1": 2, "dc2": 2, "dc3": 2})
    plan = make_plan(inv, facts, "minimal-downtime", "m1")
    assert any("bucket and key changes fail" in w for w in plan.warnings)


# ---------------------------------------------------------------------------- the fan-out policy shapes the plan
def _fanout_plan(zones, procedure="minimal-downtime", mode="3-dangerous", **fanout):
    inv, facts = _inventory(zones, mode)
    return make_plan(inv, facts, procedure, "m1", MigrationOptions(fanout=FanoutPolicy(**fanout)))


def test_max_zones_down_2_takes_two_zones_down_per_round_and_changes_the_digest():
    zones = {"dc1": 1, "dc2": 1, "dc3": 1}
    one, two = _fanout_plan(zones, max_zones_down=1), _fanout_plan(zones, max_zones_down=2)
    assert one != two and one.digest() != two.digest()
    for phase, prefix in (("rolling-backup", "backup-"), ("offline-repair", "repair-")):
        rounds = [[s.node for s in w.steps if s.kind == "stop"] for w in two.phase(phase).waves
                  if w.name.startswith(prefix)]
        assert rounds == [["n1", "n2"], ["n3"]], phase
        assert [[s.node for s in w.steps if s.kind == "stop"] for w in one.phase(phase).waves
                if w.name.startswith(prefix)] == [["n1"], ["n2"], ["n3"]]
        # the next round waits until every zone of the round is healthy
        healthy = [w for w in two.phase(phase).waves if w.name.startswith("healthy-")]
        assert [[s.arg("scope") for s in w.steps] for w in healthy] == [["dc1", "dc2"], ["dc3"]]
    assert "dc1 + dc2: stop, backup, start on n1, n2" in two.to_markdown()
    assert "2 zones at a time" in two.phase("rolling-backup").title
    # two nodes down at once: bucket and key changes fail meanwhile, even with one node per zone
    assert any("bucket and key changes fail" in w for w in two.warnings)
    assert not any("bucket and key changes fail" in w for w in one.warnings)


def test_canary_comes_after_the_round_that_holds_the_zone():
    plan = _fanout_plan({"dc1": 1, "dc2": 1, "dc3": 1}, max_zones_down=2, stop_after_zone="dc2")
    names = [w.name for w in plan.phase("rolling-backup").waves]
    assert names == ["backup-dc1+dc2", "healthy-dc1+dc2", "canary-dc2", "backup-dc3", "healthy-dc3"]
    assert not [w for w in plan.phase("offline-repair").waves if w.name.startswith("canary")]


def test_zones_in_parallel_shapes_the_simple_offline_phases():
    zones = {"dc1": 2, "dc2": 2, "dc3": 2}
    par, seq = (_fanout_plan(zones, "simple", "3", zones_in_parallel=v) for v in (True, False))
    assert par.digest() != seq.digest()
    for phase in ("backup", "offline-repair"):
        assert [w.name for w in par.phase(phase).waves] == [phase]
        assert [w.zone for w in seq.phase(phase).waves] == ["dc1", "dc2", "dc3"]
    # the API changes restart every node at once whatever the policy: clients are cut anyway
    assert [w.name for w in seq.phase("disable-api").waves] == ["disable-api", "healthy"]


def test_the_flip_waves_run_together_and_nothing_else_does():
    plan = _fanout_plan({"dc1": 2, "dc2": 2, "dc3": 2}, mode="3", max_parallel_nodes=2)
    together = [(ph.name, w.name) for ph in plan.phases for w in ph.waves if w.together]
    assert together == [("flip", "stop"), ("flip", "switch"), ("flip", "start")]
    md = plan.to_markdown()
    # each wave's line is the summary of its collapsed commands (more than three of them)
    # the flip's steps: one helper call per node each; the stage uploads the helper too
    assert "<summary>stop on n1, n2, n3, n4, n5, n6 (together): 6 commands</summary>" in md
    assert "<summary>stage on n1, n2, n3, n4, n5, n6 (up to 2 at once, in 3 batches): 12 commands</summary>" in md
    assert md.count("(together)") == 3  # only the flip's three waves, never a node's own sequence
    assert "wave start (together)" in plan.to_text()


def test_max_parallel_nodes_is_part_of_the_plan_and_its_digest():
    zones = {"dc1": 1, "dc2": 1, "dc3": 1}
    a, b = _fanout_plan(zones, mode="3", max_parallel_nodes=1), _fanout_plan(zones, mode="3", max_parallel_nodes=2)
    assert (a.max_parallel_nodes, b.max_parallel_nodes) == (1, 2) and a.digest() != b.digest()
    assert "- preflight on n1, n2, n3 (one at a time)" in a.to_markdown()


def test_max_zones_down_is_refused_beyond_what_the_replication_mode_survives():
    zones = {"dc1": 1, "dc2": 1, "dc3": 1}
    with pytest.raises(PlanError, match="max_zones_down=3 is unsafe"):
        _fanout_plan(zones, max_zones_down=3)  # 3-dangerous: write quorum 1 of 3, two zones may go
    with pytest.raises(PlanError, match="max_zones_down=2 is unsafe"):
        _fanout_plan(zones, mode="3-degraded", max_zones_down=2)
