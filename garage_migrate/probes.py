"""The two observations that say a node's daemon is stopped, in one place.

- :func:`service_state`: what the service manager says (``is-active``); active when it exits 0.
- :func:`db_lock`: whether anything holds sled's ``flock`` on ``<metadata_dir>/db/db``.

The steps (:mod:`garage_migrate.steps`) and the backup engine (:mod:`garage_migrate.backup`)
both read them through these functions and raise their own errors from the answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import commands as C
from .commands import NodeContext


@dataclass(frozen=True)
class ServiceState:
    """The service manager's answer.

    Attributes:
        active: ``is-active`` exited 0.
        state: its first output line (``active``, ``inactive``, ``failed``...; ``unknown`` if none).
        command: the rendered command.
    """

    active: bool
    state: str
    command: str


@dataclass(frozen=True)
class DbLock:
    """The DB lock probe's answer.

    Attributes:
        state: ``free``, ``held``, or ``unknown`` (the probe itself failed: see ``result``).
        command: the rendered probe.
        result: the command's result (exit status, stderr) for the caller's error.
    """

    state: Literal["free", "held", "unknown"]
    command: str
    result: object


async def service_state(shell, ctx: NodeContext) -> ServiceState:
    """Ask the service manager whether the daemon runs (read-only)."""
    cmd = C.service_status(ctx)
    res = await shell.run(cmd, check=False)
    first = (res.stdout.strip().splitlines() or ["unknown"])[0].strip()
    return ServiceState(active=res.returncode == 0, state=first, command=cmd.render())


async def db_lock(shell, ctx: NodeContext, metadata_dir: str) -> DbLock:
    """Probe sled's lock on ``<metadata_dir>/db/db`` (read-only)."""
    cmd = C.lock_probe(metadata_dir, sudo=ctx.sudo)
    res = await shell.run(cmd, check=False)
    state = "free" if res.returncode == 0 else "held" if res.returncode == C.LOCK_HELD_EXIT else "unknown"
    return DbLock(state=state, command=cmd.render(), result=res)
