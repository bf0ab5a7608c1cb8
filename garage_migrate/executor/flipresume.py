"""Resuming a simultaneous restart that an earlier run began and never finished.

A run killed inside the flip (the orchestrator's process died: SIGKILL, a lost controller)
leaves the nodes anywhere between "every node on 0.7" and "every node on 0.8": some stopped,
some still running 0.7 (their stop was held), some already started on 0.8. The ledger says
what the dead run *recorded*, which lags behind what it *did* (a step it began is still
``running``; a node may even have been restarted by hand or by its service manager since).

So the resumed run looks at the nodes themselves before the flip (:func:`observe`: the
service state, the running daemon's version, else the installed binary's; reads only), says
what it found in the ledger (a ``flip-resume`` event), and finishes the flip from there: a
node that runs anything but the target is stopped again even if the ledger records its stop
(:func:`needs_stop`), a node already on the target is neither stopped nor started again, and
no node is started on the target while another still runs the source (the flip's waves).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .. import steps
from ..steps import Runtime

__all__ = ["NodeState", "describe", "interrupted", "needs_stop", "observe"]


@dataclass(frozen=True)
class NodeState:
    """What a node is, seen from the node.

    Attributes:
        node: its name.
        running: the service is active.
        version: the running daemon's version (``None``: it does not answer), or, when
            stopped, the version of the binary its service would start.
    """

    node: str
    running: bool
    version: str | None

    def describe(self) -> str:
        """``node-a1 running 0.8.7`` / ``node-b1 stopped (binary 0.8.7)``."""
        if self.running:
            return f"{self.node} running {self.version or 'a daemon that does not answer'}"
        return f"{self.node} stopped (binary {self.version or '?'})"


async def observe(rt: Runtime, node: str) -> NodeState:
    """The node's state from the node (read-only commands)."""
    if await steps.service_active(rt, node):
        return NodeState(node, True, await steps.daemon_version(rt, node))
    return NodeState(node, False, await steps.binary_version(rt, node))


def interrupted(events: Iterable, phase: str = "flip") -> bool:
    """Whether an earlier attempt started ``phase`` and no attempt ended it since (the ledger's
    ``phase`` events)."""
    last = None
    for e in events:
        if e.kind == "phase" and e.message in (f"start {phase}", f"end {phase}"):
            last = e.message
    return last == f"start {phase}"


def needs_stop(state: NodeState, target: str) -> bool:
    """A node that runs anything but ``target`` (or a daemon that does not answer) must be
    stopped before any node starts on ``target``, whatever the ledger says of its stop."""
    return state.running and state.version != target


def describe(states: dict[str, NodeState], target: str) -> str:
    """The ``flip-resume`` event's message: what was found, and what the run does about it."""
    found = ", ".join(s.describe() for _, s in sorted(states.items()))
    again = sorted(n for n, s in states.items() if needs_stop(s, target))
    done = sorted(n for n, s in states.items() if s.running and s.version == target)
    plan = []
    if again:
        plan.append(f"stopping {', '.join(again)} first")
    if done:
        plan.append(f"leaving {', '.join(done)} on {target}")
    plan.append(f"no node starts on {target} before every node is stopped or on {target}")
    return f"the simultaneous restart was interrupted by an earlier run; on the nodes: {found}; " + "; ".join(plan)
