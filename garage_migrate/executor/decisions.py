"""Who decides, and when a recorded decision is reused: the rule, without the pause.

Only a person's answer, or an explicit rule, is a decision:

- a person's **approval** recorded in the ledger for the same plan digest is reused (a retry
  does not ask the same person the same question twice); one given for another plan digest
  (a resumed run whose plan changed, other parameters) is not: the question is asked again;
- decisions on a **gate**, the **counters** or a **failed flip** answer what was seen at that
  moment: they are never reused, a new attempt that sees the problem again asks again;
- ``auto_approve`` answers **approvals** only, and only when the gates before them passed
  cleanly (recorded ``by: auto-approve``); everything else waits for a person.

The asking itself (a Prefect pause, a terminal prompt) is the :class:`Decider`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from ..errors import MigrationAborted
from ..ledger import Ledger
from .interfaces import ACTIONS, Decider, DecisionKind


class Decisions:
    """Applies the decision rules of this module for one run.

    Args:
        ledger: the migration's ledger (decisions are recorded there).
        decider: asks a person.
        plan_digest: the digest of the plan this run executes.
        auto_approve: the rule that approves clean approvals.
        log: where the rule says what it did.
        on_ask: called with ``(kind, key)`` just before a person is asked (the executor emits
            its "approval needed" event there).
    """

    def __init__(self, ledger: Ledger, decider: Decider, plan_digest: str, auto_approve: bool,
                 log: logging.Logger | logging.LoggerAdapter,
                 on_ask: Callable[[str, str], Awaitable[None]] | None = None):
        self.ledger = ledger
        self.decider = decider
        self.digest = plan_digest
        self.auto_approve = auto_approve
        self.log = log
        self.on_ask = on_ask

    async def decide(self, kind: DecisionKind, key: str, description: str, clean: bool,
                     choices: tuple[str, ...] | None = None) -> str:
        """The decision at ``key``: reused, answered by rule, or asked of a person.

        Args:
            kind: what is decided (see :data:`~garage_migrate.executor.interfaces.ACTIONS`).
            key: the ledger key of the decision (e.g. ``approve-flip``, ``sync-before-2``).
            description: markdown shown to the person.
            clean: every gate before this one passed (the only case auto-approve may answer).
            choices: the answers that apply here (default: every answer of ``kind``); the
                person is offered only these, and any other answer is refused.

        Raises:
            MigrationAborted: the answer is not one this kind accepts.
        """
        rec = self.ledger.gate(key)
        if kind == "approval" and rec is not None and rec.by == "person" and rec.decision:
            if rec.plan_digest == self.digest:
                self.log.info("gate %s: %r decided by a person earlier for this plan (%s): reused",
                              key, rec.decision, self.digest)
                return rec.decision
            self.log.warning("gate %s: the recorded %r was given for plan %s, this run's plan is %s: asking again",
                             key, rec.decision, rec.plan_digest, self.digest)
        if self.auto_approve and clean and kind == "approval":
            await self.ledger.record_gate(key, decision="approve", by="auto-approve", plan_digest=self.digest,
                                          note="gate passed cleanly")
            await self.ledger.event("auto-approve", f"{key}: approve (rule: auto_approve, clean gate)")
            return "approve"
        await self.ledger.record_gate(key, status="waiting", decision=None, by=None, plan_digest=self.digest)
        offered = tuple(choices or ACTIONS[kind])
        if not set(offered) <= set(ACTIONS[kind]):
            raise ValueError(f"{key}: {offered} are not all answers to a {kind} question")
        if self.on_ask is not None:
            await self.on_ask(kind, key)
        answer = await self.decider.ask(kind, key, description, offered)
        if answer.action not in offered:
            raise MigrationAborted(f"{key}: {answer.action!r} is not an answer to a {kind} question")
        await self.ledger.record_gate(key, status="decided", decision=answer.action, by="person",
                                      note=answer.note, plan_digest=self.digest, flow_run_id=answer.flow_run_id,
                                      pause_key=answer.pause_key, decided_at=time.time())
        await self.ledger.event("decision", f"{key}: {answer.action}", note=answer.note, by="person",
                                pause_key=answer.pause_key)
        return answer.action
