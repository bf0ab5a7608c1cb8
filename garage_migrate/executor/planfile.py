"""The plan a run executes, kept as JSON beside the ledger (``plan-<digest>.json``, owner-only),
and read back (:func:`load_plan`) by what must run *that* plan again: a retry of one node's
steps (:mod:`.retry`) runs the acts the approved plan listed, not those of a new plan."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..backup.manifest import write_private_file
from ..errors import PlanError
from ..plan import MigrationPlan, Phase, Step, Wave


def plan_path(directory: Path, digest: str) -> Path:
    """Where a run keeps the plan it executed: ``plan-<digest>.json`` in ``directory``."""
    return Path(directory) / f"plan-{digest}.json"


def save_plan(plan: MigrationPlan, directory: Path) -> Path:
    """Write ``plan``'s JSON (:meth:`MigrationPlan.to_json`) into ``directory`` (the ledger's,
    or a dry run's), owner-only."""
    path = plan_path(directory, plan.digest())
    write_private_file(path, (json.dumps(plan.to_json(), indent=2) + "\n").encode())
    return path


@dataclass(frozen=True)
class RecordedOp:
    """An action of a saved plan, as its JSON recorded it: what the journal and the executor's
    allow-list compare (the node, the kind, the rendered command), without the builder that
    made it (the steps rebuild their commands from the same builders when they run)."""

    kind: str
    argv: tuple[str, ...]
    command: str

    def words(self) -> tuple[str, ...]:
        """The command's words."""
        return self.argv

    def render(self) -> str:
        """The command line, as the plan printed it."""
        return self.command


@dataclass(frozen=True)
class LoadedPlan(MigrationPlan):
    """A plan read back from its file: its digest is the one it was saved (and approved) under."""

    saved_digest: str = ""

    def digest(self) -> str:
        """The digest recorded in the file (the ledger's ``plan_digest``)."""
        return self.saved_digest


def _step(d: dict) -> Step:
    from ..actions import NodeAction

    actions = tuple(NodeAction(a["node"], RecordedOp(a["kind"], tuple(a["argv"]), a["command"]),
                               bool(a.get("on_failure", False))) for a in d.get("actions", ()))
    return Step(d["kind"], d.get("node"), tuple(sorted((k, str(v)) for k, v in (d.get("args") or {}).items())),
                actions, bool(d.get("one_of", False)), d.get("note", ""))


def load_plan(directory: Path, digest: str) -> LoadedPlan:
    """Read ``plan-<digest>.json`` from ``directory`` back into a plan the executor runs.

    Raises:
        PlanError: no such file, or not a plan this version wrote (format, digest).
    """
    path = plan_path(directory, digest)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"the plan of this migration's last run is not at {path}") from None
    except (OSError, ValueError) as exc:
        raise PlanError(f"{path}: cannot read the saved plan: {exc}") from None
    if d.get("format") != 1 or d.get("digest") != digest:
        raise PlanError(f"{path}: not the saved plan {digest} (format {d.get('format')!r}, "
                        f"digest {d.get('digest')!r})")
    try:
        phases = tuple(Phase(ph["name"], ph["title"],
                             tuple(Wave(w["name"], tuple(_step(s) for s in w["steps"]), bool(w["parallel"]),
                                        w.get("zone"), bool(w.get("together", False))) for w in ph["waves"]),
                             bool(ph.get("risky", False))) for ph in d["phases"])
        return LoadedPlan(procedure=d["procedure"], migration_id=d["migration_id"], cluster=d["cluster"],
                          source_versions=tuple(sorted(d["source_versions"].items())),
                          target_version=d["target_version"], replication_mode=d["replication_mode"],
                          zones=tuple((z, tuple(ns)) for z, ns in d["zones"].items()), phases=phases,
                          warnings=tuple(d.get("warnings", ())), max_parallel_nodes=int(d["max_parallel_nodes"]),
                          saved_digest=digest)
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"{path}: not a saved plan ({type(exc).__name__}: {exc})") from None
