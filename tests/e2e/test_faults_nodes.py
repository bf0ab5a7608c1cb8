"""Fault-matrix row 3 (``docs/faults.md``): a transient command failure, recovered by the
Prefect task's retries, in the real simple flow under the session's Prefect server.

The other rows of this helper's set halt, and a halt needs no task retry: they run on the
engine, cheaper (``tests/lab/test_faults_lab.py``).
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.faultrun import FlowRun, assert_done_and_nothing_lost, ledger_path

#: what Garage prints when a node does not answer a repair launch (src/garage/cli/cmd.rs)
UNREACHABLE = 'Could not launch repair on nodes: ["b7f2c0a1d3e4f5a6"] (1 errors)'


def _task_runs(lab, migration_id: str, name: str) -> list:
    """The task runs called ``name`` of this migration's simple flow runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        TaskRunFilter,
        TaskRunFilterName,
    )

    inv = str(lab.dir / "inventory.yaml")
    with get_client(sync_client=True) as client:
        flows = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["simple-migration"])))
        ids = {r.id for r in flows if r.parameters.get("inventory") == inv and r.parameters.get("migration_id") == migration_id}
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])))
    return [r for r in runs if r.flow_run_id in ids]


@pytest.mark.timeout(600)
def test_fault_03_transient_command_failure_twice_then_success_is_recovered_by_retry(make_lab, prefect_server):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    # the first two launches of `repair tables` from node-a1 fail as when a node does not answer
    # (the launch is a receipt: it is transient, TransportError); the third goes through
    lab.fault("node-a1", "fail-command", count=2, match="--all-nodes --yes tables", message=UNREACHABLE)
    mid = "fault-03"
    res, err = FlowRun("simple", lab, mid).run()
    assert err is None, repr(err)
    assert json.loads((lab.node_dir("node-a1") / "faults.json").read_text())["faults"] == []  # both used
    led = assert_done_and_nothing_lost(lab, res)
    # the journal: the same launch, twice refused, then done, with no question in between
    journal = [json.loads(x) for x in (ledger_path(lab, mid).parent / "commands.jsonl").read_text().splitlines()]
    launches = [j.get("exit_status") for j in journal if j.get("event") == "finished" and j.get("phase") == "repair"
                and "tables" in (j.get("argv") or []) and "repair" in (j.get("argv") or [])]
    assert launches == [1, 1, 0], launches
    assert not [e for e in led.doc.events if e.kind == "decision"]
    # and it was the task's retries that ran it again: the repair phase's task run ran three
    # times, the repair-after phase's (no fault left) once
    runs = _task_runs(lab, mid, "repair-tables")
    assert sorted(r.run_count for r in runs) == [1, 3], [(r.name, r.run_count, r.state_name) for r in runs]
