"""What a gate observes and what it concludes: per-node queues, the predicate, the outcome.

Everything here is pure and immutable. ``None`` always means "not known": an absent metric,
a node that did not answer, a worker list that was not read. Unknown never counts as synced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from ..errors import ErrorCode, GateError

__all__ = [
    "CHOICES",
    "REQUIRED_TABLES",
    "WORKERS_UNKNOWN",
    "FrozenMap",
    "GateOutcome",
    "GateRound",
    "GateStatus",
    "NodeQueues",
    "Predicate",
    "blocking_summary",
    "synced",
    "unobserved",
]

#: Tables whose Merkle todo must be known and 0. They are the ones ``repair tables`` syncs and
#: the only ones ``garage stats`` lists (ref 2.10, 3.1); Prometheus on 0.8 exports more.
REQUIRED_TABLES: tuple[str, ...] = ("bucket_v2", "key", "object", "version", "block_ref")

#: What a caller may decide when a gate did not pass.
CHOICES: tuple[str, str, str] = ("wait_more", "proceed_anyway", "abort")

#: ``workers_busy`` entry of a node whose worker list was expected but could not be read.
WORKERS_UNKNOWN = "(worker list not readable)"

GateStatus = Literal["passed", "timeout", "errored_blocks", "unreachable"]

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V], Generic[K, V]):
    """A read-only, hashable mapping that keeps its insertion order.

    Equal to any mapping with the same items (``FrozenMap({"a": 1}) == {"a": 1}``), so facts
    stay immutable without making callers give up dict-style access.
    """

    __slots__ = ("_items", "_index", "_hash")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        pairs = tuple(items.items()) if isinstance(items, Mapping) else tuple(items)
        index: dict[K, V] = {}
        for k, v in pairs:
            if k in index:
                raise ValueError(f"duplicate key {k!r}")
            index[k] = v
        self._items = pairs
        self._index = index
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._index[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._items))
        return self._hash

    def __repr__(self) -> str:
        return f"FrozenMap({dict(self._items)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (self._items,))


def _frozen_counts(value: Mapping[str, int] | None) -> FrozenMap[str, int] | None:
    if value is None:
        return None
    if isinstance(value, FrozenMap):
        return value
    return FrozenMap((str(k), int(v)) for k, v in value.items())


@dataclass(frozen=True)
class NodeQueues:
    """What one source saw of one node's background work, at one moment.

    Attributes:
        node: the inventory node name.
        reachable: the source could read the node (SSH command answered, or the Prometheus
            target is ``up == 1`` with a matching series). ``False`` never passes.
        source: which source(s) the values come from (``prometheus``, ``stats``,
            ``prometheus+worker list`` ...).
        merkle_todo: Merkle updater todo per table; ``None`` when unknown.
        gc_todo: GC todo per table; reported, never blocking (tombstones wait 24 h, ref 3.5).
        resync_queue: block resync queue length; ``None`` when unknown.
        resync_errors: blocks with resync errors; ``None`` when unknown.
        workers_busy: workers that keep the node from being done (a repair worker not
            ``Done``, a ``<table> sync`` not idle); ``()`` when none; ``None`` when no worker
            list was read (0.7.x has none). Scrub and tranquilized resync never appear here.
        detail: free text explaining unknowns or failures (``up == 0``, the command error ...).
        observed_at: when the values were sampled, for sources that can repeat an old sample
            (Prometheus: the scrape's Unix time); ``None`` for live reads such as the CLI.
    """

    node: str
    reachable: bool
    source: str
    merkle_todo: Mapping[str, int] | None = None
    gc_todo: Mapping[str, int] | None = None
    resync_queue: int | None = None
    resync_errors: int | None = None
    workers_busy: tuple[str, ...] | None = None
    detail: str = ""
    observed_at: float | None = None

    def __post_init__(self) -> None:
        # callers may hand in dicts and lists: store read-only copies they cannot alter later
        object.__setattr__(self, "merkle_todo", _frozen_counts(self.merkle_todo))
        object.__setattr__(self, "gc_todo", _frozen_counts(self.gc_todo))
        if self.workers_busy is not None:
            object.__setattr__(self, "workers_busy", tuple(self.workers_busy))

    @property
    def complete(self) -> bool:
        """Reachable, and every blocking queue is known (the values themselves may be > 0)."""
        return (self.reachable and self.resync_queue is not None and self.resync_errors is not None
                and self.merkle_todo is not None and all(t in self.merkle_todo for t in REQUIRED_TABLES))

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data (for logs, state files and artifacts)."""
        return {
            "node": self.node, "reachable": self.reachable, "source": self.source,
            "merkle_todo": None if self.merkle_todo is None else dict(self.merkle_todo),
            "gc_todo": None if self.gc_todo is None else dict(self.gc_todo),
            "resync_queue": self.resync_queue, "resync_errors": self.resync_errors,
            "workers_busy": None if self.workers_busy is None else list(self.workers_busy),
            "detail": self.detail, "observed_at": self.observed_at,
        }


def unobserved(node: str, source: str, detail: str) -> NodeQueues:
    """The observation of a node a source could not read at all."""
    return NodeQueues(node=node, reachable=False, source=source, detail=detail)


#: A predicate returns the reasons a node blocks the gate; an empty tuple means it passes.
Predicate = Callable[[NodeQueues], tuple[str, ...]]


def synced(q: NodeQueues) -> tuple[str, ...]:
    """The default sync predicate (ref 4.3 "Synced criteria", 3.2 "Finished", 11).

    A node passes when it is reachable, its resync queue and errored-block count are known
    and 0, the Merkle todo of every table is known and 0 (at least :data:`REQUIRED_TABLES`),
    and, when a worker list was read, no worker is busy with a repair or a sync. GC queues
    never block.

    Args:
        q: one node's observation.

    Returns:
        Human-readable reasons, e.g. ``("resync queue 12", "merkle object 3")``; empty when
        the node passes.
    """
    if not q.reachable:
        return ("unreachable" + (f" ({q.detail})" if q.detail else ""),)
    out: list[str] = []
    unknown = False
    if q.resync_queue is None:
        out.append("resync queue unknown")
        unknown = True
    elif q.resync_queue:
        out.append(f"resync queue {q.resync_queue}")
    if q.resync_errors is None:
        out.append("errored blocks unknown")
        unknown = True
    elif q.resync_errors:
        out.append(f"errored blocks {q.resync_errors}")
    if q.merkle_todo is None:
        out.append("merkle todo unknown")
        unknown = True
    else:
        missing = [t for t in REQUIRED_TABLES if t not in q.merkle_todo]
        if missing:
            out.append("merkle todo unknown for " + ", ".join(missing))
            unknown = True
        out.extend(f"merkle {t} {n}" for t, n in q.merkle_todo.items() if n)
    if q.workers_busy:
        out.append("workers busy: " + ", ".join(q.workers_busy))
    if out and unknown and q.detail:
        out[-1] += f" ({q.detail})"
    return tuple(out)


def blocking_summary(node: str, reasons: Iterable[str]) -> str:
    """``"node-a1: resync queue 12, merkle object 3"``."""
    return f"{node}: " + ", ".join(reasons)


@dataclass(frozen=True)
class GateRound:
    """One observation of a gate run, as kept in the outcome's history.

    Attributes:
        index: 1-based observation number.
        elapsed: seconds since the gate started, when the observation finished.
        passed: every node passed the predicate.
        fresh: the observation carried samples taken since the gate started and not seen
            before; a repeated Prometheus scrape (or the first one, which may be older than
            the gate) is not fresh and is not counted as a pass.
        streak: consecutive fresh passes after this observation.
        blocking: one summary per blocking node (``"node-a1: resync queue 12"``).
    """

    index: int
    elapsed: float
    passed: bool
    fresh: bool
    streak: int
    blocking: tuple[str, ...] = ()


# The error tree has no SYNC_GATE_UNREACHABLE code yet; a node that cannot be read keeps the
# gate from passing in time, hence TIMEOUT (the message names the node).
_STATUS_CODES = {
    "timeout": ErrorCode.SYNC_GATE_TIMEOUT,
    "unreachable": ErrorCode.SYNC_GATE_TIMEOUT,
    "errored_blocks": ErrorCode.SYNC_GATE_ERRORS,
}


def _cell(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, Mapping):
        busy = {k: v for k, v in value.items() if v}
        return ", ".join(f"{k} {v}" for k, v in busy.items()) if busy else "0"
    if isinstance(value, tuple):
        return ", ".join(value) if value else "none"
    return str(value)


def _md(text: str) -> str:
    # a pipe or newline in a detail would break the table row
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


@dataclass(frozen=True)
class GateOutcome:
    """How a gate run ended. Anything but ``passed`` needs a decision from the caller.

    Attributes:
        gate: the gate's name.
        status: ``passed``; ``timeout`` (deadline reached, still blocked); ``errored_blocks``
            (blocks with resync errors persisted); ``unreachable`` (a node could not be read).
        passes: consecutive passing observations at the end.
        required: consecutive passes the gate required.
        elapsed: seconds the run took.
        deadline: the gate's deadline in seconds.
        last: the last observation of every node.
        reasons: one summary per node blocking at the end, e.g.
            ``"node-a1: resync queue 12, merkle object 3"``; empty when passed.
        history: the most recent observations (see :class:`GateRound`).
        observations: how many observations were made in total.
    """

    gate: str
    status: GateStatus
    passes: int
    required: int
    elapsed: float
    deadline: float
    last: Mapping[str, NodeQueues]
    reasons: tuple[str, ...] = ()
    history: tuple[GateRound, ...] = ()
    observations: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.last, FrozenMap):
            object.__setattr__(self, "last", FrozenMap(self.last))
        object.__setattr__(self, "reasons", tuple(self.reasons))
        object.__setattr__(self, "history", tuple(self.history))

    @property
    def passed(self) -> bool:
        """The gate passed: the caller may go on."""
        return self.status == "passed"

    @property
    def decision_needed(self) -> bool:
        """The gate did not pass; the caller must choose among :attr:`choices`. Never ignore."""
        return not self.passed

    @property
    def choices(self) -> tuple[str, ...]:
        """``("wait_more", "proceed_anyway", "abort")`` when a decision is needed, else ``()``."""
        return CHOICES if self.decision_needed else ()

    @property
    def passing_observations(self) -> int:
        """How many observations in :attr:`history` passed."""
        return sum(1 for r in self.history if r.passed and r.fresh)

    @property
    def longest_streak(self) -> int:
        """The longest run of consecutive passes seen in :attr:`history`."""
        return max((r.streak for r in self.history), default=0)

    def error(self) -> GateError:
        """The error to raise when the caller chooses ``abort``.

        Returns:
            A :class:`~garage_migrate.errors.GateError` with code ``SYNC_GATE_ERRORS`` for
            errored blocks, ``SYNC_GATE_TIMEOUT`` otherwise, naming the blocking nodes.

        Raises:
            ValueError: the gate passed; there is nothing to abort for.
        """
        if self.passed:
            raise ValueError(f"gate {self.gate} passed: no error to raise")
        nodes = sorted({r.split(":", 1)[0] for r in self.reasons} & set(self.last))
        msg = (f"sync gate {self.gate}: {self.status.replace('_', ' ')} after {self.elapsed:.0f}s "
               f"({self.passes}/{self.required} consecutive passes)")
        if self.reasons:
            msg += ": " + "; ".join(self.reasons)
        return GateError(msg, node=nodes[0] if len(nodes) == 1 else None, code=_STATUS_CODES[self.status])

    def summary(self) -> str:
        """One line for logs: status, passes, elapsed and the blocking nodes."""
        line = (f"gate {self.gate}: {self.status} after {self.elapsed:.1f}s, "
                f"{self.passes}/{self.required} consecutive passes, {self.observations} observations")
        if self.reasons:
            line += " - blocking: " + "; ".join(self.reasons)
        return line

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data (for state files and Prefect artifacts)."""
        return {
            "gate": self.gate, "status": self.status, "passes": self.passes, "required": self.required,
            "elapsed": round(self.elapsed, 3), "deadline": self.deadline,
            "decision_needed": self.decision_needed, "choices": list(self.choices),
            "reasons": list(self.reasons), "observations": self.observations,
            "last": {n: q.as_dict() for n, q in self.last.items()},
            "history": [{"index": r.index, "elapsed": round(r.elapsed, 3), "passed": r.passed,
                         "fresh": r.fresh, "streak": r.streak, "blocking": list(r.blocking)}
                        for r in self.history],
        }

    def render_markdown(self, history_rows: int = 10) -> str:
        """The outcome as Markdown, for an approval form or a run artifact.

        Args:
            history_rows: how many of the latest observations to list.
        """
        title = {"passed": "PASSED", "timeout": "TIMED OUT", "errored_blocks": "ERRORED BLOCKS",
                 "unreachable": "NODE UNREACHABLE"}[self.status]
        lines = [f"### Sync gate `{_md(self.gate)}`: {title}", ""]
        lines.append(f"- {self.passes} of {self.required} consecutive passes; "
                     f"{self.observations} observations in {self.elapsed:.1f} s "
                     f"(deadline {self.deadline:g} s).")
        if self.decision_needed:
            lines.append("- **Decision needed**: " + " / ".join(f"`{c}`" for c in self.choices) + ".")
        lines += ["", "| Node | Source | Reachable | Merkle todo | Resync queue | Errored blocks "
                      "| Busy workers | GC todo (never blocks) | Detail |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for node, q in self.last.items():
            cells = [node, q.source, "yes" if q.reachable else "**no**", _cell(q.merkle_todo),
                     _cell(q.resync_queue), _cell(q.resync_errors),
                     "not read" if q.workers_busy is None else _cell(q.workers_busy),
                     _cell(q.gc_todo), q.detail or ""]
            lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
        if self.reasons:
            lines += ["", "**Blocking:**", ""] + [f"- {_md(r)}" for r in self.reasons]
        rows = self.history[-history_rows:] if history_rows > 0 else ()
        if rows:
            lines += ["", f"**Latest observations** ({len(rows)} of {self.observations}):", "",
                      "| # | At (s) | Result | Streak | Blocking |", "|---|---|---|---|---|"]
            for r in rows:
                # freshness only matters for passes: any failure resets the count
                result = ("pass" + ("" if r.fresh else " (not counted: no new scrape)")) if r.passed else "fail"
                lines.append(f"| {r.index} | {r.elapsed:.1f} | {result} | {r.streak} | "
                             f"{_md('; '.join(r.blocking)) or '-'} |")
        return "\n".join(lines) + "\n"

