"""The migration steps: each observes the node first, acts only if needed, then verifies.

Every step is an ``async`` function of a :class:`Runtime` and (mostly) a node name. Running a
step twice changes nothing the second time: it sees the node already in the wanted state,
records ``skipped`` with the reason, and returns. State that must survive a crash is read
from the node itself (service state, sled lock, symlink target, staged file hash) or from the
ledger, never from memory.

Reads go through :meth:`Runtime.observe`; anything that changes a node goes through
:meth:`Runtime.act`, with a command the step's plan lists (:mod:`garage_migrate.actions`). A
dry run runs these very steps over shells that record the changes instead of making them
(:mod:`garage_migrate.executor.dryrun`): one code path.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import actions as A
from . import commands as C
from . import probes
from .actions import OFFLINE_REPAIR_TIMEOUT, START_TIMEOUT, STOP_TIMEOUT, original_config_path
from .config_step import stage_config, switch_config
from .discovery import ClusterFacts, NodeFacts
from .errors import CommandError, GarageMigrateError, LockHeldError, StepError, TransportError
from .gates.clock import Clock, SystemClock
from .facts import (parse_bucket_info, parse_bucket_list, parse_offline_repair, parse_stats, parse_stats_version_line,
                    parse_status, parse_version)
from .inventory import Inventory, ResolvedNode
from .ledger import Ledger

log = logging.getLogger("garage_migrate.steps")

#: re-exported: the step timeouts and the kept config's path live with the action builders
__reexports__ = (STOP_TIMEOUT, START_TIMEOUT, OFFLINE_REPAIR_TIMEOUT, original_config_path)


@dataclass
class StepResult:
    """What a step did on a node: ``done``, ``skipped`` (with why) or ``would-run`` (dry run)."""

    step: str
    node: str | None
    status: str
    detail: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Runtime:
    """Everything steps need, passed explicitly (no module-level state).

    Attributes:
        inv: the inventory.
        shells: ``name -> NodeShell``.
        ledger: the persisted ledger of this migration.
        facts: what discovery found at the start.
        clock: time source for polling.
        log: where step logs go (the Prefect run logger in flows).
        backup_max_age_s: a backup older than this is taken again, not reused (``None``: any
            age; the executor sets its window policy's limit).
    """

    inv: Inventory
    shells: object
    ledger: Ledger
    facts: ClusterFacts
    clock: Clock = field(default_factory=SystemClock)
    log: logging.Logger | logging.LoggerAdapter = log
    backup_max_age_s: float | None = None

    def node(self, name: str) -> ResolvedNode:
        return self.inv.node(name)

    def nfacts(self, name: str) -> NodeFacts:
        return self.facts.node(name)

    def shell(self, name: str):
        return self.shells(name) if callable(self.shells) else self.shells[name]

    def meta_dir(self, name: str) -> str:
        return self.nfacts(name).config.metadata_dir

    def spec(self, name: str) -> A.NodeSpec:
        """What the action builders need to know about node ``name``."""
        return A.spec(self.inv, self.facts, name)

    def info(self, node: str | None, msg: str, *args) -> None:
        self.log.info("[%s] " + msg, node or "cluster", *args)

    async def observe(self, node: str, cmd: C.RemoteCommand, check: bool = True):
        """Run a read-only command."""
        return await self.shell(node).run(cmd, check=check)

    async def act(self, node: str, cmd: C.RemoteCommand, check: bool = True):
        """Run a changing command (a dry run's shell records it instead: :mod:`.executor.dryrun`)."""
        shell = self.shell(node)
        self.info(node, ("dry run: record %s" if getattr(shell, "records_only", False) else "run %s"), cmd.render())
        return await shell.run(cmd, check=check)

    async def act_armed(self, node: str, cmd: C.RemoteCommand, release, check: bool = True):
        """Run an armed changing command (:meth:`garage_migrate.ssh.NodeShell.run_armed`): it
        observes, arms, and acts only once ``release()`` says go."""
        shell = self.shell(node)
        self.info(node, ("dry run: record %s" if getattr(shell, "records_only", False) else "run armed %s"),
                  cmd.render())
        return await shell.run_armed(cmd, release, check=check)


# ---------------------------------------------------------------------------- observations
async def service_active(rt: Runtime, node: str) -> bool:
    """``is-active`` says the service runs (:func:`garage_migrate.probes.service_state`)."""
    return (await probes.service_state(rt.shell(node), rt.node(node).ctx)).active


async def lock_free(rt: Runtime, node: str) -> bool:
    """Nothing holds sled's lock on ``<metadata_dir>/db/db`` (:func:`garage_migrate.probes.db_lock`)."""
    lock = await probes.db_lock(rt.shell(node), rt.node(node).ctx, rt.meta_dir(node))
    if lock.state == "unknown":
        raise StepError(f"lock probe failed: {lock.result.stderr.strip()}", node=node,
                        exit_status=lock.result.returncode)
    return lock.state == "free"


async def daemon_version(rt: Runtime, node: str) -> str | None:
    """The version the running daemon reports (first line of ``stats``), or ``None``."""
    res = await rt.observe(node, C.garage(rt.node(node).ctx, "stats"), check=False)
    if res.returncode != 0:
        return None
    # only the first line is read: the version is all this asks, and the rest of the output
    # changes layout between versions (the parsers of ``stats`` check it where it is used)
    first = next((ln for ln in res.stdout.splitlines() if ln.strip()), "")
    return parse_stats_version_line(first).version


async def binary_version(rt: Runtime, node: str, path: str | None = None) -> str:
    """The version of the binary at ``path`` (default: the node's ``binary_path``)."""
    ctx = rt.node(node).ctx
    out = (await rt.observe(node, C.garage_version(path or ctx.binary_path, ctx=ctx))).stdout
    return parse_version(out).version


async def poll(rt: Runtime, what: str, node: str, pred, timeout: float, interval: float = 0.25):
    """Poll ``pred()`` until truthy or ``timeout``; return the last value."""
    deadline = rt.clock.monotonic() + timeout
    while True:
        value = await pred()
        if value or rt.clock.monotonic() >= deadline:
            return value
        await rt.clock.sleep(interval)


def _skip(rt: Runtime, step: str, node: str | None, why: str) -> StepResult:
    rt.info(node, "%s: skipped: %s", step, why)
    return StepResult(step, node, "skipped", why)


async def _record(rt: Runtime, res: StepResult, key: str | None = None) -> StepResult:
    # the flow's runner records results in the ledger under phase-qualified keys
    return res


# ---------------------------------------------------------------------------- steps
async def preflight(rt: Runtime, node: str, backup_bytes_needed: bool = True) -> StepResult:
    """Reachability, versions, disk space for an on-node backup, config keys 0.8 ignores."""
    f = rt.nfacts(node)
    notes = []
    if f.config.deprecated_keys:
        notes.append(f"config keys ignored silently by 0.8 (translate them): {', '.join(f.config.deprecated_keys)}")
    meta = f.config.metadata_dir
    du_cmd, df_cmd = A.preflight(rt.spec(node))
    du = await rt.observe(node, du_cmd)
    size = int(du.stdout.split()[0])
    df = await rt.observe(node, df_cmd)
    avail = int(df.stdout.splitlines()[-1].split()[0])
    if backup_bytes_needed and rt.inv.backup.mode == "on-node" and avail < size:
        raise StepError(f"not enough space next to {meta} for an on-node backup: {avail} B free, {size} B needed", node=node)
    await rt.ledger.set_node(node, zone=f.zone, id64=f.id64, version_before=rt.ledger.node(node).version_before or f.version,
                             metadata_bytes=size, binary_before=f.binary_target)
    res = StepResult("preflight", node, "done", "; ".join(notes) or "ok", {"metadata_bytes": size, "avail": avail})
    return await _record(rt, res)


async def launch_repair(rt: Runtime, what: str, via: str | None = None) -> StepResult:
    """``garage repair --all-nodes --yes <what>`` from one running node.

    Launching is only a receipt (ref 3): completion is the sync gate's business. A node that
    could not be reached makes the step fail with the list, although the repair did start on
    the others; re-launching is safe (it restarts the work).
    """
    candidates = [via] if via else [n.name for n in rt.facts.nodes]
    for name in candidates:
        if not await service_active(rt, name):
            continue
        res = await rt.act(name, A.repair(rt.node(name).ctx, what), check=False)
        if res.returncode == 0:
            rt.info(None, "repair %s launched from %s: %s", what, name, res.stdout.strip())
            return StepResult(f"repair-{what}", None, "done", res.stdout.strip())
        if "Could not launch repair on nodes" in res.stderr:
            # the repair started on the others; a node did not answer: retried as transient
            raise TransportError(f"repair {what}: {res.stderr.strip()}", node=name, exit_status=res.returncode,
                                 stderr=res.stderr)
        raise CommandError(f"repair {what} failed: {res.stderr.strip()}", node=name, exit_status=res.returncode,
                           stderr=res.stderr)
    raise StepError(f"no running node to launch repair {what} from")


async def stop_node(rt: Runtime, node: str) -> StepResult:
    """Stop the daemon gracefully and verify it is gone and the DB lock is free.

    0.7.3 shuts down gracefully only on SIGINT (SIGTERM, systemd's default, kills it at once);
    0.8 is graceful on SIGINT too. So every node gets the configured stop signal (SIGINT)
    first, whatever it runs: no round trip to ask its version, which keeps the simultaneous
    restart short, and no chance of killing a 0.7 daemon that was thought to be 0.8. The
    service's own stop then settles the unit state.
    """
    acts = A.stop(rt.spec(node))
    if not await service_active(rt, node) and await lock_free(rt, node):
        return await _record(rt, _skip(rt, "stop", node, "already stopped and the DB lock is free"))
    await rt.act(node, acts.signal)
    if not await poll(rt, "stop", node, lambda: _inactive(rt, node), STOP_TIMEOUT):
        # never escalated to a kill here: a daemon killed mid-write is a person's call, who
        # can first read why it does not stop
        raise StepError(f"daemon still running {STOP_TIMEOUT:.0f}s after {rt.node(node).stop_signal}: it was not "
                        f"killed; find out why it does not stop (its log), stop it by hand and check that "
                        f"{rt.meta_dir(node)}/db/db is no longer locked, then run this migration again",
                        node=node)
    await rt.act(node, acts.stop)  # idempotent; settles the unit state
    if not await poll(rt, "lock", node, lambda: lock_free(rt, node), 10.0):
        raise LockHeldError("the service is stopped but the DB lock is still held", node=node)
    return await _record(rt, StepResult("stop", node, "done", f"stopped with {rt.node(node).stop_signal}"))


async def _inactive(rt: Runtime, node: str) -> bool:
    return not await service_active(rt, node)


async def start_node(rt: Runtime, node: str, expect_version: str) -> StepResult:
    """Start the service and verify the daemon answers with ``expect_version``."""
    key = f"start-{expect_version}"
    if await service_active(rt, node):
        running = await daemon_version(rt, node)
        if running == expect_version:
            if rt.ledger.node(node).running_version != running:  # the table's "version after"
                await rt.ledger.set_node(node, running_version=running)
            return await _record(rt, _skip(rt, "start", node, f"already running {running}"), key)
        if running is not None:
            raise StepError(f"running {running}, expected {expect_version}: stop it first", node=node)
    installed = await binary_version(rt, node)
    if installed != expect_version:
        raise StepError(f"binary_path holds {installed}, expected {expect_version}", node=node)
    if expect_version.startswith("0.8.") and rt.ledger.node(node).backup is None:
        # the rule of both flows: no 0.8 start without a backup of this node's metadata
        raise StepError("refusing to start 0.8 on a node without a verified backup from this migration", node=node)
    await rt.act(node, A.start(rt.spec(node)).start)

    gave_up = []

    async def answers():
        if await daemon_version(rt, node) == expect_version:
            return True
        # a unit that already failed (refused start, crash) will not answer: do not wait it out
        if rt.clock.monotonic() - t0 > 2.0 and not await service_active(rt, node):
            gave_up.append(True)
            return True
        return False
    t0 = rt.clock.monotonic()
    if not await poll(rt, "start", node, answers, START_TIMEOUT) or gave_up:
        if gave_up:  # the unit failed: said as such, not as a wait that timed out
            raise StepError(f"the {expect_version} daemon exited {rt.clock.monotonic() - t0:.0f}s after its start, "
                            f"before answering (service not active): it refuses to start; read its log, fix the "
                            f"cause, then run this migration again", node=node)
        active = await service_active(rt, node)
        raise StepError(f"daemon did not answer as {expect_version} within {START_TIMEOUT:.0f}s "
                        f"(service {'active' if active else 'not active'})", node=node)
    await rt.ledger.set_node(node, running_version=expect_version)
    return await _record(rt, StepResult("start", node, "done", f"running {expect_version}"), key)


async def wait_healthy(rt: Runtime, nodes: list[str], timeout: float = 60.0) -> StepResult:
    """Every node of the cluster that answers sees every node of ``nodes`` as healthy.

    After a zone's round this is "the zone is back": the other zones must see it, not only
    its own members, before the next zone may go down.
    """
    ids = {rt.nfacts(n).id16 for n in nodes}
    everyone = [n.name for n in rt.facts.nodes]

    async def healthy():
        for n in everyone:
            res = await rt.observe(n, C.garage(rt.node(n).ctx, "status"), check=False)
            if res.returncode != 0:
                return False
            up = {x.id16 for x in parse_status(res.stdout).healthy}
            if not ids <= up:
                return False
        return True
    if not await poll(rt, "health", None, healthy, timeout, 0.5):
        raise StepError(f"nodes {', '.join(nodes)} were not all seen healthy by every node within {timeout:.0f}s")
    return StepResult("wait-healthy", None, "done", f"{len(nodes)} nodes healthy, seen by all {len(everyone)}")


def _staged_path(rt: Runtime, node: str) -> str:
    return rt.spec(node).staged_path


async def stage_binary(rt: Runtime, node: str, helper: bool = False) -> StepResult:
    """Upload the target binary beside ``binary_path``, check its sha256 and ``--version``
    (and, with ``helper``, the flip helper of the simultaneous restart: :mod:`.flip_steps`).

    The live symlink is not touched. A staged file with the right hash is kept.
    """
    target = rt.inv.target
    acts = A.stage(rt.spec(node))
    dest = acts.upload.remote
    want = target.sha256.lower()
    cfg = await stage_config(rt, node)  # garage.toml for 0.8 beside the live one, if it changes
    if helper:
        from .flip_steps import helper_stage  # lazily: it builds on this module

        cfg = "; ".join(x for x in (cfg, await helper_stage(rt, node)) if x)
    more = f"; {cfg}" if cfg else ""
    res = await rt.observe(node, acts.hash_, check=False)
    if res.returncode == 0 and res.stdout.split()[0] == want:
        return await _record(rt, _skip(rt, "stage", node, f"{dest} already staged with the right sha256{more}"))
    local = Path(target.binary)
    if hashlib.sha256(local.read_bytes()).hexdigest() != want:
        raise StepError(f"local {local} does not match the inventory's sha256", node=node)
    await rt.shell(node).put_file(local, dest)
    got = (await rt.observe(node, acts.hash_)).stdout.split()[0]
    if got != want:
        raise StepError(f"staged {dest} has sha256 {got}, expected {want}", node=node)
    version = await binary_version(rt, node, dest)
    if version != target.version.removeprefix("v"):
        raise StepError(f"staged binary reports {version}, expected {target.version}", node=node)
    return await _record(rt, StepResult("stage", node, "done", f"{dest} ({version}, sha256 ok){more}"))


async def switch_binary(rt: Runtime, node: str, to: str = "target") -> StepResult:
    """Atomically point ``binary_path`` at the staged target (or back at the original binary).

    The original target is recorded in the ledger by preflight, so the flip is reversible.
    """
    ctx = rt.node(node).ctx
    dest = _staged_path(rt, node) if to == "target" else rt.ledger.node(node).binary_before
    if not dest:
        raise StepError("no recorded original binary to switch back to", node=node)
    acts = A.switch(rt.spec(node), dest)
    current = (await rt.observe(node, acts.current)).stdout.strip()
    resolved = (await rt.observe(node, acts.wanted)).stdout.strip()
    key = "switch" if to == "target" else "switch-back"
    cfg = await switch_config(rt, node, to)  # the config goes with the binary, where it changes
    more = f"; {cfg}" if cfg else ""
    if current == resolved:
        return await _record(rt, _skip(rt, key, node, f"{ctx.binary_path} already points to {dest}{more}"), key)
    for cmd in acts.flip:
        await rt.act(node, cmd)
    return await _record(rt, StepResult(key, node, "done", f"{ctx.binary_path} -> {dest} (was {current}){more}"),
                         key)


async def offline_repair(rt: Runtime, node: str) -> StepResult:
    """``garage offline-repair --yes object_counters`` with the daemon stopped.

    A lock failure is reported as such (LOCK_HELD), never retried blindly: the daemon, or
    another repair, still has the DB open.
    """
    if await service_active(rt, node) or not await lock_free(rt, node):
        raise LockHeldError("the daemon is running or holds the DB lock: stop it before offline-repair", node=node)
    res = await rt.act(node, A.offline_repair(rt.spec(node)).repair, check=False)
    outcome = parse_offline_repair(res.returncode, res.stdout, res.stderr)
    if outcome.kind == "lock_held":
        raise LockHeldError(f"offline-repair could not take the DB lock: {outcome.detail}", node=node,
                            exit_status=res.exit_status, stderr=res.stderr)
    if outcome.kind != "ok":
        raise StepError(f"offline-repair failed ({outcome.kind}): {outcome.detail}", node=node,
                        exit_status=res.exit_status, stderr=res.stderr)
    return await _record(rt, StepResult("offline-repair", node, "done", "object counters recounted"))


async def _counter_snapshot(rt: Runtime) -> tuple[int, int, int, list[str]]:
    live = [n.name for n in rt.facts.nodes]
    via = live[0]
    ctx = rt.node(via).ctx
    buckets = parse_bucket_list((await rt.observe(via, C.garage(ctx, "bucket", "list"))).stdout)
    total_objects = 0
    problems = []
    for b in buckets.buckets:
        name = b.global_aliases[0] if b.global_aliases else b.id64
        info = parse_bucket_info((await rt.observe(via, C.garage(ctx, "bucket", "info", name))).stdout)
        if info.objects is None:
            problems.append(f"{name}: no counters (still 0.7?)")
            continue
        if info.objects < 0 or info.size_wrapped_negative:
            problems.append(f"{name}: negative counters ({info.objects} objects)")
        total_objects += max(0, info.objects)
    items = 0
    for n in live:
        st = parse_stats((await rt.observe(n, C.garage(rt.node(n).ctx, "stats", "-d"))).stdout)
        items += st.table("object").items or 0
    return total_objects, items, len(buckets.buckets), problems


async def check_counters(rt: Runtime, settle_s: float = 90.0) -> StepResult:
    """Bucket counters against the object-table item counts of ``stats -d``.

    Each object entry is stored on ``copies`` nodes, and a bucket's counter is the max over
    its replicas of each one's own count, so the buckets' object counts add up to at most
    ``items / copies`` (less when tombstones are still in the tables). Counters above that,
    negative counters, or counters that all read zero while objects exist are wrong. After an
    offline repair on 0.8.2+ the recount reaches the table only once each node's
    ``bucket_object_counter queue`` drained, so the check observes for up to ``settle_s``
    seconds before it reports a problem.
    """
    copies = {"3": 3, "3-degraded": 3, "3-dangerous": 3, "2": 2, "2-dangerous": 2}.get(rt.facts.replication_mode, 1)
    deadline = rt.clock.monotonic() + settle_s
    while True:
        total_objects, items, n_buckets, problems = await _counter_snapshot(rt)
        bound = -(-items // copies)
        if items and total_objects == 0:
            problems.append(f"all bucket counters read 0 while the object tables hold {items} items")
        elif total_objects > bound:
            problems.append(f"buckets count {total_objects} objects, more than the {items} object-table items "
                            f"over {copies} copies allow ({bound})")
        if not problems or rt.clock.monotonic() >= deadline:
            break
        rt.info(None, "counters not consistent yet (%s); observing again", "; ".join(problems))
        await rt.clock.sleep(2.0)
    detail = "; ".join(problems) or (f"{total_objects} objects in {n_buckets} buckets; object tables hold {items} "
                                     f"items over {copies} copies ({bound}): consistent")
    return StepResult("check-counters", None, "failed" if problems else "done", detail,
                      {"objects": total_objects, "items": items})


async def _upload_text(rt: Runtime, node: str, text: str, remote: str) -> None:
    # a local temp file is owner-only (mkstemp), and put_file keeps that mode on the node
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", delete=False, suffix=".toml") as fh:
        fh.write(text)
    try:
        await rt.shell(node).put_file(fh.name, remote)
    finally:
        Path(fh.name).unlink()


__all__ = [n for n in dir() if not n.startswith("_")] + ["GarageMigrateError"]
