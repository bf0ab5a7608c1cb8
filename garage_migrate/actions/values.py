"""The values a plan's steps carry: uploads, streams, actions bound to a node, the step timeouts."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

from ..commands import RemoteCommand


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
