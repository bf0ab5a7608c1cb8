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
        "preflight", "disable-api", "repair", "sync-gate", "approve-shutdown", "stop", "backup", "install",
        "offline-repair", "start", "repair-after", "counters", "approve-reopen", "enable-api", "watch"]
    # offline repair of every node comes before any 0.8 start
    kinds = [s.kind for s in plan.steps()]
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
