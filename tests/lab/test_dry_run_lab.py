"""The dry run is the same executor (issue 9 §4): on a real lab, both procedures run through the
executor and the real steps over shells that record acts instead of running them. Nothing on
the lab changes, no ledger is written, its journal goes to a dry-run directory beside the
migration's, and its acts are exactly the plan's, per node and step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from garage_migrate.executor import NullReporter, run_migration
from garage_migrate.executor.dryrun import acts_not_run
from garage_migrate.plan import MigrationOptions
from garage_migrate.runtime import open_runtime, plan_for
from tests.conftest import run

OPTS = MigrationOptions(watch_s=0.0, gate_deadline_s=5.0, gate_consecutive=1)


@pytest.fixture(scope="module")
def lab(module_lab):
    return module_lab(version="0.7.3", zones=3, per_zone=2)


def _snapshot(lab) -> dict:
    nodes = lab.inspect(checksums=False)["nodes"]
    configs = {n["name"]: (lab.node_dir(n["name"]) / "etc/garage.toml").read_bytes() for n in lab.nodes}
    events = (lab.dir / "events.jsonl").read_text() if (lab.dir / "events.jsonl").exists() else ""
    written = {n["name"]: sorted(str(p.relative_to(lab.node_dir(n["name"])))
                                 for p in lab.node_dir(n["name"]).rglob("*garage-*") if "meta" not in p.parts)
               for n in lab.nodes}  # staged binaries, kept configs, temp files
    snap = {"nodes": {k: {f: t[f] for f in ("running_version", "binary_target", "pid", "lock_holder")}
                      for k, t in nodes.items()}, "configs": configs, "events": events, "written": written}
    assert all(v["pid"] for v in snap["nodes"].values())  # not vacuous: every daemon runs
    return snap


_RUNS: dict = {}  # one dry run per procedure for the module (the CLI test reads the simple one)


def _dry_run(lab, procedure: str):
    if procedure not in _RUNS:
        _RUNS[procedure] = _dry_run_now(lab, procedure)
    return _RUNS[procedure]


def _dry_run_now(lab, procedure: str):
    async def go():
        async with open_runtime(str(lab.dir / "inventory.yaml"), procedure, persist=False) as rt:
            plan = plan_for(rt, procedure, OPTS)

            async def never(_rt):
                raise AssertionError("a dry run took the cluster lock")
            res = await run_migration(rt, plan, OPTS, dry_run=True, hold=never, decider_for=None, steps=None,
                                      reporter=NullReporter())
            return plan, res, rt.ledger.path
    return run(go(), limit=300)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("procedure", ["simple", "minimal-downtime"])
def test_a_dry_run_records_exactly_the_plans_acts_and_changes_nothing(lab, procedure):
    before = _snapshot(lab)
    plan, res, ledger_path = _RUNS[procedure] = _dry_run_now(lab, procedure)
    assert res["dry_run"] is True and res["plan_digest"] == plan.digest()
    assert _snapshot(lab) == before, "a dry run changed the lab"
    assert not Path(ledger_path).exists(), "a dry run wrote a ledger"
    assert not list(Path(ledger_path).parent.glob("*/meta-*.tar.zst")), "a dry run took a backup"

    d = Path(res["dir"])
    assert d.parent.name == Path(ledger_path).parent.name + ".dry-run" and d.stat().st_mode & 0o077 == 0
    assert json.loads((d / f"plan-{plan.digest()}.json").read_text()) == plan.to_json()
    lines = [json.loads(x) for x in (d / "commands.jsonl").read_text().splitlines()]
    missing, extra = acts_not_run(plan, lines)
    assert (missing, extra) == (set(), set()), (sorted(missing)[:5], sorted(extra)[:5])
    assert res["acts"] == sum(1 for e in lines if e["event"] == "started") > 0
    # every act of the plan was recorded once per node and step (one-of steps on one node)
    recorded = [(e["node"], e["phase"], e["step"], e["command"]) for e in lines if e["event"] == "started"]
    assert len(recorded) == len(set(recorded))
    # the observations that follow a recorded stop saw a stopped node: the stop steps (which
    # check that nothing holds sled's lock) passed, after reading /proc/locks on every node
    probes = [e for e in lines if e["event"] == "finished" and e["kind"] == "observe"
              and e["command"].endswith("cat /proc/locks") and e["step"] == "stop"]
    assert {e["node"] for e in probes} == {n["name"] for n in lab.nodes}
    assert all(e["exit_status"] == 0 for e in probes)
    # the questions a person is asked are listed, answered by the dry run's rule only
    gates = {"simple": {"approve-shutdown", "approve-reopen"}, "minimal-downtime": {"approve-flip"}}[procedure]
    assert gates <= {key for kind, key, _a in res["questions"] if kind == "approval"}


def test_a_dry_run_of_the_cli_prints_what_would_run(lab, capsys):
    """``garage-migrate plan --json`` is the plan the dry run executed (the module's simple one)."""
    from garage_migrate import cli

    assert cli.main(["plan", "--inventory", str(lab.dir / "inventory.yaml"), "--procedure", "simple", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    plan, _res, _p = _dry_run(lab, "simple")
    assert doc == plan.to_json()
