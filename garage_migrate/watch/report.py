"""The watch's report: the comparison with the baseline, per node and per bucket (markdown)."""

from __future__ import annotations

import time

from .compare import Comparison
from .model import Snapshot


def _n(v) -> str:
    return "?" if v is None else str(v)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}/s"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def comparison_markdown(c: Comparison, base: Snapshot) -> str:
    """Tables of one observation against the baseline: nodes (up, errored blocks, queues, S3/web/
    admin error ratios and request rates) and buckets (objects, bytes)."""
    lines = [f"Baseline {_when(base.at)} against observation {_when(c.at)} (rates over {base.window_s:g} s).", "",
             ("| node | up | errored blocks | resync queue | merkle todo | S3 errors | web errors | admin errors "
             "| S3 requests | admin requests |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in c.nodes:
        up = ("yes" if r.up[1] else "**no**") + ("" if r.up[0] in (None, r.up[1]) else " (was " + ("up)" if r.up[0] else "down)"))
        er = {api: f"{_pct(b)} → {_pct(n)}" for api, (b, n) in r.error_ratio.items()}
        rq = {api: f"{_rate(b)} → {_rate(n)}" for api, (b, n) in r.requests.items()}
        lines.append(f"| {r.node} | {up} | {_n(r.errored_blocks[0])} → {_n(r.errored_blocks[1])} | "
                     f"{_n(r.resync_queue[0])} → {_n(r.resync_queue[1])} | {_n(r.merkle_todo[0])} → {_n(r.merkle_todo[1])} | "
                     f"{er['s3']} | {er['web']} | {er['admin']} | {rq['s3']} | {rq['admin']} |")
    lines += ["", "| bucket | objects (baseline → now) | bytes (baseline → now) |", "|---|---|---|"]
    for b in c.buckets:
        base_objects = "not counted by 0.7" if b.objects[0] is None else str(b.objects[0])
        base_bytes = "not counted by 0.7" if b.bytes[0] is None else str(b.bytes[0])
        lines.append(f"| {b.alias} | {base_objects} → {_n(b.objects[1])} | {base_bytes} → {_n(b.bytes[1])} |")
    implied, counted = c.objects
    lines.append(f"\nObjects: the baseline's object tables implied {_n(implied)} (items over {base.copies} copies); "
                 f"the buckets count {_n(counted)} now.")
    if c.regressions:
        lines += ["", "**Regressions:**"] + [f"- {p}" for p in c.regressions]
    else:
        lines.append("\nNo regression against the baseline.")
    if c.notes:
        lines += ["", "Not read:"] + [f"- {x}" for x in c.notes]
    return "\n".join(lines)


def watch_markdown(migration_id: str, history: list[dict], c: Comparison, base: Snapshot, *,
                   planned: int | None, final: bool) -> str:
    """The live report of the watch: every observation so far (one line each), then the latest
    comparison in full (the final one once the watch is over)."""
    head = "final report" if final else "live report"
    lines = [f"## Post-migration watch of {migration_id}: {head}", ""]
    done = len(history)
    lines.append(f"{done} observation{'s' if done != 1 else ''}" + (f" of {planned}" if planned else "")
                 + f", {sum(1 for h in history if not h['regressions'])} without regression.")
    lines += ["", "| # | time | regressions |", "|---|---|---|"]
    for i, h in enumerate(history, 1):
        lines.append(f"| {i} | {_when(h['at'])} | {'; '.join(h['regressions']) or 'none'} |")
    lines += ["", "### Latest observation against the baseline", "", comparison_markdown(c, base)]
    return "\n".join(lines)
