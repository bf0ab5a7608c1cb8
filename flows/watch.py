"""The post-migration watch as Prefect runs: one observation per scheduled flow run.

When a migration completes (its final report already compares the cluster with the
baseline: observation zero), :func:`schedule_watch` creates the watch's flow runs of the
``post-migration-watch`` deployment, one per later observation, each with its
``scheduled_time`` (``run_deployment(..., timeout=0)``): every 15 min for 6 h is 24 runs, the
first 15 min after the migration, the last 6 h after it. Why scheduled runs rather than a schedule on the
deployment or one long run:

- a deployment schedule belongs to the deployment, which every cluster shares: it would carry
  one cluster's parameters and need removing after the watch; explicit runs belong to one
  migration (tagged ``migration:<id>``), carry its parameters, and end by themselves;
- each observation is a short run: no worker slot is held for six hours, a worker restart
  loses nothing (a run that starts late still observes), and each run can be seen, cancelled
  or retried in the UI on its own;
- an idempotency key per migration attempt and observation means a re-run of the completed
  migration does not schedule the watch twice.

Each run compares its observation with the ledger's baseline (:mod:`garage_migrate.watch`),
publishes the one live report artifact ``watch-<migration id>`` (a new version each time, the
whole history in it), and emits ``garage-migrate.watch.regression`` when something regressed,
which the failure automation of ``deployments/automations.yaml`` notifies.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows import params as P
from flows.adapters import emit
from flows.approvals import prefect_key
from garage_migrate.watch.run import (
    observe,
    open_watch,
    scheduled_count,
    watch_command,
)

DEPLOYMENT = "post-migration-watch/post-migration-watch"


@flow(name="post-migration-watch", log_prints=False)
async def post_migration_watch(inventory: P.InventoryPath, migration_id: P.MigrationId = None,
                               watch_every_minutes: P.WatchEveryMinutes = 15.0, observation: P.Observation = 1,
                               planned: P.Planned = None, final: P.FinalObservation = False) -> dict:
    """One observation of a migrated cluster against the baseline recorded before the migration.

    Args:
        inventory: path of the inventory YAML on the worker.
        migration_id: the migration to watch (default ``<cluster>-to-v<target>``).
        watch_every_minutes: minutes between observations (sets the rates' window).
        observation: which observation this is (1 = the first).
        planned: how many observations the watch makes.
        final: the last one: its report is the watch's final report.
    """
    log = get_run_logger()
    async with open_watch(inventory, migration_id, log=log) as rt:
        doc = rt.ledger.doc
        obs = await observe(rt, doc.baseline, every_s=watch_every_minutes * 60, planned=planned, final=final)
    mid, c = doc.migration_id, obs.comparison
    await create_markdown_artifact(obs.markdown, key=prefect_key("watch", mid),
                                   description=f"Post-migration watch of {mid}: observation {obs.index}"
                                               + (f" of {planned}" if planned else "") + (" (final)" if final else ""))
    emit("watch.observed", mid, doc.cluster, message=f"observation {observation}", observation=observation,
         regressions=len(c.regressions))
    if c.regressions:
        log.warning("regression against the baseline: %s", "; ".join(c.regressions))
        for node in sorted({r.node for r in c.nodes if r.problems}) or [None]:
            emit("watch.regression", mid, doc.cluster, node=node, message="; ".join(c.regressions),
                 observation=observation, regressions=list(c.regressions))
    else:
        log.info("observation %s: no regression against the baseline", observation)
    return {"migration_id": mid, "observation": observation, "regressions": list(c.regressions), "final": final}


async def schedule_watch(inventory: str, migration_id: str, attempt: str, *, hours: float,
                         every_minutes: float, log) -> str:
    """Schedule the watch's runs (see the module docstring); returns what the report says.

    Args:
        inventory: the inventory path (as the worker sees it).
        migration_id: the migration just completed.
        attempt: names this attempt of the migration in the idempotency keys (its ledger's
            creation time).
        hours: how long to watch.
        every_minutes: minutes between observations.
        log: the run's logger.
    """
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    every_s = every_minutes * 60
    n = scheduled_count(hours, every_s)
    start = datetime.now(UTC)
    try:
        for i in range(n):
            await run_deployment(
                DEPLOYMENT, timeout=0, as_subflow=False, scheduled_time=start + timedelta(seconds=(i + 1) * every_s),
                parameters={"inventory": inventory, "migration_id": migration_id,
                            "watch_every_minutes": every_minutes, "observation": i + 1, "planned": n,
                            "final": i == n - 1},
                flow_run_name=f"watch-{migration_id}-{i + 1}-of-{n}", tags=[f"migration:{migration_id}"],
                idempotency_key=f"watch-{migration_id}-{attempt}-{i + 1}")
    except ObjectNotFound:
        log.warning("deployment %s not found: the post-migration watch is not scheduled", DEPLOYMENT)
        return (f"### Watching the next hours\n\nThe deployment `{DEPLOYMENT}` is not deployed on this server: the "
                "watch was not scheduled (deploy it with `prefect deploy --all`), or watch from a terminal:\n\n"
                f"    {watch_command(inventory, migration_id, hours)}")
    end = start + timedelta(seconds=n * every_s)
    log.info("post-migration watch scheduled: %d observations every %g min until %s", n, every_minutes, end)
    return (f"### Watching the next hours\n\nThe post-migration watch is scheduled: {n} runs of `{DEPLOYMENT}`, "
            f"every {every_minutes:g} min until {end:%Y-%m-%d %H:%M UTC} (tag `migration:{migration_id}`). Each "
            f"compares the cluster with the baseline and updates the artifact `{prefect_key('watch', migration_id)}`; "
            "a regression emits `garage-migrate.watch.regression`.")
