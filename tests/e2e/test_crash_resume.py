"""Issue 12 §3: the orchestrator killed (SIGKILL of the flow's process) at the phase boundaries
and inside the backup rounds, the simultaneous restart and the offline-repair rounds, for both
procedures, and resumed two ways: a new terminal run with the same migration id, and a Prefect
flow-run retry on the operator stack (worker + deployments).

The kills are chained to keep CI's time: one migration per procedure and per way of resuming,
killed at the first point, resumed, killed at the next, and so on (:mod:`tests.e2e.crashrun`);
between them the two ways cover every point. After each kill, and at the end, the proof is the
lab's ground truth and the journal: the migration completes; no node was taken down, flipped or
backed up twice (service events, journal); a recorded backup is never replaced; the cluster was
never split (no moment with a node on 0.7 and another on 0.8); every acknowledged write is
readable and the counters equal the truth; each resumed run took the dead run's lock over
(its ``takeover`` event) without anyone deleting a file, and a run resumed inside the flip says
in the ledger what it found on the nodes (its ``flip-resume`` event).
"""

from __future__ import annotations

import pytest

from garage_lab import traffic
from garage_migrate.ledger import Ledger
from garage_migrate.plan import MigrationOptions
from tests.e2e import crashrun as CR
from tests.e2e.crashrun import at_boundary, flip_starting, flip_stopping, holding_stop, in_step
from tests.e2e.faultrun import assert_done_and_nothing_lost, ledger_path

FAST = MigrationOptions(watch_s=2.0, gate_deadline_s=90.0, gate_consecutive=2).model_dump(mode="json")
#: how many times each node goes down in a whole migration: md = its backup round, the flip and
#: its offline-repair round; simple = the API cut (a restart), the offline part, the API's return
DOWNS = {"minimal-downtime": 3, "simple": 3}
#: a 0.8 daemon's first anti-entropy sync meeting a node down for its offline-repair round would
#: hold the final gate for the next full sync (10 min; see test_retry_flow_run): pushed back
QUIET = {"anti_entropy_startup_s": 3600.0}

# The kill points of each chain; the runs alternate between the two ways of resuming (the
# first run of the md chain is a flow run of the deployment, of the simple chain a plain
# terminal run), so that each way resumes from a kill inside the simultaneous restart.
MD_POINTS = [
    at_boundary("preflight"),
    in_step("node-b1", "rolling-backup:backup"),
    # the flip follows the stage at once (auto-approved): this kill can land inside the flip's
    # stop, so node-c1's stop is held from this run on; whichever run then makes that stop, the
    # next point finds a node down beside node-c1 still on 0.7 (without the hold, a kill after
    # every fast stop left the next point nothing to see, and the fault met a later stop)
    holding_stop(at_boundary("stage"), slow="node-c1", seconds=40.0),
    flip_stopping(stopped="node-a1", slow="node-c1", armed=False),
    flip_starting(failing="node-b1"),
    in_step("node-b1", "offline-repair:offline-repair"),
    at_boundary("repair-after"),
]
SIMPLE_POINTS = [
    at_boundary("disable-api"),
    at_boundary("sync-gate"),
    in_step("node-b1", "backup:backup"),
    in_step("node-a1", "offline-repair:offline-repair"),
    in_step("node-b1", "start:start"),
    at_boundary("approve-reopen"),
]



def _no_split(lab, report) -> None:
    assert CR.split_moments(lab) == [], f"split cluster after {report.kills[-1][0]}"


def _assert_resumed_right(lab, procedure: str, mid: str, report, tr) -> Ledger:
    led = assert_done_and_nothing_lost(lab, {"state": "done", "ledger": str(ledger_path(lab, mid))}, traffic=tr)
    assert len(report.kills) >= 3, report.kills
    # every kill was followed by a run that took the dead run's migration (and lock) over
    taken_from = [e.previous.pid for e in led.doc.events if e.kind == "takeover" and e.previous]
    for name, _t, pids in report.kills:
        assert set(pids) & set(taken_from), f"no takeover from the run killed {name} ({pids}): {taken_from}"
    assert led.doc.holder is None and led.doc.state == "done"
    # ground truth: never split, each node down exactly as often as the plan takes it down,
    # flipped once, backed up once (one archive finished well), its backup never replaced
    assert CR.split_moments(lab) == []
    downs = {n: len(w) for n, w in lab.downtime_windows().items()}
    assert downs == {n["name"]: DOWNS[procedure] for n in lab.nodes}, downs
    assert CR.flips(lab) == {n["name"]: 1 for n in lab.nodes}, CR.runs_by_binary(lab)
    assert CR.good_archives(lab, mid) == {n["name"]: 1 for n in lab.nodes}
    assert {n: b.sha256 for n, b in ((n, led.node(n).backup) for n in report.backups)} == report.backups
    return led


def _chain(lab, runs, procedure: str, mid: str, points) -> tuple[Ledger, object]:
    try:
        with traffic.Traffic(lab, rate=5) as tr:
            report = CR.run_chain(lab, runs, mid, points, check=_no_split)
    finally:
        runs.stop()
    led = _assert_resumed_right(lab, procedure, mid, report, tr)
    print(f"{procedure} chain of {len(points)} kills: {report.seconds:.0f} s")
    return led, report


@pytest.mark.timeout(1500)
def test_minimal_downtime_killed_at_each_point_and_resumed_by_retries_and_new_runs(make_lab, stack):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1, knobs=QUIET)
    mid = "crash-md"
    runs = CR.Alternating(CR.FlowRunRetries(stack, lab, "minimal-downtime", mid, FAST),
                          CR.NewRuns(lab, "minimal-downtime", mid, stack.api))
    led, report = _chain(lab, runs, "minimal-downtime", mid, MD_POINTS)
    # resumed twice inside the flip (by a new run, then by a retry): each said what it found.
    # The kill at the stage boundary can land just after the flip's phase began (the one-unit
    # flip follows the approval at once): the run after it then resumes that flip, and says
    # what it found; that resume is not one of the two checked here, the first after the
    # kill in the flip's stop and the first after the kill in its start
    every = [e for e in led.doc.events if e.kind == "flip-resume"]
    kill_t = {name: t for name, t, _pids in report.kills}
    found = [next((e.message for e in every if e.t > kill_t[p.name]), None) for p in MD_POINTS[3:5]]
    assert None not in found and len(every) <= 3, [e.message for e in every]
    print("flip-resume events:", *(e.message for e in every), sep="\n  ")
    # node-c1 is still in its held stop, or has just finished it, when the new run looks
    assert "node-a1 stopped" in found[0] and "node-c1 " in found[0], found[0]
    assert "node-b1 stopped (binary 0.8.7)" in found[1] and "leaving node-a1, node-c1 on 0.8.7" in found[1], found[1]


@pytest.mark.timeout(1500)
def test_simple_killed_at_each_point_and_resumed_by_new_runs_and_retries(make_lab, stack):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1, knobs=QUIET)
    mid = "crash-simple"
    new = CR.NewRuns(lab, "simple", mid, stack.api, temporary_first=True)
    runs = CR.Alternating(new, CR.FlowRunRetries(stack, lab, "simple", mid, FAST))
    _chain(lab, runs, "simple", mid, SIMPLE_POINTS)
    assert len(new.servers_seen) == 1, new.servers_seen  # the first run's, alive when it was killed
    assert new.orphans == [], "a temporary Prefect server outlived the SIGKILL of its garage-migrate run"
