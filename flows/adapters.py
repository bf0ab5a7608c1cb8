"""The Prefect implementations of the executor's interfaces (:mod:`garage_migrate.executor`).

- :class:`PrefectSteps`: each engine step as its Prefect task (``tasks``), so task retries of
  transient faults still work; the gates run in the flow, as the engine's.
- :class:`PrefectReporter`: the plan, progress, ledger table and report artifacts, one card each,
  and Prefect events (``garage-migrate.<name>``, resource ``garage-migrate.migration.<id>``
  labelled with the cluster, phase and node, the flow run as a related resource and its UI
  link in the payload).
- The decider is :class:`flows.approvals.PrefectDecider` (the pause that takes only a real answer).
"""

from __future__ import annotations

import json
import logging
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate
from prefect.settings import PREFECT_UI_URL
from prefect.states import Completed

import tasks as T
from flows.approvals import prefect_key as artifact_key
from flows.cancel import PrefectSignalDeferral
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
    flip = staticmethod(T.flip)  # the whole window in one task: no per-node task inside it
    signal_deferral = PrefectSignalDeferral  # SIGTERM held during the flip, the cancel intent still acknowledged


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
    """Publishes the executor's plan, progress, ledger table and report as Prefect artifacts.

    One card of each per flow run: the progress and the ledger table are created once, then
    updated in place (same artifact, same key), so the run's artifacts tab shows the plan, the
    progress, the ledger and the report, not a copy of the table per phase. The table has the
    few columns a person reads (:func:`garage_migrate.ledger_view.status_rows`); the full
    detail stays in the ledger and the command journal.
    """

    def __init__(self):
        self.progress_id: UUID | None = None
        self.ledger_id: UUID | None = None
        self.report_key: str | None = None
        self.report_id: UUID | None = None
        self.report_markdown = ""

    async def plan(self, migration_id: str, markdown: str, description: str) -> None:
        """The plan as a markdown artifact ``plan-<migration id>``."""
        await create_markdown_artifact(markdown, key=artifact_key("plan", migration_id), description=description)

    async def progress(self, migration_id: str, phase: str, percent: float, rows: list[dict]) -> None:
        """The progress and the ledger table ``ledger-<migration id>``, each created once, then updated."""
        what = f"Migration {migration_id}: after phase {phase}"
        if self.progress_id is None:
            self.progress_id = await create_progress_artifact(percent, key=artifact_key("progress", migration_id),
                                                              description=what)
        else:
            await update_progress_artifact(self.progress_id, percent, description=what)
        if self.ledger_id is None:
            self.ledger_id = await create_table_artifact(rows, key=artifact_key("ledger", migration_id),
                                                         description=f"Ledger of {what}")
        else:
            async with get_client() as client:
                await client.update_artifact(self.ledger_id, ArtifactUpdate(
                    data=json.dumps(rows), description=f"Ledger of {what}"))  # as create_table_artifact stores it

    async def report(self, migration_id: str, markdown: str, description: str) -> None:
        """The final report as a markdown artifact ``report-<migration id>``; a second report of
        the same run (a dry run's summary after its watch report) goes on top of the same card."""
        key = artifact_key("report", migration_id)
        if self.report_id is not None and key == self.report_key:
            self.report_markdown = f"{markdown}\n\n---\n\n{self.report_markdown}"
            async with get_client() as client:
                await client.update_artifact(self.report_id, ArtifactUpdate(data=self.report_markdown,
                                                                            description=description))
            return
        self.report_key, self.report_markdown = key, markdown
        self.report_id = await create_markdown_artifact(markdown, key=key, description=description)

    def finished(self, result):
        """The flow's return: ``result`` with :meth:`links`, as a Completed state whose message
        names the report (the run's page shows it), or ``result`` itself when it is a state."""
        if not isinstance(result, dict):
            return result
        links = self.links()
        out = {**result, **links}
        if not links:
            return out
        return Completed(message=f"Report: {links.get('report_url') or links['report_artifact']}", data=out)

    def links(self) -> dict[str, str]:
        """Where the final report is, for the flow run's result (empty before a report)."""
        if self.report_id is None:
            return {}
        out = {"report_artifact": self.report_key, "report_artifact_id": str(self.report_id)}
        ui = PREFECT_UI_URL.value()
        if ui:
            out["report_url"] = f"{ui.rstrip('/')}/artifacts/artifact/{self.report_id}"
        return out

    async def event(self, name: str, migration_id: str, cluster: str, *, phase: str | None = None,
                    node: str | None = None, message: str = "", **data) -> None:
        """A Prefect event (:func:`emit`)."""
        emit(name, migration_id, cluster, phase=phase, node=node, message=message, **data)
