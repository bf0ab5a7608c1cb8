"""The minimal-downtime restart window against the machine's floor and an Ansible-like baseline
(issue 13, §2.1), with the lab's cost and the migration's time per phase (§5) and its remote
commands per phase (§4): ``python -m benchmarks downtime [--sizes 3,12,48,96]``.

For each size, one 3-zone 0.7.3 lab:

1. **lab**: time to ``Lab.up`` (every daemon sees its peers, sshd answers, Prometheus scrapes
   every node), the RSS of all its processes, and (``--idle-s``) their CPU over an idle period
   (utime + stime deltas from ``/proc``).
2. **migration**: ``garage-migrate run minimal-downtime --auto-approve`` as a user runs it (a
   subprocess with no terminal, on a real ``prefect server start``); the flip's figures from the
   lab's service events and logs (:mod:`benchmarks.restart`: each node's first start of the
   0.8 binary, the stop signal before it, its answer); the phase times from the ledger; the
   commands per phase from the journal (:mod:`benchmarks.commands`).
3. **floor**: the same lab's nodes restarted all at once by a local script (:func:`.drivers.floor`).
4. **baseline**: the same stop / switch / start over SSH, 5 nodes at a time
   (:func:`.drivers.ansible_like`), with the plan's own commands, planned before the migration.

Steps 3 and 4 restart the migrated lab (0.8 to 0.8, the binary switched to where it points):
the lab's own commands restore nothing faster than that, and a 0.8 stop and start costs the
simulated node what the flip's 0.7 stop and 0.8 start cost it. Targets (issue 13): window <=
1.2 x floor at every size; stop and start skew <= 100 ms at 96 nodes. Prints figures; asserts
nothing. The last line is ``RESULT <json>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from . import commands, drivers, restart, runs

TARGET_BINARY = "garage-v0.8.7"  # the lab inventory's target (garage_lab/build.py)


def _proc_stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds incl. reaped children, RSS KiB) of ``pid``, or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = next(int(x.split()[1]) for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if x.startswith("VmRSS:"))
    except (OSError, StopIteration, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return sum(int(stat[i]) for i in (11, 12, 13, 14)) / tick, rss


def lab_pids(lab) -> list[int]:
    """The PIDs of the lab's long-lived processes: daemons, sshd, Prometheus, the CLI server."""
    from garage_lab import service

    pids = [service.main_pid(lab.node_dir(n["name"])) for n in lab.nodes]
    info = lab.info["pids"]
    pids += list(info.get("sshd_shards") or []) + [info.get("prometheus") or 0, info.get("cli_server") or 0]
    return [p for p in pids if p]


def lab_cost(lab, idle_s: float) -> dict:
    """RSS of the lab's processes (MiB) and, with ``idle_s``, their CPU share while idle."""
    pids = lab_pids(lab)
    before = {p: _proc_stat(p) for p in pids}
    rss = sum(s[1] for s in before.values() if s) / 1024
    out = {"rss_mib": rss, "processes": len(pids), "idle_cpu_pct": None}
    if idle_s > 0:
        time.sleep(idle_s)  # the measured period itself, not a wait for something to happen
        after = {p: _proc_stat(p) for p in pids}
        cpu = sum(after[p][0] - before[p][0] for p in pids if before[p] and after[p])
        out["idle_cpu_pct"] = 100.0 * cpu / idle_s  # of one core
    return out


def plan_restart_commands(lab) -> dict:
    """Every node's stop / switch / start / answer commands from the migration's own plan."""
    from garage_migrate.plan import MigrationOptions
    from garage_migrate.runtime import open_runtime, plan_for

    async def go():
        async with open_runtime(str(lab.dir / "inventory.yaml"), "minimal-downtime", persist=False) as rt:
            plan = plan_for(rt, "minimal-downtime", MigrationOptions())
        return {n["name"]: drivers.plan_commands(plan, n["name"]) for n in lab.nodes}

    return asyncio.run(go())


async def _baseline(lab, cmds: dict, forks: int) -> dict:
    from garage_migrate.inventory import load_inventory
    from garage_migrate.ssh import SshPool

    # no connect timeout of its own: garage_migrate.ssh bounds the handshakes in flight
    # (MAX_HANDSHAKES), so 96 connections at once no longer miss the inventory's timeout
    async with SshPool.from_inventory(load_inventory(lab.dir / "inventory.yaml")) as pool:
        return await drivers.ansible_like(pool, cmds, forks=forks)


def flip_steps(entries: list[dict], t_first_stop: float) -> list[tuple[str, float, float, int]]:
    """Where the flip's window goes, from the journal: per step kind of the ``flip`` phase, its
    commands' first start and last end (seconds from the first stop signal) and their count."""
    spans: dict[str, list] = {}
    for e in entries:
        if e.get("phase") != "flip":
            continue
        kind = (e.get("step") or "?").split(":")[0]
        s = spans.setdefault(kind, [float("inf"), float("-inf"), 0])
        s[0], s[1], s[2] = min(s[0], e["t"] - float(e.get("duration") or 0)), max(s[1], e["t"]), s[2] + 1
    return [(k, a - t_first_stop, b - t_first_stop, n) for k, (a, b, n) in sorted(spans.items(), key=lambda x: x[1][0])]


def _keep(lab, res, dest: Path) -> None:
    """Copy what the run left (events, journal, ledger) to ``dest`` before the lab goes."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for src in (lab.dir / "events.jsonl", res.journal, res.ledger):
        if src.exists():
            shutil.copy(src, dest / src.name)


def measure(nodes: int, api: str, idle_s: float = 0.0, forks: int = 5, keep: Path | None = None) -> dict:
    """Everything above on one lab of ``nodes`` (3 zones)."""
    from garage_lab.harness import Lab, LabSpec

    per_zone = max(1, nodes // 3)
    # 3x1: anti-entropy every 30 s (tests/e2e/realserver.py says why the after-gate needs it)
    knobs = {"anti_entropy_interval_s": 30.0} if per_zone == 1 else {}
    with tempfile.TemporaryDirectory(prefix="bench-down-") as d:
        t0 = time.monotonic()
        lab = Lab.up(LabSpec(dir=d, zones=3, per_zone=per_zone, knobs=knobs), timeout=600)
        out: dict = {"nodes": 3 * per_zone, "up_s": time.monotonic() - t0}
        try:
            out["lab"] = lab_cost(lab, idle_s)
            cmds = plan_restart_commands(lab)
            res = runs.run_migration(lab, "minimal-downtime", api)
            if res.rc != 0:
                raise RuntimeError(f"the migration failed ({res.rc}): {res.output[-3000:]}")
            out["migration_s"] = res.seconds
            out["phases"] = runs.phase_times(res.ledger)
            out["commands"] = commands.per_phase(runs.journal(res.journal))
            out["flip"] = restart.measure(lab, res.started, TARGET_BINARY)
            out["flip_steps"] = flip_steps(runs.journal(res.journal), out["flip"]["first_stop"])
            t = time.time()
            drivers.floor(lab)
            restart.wait_answering(lab, t)
            out["floor"] = restart.measure(lab, t)
            t = time.time()
            out["baseline_commands"] = asyncio.run(_baseline(lab, cmds, forks))
            restart.wait_answering(lab, t)
            out["baseline"] = restart.measure(lab, t)
            if keep is not None:
                _keep(lab, res, keep / str(out["nodes"]))
        finally:
            lab.down()
    return out


def _fmt(f: dict) -> str:
    return (f"{f['window_s']:>8.2f} {f['stop_skew_s']:>9.3f} {f['start_skew_s']:>10.3f} "
            f"{f['down_min_s']:>6.2f} {f['down_median_s']:>6.2f} {f['down_max_s']:>6.2f}")


def report(r: dict, forks: int) -> None:
    """Print one size's tables and ratios."""
    n = r["nodes"]
    lab = r["lab"]
    idle = "n/a" if lab["idle_cpu_pct"] is None else f"{lab['idle_cpu_pct']:.1f} % of a core"
    print(f"--- {n} nodes: lab up {r['up_s']:.1f} s, RSS {lab['rss_mib']:.0f} MiB ({lab['processes']} processes), "
          f"idle CPU {idle}; migration {r['migration_s']:.1f} s; load {os.getloadavg()[0]:.1f}")
    print(f"{'restart':<22} {'window':>8} {'stop skew':>9} {'start skew':>10} {'down min':>6} {'median':>6} {'max':>6}")
    for key, label in (("flip", "migration flip"), ("floor", "floor (local script)"),
                       ("baseline", f"ansible-like, forks {forks}")):
        print(f"{label:<22} {_fmt(r[key])}")
    w, fl, b = r["flip"]["window_s"], r["floor"]["window_s"], r["baseline"]["window_s"]
    print(f"ratios: window/floor {w / fl:.2f} (target <= 1.2); baseline/window {b / w:.2f}")
    print("flip steps (journal; s from the first stop signal): " + ", ".join(
        f"{k} {a:.1f}..{b:.1f} ({n} cmds)" for k, a, b, n in r["flip_steps"]))
    print("phases: " + ", ".join(f"{p} {s:.1f} s" for p, s in r["phases"]))
    commands.print_table(r["commands"], n)
    print(f"baseline commands: {r['baseline_commands']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run every size; print its tables and ratios, then ``RESULT <json>``."""
    ap = argparse.ArgumentParser(prog="benchmarks downtime")
    ap.add_argument("--sizes", default="3,12,48,96")
    ap.add_argument("--idle-s", type=float, default=30.0, help="idle CPU measurement per lab (0: skip)")
    ap.add_argument("--forks", type=int, default=5, help="the baseline's nodes at a time")
    ap.add_argument("--prefect-api", help="an existing Prefect API URL (default: start a server)")
    ap.add_argument("--keep", type=Path, help="copy each size's events, journal and ledger under this dir")
    args = ap.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    results = []
    with runs.prefect_server(args.prefect_api) as api:
        for size in (int(x) for x in args.sizes.split(",")):
            r = measure(size, api, idle_s=args.idle_s, forks=args.forks, keep=args.keep)
            report(r, args.forks)
            results.append(r)
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    from benchmarks import exit_on_signals

    exit_on_signals()
    raise SystemExit(main())
