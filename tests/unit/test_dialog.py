"""What a person reads: the plan's markdown, the decision dialogs, the ledger table."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from garage_migrate import dialog
from garage_migrate.actions import LocalStream
from garage_migrate.errors import MigrationAborted
from garage_migrate.executor import Answer, Decisions
from garage_migrate.executor.interfaces import ACTIONS
from garage_migrate.ledger_model import LedgerDoc, NodeRecord, StepRecord
from garage_migrate.ledger_view import COLUMNS, status_rows
from garage_migrate.plan import FanoutPolicy, MigrationOptions, make_plan

from builders import inventory_and_facts


def _plan(procedure="minimal-downtime", zones=None, **fanout):
    inv, facts = inventory_and_facts(zones or {"dc1": 2, "dc2": 2, "dc3": 2}, "3")
    return make_plan(inv, facts, procedure, "m1", MigrationOptions(fanout=FanoutPolicy(**fanout)))


def _shown(plan):
    """(node, command) of every act and every stream (a controller-side backup's tar) of the plan."""
    return [(a.node, a.op.render()) for s in plan.steps() for a in s.actions
            if a.kind == "act" or isinstance(a.op, LocalStream)]


# ---------------------------------------------------------------------------- the plan's markdown
@pytest.mark.parametrize("procedure", ["minimal-downtime", "simple"])
def test_the_markdown_shows_every_command_of_every_step_on_every_node(procedure):
    plan = _plan(procedure)
    md = plan.to_markdown()
    shown = _shown(plan)
    assert len({n for n, _ in shown}) == 6
    for node, cmd in shown:
        assert re.search(rf"(^|[ ,]){re.escape(node)}(,|:| ).*`{re.escape(cmd)}`", md, re.MULTILINE), (node, cmd)
    # the controller-side backup's tar is there for every node, not only the first of its wave
    tars = [n for n, c in shown if " tar " in c]
    assert len(tars) == 6 and all(f"{n}, backup: `" in md for n in tars)


def test_each_phase_heading_has_a_blank_line_before_it():
    md = _plan().to_markdown()
    lines = md.splitlines()
    headings = [i for i, x in enumerate(lines) if re.match(r"\*\*\d+\. ", x)]
    assert len(headings) == len(_plan().phases)
    assert all(lines[i - 1] == "" for i in headings)


def test_long_waves_are_collapsed_and_short_ones_are_not():
    md = _plan().to_markdown()
    blocks = re.findall(r"<details><summary>(.*?)</summary>\n\n(.*?)\n\n</details>", md, re.DOTALL)
    summaries = [s for s, _ in blocks]
    assert "stop on n1, n2, n3, n4, n5, n6 (together): 6 commands" in summaries  # one flip-helper call each
    for _s, body in blocks:
        assert len(body.splitlines()) > 3 and all(x.startswith("- ") for x in body.splitlines())
    # a short wave keeps its commands inline, under its line
    assert re.search(r"^- stage on n1, n2, n3, n4, n5, n6 \(up to 32 at once\)$", md, re.MULTILINE) is None
    assert "- repair (one at a time)\n  - on one of n1, n2, n3, n4, n5, n6, repair: `" in md


def test_together_is_said_only_of_the_waves_that_run_together():
    for plan in (_plan(), _plan(zones={"dc1": 1, "dc2": 1, "dc3": 1}), _plan("simple")):
        md = plan.to_markdown()
        together = sum(1 for ph in plan.phases for w in ph.waves if w.together)
        assert md.count("(together)") == together
    # one node's stop, backup and start run in order: nothing says they run together
    md = _plan(zones={"dc1": 1, "dc2": 1, "dc3": 1}).to_markdown()
    assert "dc1: stop, backup, start on n1: 4 commands</summary>" in md


def test_notes_go_under_their_phase_heading():
    md = _plan().to_markdown(notes={"flip": ["about 4 min; 52 min left in the window"]})
    # the heading carries the phase's planned estimate (garage_migrate.estimates), the note follows it
    assert re.search(r"\*\*6\. Stop all nodes at the same moment, switch, start all on 0\.8\*\* \(about \d+ min\)\n\n"
                     r"_about 4 min; 52 min left in the window_\n\n", md), md


# ---------------------------------------------------------------------------- the dialogs
def test_the_approval_dialog_starts_with_a_summary_and_the_choices_then_every_command_next():
    plan = _plan()
    approve, flip = plan.phase("approve-flip"), plan.phase("flip")
    md = dialog.approval(plan, approve, flip, "| node | version |", ACTIONS["approval"],
                         extra=["Backups: n1 taken 3 min ago"])
    lines = md.splitlines()
    assert lines[0] == ('**Approve: restart every node on 0.8 at once?** Next is phase 6 of 10, '
                        '"Stop all nodes at the same moment, switch, start all on 0.8", on 6 node(s). '
                        f'Migration `{plan.migration_id}` of cluster `{plan.cluster}` to Garage v{plan.target_version}.')
    assert lines[2:6] == ["Choose the **Decision** at the bottom of this dialog:", "",
                          f"- **approve**: {dialog.MEANING['approve']}", f"- **abort**: {dialog.MEANING['abort']}"]
    assert lines[7] == "Backups: n1 taken 3 min ago"
    # the plan from the flip on, with every node's commands; nothing of the phases already done
    assert "Stage the 0.8 binary" not in md and "### Migration plan" not in md
    for node, cmd in _shown(plan):
        if any(a.node == node and a.op.render() == cmd for ph in plan.phases[5:] for w in ph.waves
               for s in w.steps for a in s.actions):
            assert f"`{cmd}`" in md
    assert "<details><summary>Cluster facts</summary>\n\n| node | version |\n\n</details>" in md


def test_a_flip_failure_without_a_rollback_offers_only_retry():
    md = dialog.flip_failure({"n2": "did not start"}, None, "n2 has no verified backup", ("retry",))
    assert "- **retry**:" in md and "- **rollback**" not in md
    assert "Roll back is not offered: n2 has no verified backup" in md
    both = dialog.flip_failure({"n2": "x"}, "rollback plan text", None, ACTIONS["flip-failure"])
    assert "- **rollback**:" in both and "<details><summary>The rollback plan</summary>" in both


class _Ledger:
    """The part of the ledger the decision rules read and write (no file: a pure rule test)."""

    def __init__(self):
        self.gates, self.events = {}, []

    def gate(self, key):
        return None

    async def record_gate(self, key, **kw):
        self.gates[key] = kw

    async def event(self, kind, msg, **kw):
        self.events.append((kind, msg))


class _Decider:
    def __init__(self, action):
        self.action, self.offered = action, None

    async def ask(self, kind, key, description, choices):
        self.offered = choices
        return Answer(action=self.action, note="", pause_key=key, flow_run_id="")


def test_the_decider_is_offered_only_the_choices_that_apply_and_another_answer_is_refused():
    log = logging.getLogger("test")
    d = _Decider("rollback")
    rules = Decisions(_Ledger(), d, "digest", False, log)
    with pytest.raises(MigrationAborted, match="not an answer"):
        asyncio.run(rules.decide("flip-failure", "flip-failure-1", "md", clean=False, choices=("retry",)))
    assert d.offered == ("retry",)
    d = _Decider("abort")
    assert asyncio.run(Decisions(_Ledger(), d, "digest", False, log).decide("approval", "approve-x", "md", True)) \
        == "abort"
    assert d.offered == ("approve", "abort")  # by default, every answer of the kind


# ---------------------------------------------------------------------------- the ledger table
def test_the_ledger_table_has_one_short_row_per_node_with_its_latest_step_and_attempts():
    doc = LedgerDoc.new("m", "c", "minimal-downtime", now=1.0)
    backup = StepRecord(status="running", started=10.0)
    for status, t in (("running", 10.0), ("failed", 11.0), ("running", 20.0), ("done", 21.0)):
        backup.record(status, "", None, t)
    stop = StepRecord(status="done", started=5.0)
    stop.record("done", "", None, 5.0)
    doc.nodes["n2"] = NodeRecord(zone="dc2", steps={"rolling-backup:stop": stop, "rolling-backup:backup": backup})
    doc.nodes["n1"] = NodeRecord(zone="dc1")
    rows = status_rows(doc)
    assert [tuple(r) for r in rows] == [COLUMNS, COLUMNS] and len(COLUMNS) == 7
    assert rows[0] == {"node": "n1", "zone": "dc1", "phase": "", "step": "", "status": "", "attempts": "",
                       "last change": ""}
    assert rows[1] == {"node": "n2", "zone": "dc2", "phase": "rolling-backup", "step": "backup", "status": "done",
                       "attempts": "2", "last change": "1970-01-01 00:00:21 UTC"}
