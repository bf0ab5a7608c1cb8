"""Builders of the flip helper's calls (``garage_migrate/node/flip.sh``): one round trip per node
for each of the simultaneous restart's stop, switch and start."""

from __future__ import annotations

import math
import posixpath
import re
from dataclasses import dataclass

from ..errors import CommandRefused
from .core import DEFAULT_TIMEOUT, FLIP_HELPER_NAME, NodeContext, RemoteCommand, _abs, _cmd
from .node import garage, service_signal, service_start, service_status, service_stop


# ---------------------------------------------------------------------------- the flip helper


def flip_helper_path(binary_path: str) -> str:
    """Where the flip helper is staged: beside the node's Garage binary."""
    return posixpath.join(posixpath.dirname(_abs(binary_path, "binary_path")), FLIP_HELPER_NAME)


def _groups(*cmds: RemoteCommand) -> tuple[str, ...]:
    # each command's own argv (already allow-listed by its builder), preceded by its word
    # count: the helper never reads a word as a separator, and never evaluates one
    out: list[str] = []
    for c in cmds:
        out += [str(len(c.argv)), *c.argv]
    return tuple(out)


def _whole(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def _armed(armed: bool) -> tuple[str, ...]:
    return ("armed",) if armed else ()


def flip_stop(ctx: NodeContext, metadata_dir: str, sig: str, *, wait: float, timeout: float,
              armed: bool = False) -> RemoteCommand:
    """``garage-migrate-flip [armed] stop <wait> <meta>/db/db <is-active> <signal> <stop>``:
    signal the service, wait on the node until it is inactive and nothing holds the DB lock
    (read from ``/proc/locks``), then settle the unit with the service's stop; one round trip.
    ``armed``: the signal waits for a ``go`` line on stdin (:meth:`NodeShell.run_armed`).

    Args:
        ctx: the node (its binary's directory holds the helper; its service commands).
        metadata_dir: the node's metadata dir (``db/db`` is what sled locks).
        sig: the stop signal (0.7.3 is graceful on SIGINT only).
        wait: seconds the daemon has to exit after the signal (never escalated to a kill).
        timeout: the node-side limit of the whole call.
    """
    db = posixpath.join(_abs(metadata_dir, "metadata_dir"), "db", "db")
    argv = (flip_helper_path(ctx.binary_path), *_armed(armed), "stop", _whole(wait), db,
            *_groups(service_status(ctx), service_signal(ctx, sig), service_stop(ctx)))
    return _cmd(argv, timeout=timeout, sudo=ctx.sudo, ctx=ctx)


@dataclass(frozen=True)
class ConfigFlip:
    """``garage.toml``'s part of the flip's switch: the staged 0.8 config renamed over the live
    one, the live one kept first; both files checked by sha256 on the node (the plan's digests,
    from discovery: never the text, which holds ``rpc_secret``).

    Attributes:
        staged: the staged 0.8 config.
        live: the node's ``config_path``.
        keep: where the live config is kept for a rollback.
        source_sha256: the live config's digest at discovery.
        target_sha256: its 0.8 translation's digest (what ``staged`` must hold).
    """

    staged: str
    live: str
    keep: str
    source_sha256: str
    target_sha256: str

    def argv(self) -> tuple[str, ...]:
        """The helper's five config arguments.

        Raises:
            CommandRefused: a relative path, or a digest that is not 64 lowercase hex digits.
        """
        for what, sha in (("source_sha256", self.source_sha256), ("target_sha256", self.target_sha256)):
            if not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise CommandRefused(f"{what} {sha!r} is not a sha256 digest")
        return (_abs(self.staged, "staged config"), _abs(self.live, "config_path"), _abs(self.keep, "kept config"),
                self.source_sha256, self.target_sha256)


def flip_switch(ctx: NodeContext, target: str, *, config: ConfigFlip | None = None,
                timeout: float = DEFAULT_TIMEOUT) -> RemoteCommand:
    """``garage-migrate-flip switch <target> <binary_path> [<config...>]``: the atomic symlink
    flip (:func:`switch_symlink`'s two commands, in one round trip; a no-op when it points
    there) and, with ``config``, ``garage.toml`` moved with it in the same call (the helper
    refuses, changing nothing, when either file is not the plan's)."""
    argv = (flip_helper_path(ctx.binary_path), "switch", _abs(target, "switch target"), ctx.binary_path,
            *(config.argv() if config is not None else ()))
    return _cmd(argv, timeout=timeout, sudo=ctx.sudo, ctx=ctx)


def flip_start(ctx: NodeContext, version: str, *, wait: float, timeout: float, armed: bool = False) -> RemoteCommand:
    """``garage-migrate-flip [armed] start <wait> <version> <is-active> <start> <garage stats>``:
    start the service and wait on the node until the daemon answers ``stats`` with ``version``
    (or its unit fails); one round trip. ``armed``: the start waits for a ``go`` line on stdin.

    Raises:
        CommandRefused: ``version`` is not ``X.Y.Z``.
    """
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise CommandRefused(f"version {version!r} is not X.Y.Z")
    argv = (flip_helper_path(ctx.binary_path), *_armed(armed), "start", _whole(wait), version,
            *_groups(service_status(ctx), service_start(ctx), garage(ctx, "stats")))
    return _cmd(argv, timeout=timeout, sudo=ctx.sudo, ctx=ctx)
