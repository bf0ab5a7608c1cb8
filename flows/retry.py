"""Retry one node of a migration from the Prefect UI (the ``retry-node`` deployment): an adapter.

What it does is :func:`garage_migrate.executor.retry.retry_node`'s (the migration's saved plan,
done steps skipped, the migration's cluster lock, the zone rule), through the Prefect tasks of
the migration flows (so transient faults are retried as there) and with the ledger table as an
artifact. A retry refused by the cluster lock (the migration's run is alive) ends Cancelled,
like any second run; one refused by the zone rule fails, naming the zones down.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.exceptions import Abort

from flows import params as P
from flows.adapters import PrefectReporter, PrefectSteps
from flows.holding import hold_cluster, refused
from garage_migrate import runtime as R
from garage_migrate.errors import ClusterLockedError, SupersededError
from garage_migrate.executor.retry import retry_node, saved_plan
from garage_migrate.inventory import load_inventory
from garage_migrate.ledger import Ledger


@flow(name="retry-node")
async def retry_node_flow(inventory: P.InventoryPath, node: P.Node, step: P.RetryStep = None,
                          migration_id: P.MigrationId = None) -> dict:
    """Re-run one node's failed step, and the rest of that node's steps in the same phase.

    Args:
        inventory: path of the inventory YAML on the worker.
        node: the node to retry (as the ledger table names it).
        step: the step to retry, ``phase:kind`` or ``kind`` (default: the node's failed step).
        migration_id: the migration (default ``<cluster>-to-v<target>``).
    """
    log = get_run_logger()
    inv = load_inventory(inventory)
    mid = migration_id or R.default_migration_id(inv)
    path = Path(inv.backup.root) / inv.cluster / mid / "ledger.json"
    if not path.exists():
        raise FileNotFoundError(f"no migration {mid}: no ledger at {path}")
    procedure = Ledger.load(path).doc.procedure
    try:
        async with R.open_runtime(inv, procedure, mid, log=log) as rt:
            report = await retry_node(rt, saved_plan(rt), node, step,
                                      hold=lambda held: hold_cluster(held, procedure, "retry", log),
                                      steps=PrefectSteps(), reporter=PrefectReporter(),
                                      log=log)
    except ClusterLockedError as exc:
        return refused(exc, log)
    except SupersededError as exc:
        log.warning("%s", exc)
        raise Abort(str(exc)) from None
    for line in report.lines():
        log.info("%s", line)
    return report.to_dict()
