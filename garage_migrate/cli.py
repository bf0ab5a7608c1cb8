"""``garage-migrate``: plan, run and follow a migration from a terminal.

    garage-migrate plan   --inventory inv.yaml [--procedure simple|minimal-downtime] [--json]
    garage-migrate run    simple|minimal-downtime --inventory inv.yaml [--auto-approve] [--dry-run]
    garage-migrate status --inventory inv.yaml [--migration-id ID]
    garage-migrate unlock --inventory inv.yaml --migration-id ID
    garage-migrate retry  --inventory inv.yaml --node NODE [--step STEP] [--migration-id ID]
    garage-migrate backups list   --inventory inv.yaml [--migration-id ID] [--json]
    garage-migrate backups verify --inventory inv.yaml [--migration-id ID]
    garage-migrate backups prune  --inventory inv.yaml --keep N [--dry-run]

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

    async with open_runtime(args.inventory, args.procedure, args.migration_id, persist=False) as rt:
        plan = plan_for(rt, args.procedure, MigrationOptions())
        if args.json:
            print(json.dumps(plan.to_json(), indent=2))
            return 0
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
    if args.commands:
        return _print_journal(path, args.node)
    d = Ledger.load(path).doc
    print(f"migration {mid}: {d.procedure}, state {d.state}, ledger {path}")
    if d.error:
        print(f"  error: {d.error}")
    for name, rec in sorted(d.nodes.items()):
        steps = ", ".join(f"{k}={v.status}" + (f" ×{len(v.attempts)}" if len(v.attempts) > 1 else "")
                          for k, v in rec.steps.items())
        print(f"  {name} [{rec.zone or '?'}] {rec.version_before or '?'} -> {rec.running_version or '-'}: {steps}")
    if d.holder is not None:
        from .cluster_lock import describe_holder

        print(f"  held by {describe_holder(d.holder)}")
    for key, g in sorted(d.gates.items()):
        print(f"  gate {key}: {g.decision or g.status} {g.note or ''}".rstrip())
    if args.live:
        from .discovery import discover
        from .ssh import SshPool

        async with SshPool.from_inventory(inv) as pool:
            facts = await discover(inv, pool.shell, resuming=True)
        print("\n" + facts.to_markdown())
    return 0


def _print_journal(ledger_path: Path, node: str | None) -> int:
    """``status --commands [--node N]``: the command journal, one line per finished command."""
    from .journal import CommandJournal

    journal = CommandJournal.beside(ledger_path)
    started = {}
    for e in journal.read(node):
        if e["event"] == "started":
            started[(e["node"], e["command"])] = e
            continue
        if e["event"] == "released":  # an armed act let go (the flip): its finish line follows
            continue
        started.pop((e["node"], e["command"]), None)
        status = e.get("error") or f"exit {e.get('exit_status')}"
        print(f"{_when(e['t'])} {e['node']} {e.get('phase') or '-'}/{e.get('step') or '-'}#{e.get('attempt', 1)} "
              f"{e['kind']:7} {status:>8} {e.get('duration', 0):7.2f}s  {e['command']}")
    for e in started.values():  # an act that started and never finished: the process died in it
        print(f"{_when(e['t'])} {e['node']} {e.get('phase') or '-'}/{e.get('step') or '-'} {e['kind']:7} "
              f"NOT FINISHED  {e['command']}")
    return 0


# ---------------------------------------------------------------------------- backups
class _MigrationDir:
    """One ``<backup.root>/<cluster>/<migration id>/`` directory and what it holds."""

    def __init__(self, path: Path):
        from .backup import load_manifest
        from .errors import BackupError
        from .ledger import Ledger, LedgerDoc, LedgerFormatError

        self.path = path
        self.id = path.name
        self.ledger: LedgerDoc | None = None
        self.ledger_error: str | None = None
        if (path / "ledger.json").exists():
            try:
                self.ledger = Ledger.load(path / "ledger.json").doc
            except (OSError, LedgerFormatError) as exc:
                self.ledger_error = f"{type(exc).__name__}: {exc}"
        # node name -> (manifest path, Manifest or the error that prevented reading it)
        self.manifests: dict[str, tuple[Path, object]] = {}
        for d in sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink()):
            mpath = d / "manifest.json"
            if mpath.exists():
                try:
                    self.manifests[d.name] = (mpath, load_manifest(mpath))
                except BackupError as exc:
                    self.manifests[d.name] = (mpath, exc)

    @property
    def is_migration(self) -> bool:
        """A ledger (even unreadable) or at least one backup manifest."""
        return (self.path / "ledger.json").exists() or bool(self.manifests)

    @property
    def nodes(self) -> dict:
        """The ledger's node records (none when there is no readable ledger)."""
        return self.ledger.nodes if self.ledger is not None else {}

    @property
    def state(self) -> str:
        if self.ledger is not None:
            return self.ledger.state
        return "unreadable ledger" if self.ledger_error else "no ledger"

    @property
    def created(self) -> float:
        """The ledger's creation time, else the oldest backup's, else the directory's mtime."""
        from .backup import Manifest

        if self.ledger is not None:
            return self.ledger.created
        times = [m.created_at.timestamp() for _p, m in self.manifests.values() if isinstance(m, Manifest)]
        return min(times) if times else self.path.stat().st_mtime

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file() and not p.is_symlink())


def _cluster_dir(inv) -> Path:
    return Path(inv.backup.root) / inv.cluster


def _migrations(inv, migration_id: str | None) -> list[_MigrationDir]:
    """The cluster's migration dirs (oldest first), or just ``migration_id``'s."""
    root = _cluster_dir(inv)
    if migration_id is not None:
        from .backup.manifest import check_name

        d = root / check_name(migration_id, "migration id")
        return [_MigrationDir(d)] if d.is_dir() and not d.is_symlink() else []
    if not root.is_dir():
        return []
    found = [_MigrationDir(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.is_symlink()]
    return sorted((m for m in found if m.is_migration), key=lambda m: (m.created, m.id))


def _when(ts: float) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _archive_of(mpath: Path, m) -> tuple[str, Path | None]:
    """``(where, local path or None)`` of a manifest's archive."""
    if m.mode == "controller":
        p = mpath.parent / m.archive
        return str(p), p
    return f"{m.node}:{m.archive}", None


def _backups_list(args, inv) -> int:
    from .backup import Manifest

    migs = _migrations(inv, args.migration_id)
    if not migs:
        print(f"no backups of cluster {inv.cluster} under {_cluster_dir(inv)}"
              + (f" for migration {args.migration_id}" if args.migration_id else ""))
        return 1
    out = []
    for mig in migs:
        rows = []
        for node, (mpath, m) in sorted(mig.manifests.items()):
            if not isinstance(m, Manifest):
                rows.append({"node": node, "manifest": str(mpath), "error": str(m)})
                continue
            where, local = _archive_of(mpath, m)
            row = {"node": node, "archive": where, "mode": m.mode, "size": m.compressed_bytes,
                   "uncompressed": m.uncompressed_bytes, "sha256": m.archive_sha256,
                   "time": m.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"), "source_version": m.source_version,
                   "manifest": str(mpath)}
            if local is not None:
                row["on_disk"] = local.stat().st_size if local.is_file() else None
            rows.append(row)
        out.append({"migration_id": mig.id, "dir": str(mig.path), "state": mig.state,
                    "created": _when(mig.created), "backups": rows})
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for mig in out:
        print(f"migration {mig['migration_id']} (state {mig['state']}, created {mig['created']}): {mig['dir']}")
        if not mig["backups"]:
            print("  no backup")
        for r in mig["backups"]:
            if "error" in r:
                print(f"  {r['node']}: unreadable manifest: {r['error']}")
                continue
            note = ""
            if "on_disk" in r and r["on_disk"] is None:
                note = "  ARCHIVE MISSING"
            elif "on_disk" in r and r["on_disk"] != r["size"]:
                note = f"  ARCHIVE IS {r['on_disk']} BYTES"
            print(f"  {r['node']}  {r['source_version']}  {r['time']}  {r['size']} B  sha256 {r['sha256']}  "
                  f"{r['archive']}{note}")
    return 0


async def _backups_verify(args, inv) -> int:
    from .backup import Manifest, verify_backup, verify_remote_archive
    from .errors import GarageMigrateError

    migs = _migrations(inv, args.migration_id)
    if not migs or not any(m.manifests or m.nodes for m in migs):
        print(f"no backups of cluster {inv.cluster} to verify under {_cluster_dir(inv)}"
              + (f" for migration {args.migration_id}" if args.migration_id else ""))
        return 1
    failed = 0
    checked = 0
    pool = None
    try:
        for mig in migs:
            print(f"migration {mig.id}:")
            for node, (mpath, m) in sorted(mig.manifests.items()):
                checked += 1
                if not isinstance(m, Manifest):
                    failed += 1
                    print(f"  FAIL {node}: {mpath}: {m}")
                    continue
                where, local = _archive_of(mpath, m)
                try:
                    if local is not None:
                        report = await asyncio.to_thread(verify_backup, local, m)
                    else:
                        if pool is None:
                            from .ssh import SshPool

                            pool = SshPool.from_inventory(inv)
                        report = await verify_remote_archive(pool.shell(node), inv.node(node).ctx, m)
                except GarageMigrateError as exc:
                    failed += 1
                    print(f"  FAIL {node}: {where}: {exc}")
                    continue
                problems = [str(p) for p in report.problems]
                rec = mig.nodes[node].backup if node in mig.nodes else None
                if rec is not None and rec.sha256 != m.archive_sha256:
                    problems.append(f"the ledger records sha256 {rec.sha256} for this node's backup, the "
                                    f"manifest {mpath} says {m.archive_sha256}")
                if problems:
                    failed += 1
                    print(f"  FAIL {node}: {where}")
                    for p in problems:
                        print(f"    - {p}")
                else:
                    print(f"  ok   {node}: {where}: {report.files} files, {report.uncompressed_bytes} bytes, "
                          f"sha256 {report.archive_sha256[:16]}")
            # a backup the ledger relies on (the rollback restores it) must still be there
            for node, rec in sorted(mig.nodes.items()):
                b = rec.backup
                if b is not None and node not in mig.manifests:
                    checked += 1
                    failed += 1
                    print(f"  FAIL {node}: the ledger records the backup {b.path} but its manifest "
                          f"{b.manifest} is missing")
    finally:
        if pool is not None:
            await pool.close()
    print(f"{checked - failed} of {checked} backups verified" + (f", {failed} FAILED" if failed else ""))
    return 1 if failed else 0


def _lock_held(d: Path) -> bool:
    """Whether a backup or restore of a node of this migration runs (holds a node dir's .lock)."""
    import errno
    import fcntl

    for lock in d.glob("*/.lock"):
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        finally:
            os.close(fd)
    return False


def _backups_prune(args, inv) -> int:
    import shutil

    from .backup import Manifest

    if args.keep < 0:
        print("garage-migrate: --keep must be 0 or more", file=sys.stderr)
        return 2
    migs = _migrations(inv, None)
    newest_first = sorted(migs, key=lambda m: (m.created, m.id), reverse=True)
    verb = "would delete" if args.dry_run else "deleting"
    deleted = 0
    for i, mig in enumerate(newest_first):
        if i < args.keep:
            print(f"keep   {mig.id} (one of the {args.keep} newest; state {mig.state}, created {_when(mig.created)})")
            continue
        if mig.state == "running":
            print(f"keep   {mig.id}: its ledger says the migration is running")
            continue
        if mig.ledger_error:
            print(f"keep   {mig.id}: its ledger cannot be read ({mig.ledger_error})")
            continue
        if _lock_held(mig.path):
            print(f"keep   {mig.id}: a backup or restore of one of its nodes is running")
            continue
        remote = [f"{m.node}:{m.archive}" for _p, m in mig.manifests.values()
                  if isinstance(m, Manifest) and m.mode == "on-node"]
        print(f"{verb} {mig.path} (state {mig.state}, created {_when(mig.created)}, {mig.bytes_on_disk()} bytes)")
        if remote:
            print(f"  on-node archives are not deleted, remove them on the nodes: {', '.join(remote)}")
        if not args.dry_run:
            shutil.rmtree(mig.path)
        deleted += 1
    if not migs:
        print(f"no backups of cluster {inv.cluster} under {_cluster_dir(inv)}")
    elif not deleted:
        print("nothing to prune")
    return 0


def _backups(args) -> int:
    from .inventory import load_inventory

    inv = load_inventory(args.inventory)
    if args.backups_cmd == "list":
        return _backups_list(args, inv)
    if args.backups_cmd == "verify":
        return asyncio.run(_backups_verify(args, inv))
    return _backups_prune(args, inv)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _TemporaryServer:
    """One ``prefect server start`` for one terminal run, stopped by PID whatever happens.

    Prefect's ephemeral mode is not used: the flow and the prompt thread each started one
    (lab-environment trap 4) and a server could outlive the command. This one has its own
    SQLite database in a temporary directory, serves the UI (so that the run's page, where a
    person can approve, is a real URL while the command runs) and is killed with its process
    group on exit, on failure and on interruption.
    """

    def __init__(self):
        import tempfile

        self.home = tempfile.mkdtemp(prefix="garage-migrate-prefect-")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 300.0) -> str:
        import sqlite3
        import subprocess
        import time
        import urllib.request

        from .procutil import die_with_parent

        env = dict(os.environ, PREFECT_HOME=self.home, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.home}/prefect.db",
                   PREFECT_UI_API_URL=f"{self.url}/api", PREFECT_LOGGING_LEVEL="WARNING")
        env.pop("PREFECT_API_URL", None)
        exe = Path(sys.executable).with_name("prefect")
        log = open(Path(self.home) / "server.log", "wb")
        try:  # a migrated copy starts in seconds; a fresh file runs every migration first
            from .prefectdb import migrated_sqlite

            migrated_sqlite(Path(self.home) / "prefect.db", env, prefect=str(exe))
        except (OSError, RuntimeError, sqlite3.Error, subprocess.SubprocessError) as exc:
            log.write(f"no migrated database template ({type(exc).__name__}: {exc}): "
                      "the server migrates a fresh file\n".encode())
            (Path(self.home) / "prefect.db").unlink(missing_ok=True)  # never half a copy
        self.proc = subprocess.Popen([str(exe), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     # a SIGKILL of this command still stops its server
                                     start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the temporary Prefect server exited ({self.proc.returncode}); "
                                   f"see {self.home}/server.log")
            try:
                with urllib.request.urlopen(f"{self.url}/api/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the temporary Prefect server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        import shutil
        import signal
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(self.home, ignore_errors=True)


def _answer_pauses(box: dict, ui: str | None, no_input: bool, stop: threading.Event) -> None:
    """Watch the flow run; when it pauses for a decision, ask at the terminal and resume it.

    Without a terminal on stdin (cron, CI) nothing is asked: the run's URL is printed and the
    run waits for an answer there (or, with ``--no-input``, the run is stopped: not approved).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    interactive = sys.stdin is not None and sys.stdin.isatty() and not no_input

    async def loop():
        seen = set()
        async with get_client() as client:
            while not stop.is_set():
                fr_id = box.get("id")
                if fr_id is None:
                    await asyncio.sleep(0.3)
                    continue
                fr = await client.read_flow_run(fr_id)
                st = fr.state
                if st is None or not st.is_paused() or st.state_details.pause_key in seen:
                    await asyncio.sleep(0.5)
                    continue
                key = st.state_details.pause_key
                keyset = st.state_details.run_input_keyset or {}
                description, choices = "", []
                try:
                    if keyset:
                        schema = json.loads(await client.read_flow_run_input(fr_id, keyset["schema"]))
                        choices = _choices(schema)
                except Exception:  # noqa: BLE001 - not written yet: look again
                    # Prefect proposes the Paused state first and saves the form (schema,
                    # description) just after it: a prompt made in between would show no plan
                    # and take no answer at all (seen under load)
                    await asyncio.sleep(0.5)
                    continue
                seen.add(key)
                for _ in range(20 if keyset else 0):  # saved just after the schema, when the pause has one
                    try:
                        description = json.loads(await client.read_flow_run_input(fr_id, keyset["description"]))
                        break
                    except Exception:  # noqa: BLE001 - the prompt works without it, after a few looks
                        await asyncio.sleep(0.25)
                where = f"{ui}/runs/flow-run/{fr_id}" if ui else f"flow run {fr_id}"
                print("\n" + "=" * 72 + f"\nPAUSED for a decision at {key}\n{description}\n" + "=" * 72, flush=True)
                if no_input:
                    print(f"garage-migrate: --no-input: nobody can answer {key}; stopping the run (not approved, "
                          f"nothing done)", file=sys.stderr, flush=True)
                    box["stopped"] = key
                    await client.set_flow_run_state(fr_id, Cancelled(message=f"--no-input: not approved at {key}"),
                                                    force=True)
                    return
                if not interactive:
                    print(f"No terminal to ask on: answer at {where} (Resume), or POST "
                          f"/api/flow_runs/{fr_id}/resume with {{\"run_input\": {{\"action\": ...}}}}; waiting.",
                          flush=True)
                    continue
                while True:
                    answer = (await asyncio.to_thread(input, f"decision {choices or ''}: ")).strip()
                    if answer not in choices:
                        print(f"not a decision: choose one of {choices} (nothing is decided by default)")
                        continue
                    note = (await asyncio.to_thread(input, "note: ")).strip()
                    resp = await client.resume_flow_run(fr_id, run_input={"action": answer, "note": note})
                    if getattr(resp.status, "value", resp.status) in ("ACCEPT", StateType.RUNNING.value):
                        break
                    print(f"refused by Prefect: {getattr(resp.details, 'reason', resp)}")
                    now = (await client.read_flow_run(fr_id)).state
                    if not (now and now.is_paused() and now.state_details.pause_key == key):
                        break  # the pause is over (answered elsewhere, cancelled): nothing to answer
    try:
        asyncio.run(loop())
    except EOFError:
        print("garage-migrate: stdin closed: answer the pause in the Prefect UI", file=sys.stderr)


def _choices(schema: dict) -> list[str]:
    """The ``action`` enum of a decision form's JSON schema."""
    prop = (schema.get("properties") or {}).get("action") or {}
    if "enum" in prop:
        return list(prop["enum"])
    ref = prop.get("$ref") or next((a.get("$ref") for a in prop.get("allOf", []) if "$ref" in a), None)
    if ref:
        return list(((schema.get("definitions") or schema.get("$defs") or {}).get(ref.rsplit("/", 1)[-1]) or {})
                    .get("enum", []))
    return []


def _interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


def _run(args) -> int:
    import signal

    from .inventory import load_inventory
    from .plan import MigrationOptions
    from .precheck import check_before_connecting, check_migration_id

    # out-of-range options and bad inputs are refused before a server starts or a node is reached
    opts = MigrationOptions(watch_s=args.watch, gate_deadline_s=args.gate_deadline)
    if not 1 <= args.pause_timeout <= 7 * 86400:
        print(f"garage-migrate: --pause-timeout {args.pause_timeout} is not in 1..{7 * 86400} seconds", file=sys.stderr)
        return 2
    if args.migration_id is not None:
        check_migration_id(args.migration_id)
    check_before_connecting(load_inventory(args.inventory), opts)
    _prefect_env()
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        if not args.dry_run:
            # a run the cluster lock will refuse says so now, before a server takes tens of
            # seconds to start (read-only; the flow's own lock still decides everything else)
            from .lock_precheck import refusal

            why = asyncio.run(refusal(args.inventory, args.procedure, args.migration_id))
            if why is not None:
                print(f"garage-migrate: refused: {why}", file=sys.stderr)
                return 3
        server = _TemporaryServer()
    # a SIGTERM (a CI timeout, a kill) must still stop the server: make it an exception
    signal.signal(signal.SIGTERM, _interrupt)
    stop = threading.Event()
    try:
        ui = None
        if server is not None:
            os.environ["PREFECT_API_URL"] = server.start() + "/api"
            ui = server.url
        else:
            ui = os.environ["PREFECT_API_URL"].removesuffix("/api")
        # prefect reads its settings at import: import it only once PREFECT_API_URL is set
        from flows.migration import minimal_downtime_migration, simple_migration

        fl = simple_migration if args.procedure == "simple" else minimal_downtime_migration
        box: dict = {}

        def on_start(flow, flow_run, state):  # noqa: ARG001 - Prefect hook signature
            box["id"] = flow_run.id
            print(f"flow run {flow_run.name}: {ui}/runs/flow-run/{flow_run.id}", flush=True)

        watcher = threading.Thread(target=_answer_pauses, args=(box, ui, args.no_input, stop), daemon=True)
        fl = fl.with_options(on_running=[on_start])
        watcher.start()
        from prefect.exceptions import Abort

        try:
            state = asyncio.run(fl(inventory=args.inventory, migration_id=args.migration_id, options=opts,
                                   dry_run=args.dry_run, auto_approve=args.auto_approve,
                                   pause_timeout=args.pause_timeout, window_end=args.window_end,
                                   window_minutes=args.window_minutes,
                                   backup_max_age_hours=args.backup_max_age_hours, return_state=True,
                                   # a temporary server is gone after the run: nothing to schedule on
                                   schedule_watch=server is None))
        except Abort as exc:  # the run stopped without a state: cancelled, or taken over elsewhere
            state = None
            if not box.get("stopped"):
                print(f"garage-migrate: the run stopped: {exc}", file=sys.stderr)
                return 1
        stop.set()
        if box.get("stopped"):
            print(f"garage-migrate: stopped at {box['stopped']} (--no-input): not approved", file=sys.stderr)
            return 1
        if state.is_cancelled():
            print(f"garage-migrate: {state.message}", file=sys.stderr)
            return 3
        if not state.is_completed():
            exc = state.result(raise_on_failure=False)
            print(f"garage-migrate: the migration {state.type.value.lower()}: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(state.result(), indent=1, default=str))
        return 0
    except KeyboardInterrupt:
        print("garage-migrate: interrupted", file=sys.stderr)
        return 130
    finally:
        stop.set()
        if server is not None:
            _drain_prefect()
            server.stop()


def _drain_prefect(timeout: float = 10.0) -> None:
    """Send the logs and events still queued to the server before it stops (bounded)."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
    except ImportError:
        return
    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception:  # noqa: BLE001 - a drain that fails must not keep the server alive
            pass


async def _unlock(args) -> int:
    import getpass
    import socket

    from .cluster_lock import break_lock, lock_nodes
    from .discovery import discover
    from .inventory import load_inventory
    from .ledger import Ledger
    from .ssh import SshPool

    inv = load_inventory(args.inventory)
    path = Path(inv.backup.root) / inv.cluster / args.migration_id / "ledger.json"
    ledger = Ledger.load(path) if path.exists() else None
    async with SshPool.from_inventory(inv) as pool:
        facts = await discover(inv, pool.shell, resuming=True)
        removed = await break_lock(pool.shell, lock_nodes(inv, facts), args.migration_id, ledger,
                                   by=f"{getpass.getuser()}@{socket.gethostname()} (garage-migrate unlock)")
    if not removed:
        print(f"no node holds a lock record of migration {args.migration_id}: nothing to unlock")
        return 0
    print(f"cluster lock of migration {args.migration_id} broken on {', '.join(removed)}"
          + (f" (recorded in {path})" if ledger is not None else " (no ledger to record it in)"))
    return 0


def _window_args(r) -> None:
    from datetime import datetime

    w = r.add_mutually_exclusive_group()
    w.add_argument("--window-end", type=datetime.fromisoformat, metavar="ISO-TIME",
                   help="when the maintenance window closes, with a zone (2026-12-06T04:00:00+00:00)")
    w.add_argument("--window-minutes", type=float, metavar="M", help="the maintenance window's length from now")
    r.add_argument("--backup-max-age-hours", type=float, default=24.0, metavar="H",
                   help="a backup older than this is taken again before the flip (default 24)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``garage-migrate`` console script."""
    ap = argparse.ArgumentParser(prog="garage-migrate", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="print the plan (reads the cluster, changes nothing)")
    p.add_argument("--inventory", required=True)
    p.add_argument("--procedure", choices=["simple", "minimal-downtime"], default="minimal-downtime")
    p.add_argument("--migration-id")
    p.add_argument("--json", action="store_true", help="the plan as JSON: every action with its node, kind and argv")
    r = sub.add_parser("run", help="run a migration flow")
    r.add_argument("procedure", choices=["simple", "minimal-downtime"])
    r.add_argument("--inventory", required=True)
    r.add_argument("--migration-id")
    r.add_argument("--auto-approve", action="store_true")
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--pause-timeout", type=int, default=3600)
    r.add_argument("--watch", type=float, default=60.0, help="post-upgrade watch window, seconds")
    r.add_argument("--gate-deadline", type=float, default=600.0)
    _window_args(r)
    r.add_argument("--no-input", action="store_true",
                   help="never wait for a person: a pause for a decision stops the run (not approved)")
    u = sub.add_parser("unlock", help="break the cluster lock of a migration whose run is gone (recorded)")
    u.add_argument("--inventory", required=True)
    u.add_argument("--migration-id", required=True, help="the migration that holds the lock (see status)")
    s = sub.add_parser("status", help="the ledger of a migration (and live facts with --live)")
    s.add_argument("--inventory", required=True)
    s.add_argument("--migration-id")
    s.add_argument("--live", action="store_true")
    s.add_argument("--commands", action="store_true", help="the command journal (every remote command run)")
    s.add_argument("--node", help="with --commands: only this node's commands")
    from .cli_retry import add_parser as add_retry

    add_retry(sub)
    b = sub.add_parser("backups", help="list, verify or prune this cluster's metadata backups")
    bsub = b.add_subparsers(dest="backups_cmd", required=True)
    bl = bsub.add_parser("list", help="per node: archive, size, sha256, time, source version")
    bl.add_argument("--inventory", required=True)
    bl.add_argument("--migration-id", help="one migration (default: every migration of the cluster)")
    bl.add_argument("--json", action="store_true")
    bv = bsub.add_parser("verify", help="read every archive back against its manifest; exit 1 on any problem")
    bv.add_argument("--inventory", required=True)
    bv.add_argument("--migration-id", help="one migration (default: every migration of the cluster)")
    bp = bsub.add_parser("prune", help="delete the migration dirs older than the N newest (never a running one)")
    bp.add_argument("--inventory", required=True)
    bp.add_argument("--keep", type=int, required=True, metavar="N")
    bp.add_argument("--dry-run", action="store_true", help="print what would be deleted")
    from . import cli_watch

    cli_watch.add_parser(sub)
    args = ap.parse_args(argv)
    from pydantic import ValidationError

    from .errors import GarageMigrateError

    try:
        if args.cmd == "plan":
            return asyncio.run(_plan(args))
        if args.cmd == "status":
            return asyncio.run(_status(args))
        if args.cmd == "backups":
            return _backups(args)
        if args.cmd == "unlock":
            return asyncio.run(_unlock(args))
        if args.cmd == "retry":
            from .cli_retry import main as retry

            return retry(args)
        if args.cmd == "watch":
            return cli_watch.run(args)
        code = _run(args)
        # Prefect's log and event workers would try, at interpreter exit, to reach the
        # temporary server that is gone by now, and hang: the run is over, its server stopped,
        # so leave now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    except GarageMigrateError as exc:
        print(f"garage-migrate: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:  # an option out of range (MigrationOptions)
        print(f"garage-migrate: invalid option: {exc.errors(include_url=False)[0]['msg']} "
              f"({'.'.join(map(str, exc.errors()[0]['loc']))})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
