"""What each step of a plan does on the nodes, as values: the one place a step's commands come from.

The planner (:mod:`garage_migrate.plan`) puts these values into every step of the plan, the
steps (:mod:`garage_migrate.steps`, :mod:`garage_migrate.backup_step`) take the very same
values from the same builders when they run, and the executor refuses any changing command a
step tries that its plan step does not list (:func:`garage_migrate.journal.in_step`). So what
the dry run prints and a person approves is what runs, byte for byte.

An action is a :class:`~garage_migrate.commands.RemoteCommand` (``kind`` ``observe`` or
``act``) or an :class:`Upload` (always an ``act``), bound to a node by :class:`NodeAction`.
Observations are listed once each, whatever number of times a step polls them; acts are
listed in the order they run. A step observes before it acts, so a re-run may skip some of its
acts (the node is already in the wanted state), never run one the plan does not list.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass
from typing import Literal

from . import commands as C
from .commands import NodeContext, RemoteCommand

#: Seconds the daemon has to exit after the stop signal before the step fails.
STOP_TIMEOUT = 120.0
#: Seconds a started daemon has to answer with the expected version.
START_TIMEOUT = 60.0
#: Node-side limit of ``offline-repair object_counters`` (it walks every object).
OFFLINE_REPAIR_TIMEOUT = 6 * 3600.0
#: Node-side limit of the systemd stop after the signal (the poll above, plus a margin).
SERVICE_STOP_TIMEOUT = STOP_TIMEOUT + 30.0


@dataclass(frozen=True)
class Upload:
    """A file the controller writes onto a node over SFTP (always a change).

    Attributes:
        remote: the absolute path written on the node.
        what: what the file is (``the 0.8 binary``, ``the cut config``...), for the renderings.
    """

    remote: str
    what: str
    kind: Literal["act"] = "act"

    def words(self) -> tuple[str, ...]:
        """``("put", <remote>)``: how the journal records an upload."""
        return ("put", self.remote)

    def render(self) -> str:
        """``sftp put <remote>``: the journal's command line of an upload."""
        return f"sftp put {shlex.quote(self.remote)}"




Op = "RemoteCommand | Upload | LocalStream"


@dataclass(frozen=True)
class NodeAction:
    """One action of a step, on one node.

    Attributes:
        node: where it runs.
        op: the command, upload or stream.
        on_failure: runs only to clean up after a failure of the step (so a clean run does
            not run it).
    """

    node: str
    op: Op
    on_failure: bool = False

    @property
    def kind(self) -> str:
        """``observe`` or ``act``."""
        return self.op.kind

    def key(self) -> tuple[str, str]:
        """``(node, rendered command)``: what the journal records and the executor checks."""
        return (self.node, self.op.render())

    def to_json(self) -> dict:
        """The action as the plan's JSON shows it."""
        return {"node": self.node, "kind": self.kind, "argv": list(self.op.words()), "command": self.op.render(),
                "on_failure": self.on_failure}


# ---------------------------------------------------------------------------- per node
@dataclass(frozen=True)
class NodeSpec:
    """What the builders need to know about one node (from the inventory and discovery)."""

    name: str
    ctx: NodeContext
    metadata_dir: str
    stop_signal: str
    staged_path: str


def spec(inv, facts, name: str) -> NodeSpec:
    """The :class:`NodeSpec` of node ``name`` from the inventory and the discovered facts."""
    n = inv.node(name)
    return NodeSpec(name=name, ctx=n.ctx, metadata_dir=facts.node(name).config.metadata_dir,
                    stop_signal=n.stop_signal, staged_path=staged_path(n.ctx.binary_path, inv.target.version))


def staged_path(binary_path: str, target_version: str) -> str:
    """Where the target binary is staged: beside ``binary_path``, named after its version."""
    return posixpath.join(posixpath.dirname(binary_path), f"garage-v{target_version.removeprefix('v')}")


def original_config_path(config_path: str) -> str:
    """Where the node keeps its original ``garage.toml`` while the API is cut (never the
    ledger: the file holds ``rpc_secret`` and tokens)."""
    return config_path + ".garage-migrate.orig"


def read_original(ctx: NodeContext) -> RemoteCommand:
    """``cat`` of the original config kept on the node while the API is cut."""
    return C.cat(original_config_path(ctx.config_path), sudo=ctx.sudo)


def cut_config_path(config_path: str) -> str:
    """The temp file the cut (or restored) config is uploaded to before its rename."""
    return config_path + ".garage-migrate"


@dataclass(frozen=True)
class Probes:
    """The two observations that say a daemon is stopped (:mod:`garage_migrate.probes`)."""

    is_active: RemoteCommand
    lock: RemoteCommand

    @classmethod
    def of(cls, n: NodeSpec) -> "Probes":
        """The probes of node ``n``."""
        return cls(C.service_status(n.ctx), C.lock_probe(n.metadata_dir, sudo=n.ctx.sudo))


@dataclass(frozen=True)
class StopActions:
    """The stop step: the configured signal first (0.7.3 is graceful on SIGINT only), then the
    service's own stop to settle the unit state."""

    probes: Probes
    signal: RemoteCommand
    stop: RemoteCommand

    def ops(self) -> tuple[Op, ...]:
        """Every action, observations first."""
        return (self.probes.is_active, self.probes.lock, self.signal, self.stop)


def stop(n: NodeSpec) -> StopActions:
    """The stop step's actions on ``n``."""
    return StopActions(Probes.of(n), C.service_signal(n.ctx, n.stop_signal),
                       C.service_stop(n.ctx, timeout=SERVICE_STOP_TIMEOUT))


@dataclass(frozen=True)
class StartActions:
    """The start step: the installed binary's version checked, the service started, the
    daemon's ``stats`` polled until it answers with the expected version."""

    is_active: RemoteCommand
    stats: RemoteCommand
    binary_version: RemoteCommand
    start: RemoteCommand

    def ops(self) -> tuple[Op, ...]:
        """Every action, observations first."""
        return (self.is_active, self.stats, self.binary_version, self.start)


def start(n: NodeSpec) -> StartActions:
    """The start step's actions on ``n``."""
    return StartActions(C.service_status(n.ctx), C.garage(n.ctx, "stats"),
                        C.garage_version(n.ctx.binary_path, ctx=n.ctx), C.service_start(n.ctx))


@dataclass(frozen=True)
class StageActions:
    """The stage step: the upload (skipped when the right file is there) and its checks."""

    hash_: RemoteCommand
    upload: Upload
    version: RemoteCommand

    def ops(self) -> tuple[Op, ...]:
        """Every action."""
        return (self.hash_, self.upload, self.version)


def stage(n: NodeSpec) -> StageActions:
    """The stage step's actions on ``n``."""
    return StageActions(C.sha256sum(n.staged_path), Upload(n.staged_path, "the target binary"),
                        C.garage_version(n.staged_path, ctx=n.ctx))


@dataclass(frozen=True)
class SwitchActions:
    """The binary switch: both ends read, then the atomic symlink flip."""

    current: RemoteCommand
    wanted: RemoteCommand
    flip: tuple[RemoteCommand, RemoteCommand]

    def ops(self) -> tuple[Op, ...]:
        """Every action."""
        return (self.current, self.wanted, *self.flip)


def switch(n: NodeSpec, to_path: str) -> SwitchActions:
    """Point ``binary_path`` of ``n`` at ``to_path`` (the staged target, or the original)."""
    ctx = n.ctx
    return SwitchActions(C.readlink_f(ctx.binary_path), C.readlink_f(to_path),
                         C.switch_symlink(to_path, ctx.binary_path, sudo=ctx.sudo))


@dataclass(frozen=True)
class OfflineRepairActions:
    """``offline-repair object_counters`` with the daemon proven stopped."""

    probes: Probes
    repair: RemoteCommand

    def ops(self) -> tuple[Op, ...]:
        """Every action."""
        return (self.probes.is_active, self.probes.lock, self.repair)


def offline_repair(n: NodeSpec) -> OfflineRepairActions:
    """The offline repair step's actions on ``n``."""
    return OfflineRepairActions(Probes.of(n), C.offline_repair(n.ctx, "object_counters",
                                                                timeout=OFFLINE_REPAIR_TIMEOUT))


@dataclass(frozen=True)
class ApiActions:
    """Cutting (or restoring) client access by moving the S3/web ports in ``garage.toml``.

    The original is kept on the node (:func:`original_config_path`) while the API is cut; the
    new text goes to a temp file renamed over the config; a running node restarts on its
    version for the change to take effect (the stop and start steps' actions).
    """

    read_config: RemoteCommand
    read_original: RemoteCommand
    keep_original: Upload | None
    upload: Upload
    rename: RemoteCommand
    restart_stop: StopActions
    restart_start: StartActions
    drop_original: RemoteCommand | None

    def ops(self) -> tuple[Op, ...]:
        """Every action, in the order a change runs them."""
        out: list[Op] = [self.read_config, self.read_original]
        if self.keep_original is not None:
            out.append(self.keep_original)
        out += [self.upload, self.rename, *self.restart_stop.ops(), *self.restart_start.ops()]
        if self.drop_original is not None:
            out.append(self.drop_original)
        return tuple(_unique(out))


def set_api(n: NodeSpec, enabled: bool) -> ApiActions:
    """The ``disable-api`` (``enabled=False``) or ``enable-api`` step's actions on ``n``."""
    ctx = n.ctx
    orig = original_config_path(ctx.config_path)
    tmp = cut_config_path(ctx.config_path)
    return ApiActions(
        read_config=C.cat(ctx.config_path, sudo=ctx.sudo), read_original=read_original(ctx),
        keep_original=None if enabled else Upload(orig, "the original config, kept while the API is cut"),
        upload=Upload(tmp, "the restored config" if enabled else "the config with the client ports moved"),
        rename=C.rename(tmp, ctx.config_path, sudo=ctx.sudo), restart_stop=stop(n), restart_start=start(n),
        drop_original=C.remove_file(orig, sudo=ctx.sudo) if enabled else None)


@dataclass(frozen=True)
class LocalStream:
    """A node's tar stream written into an archive on the controller (controller-mode backup).

    Read-only on the node (``observe``): what changes is the controller's archive, ``dest``.
    """

    source: RemoteCommand
    dest: str
    kind: Literal["observe"] = "observe"

    def words(self) -> tuple[str, ...]:
        """The node-side command's words."""
        return self.source.words()

    def render(self) -> str:
        """The node-side command line (as the journal records it)."""
        return self.source.render()


#: Seconds added to every size-derived backup timeout, and the worst rate assumed (bytes/s):
#: the same figures as :class:`garage_migrate.backup.engine.BackupOptions`' defaults.
BACKUP_TIMEOUT_FLOOR = 300.0
BACKUP_MIN_RATE = 20.0 * 1024 * 1024


def backup_timeout(metadata_bytes: int | None) -> float:
    """The archive command's timeout for a metadata dir of ``metadata_bytes`` (as discovered).

    Sized for twice the discovered size (the dir may grow between discovery and the backup;
    a timeout only bounds a stuck command), rounded up to a power of two of at least 1 GiB:
    the timeout is part of the plan, and so of its digest, and a size that changes a little
    between a run and its retry must not make the plan another one (a person's approval is
    reused only for the same plan).
    """
    need = max(2 * (metadata_bytes or 0), 1 << 30)
    return BACKUP_TIMEOUT_FLOOR + (1 << (need - 1).bit_length()) / BACKUP_MIN_RATE


def on_node_temp(archive: str) -> str:
    """The temp name of an on-node archive while it is written and checked (renamed when it
    verified). Fixed, so the plan can show it: the cluster lock and the backup dir's lock
    keep a second writer away."""
    d, name = posixpath.split(archive)
    return posixpath.join(d, f".{name}.tmp.tar.zst")


@dataclass(frozen=True)
class BackupActions:
    """The backup step (the node stopped): listing, size, then the archive.

    ``controller`` mode streams ``tar -cf -`` into an archive on the controller; ``on-node``
    mode runs the guide's ``tar -acf`` into a private dir on the node, renames the checked
    archive into place and copies the manifest beside it (the temp archive is removed again
    if anything fails).
    """

    probes: Probes
    listing: RemoteCommand
    size: RemoteCommand
    stream: LocalStream | None
    mkdir: RemoteCommand | None = None
    archive: RemoteCommand | None = None
    sync: RemoteCommand | None = None
    install: RemoteCommand | None = None
    manifest_copy: Upload | None = None
    cleanup: tuple[RemoteCommand, ...] = ()

    def ops(self) -> tuple[Op, ...]:
        """Every action, in the order a backup runs them."""
        return tuple(x for x in (self.probes.is_active, self.probes.lock, self.listing, self.size, self.stream,
                                 self.mkdir, self.archive, self.sync, self.install, self.manifest_copy)
                     if x is not None)


def backup(n: NodeSpec, *, mode: str, metadata_bytes: int | None, local_archive: str,
           remote_paths: tuple[str, str, str] | None) -> BackupActions:
    """The backup step's actions on ``n``.

    Args:
        n: the node.
        mode: ``controller`` or ``on-node`` (the inventory's ``backup.mode``).
        metadata_bytes: the metadata dir's size as discovered (sets the archive's timeout).
        local_archive: the archive on the controller (controller mode).
        remote_paths: ``(dir, archive, manifest)`` on the node (on-node mode).
    """
    ctx, meta = n.ctx, n.metadata_dir
    timeout = backup_timeout(metadata_bytes)
    base = dict(probes=Probes.of(n), listing=C.list_tree(meta, sudo=ctx.sudo), size=C.du_bytes(meta, sudo=ctx.sudo))
    if mode == "controller":
        return BackupActions(**base, stream=LocalStream(C.tar_stream(meta, timeout=timeout, sudo=ctx.sudo),
                                                        local_archive))
    assert remote_paths is not None
    rdir, rarchive, rmanifest = remote_paths
    tmp = on_node_temp(rarchive)
    return BackupActions(**base, stream=None, mkdir=C.mkdir_private(rdir, sudo=ctx.sudo),
                         archive=C.tar_archive(meta, tmp, timeout=timeout, sudo=ctx.sudo), sync=C.sync(sudo=ctx.sudo),
                         install=C.rename(tmp, rarchive, sudo=ctx.sudo),
                         manifest_copy=Upload(rmanifest, "a copy of the manifest beside the archive"),
                         cleanup=(C.remove_file(tmp, sudo=ctx.sudo), C.remove_file(rarchive, sudo=ctx.sudo)))


def size_timeout(nbytes: int) -> float:
    """A command timeout for moving or reading ``nbytes`` (the backup engine's default rule)."""
    return BACKUP_TIMEOUT_FLOOR + nbytes / BACKUP_MIN_RATE


@dataclass(frozen=True)
class RestorePaths:
    """Where a restore works on the node, named by the rollback plan's ``tag`` (so the plan
    shows the very paths): the extracted copy, the current dir moved aside, the uploaded archive."""

    meta: str
    parent: str
    staging_name: str
    staging: str
    aside: str
    remote_archive: str


def restore_paths(metadata_dir: str, tag: str, archive_on_node: str | None) -> RestorePaths:
    """The paths of a restore of ``metadata_dir`` tagged ``tag``; ``archive_on_node``: an
    on-node backup's archive (none is uploaded then)."""
    meta = metadata_dir.rstrip("/")
    parent, name = posixpath.split(meta)
    staging_name = f".{name}.restore-{tag}"
    return RestorePaths(meta=meta, parent=parent or "/", staging_name=staging_name,
                        staging=posixpath.join(parent or "/", staging_name), aside=f"{meta}.pre-restore-{tag}",
                        remote_archive=archive_on_node or posixpath.join(parent or "/", f".{name}.restore-{tag}.tar.zst"))


@dataclass(frozen=True)
class RestoreActions:
    """A restore from a verified backup (node stopped): the archive on the node, extracted
    beside the metadata dir and checked, the current dir moved aside (never deleted), the
    extracted one renamed into place; the uploaded archive removed afterwards."""

    probes: Probes
    upload: Upload | None
    hash_: RemoteCommand
    extract: RemoteCommand
    exists: RemoteCommand
    move_aside: RemoteCommand
    install: RemoteCommand
    sync: RemoteCommand
    remove_upload: RemoteCommand | None
    put_back: RemoteCommand  # on failure: the moved-aside dir goes back

    def ops(self) -> tuple[Op, ...]:
        """Every action of a clean restore, in order."""
        return tuple(x for x in (self.probes.is_active, self.probes.lock, self.upload, self.hash_, self.extract,
                                 self.exists, self.move_aside, self.install, self.sync, self.remove_upload)
                     if x is not None)


def restore(n: NodeSpec, *, tag: str, member_root: str, compressed_bytes: int, uncompressed_bytes: int,
            archive_on_node: str | None) -> RestoreActions:
    """The restore step's actions on ``n`` (see :class:`RestoreActions`)."""
    ctx = n.ctx
    p = restore_paths(n.metadata_dir, tag, archive_on_node)
    return RestoreActions(
        probes=Probes.of(n), upload=None if archive_on_node else Upload(p.remote_archive, "the backup archive"),
        hash_=C.sha256sum_files([p.remote_archive], sudo=ctx.sudo, timeout=size_timeout(compressed_bytes)),
        extract=C.tar_extract_as(p.remote_archive, p.parent, member_root, p.staging_name,
                                 timeout=size_timeout(uncompressed_bytes), sudo=ctx.sudo),
        exists=C.exists(p.meta, sudo=ctx.sudo), move_aside=C.rename(p.meta, p.aside, sudo=ctx.sudo),
        install=C.rename(p.staging, p.meta, sudo=ctx.sudo), sync=C.sync(sudo=ctx.sudo),
        remove_upload=None if archive_on_node else C.remove_file(p.remote_archive, sudo=ctx.sudo),
        put_back=C.rename(p.aside, p.meta, sudo=ctx.sudo))


def gate_command(argv: tuple[str, ...]) -> RemoteCommand:
    """A cluster-level API gate command (``api_gate.kind: commands``) as the inventory gives it."""
    return RemoteCommand(tuple(argv), timeout=60.0)


def repair(ctx: NodeContext, what: str) -> RemoteCommand:
    """``garage repair --all-nodes --yes <what>`` launched from the node of ``ctx``."""
    return C.repair(ctx, what)


def preflight(n: NodeSpec) -> tuple[Op, ...]:
    """The preflight's observations: metadata size and the free space beside it."""
    return (C.du_bytes(n.metadata_dir, sudo=n.ctx.sudo), C.df_avail(posixpath.dirname(n.metadata_dir.rstrip("/"))))


def _unique(ops):
    seen, out = set(), []
    for op in ops:
        k = op.render()
        if k not in seen:
            seen.add(k)
            out.append(op)
    return out


def bind(node: str, ops, on_failure=()) -> tuple[NodeAction, ...]:
    """``ops`` on ``node``, each listed once, then the clean-up acts ``on_failure``."""
    return tuple(NodeAction(node, op) for op in _unique(ops)) + tuple(NodeAction(node, op, True) for op in on_failure)
