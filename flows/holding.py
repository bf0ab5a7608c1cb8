"""Holding the cluster from a flow: the Prefect side of :mod:`garage_migrate.cluster_lock`."""

from __future__ import annotations

import uuid

from prefect.context import FlowRunContext
from prefect.states import Cancelled

from garage_migrate.cluster_lock import ClusterLock, RunIdentity, lock_nodes
from garage_migrate.errors import ClusterLockedError


async def flow_run_state(flow_run_id: str) -> str | None:
    """The Prefect state type of a flow run (``None`` if this server does not know it)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        async with get_client() as client:
            fr = await client.read_flow_run(uuid.UUID(flow_run_id))
    except (ObjectNotFound, ValueError):
        return None
    return fr.state.type.value if fr.state else None


def run_identity(kind: str) -> RunIdentity:
    """This process's identity, with the current flow run's id."""
    ctx = FlowRunContext.get()
    return RunIdentity(flow_run_id=str(ctx.flow_run.id) if ctx else None, kind=kind)


async def hold_cluster(rt, procedure: str, kind: str, log) -> ClusterLock:
    """Take the migration's cluster lock (see :mod:`garage_migrate.cluster_lock`)."""
    lock = ClusterLock(rt.shell, lock_nodes(rt.inv, rt.facts), rt.ledger, procedure, run_identity(kind),
                       run_state=flow_run_state, log=log)
    await lock.acquire()
    return lock


def refused(exc: ClusterLockedError, log) -> Cancelled:
    """A run refused by the cluster lock ends Cancelled (not Failed: no failure alert for a refusal)."""
    log.error("%s", exc)
    return Cancelled(message=f"refused: {exc}")
