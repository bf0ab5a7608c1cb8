"""The command journal (issue 9 §3): acts journalled and fsynced before they run, every command
with its step, attempt, kind and outcome, secrets redacted; written by the executor's run."""

from __future__ import annotations

import asyncio
import logging

import pytest

from garage_migrate import commands as C
from garage_migrate.errors import CommandError
from garage_migrate.executor import NullReporter, run_migration
from garage_migrate.journal import REDACTED, CommandJournal, JournalShell, in_step, redact, with_journal
from garage_migrate.ledger import Ledger
from garage_migrate.plan import MigrationOptions, make_plan
from garage_migrate.ssh import Result
from garage_migrate.steps import Runtime

from builders import inventory_and_facts
from fakes import FakeSteps, ScriptedDecider

CTX = C.NodeContext(name="n1", binary_path="/usr/local/bin/garage", config_path="/etc/garage.toml")


def run(coro):
    return asyncio.run(coro)


class FakeShell:
    """Answers every command with exit ``status``; records what the journal held at each call."""

    def __init__(self, journal: CommandJournal, status: int = 0, raises: Exception | None = None):
        self.journal = journal
        self.status = status
        self.raises = raises
        self.seen_at_call: list[list[dict]] = []
        self.name = "n1"

    async def run(self, cmd, check=True):
        self.seen_at_call.append(self.journal.read())
        if self.raises is not None:
            raise self.raises
        return Result(stdout="", stderr="boom\n" if self.status else "", exit_status=self.status, signal=None,
                      returncode=self.status)

    async def run_armed(self, cmd, release, check=True):
        # armed at once: acts (answers) only once released
        if not await release():
            return Result(stdout="error=not-released\n", stderr="", exit_status=65, signal=None, returncode=65)
        return await self.run(cmd, check)


def test_an_act_is_journalled_and_synced_before_it_runs_then_finished(tmp_path):
    j = CommandJournal(tmp_path / "commands.jsonl")
    inner = FakeShell(j)
    shell = JournalShell(inner, "n1", j)
    cmd = C.service_signal(CTX, "SIGINT")
    with in_step("flip", "stop", 2):
        run(shell.run(cmd))
    assert [e["event"] for e in inner.seen_at_call[0]] == ["started"]  # on disk before the command ran
    started, finished = j.read()
    assert started["command"] == finished["command"] == cmd.render()
    assert finished["argv"] == list(cmd.words())
    assert (finished["node"], finished["phase"], finished["step"], finished["attempt"], finished["kind"]) == \
           ("n1", "flip", "stop", 2, "act")
    assert finished["exit_status"] == 0 and "duration" in finished and "stderr_tail" not in finished
    assert (tmp_path / "commands.jsonl").stat().st_mode & 0o077 == 0


def test_an_observation_gets_one_finished_line_with_the_stderr_tail_when_it_fails(tmp_path):
    j = CommandJournal(tmp_path / "commands.jsonl")
    shell = JournalShell(FakeShell(j, status=3), "n1", j)
    run(shell.run(C.service_status(CTX), check=False))
    (only,) = j.read()
    assert (only["event"], only["kind"], only["exit_status"], only["stderr_tail"]) == ("finished", "observe", 3, "boom")


def test_a_command_that_raises_is_finished_with_its_error(tmp_path):
    j = CommandJournal(tmp_path / "commands.jsonl")
    err = CommandError("failed", node="n1", exit_status=1, stderr="Error: no\n")
    shell = JournalShell(FakeShell(j, raises=err), "n1", j)
    with pytest.raises(CommandError):
        run(shell.run(C.service_start(CTX)))
    started, finished = j.read()
    assert (finished["error"], finished["exit_status"], finished["stderr_tail"]) == ("CommandError", 1, "Error: no")


def test_read_only_builders_are_observations_and_the_rest_acts():
    assert C.cat("/etc/garage.toml").kind == "observe"
    assert C.db_file_id("/var/lib/garage/meta").kind == "observe" and C.proc_locks().kind == "observe"
    assert C.garage(CTX, "stats").kind == "observe" and C.garage(CTX, "layout", "show").kind == "observe"
    assert C.repair(CTX, "tables").kind == "act"
    assert C.service_stop(CTX).kind == "act" and C.rename("/a", "/b").kind == "act"
    # the kind is not part of what a command is
    assert C.cat("/x") == C.RemoteCommand(("cat", "/x"), timeout=C.cat("/x").timeout)


def test_secrets_are_redacted_at_the_source():
    assert redact(["curl", "--token", "abc", "rpc_secret=deadbeef", "x"]) == \
           ["curl", "--token", REDACTED, f"rpc_secret={REDACTED}", "x"]


def test_concurrent_steps_keep_their_own_step_in_the_journal(tmp_path):
    j = CommandJournal(tmp_path / "commands.jsonl")
    shells = {n: JournalShell(FakeShell(j), n, j) for n in ("n1", "n2")}

    async def one(node):
        with in_step("rolling-backup", f"stop-{node}"):
            await asyncio.sleep(0)
            await shells[node].run(C.service_stop(CTX))

    async def both():
        await asyncio.gather(one("n1"), one("n2"))
    run(both())
    assert {(e["node"], e["step"]) for e in j.read()} == {("n1", "stop-n1"), ("n2", "stop-n2")}


class ShellSteps(FakeSteps):
    """Fake steps whose stop runs a real command through the runtime's shell (so it is journalled)."""

    async def stop_node(self, rt, node):
        await rt.shell(node).run(C.service_signal(rt.node(node).ctx, "SIGINT"))
        return await super().stop_node(rt, node)

    async def flip(self, rt, unit):
        # the flip's stop is one helper call per node (actions/flip.py), run through the shell
        from garage_migrate.actions import flip as F
        from garage_migrate.executor.flip import run_barrier

        async def stop(n, release):
            await rt.shell(n).run_armed(F.flip_stop(rt.spec(n)).call, release)
            return await FakeSteps.stop_node(self, rt, n)

        async def start(n, release):
            assert await release()
            return await self.start_node(rt, n, unit.target)
        return await run_barrier(rt, unit, stop=stop, switch=lambda n: self.switch_binary(rt, n), start=start)


class FakeLock:
    async def stop_heartbeats(self):
        pass

    async def release(self):
        pass


def test_a_run_journals_each_step_s_commands_beside_the_ledger(tmp_path):
    inv, facts = inventory_and_facts({"dc1": 1, "dc2": 1, "dc3": 1}, backup_root=str(tmp_path))
    ledger = Ledger.open(tmp_path, inv.cluster, "m1", "minimal-downtime")
    journal = CommandJournal.beside(ledger.path)
    raw = {n.name: FakeShell(journal) for n in facts.nodes}
    rt = Runtime(inv=inv, shells=raw, ledger=ledger, facts=facts, log=logging.getLogger("test.journal"))
    opts = MigrationOptions(watch_s=0.0)
    plan = make_plan(inv, facts, "minimal-downtime", "m1", opts)

    async def hold(held):
        await held.shell("n1").run(C.lock_record_read("/var/lib/garage/meta.garage-migrate.lock"), check=False)
        return FakeLock()
    res = run(run_migration(rt, plan, opts, dry_run=False, hold=hold,
                            decider_for=lambda lock: ScriptedDecider(approve_flip=["approve"]),
                            steps=ShellSteps(), reporter=NullReporter()))
    assert res["state"] == "done"
    lines = journal.read()
    assert lines[0]["step"] == "cluster-lock" and lines[0]["kind"] == "observe"
    stops = [(e["node"], e["phase"]) for e in lines if e["event"] == "started"]
    # each node stops in its backup round, in the flip, and in its offline-repair round
    assert sorted(stops) == sorted((n, p) for n in ("n1", "n2", "n3")
                                   for p in ("rolling-backup", "flip", "offline-repair"))
    assert with_journal(rt, journal).shell("n1").node == "n1"


def test_an_act_repeated_in_the_same_step_is_journalled_as_the_next_attempt(tmp_path):
    # a task retry runs the step again: its acts are the plan's, numbered by attempt
    j = CommandJournal(tmp_path / "commands.jsonl")
    shell = JournalShell(FakeShell(j), "n1", j)
    sig, stop = C.service_signal(CTX, "SIGINT"), C.service_stop(CTX)
    with in_step("flip", "stop"):
        for _ in range(2):
            run(shell.run(sig))
            run(shell.run(stop))
        run(shell.run(C.service_status(CTX), check=False))
        run(shell.run(C.service_status(CTX), check=False))
    started = [(e["command"], e["attempt"]) for e in j.read() if e["event"] == "started"]
    assert started == [(sig.render(), 1), (stop.render(), 1), (sig.render(), 2), (stop.render(), 2)]
    assert {e["attempt"] for e in j.read() if e["kind"] == "observe"} == {1}
    with in_step("flip", "stop", 3):  # a flip-failure retry numbers from its own attempt
        run(shell.run(sig))
    assert j.read()[-1]["attempt"] == 3
