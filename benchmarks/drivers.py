"""Two ways to restart every node of a lab that are not the migration (issue 13, §2.1).

- :func:`floor`: the lab's own service commands, launched together by a local shell script (no
  SSH, no orchestrator): every stop at once, every binary switch, every start at once. What the
  nodes themselves take, on this machine: the restart's floor.
- :func:`ansible_like`: the same stop / switch / start over SSH, task after task over all nodes
  with at most ``forks`` nodes at a time, as an Ansible play with ``forks: 5`` and the linear
  strategy runs it, and waiting for each started node to answer (``until:`` a command succeeds).
  Its commands are the plan's own (:func:`plan_commands`: the actions of the plan's stop,
  switch and start steps), never retyped.

Both return before or once the daemons answer; the figures come from the lab's events
(:mod:`benchmarks.restart`), not from these drivers.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
from pathlib import Path

from garage_migrate.actions import Upload
from garage_migrate.commands import RemoteCommand
from garage_migrate.plan import MigrationPlan


def floor(lab, signal: str = "INT", timeout: float = 300.0) -> None:
    """Restart every node at once with a local script: stop all (``signal``), switch every
    binary symlink (to where it points: the same binary), start all.

    Raises:
        RuntimeError: the script failed.
    """
    svc = shlex.quote(str(lab.dir / "bin" / "garage-service"))
    stops, switches, starts = [], [], []
    for n in lab.nodes:
        node = shlex.quote(n["name"])
        link = lab.node_dir(n["name"]) / "usr/local/bin/garage"
        stops.append(f"GARAGE_LAB_NODE={node} {svc} stop --signal {signal} &")
        switches.append(f"ln -sfT {shlex.quote(os.readlink(link))} {shlex.quote(str(link))}")
        starts.append(f"GARAGE_LAB_NODE={node} {svc} start &")
    script = "\n".join(["set -e", *stops, "wait", *switches, *starts, "wait", ""])
    path = Path(lab.dir) / "bench-floor.sh"
    path.write_text(script)
    res = subprocess.run(["sh", str(path)], check=False, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"the floor script failed ({res.returncode}): {res.stderr[-2000:]}")


def plan_commands(plan: MigrationPlan, node: str) -> dict[str, list[RemoteCommand]]:
    """The remote commands of node ``node``'s restart onto the target, from the plan's own
    steps: ``stop`` (its acts: the signal, the service stop), ``switch`` (the binary flip),
    ``start`` (the service start), and ``answer`` (the start step's ``garage stats`` check).

    The flip phase's steps are preferred; any other stop/switch/start step of the node (with the
    target version for a start) does as well, so a flip rewritten into a node-side helper still
    leaves this driver the plan's commands.

    Raises:
        LookupError: the plan has no such step for ``node``.
    """
    steps = [s for s in plan.steps() if s.node == node]
    flip = [s for ph in plan.phases if ph.name == "flip" for w in ph.waves for s in w.steps if s.node == node]

    def first(kind: str, **args) -> object:
        for s in flip + steps:
            if s.kind == kind and all(s.arg(k) == v for k, v in args.items()):
                return s
        raise LookupError(f"the plan has no {kind} step for {node}")

    def ops(step, kind: str) -> list[RemoteCommand]:
        return [a.op for a in step.actions if a.kind == kind and not a.on_failure and not isinstance(a.op, Upload)]

    start = first("start", version=plan.target_version)
    # the flip helper's start waits for the answer on the node and lists no `garage stats`;
    # the other 0.8 starts of the plan (the offline-repair rounds') still do
    answer = [c for s in flip + steps if s.kind == "start" and s.arg("version") == plan.target_version
              for c in ops(s, "observe") if "stats" in c.words()]
    return {"stop": ops(first("stop"), "act"), "switch": ops(first("switch"), "act"), "start": ops(start, "act"),
            "answer": answer[:1]}


async def _answered(shell, cmd: RemoteCommand, timeout: float, every: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (await shell.run(cmd, check=False)).ok:
        if loop.time() > deadline:
            raise TimeoutError(f"no answer to {cmd} within {timeout:.0f} s")
        await asyncio.sleep(every)


async def _go() -> bool:
    return True


async def ansible_like(pool, cmds: dict[str, dict[str, list[RemoteCommand]]], forks: int = 5,
                       answer_timeout: float = 300.0, retry_every: float = 0.5) -> dict[str, int]:
    """Run ``stop``, ``switch``, ``start`` then ``answer`` as four tasks, each over every node
    with at most ``forks`` at a time (``pool``: a :class:`garage_migrate.ssh.SshPool`); return
    how many commands each task ran (the answer task's retries included)."""
    sem = asyncio.Semaphore(forks)
    counts = {"stop": 0, "switch": 0, "start": 0, "answer": 0}

    async def one(task: str, node: str) -> None:
        async with sem:
            shell = pool.shell(node)
            for cmd in cmds[node][task]:
                if task == "answer":
                    counter = _Counted(shell, counts)
                    await _answered(counter, cmd, answer_timeout, retry_every)
                elif "armed" in cmd.argv[1:2]:
                    # the plan's armed helper call: released at once, as a play's task runs
                    # on each host as soon as it gets there (no barrier)
                    counts[task] += 1
                    await shell.run_armed(cmd, _go)
                else:
                    counts[task] += 1
                    await shell.run(cmd)

    for task in ("stop", "switch", "start", "answer"):
        await asyncio.gather(*(one(task, n) for n in cmds))
    return counts


class _Counted:
    """A shell that counts the answer task's commands (retries included)."""

    def __init__(self, shell, counts: dict[str, int]):
        self.shell, self.counts = shell, counts

    async def run(self, cmd, check: bool = True):
        self.counts["answer"] += 1
        return await self.shell.run(cmd, check=check)
