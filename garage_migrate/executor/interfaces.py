"""What the executor is given: the interfaces its callers implement (no Prefect here).

- :class:`StepRunner` runs one engine step (a Prefect task in the flows, so task retries
  still work; :class:`EngineSteps` calls the engine directly).
- :class:`Decider` asks a person, or answers by rule (the Prefect pause in the flows, the
  terminal prompt in the CLI, a script in tests). The *reuse rule* is not the decider's: it
  lives in :mod:`garage_migrate.executor.decisions`.
- :class:`Reporter` publishes progress, the ledger table and markdown (Prefect artifacts in
  the flows; :class:`NullReporter` otherwise), and emits the events of :data:`EVENTS`
  (Prefect events, which the automations of ``deployments/automations.yaml`` notify).
- The clock is :class:`garage_migrate.gates.Clock` (monotonic time and sleeping).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from .. import api_step, backup_step, runtime, steps
from ..gates import GateOutcome
from ..plan import MigrationOptions
from ..steps import Runtime, StepResult
from . import flipresume
from .flip import FlipOutcome, FlipUnit, run_barrier
from .flipresume import NodeState

DecisionKind = Literal["approval", "gate", "counters", "flip-failure"]

#: the answers each kind of decision accepts; none of them is a default
ACTIONS: dict[str, tuple[str, ...]] = {
    "approval": ("approve", "abort"),
    "gate": ("wait_more", "proceed_anyway", "abort"),
    "counters": ("proceed_anyway", "abort"),
    "flip-failure": ("retry", "rollback"),
}


@dataclass(frozen=True)
class Answer:
    """A person's answer to one question.

    Attributes:
        action: one of :data:`ACTIONS` for the question's kind.
        note: why (kept in the ledger and the report).
        pause_key: the key the question was asked under.
        flow_run_id: the run that asked (empty outside Prefect).
        sender: who answered, when known.
    """

    action: str
    note: str
    pause_key: str
    flow_run_id: str
    sender: str | None = None


class Decider(Protocol):
    """Asks a person one question and returns only a real answer."""

    async def ask(self, kind: DecisionKind, key: str, description: str, choices: tuple[str, ...]) -> Answer:
        """Ask question ``key`` of ``kind`` (``description`` is markdown) and wait for the answer,
        offering only ``choices`` (those of :data:`ACTIONS` that apply to this question).

        Raises:
            MigrationAborted: nobody answered in time (not approved, nothing done).
            SupersededError: the run was taken over while waiting.
        """
        ...


#: The events a run emits (``Reporter.event``'s names; Prefect prefixes ``garage-migrate.``).
EVENTS = ("phase.started", "phase.finished", "approval.needed", "node.failed", "migration.done",
          "migration.failed", "migration.rolled-back", "watch.observed", "watch.regression")


class Reporter(Protocol):
    """Publishes what the executor does (artifacts in Prefect)."""

    async def plan(self, migration_id: str, markdown: str, description: str) -> None:
        """Publish the plan (``markdown``)."""
        ...

    async def progress(self, migration_id: str, phase: str, percent: float, rows: list[dict]) -> None:
        """Publish the progress (0-100) and the ledger table after ``phase``."""
        ...

    async def report(self, migration_id: str, markdown: str, description: str) -> None:
        """Publish the final report (or why there was nothing to do)."""
        ...

    async def event(self, name: str, migration_id: str, cluster: str, *, phase: str | None = None,
                    node: str | None = None, message: str = "", **data) -> None:
        """Emit event ``name`` (one of :data:`EVENTS`) about this migration; never raises."""
        ...


class NullReporter:
    """A reporter that publishes nothing (the log and the ledger still say everything)."""

    async def plan(self, migration_id: str, markdown: str, description: str) -> None:
        """See :meth:`Reporter.plan`."""

    async def progress(self, migration_id: str, phase: str, percent: float, rows: list[dict]) -> None:
        """See :meth:`Reporter.progress`."""

    async def report(self, migration_id: str, markdown: str, description: str) -> None:
        """See :meth:`Reporter.report`."""

    async def event(self, name: str, migration_id: str, cluster: str, *, phase: str | None = None,
                    node: str | None = None, message: str = "", **data) -> None:
        """See :meth:`Reporter.event`."""


class StepRunner(Protocol):
    """Runs one engine step; the signatures are those of the Prefect tasks in ``tasks``."""

    async def preflight(self, rt: Runtime, node: str) -> StepResult:
        """Reachability, versions, disk space, config keys 0.8 ignores."""
        ...

    async def set_api(self, rt: Runtime, node: str | None, enabled: bool) -> StepResult:
        """Cut or restore client access (the inventory's API gate)."""
        ...

    async def launch_repair(self, rt: Runtime, what: str) -> StepResult:
        """``garage repair --all-nodes --yes <what>`` (returns at once; the gate waits)."""
        ...

    async def stop_node(self, rt: Runtime, node: str) -> StepResult:
        """Stop gracefully; verified stopped and lock released."""
        ...

    async def start_node(self, rt: Runtime, node: str, version: str) -> StepResult:
        """Start; verified version (and backup present before any 0.8 start)."""
        ...

    async def wait_healthy(self, rt: Runtime, nodes: list[str], scope: str) -> StepResult:
        """Every node of ``nodes`` sees the others healthy."""
        ...

    async def backup_metadata(self, rt: Runtime, node: str) -> StepResult:
        """Back up the stopped node's metadata, verified (reuses a verified backup)."""
        ...

    async def stage_binary(self, rt: Runtime, node: str, helper: bool = False) -> StepResult:
        """Upload + sha256 + version check of the staged binary (and, with ``helper``, of the
        flip helper); live symlink untouched."""
        ...

    async def flip(self, rt: Runtime, unit: FlipUnit) -> FlipOutcome:
        """The simultaneous restart as one unit (:mod:`.flip`): every stop at once, a barrier,
        every start at once; one call for the whole window (one Prefect task in the flows)."""
        ...

    async def switch_binary(self, rt: Runtime, node: str, to: str = "target") -> StepResult:
        """Atomic, reversible symlink flip (``to``: ``target`` or ``source``)."""
        ...

    async def offline_repair(self, rt: Runtime, node: str) -> StepResult:
        """``offline-repair --yes object_counters``; never retried blindly."""
        ...

    async def check_counters(self, rt: Runtime) -> StepResult:
        """Bucket counters consistent with the object tables."""
        ...

    async def restore_node(self, rt: Runtime, node: str, tag: str | None = None) -> StepResult:
        """Restore one stopped node's metadata from its verified backup (paths named by ``tag``)."""
        ...

    async def sync_gate(self, rt: Runtime, opts: MigrationOptions, name: str) -> GateOutcome:
        """The sync gate ``name``: every queue empty on every node for N observations."""
        ...

    async def observe_once(self, rt: Runtime) -> dict[str, tuple[str, ...]]:
        """One observation of every node's queues and reachability: node -> blocking reasons."""
        ...

    async def observe_node(self, rt: Runtime, node: str) -> NodeState:
        """The node's service state and version, read from the node (a resumed flip's look)."""
        ...


class EngineSteps:
    """A :class:`StepRunner` that calls the engine directly (no retries, no Prefect)."""

    async def preflight(self, rt: Runtime, node: str) -> StepResult:
        """:func:`garage_migrate.steps.preflight`."""
        return await steps.preflight(rt, node)

    async def set_api(self, rt: Runtime, node: str | None, enabled: bool) -> StepResult:
        """:func:`garage_migrate.api_step.set_api`."""
        return await api_step.set_api(rt, node, enabled)

    async def launch_repair(self, rt: Runtime, what: str) -> StepResult:
        """:func:`garage_migrate.steps.launch_repair`."""
        return await steps.launch_repair(rt, what)

    async def stop_node(self, rt: Runtime, node: str) -> StepResult:
        """:func:`garage_migrate.steps.stop_node`."""
        return await steps.stop_node(rt, node)

    async def start_node(self, rt: Runtime, node: str, version: str) -> StepResult:
        """:func:`garage_migrate.steps.start_node`."""
        return await steps.start_node(rt, node, version)

    async def wait_healthy(self, rt: Runtime, nodes: list[str], scope: str) -> StepResult:
        """:func:`garage_migrate.steps.wait_healthy`."""
        return await steps.wait_healthy(rt, nodes)

    async def backup_metadata(self, rt: Runtime, node: str) -> StepResult:
        """:func:`garage_migrate.backup_step.backup_metadata`."""
        return await backup_step.backup_metadata(rt, node)

    async def stage_binary(self, rt: Runtime, node: str, helper: bool = False) -> StepResult:
        """:func:`garage_migrate.steps.stage_binary`."""
        return await steps.stage_binary(rt, node, helper)

    async def flip(self, rt: Runtime, unit: FlipUnit) -> FlipOutcome:
        """Every node's flip helper checked (and its SSH connection opened) before the window,
        and every config that moves with the binary (:func:`~garage_migrate.flip_steps.check_configs`),
        then :func:`.flip.run_barrier` over the helper's calls (:mod:`garage_migrate.flip_steps`)."""
        from .. import flip_steps as H

        await H.check_helpers(rt, list(unit.nodes))
        kept = await H.check_configs(rt, [s.node for s in unit.switches])
        return await run_barrier(rt, unit, stop=lambda n, go: H.helper_stop(rt, n, go),
                                 switch=lambda n: H.helper_switch(rt, n),
                                 start=lambda n, go: H.helper_start(rt, n, unit.target, go), before=kept)

    async def switch_binary(self, rt: Runtime, node: str, to: str = "target") -> StepResult:
        """:func:`garage_migrate.steps.switch_binary`."""
        return await steps.switch_binary(rt, node, to)

    async def offline_repair(self, rt: Runtime, node: str) -> StepResult:
        """:func:`garage_migrate.steps.offline_repair`."""
        return await steps.offline_repair(rt, node)

    async def check_counters(self, rt: Runtime) -> StepResult:
        """:func:`garage_migrate.steps.check_counters`."""
        return await steps.check_counters(rt)

    async def restore_node(self, rt: Runtime, node: str, tag: str | None = None) -> StepResult:
        """:func:`garage_migrate.backup_step.restore_node`."""
        return await backup_step.restore_node(rt, node, tag)

    async def sync_gate(self, rt: Runtime, opts: MigrationOptions, name: str) -> GateOutcome:
        """:func:`garage_migrate.runtime.run_sync_gate`."""
        return await runtime.run_sync_gate(rt, opts, name)

    async def observe_once(self, rt: Runtime) -> dict[str, tuple[str, ...]]:
        """:func:`garage_migrate.runtime.observe_once`."""
        return await runtime.observe_once(rt)

    async def observe_node(self, rt: Runtime, node: str) -> NodeState:
        """:func:`garage_migrate.executor.flipresume.observe`."""
        return await flipresume.observe(rt, node)
