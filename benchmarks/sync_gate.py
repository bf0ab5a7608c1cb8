"""Sync gate latency and cost: from the last queue reaching zero (lab ground truth) to the gate
passing, and the remote commands the gate makes per second (issue 13, benchmark 3 and §4).

For each size, a 0.8.7 lab (3 zones) gets ``garage repair --all-nodes --yes blocks``, which
queues a resync of every block on every node; the migration's gate (Prometheus for the queues,
``garage worker list`` for the workers, 3 consecutive passes 1 s apart, its settle time) then
waits for it. The lab's ground truth (every node's resync queue and repair worker, read from
the nodes' stores by a thread every ``--truth-every`` seconds) says when the work was done.
Each size is measured twice: ``worker list`` on every node at every look (as before), and
paced (:class:`garage_migrate.gates.paced.PacedSource`, the migration's default rate).

    python -m benchmarks sync_gate [--sizes 3,12,48]

Target: latency <= 2 scrape intervals + the gate's stability window ((consecutive - 1) x
interval) = 4 s here, plus the truth's polling period. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time

from garage_lab.harness import Lab, LabSpec
from garage_migrate import commands as C
from garage_migrate.gates import Gate, PrometheusSource, auto_source
from garage_migrate.inventory import load_inventory
from garage_migrate.plan import MigrationOptions
from garage_migrate.ssh import SshPool

SCRAPE_S = 1.0  # the lab's Prometheus scrape_interval (garage_lab/build.py)
INTERVAL_S, CONSECUTIVE = 1.0, 3


class _Counting:
    """A node shell that counts the commands run through it."""

    def __init__(self, inner, counter: list[int]):
        self.inner, self.counter = inner, counter

    async def run(self, cmd, check: bool = True):
        self.counter[0] += 1
        return await self.inner.run(cmd, check=check)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _truth_done(lab) -> bool:
    nodes = lab.inspect(checksums=False)["nodes"]
    return all(v["resync_queue"] == 0 for v in nodes.values())


def _watch_truth(lab, every: float, stop: threading.Event, out: dict) -> None:
    """Record when the ground truth last turned done (work seen first)."""
    busy_seen = False
    while not stop.is_set():
        done = _truth_done(lab)
        now = time.monotonic()
        if not done:
            busy_seen, out["done_at"] = True, None
        elif busy_seen and out.get("done_at") is None:
            out["done_at"] = now
        stop.wait(every)


async def _one(lab, paced: bool, truth_every: float) -> dict:
    inv = load_inventory(lab.dir / "inventory.yaml")
    opts = MigrationOptions()
    async with SshPool.from_inventory(inv) as pool:
        names = [n.name for n in inv.resolved_nodes()]
        counter = [0]
        shells = {n: _Counting(pool.shell(n), counter) for n in names}
        ctxs = {n.name: n.ctx for n in inv.resolved_nodes()}
        prom = PrometheusSource.from_inventory(inv, timeout=5)
        source = auto_source("0.8.7", prom, shells, ctxs, expect_repairs=("Block repair worker",),
                             cli_per_second=opts.gate_cli_reads_per_s if paced else None)
        gate = Gate(name="bench", source=source, nodes=tuple(names), interval=INTERVAL_S, consecutive=CONSECUTIVE,
                    settle=opts.gate_settle_s, deadline=600)
        await pool.shell(names[0]).run(C.garage(ctxs[names[0]], "repair", "--all-nodes", "--yes", "blocks"))
        truth: dict = {}
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_truth, args=(lab, truth_every, stop, truth), daemon=True)
        watcher.start()
        t0, before = time.monotonic(), counter[0]
        try:
            out = await gate.run()
        finally:
            passed_at = time.monotonic()
            stop.set()
            watcher.join()
        gate_s = passed_at - t0
        done_at = truth.get("done_at")
        return {"passed": out.passed, "latency_s": None if done_at is None else passed_at - done_at,
                "gate_s": gate_s, "cli_per_s": (counter[0] - before) / gate_s, "looks": out.observations}


def measure(nodes: int, truth_every: float) -> list[dict]:
    """One lab of ``nodes``; the gate measured unpaced, then paced."""
    per_zone = max(1, nodes // 3)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as d:
        lab = Lab.up(LabSpec(dir=d, version="0.8.7", zones=3, per_zone=per_zone,
                             knobs={"anti_entropy_startup_s": 3600, "resync_rate": 30}), timeout=300)
        try:
            for paced in (False, True):
                r = asyncio.run(_one(lab, paced, truth_every))
                rows.append(dict(r, nodes=3 * per_zone, mode="paced" if paced else "every look"))
        finally:
            lab.down()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; print one line per size and mode, with the ratio to the target."""
    ap = argparse.ArgumentParser(prog="benchmarks sync_gate")
    ap.add_argument("--sizes", default="3,12,48")
    ap.add_argument("--truth-every", type=float, default=0.5, help="ground-truth polling period, seconds")
    args = ap.parse_args(argv)
    target = 2 * SCRAPE_S + (CONSECUTIVE - 1) * INTERVAL_S
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; target latency {target:g} s "
          f"(+ {args.truth_every:g} s truth polling)")
    print(f"{'nodes':>5} {'mode':>10} {'passed':>6} {'latency (s)':>11} {'/target':>7} {'gate (s)':>8} "
          f"{'looks':>5} {'CLI cmds/s':>10}")
    for n in (int(x) for x in args.sizes.split(",")):
        for r in measure(n, args.truth_every):
            lat = "n/a" if r["latency_s"] is None else f"{r['latency_s']:.1f}"
            ratio = "n/a" if r["latency_s"] is None else f"{r['latency_s'] / target:.2f}"
            print(f"{r['nodes']:>5} {r['mode']:>10} {r['passed']!s:>6} {lat:>11} {ratio:>7} {r['gate_s']:>8.1f} "
                  f"{r['looks']:>5} {r['cli_per_s']:>10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    from benchmarks import exit_on_signals

    exit_on_signals()
    raise SystemExit(main())
