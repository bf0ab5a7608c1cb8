"""The Prefect-free executor: runs a plan against injected shells, steps, decider, reporter, clock.

Modules: :mod:`.interfaces` (what callers implement), :mod:`.decisions` (the reuse and
auto-approve rules), :mod:`.run` (the :class:`Executor`), :mod:`.rollback` (the rollback plan, executed), :mod:`.dryrun`, :mod:`.planfile`, :mod:`.migrate`
(one run of a migration, lock to final state).
"""

from .decisions import Decisions
from .interfaces import ACTIONS, Answer, Decider, EngineSteps, NullReporter, Reporter, StepRunner
from .migrate import run_migration
from .rollback import rollback_plan_for, run_rollback
from .run import Executor

__all__ = ["ACTIONS", "Answer", "Decider", "Decisions", "EngineSteps", "Executor", "NullReporter", "Reporter",
           "StepRunner", "rollback_plan_for", "run_migration", "run_rollback"]
