"""Steps carry their actions as values (issue 9 §1, §3): the plan lists, per node and step, the
commands that will run; its JSON shows them; the journal refuses an act a step does not list."""

from __future__ import annotations

import asyncio
import json

import pytest

from garage_migrate import actions as A
from garage_migrate import commands as C
from garage_migrate.errors import NotInPlanError
from garage_migrate.journal import CommandJournal, JournalShell, in_step
from garage_migrate.plan import MigrationOptions, make_plan
from garage_migrate.ssh import Result

from builders import inventory_and_facts

ZONES = {"z1": 2, "z2": 2, "z3": 2}


def _plan(procedure):
    inv, facts = inventory_and_facts(ZONES)
    return inv, facts, make_plan(inv, facts, procedure, "m1", MigrationOptions())


@pytest.mark.parametrize("procedure", ["simple", "minimal-downtime"])
def test_plan_json_lists_every_action_with_its_node_kind_argv_and_command_line(procedure):
    _inv, _facts, plan = _plan(procedure)
    doc = json.loads(json.dumps(plan.to_json()))
    assert doc["digest"] == plan.digest() and doc["procedure"] == procedure
    actions = [a for ph in doc["phases"] for w in ph["waves"] for s in w["steps"] for a in s["actions"]]
    assert actions and {a["kind"] for a in actions} == {"observe", "act"}
    for a in actions:
        assert set(a) == {"node", "kind", "argv", "command", "on_failure"} and a["node"].startswith("n")
    # the JSON's acts are the plan's, in order, and every node step of a node lists its acts on that node
    assert [(a["node"], a["command"]) for a in actions if a["kind"] == "act"] == \
           [(n, c) for n, _ph, _k, c in plan.acts()]
    for ph in doc["phases"]:
        for w in ph["waves"]:
            for s in w["steps"]:
                if s["node"] is not None:
                    assert {a["node"] for a in s["actions"]} <= {s["node"]}


def test_the_stop_step_lists_the_signal_then_the_service_stop_with_the_timeout_it_runs():
    inv, facts, plan = _plan("simple")
    stop = next(s for s in plan.steps() if s.kind == "stop" and s.node == "n1")
    ctx = inv.node("n1").ctx
    assert [a.op for a in stop.acts] == [C.service_signal(ctx, "SIGINT"),
                                         C.service_stop(ctx, timeout=A.SERVICE_STOP_TIMEOUT)]


def test_the_controller_backup_streams_to_the_archive_the_backup_engine_writes():
    from garage_migrate.backup.manifest import backup_paths

    inv, _facts, plan = _plan("minimal-downtime")
    step = next(s for s in plan.steps() if s.kind == "backup" and s.node == "n3")
    (stream,) = [a.op for a in step.actions if isinstance(a.op, A.LocalStream)]
    assert stream.dest == str(backup_paths(inv.backup.root, inv.cluster, "m1", "n3", "0.7.3").archive)
    assert stream.kind == "observe" and not step.acts  # read-only on the node


def test_the_backup_compresses_on_nodes_that_have_zstd_unless_the_inventory_says_controller():
    import dataclasses

    inv, facts = inventory_and_facts(ZONES)
    # discovery found zstd everywhere but on n3
    facts = dataclasses.replace(facts, nodes=tuple(dataclasses.replace(f, zstd_version=None if f.name == "n3"
                                                                       else "1.5.4") for f in facts.nodes))
    plan = make_plan(inv, facts, "simple", "m1", MigrationOptions())
    streams = {s.node: next(a.op for a in s.actions if isinstance(a.op, A.LocalStream))
               for s in plan.steps() if s.kind == "backup"}
    node_side = C.tar_zstd_stream("/var/lib/garage/meta", level=3, timeout=A.backup_timeout(None))
    assert streams["n1"].source == node_side and streams["n3"].source == C.tar_stream(
        "/var/lib/garage/meta", timeout=A.backup_timeout(None))
    shown = [a["command"] for ph in plan.to_json()["phases"] for w in ph["waves"] for st in w["steps"]
             for a in st["actions"] if a["node"] == "n1" and st["kind"] == "backup"]
    assert node_side.render() in shown  # the plan shows the very command
    forced = inv.model_copy(update={"backup": inv.backup.model_copy(update={"compress_on": "controller"})})
    assert A.for_node_backup(forced, facts, "m1", "n1", "0.7.3").compress_on == "controller"
    assert A.for_node_backup(inv, facts, "m1", "n1", "0.7.3").compress_on == "node"


def test_the_repair_is_listed_on_every_node_and_runs_on_one():
    _inv, _facts, plan = _plan("simple")
    rep = next(s for s in plan.steps() if s.kind == "repair")
    assert rep.one_of and [a.node for a in rep.acts] == [f"n{i}" for i in range(1, 7)]


def test_backup_timeout_is_stable_for_small_changes_of_the_size():
    assert A.backup_timeout(None) == A.backup_timeout(10) == A.backup_timeout(400 << 20)
    assert A.backup_timeout(700 << 20) == A.backup_timeout(1000 << 20) < A.backup_timeout(1100 << 20)


class _Shell:
    def __init__(self):
        self.ran = []

    async def run(self, cmd, check=True):
        self.ran.append(cmd)
        return Result(stdout="", stderr="", exit_status=0, signal=None, returncode=0)

    async def put_file(self, local, remote, **kw):
        self.ran.append(("put", remote))


def test_an_act_the_plan_step_does_not_list_is_refused_before_it_runs_and_journalled(tmp_path):
    inv, _facts, plan = _plan("simple")
    stop = next(s for s in plan.steps() if s.kind == "stop" and s.node == "n1")
    j = CommandJournal(tmp_path / "commands.jsonl")
    inner = _Shell()
    shell = JournalShell(inner, "n1", j)
    ctx = inv.node("n1").ctx

    async def go():
        with in_step("stop", "stop", allowed=stop.allowed()):
            await shell.run(C.service_signal(ctx, "SIGINT"))  # listed
            await shell.run(C.service_status(ctx), check=False)  # an observation: never checked
            await shell.run(C.service_start(ctx))  # not listed for a stop
    with pytest.raises(NotInPlanError, match="does not list"):
        asyncio.run(go())
    assert inner.ran == [C.service_signal(ctx, "SIGINT"), C.service_status(ctx)]
    assert [e["event"] for e in j.read()] == ["started", "finished", "finished", "refused"]
    assert j.read()[-1]["command"] == C.service_start(ctx).render()


def test_the_same_act_on_another_node_is_refused_and_an_upload_is_checked_too(tmp_path):
    inv, _facts, plan = _plan("simple")
    stop = next(s for s in plan.steps() if s.kind == "stop" and s.node == "n1")
    stage = next(s for s in plan.steps() if s.kind == "stage" and s.node == "n2")
    j = CommandJournal(tmp_path / "commands.jsonl")
    other = JournalShell(_Shell(), "n2", j)

    async def go():
        with in_step("stage", "stage", allowed=stage.allowed()):
            await other.put_file("/tmp/garage", A.spec(inv, _facts, "n2").staged_path)  # listed
            with pytest.raises(NotInPlanError):
                await other.put_file("/tmp/garage", "/usr/local/bin/garage")
        with in_step("stop", "stop", allowed=stop.allowed()):
            with pytest.raises(NotInPlanError):
                await other.run(C.service_signal(inv.node("n2").ctx, "SIGINT"))  # n1's step
    asyncio.run(go())
    assert [e["event"] for e in j.read()] == ["started", "finished", "refused", "refused"]


def test_outside_a_plan_step_nothing_is_checked(tmp_path):
    inv, _f, _p = _plan("simple")
    j = CommandJournal(tmp_path / "commands.jsonl")
    shell = JournalShell(_Shell(), "n1", j)
    with in_step(None, "cluster-lock"):
        asyncio.run(shell.run(C.service_start(inv.node("n1").ctx)))
    assert [e["event"] for e in j.read()] == ["started", "finished"]
