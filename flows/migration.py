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
import re
import time
from collections import OrderedDict
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

import tasks as T
from garage_migrate import runtime as R
from garage_migrate.errors import GarageMigrateError
from garage_migrate.plan import MigrationOptions, MigrationPlan, Phase, Step, Wave

DEFAULT_PAUSE_TIMEOUT = 3600


class Approval(RunInput):
    """Approve or abort the next risky phase."""

    action: Literal["approve", "abort"] = "approve"
    note: str = ""


class GateDecision(RunInput):
    """A gate did not pass: wait more, proceed anyway (recorded), or abort."""

    action: Literal["wait_more", "proceed_anyway", "abort"] = "wait_more"
    note: str = ""


class NodeFailureDecision(RunInput):
    """A node failed to come up on 0.8 after the simultaneous restart."""

    action: Literal["retry", "rollback"] = "retry"
    note: str = ""


class MigrationAborted(GarageMigrateError):
    """A person chose to abort at a gate (recorded in the ledger)."""


def _key(*parts: str) -> str:
    """A pause/artifact key: lowercase letters, digits and dashes only (Prefect's rule)."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


class Runner:
    """Executes a plan phase by phase; one instance per flow run."""

    def __init__(self, rt: R.Runtime, plan: MigrationPlan, opts: MigrationOptions, auto_approve: bool,
                 pause_timeout: int):
        self.rt = rt
        self.plan = plan
        self.opts = opts
        self.auto_approve = auto_approve
        self.pause_timeout = pause_timeout
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
    async def decide(self, key: str, description: str, input_cls, clean: bool):
        """Ask a person (or auto-approve a clean gate); remember the answer in the ledger."""
        rec = self.rt.ledger.gate(key)
        if rec and rec.get("decision"):
            self.log.info("gate %s: already decided %r by %s", key, rec["decision"], rec.get("by"))
            return rec["decision"]
        default = input_cls.model_fields["action"].default
        if self.auto_approve and clean:
            await self.rt.ledger.record_gate(key, decision=default, by="auto-approve", note="gate passed cleanly")
            return default
        await self.rt.ledger.record_gate(key, status="waiting")
        answer = await pause_flow_run(wait_for_input=input_cls.with_initial_data(description=description, action=default),
                                      key=_key(key), timeout=self.pause_timeout, poll_interval=1)
        await self.rt.ledger.record_gate(key, decision=answer.action, by="person", note=answer.note)
        await self.rt.ledger.event("decision", f"{key}: {answer.action}", note=answer.note)
        return answer.action

    # ------------------------------------------------------------------ execution
    async def run(self) -> None:
        previous = self.rt.ledger.data.get("plan_digest")
        if previous and previous != self.plan.digest():
            # a resumed run re-plans from what the nodes are now (some already on 0.8); the steps
            # the ledger records as done are skipped, so the new plan only fills the gaps
            await self.rt.ledger.event("replan", f"plan changed since the last run ({previous} -> {self.plan.digest()})")
        await self.rt.ledger.set(plan_digest=self.plan.digest(), state="running")
        await create_markdown_artifact(self.plan.to_markdown(), key=_key("plan", self.plan.migration_id),
                                       description="The migration plan")
        for phase in self.plan.phases:
            await self.rt.ledger.event("phase", f"start {phase.name}")
            for wave in phase.waves:
                await self.run_wave(phase, wave)
            await self.rt.ledger.event("phase", f"end {phase.name}")
            await self.report(phase.name)
        await self.rt.ledger.set(state="done")

    async def run_wave(self, phase: Phase, wave: Wave) -> None:
        cluster_steps = [s for s in wave.steps if s.node is None]
        for s in cluster_steps:
            await self.run_cluster_step(phase, s)
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
                    if await self.decide("counters", md, GateDecision, clean=False) == "abort":
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
                   dry_run: bool, auto_approve: bool, pause_timeout: int) -> dict:
    log = get_run_logger()
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
        runner = Runner(rt, plan, options, auto_approve, pause_timeout)
        try:
            await runner.run()
        except BaseException as exc:
            # a rollback already set its own final state: keep it, record the error beside it
            state = "rolled-back" if rt.ledger.data.get("state") == "rolled-back" else "failed"
            await rt.ledger.set(state=state, error=f"{type(exc).__name__}: {exc}")
            raise
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
