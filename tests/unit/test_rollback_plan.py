"""The rollback is a plan (issue 9 §2): its phases, its approval, and the very commands it runs."""

from __future__ import annotations

import pytest

from garage_migrate.errors import PlanError
from garage_migrate.executor.rollback import rollback_plan_for
from garage_migrate.rollback_plan import PHASES

from builders import backed_up_runtime as _rt


def test_the_rollback_plan_is_approved_then_stops_switches_restores_and_starts_every_node(tmp_path):
    plan = rollback_plan_for(_rt(tmp_path), tag="rb-x")
    assert plan.procedure == "rollback"
    assert [p.name for p in plan.phases] == ["approve-rollback", *PHASES]
    assert plan.phases[0].risky and plan.phases[0].waves[0].steps[0].arg("gate") == "rollback"
    stop = plan.phase("rollback-stop").waves[0]
    assert stop.together and {s.node for s in stop.steps} == {"n1", "n2", "n3"}
    assert {s.arg("version") for s in plan.phase("rollback-start").waves[0].steps} == {"0.7.3"}
    assert plan.warnings and "lost" in plan.warnings[0]
    # without its approval when the rollback is a person's answer already
    assert rollback_plan_for(_rt(tmp_path / "b"), tag="rb-x", approve=False).phases[0].name == "rollback-stop"


def test_the_restore_lists_its_commands_named_by_the_tag_and_puts_the_old_dir_back_only_on_failure(tmp_path):
    rt = _rt(tmp_path)
    plan = rollback_plan_for(rt, tag="rb-20261201")
    restore = next(s for s in plan.phase("rollback-restore").waves[0].steps if s.node == "n1")
    acts = [a.op.render() for a in restore.acts if not a.on_failure]
    meta = "/var/lib/garage/meta"
    assert acts[0] == "sftp put /var/lib/garage/.meta.restore-rb-20261201.tar.zst"
    assert any("tar" in c and ".meta.restore-rb-20261201" in c for c in acts)
    assert f"mv -T {meta} {meta}.pre-restore-rb-20261201" in " ".join(acts)
    assert any(c.endswith(f"mv -T /var/lib/garage/.meta.restore-rb-20261201 {meta}") for c in acts)
    (back,) = [a.op.render() for a in restore.acts if a.on_failure]
    assert back.endswith(f"mv -T {meta}.pre-restore-rb-20261201 {meta}")
    switch = next(s for s in plan.phase("rollback-switch").waves[0].steps if s.node == "n1")
    assert switch.arg("to") == "source" and any("/usr/local/bin/garage" in a.op.render() for a in switch.acts)
    # the tag is part of the plan: another rollback is another plan
    assert rollback_plan_for(rt, tag="rb-other").digest() != plan.digest()
    assert rollback_plan_for(rt, tag="rb-20261201").digest() == plan.digest()


def test_no_rollback_plan_for_a_node_without_a_verified_backup(tmp_path):
    with pytest.raises(PlanError, match="cannot roll back n3"):
        rollback_plan_for(_rt(tmp_path, backed_up=("n1", "n2")), tag="rb-x")
    assert rollback_plan_for(_rt(tmp_path / "b", backed_up=("n1", "n2")), tag="rb-x", nodes=["n1", "n2"])
