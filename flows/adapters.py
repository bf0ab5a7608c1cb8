"""The Prefect implementations of the executor's interfaces (:mod:`garage_migrate.executor`).

- :class:`PrefectSteps`: each engine step as its Prefect task (``tasks``), so task retries of
  transient faults still work; the gates run in the flow, as the engine's.
- :class:`PrefectReporter`: progress, table and markdown artifacts, and Prefect events
  (``garage-migrate.<name>``, resource ``garage-migrate.migration.<id>`` labelled with the
  cluster, phase and node, the flow run as a related resource and its UI link in the payload).
- The decider is :class:`flows.approvals.PrefectDecider` (the pause that takes only a real answer).
"""

from __future__ import annotations

import logging

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

import tasks as T
from flows.approvals import prefect_key as artifact_key
from garage_migrate import backup_step
from garage_migrate.executor import EngineSteps
from garage_migrate.steps import Runtime, StepResult


@task(name="restore-metadata", task_run_name="restore-{node}", **T.ONCE)
async def restore_node(rt: Runtime, node: str, tag: str | None = None) -> StepResult:
    """Restore one stopped node's metadata from its verified backup (never cached: a restore
    must run every time it is asked for)."""
    return await backup_step.restore_node(T._rt(rt), node, tag)


class PrefectSteps(EngineSteps):
    """The engine's steps as Prefect tasks; ``sync_gate`` and ``observe_once`` as the engine's."""

    preflight = staticmethod(T.preflight)
    set_api = staticmethod(T.set_api)
    launch_repair = staticmethod(T.launch_repair)
    stop_node = staticmethod(T.stop_node)
    start_node = staticmethod(T.start_node)
    wait_healthy = staticmethod(T.wait_healthy)
    backup_metadata = staticmethod(T.backup_metadata)
    stage_binary = staticmethod(T.stage_binary)
    switch_binary = staticmethod(T.switch_binary)
    offline_repair = staticmethod(T.offline_repair)
    check_counters = staticmethod(T.check_counters)
    restore_node = staticmethod(restore_node)


log = logging.getLogger("garage_migrate.events")


def flow_run_link(flow_run_id) -> str | None:
    """The flow run's page in the UI (``PREFECT_UI_URL`` + ``/runs/flow-run/<id>``)."""
    from prefect.utilities.urls import url_for

    return url_for("flow-run", obj_id=str(flow_run_id)) if flow_run_id else None


def emit(name: str, migration_id: str, cluster: str, *, phase: str | None = None, node: str | None = None,
         message: str = "", **data) -> None:
    """Emit ``garage-migrate.<name>`` about migration ``migration_id`` from the current flow run
    (see the module docstring); an event that cannot be sent is logged, never raised."""
    from prefect.events import emit_event
    from prefect.runtime import flow_run

    resource = {"prefect.resource.id": f"garage-migrate.migration.{migration_id}",
                "prefect.resource.name": migration_id, "garage-migrate.migration": migration_id,
                "garage-migrate.cluster": cluster}
    if phase:
        resource["garage-migrate.phase"] = phase
    if node:
        resource["garage-migrate.node"] = node
    frid = flow_run.get_id()
    related = [{"prefect.resource.id": f"prefect.flow-run.{frid}", "prefect.resource.role": "flow-run",
                "prefect.resource.name": flow_run.get_name() or ""}] if frid else []
    payload = {"message": message, "url": flow_run_link(frid), "flow_run_id": frid, **data}
    try:
        emit_event(f"garage-migrate.{name}", resource=resource, related=related, payload=payload)
    except Exception as exc:  # noqa: BLE001 - a notification never stops a migration
        log.warning("event garage-migrate.%s not emitted: %s: %s", name, type(exc).__name__, exc)


class PrefectReporter:
    """Publishes the executor's plan, progress, ledger table and report as Prefect artifacts."""

    def __init__(self, ledger_table_description: str = "Ledger after phase {phase}"):
        self.progress_id = None
        self.table_description = ledger_table_description

    async def plan(self, migration_id: str, markdown: str, description: str) -> None:
        """The plan as a markdown artifact ``plan-<migration id>``."""
        await create_markdown_artifact(markdown, key=artifact_key("plan", migration_id), description=description)

    async def progress(self, migration_id: str, phase: str, percent: float, rows: list[dict]) -> None:
        """A progress artifact (created once, then updated) and the ledger table."""
        if self.progress_id is None:
            self.progress_id = await create_progress_artifact(percent, key=artifact_key("progress", migration_id),
                                                              description=f"Migration {migration_id}")
        else:
            await update_progress_artifact(self.progress_id, percent)
        await create_table_artifact(rows, key=artifact_key("ledger", migration_id),
                                    description=self.table_description.format(phase=phase))

    async def report(self, migration_id: str, markdown: str, description: str) -> None:
        """The final report as a markdown artifact ``report-<migration id>``."""
        await create_markdown_artifact(markdown, key=artifact_key("report", migration_id), description=description)

    async def event(self, name: str, migration_id: str, cluster: str, *, phase: str | None = None,
                    node: str | None = None, message: str = "", **data) -> None:
        """A Prefect event (:func:`emit`)."""
        emit(name, migration_id, cluster, phase=phase, node=node, message=message, **data)
