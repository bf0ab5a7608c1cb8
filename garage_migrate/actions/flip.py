"""The flip helper's actions: staging it (the ``stage`` phase of minimal-downtime) and the
simultaneous restart's three calls, one round trip per node each (issue 13 §1); the stop and
the start are armed (opened before the window, released together: :mod:`garage_migrate.executor.flip`).

The helper (``garage_migrate/node/flip.sh``, POSIX sh, shipped in the package) is uploaded
beside the node's Garage binary, its sha256 checked on the node after the upload and again
just before the window; the flip's steps then list exactly one helper call each, with literal
arguments (:func:`garage_migrate.commands.flip_stop` and friends), so the journal, the dry run
and the approval show what runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .. import commands as C
from ..errors import PlanError
from ..commands import RemoteCommand
from .node import NodeSpec, kept_config_path, staged_config_path, staged_path
from .values import START_TIMEOUT, STOP_TIMEOUT, Op, Upload

#: The helper's source in the package.
HELPER_SOURCE = Path(__file__).resolve().parent.parent / "node" / "flip.sh"
#: Seconds every node's armed stop has to arm (its connection, login and observations) before
#: the window opens; past it, no node is released and the cluster stays on the source.
ARM_TIMEOUT = 60.0
#: Node-side limit of the helper's stop call: its arming, the wait after the signal, the
#: service's own stop and the lock wait, plus a margin.
FLIP_STOP_TIMEOUT = ARM_TIMEOUT + STOP_TIMEOUT + 40.0
#: Node-side limit of the helper's start call: armed as soon as its own node is down, it is
#: released at the barrier, after every other node's stop (bounded by their stop calls).
FLIP_START_TIMEOUT = FLIP_STOP_TIMEOUT + START_TIMEOUT + 20.0


@lru_cache(maxsize=1)
def helper_sha256() -> str:
    """The sha256 of the packaged helper (what every staged copy must hash to)."""
    return hashlib.sha256(HELPER_SOURCE.read_bytes()).hexdigest()


def helper_path(n: NodeSpec) -> str:
    """Where the helper is staged on ``n``."""
    return C.flip_helper_path(n.ctx.binary_path)


@dataclass(frozen=True)
class HelperStageActions:
    """Staging the helper: its hash read (skipped when right), the upload, the hash again."""

    hash_: RemoteCommand
    upload: Upload

    def ops(self) -> tuple[Op, ...]:
        """Every action (the hash is listed once; it is read before and after the upload)."""
        return (self.hash_, self.upload)


def stage_helper(n: NodeSpec) -> HelperStageActions:
    """The stage step's helper actions on ``n``."""
    path = helper_path(n)
    return HelperStageActions(C.sha256sum(path, timeout=30.0), Upload(path, "the flip helper (garage_migrate/node/flip.sh)"))


@dataclass(frozen=True)
class FlipStop:
    """The flip's stop on one node: one helper call (signal, wait for exit and a free lock)."""

    call: RemoteCommand

    def ops(self) -> tuple[Op, ...]:
        """Every action."""
        return (self.call,)


@dataclass(frozen=True)
class FlipSwitch:
    """The flip's switch on one node: one helper call, the atomic symlink flip and, where
    ``garage.toml`` changes for 0.8, the config moved with it (``config``: what the call's
    config arguments say, for the pre-window check and the ledger)."""

    call: RemoteCommand
    config: C.ConfigFlip | None = None

    def ops(self) -> tuple[Op, ...]:
        """Every action (the config's move is part of the one call)."""
        return (self.call,)


@dataclass(frozen=True)
class FlipStart:
    """The flip's start on one node: one helper call (start, wait until it answers as 0.8)."""

    call: RemoteCommand

    def ops(self) -> tuple[Op, ...]:
        """Every action."""
        return (self.call,)


def flip_stop(n: NodeSpec) -> FlipStop:
    """The flip's stop on ``n``: armed, released with every other node's at once."""
    return FlipStop(C.flip_stop(n.ctx, n.metadata_dir, n.stop_signal, wait=STOP_TIMEOUT, timeout=FLIP_STOP_TIMEOUT,
                                armed=True))


def config_flip(n: NodeSpec) -> C.ConfigFlip | None:
    """The config's part of ``n``'s flip switch, or ``None`` when its ``garage.toml`` is
    0.8-ready (or discovery took no digests of it)."""
    if not n.config_diff:
        return None
    if n.config_shas is None:  # never switch the binary and quietly leave the config behind
        raise PlanError(f"{n.name}: garage.toml changes for 0.8 but discovery took no sha256 of it")
    path = n.ctx.config_path
    return C.ConfigFlip(staged_config_path(path, n.target_version), path, kept_config_path(path), *n.config_shas)


def flip_switch(n: NodeSpec) -> FlipSwitch:
    """The flip's switch on ``n`` (to the staged target binary, with its config)."""
    cfg = config_flip(n)
    return FlipSwitch(C.flip_switch(n.ctx, staged_path(n.ctx.binary_path, n.target_version), config=cfg), cfg)


def flip_start(n: NodeSpec, version: str) -> FlipStart:
    """The flip's start on ``n`` on ``version``: armed once ``n`` is down, released at the barrier."""
    return FlipStart(C.flip_start(n.ctx, version, wait=START_TIMEOUT, timeout=FLIP_START_TIMEOUT, armed=True))
