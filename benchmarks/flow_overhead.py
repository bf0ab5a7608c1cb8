"""What the orchestration costs around the work (issue 13, §2.2):
``python -m benchmarks flow_overhead [--nodes 12] [--stop-s 2 --start-s 2 --repair-s 3]``.

The whole ``simple`` procedure runs on a 3-zone 0.7.3 lab whose nodes take fixed times: every
stop ``--stop-s`` (the ``slow-stop`` fault), every start ``--start-s`` (knob ``start_delay_s``),
every offline repair ``--repair-s`` (knob ``offline_repair_delay_s``). It runs as the user runs
it: ``garage-migrate run simple --auto-approve`` with no terminal, on a real ``prefect server
start``.

- **critical-path work**: the sum of the fixed durations on the critical path (zones in
  parallel, every node at once): three restarts (API cut, upgrade, API back: each a stop and a
  start) and one offline repair, plus the slowest backup (the node's own tar, from the journal).
  Target: the flow run's overhead over it <= 15 %.
- **sequential script**: the same lab spec, fresh, migrated by a script that runs the plan's own
  acts node after node, one ``ssh`` (or ``scp``) process per command, as an operator following
  the guide with a shell loop would; it waits for each started node to answer (the plan's
  ``garage stats`` check) but not for the sync gates (in the script's favour). Target: the
  flow >= 3x faster.
- **breakdown** of the flow run's wall time: before the first phase (runtime, discovery, lock,
  plan, artifacts), the phases (remote commands busy: the union of the journal's command
  intervals; gates: the sync gates' and health waits' spans; the rest: Prefect task and state
  calls between commands), after the last phase (report, lock release), and the CLI's own
  start and stop around the flow run. Prefect's task runs come from its API.

Prints figures; asserts nothing. The last line is ``RESULT <json>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from . import commands, restart, runs


def _spec(d: str, nodes: int, a: argparse.Namespace):
    from garage_lab.harness import LabSpec

    return LabSpec(dir=d, zones=3, per_zone=max(1, nodes // 3),
                   knobs={"start_delay_s": a.start_s, "offline_repair_delay_s": a.repair_s,
                          "anti_entropy_interval_s": 30.0})


def _slow_stops(lab, seconds: float) -> None:
    for n in lab.nodes:
        lab.fault(n["name"], "slow-stop", seconds=seconds)


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def _task_runs(api: str, flow_run_id: str) -> list[dict]:
    out: list[dict] = []
    while True:
        body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200, "offset": len(out)}
        req = urllib.request.Request(f"{api}/task_runs/filter", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            page = json.loads(r.read())
        out += page
        if len(page) < 200:
            return out


def _flow_run(api: str, flow_run_id: str) -> dict:
    with urllib.request.urlopen(f"{api}/flow_runs/{flow_run_id}", timeout=30) as r:
        return json.loads(r.read())


def _epoch(iso: str | None) -> float | None:
    import datetime

    return None if not iso else datetime.datetime.fromisoformat(iso).timestamp()


def breakdown(res: runs.RunResult, api: str) -> dict:
    """The flow run's wall time split as the module says (seconds), and its task runs."""
    entries = runs.journal(res.journal)
    led = json.loads(res.ledger.read_text())
    phases = [e for e in led["events"] if e["kind"] == "phase"]
    first, last = phases[0]["t"], phases[-1]["t"]
    m = re.search(r"/runs/flow-run/([0-9a-f-]{36})", res.output)
    fr = _flow_run(api, m.group(1)) if m else {}
    tasks = _task_runs(api, m.group(1)) if m else []
    f0, f1 = _epoch(fr.get("start_time")), _epoch(fr.get("end_time"))
    busy = _union([(e["t"] - float(e.get("duration") or 0), e["t"]) for e in entries if first <= e["t"] <= last])
    gate_spans: dict[tuple, list[float]] = {}
    for e in entries:
        if (e.get("step") or "").startswith(("sync-gate", "wait-healthy")) or "gate" in (e.get("step") or ""):
            s = gate_spans.setdefault((e.get("phase"), e.get("step")), [e["t"], e["t"]])
            s[0], s[1] = min(s[0], e["t"] - float(e.get("duration") or 0)), max(s[1], e["t"])
    gates = sum(b - a for a, b in gate_spans.values())
    return {"cli_s": res.seconds, "flow_s": (f1 - f0) if f0 and f1 else None,
            "before_phases_s": first - f0 if f0 else None, "phases_s": last - first,
            "after_phases_s": f1 - last if f1 else None, "remote_busy_s": busy, "gates_s": gates,
            "between_commands_s": (last - first) - busy, "task_runs": len(tasks),
            "task_run_s": sum(float(t.get("total_run_time") or 0) for t in tasks),
            "commands": len(entries), "phase_times": runs.phase_times(res.ledger),
            "backup_max_s": max((float(e.get("duration") or 0) for e in entries
                                 if e.get("phase") == "backup" and "tar" in " ".join(e.get("argv", []))), default=0.0)}


def sequential_script(lab, path: Path) -> int:
    """Write the operator's script (every act of the simple plan, node after node, one ssh
    or scp per command; after a start, the plan's ``stats`` check until it answers) to
    ``path``; return how many commands it has."""
    from garage_migrate.actions import LocalStream, Upload
    from garage_migrate.plan import MigrationOptions
    from garage_migrate.runtime import open_runtime, plan_for

    async def go():
        async with open_runtime(str(lab.dir / "inventory.yaml"), "simple", persist=False) as rt:
            return plan_for(rt, "simple", MigrationOptions()), rt.inv

    plan, inv = asyncio.run(go())
    port, key, kh = inv.ssh.port, inv.ssh.key_file, lab.dir / "known_hosts"
    opts = f"-o BatchMode=yes -o UserKnownHostsFile={kh} -i {key}"
    host = {n.name: n.host for n in inv.resolved_nodes()}
    lines, count = ["set -e"], 0
    for step in plan.steps():
        stats = [a.op for a in step.actions if a.kind == "observe" and "stats" in a.op.words()]
        for a in step.acts if step.node else step.acts[:1]:
            h, op = host[a.node], a.op
            if isinstance(op, Upload):
                # the binary, or a config: the node's own (the operator's edited copy costs the same)
                binary = op.remote.endswith(Path(inv.target.binary).name)
                local = inv.target.binary if binary else lab.node_dir(a.node) / "etc/garage.toml"
                lines.append(f"scp -q {opts} -P {port} {local} root@{h}:{op.remote}")
            else:
                lines.append(f"ssh {opts} -p {port} root@{h} {shlex.quote(op.render())}")
            count += 1
            if step.kind in ("start", "disable-api", "enable-api") and stats and "start" in op.words():
                lines.append(f"until ssh {opts} -p {port} root@{h} {shlex.quote(stats[0].render())} >/dev/null; "
                             "do sleep 0.5; done")
        for a in step.actions:
            if isinstance(a.op, LocalStream):
                os.makedirs(os.path.dirname(a.op.dest), exist_ok=True)
                lines.append(f"ssh {opts} -p {port} root@{host[a.node]} {shlex.quote(a.op.render())} > {a.op.dest}")
                count += 1
    path.write_text("\n".join(lines) + "\n")
    return count


def measure(a: argparse.Namespace, api: str) -> dict:
    """The flow run on one lab, then the sequential script on a fresh one."""
    from garage_lab.harness import Lab

    out: dict = {"nodes": 3 * max(1, a.nodes // 3)}
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as d:
        lab = Lab.up(_spec(d, a.nodes, a), timeout=600)
        try:
            _slow_stops(lab, a.stop_s)
            res = runs.run_migration(lab, "simple", api)
            if res.rc != 0:
                raise RuntimeError(f"the migration failed ({res.rc}): {res.output[-3000:]}")
            out["flow"] = breakdown(res, api)
            out["commands"] = commands.per_phase(runs.journal(res.journal))
        finally:
            lab.down()
    with tempfile.TemporaryDirectory(prefix="bench-seq-") as d:
        lab = Lab.up(_spec(d, a.nodes, a), timeout=600)
        try:
            _slow_stops(lab, a.stop_s)
            script = lab.dir / "operator.sh"
            out["script_commands"] = sequential_script(lab, script)
            t0, t_epoch = time.monotonic(), time.time()
            r = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=7200,
                               stdin=subprocess.DEVNULL, check=False)
            out["script_s"] = time.monotonic() - t0
            if r.returncode != 0:
                raise RuntimeError(f"the operator script failed ({r.returncode}): {r.stderr[-2000:]}")
            # it did migrate: every node's last start was of the 0.8 binary, and it answered
            restart.wait_answering(lab, t_epoch, timeout=120)
            out["script_versions"] = sorted({n["version"] for n in lab.status()["nodes"]})
        finally:
            lab.down()
    b = out["flow"]
    out["critical_work_s"] = 3 * (a.stop_s + a.start_s) + a.repair_s + b["backup_max_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    """Run it; print the breakdown and the ratios, then ``RESULT <json>``."""
    ap = argparse.ArgumentParser(prog="benchmarks flow_overhead")
    ap.add_argument("--nodes", type=int, default=12)
    ap.add_argument("--stop-s", type=float, default=2.0)
    ap.add_argument("--start-s", type=float, default=2.0)
    ap.add_argument("--repair-s", type=float, default=3.0)
    ap.add_argument("--prefect-api", help="an existing Prefect API URL (default: start a server)")
    a = ap.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    with runs.prefect_server(a.prefect_api) as api:
        r = measure(a, api)
    b, work = r["flow"], r["critical_work_s"]
    flow = b["flow_s"] or b["cli_s"]
    print(f"--- simple procedure, {r['nodes']} nodes; stop {a.stop_s:g} s, start {a.start_s:g} s, "
          f"offline repair {a.repair_s:g} s, slowest backup {b['backup_max_s']:.2f} s")
    print(f"{'':<34} {'seconds':>8}")
    for label, key in (("CLI command (wall)", "cli_s"), ("flow run (Prefect API)", "flow_s"),
                       ("  before the first phase", "before_phases_s"), ("  phases", "phases_s"),
                       ("    remote commands busy", "remote_busy_s"), ("    sync gates + health waits", "gates_s"),
                       ("    between commands (tasks, state)", "between_commands_s"),
                       ("  after the last phase", "after_phases_s")):
        v = b[key]
        print(f"{label:<34} {'n/a' if v is None else f'{v:8.1f}':>8}")
    print(f"critical-path work {work:.1f} s; task runs {b['task_runs']} ({b['task_run_s']:.1f} s in all); "
          f"remote commands {b['commands']}")
    print("phases: " + ", ".join(f"{p} {s:.1f} s" for p, s in b["phase_times"]))
    print(f"sequential script: {r['script_s']:.1f} s, {r['script_commands']} commands, versions {r['script_versions']}")
    print(f"ratios: overhead (flow - work) / work {(flow - work) / work:.2f} (target <= 0.15); "
          f"script / flow {r['script_s'] / flow:.2f} (target >= 3)")
    commands.print_table(r["commands"], r["nodes"])
    print("RESULT " + json.dumps(r))
    return 0


if __name__ == "__main__":
    from benchmarks import exit_on_signals

    exit_on_signals()
    raise SystemExit(main())
