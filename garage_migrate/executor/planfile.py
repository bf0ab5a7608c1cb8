"""The plan a run executes, kept as JSON beside the ledger (``plan-<digest>.json``, owner-only)."""

from __future__ import annotations

import json
from pathlib import Path

from ..backup.manifest import write_private_file
from ..plan import MigrationPlan


def plan_path(directory: Path, digest: str) -> Path:
    """Where a run keeps the plan it executed: ``plan-<digest>.json`` in ``directory``."""
    return Path(directory) / f"plan-{digest}.json"


def save_plan(plan: MigrationPlan, directory: Path) -> Path:
    """Write ``plan``'s JSON (:meth:`MigrationPlan.to_json`) into ``directory`` (the ledger's,
    or a dry run's), owner-only."""
    path = plan_path(directory, plan.digest())
    write_private_file(path, (json.dumps(plan.to_json(), indent=2) + "\n").encode())
    return path
