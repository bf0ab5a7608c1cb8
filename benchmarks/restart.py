"""The figures of one restart of every node, from the lab's ground truth only (issue 13, §2.1).

Whoever restarted the nodes (the migration's flip, a local script, an SSH driver) is measured
the same way, from what the nodes did: the service events (``events.jsonl``: each stop signal
and start, :func:`garage_lab.truth.service_events`) and the time each 0.8 daemon logged that it
listens (:func:`garage_lab.truth.ready_times`). Nothing here reads the orchestrator's log, so
the figures stay right whatever the flip's implementation is.

- window: the first stop signal of the restart to the last node answering;
- stop skew / start skew: the spread of the nodes' first stop signals / of their starts;
- per-node downtime: a node's first stop signal to its answering again.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from garage_lab import truth


@dataclass(frozen=True)
class NodeRestart:
    """One node's restart: its first stop signal, its start, its answering (epoch seconds)."""

    node: str
    stop: float
    start: float
    ready: float


def node_restart(node: str, events: list[dict], ready: list[float], after: float,
                 binary: str | None = None) -> NodeRestart | None:
    """Node ``node``'s first restart after ``after``: the first start (of ``binary``, when
    given) after ``after``, the first stop signal between the start before it (or ``after``)
    and it, and the first answering after it. ``None``: no such complete restart."""
    mine = [e for e in events if e["node"] == node]
    prev_start = after
    for e in mine:
        if e["t"] <= after:
            continue
        if e["event"] == "start" and (binary is None or e.get("binary") == binary):
            stops = [s["t"] for s in mine if s["event"] in ("stop", "kill") and s.get("signal") != "SIGHUP"
                     and prev_start < s["t"] < e["t"]]
            # the new daemon's answer may be logged before the service records its start (the
            # service writes its event after the spawn: under load the daemon can be quicker);
            # nothing else answers between the stop signal and the start
            answered = [t for t in ready if t > stops[0]] if stops else []
            if not stops or not answered:
                return None
            return NodeRestart(node, stops[0], e["t"], answered[0])
        if e["event"] == "start":
            prev_start = e["t"]
    return None


def figures(restarts: list[NodeRestart]) -> dict:
    """Window, skews and per-node downtime (seconds) of a set of node restarts."""
    stops, starts = [r.stop for r in restarts], [r.start for r in restarts]
    down = sorted(r.ready - r.stop for r in restarts)
    return {"nodes": len(restarts), "first_stop": min(stops), "window_s": max(r.ready for r in restarts) - min(stops),
            "stop_skew_s": max(stops) - min(stops), "start_skew_s": max(starts) - min(starts),
            "down_min_s": down[0], "down_median_s": statistics.median(down), "down_max_s": down[-1]}


def measure(lab, after: float, binary: str | None = None) -> dict:
    """The figures of every node's first restart after ``after`` (``binary``: the start that
    counts, e.g. ``garage-v0.8.7`` for the flip among a migration's restarts).

    Raises:
        RuntimeError: a node has no complete restart (no stop signal, start or answer).
    """
    events = truth.service_events(lab)
    out = []
    for n in lab.nodes:
        r = node_restart(n["name"], events, truth.ready_times(lab, n["name"]), after, binary)
        if r is None:
            raise RuntimeError(f"{n['name']}: no complete restart after {after:.3f} in the lab's events")
        out.append(r)
    return figures(out)


def wait_answering(lab, after: float, timeout: float = 300.0) -> None:
    """Wait until every node has answered after a start later than ``after`` (ground truth:
    the benchmark's own drivers return before the daemons answer, like ``systemctl start``).

    Raises:
        TimeoutError: some node did not answer in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        events = truth.service_events(lab)
        missing = [n["name"] for n in lab.nodes
                   if node_restart(n["name"], events, truth.ready_times(lab, n["name"]), after) is None]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(missing)} node(s) did not answer: {', '.join(missing[:5])}\n"
                               + "\n".join(_why(lab, n, events, after) for n in missing[:5]))
        time.sleep(0.2)


def _why(lab, name: str, events: list[dict], after: float) -> str:
    """What the lab says of node ``name`` since ``after``: its service events, its daemon's
    ready times and the end of its log (the gate's scrapes left out)."""
    evs = [{k: v for k, v in e.items() if k != "node"} for e in events if e["node"] == name and e["t"] >= after - 5]
    log = lab.node_dir(name) / "log" / "garage.log"
    tail = [ln for ln in log.read_text(errors="replace").splitlines() if "/metrics" not in ln][-8:] if log.exists() else []
    return (f"  {name}: events {evs}; ready {[round(t - after, 2) for t in truth.ready_times(lab, name)][-3:]}"
            + "".join(f"\n    | {ln[:200]}" for ln in tail))
