"""The post-migration watch's comparison with the baseline (pure: no I/O, no clock)."""

from __future__ import annotations

import pytest

from garage_migrate.ledger_model import LedgerDoc, dump, parse
from garage_migrate.watch.compare import Thresholds, compare, error_ratio
from garage_migrate.watch.model import BucketSnapshot, NodeSnapshot, Snapshot
from garage_migrate.watch.observe import rate_window_s, rates_from_results, rates_query
from garage_migrate.watch.report import comparison_markdown, watch_markdown
from garage_migrate.watch.run import observation_count, scheduled_count


def node(up=True, s3=(10.0, 0.1), errors=0, queue=0, merkle=0, items=24, **kw) -> NodeSnapshot:
    rates = {"s3_requests": s3[0], "s3_errors": s3[1], "admin_requests": 1.0, "admin_errors": None,
             "web_requests": None, "web_errors": None}
    return NodeSnapshot(up=up, rates=rates, resync_errors=errors, resync_queue=queue, merkle_todo=merkle,
                        object_items=items, **kw)


def snap(at=1000.0, nodes=None, buckets=None, implied=24) -> Snapshot:
    nodes = nodes if nodes is not None else {n: node() for n in ("a", "b", "c")}
    buckets = buckets if buckets is not None else {"b1": BucketSnapshot(alias="photos"),
                                                  "b2": BucketSnapshot(alias="logs")}
    return Snapshot(at=at, window_s=300, copies=3, nodes=nodes, buckets=buckets, implied_objects=implied)


def after(**changes) -> Snapshot:
    nodes = {n: node() for n in ("a", "b", "c")}
    nodes.update(changes.pop("nodes", {}))
    buckets = changes.pop("buckets", {"b1": BucketSnapshot(alias="photos", objects=12, bytes=1200),
                                      "b2": BucketSnapshot(alias="logs", objects=12, bytes=800)})
    return snap(at=2000.0, nodes=nodes, buckets=buckets, implied=None)


def test_the_same_cluster_after_the_migration_is_no_regression():
    c = compare(snap(), after())
    assert c.ok and c.regressions == ()
    assert [r.node for r in c.nodes] == ["a", "b", "c"]
    assert c.objects == (24, 24)
    assert {b.alias: b.objects for b in c.buckets} == {"photos": (None, 12), "logs": (None, 12)}


def test_errored_blocks_on_one_node_are_a_regression_of_that_node_only():
    c = compare(snap(), after(nodes={"b": node(errors=3)}))
    assert c.regressions == ("b: 3 errored blocks (baseline 0)",)
    assert [r.node for r in c.nodes if r.problems] == ["b"]
    # as many as at the baseline: not a regression (it was there before the migration)
    assert compare(snap(nodes={n: node(errors=3) for n in "abc"}), after(nodes={n: node(errors=3) for n in "abc"})).ok


def test_a_node_down_is_a_regression_unless_it_was_down_at_the_baseline():
    c = compare(snap(), after(nodes={"c": node(up=False, detail="ssh refused")}))
    assert c.regressions == ("c: down (ssh refused)",)
    base = snap(nodes={"a": node(), "b": node(), "c": node(up=False)})
    assert compare(base, after(nodes={"c": node(up=False)})).ok


def test_an_unobserved_node_is_down_not_healthy():
    now = after()
    del now.nodes["a"]
    assert compare(snap(), now).regressions == ("a: down",)


@pytest.mark.parametrize(("base", "now", "regressed"), [
    ((10.0, 0.1), (10.0, 0.1), False),  # 1% -> 1%
    ((10.0, 0.1), (10.0, 0.15), False),  # 1% -> 1.5%: under x2
    ((10.0, 0.1), (10.0, 0.5), True),  # 1% -> 5%
    ((10.0, 0.0), (10.0, 0.05), False),  # 0% -> 0.5%: under the floor of 1 point
    ((10.0, 0.0), (10.0, 0.5), True),  # 0% -> 5%
    ((10.0, None), (10.0, 0.5), True),  # no error series at the baseline: no error then
    ((None, None), (10.0, 0.05), False),  # no S3 traffic at the baseline: 0.5% is under the floor
    ((10.0, 0.1), (None, None), False),  # no S3 traffic now: nothing to compare
    ((10.0, 0.1), (0.0, 0.0), False),  # no request in the window
])
def test_s3_error_ratio_against_the_baseline(base, now, regressed):
    others = {n: node(s3=base) for n in "bc"}
    c = compare(snap(nodes={n: node(s3=base) for n in "abc"}), after(nodes={**others, "a": node(s3=now)}))
    assert bool(c.regressions) is regressed, c.regressions
    assert all(p.startswith("a: s3 error ratio") for p in c.regressions)


def test_error_ratio_reads_absent_requests_as_unknown():
    assert error_ratio({"s3_requests": None, "s3_errors": 1.0}, "s3") is None
    assert error_ratio({}, "web") is None
    assert error_ratio({"s3_requests": 4.0, "s3_errors": 1.0}, "s3") == 0.25


def test_queues_far_above_the_baseline_are_a_regression_a_draining_queue_is_not():
    assert compare(snap(), after(nodes={"a": node(queue=50, merkle=200)})).ok
    c = compare(snap(), after(nodes={"a": node(queue=5000)}))
    assert c.regressions == ("a: resync queue 5000 (baseline 0, margin 1000)",)
    assert compare(snap(), after(nodes={"a": node(queue=5000)}), Thresholds(queue_margin=10000)).ok


def test_buckets_gone_negative_or_emptied_are_regressions():
    gone = compare(snap(), after(buckets={"b1": BucketSnapshot(alias="photos", objects=24, bytes=1)}))
    assert gone.regressions == ("bucket logs: gone since the baseline",)
    neg = compare(snap(), after(buckets={"b1": BucketSnapshot(alias="photos", objects=-3, bytes=2**64 - 5),
                                         "b2": BucketSnapshot(alias="logs", objects=27, bytes=1)}))
    assert neg.regressions == ("bucket photos: negative counters (-3 objects)",)
    few = compare(snap(), after(buckets={"b1": BucketSnapshot(alias="photos", objects=0, bytes=0),
                                         "b2": BucketSnapshot(alias="logs", objects=3, bytes=1)}))
    assert few.regressions == (("buckets count 3 objects, the baseline's object tables implied 24 "
                               "(more than 10% fewer)"),)


def test_per_bucket_counts_are_compared_when_the_baseline_has_them():
    base = snap(buckets={"b1": BucketSnapshot(alias="photos", objects=12), "b2": BucketSnapshot(alias="logs", objects=12)})
    c = compare(base, after(buckets={"b1": BucketSnapshot(alias="photos", objects=12),
                                     "b2": BucketSnapshot(alias="logs", objects=5)}))
    assert "bucket logs: 5 objects, baseline 12" in c.regressions


def test_the_report_shows_every_node_and_bucket_against_the_baseline():
    base = snap()
    c = compare(base, after(nodes={"b": node(errors=2)}))
    md = comparison_markdown(c, base)
    assert "| b | yes | 0 → 2 |" in md
    assert "| photos | not counted by 0.7 → 12 |" in md
    assert "**Regressions:**\n- b: 2 errored blocks (baseline 0)" in md
    live = watch_markdown("m1", [{"at": 2000.0, "regressions": list(c.regressions)}], c, base, planned=3, final=False)
    assert live.startswith("## Post-migration watch of m1: live report") and "1 observation of 3, 0 without" in live


def test_rates_belong_to_nodes_by_label_then_instance_and_absent_is_none():
    res = {"s3_requests": [{"metric": {"node": "a"}, "value": [1, "2.5"]},
                           {"metric": {"instance": "10.0.0.2:3903"}, "value": [1, "1"]},
                           {"metric": {"instance": "10.0.0.9:3903"}, "value": [1, "7"]},
                           {"metric": {"node": "c"}, "value": [1, "NaN"]}]}
    got = rates_from_results(["a", "b", "c"], res, {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"})
    assert got["a"]["s3_requests"] == 2.5 and got["b"]["s3_requests"] == 1.0
    assert got["c"]["s3_requests"] is None and got["a"]["s3_errors"] is None
    assert rates_query("api_s3_error_counter", "garage", 300) == \
        'sum by (instance, node) (rate(api_s3_error_counter{job="garage"}[300s]))'


def test_window_and_observation_count_follow_the_interval():
    assert rate_window_s(900) == 300 and rate_window_s(3) == 10 and rate_window_s(60) == 60
    assert observation_count(6, 900) == 25  # every 15 min for 6 h, the first at once
    assert observation_count(0.002, 3) == 3
    assert scheduled_count(6, 900) == 24 and scheduled_count(0.001, 900) == 1  # after the final report
    with pytest.raises(ValueError):
        observation_count(6, 0)


def test_the_ledger_keeps_the_baseline_and_old_ledgers_load_without_one():
    doc = LedgerDoc.new("m1", "c1", "simple", now=1.0)
    assert parse(dump(doc, "x")[0], "x").doc.baseline is None
    doc.baseline = snap()
    back = parse(dump(doc, "x")[0], "x").doc
    assert back.baseline == snap()
    with pytest.raises(ValueError):
        NodeSnapshot(up=True, unknown_field=1)


def test_the_live_report_is_the_same_whichever_run_publishes_it_last():
    from garage_migrate.watch.run import history_markdown

    base = snap()
    late_final = {"at": 3000.0, "final": True, "regressions": [],
                  "snapshot": after().model_copy(update={"at": 3000.0}).model_dump(mode="json")}
    early = {"at": 2000.0, "final": False, "regressions": ["b: 2 errored blocks (baseline 0)"],
             "snapshot": after(nodes={"b": node(errors=2)}).model_dump(mode="json")}
    # the final observation's run finished first, the earlier one's last: same report
    md = history_markdown("m1", [late_final, early], base, planned=2)
    assert md == history_markdown("m1", [early, late_final], base, planned=2)
    assert md.startswith("## Post-migration watch of m1: final report") and "2 observations of 2, 1 without" in md
    assert md.index("| 1 |") < md.index("b: 2 errored blocks") < md.index("| 2 |")
    assert "No regression against the baseline." in md  # the latest (in time) against the baseline
