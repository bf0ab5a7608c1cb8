"""Setting up a migration run: inventory, SSH pool, ledger, discovery; gate and watch helpers.

Shared by the Prefect flows and the ``garage-migrate`` CLI so both run the same engine.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from .discovery import discover
from .errors import ClusterLockedError, PlanError
from .gates import Gate, GateOutcome, PrometheusSource, SystemClock, auto_source, synced
from .inventory import Inventory, load_inventory
from .ledger import Ledger
from .plan import MigrationOptions, MigrationPlan, make_plan
from .precheck import check_before_connecting, check_migration_id
from .ssh import SshPool
from .steps import Runtime

__all__ = ["Runtime", "default_migration_id", "ledger_for", "observe_once", "open_runtime", "plan_for",
           "run_sync_gate", "watch_report"]


def default_migration_id(inv: Inventory) -> str:
    """``<cluster>-to-v<target>``: stable, so a new run of the same migration resumes it."""
    return f"{inv.cluster}-to-v{inv.target.version.removeprefix('v')}".lower()


def ledger_for(inv: Inventory, migration_id: str, procedure: str, persist: bool = True) -> Ledger:
    """The ledger beside this migration's backups (on the controller)."""
    return Ledger.open(inv.backup.root, inv.cluster, migration_id, procedure, persist)


@contextlib.asynccontextmanager
async def open_runtime(inventory: str | Path | Inventory, procedure: str, migration_id: str | None = None, *,
                       log: logging.Logger | logging.LoggerAdapter | None = None,
                       persist: bool = True, options: MigrationOptions | None = None):
    """Load the inventory, check every local input (:mod:`garage_migrate.precheck`: nothing has
    reached a node if that refuses), open SSH, open (or resume) the ledger, and discover the
    cluster. A host key accepted on first use is recorded in the ledger (``host-key-trusted``)."""
    inv = inventory if isinstance(inventory, Inventory) else load_inventory(inventory)
    check_before_connecting(inv, options)
    mid = check_migration_id(migration_id or default_migration_id(inv))
    ledger = ledger_for(inv, mid, procedure, persist)
    doc = ledger.doc
    if doc.procedure != procedure:
        other = doc.procedure
        if doc.state in ("done", "rolled-back"):
            raise PlanError(f"migration {mid} was a {other} migration and is {doc.state}: "
                            f"a {procedure} run needs a new migration_id")
        # a migration of another procedure is under way with this id: as the cluster lock would,
        # refuse before anything is discovered or changed
        raise ClusterLockedError(
            f"migration {mid} is a {other} migration (state {doc.state}): a {procedure} run "
            f"was refused and touched nothing; finish or roll back that migration first",
            holder=doc.holder.model_dump() if doc.holder else {})
    resuming = bool(doc.nodes)
    async def trusted(rec: dict) -> None:
        await ledger.event("host-key-trusted",
                           f"{rec['node']}: {rec['algorithm']} host key {rec['fingerprint']} of {rec['host']} accepted "
                           f"on first use (ssh.trust_on_first_use) and recorded in {rec['known_hosts']}",
                           nodes=[rec["node"]])

    async with SshPool.from_inventory(inv, on_trust=trusted) as pool:
        facts = await discover(inv, pool.shell, procedure=procedure, resuming=resuming)
        rt = Runtime(inv=inv, shells=pool.shell, ledger=ledger, facts=facts,
                     log=log or logging.getLogger("garage_migrate"))
        yield rt


def plan_for(rt: Runtime, procedure: str, options: MigrationOptions) -> MigrationPlan:
    """The plan of this run (the ledger's migration id)."""
    return make_plan(rt.inv, rt.facts, procedure, rt.ledger.doc.migration_id, options)


async def _live_versions(rt: Runtime) -> dict[str, str | None]:
    from .steps import daemon_version

    out = {}
    for n in rt.facts.nodes:
        out[n.name] = await daemon_version(rt, n.name) or n.version
    return out


def _gate_source(rt: Runtime, versions: dict[str, str | None], cli_per_second: float | None = None):
    prom = None
    ps = rt.inv.prometheus
    if ps is not None:
        token = ps.bearer_token()
        prom = PrometheusSource(ps.url, ps.job, timeout=ps.timeout,
                                headers={"Authorization": f"Bearer {token}"} if token else None,
                                hosts={n.name: n.host for n in rt.facts.nodes})
    names = [n.name for n in rt.facts.nodes]
    return auto_source(versions, prom, {n: rt.shell(n) for n in names}, {n: rt.node(n).ctx for n in names},
                       cli_per_second=cli_per_second)


async def run_sync_gate(rt: Runtime, opts: MigrationOptions, name: str = "sync") -> GateOutcome:
    """The sync gate: every queue empty on every node for N consecutive observations."""
    source = _gate_source(rt, await _live_versions(rt), opts.gate_cli_reads_per_s)
    gate = Gate(name=name, source=source, nodes=tuple(n.name for n in rt.facts.nodes), deadline=opts.gate_deadline_s,
                consecutive=opts.gate_consecutive, interval=1.0, settle=opts.gate_settle_s, clock=SystemClock())
    return await gate.run()


async def observe_once(rt: Runtime) -> dict[str, tuple[str, ...]]:
    """One observation of every node's queues and reachability: node -> blocking reasons."""
    source = _gate_source(rt, await _live_versions(rt))
    seen = await source.observe([n.name for n in rt.facts.nodes])
    return {name: synced(q) for name, q in seen.items()}


def watch_report(rt: Runtime, samples: list[dict[str, tuple[str, ...]]]) -> str:
    """The final report: what the watch window saw, and the ledger's summary."""
    doc = rt.ledger.doc
    lines = [f"## Migration {doc.migration_id}: report", ""]
    clean = sum(1 for s in samples if not any(s.values()))
    lines.append(f"Watch window: {len(samples)} observations, {clean} with every queue empty and every node up.")
    if samples and any(samples[-1].values()):
        lines.append("\nLast observation:")
        lines += [f"- {node}: {'; '.join(r)}" for node, r in samples[-1].items() if r]
    lines.append("\n| node | zone | before | after | backup |\n|---|---|---|---|---|")
    for name, rec in sorted(doc.nodes.items()):
        lines.append(f"| {name} | {rec.zone or ''} | {rec.version_before or ''} | "
                     f"{rec.running_version or ''} | {rec.backup.path if rec.backup else ''} |")
    decisions = [e for e in doc.events if e.kind in ("decision", "proceed-anyway")]
    if decisions:
        lines.append("\nDecisions taken by people:")
        lines += [f"- {e.message} {e.note or ''}".rstrip() for e in decisions]
    return "\n".join(lines)
