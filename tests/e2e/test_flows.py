"""The migration flows on a lab, with client traffic, approvals and re-runs."""

from __future__ import annotations

import asyncio


from garage_lab import traffic
from garage_migrate.plan import MigrationOptions

FAST = MigrationOptions(watch_s=2.0, gate_deadline_s=90.0, gate_consecutive=2)


def _truth(lab):
    return lab.inspect()["nodes"]


def _run(flow_fn, **kw):
    return asyncio.run(flow_fn(**kw))


def test_dry_run_changes_nothing_on_any_node(make_lab, prefect_server):
    from flows.migration import minimal_downtime_migration

    # The dry run executes every step (over shells that record the acts), which takes tens of
    # seconds; the daemons' own first anti-entropy sync (20 s after start) would merge the
    # lab's unsynced entries into a node's DB meanwhile. Pushed back, so that the metadata
    # checksums below speak of what the dry run did.
    lab = make_lab(version="0.7.3", zones=3, per_zone=1, wait_prometheus=False,
                   knobs={"anti_entropy_startup_s": 3600.0})
    before = _truth(lab)
    res = _run(minimal_downtime_migration, inventory=str(lab.dir / "inventory.yaml"), options=FAST, dry_run=True)
    assert res["acts"] > 0 and not res["not_listed"], res  # it did execute the plan
    assert res["dry_run"] is True
    after = _truth(lab)
    for name, b in before.items():
        a = after[name]
        assert (a["pid"], a["running_version"], a["binary_target"], a["meta_checksum"]) == \
               (b["pid"], b["running_version"], b["binary_target"], b["meta_checksum"])


def test_minimal_downtime_migration_keeps_every_acknowledged_write(make_lab, prefect_server):
    from flows.migration import minimal_downtime_migration

    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    with traffic.Traffic(lab, rate=10) as tr:
        res = _run(minimal_downtime_migration, inventory=str(lab.dir / "inventory.yaml"), options=FAST,
                   auto_approve=True)
    assert res["state"] == "done"
    truth = _truth(lab)
    assert {n["running_version"] for n in truth.values()} == {"0.8.7"}
    assert tr.acknowledged > 0
    check = traffic.verify(lab)
    assert check["ok"], check
    from garage_migrate.ledger import Ledger

    led = Ledger.load(res["ledger"])
    assert led.doc.state == "done"
    assert all(rec.backup is not None for rec in led.doc.nodes.values())
    _one_card_each(prefect_server, res, {n: rec.zone for n, rec in led.doc.nodes.items()})


def _one_card_each(server, res, zones) -> None:
    """The run's artifacts tab: the plan, the progress, one ledger table (updated in place, the
    seven columns, every node's last step done) and the report, which the result links to."""
    import json

    import httpx

    from flows.approvals import prefect_key

    report = httpx.get(f"{server.api}/artifacts/{res['report_artifact_id']}", timeout=30).json()
    assert report["key"] == res["report_artifact"] and res["report_url"].endswith(f"/artifacts/artifact/{report['id']}")
    cards = httpx.post(f"{server.api}/artifacts/filter", timeout=30,
                       json={"artifacts": {"flow_run_id": {"any_": [report["flow_run_id"]]}}}).json()
    mid = res["migration_id"]
    assert sorted(c["key"] for c in cards) == sorted(prefect_key(k, mid) for k in ("ledger", "plan", "progress", "report"))
    table = next(c for c in cards if c["type"] == "table")
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert {r["node"]: r["zone"] for r in rows} == zones and {r["status"] for r in rows} == {"done"}
    assert list(rows[0]) == ["node", "zone", "phase", "step", "status", "attempts", "last change"]


def test_rerun_of_a_finished_migration_changes_nothing(make_lab, prefect_server):
    from flows.migration import minimal_downtime_migration

    lab = make_lab(version="0.7.3", zones=3, per_zone=1, wait_prometheus=False)
    inv = str(lab.dir / "inventory.yaml")
    _run(minimal_downtime_migration, inventory=inv, options=FAST, auto_approve=True)
    before = _truth(lab)
    res = _run(minimal_downtime_migration, inventory=inv, options=FAST, auto_approve=True)
    after = _truth(lab)
    assert res["state"] == "done"
    for name in before:
        assert after[name]["pid"] == before[name]["pid"], f"{name} was restarted by the re-run"
