"""Remote commands and SSH round trips per phase of a migration, from its command journal
(issue 13, §4): ``python -m benchmarks commands [--sizes 6,48,96]``.

Each size is one 3-zone 0.7.3 lab migrated by ``garage-migrate run minimal-downtime
--auto-approve`` (no terminal, a real Prefect server); the table is read from the run's
``commands.jsonl``: per phase, the commands (exec channels: ``observe`` and ``act``), the uploads
(SFTP), the round trips (commands + uploads: each is one request answered by the node), per node,
and the sum of their durations. ``python -m benchmarks downtime`` prints the same table for each
of its migrations.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import defaultdict

from . import runs


def per_phase(entries: list[dict]) -> list[dict]:
    """Rows per phase (in journal order; ``-``: the lock records outside any phase) and a total."""
    rows: dict[str, dict] = {}
    for e in entries:
        ph = e.get("phase") or "-"
        r = rows.setdefault(ph, defaultdict(float, phase=ph))
        upload = e.get("argv", [None])[0] == "put"
        r["uploads" if upload else e.get("kind", "observe")] += 1
        r["round_trips"] += 1
        r["remote_s"] += float(e.get("duration") or 0.0)
    total = defaultdict(float, phase="total")
    for r in rows.values():
        for k in ("observe", "act", "uploads", "round_trips", "remote_s"):
            total[k] += r[k]
    return [dict(r) for r in rows.values()] + [dict(total)]


def print_table(rows: list[dict], nodes: int, title: str = "") -> None:
    """Print the per-phase table (counts, per node, remote seconds)."""
    if title:
        print(title)
    print(f"{'phase':<15} {'observe':>7} {'act':>5} {'uploads':>7} {'round trips':>11} {'per node':>8} {'remote s':>8}")
    for r in rows:
        print(f"{r['phase']:<15} {int(r['observe']):>7} {int(r['act']):>5} {int(r['uploads']):>7} "
              f"{int(r['round_trips']):>11} {r['round_trips'] / nodes:>8.1f} {r['remote_s']:>8.1f}", flush=True)


def measure(nodes: int, api: str, knobs: dict | None = None) -> dict:
    """One lab of ``nodes`` (3 zones), migrated; the journal's rows per phase."""
    from garage_lab.harness import Lab, LabSpec

    per_zone = max(1, nodes // 3)
    with tempfile.TemporaryDirectory(prefix="bench-cmds-") as d:
        lab = Lab.up(LabSpec(dir=d, zones=3, per_zone=per_zone, knobs=dict(knobs or {})), timeout=300)
        try:
            res = runs.run_migration(lab, "minimal-downtime", api)
            if res.rc != 0:
                raise RuntimeError(f"the migration failed ({res.rc}): {res.output[-3000:]}")
            return {"nodes": 3 * per_zone, "rows": per_phase(runs.journal(res.journal)), "seconds": res.seconds}
        finally:
            lab.down()


def main(argv: list[str] | None = None) -> int:
    """Run the migrations and print one table per size."""
    ap = argparse.ArgumentParser(prog="benchmarks commands")
    ap.add_argument("--sizes", default="6,48,96")
    ap.add_argument("--prefect-api", help="an existing Prefect API URL (default: start a server)")
    args = ap.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    with runs.prefect_server(args.prefect_api) as api:
        for n in (int(x) for x in args.sizes.split(",")):
            r = measure(n, api, knobs={"anti_entropy_interval_s": 30.0} if n <= 3 else None)
            print_table(r["rows"], r["nodes"], f"--- {r['nodes']} nodes: migration {r['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    from benchmarks import exit_on_signals

    exit_on_signals()
    raise SystemExit(main())
