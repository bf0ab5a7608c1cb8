"""A terminal run's look at the cluster lock before it starts anything (read-only).

``garage-migrate run`` without ``PREFECT_API_URL`` starts a temporary Prefect server for its
flow, which takes tens of seconds on a small controller. A run that the cluster lock is going
to refuse should say so at once, and start nothing: this module reads the same two places
the lock lives in (the migration's ledger holder, and the lock records on the nodes) and
answers with the :class:`~garage_migrate.errors.ClusterLockedError` the flow would raise.

It only ever *refuses early*; it never admits a run. The flow still takes the lock itself
(:class:`~garage_migrate.cluster_lock.ClusterLock`), which is the only authority: when this
check cannot tell (the cluster cannot be read, no ledger yet), it says nothing and the run
goes on to the real lock.
"""

from __future__ import annotations

import logging

from .cluster_lock import describe_holder, holder_gone, lock_nodes, locked_by, read_records
from .errors import ClusterLockedError, GarageMigrateError
from .inventory import load_inventory
from .runtime import default_migration_id, ledger_for, open_runtime

__all__ = ["refusal"]

_log = logging.getLogger("garage_migrate.precheck")


def _holder_refusal(led, migration_id: str) -> ClusterLockedError | None:
    holder = led.doc.holder
    if holder is None or holder_gone(holder) is not None:
        return None
    # without the holder's Prefect server this cannot see a run that ended while its process
    # lingers; the message says what to do then
    return ClusterLockedError(
        f"migration {migration_id} is held by another run: {describe_holder(holder)} is still running "
        f"it; this run was refused and touched nothing (if that run has just ended, run again)",
        holder=holder.model_dump())


async def refusal(inventory: str, procedure: str, migration_id: str | None) -> ClusterLockedError | None:
    """Why the cluster lock would refuse this run now, or ``None`` when it might not.

    Reads the migration's ledger (no write) and every node's lock record (``readlink``), after
    the discovery the run itself would do. Any error while reading is *not* a refusal: the
    run's own lock decides.
    """
    try:
        inv = load_inventory(inventory)
        mid = migration_id or default_migration_id(inv)
        early = _holder_refusal(ledger_for(inv, mid, procedure, persist=False), mid)
        if early is not None:
            return early
        async with open_runtime(inv, procedure, mid, persist=False, log=_log) as rt:
            records = await read_records(rt.shell, lock_nodes(rt.inv, rt.facts))
    except ClusterLockedError as exc:  # open_runtime: this id is another procedure's migration
        return exc
    except (GarageMigrateError, OSError) as exc:
        _log.debug("lock pre-check could not tell (%s): the run's own lock decides", exc)
        return None
    for node, rec in sorted(records.items()):
        if rec is not None and rec.migration_id != mid:
            return locked_by(rec, f"lock record on {node}", mid, node)
    return None
