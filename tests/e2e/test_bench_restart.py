"""The downtime and flow_overhead benchmarks run once at their smallest size and report their
figures (issue 13: a benchmark CI runs cannot rot). Nothing here looks at a timing's value:
only that each figure is there and positive. Both use the e2e tier's session Prefect server.

The remote-commands-per-phase table (``benchmarks.commands``) is checked on the downtime
benchmark's own migration (3 nodes) rather than on a second one at 6: the same code reads it.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import commands, downtime, flow_overhead, restart


def _result(out: str):
    return json.loads(out.strip().splitlines()[-1].removeprefix("RESULT "))


@pytest.fixture(scope="module")
def api(prefect_stack):
    """The e2e tier's session server (its autouse fixtures drop the watch runs these
    migrations schedule), not one more server start."""
    return prefect_stack.api


def test_restart_figures_come_from_each_nodes_stop_start_and_answer():
    ev = [{"t": 1.0, "node": "a", "event": "start", "binary": "garage-v0.7.3"},
          {"t": 10.0, "node": "a", "event": "kill", "signal": "SIGINT"},
          {"t": 10.5, "node": "a", "event": "stop", "signal": "SIGTERM"},
          {"t": 11.0, "node": "a", "event": "start", "binary": "garage-v0.8.7"},
          {"t": 12.0, "node": "b", "event": "stop", "signal": "SIGHUP"},  # a reload, not a stop
          {"t": 12.2, "node": "b", "event": "stop", "signal": "SIGINT"},
          {"t": 13.0, "node": "b", "event": "start", "binary": "garage-v0.8.7"}]
    a = restart.node_restart("a", ev, [11.4, 30.0], after=5.0, binary="garage-v0.8.7")
    b = restart.node_restart("b", ev, [11.4, 13.6], after=5.0)
    assert (a.stop, a.start, a.ready) == (10.0, 11.0, 11.4) and (b.stop, b.ready) == (12.2, 13.6)
    assert restart.node_restart("a", ev, [], after=5.0) is None  # never answered: no figure
    # under load the new daemon can answer before the service has written its start event: that
    # answer (after the stop signal, nothing else answers then) is the restart's, not a later one
    late = [{"t": 20.0, "node": "c", "event": "kill", "signal": "SIGINT"},
            {"t": 21.0, "node": "c", "event": "start", "binary": "garage-v0.8.7"}]
    assert restart.node_restart("c", late, [5.0, 20.8, 60.0], after=15.0).ready == 20.8
    f = restart.figures([a, b])
    assert f["window_s"] == pytest.approx(3.6) and f["stop_skew_s"] == pytest.approx(2.2)
    assert f["start_skew_s"] == pytest.approx(2.0) and f["down_max_s"] == pytest.approx(1.4)


def test_commands_per_phase_counts_commands_uploads_and_round_trips():
    rows = commands.per_phase([{"phase": "stage", "kind": "observe", "argv": ["sha256sum"], "duration": 0.5},
                               {"phase": "stage", "kind": "act", "argv": ["put", "/x"], "duration": 1.0},
                               {"phase": None, "kind": "act", "argv": ["ln"], "duration": 0.1}])
    stage, total = rows[0], rows[-1]
    assert (stage["observe"], stage["uploads"], stage["round_trips"]) == (1, 1, 2)
    assert (total["phase"], total["round_trips"], total["act"]) == ("total", 3, 1)


@pytest.mark.timeout(900)
def test_downtime_benchmark_at_3_nodes_reports_flip_floor_baseline_and_commands(api, capsys):
    assert downtime.main(["--sizes", "3", "--idle-s", "1", "--prefect-api", api]) == 0
    out = capsys.readouterr().out
    assert "ratios: window/floor" in out and "machine:" in out
    (r,) = _result(out)
    assert r["nodes"] == 3 and r["up_s"] > 0 and r["migration_s"] > 0 and r["lab"]["rss_mib"] > 0
    for key in ("flip", "floor", "baseline"):
        f = r[key]
        assert f["nodes"] == 3 and f["window_s"] > 0 and f["down_min_s"] > 0, (key, f)
        assert f["stop_skew_s"] >= 0 and f["start_skew_s"] >= 0 and f["down_max_s"] >= f["down_min_s"]
    assert [p for p, _ in r["phases"]][-1] == "watch" and "flip" in dict(r["phases"])
    rows = {row["phase"]: row for row in r["commands"]}
    assert rows["flip"]["act"] > 0 and rows["total"]["round_trips"] >= rows["flip"]["round_trips"]
    # the baseline really ran the plan's stop, switch and start on every node
    assert all(r["baseline_commands"][t] >= 3 for t in ("stop", "switch", "start", "answer"))


@pytest.mark.timeout(900)
def test_flow_overhead_benchmark_at_3_nodes_reports_its_breakdown_and_the_script(api, capsys):
    args = ["--nodes", "3", "--stop-s", "0.5", "--start-s", "0.5", "--repair-s", "0.5", "--prefect-api", api]
    assert flow_overhead.main(args) == 0
    out = capsys.readouterr().out
    assert "ratios: overhead" in out and "sequential script:" in out
    r = _result(out)
    b = r["flow"]
    for k in ("cli_s", "flow_s", "before_phases_s", "phases_s", "after_phases_s", "remote_busy_s", "gates_s"):
        assert b[k] > 0, k
    assert b["task_runs"] > 0 and b["commands"] > 0 and r["critical_work_s"] > 0
    assert r["script_s"] > 0 and r["script_commands"] > 0
    assert r["script_versions"] == ["0.8.7"]  # the operator's script did migrate the lab
