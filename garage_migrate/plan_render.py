"""The plan's renderings: Markdown for the approval forms and artifacts, text for the terminal.

Views of the plan's values (the JSON is :meth:`~garage_migrate.plan.MigrationPlan.to_json`):
each wave says how it runs (the scheduler's label) and shows the commands its steps carry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from . import estimates as E
from .actions import LocalStream
from .executor.schedule import schedule_wave  # the executor package imports plan, not this module
from .plan import MigrationPlan, Wave


def _about(plan: MigrationPlan, est: dict[str, float], phase: str) -> str:
    """`` (about N min)`` for a phase with an estimate (:mod:`garage_migrate.estimates`)."""
    if phase not in est:
        return ""
    span = {p for u in E.units(plan) if u.phase == phase for p, _ in u.parts}
    return f" (about {E.minutes(est[phase])} min" + (f" for {len(span)} phases: the offline part)" if len(span) > 1
                                                     else ")")


def estimates_note(plan: MigrationPlan) -> str:
    """The defaults the estimates start from (refined during the run by what was measured)."""
    covered = {pw for u in E.units(plan) for pw in u.parts}
    kinds = list(dict.fromkeys(s.kind for ph in plan.phases for w in ph.waves for s in w.steps
                               if (ph.name, w.name) in covered and E.DEFAULT_SECONDS.get(s.kind, 0) > 0))
    return ("Estimates (phases that must finish once started): conservative defaults per step, "
            + ", ".join(f"{k} {E.DEFAULT_SECONDS[k]:.0f} s" for k in kinds)
            + "; refined during the run by the durations measured in this migration.")


def _where(plan: MigrationPlan, w: Wave) -> str:
    """The zones a wave is about, as a prefix ("dc1: ", "dc1 + dc2: ") or "" for all/none."""
    if w.zone:
        return f"{w.zone}: "
    zone_of = {n: z for z, ns in plan.zones for n in ns}
    zs = list(dict.fromkeys([zone_of[s.node] for s in w.steps if s.node in zone_of] +
                            [s.arg("scope") for s in w.steps if s.kind == "wait-healthy" and s.arg("scope") != "all"]))
    return f"{' + '.join(zs)}: " if zs and len(zs) < len(plan.zones) else ""


#: a wave with more command lines than this is collapsed (HTML ``<details>``, which Prefect's
#: markdown renders) so that the approval dialog's form stays near the top
COLLAPSE_OVER = 3


def _shown(s) -> list:
    """What a step shows a person: its acts (the changes, clean-ups marked) and the streams
    that copy a node's data off it (a controller-side backup's ``tar``), in order."""
    return [a for a in s.actions if a.kind == "act" or isinstance(a.op, LocalStream)]


def _line(a) -> str:
    if isinstance(a.op, LocalStream):
        return f"`{a.op.render()}` (read-only, into {a.op.dest} on the worker)"
    return f"`{a.op.render()}`" + (" (only to clean up after a failure)" if a.on_failure else "")


def _command_lines(w: Wave) -> list[str]:
    """Every command of every step of the wave, for every node, in order: ``node, step: `command```.

    A step that runs on one of several nodes (a repair launch) is one line naming them all.
    """
    out = []
    for s in w.steps:
        shown = _shown(s)
        if s.one_of:
            for line in dict.fromkeys(_line(a) for a in shown):
                nodes = [a.node for a in shown if _line(a) == line]
                out.append(f"on one of {', '.join(nodes)}, {s.kind}: {line}")
            continue
        out += [f"{a.node}, {s.kind}: {_line(a)}" for a in shown]
    return out


def _wave_lines(plan: MigrationPlan, w: Wave) -> list[str]:
    ws = schedule_wave(w, plan.max_parallel_nodes)
    kinds = sorted({s.kind for s in w.steps}, key=[s.kind for s in w.steps].index)
    what = ", ".join(kinds) + (f" on {', '.join(ws.nodes)}" if ws.nodes else "")
    # the scheduler's label: "together" only for a wave that runs every node at the same moment
    head = f"{_where(plan, w)}{what}" + (f" ({ws.label()})" if ws.label() else "")
    cmds = _command_lines(w)
    if len(cmds) <= COLLAPSE_OVER:
        return [f"- {head}"] + [f"  - {c}" for c in cmds]
    # blank lines around the HTML: markdown resumes inside <details> only after one
    return ["", f"<details><summary>{head}: {len(cmds)} commands</summary>", ""] + \
        [f"- {c}" for c in cmds] + ["", "</details>", ""]


def to_markdown(plan: MigrationPlan, from_phase: str | None = None, *, header: bool = True,
                notes: Mapping[str, Sequence[str]] | None = None) -> str:
    """Markdown for approval forms and artifacts (optionally from ``from_phase`` on).

    Every step's commands on every node are shown, under their wave (collapsed when there are
    more than :data:`COLLAPSE_OVER`).

    Args:
        plan: the plan.
        from_phase: start at this phase (the approval shows what comes next).
        header: begin with the plan's title, zones and fan-out (the artifact); the approval
            dialog has its own summary instead.
        notes: lines shown under a phase's heading, by phase name: the place for what is
            known at run time rather than planned (the phase's time estimate against the
            maintenance window, the age of each node's backup).
    """
    out = []
    if header:
        out += [f"### Migration plan `{plan.migration_id}`: {plan.procedure} procedure, "
                f"{plan.cluster} to Garage v{plan.target_version}", "",
                f"Replication mode `{plan.replication_mode}`; zones: " +
                ", ".join(f"**{z}** ({', '.join(ns)})" for z, ns in plan.zones) + ".",
                f"At most {plan.max_parallel_nodes} node(s) at once in a wave, except the simultaneous restart "
                "(every node at once).", "", estimates_note(plan)]
    for w in plan.warnings:
        out += ["", f"> warning: {w}"]
    started, est = from_phase is None, E.phase_estimates(plan)
    for i, ph in enumerate(plan.phases, 1):
        started = started or ph.name == from_phase
        if not started:
            continue
        # a blank line before each heading, or markdown runs it into the previous list item
        out += ["", f"**{i}. {ph.title}**" + (" (needs approval)" if ph.risky else "")
                + _about(plan, est, ph.name), ""]
        out += [f"_{n}_" for n in (notes or {}).get(ph.name, ())] + ([""] if (notes or {}).get(ph.name) else [])
        for w in ph.waves:
            out += _wave_lines(plan, w)
            out += _diffs(w)
    text = "\n".join(out).strip("\n")
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text


def _diffs(w: Wave) -> list[str]:
    """The multi-line notes of a wave's steps (the 0.8 config diffs), once per distinct text."""
    by_text: dict[str, list[str]] = {}
    for s in w.steps:
        if "\n" in s.note and s.node:
            by_text.setdefault(s.note, []).append(s.node)
    out = []
    for text, nodes in by_text.items():
        title, _, body = text.partition("\n")
        out += [f"  - {title} ({', '.join(nodes)})", "", "    ```diff", *(f"    {ln}" for ln in body.splitlines()),
                "    ```", ""]
    return out


def to_text(plan: MigrationPlan) -> str:
    """Plain text for the terminal (every step and command)."""
    out = [f"Migration {plan.migration_id}: {plan.procedure}, cluster {plan.cluster} -> v{plan.target_version}",
           f"replication_mode {plan.replication_mode}; " +
           "; ".join(f"{z}: {' '.join(ns)}" for z, ns in plan.zones),
           f"max_parallel_nodes {plan.max_parallel_nodes} (the simultaneous restart is never split)"]
    out += [f"warning: {w}" for w in plan.warnings]
    out.append(estimates_note(plan))
    est = E.phase_estimates(plan)
    for i, ph in enumerate(plan.phases, 1):
        out.append(f"\n{i}. {ph.title}" + ("  [approval]" if ph.risky else "") + _about(plan, est, ph.name))
        for w in ph.waves:
            label = schedule_wave(w, plan.max_parallel_nodes).label()
            out.append(f"   wave {w.name}" + (f" ({label})" if label else ""))
            for s in w.steps:
                first, _, more = s.note.partition("\n")
                out.append(f"     - {s.kind}" + (f" {s.node}" if s.node else "") +
                           (f" ({', '.join(f'{k}={v}' for k, v in s.args)})" if s.args else "") +
                           (f"  # {first}" if first else ""))
                out += [f"         | {ln}" for ln in more.splitlines()]
                for c in s.commands:
                    out.append(f"         $ {c}")
    return "\n".join(out)
