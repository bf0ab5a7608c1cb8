"""The deployments' pull step: enter the project checkout named by ``GARAGE_MIGRATE_HOME``.

A worker starts each flow run in its own process, in the worker's directory; the flow's code
(``flows/migration.py``...) is found relative to the checkout. Prefect's own
``set_working_directory`` with ``{{ $GARAGE_MIGRATE_HOME }}`` fails, when the variable is unset
on the worker, only later and with ``FileNotFoundError: ... flows/migration.py``, naming nothing
an operator can act on. This step checks first and says what to set, where.

``deployments/prefect.yaml`` calls it as ``flows.pull_step.enter_project_home`` (the project
is installed in the worker's virtualenv, so it imports before the directory changes). Prefect
keeps a failed pull step's exception in the worker's log only; the message is therefore also
written to the flow run's own log, which the run's page in the UI shows.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

ENV_VAR = "GARAGE_MIGRATE_HOME"
#: a file every checkout has: a directory without it is not the project
MARKER = Path("flows") / "migration.py"


class ProjectHomeError(RuntimeError):
    """``GARAGE_MIGRATE_HOME`` is unset on the worker, or does not name a project checkout.

    Not in the engine's error tree (:mod:`garage_migrate.errors`): it is raised before any
    migration exists, by Prefect's deployment machinery, and shown as the flow run's crash.
    """


def _fix() -> str:
    return (f"set {ENV_VAR} to the garage-migrate checkout in the environment of the worker "
            f"(e.g. `export {ENV_VAR}=/opt/garage-migrate` before `prefect worker start --pool garage-migrate`), "
            "then retry the flow run")


def enter_project_home(env_var: str = ENV_VAR) -> dict[str, str]:
    """Change into the checkout named by ``$GARAGE_MIGRATE_HOME``; the pull step's output.

    Args:
        env_var: the environment variable to read (the default is the documented one).

    Returns:
        ``{"directory": <absolute path>}`` (a pull step's outputs are a dict).

    Raises:
        ProjectHomeError: the variable is unset or empty, or names a directory that is not a
            garage-migrate checkout; the message names the variable and how to set it.
    """
    raw = os.environ.get(env_var, "").strip()
    if not raw:
        _fail(f"{env_var} is not set on this worker, so the flow's code cannot be found: {_fix()}")
    home = Path(raw).expanduser().resolve()
    if not (home / MARKER).is_file():
        _fail(f"{env_var}={raw} is not a garage-migrate checkout (no {MARKER} there): {_fix()}")
    os.chdir(home)
    return {"directory": str(home)}


def _fail(message: str):
    """Say ``message`` in the flow run's log (when in one), then raise it."""
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if run_id:
        from prefect.logging.loggers import flow_run_logger

        flow_run_logger(flow_run_id=uuid.UUID(run_id)).error("Deployment pull step failed: %s", message)
    raise ProjectHomeError(message)
