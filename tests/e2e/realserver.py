"""What the PostgreSQL test and the browser test share: the lab they migrate, the options they
run with, and the checks of a minimal-downtime migration approved by a person and completed.

Both start the ``minimal-downtime`` deployment on a 3x1 lab and approve its one approval gate
(``approve-flip``, before every node restarts on 0.8); every other gate must pass on its own.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from garage_migrate.ledger import Ledger
from tests.e2e.stack import gate_of, service_events

MD = "minimal-downtime-migration/minimal-downtime"
TARGET = "0.8.7"
#: fast gates and a short watch (the deployment's form has the same fields)
OPTIONS = {"watch_s": 2.0, "gate_deadline_s": 90.0, "gate_consecutive": 2}
#: The 3x1 lab's periodic anti-entropy every 30 s instead of 10 min. On 3 nodes the offline
#: counter repairs run zone after zone ~7 s apart, so the first anti-entropy of the zone just
#: restarted (20 s after its start) can fall while the next zone is stopped: that node's
#: ``bucket_object_counter sync`` then shows consecutive errors until its next full sync, as
#: in Garage, and the sync-after gate would wait for it past its 90 s deadline.
LAB_KNOBS = {"anti_entropy_interval_s": 30.0}


def lab_spec() -> dict:
    """The arguments of ``make_lab`` for these tests."""
    return {"version": "0.7.3", "zones": 3, "per_zone": 1, "knobs": dict(LAB_KNOBS)}


def ledger_of(lab) -> Ledger:
    """The ledger of the lab's default migration (``<cluster>-to-v<target>``)."""
    inv = yaml.safe_load((lab.dir / "inventory.yaml").read_text())
    mid = f"{inv['cluster']}-to-v{TARGET}".lower()
    return Ledger.load(Path(inv["backup"]["root"]) / inv["cluster"] / mid / "ledger.json")


def wait_for_approval(stack, frid, timeout: float = 400):
    """Wait until the run pauses at ``approve-flip``; fail at once on any other pause or end."""
    fr = stack.wait_state(frid, lambda s: s.is_paused() or s.is_final(), timeout, "a pause")
    key = fr.state.state_details.pause_key if fr.state.is_paused() else None
    assert key is not None and gate_of(key) == "approve-flip", (fr.state, stack.logs())
    return fr


def assert_approved_and_completed(stack, lab, frid, note: str, approved_at: float) -> Ledger:
    """The run completed after one approval, given by a person with ``note``; every node runs
    the target; no node was stopped for the flip before ``approved_at``."""
    fr = stack.wait_state(frid, lambda s: s.is_final() or (s.is_paused() and gate_of(
        s.state_details.pause_key) != "approve-flip"), 400, "the end of the run")
    assert fr.state.is_completed(), (fr.state, stack.logs())
    led = ledger_of(lab)
    assert led.doc.state == "done" and led.doc.holder is None, led.doc.state
    g = led.gate("approve-flip")
    assert (g.decision, g.by, g.note) == ("approve", "person", note), g
    assert [e.message for e in led.doc.events if e.kind == "decision"] == ["approve-flip: approve"]
    assert not [e for e in led.doc.events if e.kind == "proceed-anyway"]
    truth = lab.inspect(checksums=False)["nodes"]
    assert {n: t["running_version"] for n, t in truth.items()} == {n: TARGET for n in truth}
    # every node started on the target only after the approval
    starts = [e for e in service_events(lab, 0) if e["event"] == "start" and TARGET in e.get("binary", "")]
    assert sorted(e["node"] for e in starts if e["t"] < approved_at) == [], starts
    assert {e["node"] for e in starts} == set(truth), starts
    return led
