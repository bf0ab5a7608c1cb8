"""The executor: runs a :class:`~garage_migrate.plan.MigrationPlan` phase by phase, wave by wave.

Prefect-free: every side effect goes through the injected :class:`StepRunner` (Prefect tasks
in the flows), every question through :class:`Decisions` over an injected :class:`Decider`,
every publication through a :class:`Reporter`, and the watch window's time through a
:class:`~garage_migrate.gates.Clock`.

Guarantees (issue 8):

- every node step records ``running`` in the fenced ledger before it runs, and every cluster
  step checks the ledger holder first: a superseded process raises
  :class:`~garage_migrate.errors.SupersededError` before it acts, and is never asked about a
  failure;
- a step the ledger records as done in this migration is skipped (and the log says why);
- a run whose plan changed since the last run records a ``replan`` event; approvals given for
  the old plan are asked again (see :mod:`.decisions`);
- a run resumed inside the simultaneous restart looks at the nodes before it (service state,
  versions), records what it found (``flip-resume``) and finishes the flip from there: a node
  found on anything but the target is stopped again whatever the ledger says (:mod:`.flipresume`);
- before each wave, the window guard (:mod:`garage_migrate.window`) refuses a unit (a round, the
  flip, the simple procedure's offline part) that cannot finish in the maintenance window, and
  marks the backup round of a node whose backup is too old to run again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from .. import dialog
from ..errors import MigrationAborted, PlanError, SupersededError
from ..gates import Clock, SystemClock
from ..journal import in_step
from ..ledger_view import status_rows
from ..plan import MigrationOptions, MigrationPlan, Phase, Step, Wave
from ..runtime import watch_report
from ..steps import Runtime, StepResult
from ..window import WindowGuard, WindowPolicy
from ..watch.run import against_baseline
from . import flip as flipunit
from . import flipresume
from .decisions import Decisions
from .interfaces import ACTIONS, Decider, NullReporter, Reporter, StepRunner
from .rollback import rollback_plan_for, run_rollback
from .schedule import NodeSequence, schedule_wave


#: Cluster steps that a resumed run skips once the ledger records them done.
SKIPPABLE_WHEN_DONE = frozenset({"repair", "sync-gate", "wait-healthy", "check-counters"})
#: Node steps that run again on a resumed run even when the ledger records them done: their
#: record can go stale (the inventory's binary or config may have changed between runs), and
#: they observe first, so running again costs one look when nothing changed.
ALWAYS_OBSERVED = frozenset({"stage"})


def _detail(res) -> str:
    return str(getattr(res, "detail", None) or getattr(res, "status", None) or "")[:500]


class Executor:
    """Executes one plan for one run.

    Args:
        rt: the runtime (inventory, shells, ledger, facts).
        plan: the plan to execute.
        opts: the options the plan was made with (gate deadlines, watch window, fan-out).
        steps: runs each engine step (the Prefect tasks in the flows).
        decider: asks a person.
        reporter: publishes progress and reports.
        clock: time for the watch window.
        auto_approve: approve clean approvals by rule.
        log: the run's logger (default: the runtime's).
        window: the maintenance window and backup age limit (:mod:`garage_migrate.window`;
            default: no window, any backup age).
    """

    def __init__(self, rt: Runtime, plan: MigrationPlan, opts: MigrationOptions, *, steps: StepRunner,
                 decider: Decider, reporter: Reporter | None = None, clock: Clock | None = None,
                 auto_approve: bool = False, log: logging.Logger | logging.LoggerAdapter | None = None,
                 window: WindowPolicy | None = None):
        window = window or WindowPolicy(backup_max_age_s=None)
        self.rt = rt = dataclasses.replace(rt, backup_max_age_s=window.backup_max_age_s)
        self.plan = plan
        self.opts = opts
        self.steps = steps
        self.reporter = reporter or NullReporter()
        self.clock = clock or SystemClock()
        self.log = log or rt.log
        self.decisions = Decisions(rt.ledger, decider, plan.digest(), auto_approve, self.log,
                                   on_ask=lambda kind, key: self.emit("approval.needed", phase=self.phase,
                                                                      message=f"{kind} {key}", key=key, kind=kind))
        self.window = WindowGuard(window, plan, rt.ledger, opts, self.log)
        self.phase: str | None = None  # the phase running now (for events)
        self.report_md: str | None = None  # the final report, once the watch step published it
        self.flip_found: dict[str, flipresume.NodeState] = {}  # a resumed flip: the nodes as found
        self.plan_has_flip = any(flipunit.is_flip(p) for p in plan.phases)

    async def decide(self, kind, key: str, description: str, clean: bool, choices: tuple[str, ...] | None = None) -> str:
        """See :meth:`Decisions.decide`."""
        return await self.decisions.decide(kind, key, description, clean, choices)

    async def emit(self, name: str, **kw) -> None:
        """Emit event ``name`` about this migration (:meth:`Reporter.event`)."""
        await self.reporter.event(name, self.plan.migration_id, self.rt.inv.cluster, **kw)

    # ------------------------------------------------------------------ execution
    async def run(self) -> None:
        """Execute every phase of the plan, recording each step in the ledger."""
        led, digest = self.rt.ledger, self.plan.digest()
        previous = led.doc.plan_digest
        if previous and previous != digest:
            # a resumed run re-plans from what the nodes are now (some already on 0.8); the steps
            # the ledger records as done are skipped, so the new plan only fills the gaps
            await led.event("replan", f"plan changed since the last run ({previous} -> {digest})")
        if led.doc.error:
            await led.event("previous-error", f"the previous attempt failed: {led.doc.error}")
        await led.set(plan_digest=digest, state="running", error=None)
        await self.reporter.plan(self.plan.migration_id, self.plan.to_markdown(), "The migration plan")
        await self.run_phases()

    async def run_phases(self) -> None:
        """Execute every phase of the plan in order (no header: a rollback plan runs inside a
        migration's ledger without taking over its plan digest)."""
        led = self.rt.ledger
        for phase in self.plan.phases:
            if phase.name == "flip" and flipresume.interrupted(led.doc.events):
                await self.look_before_resuming_the_flip()
            await led.event("phase", f"start {phase.name}")
            self.phase = phase.name
            await self.emit("phase.started", phase=phase.name, message=phase.title)
            if flipunit.is_flip(phase):  # stop, switch, start as one unit with a barrier
                await flipunit.execute_flip(self, phase)
            else:
                for wave in phase.waves:
                    await self.window.before(phase, wave)  # refuses what cannot finish in the window
                    await self.run_wave(phase, wave)
            await led.event("phase", f"end {phase.name}")
            await self.emit("phase.finished", phase=phase.name, message=phase.title)
            await self.reporter.progress(self.plan.migration_id, phase.name,
                                         led.progress(self.plan.node_step_count), status_rows(led.doc))

    async def run_wave(self, phase: Phase, wave: Wave) -> None:
        """Run ``wave`` as the scheduler says (:func:`.schedule.schedule_wave`, with the plan's
        ``max_parallel_nodes``): cluster steps first, then the node sequences batch by batch,
        the sequences of a batch concurrently. A batch with a failure ends the wave, so no
        further node is touched (the flip's start is one batch: its failure goes to
        :meth:`flip_failed`)."""
        ws = schedule_wave(wave, self.plan.max_parallel_nodes)
        for s in ws.cluster_steps:
            await self.run_cluster_once(phase, wave, s)

        async def node_sequence(seq: NodeSequence):
            for s in seq.steps:
                await self.run_recorded(phase, s)
        for batch in ws.batches:
            results = await asyncio.gather(*(node_sequence(q) for q in batch), return_exceptions=True)
            failed = {q.node: r for q, r in zip(batch, results) if isinstance(r, BaseException)}
            for r in failed.values():
                if isinstance(r, SupersededError):
                    raise r  # taken over: never ask about a failure, never act again
            if failed and phase.name == "flip" and wave.name == "start":
                await self.flip_failed(failed)
            elif failed:
                self.log.error("wave %s failed on %s", wave.name, ", ".join(f"{n}: {e}" for n, e in failed.items()))
                raise next(iter(failed.values()))

    async def look_before_resuming_the_flip(self) -> None:
        """An earlier run began the flip and never ended it: read every node's state from the
        node, record it (``flip-resume``), and keep it for the flip's stop wave."""
        self.rt.ledger.check_holder()
        names = [n.name for n in self.rt.facts.nodes]
        with in_step("flip", "observe"):
            states = await asyncio.gather(*(self.steps.observe_node(self.rt, n) for n in names))
        self.flip_found = dict(zip(names, states))
        msg = flipresume.describe(self.flip_found, self.plan.target_version)
        self.log.warning("%s", msg)
        await self.rt.ledger.event("flip-resume", msg, nodes=names)

    async def run_recorded(self, phase: Phase, s: Step) -> None:
        """One node step: skipped when done earlier, else ``running`` (fenced) then its result."""
        led, node, key = self.rt.ledger, s.node, f"{phase.name}:{s.kind}"
        found = self.flip_found.get(node) if phase.name == "flip" and s.kind == "stop" else None
        if found is not None and flipresume.needs_stop(found, self.plan.target_version) and self.window.done(phase.name, s):
            # the ledger lags behind the nodes: a node running the source must be stopped before any 0.8 start
            self.log.warning("[%s] %s: done in the ledger, but the node is %s: stopping it again", node, key,
                             found.describe())
        elif self.window.done(phase.name, s) and s.kind in ALWAYS_OBSERVED:
            self.log.info("[%s] %s: done earlier in this migration: checking it again on the node", node, key)
        elif self.window.done(phase.name, s):
            self.log.info("[%s] %s: skipped: done earlier in this migration (ledger)", node, key)
            return
        await led.record_step(node, key, "running")  # raises in a superseded process: it never acts
        attempt = len(led.step(node, key).attempts)  # the journal numbers its commands as the ledger does
        try:
            with in_step(phase.name, s.kind, attempt, allowed=s.allowed()):  # only the acts its plan step lists
                res = await self.run_node_step(s)
        except BaseException as exc:
            await led.record_step(node, key, "failed", f"{type(exc).__name__}: {exc}",
                                  code=str(getattr(exc, "code", "FAILED")))
            await self.emit("node.failed", phase=phase.name, node=node, message=f"{key}: {type(exc).__name__}: {exc}",
                            step=s.kind, code=str(getattr(exc, "code", "FAILED")))
            raise
        await led.record_step(node, key, res.status, res.detail)

    async def run_node_step(self, s: Step) -> StepResult:
        """Dispatch a node step to the step runner."""
        rt, n, T = self.rt, s.node, self.steps
        match s.kind:
            case "preflight":
                return await T.preflight(rt, n)
            case "disable-api" | "enable-api":
                return await T.set_api(rt, n, s.kind == "enable-api")
            case "stop":
                return await T.stop_node(rt, n)
            case "start":
                return await T.start_node(rt, n, s.arg("version"))
            case "backup":
                return await T.backup_metadata(rt, n)
            case "stage":  # with a flip, its node-side helper is staged and checked with the binary
                return await T.stage_binary(rt, n, helper=self.plan_has_flip)
            case "switch":
                return await T.switch_binary(rt, n, s.arg("to") or "target")
            case "restore":
                return await T.restore_node(rt, n, s.arg("tag"))
            case "offline-repair":
                return await T.offline_repair(rt, n)
        raise ValueError(f"no node task for step {s.kind}")

    async def run_cluster_once(self, phase: Phase, wave: Wave, s: Step):
        """A cluster step, skipped when the ledger records it done in this migration.

        Only the cluster-wide work (repairs, sync gates, health and counters checks) is
        skipped: a resumed run (e.g. after a failed flip) must not repeat it, since a repair
        launch fails while a node is down. Approvals follow the decision rule instead.
        """
        key = ":".join([phase.name, wave.name, s.kind] + [f"{k}={v}" for k, v in s.args])
        if (s.kind in SKIPPABLE_WHEN_DONE and self.rt.ledger.cluster_step_done(key)
                and not self.window.reruns(phase.name, wave.name)):  # a round whose backup is retaken
            self.log.info("[cluster] %s: skipped: done earlier in this migration (ledger)", key)
            return None
        res = await self.run_cluster_step(phase, s)
        if s.kind in SKIPPABLE_WHEN_DONE:
            await self.rt.ledger.record_cluster_step(key, "done", _detail(res))
        return res

    async def run_cluster_step(self, phase: Phase, s: Step):
        """Dispatch a cluster step (repair, gates, approvals, health, counters, watch)."""
        self.rt.ledger.check_holder()  # a superseded run never launches anything on the cluster
        with in_step(phase.name, s.kind, allowed=s.allowed()):
            return await self._cluster_step(phase, s)

    async def _cluster_step(self, phase: Phase, s: Step):
        rt = self.rt
        match s.kind:
            case "repair":
                return await self.steps.launch_repair(rt, s.arg("what"))
            case "sync-gate":
                return await self.sync_gate(s.arg("gate"))
            case "approval":
                key = f"approve-{s.arg('gate')}"
                note = self.window.approval_note(phase, self._wave_of(phase, s)).strip()
                md = dialog.approval(self.plan, phase, self._next_phase(phase), rt.facts.to_markdown(),
                                     ACTIONS["approval"], extra=[note] if note else ())
                if await self.decide("approval", key, md, clean=True) == "abort":
                    raise MigrationAborted(f"aborted at {key}")
                return None
            case "wait-healthy":
                scope = s.arg("scope")
                nodes = [n.name for n in rt.facts.nodes if scope == "all" or n.zone == scope]
                return await self.steps.wait_healthy(rt, nodes, scope)
            case "check-counters":
                res = await self.steps.check_counters(rt)
                if res.status == "failed":
                    md = dialog.counters(res.detail, ACTIONS["counters"])
                    if await self.decide("counters", "counters", md, clean=False) == "abort":
                        raise MigrationAborted("aborted at the counters check")
                return res
            case "watch":
                return await self.watch()
        raise ValueError(f"no cluster task for step {s.kind}")

    @staticmethod
    def _wave_of(phase: Phase, s: Step) -> Wave:
        return next(w for w in phase.waves if s in w.steps)

    def _next_phase(self, phase: Phase) -> Phase:
        names = [p.name for p in self.plan.phases]
        return self.plan.phases[min(names.index(phase.name) + 1, len(names) - 1)]

    async def sync_gate(self, name: str):
        """Run sync gate ``name`` until it passes or a person decides (wait more / proceed / abort)."""
        attempt = 0
        while True:
            attempt += 1
            outcome = await self.steps.sync_gate(self.rt, self.opts, f"sync-{name}")
            await self.rt.ledger.record_gate(f"sync-{name}", status=outcome.status, attempt=attempt,
                                             reasons=list(outcome.reasons))
            if outcome.status == "passed":
                return outcome
            md = dialog.gate(name, outcome.render_markdown(), outcome.choices)
            decision = await self.decide("gate", f"sync-{name}-{attempt}", md, clean=False, choices=outcome.choices)
            if decision == "abort":
                raise MigrationAborted(f"aborted at sync gate {name}")
            if decision == "proceed_anyway":
                await self.rt.ledger.event("proceed-anyway", f"sync gate {name} did not pass",
                                           reasons=list(outcome.reasons))
                return outcome

    async def flip_failed(self, failed: dict) -> None:
        """A node did not come up on 0.8 after the simultaneous restart: retry it or roll back."""
        attempt = 0
        while failed:
            attempt += 1
            try:
                back, why = rollback_plan_for(self.rt, approve=False), None  # what "roll back" will run
            except PlanError as exc:
                back, why = None, exc
            # only the answers that can run are offered: no "rollback" without a rollback plan
            choices = ACTIONS["flip-failure"] if back else ("retry",)
            md = dialog.flip_failure(failed, back.to_markdown() if back else None, why, choices)
            decision = await self.decide("flip-failure", f"flip-failure-{attempt}", md, clean=False, choices=choices)
            if decision == "rollback":
                if back is None:
                    raise MigrationAborted(f"roll back was chosen but cannot run: {why}")
                await run_rollback(self.rt, back, steps=self.steps, decider=self.decisions.decider,
                                   reporter=self.reporter, clock=self.clock, log=self.log)
                raise MigrationAborted("rolled back every node to 0.7 after a failed 0.8 start")
            self.rt.ledger.check_holder()
            # the plan's start steps of the failed nodes, as one unit again (the flip helper's
            # start, one round trip each; a cancel meanwhile is held as in the flip)
            starts = tuple(st for w in self.plan.phase("flip").waves for st in w.steps
                           if st.kind == "start" and st.node in failed)
            unit = flipunit.FlipUnit("flip", self.plan.target_version, (), (), starts, retried=attempt)
            failed = dict((await flipunit.run_held(self, unit)).failed)

    async def watch(self) -> str:
        """The post-upgrade watch window (timed by the injected clock), ending in a report."""
        end = self.clock.monotonic() + self.opts.watch_s
        samples = []
        while True:
            samples.append(await self.steps.observe_once(self.rt))
            if self.clock.monotonic() >= end:
                break
            await self.clock.sleep(min(5.0, max(0.5, self.opts.watch_s / 10)))
        md = watch_report(self.rt, samples) + "\n\n" + await against_baseline(self.rt)
        self.report_md = md
        await self.reporter.report(self.plan.migration_id, md, "Final report")
        return md
