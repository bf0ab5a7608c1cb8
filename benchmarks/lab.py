"""Lab bring-up: time to healthy (SSH-reachable, Prometheus scraping every node) and memory.

For each size it brings a lab up, records the time until every daemon sees its peers, sshd
answers on every address and Prometheus reports every target up, sums the daemons' RSS,
and tears it down. Prints figures; asserts nothing (these machines are shared and noisy).

    python -m benchmarks lab [--sizes 6,12,48]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from garage_lab.harness import Lab, LabSpec


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(nodes: int, subnet: str) -> dict:
    """Bring up a lab of ``nodes`` (3 zones) and measure it."""
    per_zone = max(1, nodes // 3)
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as d:
        t0 = time.monotonic()
        lab = Lab.up(LabSpec(dir=d, zones=3, per_zone=per_zone, subnet=subnet), timeout=300)
        up = time.monotonic() - t0
        try:
            st = lab.status()
            daemons = [n["pid"] for n in st["nodes"]]
            rss = sum(_rss_kib(p) for p in daemons)
            prom = _rss_kib(lab.info["pids"]["prometheus"])
            sshd = sum(_rss_kib(p) for p in lab.info["pids"]["sshd_shards"])
        finally:
            lab.down()
    return {"nodes": 3 * per_zone, "up_s": up, "daemons_rss_mib": rss / 1024, "per_daemon_mib": rss / 1024 / len(daemons),
            "prometheus_mib": prom / 1024, "sshd_mib": sshd / 1024}


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; print one line per size."""
    ap = argparse.ArgumentParser(prog="benchmarks lab")
    ap.add_argument("--sizes", default="6,12,48")
    args = ap.parse_args(argv)
    print(f"{'nodes':>5} {'up (s)':>7} {'daemons RSS (MiB)':>18} {'per daemon':>10} {'prometheus':>10} {'sshd':>6}")
    for i, n in enumerate(int(x) for x in args.sizes.split(",")):
        r = measure(n, f"127.41.{200 + i}")
        print(f"{r['nodes']:>5} {r['up_s']:>7.1f} {r['daemons_rss_mib']:>18.1f} {r['per_daemon_mib']:>10.1f} "
              f"{r['prometheus_mib']:>10.1f} {r['sshd_mib']:>6.1f}", flush=True)
    print("target (issue 2): 3x2 healthy, reachable over SSH and scraped within 20 s")
    return 0


if __name__ == "__main__":
    from benchmarks import exit_on_signals

    exit_on_signals()
    raise SystemExit(main())
