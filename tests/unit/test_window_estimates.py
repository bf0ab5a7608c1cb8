"""Maintenance windows (issue 11 §2), Prefect-free: estimates, the refusal of a phase that cannot
finish, the pause timeout's bound, a late scheduled start, and the backup retaken on age.

The executor runs over the scripted step runner of :mod:`fakes`; each step "takes" 100 s on an
injected wall clock (:class:`StepsThatTakeTime`), so no test waits and every duration is known.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from datetime import datetime, timedelta, timezone

import pytest

from garage_migrate import estimates as E
from garage_migrate.errors import PlanError, WindowTooShort
from garage_migrate.executor import Executor
from garage_migrate.gates import FakeClock
from garage_migrate.ledger import Ledger
from garage_migrate.plan import FanoutPolicy, MigrationOptions, make_plan
from garage_migrate.steps import Runtime
from garage_migrate.window import FakeWallClock, MaintenanceWindow, WindowPolicy

from builders import inventory_and_facts
from fakes import FakeSteps, ScriptedDecider

OPTS = MigrationOptions(watch_s=10.0)
MID = "m1"
T0 = datetime(2026, 12, 6, 2, 0, tzinfo=timezone.utc)
STEP_S = 100.0  # what every scripted step takes on the wall clock


class StepsThatTakeTime(FakeSteps):
    """:class:`FakeSteps` whose every call moves the wall clock by :data:`STEP_S`, and whose
    backups record when they were taken (on that clock), as the real backup step does."""

    def __init__(self, wall: FakeWallClock, **kw):
        super().__init__(on_call=lambda call: wall.advance(STEP_S), **kw)
        self.wall = wall

    async def backup_metadata(self, rt, node):
        res = await super().backup_metadata(rt, node)
        ref = rt.ledger.node(node).backup
        await rt.ledger.set_node(node, backup=ref.model_copy(update={"taken_at": self.wall.now().timestamp()}))
        return res


@pytest.fixture
def wall(monkeypatch):
    """The wall clock of the test; the ledger stamps its records with it too, so the durations
    it measures are the scripted ones."""
    clock = FakeWallClock(T0)
    stamped = types.SimpleNamespace(time=lambda: clock.now().timestamp(), strftime=time.strftime,
                                    localtime=time.localtime)
    monkeypatch.setattr("garage_migrate.ledger.time", stamped)
    return clock


def _setup(tmp_path, procedure="minimal-downtime", per_zone=1, **fan):
    inv, facts = inventory_and_facts({"dc1": per_zone, "dc2": per_zone, "dc3": per_zone}, backup_root=str(tmp_path))
    ledger = Ledger.open(tmp_path, inv.cluster, MID, procedure)
    rt = Runtime(inv=inv, shells={}, ledger=ledger, facts=facts, log=logging.getLogger("test.window"))
    opts = MigrationOptions(watch_s=10.0, fanout=FanoutPolicy(**fan))
    return rt, make_plan(inv, facts, procedure, MID, opts)


def _run(rt, plan, steps, decider, wall, minutes=None, end=None, started=None, max_age_h=24.0):
    window = MaintenanceWindow.from_params(end, minutes, started or wall.now())
    policy = WindowPolicy(window, wall, max_age_h * 3600)
    ex = Executor(rt, plan, OPTS, steps=steps, decider=decider, clock=FakeClock(), window=policy)
    asyncio.run(ex.run())


def _calls(steps, name):
    return [c for c in steps.calls if c[0] == name]


# ---------------------------------------------------------------------------- estimates
def test_units_are_the_rounds_the_flip_and_the_simple_procedures_offline_part(tmp_path):
    _, plan = _setup(tmp_path)
    assert [u.name for u in E.units(plan)] == [
        "rolling-backup dc1", "rolling-backup dc2", "rolling-backup dc3", "flip",
        "offline-repair dc1", "offline-repair dc2", "offline-repair dc3"]
    # checked where each starts, and at the approval just before the flip
    assert E.checkpoints(plan)[("approve-flip", "approve")].name == "flip"
    _, simple = _setup(tmp_path / "s", "simple")
    (offline,) = E.units(simple)
    phases = [p for p, _ in offline.parts]
    assert (phases[0], phases[-1]) == ("disable-api", "enable-api") and "stop" in phases


def test_estimates_follow_the_schedule_and_the_defaults(tmp_path):
    d = E.DEFAULT_SECONDS
    _, plan = _setup(tmp_path)
    rates = E.Rates()
    by_name = {u.name: u for u in E.units(plan)}
    # a round: one node's stop, backup, start, then the health wait
    assert E.estimate(plan, by_name["rolling-backup dc1"], rates) == d["stop"] + d["backup"] + d["start"] + d["wait-healthy"]
    # the flip: every node at once, so one node's time per wave
    assert E.estimate(plan, by_name["flip"], rates) == d["stop"] + d["switch"] + d["start"] + d["wait-healthy"]
    # two nodes a zone, one at a time: the round takes both nodes' sequences
    _, two = _setup(tmp_path / "two", per_zone=2, max_parallel_nodes=1)
    r1 = E.units(two)[0]
    assert E.estimate(two, r1, rates) == 2 * (d["stop"] + d["backup"] + d["start"]) + d["wait-healthy"]
    # and the plan shows them, with the defaults they come from
    md = plan.to_markdown()
    assert "Zone by zone: stop, back up, start, wait until healthy** (about 30 min)" in md
    assert "stop 150 s" in md and "backup 300 s" in md


def test_measured_durations_refine_later_estimates_and_done_steps_count_zero(tmp_path):
    rt, plan = _setup(tmp_path)
    led = rt.ledger

    async def record():
        for n in ("n1", "n2", "n3"):
            await led.record_step(n, "rolling-backup:stop", "running")
            await led.record_step(n, "rolling-backup:stop", "done")
    asyncio.run(record())
    # a measured stop (milliseconds here) replaces the 150 s default: x margin + pad
    rates = E.Rates.from_ledger(led.doc)
    assert rates.source("stop") == "measured" and rates.seconds("stop") < 10
    assert rates.source("switch") == "default"
    flip = next(u for u in E.units(plan) if u.name == "flip")
    assert E.estimate(plan, flip, rates) < E.estimate(plan, flip, E.Rates())
    r1 = E.units(plan)[0]
    assert E.estimate(plan, r1, rates, done=lambda ph, s: True) == 0.0


# ---------------------------------------------------------------------------- the window parameters
def test_window_parameters():
    assert MaintenanceWindow.from_params(None, None, T0) is None
    assert MaintenanceWindow.from_params(None, 90, T0).end == T0 + timedelta(minutes=90)
    assert MaintenanceWindow.from_params(T0, None, T0 - timedelta(hours=1)).end == T0
    with pytest.raises(PlanError, match="not both"):
        MaintenanceWindow.from_params(T0, 30, T0)
    with pytest.raises(PlanError, match="no time zone"):
        MaintenanceWindow.from_params(datetime(2026, 12, 6, 4, 0), None, T0)
    with pytest.raises(PlanError, match="above 0"):
        MaintenanceWindow.from_params(None, 0, T0)


def test_pause_timeout_never_runs_past_the_window():
    wall = FakeWallClock(T0)
    policy = WindowPolicy(MaintenanceWindow(T0 + timedelta(minutes=20)), wall)
    assert policy.pause_timeout(3600) == 20 * 60
    assert policy.pause_timeout(300) == 300
    assert WindowPolicy(None, wall).pause_timeout(3600) == 3600  # no window: the pause timeout as given
    wall.advance(20 * 60)
    with pytest.raises(WindowTooShort, match="closed"):
        policy.pause_timeout(3600)


# ---------------------------------------------------------------------------- refusing a phase
def test_a_window_too_short_for_the_first_round_stops_before_any_node_and_the_next_window_resumes(tmp_path, wall):
    rt, plan = _setup(tmp_path)
    steps = StepsThatTakeTime(wall)
    with pytest.raises(WindowTooShort) as exc:
        _run(rt, plan, steps, ScriptedDecider(), wall, minutes=12)
    assert exc.value.code == "WINDOW_TOO_SHORT"
    assert "rolling-backup dc1 takes about 10 min; 2 min left in the window" in str(exc.value)
    assert steps.acts() == [("launch_repair", None, "tables"), ("launch_repair", None, "blocks")]  # no stop
    doc = rt.ledger.refresh()
    (ev,) = [e for e in doc.events if e.kind == "window-too-short"]
    assert "not starting it" in ev.message and "nothing is half done" in ev.message
    # the next window's run resumes from the ledger: what was done is not done again
    wall.advance(7 * 24 * 3600)
    again = StepsThatTakeTime(wall)
    _run(rt, plan, again, ScriptedDecider(approve_flip=["approve"]), wall, minutes=240)
    assert again.calls[0] == ("stop_node", "n1", None)  # no preflight, repair or gate again
    assert {c[1] for c in _calls(again, "start_node") if c[2] == "0.8.7"} == {"n1", "n2", "n3"}


def test_a_late_scheduled_run_is_checked_against_what_is_left_of_its_window(tmp_path, wall):
    rt, plan = _setup(tmp_path)
    # scheduled for 02:00 with a 60 min window, the run starts Late at 02:52: 8 min are left
    wall.advance(52 * 60)
    steps = StepsThatTakeTime(wall)
    with pytest.raises(WindowTooShort, match="rolling-backup dc1"):
        _run(rt, plan, steps, ScriptedDecider(), wall, minutes=60, started=T0)
    assert not _calls(steps, "stop_node")


def test_a_flip_that_cannot_finish_is_not_even_asked_for(tmp_path, wall):
    # 2100 s of scripted steps come before the flip's approval; the flip then takes stop and
    # start as measured in the rounds (100 s x 1.5 + 5 s each), the default switch and health
    # wait: 385 s. With 300 s left it is refused, and the rounds stay done.
    rt, plan = _setup(tmp_path)
    steps = StepsThatTakeTime(wall)
    decider = ScriptedDecider()
    with pytest.raises(WindowTooShort, match="flip takes about 7 min; 5 min left .*not asking for its approval"):
        _run(rt, plan, steps, decider, wall, end=T0 + timedelta(seconds=2400))
    assert decider.asked == [] and not _calls(steps, "switch_binary")
    assert len(_calls(steps, "stop_node")) == 3  # the three rounds, not the flip
    assert all(rt.ledger.node(n).backup is not None for n in ("n1", "n2", "n3"))
    assert [e.message.split(":")[0] for e in rt.ledger.doc.events if e.kind == "window"] == [
        "rolling-backup dc1 takes about 10 min; 30 min left in the window",
        "rolling-backup dc2 takes about 9 min; 23 min left in the window",
        "rolling-backup dc3 takes about 9 min; 16 min left in the window"]


# ---------------------------------------------------------------------------- backups and their age
def _halt_before_the_flip(tmp_path, wall):
    rt, plan = _setup(tmp_path)
    steps = StepsThatTakeTime(wall)
    with pytest.raises(WindowTooShort, match="flip"):
        _run(rt, plan, steps, ScriptedDecider(), wall, end=T0 + timedelta(seconds=2400))
    return rt, plan


def test_a_migration_resumed_after_the_max_age_takes_every_backup_again_before_the_flip(tmp_path, wall):
    rt, plan = _halt_before_the_flip(tmp_path, wall)
    first = {n: rt.ledger.node(n).backup.taken_at for n in ("n1", "n2", "n3")}
    wall.advance(30 * 3600)  # the next window, 30 h later
    steps = StepsThatTakeTime(wall)
    decider = ScriptedDecider(approve_flip=["approve"])
    _run(rt, plan, steps, decider, wall, minutes=240, max_age_h=24)
    # each node's backup round ran again (stop, backup, start on 0.7), all before the flip
    assert [c[:2] for c in steps.calls[:12]] == [
        x for n, z in (("n1", "dc1"), ("n2", "dc2"), ("n3", "dc3"))
        for x in (("stop_node", n), ("backup_metadata", n), ("start_node", n), ("wait_healthy", None))]
    assert [c[0] for c in steps.calls].count("backup_metadata") == 3
    assert all(rt.ledger.node(n).backup.taken_at > first[n] for n in first)
    events = [e.message for e in rt.ledger.doc.events if e.kind == "backup-retake"]
    assert len(events) == 3 and all("30 h " in m and "old (at most 24 h 00 min" in m for m in events)
    # the approval says how long the flip takes against the window, and how old each backup is
    md = decider.descriptions["approve-flip"]
    assert "this phase (flip) takes about" in md and "min left in the window" in md
    assert "**Backups:** n1 " in md and " min old" in md and "30 h" not in md


def test_a_migration_resumed_within_the_max_age_keeps_its_backups(tmp_path, wall):
    rt, plan = _halt_before_the_flip(tmp_path, wall)
    wall.advance(10 * 3600)
    steps = StepsThatTakeTime(wall)
    decider = ScriptedDecider(approve_flip=["approve"])
    _run(rt, plan, steps, decider, wall, minutes=240, max_age_h=24)
    assert not _calls(steps, "backup_metadata")
    assert not [e for e in rt.ledger.doc.events if e.kind == "backup-retake"]
    # taken at 02:13:20 (the first round), asked at 02:40 ten hours later: the resumed run looks
    # at each node's staged binary again first (3 scripted steps of 100 s)
    assert "**Backups:** n1 10 h 26 min old, n2 10 h 20 min old, n3 10 h 13 min old" in decider.descriptions["approve-flip"]


def test_no_backup_is_retaken_once_the_flip_has_started(tmp_path, wall):
    rt, plan = _halt_before_the_flip(tmp_path, wall)

    async def flip_started():
        await rt.ledger.record_step("n1", "flip:stop", "done")
    asyncio.run(flip_started())
    wall.advance(30 * 3600)
    steps = StepsThatTakeTime(wall)
    _run(rt, plan, steps, ScriptedDecider(approve_flip=["approve"]), wall, minutes=240, max_age_h=24)
    assert not _calls(steps, "backup_metadata")  # a new "0.7 backup" of a node 0.8 may have touched: never


def test_an_approval_inside_the_simple_offline_part_gives_the_rest_of_it_against_the_window(tmp_path, wall):
    rt, plan = _setup(tmp_path, "simple")
    steps = StepsThatTakeTime(wall)
    decider = ScriptedDecider(approve_shutdown=["approve"], approve_reopen=["approve"])
    _run(rt, plan, steps, decider, wall, minutes=240)
    md = decider.descriptions["approve-shutdown"]
    assert "this phase (the offline part) takes about" in md and "min left in the window" in md
    assert "**Backups:**" not in md  # none taken yet
    assert "**Backups:** n1 " in decider.descriptions["approve-reopen"]


def test_the_maintenance_window_deployment_has_a_window_and_its_schedule_ships_inactive():
    import yaml
    from pathlib import Path

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "deployments" / "prefect.yaml").read_text())
    d = next(d for d in doc["deployments"] if d["name"] == "minimal-downtime-maintenance-window")
    assert d["parameters"]["window_minutes"] > 0 and d["parameters"]["backup_max_age_hours"] == 24
    assert d["schedules"] and all(s["active"] is False for s in d["schedules"])
