"""Fault-matrix row 26 (``docs/faults.md``): a node's first anti-entropy sync after its start,
landing during another node's offline repair, misses a counter-table partition (the peer is
down) until the next full sync.

A whole minimal-downtime migration on a 3x1 lab (the engine's executor, no Prefect) with the
daemons' first anti-entropy sync brought forward to 3 s after each start, so that each node
restarted on 0.8 syncs while the next round's node is stopped for its offline repair. The
migration's ``repair-after`` phase (``repair tables``: a full sync on every node, then the
``sync-after`` gate) runs after the last offline repair, before the counters are checked:
the run ends done with every bucket counter equal to the ground truth. Every question is
recorded; a gate question is answered ``wait_more`` (a person's answer), approvals approve.
"""

from __future__ import annotations

import time

import pytest

from garage_migrate.cluster_lock import ClusterLock, RunIdentity, lock_nodes
from garage_migrate.executor import Answer, EngineSteps, run_migration
from garage_migrate.ledger import Ledger
from garage_migrate.plan import MigrationOptions
from garage_migrate.runtime import open_runtime, plan_for
from tests.conftest import run
from tests.lab.test_security_lab import Recorder

OPTS = MigrationOptions(watch_s=0.0, gate_deadline_s=90.0, gate_consecutive=2)


class Person:
    """Approves approvals; answers a gate question ``wait_more`` (never ``proceed_anyway``)."""

    def __init__(self):
        self.asked: list[tuple[str, str]] = []

    async def ask(self, kind, key, description, choices=()):
        self.asked.append((kind, key))
        action = "approve" if kind == "approval" else "wait_more" if "wait_more" in choices else "abort"
        return Answer(action=action, note="row 26", pause_key=key, flow_run_id="")


async def _hold(rt):
    lock = ClusterLock(rt.shell, lock_nodes(rt.inv, rt.facts), rt.ledger, "minimal-downtime", RunIdentity(kind="test"))
    await lock.acquire()
    return lock


@pytest.mark.timeout(900)
def test_fault_26_first_anti_entropy_sync_during_an_offline_repair_is_made_whole_by_the_full_sync_after(make_lab):
    from tests.e2e.test_procedures import _assert_buckets_match_ground_truth

    # each offline repair held 6 s (a real one takes minutes): a node restarted on 0.8 syncs 3 s
    # after its start, and the next round's node, stopped about a second after that start, is
    # then still down however fast this machine is (with no hold, a fast machine could finish
    # the next node's whole round before the sync, and nothing failed to reproduce)
    lab = make_lab(version="0.7.3", zones=3, per_zone=1,
                   knobs={"anti_entropy_startup_s": 3.0, "offline_repair_delay_s": 6.0})
    person = Person()

    async def go():
        async with open_runtime(str(lab.dir / "inventory.yaml"), "minimal-downtime", "fault-26") as rt:
            res = await run_migration(rt, plan_for(rt, "minimal-downtime", OPTS), OPTS, dry_run=False, hold=_hold,
                                      decider_for=lambda lock: person, steps=EngineSteps(), reporter=Recorder(),
                                      auto_approve=True)
            return res, rt.ledger.path
    t0 = time.monotonic()
    res, path = run(go(), limit=800)
    print(f"minimal-downtime on 3x1 with the first anti-entropy sync at 3 s: {time.monotonic() - t0:.0f}s; "
          f"asked {person.asked}")
    assert res["state"] == "done", res
    # not vacuous: a restarted node's sync of the counter table really failed on a stopped peer
    failed = [n["name"] for n in lab.nodes if "Error in worker bucket_object_counter sync" in
              (lab.node_dir(n["name"]) / "log" / "garage.log").read_text(errors="replace")]
    assert failed, "no counter-table sync failed: the lab did not reproduce the fault"
    led = Ledger.load(path)
    # the full sync after the offline repairs ran, and its gate passed, before the counters
    assert led.gate("sync-after") is not None and led.gate("sync-after").status == "passed", led.gate("sync-after")
    assert led.doc.state == "done"
    assert not [k for k, _ in person.asked if k == "counters"], person.asked
    truth = lab.inspect(checksums=False)["nodes"]
    assert {t["running_version"] for t in truth.values()} == {"0.8.7"}
    _assert_buckets_match_ground_truth(lab, lab.nodes[0]["name"], settle_s=5.0)
