"""The plan a run executes, kept as JSON beside the ledger (``plan-<digest>.json``, owner-only)."""

from __future__ import annotations

import json
from pathlib import Path

from ..backup.manifest import write_private_file
from ..plan import MigrationPlan


def plan_path(ledger_path: Path, digest: str) -> Path:
    """Where a run keeps the plan it executed: ``plan-<digest>.json`` beside the ledger."""
    return Path(ledger_path).with_name(f"plan-{digest}.json")


def save_plan(plan: MigrationPlan, ledger_path: Path) -> Path:
    """Write ``plan``'s JSON (:meth:`MigrationPlan.to_json`) beside the ledger, owner-only."""
    path = plan_path(ledger_path, plan.digest())
    write_private_file(path, (json.dumps(plan.to_json(), indent=2) + "\n").encode())
    return path
