"""Commands run with the least privilege configured (issue 12 §6): ``sudo -n`` only where the
inventory asks for it (``ssh.sudo``), and even then not for what needs no privilege.

The lab security test checks the same of every command a real run journalled.
"""

from __future__ import annotations

import pytest
from builders import inventory_and_facts

from garage_migrate.plan import MigrationOptions, make_plan


def _plan_commands(sudo: bool, procedure: str):
    inv, facts = inventory_and_facts({"dc1": 1, "dc2": 1, "dc3": 1})
    inv = inv.model_copy(update={"ssh": inv.ssh.model_copy(update={"sudo": sudo})})
    plan = make_plan(inv, facts, procedure, "m1", MigrationOptions(extra_repairs=("versions",)))
    return [a.op for step in plan.steps() for a in step.actions if hasattr(a.op, "sudo")]


@pytest.mark.parametrize("procedure", ["simple", "minimal-downtime"])
def test_no_sudo_unless_the_inventory_asks(procedure):
    cmds = _plan_commands(False, procedure)
    assert len(cmds) > 30
    assert [c.render() for c in cmds if c.sudo or "sudo" in c.words()] == []


@pytest.mark.parametrize("procedure", ["simple", "minimal-downtime"])
def test_with_sudo_only_what_needs_privilege_goes_through_it(procedure):
    cmds = _plan_commands(True, procedure)
    privileged = {c.argv[0].rsplit("/", 1)[-1] for c in cmds if c.sudo}
    plain = {c.argv[0].rsplit("/", 1)[-1] for c in cmds if not c.sudo}
    # moving metadata, switching the binary, driving the service need root on a real node
    # (minimal-downtime's flip does its switch and service calls through the flip helper)
    assert ({"mv", "ln", "systemctl"} if procedure == "simple" else {"systemctl", "garage-migrate-flip"}) <= privileged
    # reading free space and where a link points does not
    # (the flip helper reads its links itself: minimal-downtime's plan lists no readlink)
    assert {"df", "readlink"} - ({"readlink"} if procedure != "simple" else set()) <= plain
    assert not {"df", "readlink"} & privileged
    assert all(c.render().startswith("sudo -n ") for c in cmds if c.sudo)  # never a password prompt
