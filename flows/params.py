"""The deployments' form fields: one title and one line of description per parameter.

Prefect builds a flow's form from its signature (``prefect.utilities.callables.parameter_schema``)
and gives every parameter the title of its name ("pause_timeout") and the description of the
docstring's ``Args`` entry, whatever ``Field(title=...)`` says: pydantic lets the field Prefect
builds override the one in ``Annotated``. The title and description are therefore also put in
``json_schema_extra``, which is applied last (:func:`param`). Units are said in words.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from flows.blocks import GarageCluster
from garage_migrate.plan import MigrationOptions


def param(title: str, description: str, **constraints: Any) -> Any:
    """A ``Field`` for ``Annotated[...]`` whose title and description reach Prefect's form."""
    return Field(title=title, description=description,
                 json_schema_extra={"title": title, "description": description}, **constraints)


Inventory = Annotated[str | GarageCluster, param(
    "Inventory", "Path of the inventory YAML on the worker, or a Garage Cluster block (the inventory and its "
                 "secrets).")]
# a migration id names a directory on the controller: a name, never a path
MigrationId = Annotated[str | None, param(
    "Migration id", "Names this migration's ledger; a new run with the same id resumes it. Empty: "
                    "<cluster>-to-v<target version>.", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
Options = Annotated[MigrationOptions, param(
    "Options", "Extra repairs, sync gate deadlines, the watch window and how nodes fan out over zones.")]
DryRun = Annotated[bool, param(
    "Dry run", "Read the cluster and show the plan and every command it would run; change nothing.")]
AutoApprove = Annotated[bool, param(
    "Approve clean gates automatically", "For scheduled runs: approvals whose gates all passed are given by "
                                         "rule (recorded); anything abnormal still waits for a person.")]
PauseTimeout = Annotated[int, param(
    "Approval wait (seconds)", "How many seconds each approval waits for an answer; no answer in time is "
                               "not an approval, and the run stops with nothing done.", ge=1, le=7 * 86400)]
Nodes = Annotated[list[str] | None, param(
    "Nodes", "The nodes to roll back, by name; empty: every node of the migration.")]
Procedure = Annotated[Literal["minimal-downtime", "simple"], param(
    "Procedure", "The procedure the migration was started with (it names the migration's ledger).")]
GateDeadline = Annotated[float, param(
    "Sync gate deadline (seconds)", "How many seconds the final sync gate waits for empty queues before it "
                                    "asks a person.", gt=0)]
WindowEnd = Annotated[datetime | None, param(
    "Window end", "When the maintenance window closes, with a time zone (e.g. 2026-12-06T04:00:00+00:00): no "
                  "phase starts that cannot finish before it, no approval waits past it.")]
WindowMinutes = Annotated[float | None, param(
    "Window length (minutes)", "Or: the window's length in minutes from the run's scheduled start (a run that "
                               "starts late has less of it left).", gt=0)]
BackupMaxAgeHours = Annotated[float, param(
    "Backup maximum age (hours)", "A node's backup older than this many hours is taken again before the flip (a "
                                  "migration resumed in a later window).", gt=0)]
WatchHours = Annotated[float, param(
    "Watch for (hours)", "How many hours the post-migration watch compares the cluster with its baseline.", ge=0)]
WatchEveryMinutes = Annotated[float, param(
    "Watch every (minutes)", "Minutes between two observations of the post-migration watch.", gt=0)]
ScheduleWatch = Annotated[bool, param(
    "Schedule the watch", "When the migration completes, schedule the post-migration-watch runs (off for a "
                          "terminal run with no lasting Prefect server: its report says how to watch instead).")]
InventoryPath = Annotated[str, param(
    "Inventory", "Path of the inventory YAML on the worker.")]
Node = Annotated[str, param(
    "Node", "The node whose failed step to run again, as the ledger table names it.")]
RetryStep = Annotated[str | None, param(
    "Step", "The step to run again, as phase:kind or kind; empty: the node's failed step.")]
Observation = Annotated[int, param(
    "Observation", "Which observation of the watch this run is (1 is the first).", ge=1)]
Planned = Annotated[int | None, param(
    "Observations planned", "How many observations the watch makes in all; empty: unknown.", ge=1)]
FinalObservation = Annotated[bool, param(
    "Last observation", "This run is the watch's last one: its report closes the watch.")]
