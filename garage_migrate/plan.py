"""The planner: cluster facts + options -> a frozen, printable :class:`MigrationPlan` (no I/O).

A plan is phases, each made of waves (a group of steps that run together, e.g. one zone),
each made of steps (one action on one node, or on the cluster) with the changing remote
commands it will run. The dry run, the approval forms and the artifacts all render the same
plan object; the flows execute it with a thin runner.

Both procedures of the Garage 0.8 migration guide (ref 9; late 8):

- ``simple``: the 0.8 binary is staged while 0.7 serves, then the whole cluster goes offline
  (disable API, repair, sync gate, stop all, back up, install (switch), offline-repair, start
  all, repair, sync gate, re-enable, watch);
- ``minimal-downtime``: round by round (``max_zones_down`` zones at a time) backups while the
  cluster serves, then every node stops and starts on 0.8 at once, then round by round offline
  repairs.

The fan-out policy is data (:class:`FanoutPolicy`), read by the scheduler
(:mod:`garage_migrate.executor.schedule`): its zone rules shape the plan's waves here, its wave
rules decide at run time what runs together. :func:`make_plan` refuses a policy that would take
more zones down than the replication mode survives.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from . import actions as A
from .discovery import REPLICATION, ClusterFacts
from .errors import PlanError
from .inventory import Inventory

Procedure = Literal["simple", "minimal-downtime", "rollback"]  # rollback: garage_migrate.rollback_plan


class FanoutPolicy(BaseModel):
    """How the steps fan out over zones and nodes."""

    # The docstrings above and the field descriptions are what the Prefect form shows (plain
    # text: no markup). The policy is a value, read by the scheduler (executor/schedule.py).
    model_config = ConfigDict(frozen=True, extra="forbid")
    # upper bounds: a form's typo (an extra zero, a pasted word) is refused, not planned
    zones_in_parallel: bool = Field(
        True, title="Zones in parallel (simple procedure)",
        description="Back up and offline-repair every zone at once (the cluster is down anyway); "
                    "off: one zone after the other.")
    max_zones_down: int = Field(
        1, ge=1, le=64, title="Zones down at once (minimal-downtime)",
        description="How many zones are stopped together in each round of the rolling backups and offline "
                    "repairs; 1 keeps write quorum with replication mode 3 over 3 zones.")
    stop_after_zone: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", title="Canary zone (minimal-downtime)",
        description="Pause for an approval after the first backup round that holds this zone; empty: no "
                    "canary pause.")
    max_parallel_nodes: int = Field(
        32, ge=1, le=1024, title="Nodes at once",
        description="At most this many nodes work at the same time in a wave (SSH fan-out); the "
                    "simultaneous restart is never split.")


class MigrationOptions(BaseModel):
    """What the operator chooses: extra repairs, sync gates, the watch window and the fan-out."""

    # Shown as a form in the Prefect UI: the docstring above and each field's title and
    # description are what a person reads there (plain text, units in words).
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    # bounds: a gate that waits a week or a watch of a day is a typo, not a plan
    extra_repairs: tuple[Literal["versions", "block_refs"], ...] = Field(
        (), title="Extra repairs",
        description="Also run these repairs before the upgrade (slow on big clusters): versions, block_refs.")
    gate_deadline_s: float = Field(
        600.0, gt=0, le=7 * 86400, title="Sync gate deadline (seconds)",
        description="How many seconds a sync gate waits for every queue to empty before it asks a person.")
    gate_consecutive: int = Field(
        3, ge=1, le=100, title="Clean observations needed",
        description="How many observations in a row must show empty queues for a sync gate to pass.")
    gate_settle_s: float = Field(
        5.0, ge=0, le=3600, title="Repair settle time (seconds)",
        description="How many seconds a sync gate waits for a just-launched repair to show work before "
                    "idle figures count as passes.")
    gate_cli_reads_per_s: float = Field(
        8.0, gt=0, le=1000, title="Gate CLI reads per second",
        description="How many per-node CLI reads (worker list, stats on 0.7) a sync gate makes per "
                    "second across the whole cluster, whatever its size.")
    watch_s: float = Field(
        60.0, ge=0, le=86400, title="Watch window (seconds)",
        description="How many seconds the cluster is watched after the upgrade before the final report.")
    fanout: FanoutPolicy = Field(
        FanoutPolicy(), title="Fan-out",
        description="Zones in parallel or zones down at once, the canary zone, and how many nodes work at once.")


StepKind = Literal[
    "preflight", "disable-api", "enable-api", "repair", "sync-gate", "approval", "stop", "backup",
    "stage", "switch", "offline-repair", "start", "wait-healthy", "check-counters", "watch", "restore",
]


@dataclass(frozen=True)
class Step:
    """One step: on ``node``, or on the cluster when ``node`` is ``None``.

    Attributes:
        kind: what the step does.
        node: the node it runs on (``None``: the cluster).
        args: its arguments (``version``, ``what``, ``gate``, ``scope``...).
        actions: the commands and uploads it may run, in order (:mod:`garage_migrate.actions`):
            the executor refuses any changing command not listed here.
        one_of: the acts run on exactly one of the listed nodes (a repair is launched from
            the first node that runs).
        note: a remark for the renderings.
    """

    kind: StepKind
    node: str | None = None
    args: tuple[tuple[str, str], ...] = ()
    actions: tuple[A.NodeAction, ...] = ()
    one_of: bool = False
    note: str = ""

    def arg(self, name: str, default: str | None = None) -> str | None:
        """Value of argument ``name``."""
        return dict(self.args).get(name, default)

    @property
    def acts(self) -> tuple[A.NodeAction, ...]:
        """The changing actions, in order."""
        return tuple(a for a in self.actions if a.kind == "act")

    @property
    def commands(self) -> tuple[str, ...]:
        """The changing command lines (``node: command`` when the step may run on several)."""
        return tuple((f"{a.node}: " if self.one_of else "") + a.op.render() for a in self.acts)

    def allowed(self) -> frozenset[tuple[str, str]]:
        """``(node, command line)`` of every act: what the executor lets this step run."""
        return frozenset(a.key() for a in self.acts)

    def to_json(self) -> dict:
        """The step as the plan's JSON shows it."""
        return {"kind": self.kind, "node": self.node, "args": dict(self.args), "one_of": self.one_of,
                "note": self.note, "actions": [a.to_json() for a in self.actions]}


@dataclass(frozen=True)
class Wave:
    """Steps that run as one group; :func:`~garage_migrate.executor.schedule.schedule_wave` says how.

    Attributes:
        parallel: the nodes' step sequences may run concurrently (at most ``max_parallel_nodes``
            at once); when False they run one after the other.
        zone: the one zone the wave is about, if any.
        together: every node at once, never split by ``max_parallel_nodes``: the guide's
            simultaneous restart (no 0.7 and 0.8 nodes may coexist, as they cannot talk).
    """

    name: str
    steps: tuple[Step, ...]
    parallel: bool = True
    zone: str | None = None
    together: bool = False

    def __post_init__(self):
        if self.together and not self.parallel:
            raise ValueError(f"wave {self.name}: a wave run together is parallel")


@dataclass(frozen=True)
class Phase:
    """A named part of the procedure; waves run one after the other."""

    name: str
    title: str
    waves: tuple[Wave, ...]
    risky: bool = False


@dataclass(frozen=True)
class MigrationPlan:
    """The frozen plan of one migration."""

    procedure: Procedure
    migration_id: str
    cluster: str
    source_versions: tuple[tuple[str, str], ...]
    target_version: str
    replication_mode: str
    zones: tuple[tuple[str, tuple[str, ...]], ...]
    phases: tuple[Phase, ...]
    warnings: tuple[str, ...] = field(default=())
    #: the fan-out policy's bound on a wave's concurrent node sequences (part of the digest:
    #: an approval is given for an order of execution)
    max_parallel_nodes: int = 32

    def steps(self):
        """Every step, in order."""
        for ph in self.phases:
            for w in ph.waves:
                yield from w.steps

    @property
    def node_step_count(self) -> int:
        """Number of node-level steps (for progress)."""
        return sum(1 for s in self.steps() if s.node is not None)

    def phase(self, name: str) -> Phase:
        """The phase called ``name``."""
        for ph in self.phases:
            if ph.name == name:
                return ph
        raise KeyError(name)

    def digest(self) -> str:
        """A short hash of the plan (recorded in the ledger: a resumed run must match it)."""
        blob = json.dumps(asdict(self), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_json(self) -> dict:
        """The plan as data: phases, waves, steps, and each action with its node, kind
        (``observe``/``act``), argv and rendered command line (``garage-migrate plan --json``)."""
        return {"format": 1, "migration_id": self.migration_id, "procedure": self.procedure, "cluster": self.cluster,
                "digest": self.digest(), "target_version": self.target_version,
                "source_versions": dict(self.source_versions), "replication_mode": self.replication_mode,
                "zones": {z: list(ns) for z, ns in self.zones}, "warnings": list(self.warnings),
                "max_parallel_nodes": self.max_parallel_nodes,
                "phases": [{"name": ph.name, "title": ph.title, "risky": ph.risky,
                            "waves": [{"name": w.name, "zone": w.zone, "parallel": w.parallel, "together": w.together,
                                       "steps": [s.to_json() for s in w.steps]} for w in ph.waves]}
                           for ph in self.phases]}

    def acts(self) -> list[tuple[str, str, str, str]]:
        """``(node, phase, step kind, command line)`` of every act the plan lists, in order."""
        return [(a.node, ph.name, s.kind, a.op.render()) for ph in self.phases for w in ph.waves
                for s in w.steps for a in s.acts]

    def to_markdown(self, from_phase: str | None = None, **kw) -> str:
        """Markdown for approval forms and artifacts (optionally from ``from_phase`` on; the
        keywords of :func:`garage_migrate.plan_render.to_markdown`)."""
        from .plan_render import to_markdown

        return to_markdown(self, from_phase, **kw)

    def to_text(self) -> str:
        """Plain text for the terminal (every step and command)."""
        from .plan_render import to_text

        return to_text(self)


# ---------------------------------------------------------------------------- building
class _Builder:
    """Builds each step with its actions, from the builders of :mod:`garage_migrate.actions`."""

    def __init__(self, inv: Inventory, facts: ClusterFacts, migration_id: str):
        self.inv = inv
        self.facts = facts
        self.migration_id = migration_id
        self.target = inv.target.version.removeprefix("v")

    def source(self, node: str) -> str:
        return self.facts.node(node).version or "0.7"

    def node_actions(self, kind: StepKind, node: str, args: dict, helper: bool = False,
                     flip: bool = False) -> tuple[A.NodeAction, ...]:
        n = A.spec(self.inv, self.facts, node)
        if flip:  # the simultaneous restart: one helper call per node and step (actions/flip.py)
            from .actions import flip as F

            ops = {"stop": lambda: F.flip_stop(n).ops(), "switch": lambda: F.flip_switch(n).ops(),
                   "start": lambda: F.flip_start(n, args["version"]).ops()}[kind]()
            return A.bind(node, ops)
        match kind:
            case "preflight":
                ops = A.preflight(n)
            case "disable-api" | "enable-api":
                ops = self.api_ops(n, kind == "enable-api")
                if ops and isinstance(ops[0], tuple):  # a gate command runs on the gate host
                    return tuple(A.NodeAction(host, op) for host, op in ops)
            case "stop":
                ops = A.stop(n).ops()
            case "start":
                ops = A.start(n).ops()
            case "backup":
                b = A.for_node_backup(self.inv, self.facts, self.migration_id, node, self.source(node))
                return A.bind(node, b.ops(), b.cleanup)
            case "stage":
                ops = A.stage(n).ops()
                if helper:  # minimal-downtime: the flip helper is staged and checked with the binary
                    from .actions import flip as F

                    ops = (*ops, *F.stage_helper(n).ops())
            case "switch":
                ops = A.switch(n, n.staged_path).ops()
            case "offline-repair":
                ops = A.offline_repair(n).ops()
            case _:
                ops = ()
        return A.bind(node, ops)

    def api_ops(self, n: A.NodeSpec, enabled: bool):
        gate = self.inv.api_gate
        if gate.kind == "none":
            return ()
        if gate.kind == "commands":
            spec = gate.enable if enabled else gate.disable
            return ((spec.host, A.gate_command(tuple(spec.argv))),)
        return A.set_api(n, enabled).ops()

    def step(self, kind: StepKind, node: str | None = None, note: str = "", *, helper: bool = False,
             flip: bool = False, **args) -> Step:
        one_of = False
        if node is not None:
            actions = self.node_actions(kind, node, args, helper, flip)
        elif kind == "repair":
            # launched from the first node that runs (every node is listed, in order)
            actions = tuple(A.NodeAction(f.name, A.repair(self.inv.node(f.name).ctx, args["what"]))
                            for f in self.facts.nodes)
            one_of = True
        else:
            actions = ()
        if kind in ("stage", "switch") and node is not None and self.facts.node(node).config_diff:
            note = note or "garage.toml for 0.8:\n" + "\n".join(self.facts.node(node).config_diff)
        return Step(kind, node, tuple(sorted(args.items())), actions, one_of, note)


def _check_policy(facts: ClusterFacts, procedure: Procedure, opts: MigrationOptions) -> list[str]:
    copies, quorum = REPLICATION.get(facts.replication_mode, (1, 1))
    zones = facts.zones
    warnings = []
    if procedure == "minimal-downtime":
        survivable = copies - quorum
        if opts.fanout.max_zones_down > survivable:
            raise PlanError(f"max_zones_down={opts.fanout.max_zones_down} is unsafe: replication_mode "
                            f"{facts.replication_mode!r} keeps write quorum ({quorum} of {copies}) with at most "
                            f"{survivable} zone(s) down")
        if len(zones) < copies:
            raise PlanError(f"{len(zones)} zone(s) for {copies} copies: a zone holds more than one copy of some "
                            "partitions, so taking a zone down breaks quorum; use the simple procedure")
        if opts.fanout.stop_after_zone and opts.fanout.stop_after_zone not in zones:
            raise PlanError(f"stop_after_zone {opts.fanout.stop_after_zone!r} is not a zone ({', '.join(zones)})")
        from .executor.schedule import rolling_rounds  # lazily: the executor package imports this module

        if any(sum(len(zones[z]) for z in r) > 1 for r in rolling_rounds(list(zones), opts.fanout)):
            warnings.append("while a round takes 2+ nodes down, bucket and key changes fail (their tables need "
                            "all-but-one nodes, ref 8): ask users not to create buckets or keys meanwhile")
    return warnings


def make_plan(inv: Inventory, facts: ClusterFacts, procedure: Procedure, migration_id: str,
              opts: MigrationOptions = MigrationOptions()) -> MigrationPlan:
    """Plan a migration.

    Raises:
        PlanError: the policy is unsafe for the cluster's replication mode and zones.
    """
    from .executor import schedule as S  # lazily: the executor package imports this module

    warnings = list(facts.warnings) + _check_policy(facts, procedure, opts)
    b = _Builder(inv, facts, migration_id)
    zones = facts.zones
    names = [n.name for n in facts.nodes]
    src = {n: b.source(n) for n in names}
    tgt = b.target
    fan = opts.fanout
    P: list[Phase] = []

    def per_zone(kind: StepKind, name: str, groups: tuple[tuple[str, ...], ...], **args) -> tuple[Wave, ...]:
        if len(groups) == 1:
            return (Wave(name, tuple(b.step(kind, n, **args) for z in groups[0] for n in zones[z])),)
        return tuple(Wave(f"{name}-{'+'.join(g)}", tuple(b.step(kind, n, **args) for z in g for n in zones[z]),
                          zone=g[0] if len(g) == 1 else None) for g in groups)

    def rolling(prefix: str, node_steps, canary: bool) -> tuple[Wave, ...]:
        # a round's zones are down together; the next round waits until every node of the
        # round is seen healthy by every node (one wait per zone, so each is its own record)
        rounds = S.rolling_rounds(list(zones), fan)
        after = S.canary_round(rounds, fan.stop_after_zone) if canary else None
        out: list[Wave] = []
        for i, r in enumerate(rounds):
            label, zone = "+".join(r), (r[0] if len(r) == 1 else None)
            out.append(Wave(f"{prefix}-{label}", tuple(s for z in r for n in zones[z] for s in node_steps(n)),
                            zone=zone))
            out.append(Wave(f"healthy-{label}", tuple(b.step("wait-healthy", scope=z) for z in r), zone=zone))
            if i == after:
                z = fan.stop_after_zone
                out.append(Wave(f"canary-{z}", (b.step("approval", gate=f"canary-{z}"),), zone=z))
        return tuple(out)

    repairs = ("tables", "blocks", *opts.extra_repairs)
    P.append(Phase("preflight", "Preflight: reachability, versions, disk space, config keys",
                   (Wave("preflight", tuple(b.step("preflight", n) for n in names)),)))
    if procedure == "simple":
        offline = S.offline_zone_groups(list(zones), fan)
        everywhere = (tuple(zones),)  # API changes restart every node at once: clients are cut anyway
        P += [
            # staged (uploaded, sha256 and --version checked) while 0.7 still serves: a wrong
            # binary halts the run before the cluster is taken offline, not after (fault row 21)
            Phase("stage", "Stage the 0.8 binary on every node (0.7 keeps running)",
                  (Wave("stage", tuple(b.step("stage", n) for n in names)),)),
            Phase("disable-api", "Disable API and web access (nodes restart for the moved ports)",
                  per_zone("disable-api", "disable-api", everywhere) + (Wave("healthy", (b.step("wait-healthy", scope="all"),)),)),
            Phase("repair", "Repair tables and blocks on all nodes",
                  (Wave("repair", tuple(b.step("repair", what=w) for w in repairs), parallel=False),)),
            Phase("sync-gate", "Wait until every queue is empty",
                  (Wave("sync-gate", (b.step("sync-gate", gate="before"),)),)),
            Phase("approve-shutdown", "Approval: take the whole cluster offline",
                  (Wave("approve", (b.step("approval", gate="shutdown"),)),), risky=True),
            Phase("stop", "Stop every node", (Wave("stop", tuple(b.step("stop", n, version=src[n]) for n in names)),)),
            Phase("backup", "Back up every node's metadata", per_zone("backup", "backup", offline)),
            Phase("install", "Switch to the staged 0.8 binary",
                  (Wave("switch", tuple(b.step("switch", n) for n in names)),)),
            Phase("offline-repair", "Offline-repair object counters before any 0.8 start",
                  per_zone("offline-repair", "offline-repair", offline)),
            Phase("start", "Start every node on 0.8 and check health",
                  (Wave("start", tuple(b.step("start", n, version=tgt) for n in names)),
                   Wave("healthy", (b.step("wait-healthy", scope="all"),)))),
            Phase("repair-after", "Repair tables and blocks again and wait for the full sync",
                  (Wave("repair", tuple(b.step("repair", what=w) for w in ("tables", "blocks")), parallel=False),
                   Wave("sync-gate", (b.step("sync-gate", gate="after"),)))),
            Phase("counters", "Check bucket counters", (Wave("counters", (b.step("check-counters"),)),)),
            Phase("approve-reopen", "Approval: re-open the cluster to clients",
                  (Wave("approve", (b.step("approval", gate="reopen"),)),), risky=True),
            Phase("enable-api", "Re-enable API and web access (nodes restart)",
                  per_zone("enable-api", "enable-api", everywhere) + (Wave("healthy", (b.step("wait-healthy", scope="all"),)),)),
            Phase("watch", "Watch the cluster", (Wave("watch", (b.step("watch"),)),)),
        ]
    else:
        rounds = rolling("backup", lambda n: (b.step("stop", n, version=src[n]), b.step("backup", n),
                                              b.step("start", n, version=src[n])), canary=True)
        by_round = "Zone by zone" if fan.max_zones_down == 1 else f"{fan.max_zones_down} zones at a time"
        repair_rounds = rolling("repair", lambda n: (b.step("stop", n, version=tgt), b.step("offline-repair", n),
                                                     b.step("start", n, version=tgt)), canary=False)
        P += [
            Phase("repair", "Repair tables and blocks on all nodes",
                  (Wave("repair", tuple(b.step("repair", what=w) for w in repairs), parallel=False),
                   Wave("sync-gate", (b.step("sync-gate", gate="before"),)))),
            Phase("rolling-backup", f"{by_round}: stop, back up, start, wait until healthy", rounds),
            Phase("stage", "Stage the 0.8 binary and the flip helper on every node (0.7 keeps running)",
                  (Wave("stage", tuple(b.step("stage", n, helper=True) for n in names)),)),
            Phase("approve-flip", "Approval: restart every node on 0.8 at once",
                  (Wave("approve", (b.step("approval", gate="flip"),)),), risky=True),
            # every node at once, never split by max_parallel_nodes (ref 9: "stop all 0.7 nodes
            # together and start them all together on 0.8"); three waves, not one sequence per
            # node, so that no 0.8 node starts while a 0.7 node still runs. The executor runs the
            # three waves as one unit (executor/flip.py): every stop released at once, a barrier,
            # every start at once; each step is one call of the staged flip helper per node
            Phase("flip", "Stop all nodes at the same moment, switch, start all on 0.8",
                  (Wave("stop", tuple(b.step("stop", n, flip=True, version=src[n]) for n in names), together=True),
                   Wave("switch", tuple(b.step("switch", n, flip=True) for n in names), together=True),
                   Wave("start", tuple(b.step("start", n, flip=True, version=tgt) for n in names), together=True),
                   Wave("healthy", (b.step("wait-healthy", scope="all"),)))),
            Phase("offline-repair", f"{by_round}: stop, offline-repair counters, start", repair_rounds),
            # not in the guide: nodes that were down for their round missed writes; a full sync
            # makes the replicas (and so the counters) agree before they are checked
            Phase("repair-after", "Repair tables and wait for the full sync",
                  (Wave("repair", (b.step("repair", what="tables"),), parallel=False),
                   Wave("sync-gate", (b.step("sync-gate", gate="after"),)))),
            Phase("counters", "Check bucket counters", (Wave("counters", (b.step("check-counters"),)),)),
            Phase("watch", "Watch the cluster", (Wave("watch", (b.step("watch"),)),)),
        ]
    return MigrationPlan(
        procedure=procedure, migration_id=migration_id, cluster=inv.cluster,
        source_versions=tuple(sorted(src.items())), target_version=tgt,
        replication_mode=facts.replication_mode,
        zones=tuple((z, tuple(ns)) for z, ns in zones.items()),
        phases=tuple(P), warnings=tuple(warnings), max_parallel_nodes=fan.max_parallel_nodes)
