"""How long the disruptive parts of a plan take: estimates from node counts, conservative
per-step defaults and what this migration measured (pure: no I/O, no clock).

A *unit* is the part of a plan that must finish once started, because stopping half-way would
leave the cluster in a state that is not safe to leave until the next maintenance window:

- minimal-downtime: each round of a rolling phase (the stop/backup/start of the round's nodes
  and the wait until they are healthy), and the simultaneous restart (the flip) as a whole;
- simple: the whole offline part, from cutting client access to re-enabling it (clients are
  cut the whole time, so no phase in between is a safe place to stop).

A unit's estimate follows the executor's schedule (:func:`~garage_migrate.executor.schedule.schedule_wave`):
a wave's cluster steps one after the other, then its node sequences batch by batch, a batch
taking as long as its slowest sequence. A node step the ledger records as done counts zero.

Each step kind takes :data:`DEFAULT_SECONDS` (conservative: the step's own timeout where it
has one) until this migration has measured it: the ledger keeps every attempt of every node
step with its start and end, so a kind measured on one node (a stop in the first backup round)
refines every later step of that kind (the stops of the flip), as the slowest measured attempt
times :attr:`Defaults.margin` plus :attr:`Defaults.pad`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ledger_model import LedgerDoc
    from .plan import MigrationPlan, Step

__all__ = ["DEFAULT_SECONDS", "Defaults", "Rates", "Unit", "checkpoints", "estimate", "minutes", "minutes_left",
           "phase_estimates", "units"]

#: Seconds per step kind before anything was measured (conservative: a step's timeout where it
#: has one: a stop is given 120 s to exit, a start 60 s to answer, a health wait 60 s).
DEFAULT_SECONDS: Mapping[str, float] = MappingProxyType({
    "preflight": 30.0, "disable-api": 90.0, "enable-api": 90.0, "repair": 15.0, "sync-gate": 600.0,
    "approval": 0.0, "stop": 150.0, "backup": 300.0, "stage": 120.0, "switch": 15.0,
    "offline-repair": 1800.0, "start": 90.0, "wait-healthy": 60.0, "check-counters": 120.0, "watch": 60.0,
    "restore": 600.0,
})


@dataclass(frozen=True)
class Defaults:
    """The estimate's parameters.

    Attributes:
        seconds: per step kind, before anything was measured (:data:`DEFAULT_SECONDS`).
        margin: a measured duration is multiplied by this ...
        pad: ... and this many seconds are added (a node may be slower than the one measured).
    """

    seconds: Mapping[str, float] = field(default_factory=lambda: DEFAULT_SECONDS)
    margin: float = 1.5
    pad: float = 5.0

    def with_gate_deadline(self, deadline_s: float) -> Defaults:
        """These defaults with a sync gate taking its deadline (the longest it waits by itself)."""
        return Defaults(MappingProxyType({**self.seconds, "sync-gate": float(deadline_s)}), self.margin, self.pad)


@dataclass(frozen=True)
class Rates:
    """Seconds per step kind: the defaults, refined by what was measured.

    Attributes:
        defaults: the parameters.
        measured: per node-step kind, the slowest finished attempt measured in this migration.
    """

    defaults: Defaults = Defaults()
    measured: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_ledger(cls, doc: LedgerDoc | None, defaults: Defaults = Defaults()) -> Rates:
        """The slowest done attempt of each node-step kind in ``doc`` (keys ``<phase>:<kind>``)."""
        out: dict[str, float] = {}
        for rec in (doc.nodes.values() if doc is not None else ()):
            for key, st in rec.steps.items():
                kind = key.split(":", 1)[-1]
                for a in st.attempts:
                    if a.status == "done" and a.finished is not None and a.finished >= a.started:
                        out[kind] = max(out.get(kind, 0.0), a.finished - a.started)
        return cls(defaults, out)

    def seconds(self, kind: str) -> float:
        """The estimate of one step of ``kind``."""
        if kind in self.measured:
            return self.measured[kind] * self.defaults.margin + self.defaults.pad
        return float(self.defaults.seconds.get(kind, 60.0))

    def source(self, kind: str) -> str:
        """``measured`` or ``default``: where :meth:`seconds` comes from."""
        return "measured" if kind in self.measured else "default"


@dataclass(frozen=True)
class Unit:
    """A part of the plan that must finish once started (see the module docstring).

    Attributes:
        name: how the renderings and messages call it (``flip``, ``rolling-backup dc1``).
        phase: the phase it starts in.
        parts: ``(phase, wave)`` of every wave it covers, in order.
    """

    name: str
    phase: str
    parts: tuple[tuple[str, str], ...]

    @property
    def start(self) -> tuple[str, str]:
        """``(phase, wave)`` where it starts."""
        return self.parts[0]


def _has_node_steps(w) -> bool:
    return any(s.node is not None for s in w.steps)


def units(plan: MigrationPlan) -> tuple[Unit, ...]:
    """The units of ``plan``, in plan order."""
    names = [ph.name for ph in plan.phases]
    if plan.procedure == "simple" and "disable-api" in names and "enable-api" in names:
        span = plan.phases[names.index("disable-api"):names.index("enable-api") + 1]
        return (Unit("the offline part", "disable-api", tuple((ph.name, w.name) for ph in span for w in ph.waves)),)
    out: list[Unit] = []
    for ph in plan.phases:
        if not any(s.kind == "stop" for w in ph.waves for s in w.steps):
            continue
        if any(w.together for w in ph.waves):
            out.append(Unit(ph.name, ph.name, tuple((ph.name, w.name) for w in ph.waves)))
            continue
        group: list[str] = []
        for w in ph.waves:
            if _has_node_steps(w) and group:
                out.append(_round(ph.name, group))
                group = []
            group.append(w.name)
        if group:
            out.append(_round(ph.name, group))
    return tuple(out)


def _round(phase: str, waves: list[str]) -> Unit:
    label = waves[0].split("-", 1)[-1] if "-" in waves[0] else waves[0]
    return Unit(f"{phase} {label}", phase, tuple((phase, w) for w in waves))


def checkpoints(plan: MigrationPlan) -> dict[tuple[str, str], Unit]:
    """``(phase, wave) -> unit`` where the window is checked: where each unit starts, and at the
    approval wave just before it (no point asking for a phase that cannot fit)."""
    order = [(ph.name, w) for ph in plan.phases for w in ph.waves]
    out: dict[tuple[str, str], Unit] = {}
    for u in units(plan):
        out[u.start] = u
        i = next(i for i, (p, w) in enumerate(order) if (p, w.name) == u.start)
        if i > 0:
            p, w = order[i - 1]
            if w.steps and all(s.kind == "approval" for s in w.steps):
                out[(p, w.name)] = u
    return out


def estimate(plan: MigrationPlan, unit: Unit, rates: Rates, done: Callable[[str, Step], bool] | None = None) -> float:
    """Seconds ``unit`` takes from its start, counting zero for node steps ``done(phase, step)``
    says are done (0 when every node step is done: nothing of it is left to run)."""
    # lazily: the executor package imports this module
    from .executor.schedule import schedule_wave

    done = done or (lambda phase, step: False)
    waves = {(ph.name, w.name): w for ph in plan.phases for w in ph.waves}
    total, left_to_run = 0.0, False
    for phase, wname in unit.parts:
        ws = schedule_wave(waves[(phase, wname)], plan.max_parallel_nodes)
        total += sum(rates.seconds(s.kind) for s in ws.cluster_steps)
        for batch in ws.batches:
            per_seq = [sum(rates.seconds(s.kind) for s in q.steps if not done(phase, s)) for q in batch]
            left_to_run = left_to_run or any(not done(phase, s) for q in batch for s in q.steps)
            total += max(per_seq, default=0.0)
    return total if left_to_run else 0.0


def phase_estimates(plan: MigrationPlan, rates: Rates | None = None) -> dict[str, float]:
    """``phase -> seconds`` of the units that start in each phase (the renderings show them)."""
    rates = rates or Rates()
    out: dict[str, float] = {}
    for u in units(plan):
        out[u.phase] = out.get(u.phase, 0.0) + estimate(plan, u, rates)
    return out


def minutes(seconds: float) -> int:
    """Whole minutes, rounded up (an estimate is never shown shorter than it is)."""
    return int(-(-max(0.0, seconds) // 60))


def minutes_left(seconds: float) -> int:
    """Whole minutes, rounded down (time left is never shown longer than it is)."""
    return int(max(0.0, seconds) // 60)
