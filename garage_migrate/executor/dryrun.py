"""The dry run: the same executor, with shells that record changes instead of making them.

A dry run executes the plan with the real executor and the real steps. Only the node shells
differ (:class:`SimShell`): an ``act`` is recorded, not run, and updates a simulated state of
the node (:class:`NodeSim`: service stopped or running and on which version, where the binary
link points, which files were written, moved or removed); an observation is answered from that
state once a recorded act changed what it observes, and by the node itself otherwise. So the
observations of the starting state are real (reachability, versions, the config, free space,
queues) and the ones that follow a recorded stop see a stopped node instead of failing.

What cannot be simulated is not pretended:

- a backup is not taken (its archive would be written on the controller): the step proves
  the node (simulated) stopped and records the plan's backup actions;
- the sync gates make one real observation of the queues as they are now;
- the counters can only be checked on a cluster that runs 0.8: the check reports so;
- a question for a person is answered by the dry run's rule and listed in the summary (a
  dry run changes nothing, so its answers decide nothing).

Its journal is written to a dry-run directory beside the ledger's, never into the ledger
(which a dry run never writes): ``<migration dir>.dry-run/<UTC time>/commands.jsonl``, with
the plan's JSON beside it. Its acts equal the plan's (:func:`acts_not_run`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .. import actions as A
from .. import commands as C
from ..errors import CommandError
from ..gates import Clock, GateOutcome
from ..journal import CommandJournal, JournalShell
from ..ledger_model import BackupRef
from ..actions import for_node_backup as backup_actions
from ..plan import MigrationOptions, MigrationPlan
from ..ssh import Result
from ..steps import Runtime, StepResult
from .interfaces import Answer, EngineSteps, Reporter
from .planfile import save_plan
from .run import Executor

log = logging.getLogger("garage_migrate.dryrun")

#: What the dry run answers each kind of question with (never persisted; see the module doc).
DRY_RUN_ANSWERS = {"approval": "approve", "gate": "proceed_anyway", "counters": "proceed_anyway",
                   "flip-failure": "rollback"}


@dataclass
class NodeSim:
    """The simulated state of one node: ``None`` fields are "as the node really is".

    Attributes:
        active: the service runs.
        version: the version a (simulated) started daemon runs.
        binary_target: where ``binary_path`` points.
        files: path -> content written (``None``: removed).
        binaries: path -> version of a binary written there.
    """

    active: bool | None = None
    version: str | None = None
    binary_target: str | None = None
    files: dict[str, bytes | None] = field(default_factory=dict)
    binaries: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)


def _ok(stdout: str = "", status: int = 0, stderr: str = "") -> Result:
    return Result(stdout=stdout, stderr=stderr, exit_status=status, signal=None, returncode=status)


class SimShell:
    """A node shell that records acts and answers observations from :class:`NodeSim`.

    Args:
        inner: the node's real shell (observations of the starting state).
        spec: the node (binary path, config, metadata dir, staged path).
        target_version: the version of the staged binary.
    """

    #: acts are recorded, never run (read by :meth:`garage_migrate.steps.Runtime.act` for its log)
    records_only = True

    def __init__(self, inner, spec: A.NodeSpec, target_version: str):
        self.inner = inner
        self.spec = spec
        self.target = target_version.removeprefix("v")
        self.sim = NodeSim()
        self.recorded: list[str] = []
        ctx = spec.ctx
        self._status = C.service_status(ctx)
        self._lock_file = C.db_file_id(spec.metadata_dir, sudo=ctx.sudo)
        self._locks = C.proc_locks()
        self._stats = C.garage(ctx, "stats")
        self._status_cmd = C.garage(ctx, "status")
        self._signals = {C.service_signal(ctx, sig).argv for sig in ("SIGINT", "SIGTERM", "SIGKILL", spec.stop_signal)}
        self._stop = C.service_stop(ctx).argv
        self._start = C.service_start(ctx).argv

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    # ------------------------------------------------------------------ acts
    async def run(self, cmd: C.RemoteCommand, check: bool = True) -> Result:
        """Record an act (and update the simulated state); answer an observation."""
        if cmd.kind == "act":
            self.recorded.append(cmd.render())
            self._apply(cmd)
            return _ok("dry run: recorded, not run\n")
        res = await self._observe(cmd)
        if check and res.returncode != 0:
            raise CommandError(f"{cmd.argv[0]} exited {res.returncode} (dry run)", node=self.spec.name,
                               command=cmd.render(), exit_status=res.exit_status, stderr=res.stderr)
        return res

    async def run_armed(self, cmd: C.RemoteCommand, release, check: bool = True) -> Result:
        """Record an armed act once released (as :meth:`run` does); nothing reaches the node."""
        if not await release():
            return _ok("error=not-released (dry run)\n", 65)
        return await self.run(cmd, check)

    async def stream(self, cmd: C.RemoteCommand, sink, *args, **kwargs) -> Result:
        """Refused: nothing streams in a dry run (a backup is not taken)."""
        raise CommandError("a dry run streams nothing", node=self.spec.name, command=cmd.render())

    async def put_file(self, local, remote: str, **kwargs) -> None:
        """Record an upload: the node now holds ``local``'s content at ``remote``."""
        self.recorded.append(A.Upload(str(remote), "").render())
        path = Path(local)
        data = path.read_bytes() if path.is_file() and path.stat().st_size < (1 << 20) else b""
        self.sim.files[str(remote)] = data
        if str(remote) == self.spec.staged_path:
            self.sim.binaries[str(remote)] = self.target

    def _apply(self, cmd: C.RemoteCommand) -> None:
        argv, sim = cmd.argv, self.sim
        if argv == self._start:
            sim.active = True
            sim.version = self._version_at(self.spec.ctx.binary_path)
        elif argv == self._stop or argv in self._signals:
            sim.active, sim.version = False, None
        elif argv[0].rsplit("/", 1)[-1] == C.FLIP_HELPER_NAME and len(argv) > 2:
            # the flip helper's calls (garage_migrate/node/flip.sh): stop, switch, start
            if argv[1] == "stop":
                sim.active, sim.version = False, None
            elif argv[1] == "switch" and argv[3] == self.spec.ctx.binary_path:
                sim.binary_target = argv[2]
                if len(argv) == 9:  # garage.toml moved with it: STAGED LIVE KEEP (then the digests)
                    staged, live, keep = argv[4:7]
                    if live in sim.files:  # else its text is the node's own, never read here
                        sim.files[keep] = sim.files[live]
                    if staged in sim.files:
                        sim.files[live], sim.files[staged] = sim.files[staged], None
            elif argv[1] == "start":
                sim.active = True
                sim.version = self._version_at(self.spec.ctx.binary_path)
        elif argv[:2] == ("ln", "-sfn"):
            sim.links[argv[3]] = argv[2]
        elif argv[:2] == ("mv", "-T"):
            src, dst = argv[2], argv[3]
            if src in sim.links:
                target = sim.links.pop(src)
                if dst == self.spec.ctx.binary_path:
                    sim.binary_target = target
            elif src in sim.files:
                sim.files[dst] = sim.files[src]
                sim.files[src] = None
        elif argv[:2] == ("rm", "-f"):
            sim.files[argv[-1]] = None
        # repairs, offline repairs, gate commands, mkdir, sync: nothing a later step observes

    def _version_at(self, path: str) -> str | None:
        if path == self.spec.ctx.binary_path and self.sim.binary_target is not None:
            path = self.sim.binary_target
        if path == self.spec.staged_path:
            return self.target  # staged now or earlier: the stage step checked its hash and version
        return self.sim.binaries.get(path)

    # ------------------------------------------------------------------ observations
    async def _observe(self, cmd: C.RemoteCommand) -> Result:
        sim, argv = self.sim, cmd.argv
        if sim.active is not None:
            if cmd == self._status:
                return _ok("active\n") if sim.active else _ok("inactive\n", 3)
            if cmd == self._locks:
                if not sim.active:
                    return _ok("")  # the simulated node holds no lock (nor does any other process)
                # a simulated running daemon: one flock on the node's real db/db
                fid = await self.inner.run(self._lock_file, check=False)
                dev, _, ino = fid.stdout.strip().partition(":")
                if fid.returncode != 0 or not dev.isdigit():
                    return fid
                return _ok(f"1: FLOCK  ADVISORY  WRITE 0 {os.major(int(dev)):02x}:{os.minor(int(dev)):02x}:{ino} 0 EOF\n")
            if cmd == self._stats or cmd == self._status_cmd:
                if not sim.active:
                    return _ok(status=1, stderr="Error: the daemon is stopped (dry run)\n")
                if cmd == self._stats and sim.version is not None:
                    return _ok(f"\nGarage version: v{sim.version}\n")
        if len(argv) == 2 and argv[1] == "--version":
            v = self._version_at(argv[0])
            if v is not None:
                return _ok(f"garage v{v}\n")
        if argv[0] == "readlink" and argv[-1] == self.spec.ctx.binary_path and sim.binary_target is not None:
            return _ok(sim.binary_target + "\n")
        if argv[0] in ("readlink", "sha256sum", "cat") and argv[-1] in sim.files:
            data = sim.files[argv[-1]]
            if data is None:
                return _ok(status=1, stderr=f"{argv[0]}: {argv[-1]}: No such file or directory (dry run)\n")
            if argv[0] == "readlink":
                return _ok(argv[-1] + "\n")
            if argv[0] == "sha256sum":
                return _ok(f"{self._sha_of(argv[-1], data)}  {argv[-1]}\n")
            return _ok(data.decode("utf-8", "replace"))
        return await self.inner.run(cmd, check=False)

    def _sha_of(self, path: str, data: bytes) -> str:
        # the staged binary is the inventory's (its hash was checked locally before the upload)
        return hashlib.sha256(data).hexdigest()

    async def reachable(self, addr: str) -> bool | None:
        """Whether clients could reach ``addr`` after the recorded changes; ``None``: ask the network."""
        sim = self.sim
        conf = sim.files.get(self.spec.ctx.config_path)
        if conf is None and sim.active is None:
            return None
        if sim.active is False:
            return False
        if conf is None:
            return None
        try:
            bind = (tomllib.loads(conf.decode()).get("s3_api") or {}).get("api_bind_addr", "")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            return None
        return bind.rsplit(":", 1)[-1] == addr.rsplit(":", 1)[-1]


class _NoEvents:
    """A dry run's reporter: it publishes the plan and the report, but emits no event (nobody
    is to be notified of a question the dry run answers itself, or of a phase it only records)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def event(self, *args, **kwargs) -> None:
        """Dropped (see the class docstring)."""


class DryRunDecider:
    """Answers every question by the dry run's rule (:data:`DRY_RUN_ANSWERS`) and lists it."""

    def __init__(self):
        self.asked: list[tuple[str, str, str]] = []

    async def ask(self, kind: str, key: str, description: str, choices: tuple[str, ...] = ()) -> Answer:
        """The rule's answer (the first offered one when the rule's is not offered); the
        question is kept for the summary."""
        action = DRY_RUN_ANSWERS[kind]
        if choices and action not in choices:
            action = choices[0]
        self.asked.append((kind, key, action))
        return Answer(action=action, note="dry run: a person is asked here", pause_key="dry-run", flow_run_id="")


class DryRunSteps(EngineSteps):
    """The engine's steps, except what a dry run cannot do (see the module docstring)."""

    async def backup_metadata(self, rt: Runtime, node: str) -> StepResult:
        """Prove the node (simulated) stopped, record the plan's backup acts, keep no archive."""
        from ..backup.engine import observe_stopped

        await observe_stopped(rt.shell(node), rt.node(node).ctx)
        version = rt.ledger.node(node).version_before or rt.nfacts(node).version
        acts = backup_actions(rt.inv, rt.facts, rt.ledger.doc.migration_id, node, version)
        for op in acts.ops():
            if op.kind == "act":
                if isinstance(op, A.Upload):
                    await rt.shell(node).put_file("/dev/null", op.remote)
                else:
                    await rt.shell(node).run(op)
        where = acts.stream.dest if acts.stream is not None else acts.install.argv[-1]
        # in memory only (a dry run never writes the ledger): lets the 0.8 start go on
        await rt.ledger.set_node(node, backup=BackupRef(path=where, manifest="", sha256=None, version=version,
                                                        dry_run=True))
        return StepResult("backup", node, "would-run", f"would back up to {where}")

    async def sync_gate(self, rt: Runtime, opts: MigrationOptions, name: str) -> GateOutcome:
        """One real observation of the queues (the gate's deadline is not waited out)."""
        one = opts.model_copy(update={"gate_deadline_s": 0.5, "gate_consecutive": 1})
        return await super().sync_gate(rt, one, name)

    async def check_counters(self, rt: Runtime) -> StepResult:
        """Not observable before the nodes run 0.8: said so, not pretended."""
        return StepResult("check-counters", None, "would-run",
                          "the bucket counters can only be checked once the nodes run 0.8")


def dry_run_dir(ledger_path: Path) -> Path:
    """A new dry-run directory beside the migration's: ``<migration dir>.dry-run/<UTC time>``."""
    base = Path(ledger_path).parent
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    d = base.with_name(base.name + ".dry-run") / stamp
    d.mkdir(parents=True, mode=0o700)
    return d


def simulate(rt: Runtime, journal: CommandJournal) -> tuple[Runtime, dict[str, SimShell]]:
    """A copy of ``rt`` whose shells record acts (:class:`SimShell`), journalled to ``journal``."""
    sims: dict[str, SimShell] = {}
    journalled: dict[str, JournalShell] = {}
    base = rt.shell

    def shell(name: str):
        if name not in journalled:
            sims[name] = SimShell(base(name), A.spec(rt.inv, rt.facts, name), rt.inv.target.version)
            journalled[name] = JournalShell(sims[name], name, journal)
        return journalled[name]
    return dataclasses.replace(rt, shells=shell), sims


def acts_not_run(plan: MigrationPlan, journal: list[dict]) -> tuple[set, set]:
    """``(listed but not recorded, recorded but not listed)`` acts of a dry run's journal.

    Compared per node and step (phase, step kind); a step that runs on one of several nodes
    counts once on whichever it ran; clean-up acts a step runs only after a failure do not
    have to appear.
    """
    ran = {(e["node"], e["phase"], e["step"], e["command"]) for e in journal
           if e["event"] == "started" and e["phase"] is not None}
    must, may = set(), set()
    for ph in plan.phases:
        for w in ph.waves:
            for s in w.steps:
                keys = {(a.node, ph.name, s.kind, a.op.render()): a for a in s.acts}
                if s.one_of:
                    may.update(keys)
                    if not ran & set(keys):
                        must.add(next(iter(keys)))
                else:
                    must.update(k for k, a in keys.items() if not a.on_failure)
                    may.update(k for k, a in keys.items() if a.on_failure)
    return must - ran, ran - must - may


async def dry_run_migration(rt: Runtime, plan: MigrationPlan, opts: MigrationOptions, *, reporter: Reporter,
                            clock: Clock | None = None, log: logging.Logger | logging.LoggerAdapter | None = None) -> dict:
    """Execute ``plan`` as a dry run (see the module docstring) and return its summary.

    Raises:
        NotInPlanError: a step tried an act its plan step does not list (a bug).
    """
    log = log or rt.log
    d = dry_run_dir(rt.ledger.path)
    save_plan(plan, d)
    journal = CommandJournal(d / "commands.jsonl")
    srt, _sims = simulate(rt, journal)
    decider = DryRunDecider()
    # the watch window observes a cluster that is not on 0.8 yet: once is enough
    ex = Executor(srt, plan, opts.model_copy(update={"watch_s": 0.0}), steps=DryRunSteps(), decider=decider,
                  reporter=_NoEvents(reporter), clock=clock, auto_approve=False, log=log)
    await ex.run()
    lines = journal.read()
    missing, extra = acts_not_run(plan, lines)
    recorded = sum(1 for e in lines if e["event"] == "started")
    md = [f"## Dry run of `{plan.migration_id}` (plan `{plan.digest()}`): nothing was changed",
          f"{recorded} changing commands recorded, not run; journal `{journal.path}`.",
          "", "Questions a person would be asked:"] + [f"- {k} `{key}` (the dry run answered {a})"
                                                      for k, key, a in decider.asked]
    if missing:
        md += ["", "Listed in the plan but not recorded (the node is already in the wanted state):"]
        md += [f"- {n} {ph}/{st}: `{c}`" for n, ph, st, c in sorted(missing)]
    await reporter.report(plan.migration_id, "\n".join(md), "Dry run: what would run")
    log.info("dry run: %d acts recorded in %s; %d questions", recorded, journal.path, len(decider.asked))
    return {"migration_id": plan.migration_id, "dry_run": True, "plan_digest": plan.digest(), "dir": str(d),
            "journal": str(journal.path), "acts": recorded, "questions": [list(q) for q in decider.asked],
            "not_recorded": sorted(missing), "not_listed": sorted(extra)}
