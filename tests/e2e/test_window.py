"""The maintenance window on a real lab, through the real flow (issue 11 §6, "Window test")."""

from __future__ import annotations

import asyncio
import time

from garage_migrate.ledger import Ledger
from garage_migrate.plan import MigrationOptions
from tests.e2e.stack import service_events

FAST = MigrationOptions(watch_s=2.0, gate_deadline_s=90.0, gate_consecutive=2)


def test_a_window_too_short_for_the_restart_rounds_halts_before_any_node_stops(make_lab, prefect_server):
    from flows.migration import minimal_downtime_migration

    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    before = lab.inspect(checksums=False)["nodes"]
    t0 = time.time()
    # a zone's restart round is estimated at 10 min before anything was measured: 3 min is too short
    state = asyncio.run(minimal_downtime_migration(inventory=str(lab.dir / "inventory.yaml"), options=FAST,
                                                   auto_approve=True, window_minutes=3, return_state=True))
    assert state.is_failed(), state
    exc = state.result(raise_on_failure=False)
    assert getattr(exc, "code", None) == "WINDOW_TOO_SHORT", exc
    assert "rolling-backup dc1 takes about 10 min" in str(exc), exc
    # the lab's ground truth: no node was stopped or started, every daemon is the one from before
    assert service_events(lab, t0) == []
    after = lab.inspect(checksums=False)["nodes"]
    assert {n: (a["pid"], a["running_version"]) for n, a in after.items()} == \
           {n: (b["pid"], b["running_version"]) for n, b in before.items()}
    # the ledger is kept, says why, and the next window's run resumes from it
    led = Ledger.load(next((lab.dir / "backups").rglob("ledger.json")))
    assert led.doc.state == "failed" and "WindowTooShort" in (led.doc.error or "")
    (ev,) = [e for e in led.doc.events if e.kind == "window-too-short"]
    assert "nothing is half done" in ev.message
    assert all(rec.steps["preflight:preflight"].status == "done" for rec in led.doc.nodes.values())
