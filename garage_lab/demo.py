"""``make demo``: bring a lab up, show it as an operator would see it, and take it down.

The migration flows will run here once they exist (issue 4); until then the demo shows the
cluster they will migrate: status over SSH, the inventory an orchestrator receives, what
Prometheus scrapes, and the ground truth the tests check against.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

from .harness import Lab, LabSpec


async def _over_ssh(lab: Lab, node: dict, command: str) -> str:
    import asyncssh

    async with asyncssh.connect(node["addr"], port=lab.spec.ssh_port, username="root",
                                client_keys=[str(lab.dir / "id_ed25519")],
                                known_hosts=str(lab.dir / "known_hosts"), connect_timeout=5) as conn:
        return (await conn.run(command, check=True, timeout=30)).stdout


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the exit code."""
    ap = argparse.ArgumentParser(prog="garage-lab-demo")
    ap.add_argument("--dir", default="/tmp/garage-lab-demo")
    ap.add_argument("--keep", action="store_true", help="leave the lab running")
    args = ap.parse_args(argv)
    d = Path(args.dir)
    if (d / "lab.json").exists():
        Lab(d).down()
    if d.exists():
        shutil.rmtree(d)
    t0 = time.monotonic()
    lab = Lab.up(LabSpec(dir=str(d), zones=3, per_zone=2, version="0.7.3"))
    try:
        print(f"== lab up in {time.monotonic() - t0:.1f}s: 3 zones x 2 nodes on Garage v0.7.3 at {lab.dir}")
        node = lab.nodes[0]
        inv = (lab.dir / "inventory.yaml").read_text()
        print("== inventory.yaml (what the orchestrator receives)\n" + inv)
        binary = lab.node_dir(node["name"]) / "usr/local/bin/garage"
        config = lab.node_dir(node["name"]) / "etc/garage.toml"
        print(f"== ssh {node['addr']}: garage status")
        print(asyncio.run(_over_ssh(lab, node, f"{binary} -c {config} status")))
        print(f"== ssh {node['addr']}: garage stats")
        print(asyncio.run(_over_ssh(lab, node, f"{binary} -c {config} stats")))
        print(f"== Prometheus at {lab.prometheus_url}: {lab.prometheus_up()} of {len(lab.nodes)} targets up")
        truth = lab.inspect(checksums=False)
        print("== ground truth (garage-lab inspect, never read by the orchestrator)")
        print(json.dumps({n: {k: v[k] for k in ("running_version", "pid", "lock_holder")}
                          for n, v in truth["nodes"].items()}, indent=1))
    finally:
        if not args.keep:
            lab.down()
            print("== lab down: no process left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
