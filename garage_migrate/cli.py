"""``garage-migrate``: plan, run and follow a migration from a terminal.

    garage-migrate plan   --inventory inv.yaml [--procedure simple|minimal-downtime]
    garage-migrate run    simple|minimal-downtime --inventory inv.yaml [--auto-approve] [--dry-run]
    garage-migrate status --inventory inv.yaml [--migration-id ID]

``run`` executes the same Prefect flow the UI starts. When the flow pauses for an approval,
the terminal shows the form's text and asks; ``--auto-approve`` follows the flow parameter's
rule (only gates that passed cleanly are approved; anything abnormal still asks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
from pathlib import Path


def _prefect_env() -> None:
    # lab-environment traps 4 and 5: analytics noise and tight start-up timeouts
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


async def _plan(args) -> int:
    from .plan import MigrationOptions
    from .runtime import open_runtime, plan_for

    async with open_runtime(args.inventory, args.procedure, args.migration_id, dry_run=True, persist=False) as rt:
        plan = plan_for(rt, args.procedure, MigrationOptions())
        print(plan.to_text())
        print("\n" + rt.facts.to_markdown())
    return 0


async def _status(args) -> int:
    from .inventory import load_inventory
    from .ledger import Ledger
    from .runtime import default_migration_id

    inv = load_inventory(args.inventory)
    mid = args.migration_id or default_migration_id(inv)
    path = Path(inv.backup.root) / inv.cluster / mid / "ledger.json"
    if not path.exists():
        print(f"no migration {mid} (no ledger at {path})")
        return 1
    led = Ledger.load(path)
    d = led.data
    print(f"migration {mid}: {d['procedure']}, state {d['state']}, ledger {path}")
    for name, rec in sorted(d["nodes"].items()):
        steps = ", ".join(f"{k}={v['status']}" for k, v in rec["steps"].items())
        print(f"  {name} [{rec.get('zone', '?')}] {rec.get('version_before', '?')} -> "
              f"{rec.get('running_version', '-')}: {steps}")
    for key, g in sorted(d["gates"].items()):
        print(f"  gate {key}: {g.get('decision') or g.get('status')} {g.get('note', '')}".rstrip())
    if args.live:
        from .discovery import discover
        from .ssh import SshPool

        async with SshPool.from_inventory(inv) as pool:
            facts = await discover(inv, pool.shell, resuming=True)
        print("\n" + facts.to_markdown())
    return 0


def _answer_pauses(flow_run_box: dict, auto_approve: bool, stop: threading.Event) -> None:
    """Watch the flow run; when it pauses for input, ask at the terminal and resume it."""
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    async def loop():
        seen = set()
        async with get_client() as client:
            while not stop.is_set():
                fr_id = flow_run_box.get("id")
                if fr_id is None:
                    await asyncio.sleep(0.3)
                    continue
                fr = await client.read_flow_run(fr_id)
                st = fr.state
                if st is not None and st.is_paused():
                    key = (st.state_details.pause_key if st.state_details else None) or str(st.timestamp)
                    if key not in seen:
                        seen.add(key)
                        schema_key = st.state_details.run_input_keyset
                        description = ""
                        if schema_key:
                            try:
                                desc = await client.read_flow_run_input(fr_id, schema_key["description"])
                                description = json.loads(desc)
                            except Exception:  # noqa: BLE001 - the prompt still works without it
                                description = ""
                        print("\n" + "=" * 72 + f"\nPAUSED at {key}\n" + (description or "") + "\n" + "=" * 72)
                        answer = input("action [approve/abort/wait_more/proceed_anyway/retry/rollback]: ").strip()
                        note = input("note: ").strip()
                        await resume_flow_run(fr_id, run_input={"action": answer, "note": note})
                await asyncio.sleep(0.5)
    asyncio.run(loop())


def _run(args) -> int:
    _prefect_env()
    from prefect.context import FlowRunContext  # noqa: F401  (imports Prefect settings early)

    from flows.migration import minimal_downtime_migration, simple_migration
    from garage_migrate.plan import MigrationOptions

    fl = simple_migration if args.procedure == "simple" else minimal_downtime_migration
    opts = MigrationOptions(watch_s=args.watch, gate_deadline_s=args.gate_deadline)
    box: dict = {}
    stop = threading.Event()

    def on_start(flow, flow_run, state):  # noqa: ARG001 - Prefect hook signature
        box["id"] = flow_run.id

    watcher = threading.Thread(target=_answer_pauses, args=(box, args.auto_approve, stop), daemon=True)
    fl = fl.with_options(on_running=[on_start])
    watcher.start()
    try:
        result = fl(inventory=args.inventory, migration_id=args.migration_id, options=opts,
                    dry_run=args.dry_run, auto_approve=args.auto_approve, pause_timeout=args.pause_timeout)
    finally:
        stop.set()
    print(json.dumps(result, indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``garage-migrate`` console script."""
    ap = argparse.ArgumentParser(prog="garage-migrate", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="print the plan (reads the cluster, changes nothing)")
    p.add_argument("--inventory", required=True)
    p.add_argument("--procedure", choices=["simple", "minimal-downtime"], default="minimal-downtime")
    p.add_argument("--migration-id")
    r = sub.add_parser("run", help="run a migration flow")
    r.add_argument("procedure", choices=["simple", "minimal-downtime"])
    r.add_argument("--inventory", required=True)
    r.add_argument("--migration-id")
    r.add_argument("--auto-approve", action="store_true")
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--pause-timeout", type=int, default=3600)
    r.add_argument("--watch", type=float, default=60.0, help="post-upgrade watch window, seconds")
    r.add_argument("--gate-deadline", type=float, default=600.0)
    s = sub.add_parser("status", help="the ledger of a migration (and live facts with --live)")
    s.add_argument("--inventory", required=True)
    s.add_argument("--migration-id")
    s.add_argument("--live", action="store_true")
    args = ap.parse_args(argv)
    from .errors import GarageMigrateError

    try:
        if args.cmd == "plan":
            return asyncio.run(_plan(args))
        if args.cmd == "status":
            return asyncio.run(_status(args))
        return _run(args)
    except GarageMigrateError as exc:
        print(f"garage-migrate: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
