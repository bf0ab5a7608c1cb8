"""The rollback as a plan: its own phases, shown and approved like a migration's, executed by the
same executor (:class:`~garage_migrate.executor.Executor`).

Every node goes back to the binary and the metadata it had when this migration backed it up:
stop every node at once (0.7 and 0.8 nodes cannot talk, so nothing is gained by a rolling
rollback), point ``binary_path`` back at the recorded original, restore the metadata from the
verified backup (the current dir is moved aside, never deleted), start on the original
version, wait until every node sees every node healthy, then a sync gate.

The plan is made from the ledger (each node's original binary, version and backup manifest)
and a ``tag`` that names the restore's paths on the nodes, so the plan shows the very
commands that run. Writes acknowledged after a node's backup are lost on that node, as with
any restore: the plan says when each backup was taken.
"""

from __future__ import annotations

import time

from . import actions as A
from .backup.manifest import load_manifest
from .discovery import ClusterFacts
from .errors import PlanError
from .inventory import Inventory
from .ledger_model import LedgerDoc
from .plan import MigrationPlan, Phase, Step, Wave

#: The phases of a rollback, after its approval.
PHASES = ("rollback-stop", "rollback-switch", "rollback-restore", "rollback-start", "rollback-check")


def new_tag() -> str:
    """A tag for a new rollback plan (UTC time): names its restore paths on the nodes."""
    return "rb-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def make_rollback_plan(inv: Inventory, facts: ClusterFacts, doc: LedgerDoc, *, tag: str,
                       nodes: list[str] | None = None, approve: bool = True) -> MigrationPlan:
    """Plan the rollback of ``nodes`` (default: every node) of the migration in ``doc``.

    Args:
        inv: the inventory.
        facts: the cluster as discovered now.
        doc: the migration's ledger (original binaries, versions, backups).
        tag: names the restore's paths (:func:`new_tag`).
        nodes: the nodes to roll back.
        approve: begin with an approval phase (a person approves the plan); ``False`` when the
            rollback is itself a person's answer (the failed flip's "roll back every node").

    Raises:
        PlanError: a node has no verified backup, original binary or original version in
            this migration (nothing to roll it back to), or is not in the cluster.
    """
    names = nodes or [n.name for n in facts.nodes]
    missing = []
    for n in names:
        rec = doc.nodes.get(n)
        if rec is None or rec.backup is None or rec.backup.sha256 is None or not rec.binary_before \
                or not rec.version_before:
            missing.append(n)
    if missing:
        raise PlanError(f"cannot roll back {', '.join(missing)}: no verified backup, original binary or original "
                        f"version recorded in migration {doc.migration_id}")
    stops, switches, restores, starts, backed_up = [], [], [], [], []
    for n in names:
        rec = doc.nodes[n]
        spec = A.spec(inv, facts, n)
        m = load_manifest(rec.backup.manifest)
        stops.append(Step("stop", n, (("version", rec.version_before),), A.bind(n, A.stop(spec).ops())))
        switches.append(Step("switch", n, (("to", "source"),), A.bind(n, A.switch(spec, rec.binary_before, config_to="source",
                                                                   kept_config=rec.config_kept).ops())))
        r = A.restore(spec, tag=tag, member_root=m.root, compressed_bytes=m.compressed_bytes,
                      uncompressed_bytes=m.uncompressed_bytes,
                      archive_on_node=m.archive if m.mode == "on-node" else None)
        restores.append(Step("restore", n, (("tag", tag),), A.bind(n, r.ops(), (r.put_back,)),
                             note=f"backup taken {m.created_at:%Y-%m-%d %H:%M:%S} UTC"))
        starts.append(Step("start", n, (("version", rec.version_before),), A.bind(n, A.start(spec).ops())))
        backed_up.append(f"{n} at {m.created_at:%H:%M:%S} UTC")
    phases = []
    if approve:
        phases.append(Phase("approve-rollback", "Approval: roll every listed node back to its backup",
                            (Wave("approve", (Step("approval", args=(("gate", "rollback"),)),)),), risky=True))
    phases += [
        Phase("rollback-stop", "Stop the nodes at once", (Wave("stop", tuple(stops), together=True),)),
        Phase("rollback-switch", "Point binary_path back at the original binary (and garage.toml back at the "
              "config kept by the switch, where it changed)", (Wave("switch", tuple(switches)),)),
        Phase("rollback-restore", "Restore the metadata from this migration's verified backups (the current dir "
              "is moved aside, never deleted)", (Wave("restore", tuple(restores)),)),
        Phase("rollback-start", "Start every node on its original version", (Wave("start", tuple(starts), together=True),)),
        Phase("rollback-check", "Wait until healthy, then the sync gate",
              (Wave("healthy", (Step("wait-healthy", args=(("scope", "all"),)),)),
               Wave("sync-gate", (Step("sync-gate", args=(("gate", "rollback"),)),)))),
    ]
    versions = {n: doc.nodes[n].version_before for n in names}
    return MigrationPlan(
        procedure="rollback", migration_id=doc.migration_id, cluster=inv.cluster,
        source_versions=tuple(sorted((n.name, n.version or "") for n in facts.nodes)),
        target_version=",".join(sorted(set(versions.values()))), replication_mode=facts.replication_mode,
        zones=tuple((z, tuple(ns)) for z, ns in facts.zones.items()), phases=tuple(phases),
        warnings=("writes acknowledged after a node's backup are lost on that node (a restore goes back to the "
                  "backup point): " + "; ".join(backed_up),))
