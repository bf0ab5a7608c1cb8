"""The gate: poll a source until every node passes N times in a row, or hand back a decision."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import GarageMigrateError
from .clock import Clock, SystemClock
from .model import (
    GateOutcome,
    GateRound,
    GateStatus,
    NodeQueues,
    Predicate,
    blocking_summary,
    synced,
    unobserved,
)
from .sources import QueueSource, node_log

__all__ = ["Gate"]

logger = logging.getLogger("garage_migrate.gates")


def _at_work(q: NodeQueues) -> bool:
    """The node was read and shows work: a queue above zero or a busy worker (not a node that
    could not be read, nor a figure that is only unknown)."""
    if not q.reachable:
        return False
    merkle = any(v > 0 for v in (q.merkle_todo or {}).values())
    return merkle or bool(q.resync_queue) or bool(q.workers_busy)


@dataclass(frozen=True, kw_only=True)
class Gate:
    """A sync gate: what it reads, the predicate, the deadline, how many passes in a row.

    :meth:`run` observes ``nodes`` through ``source`` every ``interval`` seconds. The gate
    passes once ``consecutive`` fresh observations in a row have every node passing
    ``predicate``; any failing observation resets the count. Otherwise it stops, and the
    outcome asks the caller to decide (:attr:`GateOutcome.choices`), when:

    - the ``deadline`` is reached (``timeout``; or ``unreachable`` / ``errored_blocks`` when
      that is what still blocks at the end). Observations stay ``interval`` apart up to the
      end, so the last one is the first at or past the deadline (at most ``interval`` plus
      one observation late): one squeezed in at the deadline would repeat the last scrape;
    - a node has shown errored blocks continuously for ``errored_blocks_grace`` seconds;
    - a node has been unreadable continuously for ``unreachable_grace`` seconds.

    Errored blocks are not final at first sight: Garage retries them after 1, 2, 4 ... 64 min
    (ref 3.2), and a block that failed only because a peer was briefly away heals on retry.
    But the resync queue cannot drain while they exist, so waiting for the full deadline would
    only postpone the decision: the default grace of 420 s spans the first three retries.
    Set it to 0 to stop at the first sighting, or ``None`` to decide only at the deadline.

    A Prometheus observation that repeats the previous scrape (same ``observed_at``) is not a
    new pass: N passes mean N scrapes. Nor is the first stamped observation, whose scrape may
    predate the gate (and the repair launched just before it). To wait more after a ``timeout``, run the gate again
    (``dataclasses.replace(gate, deadline=...)`` for another deadline); passes start over.

    Attributes:
        name: the gate's name, in logs and outcomes (``before-stop``, ``after-repair`` ...).
        source: where the queues are read (see :mod:`garage_migrate.gates.sources`).
        nodes: the nodes that must pass.
        predicate: a node's blocking reasons, empty when it passes (default :func:`synced`).
        deadline: seconds after which the gate gives up.
        consecutive: passing observations in a row required.
        interval: seconds between observations.
        clock: time source (inject a :class:`~garage_migrate.gates.clock.FakeClock` in tests).
        errored_blocks_grace: seconds errored blocks must persist on a node before the gate
            stops early; ``None``: only at the deadline.
        unreachable_grace: seconds a node must stay unreadable before the gate stops early;
            ``None``: only at the deadline.
        settle: seconds from the gate's start during which a pass counts only once a node has
            been seen at work (blocking while readable). A repair launched just before the gate
            shows nothing at first: a worker is listed after its first step, and a sync queue
            fills once the sync worker gets the request (source audit, "Repair start"), so an
            idle first look proves nothing. After ``settle`` the passes count anyway.
        observe_timeout: seconds one observation may take (real time) before every node counts
            as unreadable for that round; the sources' own timeouts should be shorter.
        history_limit: observations kept in the outcome's history.

    Raises:
        ValueError: inconsistent settings, e.g. a deadline too short to ever see
            ``consecutive`` passes ``interval`` seconds apart.
    """

    name: str
    source: QueueSource
    nodes: tuple[str, ...]
    predicate: Predicate = synced
    deadline: float = 3600.0
    consecutive: int = 3
    interval: float = 10.0
    clock: Clock = field(default_factory=SystemClock)
    errored_blocks_grace: float | None = 420.0
    unreachable_grace: float | None = 120.0
    settle: float = 0.0
    observe_timeout: float = 300.0
    history_limit: int = 100

    def __post_init__(self) -> None:
        nodes = tuple(self.nodes)
        object.__setattr__(self, "nodes", nodes)
        problems = []
        if not nodes:
            problems.append("no nodes")
        if len(set(nodes)) != len(nodes):
            problems.append(f"duplicate nodes in {nodes}")
        if self.consecutive < 1:
            problems.append(f"consecutive must be >= 1, got {self.consecutive}")
        if not self.interval > 0:
            problems.append(f"interval must be > 0, got {self.interval}")
        if not self.deadline >= 0:
            problems.append(f"deadline must be >= 0, got {self.deadline}")
        if not self.settle >= 0:
            problems.append(f"settle must be >= 0, got {self.settle}")
        if not self.observe_timeout > 0:
            problems.append(f"observe_timeout must be > 0, got {self.observe_timeout}")
        if self.history_limit < 1:
            problems.append(f"history_limit must be >= 1, got {self.history_limit}")
        for key in ("errored_blocks_grace", "unreachable_grace"):
            value = getattr(self, key)
            if value is not None and not value >= 0:
                problems.append(f"{key} must be >= 0 or None, got {value}")
        if not problems and (self.consecutive - 1) * self.interval > self.deadline:
            problems.append(f"{self.consecutive} passes {self.interval:g}s apart cannot fit in a "
                            f"{self.deadline:g}s deadline")
        if problems:
            raise ValueError(f"gate {self.name!r}: " + "; ".join(problems))

    async def _observe(self) -> dict[str, NodeQueues]:
        src = self.source
        try:
            async with asyncio.timeout(self.observe_timeout):
                got: Mapping[str, NodeQueues] = await src.observe(self.nodes)
        except TimeoutError:
            detail = f"{src.name} gave no answer within {self.observe_timeout:g}s"
            return {n: unobserved(n, src.name, detail) for n in self.nodes}
        except GarageMigrateError as exc:
            # a source is meant to report per node; one that fails as a whole (say, a pool
            # that cannot be built) still must not crash a gate that can decide "unreachable"
            detail = f"{src.name} failed: [{exc.code}] {exc.message}"
            return {n: unobserved(n, src.name, detail) for n in self.nodes}
        return {n: got.get(n) or unobserved(n, src.name, "the source returned nothing for this node")
                for n in self.nodes}

    async def run(self) -> GateOutcome:
        """Poll until the gate passes or needs a decision. Never raises for a failed gate.

        Returns:
            The outcome; check :attr:`GateOutcome.decision_needed` before going on.
        """
        clock = self.clock
        start = clock.monotonic()
        logger.info("gate %s: waiting for %d consecutive passes on %s (source %s, every %gs, deadline %gs)",
                    self.name, self.consecutive, ", ".join(self.nodes), self.source.name, self.interval,
                    self.deadline)
        history: deque[GateRound] = deque(maxlen=self.history_limit)
        streak = index = 0
        baseline: dict[str, float] = {}  # node -> scrape time of the last observation counted
        errors_since: dict[str, float] = {}
        down_since: dict[str, float] = {}
        previous: dict[str, tuple[str, ...]] = {}
        work_seen = False
        while True:
            obs = await self._observe()
            now = clock.monotonic()
            elapsed = now - start
            index += 1
            reasons = {n: tuple(self.predicate(obs[n])) for n in self.nodes}
            blocking = {n: r for n, r in reasons.items() if r}
            stamps = {n: obs[n].observed_at for n in self.nodes if obs[n].observed_at is not None}
            fresh = all(n not in baseline or ts > baseline[n] for n, ts in stamps.items())
            if index == 1 and stamps:
                # the first stamped sample may predate the gate, and so the repair launched
                # just before it: it may fail the gate but never counts as a pass
                fresh = False
                baseline.update(stamps)
            passed = not blocking
            work_seen = work_seen or any(_at_work(obs[n]) for n in blocking)
            if passed and fresh and not work_seen and elapsed < self.settle:
                # nothing seen at work yet: the repair launched before the gate may not have
                # started (its figures read idle until it does); not a pass until settle is over
                logger.debug("gate %s: observation %d passes but nothing was seen at work yet (%.1f s of "
                             "%g s settle); not counted", self.name, index, elapsed, self.settle)
                fresh = False
            if not passed:
                streak = 0
                baseline.update(stamps)
            elif fresh:
                streak += 1
                baseline.update(stamps)
            for n in self.nodes:
                log = node_log(n)
                if reasons[n] != previous.get(n):
                    log.info("gate %s: %s", self.name, "blocking: " + ", ".join(reasons[n]) if reasons[n] else "passes")
                else:
                    log.debug("gate %s: unchanged (%s)", self.name, ", ".join(reasons[n]) or "passes")
                q = obs[n]
                if q.resync_errors:
                    errors_since.setdefault(n, now)
                elif q.resync_errors == 0:
                    errors_since.pop(n, None)
                if q.reachable:
                    down_since.pop(n, None)
                else:
                    down_since.setdefault(n, now)
            previous = reasons
            summaries = tuple(blocking_summary(n, r) for n, r in blocking.items())
            history.append(GateRound(index=index, elapsed=elapsed, passed=passed, fresh=fresh,
                                     streak=streak, blocking=summaries))
            if passed and not fresh:
                logger.debug("gate %s: observation %d has no new scrape of %s; not counted",
                             self.name, index, ", ".join(stamps))
            status = self._status(obs, streak, now, elapsed, errors_since, down_since)
            if status is not None:
                return self._finish(status, streak, elapsed, obs, summaries, tuple(history), index)
            # always a full interval, also before the last look: a look cut short to land on
            # the deadline comes sooner than the next scrape, so it repeats the previous one and
            # can never be the pass that completes the streak (the gate then timed out with
            # every node passing); the last look is the first one at or past the deadline
            await clock.sleep(self.interval)

    def _status(self, obs: Mapping[str, NodeQueues], streak: int, now: float, elapsed: float,
                errors_since: Mapping[str, float], down_since: Mapping[str, float]) -> GateStatus | None:
        if streak >= self.consecutive:
            return "passed"
        grace = self.errored_blocks_grace
        if grace is not None and any(now - t >= grace for t in errors_since.values()):
            return "errored_blocks"
        grace = self.unreachable_grace
        if grace is not None and any(now - t >= grace for t in down_since.values()):
            return "unreachable"
        if elapsed >= self.deadline:
            # say what still blocks, most fundamental first
            if any(not q.reachable for q in obs.values()):
                return "unreachable"
            if any(q.resync_errors for q in obs.values()):
                return "errored_blocks"
            return "timeout"
        return None

    def _finish(self, status: GateStatus, streak: int, elapsed: float, obs: Mapping[str, NodeQueues],
                summaries: tuple[str, ...], history: tuple[GateRound, ...], index: int) -> GateOutcome:
        reasons = summaries
        if status == "passed":
            reasons = ()
        elif not reasons:
            # every node passed the last look, but not often enough in a row (or the passes
            # repeated one scrape): still not proven synced
            reasons = (f"all nodes passed the last observation, but only {streak} of "
                       f"{self.consecutive} consecutive passes were seen",)
        outcome = GateOutcome(gate=self.name, status=status, passes=streak, required=self.consecutive,
                              elapsed=elapsed, deadline=self.deadline, last=obs, reasons=reasons,
                              history=history, observations=index)
        if outcome.passed:
            logger.info("gate %s passed on %s: %s", self.name, ", ".join(self.nodes), outcome.summary())
        else:
            for reason in summaries:
                node_log(reason.split(":", 1)[0]).warning("gate %s %s: %s", self.name, status, reason)
            logger.warning("%s; decision needed (%s)", outcome.summary(), " / ".join(outcome.choices))
        return outcome
