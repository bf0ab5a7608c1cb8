"""What a person reads when asked to decide: the text of every approval and decision dialog.

Each dialog starts with one line that says what is being decided, then what each offered
choice does, then the detail (the plan of what comes next, a gate's table, the failures), long
parts collapsed, so that the Prefect resume dialog's Decision field stays near the top. Only
the choices that apply are listed, and the form offers only those (``choices`` goes with the
question to the decider: :meth:`garage_migrate.executor.Decider.ask`).

No Prefect here: the CLI's prompt shows the same text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .plan import MigrationPlan, Phase

#: what each answer does, as the dialog and the form's Decision field say it
MEANING: dict[str, str] = {
    "approve": "go on with the phases shown below",
    "abort": "stop the migration here; nothing more is changed, the ledger keeps what was done and a new run "
             "resumes from it",
    "wait_more": "run the sync gate again, with the same deadline",
    "proceed_anyway": "go on although the check did not pass (recorded in the ledger with your note)",
    "retry": "start the failed nodes on 0.8 again",
    "rollback": "put every node back on 0.7 from its verified backup (the rollback plan is below)",
}


def choices_line(choices: Sequence[str]) -> str:
    """``approve: ...; abort: ...``: the meaning of each offered choice, on one line."""
    return "; ".join(f"{c}: {MEANING[c]}" for c in choices)


def compose(summary: str, choices: Sequence[str], body: str = "", extra: Sequence[str] = ()) -> str:
    """A dialog: the one-line ``summary``, the offered ``choices`` and what they do, ``extra``
    lines (e.g. what is left of the maintenance window), then ``body``."""
    out = [summary, "", "Choose the **Decision** at the bottom of this dialog:", ""]
    out += [f"- **{c}**: {MEANING[c]}" for c in choices]
    if extra:
        out += [""] + list(extra)
    if body:
        out += ["", body.strip("\n")]
    return "\n".join(out) + "\n"


def collapsed(summary: str, body: str) -> str:
    """``body`` inside an HTML ``<details>`` (collapsed; Prefect's markdown renders it)."""
    return f"<details><summary>{summary}</summary>\n\n{body.strip()}\n\n</details>"


def approval(plan: MigrationPlan, phase: Phase, after: Phase, facts_markdown: str, choices: Sequence[str], *,
             extra: Sequence[str] = (), notes: Mapping[str, Sequence[str]] | None = None) -> str:
    """The dialog of an approval phase: approve ``after`` and what follows, or abort.

    Args:
        plan: the plan being executed.
        phase: the approval phase.
        after: the phase that runs once approved (the plan is shown from there on).
        facts_markdown: the cluster facts (collapsed at the end).
        choices: the offered answers.
        extra: lines under the choices: the place for run-time facts (what is left of the
            maintenance window, how old each backup is).
        notes: lines per phase of the plan (e.g. each phase's time estimate).
    """
    what = phase.title.removeprefix("Approval: ")
    nodes = sorted({s.node for w in after.waves for s in w.steps if s.node})
    summary = (f"**Approve: {what}?** Next is phase {plan.phases.index(after) + 1} of {len(plan.phases)}, "
               f"\"{after.title}\"" + (f", on {len(nodes)} node(s)" if nodes else "") + "."
               f" Migration `{plan.migration_id}` of cluster `{plan.cluster}` to Garage v{plan.target_version}.")
    body = ("#### What comes next\n\n" + plan.to_markdown(from_phase=after.name, header=False, notes=notes)
            + "\n\n" + collapsed("Cluster facts", facts_markdown))
    return compose(summary, choices, body, extra)


def gate(name: str, outcome_markdown: str, choices: Sequence[str]) -> str:
    """The dialog of a sync gate that did not pass."""
    return compose(f"**Sync gate {name} did not pass**: some queue is not empty, or a node is not seen.",
                   choices, outcome_markdown)


def counters(detail: str, choices: Sequence[str]) -> str:
    """The dialog of a bucket counters check that failed."""
    return compose("**The bucket counters look wrong** after the upgrade.", choices, detail)


def flip_failure(failed: Mapping[str, object], rollback_markdown: str | None, why_not: object,
                 choices: Sequence[str]) -> str:
    """The dialog after nodes failed to start on 0.8 in the simultaneous restart.

    Args:
        failed: node -> its error.
        rollback_markdown: the plan a rollback runs, or ``None`` when none is possible.
        why_not: why no rollback is possible (when ``rollback_markdown`` is ``None``).
        choices: the offered answers (no ``rollback`` when none is possible).
    """
    summary = (f"**{len(failed)} node(s) failed to start on 0.8** after the simultaneous restart; the cluster "
               "must not stay split across versions.")
    body = "\n".join(f"- {n}: {e}" for n, e in failed.items())
    if rollback_markdown is not None:
        body += "\n\n" + collapsed("The rollback plan", rollback_markdown)
    else:
        body += f"\n\nRoll back is not offered: {why_not}"
    return compose(summary, choices, body)
