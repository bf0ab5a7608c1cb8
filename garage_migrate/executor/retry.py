"""Retry one node's failed step, and the rest of that node's steps in its phase (no Prefect).

``garage-migrate retry`` and the ``retry-node`` deployment call :func:`retry_node`; the
selection and the zone rule are pure functions (:func:`select`, :func:`check_zones`) so the
tests can ask them directly. The rules:

- **What runs.** The plan is the migration's saved plan (``plan-<ledger plan_digest>.json``,
  :func:`~.planfile.load_plan`): what was printed and approved, not a new plan. The phase is the
  one of the node's failed (or crashed, left ``running``) step, or of ``--step``; the retry
  runs that node's steps of that phase in plan order, each skipped when the ledger records it
  done, through the :class:`~.run.Executor`'s own ``run_recorded`` (fenced ledger records,
  journalled commands, only the acts the plan step lists). Every step observes the node first.
- **Together waves** (the flip's stop, switch, start): one node's step of such a wave runs only
  when every other node of the wave did that step already (the node is the only one behind);
  otherwise it and the node's later steps are *held*: the flip is the migration run's.
- **Gates.** After the node's steps, the ``wait-healthy`` of its zone (or of ``all``) that
  follows them in the phase runs when every node it waits for has finished its steps of the
  phase; it is recorded done, so the migration run does not wait again.
- **Zones down.** A retry that would stop a node that runs now is refused when the zones with
  a node down (observed now: service state, unreachable counts as down) plus that node's zone
  are more than the phase's plan takes down at once (its ``max_zones_down`` rounds; the whole
  cluster for the flip and the simple procedure's stop).
- **Who.** The caller's ``hold`` takes the migration's cluster lock, so a retry while the
  migration's run is alive is refused like any second run (``ClusterLockedError``). The hold
  is kept afterwards (heartbeats stopped): the migration is still half-way, and its next run
  takes it over (the retry's process or flow run is gone by then).
- Nothing is asked: a step that would need a person's decision belongs to the migration run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from .. import probes
from ..cluster_lock import ClusterLock
from ..errors import GarageMigrateError, MigrationAborted, PlanError, SupersededError
from ..journal import CommandJournal, in_step, with_journal
from ..ledger_view import status_rows
from ..ledger_model import LedgerDoc
from ..plan import MigrationOptions, MigrationPlan, Phase, Step, Wave
from ..steps import Runtime
from .interfaces import Answer, Reporter, StepRunner
from .planfile import LoadedPlan, load_plan
from .run import Executor

__all__ = ["Planned", "RetryReport", "Selection", "check_zones", "nodes_down", "retry_node", "saved_plan",
           "select", "zones_down_at_once"]

Action = Literal["run", "skip", "held"]


@dataclass(frozen=True)
class Planned:
    """One step of the node in the retried phase, and what the retry does with it.

    Attributes:
        key: the ledger key (``<phase>:<kind>``).
        wave: the wave it belongs to.
        step: the plan step.
        action: ``run``, ``skip`` (done earlier) or ``held`` (not this retry's: see ``why``).
        why: the reason for a skip or a hold.
    """

    key: str
    wave: Wave
    step: Step
    action: Action
    why: str = ""


@dataclass(frozen=True)
class Selection:
    """What a retry of ``node`` would do in ``phase`` (see the module docstring)."""

    node: str
    zone: str
    phase: Phase
    steps: tuple[Planned, ...]
    gates: tuple[tuple[Wave, Step], ...]

    @property
    def stops_node(self) -> bool:
        """A ``stop`` of the node is to run."""
        return any(p.action == "run" and p.step.kind == "stop" for p in self.steps)


@dataclass
class RetryReport:
    """What a retry did: printed by the CLI, returned by the flow, summarised in the ledger.

    Attributes:
        steps: ``(ledger key, ran|skipped|held, why)`` of each of the node's steps, in plan order.
        gates: ``(gate, outcome)`` of the health gates after them.
        zones_down_before: the zones with a node down when the retry began.
    """

    migration_id: str
    node: str
    phase: str
    steps: list[tuple[str, str, str]] = field(default_factory=list)
    gates: list[tuple[str, str]] = field(default_factory=list)
    zones_down_before: list[str] = field(default_factory=list)

    @property
    def ran(self) -> list[str]:
        """The steps this retry ran."""
        return [k for k, what, _w in self.steps if what == "ran"]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """The steps skipped as done, with why."""
        return [(k, why) for k, what, why in self.steps if what == "skipped"]

    @property
    def held(self) -> list[tuple[str, str]]:
        """The steps left to the migration run, with why."""
        return [(k, why) for k, what, why in self.steps if what == "held"]

    def lines(self) -> list[str]:
        """The report, one line per step, in plan order."""
        out = [f"retry of {self.node} in phase {self.phase} (migration {self.migration_id}):"]
        out += [f"  {what:8} {k}" + (f": {why}" if why else "") for k, what, why in self.steps]
        out += [f"  gate     {k}: {what}" for k, what in self.gates]
        return out

    def to_dict(self) -> dict:
        """The report as data (the flow's result)."""
        return {"migration_id": self.migration_id, "node": self.node, "phase": self.phase,
                "steps": [{"step": k, "outcome": what, "why": why} for k, what, why in self.steps],
                "gates": [{"gate": k, "outcome": w} for k, w in self.gates],
                "zones_down_before": self.zones_down_before}


# ---------------------------------------------------------------------------- the pure rules
def _completed(doc: LedgerDoc, node: str, key: str) -> bool:
    rec = doc.nodes.get(node)
    s = rec.steps.get(key) if rec else None
    return s is not None and s.completed


def _zone_of(plan: MigrationPlan) -> dict[str, str]:
    return {n: z for z, ns in plan.zones for n in ns}


def _node_steps(plan: MigrationPlan, node: str) -> list[tuple[Phase, Wave, Step]]:
    return [(ph, w, s) for ph in plan.phases for w in ph.waves for s in w.steps if s.node == node]


def _target(plan: MigrationPlan, doc: LedgerDoc, node: str, step: str | None) -> tuple[Phase, str]:
    mine = _node_steps(plan, node)
    if not mine:
        nodes = sorted({s.node for s in plan.steps() if s.node})
        raise PlanError(f"{node} is not a node of migration {plan.migration_id}'s plan ({', '.join(nodes)})")
    keys = [(ph, f"{ph.name}:{s.kind}") for ph, _w, s in mine]
    if step is not None:
        cands = [(ph, k) for ph, k in keys if k == step or (":" not in step and k.split(":", 1)[1] == step)]
        if not cands:
            raise PlanError(f"{node} has no step {step!r} in the plan; its steps: {', '.join(k for _p, k in keys)}")
        return next(((ph, k) for ph, k in cands if not _completed(doc, node, k)), cands[0])
    rec = doc.nodes.get(node)
    for ph, k in keys:
        s = rec.steps.get(k) if rec else None
        if s is not None and not s.completed:  # failed, or left running by a process that died
            return ph, k
    raise PlanError(f"{node} has no failed step in migration {plan.migration_id}: nothing to retry "
                    f"(name one with --step)")


def select(plan: MigrationPlan, doc: LedgerDoc, node: str, step: str | None = None) -> Selection:
    """What a retry of ``node`` (at ``step``, default: its failed step) runs, skips and holds.

    Args:
        plan: the migration's saved plan.
        doc: its ledger, as read now.
        node: the node to retry.
        step: ``<phase>:<kind>`` or ``<kind>`` (the first such step not done).

    Raises:
        PlanError: the migration is over, the node or step is not in the plan, or the node has
            no failed step and none was named.
    """
    if doc.state in ("done", "rolled-back"):
        raise PlanError(f"migration {doc.migration_id} is {doc.state}: nothing to retry")
    phase, _key = _target(plan, doc, node, step)
    out: list[Planned] = []
    held_why = ""
    for w in phase.waves:
        for s in w.steps:
            if s.node != node:
                continue
            key = f"{phase.name}:{s.kind}"
            if _completed(doc, node, key):
                out.append(Planned(key, w, s, "skip", "done earlier in this migration (ledger)"))
                continue
            if not held_why and w.together:
                behind = sorted(o.node for o in w.steps if o.node not in (None, node)
                                and not _completed(doc, o.node, key))
                if behind:
                    held_why = (f"wave {w.name} runs on every node together and {', '.join(behind)} did not "
                                f"do it yet: that is the migration run's")
            out.append(Planned(key, w, s, "held", held_why) if held_why else Planned(key, w, s, "run"))
    zone = _zone_of(plan).get(node, "?")
    waves = list(phase.waves)
    last = max(i for i, w in enumerate(waves) if any(s.node == node for s in w.steps))
    gates: list[tuple[Wave, Step]] = []
    for w in waves[last + 1:]:
        if any(s.node is not None for s in w.steps):
            break  # the next round's nodes: not this retry's
        gates += [(w, s) for s in w.steps if s.kind == "wait-healthy" and s.arg("scope") in (zone, "all")]
    return Selection(node, zone, phase, tuple(out), tuple(gates))


def zones_down_at_once(plan: MigrationPlan, phase: Phase) -> int:
    """The most zones the plan itself stops together in ``phase`` (its ``max_zones_down``
    rounds; every zone for the flip and the simple procedure's stop; 0 without a stop)."""
    zone = _zone_of(plan)
    return max((len({zone.get(s.node, "?") for s in w.steps if s.kind == "stop" and s.node})
                for w in phase.waves), default=0)


def check_zones(plan: MigrationPlan, sel: Selection, down: set[str]) -> list[str]:
    """Refuse a retry that would take more zones down than the plan does in this phase.

    Args:
        plan: the saved plan.
        sel: the retry.
        down: the nodes observed down now.

    Returns:
        The zones with a node down now (sorted).

    Raises:
        PlanError: the retry stops a node that runs, and that makes more zones down than
            :func:`zones_down_at_once` allows.
    """
    zone = _zone_of(plan)
    now = sorted({zone.get(n, "?") for n in down})
    if not sel.stops_node or sel.node in down:
        return now
    after = set(now) | {sel.zone}
    allowed = zones_down_at_once(plan, sel.phase)
    if len(after) > allowed:
        others = sorted(n for n in down if zone.get(n) != sel.zone)
        raise PlanError(
            f"retrying {sel.node} would stop it and take zone {sel.zone} down while zone(s) {', '.join(now)} "
            f"are down already ({', '.join(others)} not running): {len(after)} zones down, and phase "
            f"{sel.phase.name} takes at most {allowed} down at once (max_zones_down); refused, nothing done. "
            f"Bring those nodes back first")
    return now


# ---------------------------------------------------------------------------- running it
class _NoQuestions:
    """A retry asks nobody: a question belongs to the migration run."""

    async def ask(self, kind, key: str, description: str, choices: tuple[str, ...] = ()) -> Answer:
        raise MigrationAborted(f"a node retry does not ask questions ({kind} {key}): run the migration")


async def nodes_down(rt: Runtime) -> set[str]:
    """The nodes whose service does not run now (an unreachable node counts as down)."""
    async def one(name: str) -> bool:
        try:
            return not (await probes.service_state(rt.shell(name), rt.node(name).ctx)).active
        except GarageMigrateError:
            return True
    names = [n.name for n in rt.facts.nodes]
    with in_step(None, "retry-observe"):
        got = await asyncio.gather(*(one(n) for n in names))
    return {n for n, d in zip(names, got) if d}


def saved_plan(rt: Runtime) -> LoadedPlan:
    """The plan the migration's last run executed (``plan_digest`` in its ledger).

    Raises:
        PlanError: the migration never ran a plan (no digest), or the file is missing.
    """
    digest = rt.ledger.doc.plan_digest
    if not digest:
        raise PlanError(f"migration {rt.ledger.doc.migration_id} has not run yet: nothing to retry")
    return load_plan(rt.ledger.path.parent, digest)


async def retry_node(rt: Runtime, plan: MigrationPlan, node: str, step: str | None = None, *,
                     hold: Callable[[Runtime], Awaitable[ClusterLock]], steps: StepRunner,
                     reporter: Reporter | None = None,
                     log: logging.Logger | logging.LoggerAdapter | None = None) -> RetryReport:
    """Retry ``node`` as the module docstring says and return what was done.

    Args:
        rt: the open runtime of the migration.
        plan: its saved plan (:func:`saved_plan`).
        node: the node.
        step: the step to retry (default: the node's failed one).
        hold: takes the migration's cluster lock through the runtime it is given.
        steps: the step runner (Prefect tasks in the flow).
        reporter: publishes the ledger table afterwards.
        log: where to say what happens.

    Raises:
        PlanError: nothing to retry, or the zone rule refused it (nothing was done).
        ClusterLockedError: the migration's run (or another migration) holds the cluster.
        GarageMigrateError: a step failed (recorded in the ledger; the rest was not run).
    """
    log = log or rt.log
    led = rt.ledger
    select(plan, led.refresh(), node, step)  # refuse a request that makes no sense before any lock
    rt = with_journal(rt, CommandJournal.beside(led.path))
    with in_step(None, "cluster-lock"):
        lock = await hold(rt)
    try:
        sel = select(plan, led.refresh(), node, step)  # again, as the holder
        report = RetryReport(plan.migration_id, node, sel.phase.name)
        report.zones_down_before = check_zones(plan, sel, await nodes_down(rt))
        ex = Executor(rt, plan, MigrationOptions(), steps=steps, decider=_NoQuestions(), reporter=reporter, log=log)
        await led.event("retry-node", f"retry of {node} in phase {sel.phase.name}: "
                        + ", ".join(f"{p.key} {p.action}" for p in sel.steps), nodes=[node])
        for p in sel.steps:
            if p.action == "skip":
                log.info("[%s] %s: skipped: %s", node, p.key, p.why)
                report.steps.append((p.key, "skipped", p.why))
            elif p.action == "held":
                log.info("[%s] %s: not run by this retry: %s", node, p.key, p.why)
                report.steps.append((p.key, "held", p.why))
            else:
                log.info("[%s] %s: running (retry)", node, p.key)
                await ex.run_recorded(sel.phase, p.step)
                report.steps.append((p.key, "ran", ""))
        doc = led.refresh()
        zone = _zone_of(plan)
        for w, s in sel.gates:
            scope = s.arg("scope")
            mine = [(x.node, f"{sel.phase.name}:{x.kind}") for ww in sel.phase.waves for x in ww.steps
                    if x.node and (scope == "all" or zone.get(x.node) == scope)]
            waiting = sorted({n for n, k in mine if not _completed(doc, n, k)})
            if report.held or waiting:
                why = f"not run: {', '.join(waiting)} not finished with phase {sel.phase.name}" if waiting else \
                      "not run: steps were held"
                report.gates.append((f"{w.name}:{s.kind}:{scope}", why))
                continue
            res = await ex.run_cluster_once(sel.phase, w, s)  # None: recorded done earlier
            report.gates.append((f"{w.name}:{s.kind}:{scope}", "passed" if res is not None else
                                 "skipped: done earlier in this migration (ledger)"))
    except BaseException as exc:
        await lock.stop_heartbeats()
        if isinstance(exc, PlanError):  # refused (the zone rule): nothing was done
            await led.event("retry-node", f"retry of {node} refused: {exc}", nodes=[node])
        elif isinstance(exc, GarageMigrateError) and not isinstance(exc, SupersededError):
            await led.event("retry-node", f"retry of {node} failed: {type(exc).__name__}: {exc}", nodes=[node])
            await led.set(state="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    await lock.stop_heartbeats()  # the hold stays: the migration is still half-way
    await led.event("retry-node", f"retry of {node} in phase {sel.phase.name} finished: ran "
                    f"{', '.join(report.ran) or 'nothing'}; skipped {', '.join(k for k, _w in report.skipped) or 'nothing'}",
                    nodes=[node])
    if reporter is not None:
        await reporter.progress(plan.migration_id, sel.phase.name, led.progress(plan.node_step_count),
                                status_rows(led.doc))
    return report
