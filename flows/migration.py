"""Both procedures of the Garage 0.8 migration guide as Prefect flows.

The flows only sequence, fan out, pause and report: the plan comes from the planner
(:mod:`garage_migrate.plan`), every side effect is a task (:mod:`tasks`), every decision a
person takes is recorded in the ledger, so a flow-run retry never asks the same question twice.

Rules that hold in both flows:

- no 0.8 start on a node without a verified backup from this migration (enforced by the start
  step itself);
- no proceeding past a gate that did not pass unless a person chose "proceed anyway" (the
  ledger records who and why);
- after the simultaneous restart of the minimal-downtime flow, a node that fails to come up on
  0.8 pauses the flow with "retry the node" / "roll back every node".
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.exceptions import Abort

import tasks as T
from flows.approvals import Approval, Asker, CountersDecision, GateDecision, NodeFailureDecision
from flows.approvals import prefect_key as _key
from garage_migrate import runtime as R
from flows.holding import hold_cluster, refused
from garage_migrate.errors import ClusterLockedError, MigrationAborted, SupersededError
from garage_migrate.plan import MigrationOptions, MigrationPlan, Phase, Step, Wave

DEFAULT_PAUSE_TIMEOUT = 3600

__all__ = ["Approval", "CountersDecision", "GateDecision", "MigrationAborted", "NodeFailureDecision",
           "Runner", "minimal_downtime_migration", "simple_migration"]




#: Cluster steps that a resumed run skips once the ledger records them done. Approvals are
#: not among them: their reuse follows the decision rule (same plan digest, a person's answer).
_SKIPPABLE_WHEN_DONE = frozenset({"repair", "sync-gate", "wait-healthy", "check-counters"})


def _detail(res) -> str:
    return str(getattr(res, "detail", None) or getattr(res, "status", None) or "")[:500]


class Runner:
    """Executes a plan phase by phase; one instance per flow run."""

    def __init__(self, rt: R.Runtime, plan: MigrationPlan, opts: MigrationOptions, auto_approve: bool,
                 pause_timeout: int, asker: Asker):
        self.rt = rt
        self.plan = plan
        self.opts = opts
        self.auto_approve = auto_approve
        self.pause_timeout = pause_timeout
        self.asker = asker
        self.log = get_run_logger()
        self.progress_id = None
        self.step_kinds = list(OrderedDict.fromkeys(f"{ph.name}:{s.kind}" for ph in plan.phases for w in ph.waves
                                                    for s in w.steps if s.node is not None))

    # ------------------------------------------------------------------ reporting
    async def report(self, phase: str) -> None:
        pct = self.rt.ledger.progress(self.plan.node_step_count)
        if self.progress_id is None:
            self.progress_id = await create_progress_artifact(pct, key=_key("progress", self.plan.migration_id),
                                                              description=f"Migration {self.plan.migration_id}")
        else:
            await update_progress_artifact(self.progress_id, pct)
        await create_table_artifact(self.rt.ledger.table_rows(self.step_kinds), key=_key("ledger", self.plan.migration_id),
                                    description=f"Ledger after phase {phase}")

    # ------------------------------------------------------------------ decisions
    async def decide(self, key: str, description: str, form, clean: bool) -> str:
        """A person's decision at ``key`` (or the auto-approve rule's, for a clean approval).

        A person's approval recorded in the ledger for the same plan digest is reused (a retry
        does not ask the same question twice); one given for another plan is not. Decisions
        on a gate, the counters or a failed flip answer what was observed at that moment, so a
        new attempt that observes the problem again asks again. Nothing else is a decision:
        no default, no empty resume, no retry.
        """
        digest = self.plan.digest()
        rec = self.rt.ledger.gate(key) or {}
        if form is Approval and rec.get("by") == "person" and rec.get("decision"):
            if rec.get("plan_digest") == digest:
                self.log.info("gate %s: %r decided by a person earlier for this plan (%s): reused",
                              key, rec["decision"], digest)
                return rec["decision"]
            self.log.warning("gate %s: the recorded %r was given for plan %s, this run's plan is %s: asking again",
                             key, rec["decision"], rec.get("plan_digest"), digest)
        if self.auto_approve and clean and form is Approval:
            await self.rt.ledger.record_gate(key, decision="approve", by="auto-approve", plan_digest=digest,
                                             note="gate passed cleanly")
            await self.rt.ledger.event("auto-approve", f"{key}: approve (rule: auto_approve, clean gate)")
            return "approve"
        await self.rt.ledger.record_gate(key, status="waiting", decision=None, by=None, plan_digest=digest)
        answer = await self.asker.ask(form, key, description, self.pause_timeout)
        await self.rt.ledger.record_gate(key, status="decided", decision=answer.action, by="person",
                                         note=answer.note, plan_digest=digest, flow_run_id=answer.flow_run_id,
                                         pause_key=answer.pause_key, decided_at=time.time())
        await self.rt.ledger.event("decision", f"{key}: {answer.action}", note=answer.note, by="person",
                                   pause_key=answer.pause_key)
        return answer.action

    # ------------------------------------------------------------------ execution
    async def run(self) -> None:
        previous = self.rt.ledger.data.get("plan_digest")
        if previous and previous != self.plan.digest():
            # a resumed run re-plans from what the nodes are now (some already on 0.8); the steps
            # the ledger records as done are skipped, so the new plan only fills the gaps
            await self.rt.ledger.event("replan", f"plan changed since the last run ({previous} -> {self.plan.digest()})")
        if self.rt.ledger.data.get("error"):
            await self.rt.ledger.event("previous-error", f"the previous attempt failed: {self.rt.ledger.data['error']}")
        await self.rt.ledger.set(plan_digest=self.plan.digest(), state="running", error=None)
        await create_markdown_artifact(self.plan.to_markdown(), key=_key("plan", self.plan.migration_id),
                                       description="The migration plan")
        for phase in self.plan.phases:
            await self.rt.ledger.event("phase", f"start {phase.name}")
            for wave in phase.waves:
                await self.run_wave(phase, wave)
            await self.rt.ledger.event("phase", f"end {phase.name}")
            await self.report(phase.name)

    async def run_wave(self, phase: Phase, wave: Wave) -> None:
        cluster_steps = [s for s in wave.steps if s.node is None]
        for s in cluster_steps:
            key = ":".join([phase.name, wave.name, s.kind] + [f"{k}={v}" for k, v in s.args])
            if s.kind in _SKIPPABLE_WHEN_DONE and self.rt.ledger.cluster_step_done(key):
                # a resumed run (e.g. after a failed flip) must not repeat the cluster-wide work
                # of the phases it finished: a repair launch fails while a node is down
                self.log.info("[cluster] %s: skipped: done earlier in this migration (ledger)", key)
                continue
            res = await self.run_cluster_step(phase, s)
            if s.kind in _SKIPPABLE_WHEN_DONE:
                await self.rt.ledger.record_cluster_step(key, "done", _detail(res))
        by_node: dict[str, list[Step]] = OrderedDict()
        for s in wave.steps:
            if s.node is not None:
                by_node.setdefault(s.node, []).append(s)
        if not by_node:
            return
        sem = asyncio.Semaphore(self.opts.fanout.max_parallel_nodes)

        async def node_sequence(node: str, seq: list[Step]):
            async with sem:
                for s in seq:
                    key = f"{phase.name}:{s.kind}"
                    if self.rt.ledger.step_done(node, key):
                        self.log.info("[%s] %s: skipped: done earlier in this migration (ledger)", node, key)
                        continue
                    await self.rt.ledger.record_step(node, key, "running")
                    try:
                        res = await self.run_node_step(s)
                    except BaseException as exc:
                        await self.rt.ledger.record_step(node, key, "failed", f"{type(exc).__name__}: {exc}",
                                                         code=str(getattr(exc, "code", "FAILED")))
                        raise
                    await self.rt.ledger.record_step(node, key, res.status, res.detail)
        results = await asyncio.gather(*(node_sequence(n, seq) for n, seq in by_node.items()), return_exceptions=True)
        failed = {n: r for n, r in zip(by_node, results) if isinstance(r, BaseException)}
        for r in failed.values():
            if isinstance(r, SupersededError):
                raise r  # taken over: never ask about a failure, never act again
        if failed and phase.name == "flip" and wave.name == "start":
            await self.flip_failed(failed)
        elif failed:
            first = next(iter(failed.values()))
            self.log.error("wave %s failed on %s", wave.name, ", ".join(f"{n}: {e}" for n, e in failed.items()))
            raise first

    async def run_node_step(self, s: Step):
        rt, n = self.rt, s.node
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
            case "stage":
                return await T.stage_binary(rt, n)
            case "switch":
                return await T.switch_binary(rt, n, "target")
            case "offline-repair":
                return await T.offline_repair(rt, n)
        raise ValueError(f"no node task for step {s.kind}")

    async def run_cluster_step(self, phase: Phase, s: Step):
        rt = self.rt
        rt.ledger.check_holder()  # a superseded run never launches anything on the cluster
        match s.kind:
            case "repair":
                return await T.launch_repair(rt, s.arg("what"))
            case "sync-gate":
                return await self.sync_gate(s.arg("gate"))
            case "approval":
                key = f"approve-{s.arg('gate')}"
                md = (f"**{phase.title}**\n\n" + self.plan.to_markdown(from_phase=self._next_phase(phase).name)
                      + "\n\n#### Cluster facts\n" + rt.facts.to_markdown())
                if await self.decide(key, md, Approval, clean=True) == "abort":
                    raise MigrationAborted(f"aborted at {key}")
                return None
            case "wait-healthy":
                scope = s.arg("scope")
                nodes = [n.name for n in rt.facts.nodes if scope == "all" or n.zone == scope]
                return await T.wait_healthy(rt, nodes, scope)
            case "check-counters":
                res = await T.check_counters(rt)
                if res.status != "done":
                    md = f"**Bucket counters look wrong**\n\n{res.detail}\n\nProceed anyway (recorded) or abort."
                    if await self.decide("counters", md, CountersDecision, clean=False) == "abort":
                        raise MigrationAborted("aborted at the counters check")
                return res
            case "watch":
                return await self.watch()
        raise ValueError(f"no cluster task for step {s.kind}")

    def _next_phase(self, phase: Phase) -> Phase:
        names = [p.name for p in self.plan.phases]
        i = names.index(phase.name)
        return self.plan.phases[min(i + 1, len(names) - 1)]

    async def sync_gate(self, name: str):
        attempt = 0
        while True:
            attempt += 1
            outcome = await R.run_sync_gate(self.rt, self.opts, f"sync-{name}")
            await self.rt.ledger.record_gate(f"sync-{name}", status=outcome.status, attempt=attempt,
                                             reasons=list(outcome.reasons))
            if outcome.status == "passed":
                return outcome
            decision = await self.decide(f"sync-{name}-{attempt}", outcome.render_markdown(), GateDecision, clean=False)
            if decision == "abort":
                raise MigrationAborted(f"aborted at sync gate {name}")
            if decision == "proceed_anyway":
                await self.rt.ledger.event("proceed-anyway", f"sync gate {name} did not pass", reasons=list(outcome.reasons))
                return outcome

    async def flip_failed(self, failed: dict) -> None:
        """A node did not come up on 0.8 after the simultaneous restart: retry it or roll back."""
        attempt = 0
        while failed:
            attempt += 1
            md = ("**Nodes failed to start on 0.8** after the simultaneous restart; the cluster must not stay "
                  "split across versions.\n\n" + "\n".join(f"- {n}: {e}" for n, e in failed.items()))
            decision = await self.decide(f"flip-failure-{attempt}", md, NodeFailureDecision, clean=False)
            if decision == "rollback":
                from flows.rollback import rollback_all

                await rollback_all(self.rt)
                raise MigrationAborted("rolled back every node to 0.7 after a failed 0.8 start")
            results = await asyncio.gather(*(T.start_node(self.rt, n, self.plan.target_version) for n in failed),
                                           return_exceptions=True)
            for n, r in zip(list(failed), results):
                if not isinstance(r, BaseException):
                    await self.rt.ledger.record_step(n, "flip:start", r.status, r.detail, retried=attempt)
            failed = {n: r for n, r in zip(list(failed), results) if isinstance(r, BaseException)}

    async def watch(self):
        """The post-upgrade watch window: health and queues, ending in a report."""
        end = time.monotonic() + self.opts.watch_s
        samples = []
        while True:
            outcome = await R.observe_once(self.rt)
            samples.append(outcome)
            if time.monotonic() >= end:
                break
            await asyncio.sleep(min(5.0, max(0.5, self.opts.watch_s / 10)))
        md = R.watch_report(self.rt, samples)
        await create_markdown_artifact(md, key=_key("report", self.plan.migration_id), description="Final report")
        return md


async def _migrate(procedure: str, inventory: str, migration_id: str | None, options: MigrationOptions,
                   dry_run: bool, auto_approve: bool, pause_timeout: int):
    log = get_run_logger()
    try:
        return await _migrate_held(procedure, inventory, migration_id, options, dry_run, auto_approve,
                                   pause_timeout, log)
    except ClusterLockedError as exc:
        return refused(exc, log)
    except SupersededError as exc:
        # another attempt owns this flow run now: propose no state (it would overwrite the new
        # attempt's), write nothing, touch nothing
        log.warning("%s", exc)
        raise Abort(str(exc)) from None


async def _migrate_held(procedure, inventory, migration_id, options, dry_run, auto_approve, pause_timeout, log):
    # a dry run writes no ledger either: it must not pin the migration to a procedure
    async with R.open_runtime(inventory, procedure, migration_id, dry_run=dry_run, log=log, persist=not dry_run) as rt:
        plan = R.plan_for(rt, procedure, options)
        log.info("plan %s (%s):\n%s", plan.migration_id, plan.digest(), plan.to_text())
        if dry_run:
            await create_markdown_artifact(plan.to_markdown(), key=_key("plan", plan.migration_id),
                                           description="Dry run: the plan (nothing was changed)")
            for n in rt.facts.nodes:
                await T.preflight(rt, n.name)
            return {"migration_id": plan.migration_id, "dry_run": True, "plan_digest": plan.digest()}
        if rt.ledger.data.get("state") in ("done", "rolled-back"):
            msg = f"migration {plan.migration_id} is already {rt.ledger.data['state']}: nothing to do"
            if rt.ledger.data["state"] == "rolled-back":
                # its backups, steps and decisions belong to the attempt that was rolled back:
                # reusing them would restore stale backups and lose every write since
                msg += " (start a new attempt with a new migration_id)"
            log.info(msg)
            await rt.ledger.event("rerun", msg)
            await create_markdown_artifact(f"**{msg}** (ledger `{rt.ledger.path}`)",
                                           key=_key("report", plan.migration_id), description="Nothing to do")
            return {"migration_id": plan.migration_id, "ledger": str(rt.ledger.path),
                    "state": rt.ledger.data["state"], "changed": False}
        # the cluster lock, before any command that changes anything
        lock = await hold_cluster(rt, procedure, "migration", log)
        runner = Runner(rt, plan, options, auto_approve, pause_timeout,
                        asker=Asker(lock.identity.token, lock.superseded, log))
        try:
            await runner.run()
        except SupersededError:
            await lock.stop_heartbeats()
            raise
        except BaseException as exc:
            await lock.stop_heartbeats()
            # a rollback already set its own final state: keep it, record the error beside it
            rolled_back = rt.ledger.refresh().get("state") == "rolled-back"
            try:
                await rt.ledger.set(state="rolled-back" if rolled_back else "failed",
                                    error=f"{type(exc).__name__}: {exc}")
                if rolled_back:
                    await lock.release()
            except SupersededError:
                pass  # taken over meanwhile: the new run owns the ledger
            raise
        await rt.ledger.set(state="done", error=None)
        await lock.release()
        return {"migration_id": plan.migration_id, "ledger": str(rt.ledger.path), "state": "done", "changed": True}


@flow(name="simple-migration", log_prints=False)
async def simple_migration(inventory: str, migration_id: str | None = None,
                           options: MigrationOptions = MigrationOptions(), dry_run: bool = False,
                           auto_approve: bool = False, pause_timeout: int = DEFAULT_PAUSE_TIMEOUT) -> dict:
    """Garage 0.7 -> 0.8, simple procedure: the whole cluster goes offline (guide steps 1-11).

    Args:
        inventory: path of the inventory YAML on the worker.
        migration_id: stable id of this migration (default ``<cluster>-to-v<target>``); a new
            run with the same id resumes it from its ledger.
        options: repairs, gate deadlines, watch window, fan-out policy.
        dry_run: facts and plan only; nothing on the cluster changes.
        auto_approve: approve gates that passed cleanly (scheduled runs); anything abnormal
            still waits for a person, up to ``pause_timeout``.
        pause_timeout: seconds an approval waits (set it to what is left of the window).
    """
    return await _migrate("simple", inventory, migration_id, options, dry_run, auto_approve, pause_timeout)


@flow(name="minimal-downtime-migration", log_prints=False)
async def minimal_downtime_migration(inventory: str, migration_id: str | None = None,
                                     options: MigrationOptions = MigrationOptions(), dry_run: bool = False,
                                     auto_approve: bool = False, pause_timeout: int = DEFAULT_PAUSE_TIMEOUT) -> dict:
    """Garage 0.7 -> 0.8, minimal-downtime procedure (guide steps 1-5, from v0.8.2's guide).

    Zone-by-zone backups while the cluster serves, every node restarted on 0.8 at once, then
    zone-by-zone offline counter repairs. Arguments as for :func:`simple_migration`.
    """
    return await _migrate("minimal-downtime", inventory, migration_id, options, dry_run, auto_approve, pause_timeout)
