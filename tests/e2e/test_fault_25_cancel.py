"""Fault row 25, tried as an operator does: a real ``prefect server start``, a process worker,
``prefect deploy --all``, a run of the minimal-downtime deployment, and a cancel set through
the Prefect API exactly as the UI's Cancel button sets it (``Cancelling``, forced) while the
simultaneous restart is under way, its stop held by a ``slow-stop`` fault on one node.

The worker then sends the flow's process SIGTERM; the flip holds it until its barrier is
complete (:mod:`garage_migrate.executor.deferral`), records ``cancel-deferred`` and ends the
run Cancelled. Asserted from the lab's ground truth (service events): no moment had a node on
0.7 while another was on 0.8, every node ends on 0.8; then a new run of the same migration
completes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from garage_migrate.ledger import Ledger
from garage_migrate.plan import MigrationOptions
from tests.e2e.crashrun import split_moments
from tests.e2e.stack import service_events

FAST = MigrationOptions(watch_s=2.0, gate_deadline_s=90.0, gate_consecutive=2).model_dump(mode="json")
MD = "minimal-downtime-migration/minimal-downtime"


def _ledger(lab) -> Ledger | None:
    inv = yaml.safe_load((lab.dir / "inventory.yaml").read_text())
    path = Path(inv["backup"]["root"]) / inv["cluster"] / f"{inv['cluster']}-to-v0.8.7".lower() / "ledger.json"
    try:
        return Ledger.load(path)
    except (OSError, ValueError):
        return None


@pytest.mark.timeout(900)
def test_fault_25_a_cancel_during_the_flip_finishes_its_barrier_and_never_splits_the_cluster(stack, make_lab):
    from prefect.states import Cancelling

    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    slow = "node-c1"
    params = {"inventory": str(lab.dir / "inventory.yaml"), "options": FAST, "auto_approve": True,
              "pause_timeout": 900}
    frid = stack.run_deployment(MD, **params)
    deadline, armed = time.monotonic() + 500, False
    while True:  # the flip is approved: hold one node's stop, then wait for the flip's stops to be released
        led = _ledger(lab)
        if led is not None and not armed and led.gate("approve-flip") is not None and led.gate("approve-flip").decision:
            lab.fault(slow, "slow-stop", seconds=20)
            armed = True
        if armed and led is not None and led.step(slow, "flip:stop") is not None \
                and led.step(slow, "flip:stop").status == "running":
            break
        assert time.monotonic() < deadline and not stack.flow_run(frid).state.is_final(), stack.logs()
        time.sleep(0.1)
    t_cancel = time.time()
    stack.set_state(frid, Cancelling(name="Cancelling"))  # what the UI's Cancel sends (force=True)
    fr = stack.wait_final(frid, timeout=240)
    lab.clear_faults(slow)
    led = _ledger(lab)
    assert fr.state.is_cancelled(), (fr.state, [(e.kind, e.message) for e in led.doc.events][-6:], stack.logs()[-3000:])
    assert split_moments(lab) == []
    nodes = lab.inspect(checksums=False)["nodes"]
    assert {n: v["running_version"] for n, v in nodes.items()} == {n: "0.8.7" for n in nodes}
    ev = [e for e in led.doc.events if e.kind == "cancel-deferred"]
    assert len(ev) == 1 and "SIGTERM" in ev[0].message and "every node is on 0.8.7" in ev[0].message, led.doc.events
    assert ev[0].t >= t_cancel
    # the flip started every node on 0.8 exactly once (service events: nothing started twice)
    starts = sorted(e["node"] for e in service_events(lab, 0) if e["event"] == "start"
                    and e.get("binary") == "garage-v0.8.7")
    assert starts == sorted(nodes), starts
    # a new run of the same migration resumes after the flip and completes
    again = stack.wait_final(stack.run_deployment(MD, **params), timeout=600)
    assert again.state.is_completed(), (again.state, stack.logs()[-4000:])
    assert split_moments(lab) == []
    assert _ledger(lab).doc.state == "done"
