"""The two observations that say a node's daemon is stopped, in one place.

- :func:`service_state`: what the service manager says (``is-active``); active when it exits 0.
- :func:`db_lock`: whether anything holds sled's ``flock`` on ``<metadata_dir>/db/db``, read
  from ``/proc/locks`` (the probe never takes the lock itself).

The steps (:mod:`garage_migrate.steps`) and the backup engine (:mod:`garage_migrate.backup`)
both read them through these functions and raise their own errors from the answers.
"""

from __future__ import annotations

import os
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
        command: the rendered probe (both of its commands).
        result: the failing command's result (exit status, stderr) for the caller's error.
        holders: the PIDs that hold a lock on the file (when ``held``).
    """

    state: Literal["free", "held", "unknown"]
    command: str
    result: object
    holders: tuple[int, ...] = ()


def lock_holders(proc_locks: str, file_id: str) -> tuple[int, ...]:
    """The PIDs holding a lock on the file ``file_id`` (``"<st_dev>:<st_ino>"``, as
    :func:`garage_migrate.commands.db_file_id` prints it) in a ``/proc/locks`` text.

    ``/proc/locks`` names a file ``MAJOR:MINOR:INODE`` with major and minor in hex
    (``fs/locks.c``: ``%02x:%02x:%lu``); ``-> `` lines are waiters, not holders. A line this
    cannot read is skipped: a lock this probe cannot name is not one it may report.

    Raises:
        ValueError: ``file_id`` is not ``<dev>:<ino>``.
    """
    dev_s, ino_s = file_id.strip().split(":")
    dev, ino = int(dev_s), int(ino_s)
    want = (os.major(dev), os.minor(dev), ino)
    out: list[int] = []
    for line in proc_locks.splitlines():
        f = line.split()
        if len(f) < 6 or f[1] == "->":
            continue
        try:
            maj, mnr, i = f[5].split(":")
            if (int(maj, 16), int(mnr, 16), int(i)) == want:
                out.append(int(f[4]))
        except ValueError:
            continue
    return tuple(out)


async def service_state(shell, ctx: NodeContext) -> ServiceState:
    """Ask the service manager whether the daemon runs (read-only)."""
    cmd = C.service_status(ctx)
    res = await shell.run(cmd, check=False)
    first = (res.stdout.strip().splitlines() or ["unknown"])[0].strip()
    return ServiceState(active=res.returncode == 0, state=first, command=cmd.render())


async def db_lock(shell, ctx: NodeContext, metadata_dir: str) -> DbLock:
    """Whether anything holds sled's lock on ``<metadata_dir>/db/db``, read from ``/proc/locks``
    without taking it (and without creating the file): a daemon starting while this looks can
    never find its DB locked by the probe."""
    id_cmd, locks_cmd = C.db_file_id(metadata_dir, sudo=ctx.sudo), C.proc_locks()
    rendered = f"{id_cmd.render()}; {locks_cmd.render()}"
    fid = await shell.run(id_cmd, check=False)
    if fid.returncode != 0:
        # no db/db at all is not "free": the metadata dir is not a sled DB a daemon has run on
        # (a wrong metadata_dir), and nothing should be decided from it
        return DbLock(state="unknown", command=rendered, result=fid)
    locks = await shell.run(locks_cmd, check=False)
    if locks.returncode != 0:
        return DbLock(state="unknown", command=rendered, result=locks)
    try:
        holders = lock_holders(locks.stdout, fid.stdout)
    except ValueError:
        return DbLock(state="unknown", command=rendered, result=fid)
    return DbLock(state="held" if holders else "free", command=rendered, result=locks, holders=holders)
