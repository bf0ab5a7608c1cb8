"""Maintenance windows that hold: the executor never starts what cannot finish before the window closes.

- :class:`MaintenanceWindow`: when the window ends (``window_end``, a time with a zone, or
  ``window_minutes`` from the run's scheduled start, so that a run that starts late has less
  of its window left, and is checked against what is left).
- :class:`WindowPolicy`: the window, the wall clock (injected: tests never wait) and the
  maximum age of a backup the flip may rely on. Its :meth:`~WindowPolicy.pause_timeout` bounds
  every pause for a decision by what is left of the window.
- :class:`WindowGuard`: the executor's hook. Before every unit of :mod:`garage_migrate.estimates`
  (a backup or repair round, the flip, the simple procedure's offline part), and at the approval
  just before one, it compares the unit's estimate with what is left of the window and refuses
  to start a unit that cannot finish (:class:`~garage_migrate.errors.WindowTooShort`, a
  ``window-too-short`` ledger event): the run stops between units, where the cluster serves and
  nothing is half done, and the next window's run resumes from the ledger. In a migration
  resumed in a later window, a node whose backup is older than the maximum age runs its backup
  round again before the flip (its done steps of that round are not skipped), so the flip never
  relies on a stale backup.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from . import estimates as E
from .errors import PlanError, WindowTooShort

if TYPE_CHECKING:
    from .ledger import Ledger
    from .ledger_model import BackupRef
    from .plan import MigrationOptions, MigrationPlan, Phase, Step, Wave

__all__ = ["FakeWallClock", "MaintenanceWindow", "SystemWallClock", "WallClock", "WindowGuard", "WindowPolicy",
           "backup_taken_at", "human_age"]

DEFAULT_BACKUP_MAX_AGE_HOURS = 24.0


class WallClock(Protocol):
    """The time of day, with a zone (a window ends at a time of day, not on a monotonic scale)."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class SystemWallClock:
    """The real wall clock: :func:`datetime.now` in UTC."""

    def now(self) -> datetime:
        """See :meth:`WallClock.now`."""
        return datetime.now(UTC)


class FakeWallClock:
    """A wall clock for tests: time moves only when told to.

    Args:
        start: the first reading (timezone-aware).
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("a wall clock reads times with a zone")
        self.t = start

    def now(self) -> datetime:
        """See :meth:`WallClock.now`."""
        return self.t

    def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds``."""
        if seconds < 0:
            raise ValueError(f"cannot advance {seconds!r} seconds")
        self.t += timedelta(seconds=seconds)


def _stdlib(t: datetime) -> datetime:
    """``t`` as a plain :class:`datetime` (a subclass such as pendulum's, which Prefect hands
    out, does not subtract from the stdlib's)."""
    return datetime.fromisoformat(t.isoformat()) if type(t) is not datetime else t


@dataclass(frozen=True)
class MaintenanceWindow:
    """A maintenance window: work may run until :attr:`end`."""

    end: datetime

    @classmethod
    def from_params(cls, window_end: datetime | None, window_minutes: float | None,
                    started: datetime) -> MaintenanceWindow | None:
        """The window of a run's parameters (``None``: no window, nothing is bounded by one).

        Args:
            window_end: when the window closes (must carry a zone).
            window_minutes: or: the window's length from ``started``.
            started: when the run was scheduled to start (a late run keeps its window's end).

        Raises:
            PlanError: both were given, a ``window_end`` without a zone, or a length not above 0.
        """
        if window_end is not None and window_minutes is not None:
            raise PlanError("give window_end or window_minutes, not both")
        if window_end is not None:
            if window_end.tzinfo is None or window_end.utcoffset() is None:
                raise PlanError(f"window_end {window_end.isoformat()} has no time zone: write it with one "
                                "(e.g. 2026-12-06T04:00:00+00:00)")
            return cls(_stdlib(window_end))
        if window_minutes is not None:
            if window_minutes <= 0:
                raise PlanError(f"window_minutes must be above 0, got {window_minutes}")
            return cls(_stdlib(started) + timedelta(minutes=window_minutes))
        return None

    def left(self, now: datetime) -> float:
        """Seconds left at ``now`` (negative once the window has closed)."""
        return (self.end - now).total_seconds()


@dataclass(frozen=True)
class WindowPolicy:
    """What bounds a run in time (a value the flows and the CLI build from their parameters).

    Attributes:
        window: the maintenance window, or ``None`` (no window: nothing is refused for time).
        clock: the wall clock.
        backup_max_age_s: a backup older than this is taken again before the flip
            (``None``: any age is accepted).
    """

    window: MaintenanceWindow | None = None
    clock: WallClock = field(default_factory=SystemWallClock)
    backup_max_age_s: float | None = DEFAULT_BACKUP_MAX_AGE_HOURS * 3600

    def left(self) -> float | None:
        """Seconds left in the window now (``None`` without a window)."""
        return None if self.window is None else self.window.left(self.clock.now())

    def pause_timeout(self, pause_timeout: float) -> float:
        """``min(pause_timeout, time left)``: a wait for a person never runs past the window.

        Raises:
            WindowTooShort: the window has closed: an answer could no longer be acted upon.
        """
        left = self.left()
        if left is None:
            return pause_timeout
        if left <= 0:
            raise WindowTooShort(f"the maintenance window closed at {self.window.end.isoformat()}: no time is left "
                                 "to wait for an answer; nothing was started, the next window's run resumes")
        return min(float(pause_timeout), left)


def backup_taken_at(ref: BackupRef) -> float | None:
    """When a backup was completed (Unix time): the ledger's record, else its manifest's."""
    if ref.taken_at is not None:
        return ref.taken_at
    try:
        from .backup.manifest import load_manifest

        return load_manifest(ref.manifest).created_at.timestamp()
    except Exception:  # noqa: BLE001 - an unreadable manifest: the age is unknown
        return None


def human_age(seconds: float) -> str:
    """``2 h 05 min``, ``7 min``."""
    m = int(max(0.0, seconds) // 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


class WindowGuard:
    """The executor's window hook for one run of one plan (see the module docstring).

    Args:
        policy: the window, clock and backup age limit.
        plan: the plan executed.
        ledger: the migration's ledger (measured durations, done steps, backups, events).
        opts: the plan's options (a sync gate's estimate is its deadline).
        log: the run's logger.
    """

    def __init__(self, policy: WindowPolicy, plan: MigrationPlan, ledger: Ledger, opts: MigrationOptions,
                 log: logging.Logger | logging.LoggerAdapter):
        self.policy = policy
        self.plan = plan
        self.ledger = ledger
        self.defaults = E.Defaults().with_gate_deadline(opts.gate_deadline_s)
        self.log = log
        self.checkpoints = E.checkpoints(plan)
        self.retakes: dict[str, float] = {}  # node -> age (s) of the backup it takes again
        self._retake_phase = next((ph.name for ph in plan.phases if ph.name != "rollback"
                                   and any(s.kind == "backup" for w in ph.waves for s in w.steps)), None)

    # ------------------------------------------------------------------ what is done
    def retake(self, phase: str, step: Step) -> bool:
        """Whether the done ``step`` of ``phase`` runs again: its node takes its backup again."""
        if step.node not in self.retakes or phase != self._retake_phase:
            return False
        wave = next(w for w in self.plan.phase(phase).waves if step in w.steps)
        return any(s.kind == "backup" and s.node == step.node for s in wave.steps)

    def reruns(self, phase: str, wave: str) -> bool:
        """Whether the cluster steps of ``(phase, wave)`` run again although done (the health
        wait of a round whose backup is taken again: the next round must wait for it)."""
        if not self.retakes or phase != self._retake_phase:
            return False
        waves = {w.name: w for w in self.plan.phase(phase).waves}
        for u in E.units(self.plan):
            if (phase, wave) in u.parts:
                return any(s.node in self.retakes for _, w in u.parts for s in waves[w].steps)
        return False

    def done(self, phase: str, step: Step) -> bool:
        """Whether the executor skips ``step`` (done earlier in this migration, and not retaken)."""
        return (step.node is not None and self.ledger.step_done(step.node, f"{phase}:{step.kind}")
                and not self.retake(phase, step))

    def estimate(self, unit: E.Unit) -> float:
        """Seconds left of ``unit``, from the ledger's measurements and what is done."""
        return E.estimate(self.plan, unit, E.Rates.from_ledger(self.ledger.doc, self.defaults), self.done)

    def _backup_ages(self) -> dict[str, float | None]:
        now = self.policy.clock.now().timestamp()
        out: dict[str, float | None] = {}
        for name, rec in sorted(self.ledger.doc.nodes.items()):
            if rec.backup is not None and not rec.backup.dry_run:
                t = backup_taken_at(rec.backup)
                out[name] = None if t is None else now - t
        return out

    async def _find_retakes(self) -> None:
        """At the start of the backup phase: the nodes whose backup is too old for the flip."""
        limit = self.policy.backup_max_age_s
        if limit is None or self._switched():
            return
        for name, age in self._backup_ages().items():
            rec = self.ledger.node(name)
            on_target = (rec.running_version or "").removeprefix("v") == self.plan.target_version
            if age is not None and age > limit and not on_target:
                self.retakes[name] = age
                await self.ledger.event("backup-retake", f"{name}: its backup is {human_age(age)} old (at most "
                                        f"{human_age(limit)} before the flip): its backup round runs again")

    def _switched(self) -> bool:
        """Whether any node has a step of the phases that switch binaries (the flip, the install):
        from then on its metadata may be 0.8's, and a new "0.7 backup" of it would be a lie."""
        names = [ph.name for ph in self.plan.phases]
        later = {ph.name for ph in self.plan.phases[names.index(self._retake_phase) + 1:]
                 if any(s.kind == "switch" for w in ph.waves for s in w.steps)}
        return any(k.split(":", 1)[0] in later for rec in self.ledger.doc.nodes.values() for k in rec.steps)

    # ------------------------------------------------------------------ the hook
    async def before(self, phase: Phase, wave: Wave) -> None:
        """Called before each wave: find stale backups at the backup phase; at a checkpoint,
        refuse a unit that cannot finish in the window.

        Raises:
            WindowTooShort: the unit's estimate is longer than what is left of the window.
        """
        if phase.name == self._retake_phase and wave is phase.waves[0]:
            await self._find_retakes()
        unit = self.checkpoints.get((phase.name, wave.name))
        left = self.policy.left()
        if unit is None or left is None:
            return
        est = self.estimate(unit)
        if est <= 0:
            self.log.info("window: %s is done already: nothing to check", unit.name)
            return
        at_approval = (phase.name, wave.name) != unit.start
        what = f"{unit.name} takes about {E.minutes(est)} min; {E.minutes_left(left)} min left in the window"
        if est > left:
            msg = (f"{what} (until {self.policy.window.end.isoformat()}): "
                   + ("not asking for its approval" if at_approval else "not starting it")
                   + "; the cluster serves, nothing is half done; the next window's run resumes from the ledger")
            await self.ledger.event("window-too-short", msg)
            raise WindowTooShort(msg)
        self.log.info("window: %s: %s", "asking" if at_approval else "starting", what)
        await self.ledger.event("window", f"{what}: {'asking' if at_approval else 'starting'}")

    def next_unit(self, phase: Phase, wave: Wave) -> E.Unit | None:
        """What an approval at ``(phase, wave)`` lets run: the rest of the unit it is part of
        (the simple procedure's offline part), else the first unit that starts after it."""
        here = (phase.name, wave.name)
        for u in E.units(self.plan):
            if here in u.parts[1:]:
                return E.Unit(u.name, phase.name, u.parts[u.parts.index(here) + 1:])
        order = [(ph.name, w.name) for ph in self.plan.phases for w in ph.waves]
        starts = {u.start: u for u in E.units(self.plan)}
        return next((starts[k] for k in order[order.index(here) + 1:] if k in starts), None)

    def approval_note(self, phase: Phase, wave: Wave) -> str:
        """Markdown for an approval: the next unit's estimate against the window, each backup's age."""
        lines = []
        unit = self.next_unit(phase, wave)
        if unit is not None:
            est, left = self.estimate(unit), self.policy.left()
            lines.append(f"**Time:** this phase ({unit.name}) takes about {E.minutes(est)} min"
                         + (f"; {E.minutes_left(left)} min left in the window" if left is not None else
                            " (no maintenance window given)") + ".")
        ages = self._backup_ages()
        if ages:
            limit = self.policy.backup_max_age_s
            lines.append("**Backups:** " + ", ".join(
                f"{n} {'of unknown age' if a is None else human_age(a) + ' old'}" for n, a in ages.items())
                + (f" (taken again before the flip when older than {human_age(limit)})" if limit is not None else ""))
        return "\n\n" + "\n\n".join(lines) if lines else ""
