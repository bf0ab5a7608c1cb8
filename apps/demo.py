"""``make demo``: a real migration of a local lab, 0.7.3 -> 0.8.7, under client traffic.

1. brings up a 3-zone x 2-node lab on Garage 0.7.3 with data (real sshd, real Prometheus);
2. starts a local Prefect server (SQLite under the demo dir; UI at http://127.0.0.1:4200);
3. runs ``minimal_downtime_migration`` with auto-approve while a client writes objects;
4. prints the report, the proof that every acknowledged write is readable, and where to look
   in the UI;
5. takes everything down, unless ``--keep``.

``--approve-in-ui`` turns auto-approve off: the flow pauses at each approval and waits for
you to press Resume in the UI.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from garage_lab.harness import Lab, LabSpec


def _start_prefect(home: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api")
    log = open(home / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited; see {home / 'server.log'}")
            time.sleep(0.5)
    raise RuntimeError("prefect server did not become healthy in 120 s")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the exit code."""
    ap = argparse.ArgumentParser(prog="garage-lab-demo", description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/garage-lab-demo")
    ap.add_argument("--keep", action="store_true", help="leave the lab and the Prefect server running")
    ap.add_argument("--approve-in-ui", action="store_true", help="pause for real approvals in the Prefect UI")
    ap.add_argument("--port", type=int, default=4200)
    args = ap.parse_args(argv)
    d = Path(args.dir)
    if (d / "lab" / "lab.json").exists():
        Lab(d / "lab").down()
    if d.exists():
        shutil.rmtree(d)
    (d / "prefect").mkdir(parents=True)
    t0 = time.monotonic()
    print("== starting the lab and a local Prefect server ...", flush=True)
    server = _start_prefect(d / "prefect", args.port)
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{args.port}/api"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    lab = Lab.up(LabSpec(dir=str(d / "lab"), zones=3, per_zone=2, version="0.7.3"))
    ok = False
    try:
        print(f"== lab up: 3 zones x 2 nodes on Garage v0.7.3 at {lab.dir} ({time.monotonic() - t0:.0f}s)")
        print(f"== inventory: {lab.dir / 'inventory.yaml'}; Prometheus: {lab.prometheus_url}")
        print(f"== Prefect UI: http://127.0.0.1:{args.port}", flush=True)
        from flows.migration import minimal_downtime_migration
        from garage_migrate.ledger import Ledger
        from garage_migrate.plan import MigrationOptions

        from garage_lab import traffic

        creds = lab.s3_credentials
        print(f"== S3 endpoint: {lab.s3_endpoint()} (region {creds['region']}, key {creds['access_key_id']})")
        if args.approve_in_ui:
            print(f"== the flow will pause before the restart on 0.8: open http://127.0.0.1:{args.port}/runs "
                  "and press Resume on the paused run", flush=True)
        # a real S3 client (boto3) writes while the migration runs; verify() reads back with it
        with traffic.Traffic(lab, rate=10) as writes:
            result = asyncio.run(minimal_downtime_migration(
                inventory=str(lab.dir / "inventory.yaml"), auto_approve=not args.approve_in_ui,
                options=MigrationOptions(watch_s=10.0, gate_deadline_s=300.0, gate_consecutive=3)))
        led = Ledger.load(result["ledger"]).doc
        check = traffic.verify(lab)
        truth = lab.inspect(checksums=False)["nodes"]
        print("\n== result")
        print(f"   migration {result['migration_id']}: {led.state}; ledger {result['ledger']}")
        for name, rec in sorted(led.nodes.items()):
            seen = truth[name]["running_version"]  # the lab's ground truth, beside what the ledger says
            print(f"   {name} [{rec.zone}] {rec.version_before} -> {rec.running_version}"
                  + ("" if seen == rec.running_version else f" (the lab says {seen})")
                  + f", backup {rec.backup.path if rec.backup else None}")
        print(f"   client writes (boto3) acknowledged: {writes.acknowledged}, refused: "
              f"{writes.refused}; read back: {check['checked']} keys, lost {len(check['lost'])}, "
              f"changed {len(check['changed'])}")
        print(f"\n== in the UI (http://127.0.0.1:{args.port}): Runs -> the 'minimal-downtime-migration' run: "
              "its Artifacts tab has the plan, the ledger table, the progress and the final report")
        ok = led.state == "done" and check["ok"]
    finally:
        if args.keep:
            print(f"== kept running: `garage-lab down --dir {lab.dir}`; Prefect server pid {server.pid}")
        else:
            lab.down()
            # the flow ran in this process: ship its last queued log lines while the server is
            # up (at exit Prefect's log worker would try once more and print an API error)
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
            print("== lab and Prefect server stopped: no process left behind")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
