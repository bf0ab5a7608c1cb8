"""Running a whole migration flow under a fault, and the checks that nothing was lost.

Used by the fault-matrix tests (``docs/faults.md``): the real flow runs in a worker thread
under the session's Prefect server, as in ``test_procedures``; this thread answers its pauses
through the Prefect API, as a person would, and may act on the lab when the ledger reaches a
point (inject a fault at a phase boundary, lift it when a question is asked).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from garage_migrate.ledger import Ledger
from garage_migrate.plan import MigrationOptions
from tests.e2e.stack import form_not_saved_yet

FAST = MigrationOptions(watch_s=2.0, gate_deadline_s=90.0, gate_consecutive=2)
FLOW_NAMES = {"minimal-downtime": "minimal-downtime-migration", "simple": "simple-migration"}


def ledger_path(lab, migration_id: str) -> Path:
    """Where the migration ``migration_id`` of this lab keeps its ledger."""
    import yaml

    inv = yaml.safe_load((lab.dir / "inventory.yaml").read_text())
    return Path(inv["backup"]["root"]) / inv["cluster"] / migration_id / "ledger.json"


def ledger_doc(lab, migration_id: str) -> dict:
    """The ledger as JSON ({} before it exists or while it is being replaced)."""
    try:
        return json.loads(ledger_path(lab, migration_id).read_text())
    except (OSError, ValueError):
        return {}


def step_status(doc: dict, node: str, key: str) -> str | None:
    """The ledger's status of node step ``key`` (``phase:kind``) on ``node``."""
    return ((doc.get("nodes") or {}).get(node, {}).get("steps") or {}).get(key, {}).get("status")


def phase_ended(doc: dict, phase: str) -> bool:
    """Whether the ledger records the end of ``phase``."""
    return any(e.get("kind") == "phase" and e.get("message") == f"end {phase}" for e in doc.get("events", []))


class FlowRun:
    """One flow run in a worker thread, watched from this one.

    Args:
        procedure: ``simple`` or ``minimal-downtime``.
        lab: the lab (its inventory is the flow's).
        migration_id: the run's migration id (the ledger it writes).
        on_pause: ``(key) -> answer dict | None`` for each pause of this run (None: not now);
            by default every pause is unexpected and answered ``abort``.
        when: ``[(predicate(ledger dict) -> bool, action())]``: each action runs once, the first
            time its predicate holds (the ledger is polled every 0.2 s).
    """

    def __init__(self, procedure: str, lab, migration_id: str, *, options: MigrationOptions = FAST,
                 auto_approve: bool = True, on_pause: Callable[[str], dict | None] | None = None,
                 when: list | None = None):
        self.procedure, self.lab, self.mid = procedure, lab, migration_id
        self.options, self.auto_approve = options, auto_approve
        self.on_pause = on_pause or (lambda key: {"action": "abort", "note": "unexpected pause in a fault test"})
        self.when = list(when or [])
        self.pauses: list[str] = []
        self.fired: list[tuple[int, float]] = []
        self.errors: list[str] = []

    def _flow(self):
        from flows.migration import minimal_downtime_migration, simple_migration

        return {"simple": simple_migration, "minimal-downtime": minimal_downtime_migration}[self.procedure]

    def _poll_pauses(self, answered: set) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName
        from prefect.flow_runs import resume_flow_run

        inv = str(self.lab.dir / "inventory.yaml")
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAMES[self.procedure]])))
        for run in runs:
            if run.parameters.get("inventory") != inv or run.parameters.get("migration_id") != self.mid:
                continue
            if not (run.state and run.state.is_paused()):
                continue
            key = run.state.state_details.pause_key
            if (run.id, key) in answered:
                continue
            if key not in self.pauses:
                self.pauses.append(key)
            answer = self.on_pause(key)
            if answer is None:
                continue
            try:
                resume_flow_run(run.id, run_input=answer)
            except RuntimeError as e:
                # refused while Prefect has not saved the pause's form yet (it does so just
                # after the Paused state): answered on a later look
                if form_not_saved_yet(str(e)):
                    continue
                raise
            answered.add((run.id, key))

    def run(self, limit: float = 500) -> tuple[dict | None, BaseException | None]:
        """Run the flow to its end; return (result, error)."""
        box: dict = {}
        finished = threading.Event()
        inv = str(self.lab.dir / "inventory.yaml")

        def worker():
            try:
                box["result"] = asyncio.run(self._flow()(inventory=inv, migration_id=self.mid, options=self.options,
                                                         auto_approve=self.auto_approve, pause_timeout=300))
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                box["error"] = exc
            finally:
                finished.set()

        th = threading.Thread(target=worker, daemon=True, name=f"fault-flow-{self.mid}")
        th.start()
        answered: set = set()
        deadline = time.monotonic() + limit
        last_pause_poll = 0.0
        while not finished.wait(0.2):
            doc = ledger_doc(self.lab, self.mid)
            for i, (pred, action) in enumerate(self.when):
                if i not in {k for k, _ in self.fired} and doc and pred(doc):
                    action()
                    self.fired.append((i, time.time()))
            if time.monotonic() - last_pause_poll > 1.0:
                last_pause_poll = time.monotonic()
                try:
                    self._poll_pauses(answered)
                except Exception as exc:  # noqa: BLE001 - the API may be briefly busy; keep polling
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the flow of {self.mid} did not end within {limit:.0f}s (pauses {self.pauses})")
        th.join(30)
        return box.get("result"), box.get("error")


def service_events(lab) -> list[dict]:
    """The lab's service events (every start, stop and kill of a daemon)."""
    path = lab.dir / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def backups_verify(lab, migration_id: str) -> str:
    """``garage-migrate backups verify``: every archive read back against its manifest
    (the metadata checksums recorded when it was taken); fails the test on any problem."""
    from garage_migrate import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = cli.main(["backups", "verify", "--inventory", str(lab.dir / "inventory.yaml"),
                       "--migration-id", migration_id])
    assert rc == 0, out.getvalue()
    return out.getvalue()


def assert_done_and_nothing_lost(lab, res: dict, target: str = "0.8.7", traffic=None) -> Ledger:
    """The migration is done, every node runs ``target`` from a verified backup of this
    migration, the backups read back against their manifests, counters equal the truth, and
    every acknowledged write is readable."""
    from garage_lab import traffic as lab_traffic
    from tests.e2e.test_procedures import _assert_buckets_match_ground_truth

    assert res and res["state"] == "done", res
    led = Ledger.load(res["ledger"])
    assert led.doc.state == "done"
    truth = lab.inspect(checksums=False)["nodes"]
    assert {n: t["running_version"] for n, t in truth.items()} == {n: target for n in truth}
    for n in truth:
        b = led.node(n).backup
        assert b is not None and Path(b.path).is_file() and b.version == "0.7.3", (n, b)
    backups_verify(lab, led.doc.migration_id)
    _assert_buckets_match_ground_truth(lab, lab.nodes[0]["name"])
    if traffic is not None:
        assert traffic.acknowledged > 0
        check = lab_traffic.verify(lab)
        assert check["ok"], {k: (v[:5] if isinstance(v, list) else v) for k, v in check.items()}
    return led
