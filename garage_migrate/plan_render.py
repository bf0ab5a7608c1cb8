"""The plan's renderings: Markdown for the approval forms and artifacts, text for the terminal.

Views of the plan's values (the JSON is :meth:`~garage_migrate.plan.MigrationPlan.to_json`):
each wave says how it runs (the scheduler's label) and shows the commands its steps carry.
"""

from __future__ import annotations

from . import estimates as E
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


def to_markdown(plan: MigrationPlan, from_phase: str | None = None) -> str:
    """Markdown for approval forms and artifacts (optionally from ``from_phase`` on)."""
    out = [f"### Migration plan `{plan.migration_id}`: {plan.procedure} procedure, "
           f"{plan.cluster} to Garage v{plan.target_version}",
           f"Replication mode `{plan.replication_mode}`; zones: " +
           ", ".join(f"**{z}** ({', '.join(ns)})" for z, ns in plan.zones),
           f"At most {plan.max_parallel_nodes} node(s) at once in a wave, except the simultaneous restart "
           "(every node at once).", estimates_note(plan), ""]
    for w in plan.warnings:
        out.append(f"> warning: {w}")
    started, est = from_phase is None, E.phase_estimates(plan)
    for i, ph in enumerate(plan.phases, 1):
        started = started or ph.name == from_phase
        if not started:
            continue
        out.append(f"**{i}. {ph.title}**" + (" (needs approval)" if ph.risky else "") + _about(plan, est, ph.name))
        for w in ph.waves:
            ws = schedule_wave(w, plan.max_parallel_nodes)
            kinds = sorted({s.kind for s in w.steps}, key=[s.kind for s in w.steps].index)
            what = ", ".join(kinds) + (f" on {', '.join(ws.nodes)}" if ws.nodes else "")
            out.append(f"- {_where(plan, w)}{what}" + (f" ({ws.label()})" if ws.label() else ""))
            for s in w.steps[:1]:
                for c in s.commands:
                    out.append(f"  - `{c}`")
    return "\n".join(out)


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
                out.append(f"     - {s.kind}" + (f" {s.node}" if s.node else "") +
                           (f" ({', '.join(f'{k}={v}' for k, v in s.args)})" if s.args else "") +
                           (f"  # {s.note}" if s.note else ""))
                for c in s.commands:
                    out.append(f"         $ {c}")
    return "\n".join(out)
