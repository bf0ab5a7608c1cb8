"""The builders of the node steps' actions: stop, start, stage, switch, offline repair, the API
gate, repair, preflight. Each returns the very commands the step runs (see the package)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from .. import commands as C
from ..commands import NodeContext, RemoteCommand
from .values import OFFLINE_REPAIR_TIMEOUT, SERVICE_STOP_TIMEOUT, Op, Upload, _unique


# ---------------------------------------------------------------------------- per node
@dataclass(frozen=True)
class NodeSpec:
    """What the builders need to know about one node (from the inventory and discovery)."""

    name: str
    ctx: NodeContext
    metadata_dir: str
    stop_signal: str
    staged_path: str
    config_diff: tuple[str, ...] = ()  # garage.toml's changes for 0.8 (empty: nothing to translate)
    target_version: str = ""
    config_shas: tuple[str, str] | None = None  # sha256 of the live config and of its translation


def spec(inv, facts, name: str) -> NodeSpec:
    """The :class:`NodeSpec` of node ``name`` from the inventory and the discovered facts."""
    n = inv.node(name)
    f = facts.node(name)
    return NodeSpec(name=name, ctx=n.ctx, metadata_dir=f.config.metadata_dir,
                    stop_signal=n.stop_signal, staged_path=staged_path(n.ctx.binary_path, inv.target.version),
                    config_diff=tuple(getattr(f, "config_diff", ())),
                    target_version=inv.target.version.removeprefix("v"),
                    config_shas=getattr(f, "config_shas", None))


def staged_config_path(config_path: str, target_version: str) -> str:
    """Where the stage step writes the node's ``garage.toml`` translated for 0.8."""
    return f"{config_path}.v{target_version.removeprefix('v')}"


def kept_config_path(config_path: str) -> str:
    """Where the switch keeps the config it replaces (a rollback puts it back)."""
    return config_path + ".garage-migrate.before-0.8"


@dataclass(frozen=True)
class ConfigActions:
    """The config's part of the stage and switch steps (only for a node whose config changes).

    Stage: ``read`` the live config, ``read_other`` the staged one, ``upload`` the translation.
    Switch to 0.8: ``read``, ``read_other`` (the staged one), ``upload`` the live config to the
    kept path, ``install`` the staged one (``mv -T``, atomic). Switch back: ``read``,
    ``read_other`` (the kept one), ``install`` it.
    """

    read: RemoteCommand
    read_other: RemoteCommand
    upload: Upload | None
    install: RemoteCommand | None

    def ops(self) -> tuple[Op, ...]:
        """Every action, observations first."""
        return tuple(x for x in (self.read, self.read_other, self.upload, self.install) if x is not None)


def config_stage(n: NodeSpec) -> ConfigActions | None:
    """The stage step's config actions on ``n`` (``None``: its config is 0.8-ready)."""
    if not n.config_diff:
        return None
    ctx = n.ctx
    staged = staged_config_path(ctx.config_path, n.target_version)
    return ConfigActions(C.cat(ctx.config_path, sudo=ctx.sudo), C.cat(staged, sudo=ctx.sudo),
                         Upload(staged, "garage.toml translated for 0.8"), None)


def config_switch(n: NodeSpec, to: str, kept: str | None = None) -> ConfigActions | None:
    """The switch step's config actions: to ``target`` (the staged 0.8 config in place, the old
    one kept) or back to ``source`` (the kept one in place; ``kept``: its path, from the ledger)."""
    ctx = n.ctx
    if to == "target":
        if not n.config_diff:
            return None
        staged = staged_config_path(ctx.config_path, n.target_version)
        keep = kept_config_path(ctx.config_path)
        return ConfigActions(C.cat(ctx.config_path, sudo=ctx.sudo), C.cat(staged, sudo=ctx.sudo),
                             Upload(keep, "the config from before 0.8, kept for a rollback"),
                             C.rename(staged, ctx.config_path, sudo=ctx.sudo))
    if not kept:
        return None
    return ConfigActions(C.cat(ctx.config_path, sudo=ctx.sudo), C.cat(kept, sudo=ctx.sudo), None,
                         C.rename(kept, ctx.config_path, sudo=ctx.sudo))


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
    lock_file: RemoteCommand
    locks: RemoteCommand

    @classmethod
    def of(cls, n: NodeSpec) -> "Probes":
        """The probes of node ``n``."""
        return cls(C.service_status(n.ctx), C.db_file_id(n.metadata_dir, sudo=n.ctx.sudo), C.proc_locks())

    @property
    def all(self) -> tuple[RemoteCommand, ...]:
        """Every probe, in the order they run."""
        return (self.is_active, self.lock_file, self.locks)


@dataclass(frozen=True)
class StopActions:
    """The stop step: the configured signal first (0.7.3 is graceful on SIGINT only), then the
    service's own stop to settle the unit state."""

    probes: Probes
    signal: RemoteCommand
    stop: RemoteCommand

    def ops(self) -> tuple[Op, ...]:
        """Every action, observations first."""
        return (*self.probes.all, self.signal, self.stop)


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
    config: ConfigActions | None = None

    def ops(self) -> tuple[Op, ...]:
        """Every action."""
        return (self.hash_, self.upload, self.version, *(self.config.ops() if self.config else ()))


def stage(n: NodeSpec) -> StageActions:
    """The stage step's actions on ``n`` (the binary, and the 0.8 config when it changes)."""
    return StageActions(C.sha256sum(n.staged_path), Upload(n.staged_path, "the target binary"),
                        C.garage_version(n.staged_path, ctx=n.ctx), config_stage(n))


@dataclass(frozen=True)
class SwitchActions:
    """The binary switch: both ends read, then the atomic symlink flip."""

    current: RemoteCommand
    wanted: RemoteCommand
    flip: tuple[RemoteCommand, RemoteCommand]
    config: ConfigActions | None = None

    def ops(self) -> tuple[Op, ...]:
        """Every action."""
        return (self.current, self.wanted, *self.flip, *(self.config.ops() if self.config else ()))


def switch(n: NodeSpec, to_path: str, *, config_to: str = "target", kept_config: str | None = None) -> SwitchActions:
    """Point ``binary_path`` of ``n`` at ``to_path`` (the staged target, or the original), and
    its config with it (:func:`config_switch`: ``config_to`` ``target`` or ``source``)."""
    ctx = n.ctx
    return SwitchActions(C.readlink_f(ctx.binary_path), C.readlink_f(to_path),
                         C.switch_symlink(to_path, ctx.binary_path, sudo=ctx.sudo),
                         config_switch(n, config_to, kept_config))


@dataclass(frozen=True)
class OfflineRepairActions:
    """``offline-repair object_counters`` with the daemon proven stopped."""

    probes: Probes
    repair: RemoteCommand

    def ops(self) -> tuple[Op, ...]:
        """Every action."""
        return (*self.probes.all, self.repair)


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


def gate_command(argv: tuple[str, ...]) -> RemoteCommand:
    """A cluster-level API gate command (``api_gate.kind: commands``) as the inventory gives it."""
    return RemoteCommand(tuple(argv), timeout=60.0)


def repair(ctx: NodeContext, what: str) -> RemoteCommand:
    """``garage repair --all-nodes --yes <what>`` launched from the node of ``ctx``."""
    return C.repair(ctx, what)


def preflight(n: NodeSpec) -> tuple[Op, ...]:
    """The preflight's observations: metadata size and the free space beside it."""
    return (C.du_bytes(n.metadata_dir, sudo=n.ctx.sudo), C.df_avail(posixpath.dirname(n.metadata_dir.rstrip("/"))))
