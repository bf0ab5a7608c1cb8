"""One run of a migration, from an open runtime to its final ledger state (no Prefect).

The flows and the CLI supply the cluster lock (how a run identifies itself is theirs), the
decider (which needs the lock's token and supersession signal), the step runner and the
reporter; this module decides what a run does:

- a dry run executes the plan with the same executor over shells that record changes instead
  of making them (:mod:`.dryrun`), and writes no ledger;
- a migration already ``done`` or ``rolled-back`` does nothing and says so;
- otherwise every remote command from then on is journalled (:mod:`garage_migrate.journal`),
  the cluster lock is taken before any command that changes anything, the plan is
  executed, and the ledger ends ``done`` (lock released), ``failed`` (lock held: the cluster
  is half-way) or ``rolled-back`` (lock released). A superseded run writes nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from ..cluster_lock import ClusterLock
from ..errors import SupersededError
from ..gates import Clock
from ..journal import CommandJournal, in_step, with_journal
from ..plan import MigrationOptions, MigrationPlan
from ..steps import Runtime
from ..window import WindowPolicy
from .interfaces import Decider, Reporter, StepRunner
from .planfile import save_plan
from .run import Executor


async def run_migration(rt: Runtime, plan: MigrationPlan, opts: MigrationOptions, *, dry_run: bool,
                        hold: Callable[[Runtime], Awaitable[ClusterLock]], decider_for: Callable[[ClusterLock], Decider],
                        steps: StepRunner, reporter: Reporter, clock: Clock | None = None,
                        auto_approve: bool = False, log: logging.Logger | logging.LoggerAdapter | None = None,
                        window: WindowPolicy | None = None) -> dict:
    """Run ``plan`` as the module docstring says and return the run's summary.

    Args:
        rt: the open runtime of this migration.
        plan: its plan.
        opts: the options the plan was made with.
        dry_run: change nothing, write no ledger.
        hold: takes the cluster lock through the runtime it is given (raises ``ClusterLockedError``
            when refused).
        decider_for: the decider of this run, given its lock.
        steps: the step runner.
        reporter: publishes plan, progress and report.
        clock: time for the watch window.
        auto_approve: approve clean approvals by rule.
        log: the run's logger.
        window: the maintenance window and backup age limit (refuses what cannot finish in it).
    """
    log = log or rt.log
    led = rt.ledger
    log.info("plan %s (%s):\n%s", plan.migration_id, plan.digest(), plan.to_text())
    if dry_run:
        from .dryrun import dry_run_migration  # the dry run runs the same executor

        return await dry_run_migration(rt, plan, opts, reporter=reporter, clock=clock, log=log)
    if led.doc.state in ("done", "rolled-back"):
        msg = f"migration {plan.migration_id} is already {led.doc.state}: nothing to do"
        if led.doc.state == "rolled-back":
            # its backups, steps and decisions belong to the attempt that was rolled back:
            # reusing them would restore stale backups and lose every write since
            msg += " (start a new attempt with a new migration_id)"
        log.info(msg)
        await led.event("rerun", msg)
        await reporter.report(plan.migration_id, f"**{msg}** (ledger `{led.path}`)", "Nothing to do")
        return {"migration_id": plan.migration_id, "ledger": str(led.path), "state": led.doc.state,
                "changed": False}
    rt = with_journal(rt, CommandJournal.beside(led.path))  # every command from here on is journalled
    with in_step(None, "cluster-lock"):
        lock = await hold(rt)  # the cluster lock, before any command that changes anything
    save_plan(plan, led.path.parent)  # what this run executes, as data, beside its journal
    executor = Executor(rt, plan, opts, steps=steps, decider=decider_for(lock), reporter=reporter, clock=clock,
                        auto_approve=auto_approve, log=log, window=window)
    try:
        await executor.run()
    except SupersededError:
        await lock.stop_heartbeats()
        raise
    except BaseException as exc:
        await lock.stop_heartbeats()
        # a rollback already set its own final state: keep it, record the error beside it
        rolled_back = led.refresh().state == "rolled-back"
        try:
            await led.set(state="rolled-back" if rolled_back else "failed", error=f"{type(exc).__name__}: {exc}")
            if rolled_back:
                await lock.release()
        except SupersededError:
            pass  # taken over meanwhile: the new run owns the ledger
        raise
    await led.set(state="done", error=None)
    await lock.release()
    return {"migration_id": plan.migration_id, "ledger": str(led.path), "state": "done", "changed": True}
