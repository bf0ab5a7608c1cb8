"""The scheduler: what runs together, read from the fan-out policy and the waves (pure: no I/O, no asyncio).

The planner asks it how zones group into rounds, the executor asks it how the node steps of a
wave group into batches, and the renderings ask it to say both, so the plan that is shown and
approved is the order that runs. Rules:

Zones (read by the planner, so they are part of the plan and of its digest):

- minimal-downtime rolling phases (backups, offline repairs): rounds of ``max_zones_down``
  zones, in zone order (:func:`rolling_rounds`); each round's nodes are down together, and the
  next round waits until the round is healthy. ``_check_policy`` in the planner refuses a
  ``max_zones_down`` the replication mode does not survive;
- simple-procedure offline phases (backups, offline repairs, the cluster being down anyway):
  every zone in one wave when ``zones_in_parallel``, else one zone after the other
  (:func:`offline_zone_groups`);
- canary: the approval comes after the round that contains ``stop_after_zone``
  (:func:`canary_round`).

Waves (read by the executor at run time, from the plan's ``max_parallel_nodes``):

- cluster steps first, one after the other, in plan order;
- then one *node sequence* per node (its steps of the wave, in plan order), in batches:

  - a ``together`` wave is one batch of every node, whatever ``max_parallel_nodes``: it is the
    guide's simultaneous restart ("stop all 0.7 nodes together and start them all together on
    0.8, as fast as possible"). 0.7 and 0.8 nodes cannot talk to each other (other RPC version
    tag), so a restart split into batches would leave the cluster split across versions, with
    no zone quorum on either side, for as long as the batches take;
  - a wave with ``parallel=False`` runs its node sequences one after the other;
  - any other wave runs at most ``max_parallel_nodes`` node sequences at once (the SSH
    fan-out bound). A batch starts when the previous one has finished, so a batch with a
    failure ends the wave before more nodes are touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # plan imports this module lazily; at run time only the values' attributes are read
    from ..plan import FanoutPolicy, MigrationPlan, Step, Wave

Rule = Literal["together", "one-at-a-time", "bounded"]


# ---------------------------------------------------------------------------- zones (the planner)
def zone_rounds(zones: Sequence[str], per_round: int) -> tuple[tuple[str, ...], ...]:
    """Consecutive rounds of at most ``per_round`` zones, in the given order.

    Raises:
        ValueError: ``per_round`` is below 1.
    """
    if per_round < 1:
        raise ValueError(f"per_round must be at least 1, got {per_round}")
    zs = tuple(zones)
    return tuple(zs[i:i + per_round] for i in range(0, len(zs), per_round))


def rolling_rounds(zones: Sequence[str], policy: FanoutPolicy) -> tuple[tuple[str, ...], ...]:
    """The rounds of the minimal-downtime rolling phases: ``max_zones_down`` zones down together."""
    return zone_rounds(zones, policy.max_zones_down)


def offline_zone_groups(zones: Sequence[str], policy: FanoutPolicy) -> tuple[tuple[str, ...], ...]:
    """The zone groups of the simple procedure's offline phases: all at once when
    ``zones_in_parallel``, else one zone after the other."""
    return zone_rounds(zones, max(1, len(zones)) if policy.zones_in_parallel else 1)


def canary_round(rounds: Sequence[Sequence[str]], stop_after_zone: str | None) -> int | None:
    """Index of the round after which the canary approval comes (the one holding
    ``stop_after_zone``), or None without a canary."""
    if stop_after_zone is None:
        return None
    for i, r in enumerate(rounds):
        if stop_after_zone in r:
            return i
    raise ValueError(f"stop_after_zone {stop_after_zone!r} is in no round")


# ---------------------------------------------------------------------------- waves (the executor)
@dataclass(frozen=True)
class NodeSequence:
    """One node's steps of a wave, run in order."""

    node: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class WaveSchedule:
    """How one wave runs: its cluster steps, then its node sequences batch by batch.

    Attributes:
        wave: the wave's name.
        rule: ``together`` (one batch, never split), ``one-at-a-time`` or ``bounded``.
        limit: the bound of a ``bounded`` wave (``max_parallel_nodes``), else None.
        cluster_steps: run first, one after the other.
        batches: each batch's sequences run concurrently; a batch starts when the previous
            one has finished.
    """

    wave: str
    rule: Rule
    limit: int | None
    cluster_steps: tuple[Step, ...]
    batches: tuple[tuple[NodeSequence, ...], ...]

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node of the wave, in the order its sequence starts."""
        return tuple(q.node for b in self.batches for q in b)

    def label(self) -> str:
        """How the wave runs, for the renderings ("" when there is nothing to order)."""
        n = len(self.nodes)
        if n <= 1:
            return "one at a time" if len(self.cluster_steps) > 1 else ""
        if self.rule == "together":
            return "together"
        if self.rule == "one-at-a-time" or self.limit == 1:
            return "one at a time"
        more = f", in {len(self.batches)} batches" if len(self.batches) > 1 else ""
        return f"up to {self.limit} at once{more}"


@dataclass(frozen=True)
class PhaseSchedule:
    """The wave schedules of one phase, in order."""

    phase: str
    waves: tuple[WaveSchedule, ...]


def node_sequences(wave: Wave) -> tuple[NodeSequence, ...]:
    """One sequence per node of ``wave``, in the order each node first appears."""
    by_node: dict[str, list[Step]] = {}
    for s in wave.steps:
        if s.node is not None:
            by_node.setdefault(s.node, []).append(s)
    return tuple(NodeSequence(n, tuple(seq)) for n, seq in by_node.items())


def schedule_wave(wave: Wave, max_parallel_nodes: int) -> WaveSchedule:
    """Schedule one wave by the module's rules.

    Raises:
        ValueError: ``max_parallel_nodes`` is below 1.
    """
    if max_parallel_nodes < 1:
        raise ValueError(f"max_parallel_nodes must be at least 1, got {max_parallel_nodes}")
    cluster = tuple(s for s in wave.steps if s.node is None)
    seqs = node_sequences(wave)
    if getattr(wave, "together", False):
        rule: Rule = "together"
        limit = None
        batches = (seqs,) if seqs else ()
    elif not wave.parallel:
        rule, limit = "one-at-a-time", None
        batches = tuple((q,) for q in seqs)
    else:
        rule, limit = "bounded", max_parallel_nodes
        batches = tuple(seqs[i:i + max_parallel_nodes] for i in range(0, len(seqs), max_parallel_nodes))
    return WaveSchedule(wave.name, rule, limit, cluster, batches)


def schedule(plan: MigrationPlan, max_parallel_nodes: int | None = None) -> tuple[PhaseSchedule, ...]:
    """Schedule every wave of ``plan`` (with the plan's ``max_parallel_nodes`` unless given)."""
    limit = plan.max_parallel_nodes if max_parallel_nodes is None else max_parallel_nodes
    return tuple(PhaseSchedule(ph.name, tuple(schedule_wave(w, limit) for w in ph.waves)) for ph in plan.phases)
