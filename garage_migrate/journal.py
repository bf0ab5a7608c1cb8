"""The command journal: every remote command a migration runs, one JSON line each.

``<ledger dir>/commands.jsonl`` (owner-only). For an ``act`` a ``started`` line is written and
fsynced *before* the command runs, so a crash mid-command leaves a trace; every command, act
or observation, then gets a ``finished`` line: time, node, phase, step, attempt, kind, argv,
the rendered command, exit status, duration, and the stderr tail when it failed. Uploads are
journalled as acts (``argv`` ``["put", <remote path>]``).

Nothing secret goes in: words that look like ``secret=...``, ``token=...`` or
``password=...`` (and the word after a flag named so) are redacted at the source, and stdin
is never written.

The executor says which step a command belongs to through :func:`in_step` (a context
variable, so concurrent node steps never mix), and wraps the runtime's shells with
:func:`with_journal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from .actions import Upload
from .commands import RemoteCommand
from .errors import GarageMigrateError, NotInPlanError, tail_text

_STEP: contextvars.ContextVar[tuple[str | None, str | None, int, frozenset | None, dict | None]] = \
    contextvars.ContextVar("garage_migrate_journal_step", default=(None, None, 1, None, None))
_SECRET_WORD = re.compile(r"(?i)(secret|token|password|passwd)")
_SECRET_ASSIGN = re.compile(r"(?i)((?:[\w.-]*)(?:secret|token|password|passwd)[\w.-]*\s*[=:]\s*)(\S+)")
REDACTED = "<redacted>"


@contextlib.contextmanager
def in_step(phase: str | None, step: str | None, attempt: int = 1,
            allowed: frozenset[tuple[str, str]] | None = None):
    """Journal the commands run inside this block as ``phase``/``step``, attempt ``attempt``.

    Args:
        allowed: the ``(node, command line)`` acts the plan lists for this step
            (:meth:`garage_migrate.plan.Step.allowed`): any other act raises
            :class:`~garage_migrate.errors.NotInPlanError` before it runs. ``None``: not a
            plan step (the cluster lock's records), nothing is checked.

    An act that runs again inside the same block is a retry of it (a task retry repeats the
    step): it is journalled with the next attempt number.
    """
    token = _STEP.set((phase, step, attempt, allowed, {}))
    try:
        yield
    finally:
        _STEP.reset(token)


def redact(words: tuple[str, ...] | list[str]) -> list[str]:
    """``words`` with secret values replaced by ``<redacted>``."""
    out: list[str] = []
    hide_next = False
    for w in words:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if w.startswith("-") and _SECRET_WORD.search(w) and "=" not in w:
            hide_next = True
            out.append(w)
            continue
        out.append(_SECRET_ASSIGN.sub(lambda m: m.group(1) + REDACTED, w))
    return out


class CommandJournal:
    """Appends journal lines to ``path`` (created owner-only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def beside(cls, ledger_path: str | Path) -> "CommandJournal":
        """The journal of the ledger at ``ledger_path``: ``commands.jsonl`` in its directory."""
        return cls(Path(ledger_path).with_name("commands.jsonl"))

    def write(self, entry: dict[str, Any], sync: bool = False) -> None:
        """Append one line; with ``sync``, fsync it before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, node: str | None = None) -> list[dict[str, Any]]:
        """Every line (of ``node`` only, when given), oldest first."""
        if not self.path.exists():
            return []
        lines = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
        return [e for e in lines if node is None or e.get("node") == node]


class JournalShell:
    """A node shell that journals every command it runs (see the module docstring)."""

    def __init__(self, inner, node: str, journal: CommandJournal):
        self.inner = inner
        self.node = node
        self.journal = journal

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def _base(self, kind: str, argv: list[str], rendered: str, count: bool = True) -> dict[str, Any]:
        phase, step, attempt, _allowed, seen = _STEP.get()
        if kind == "act" and seen is not None and count:
            # the same act again in this step: a retry, numbered from the step's attempt on
            n = seen[(self.node, rendered)] = seen.get((self.node, rendered), -1) + 1
            attempt += n
        return {"t": time.time(), "node": self.node, "phase": phase, "step": step, "attempt": attempt,
                "kind": kind, "argv": argv, "command": rendered}

    def _check(self, kind: str, full: str, base: dict[str, Any]) -> None:
        allowed = _STEP.get()[3]
        if kind != "act" or allowed is None or (self.node, full) in allowed:
            return
        self.journal.write(dict(base, event="refused", error="NotInPlanError"), sync=True)
        raise NotInPlanError(f"{base['phase']}/{base['step']} tried a command its plan step does not list: "
                             f"{base['command']}", node=self.node, command=base["command"])

    async def _journalled(self, kind: str, argv: list[str], rendered: str, call, full: str | None = None):
        base = self._base(kind, argv, rendered)
        self._check(kind, rendered if full is None else full, base)
        if kind == "act":
            self.journal.write(dict(base, event="started"), sync=True)
        t0 = time.monotonic()
        try:
            res = await call()
        except BaseException as exc:
            end = dict(base, event="finished", duration=round(time.monotonic() - t0, 3), error=type(exc).__name__)
            if isinstance(exc, GarageMigrateError):
                end.update(exit_status=exc.exit_status, stderr_tail=exc.stderr_tail or None)
            self.journal.write(end, sync=kind == "act")
            raise
        end = dict(base, event="finished", duration=round(time.monotonic() - t0, 3))
        if res is not None:
            end["exit_status"] = res.exit_status
            if res.returncode != 0:
                end["stderr_tail"] = tail_text(res.stderr)
        self.journal.write(end, sync=kind == "act")
        return res

    async def run(self, cmd: RemoteCommand, check: bool = True):
        """See :meth:`garage_migrate.ssh.NodeShell.run`."""
        words = redact(cmd.words())
        return await self._journalled(cmd.kind, words, " ".join(_quote(w) for w in words),
                                      lambda: self.inner.run(cmd, check=check), cmd.render())

    async def stream(self, cmd: RemoteCommand, sink, *args, **kwargs):
        """See :meth:`garage_migrate.ssh.NodeShell.stream`."""
        words = redact(cmd.words())
        return await self._journalled(cmd.kind, words, " ".join(_quote(w) for w in words),
                                      lambda: self.inner.stream(cmd, sink, *args, **kwargs), cmd.render())

    async def run_armed(self, cmd: RemoteCommand, release, check: bool = True):
        """See :meth:`garage_migrate.ssh.NodeShell.run_armed` (its release is journalled too:
        a ``released`` line when ``release()`` answers, with what it answered)."""
        words = redact(cmd.words())
        rendered = " ".join(_quote(w) for w in words)

        async def released():
            go = await release()
            at, base = time.time(), self._base(cmd.kind, words, rendered, count=False)

            def write() -> None:
                self.journal.write(dict(base, t=at, event="released", go=bool(go),
                                        word=go if isinstance(go, str) else ("go" if go else "abort")))
            # written once the woken calls have sent their release words: not inside the window
            asyncio.get_running_loop().call_soon(write)
            return go
        return await self._journalled(cmd.kind, words, rendered,
                                      lambda: self.inner.run_armed(cmd, released, check=check), cmd.render())

    async def put_file(self, local, remote: str, **kwargs):
        """See :meth:`garage_migrate.ssh.NodeShell.put_file` (journalled as an act)."""
        up = Upload(str(remote), "")
        return await self._journalled("act", list(up.words()), up.render(),
                                      lambda: self.inner.put_file(local, remote, **kwargs))


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def with_journal(rt, journal: CommandJournal):
    """A copy of runtime ``rt`` whose shells journal every command to ``journal``."""
    cache: dict[str, JournalShell] = {}
    base = rt.shell

    def shell(name: str) -> JournalShell:
        if name not in cache:
            cache[name] = JournalShell(base(name), name, journal)
        return cache[name]
    return dataclasses.replace(rt, shells=shell)
