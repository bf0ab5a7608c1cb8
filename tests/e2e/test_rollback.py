"""Issue 5's rollback "Done when": after a simulated failed start of 0.8 in the minimal-downtime
flip, the "roll back every node" decision returns the whole cluster to 0.7.3 with its metadata
identical to this migration's backups, every node healthy, and no acknowledged write lost that
a backup holds.

How the failure is staged: the lab's ``refuse-start`` fault makes the next starts of one node
exit at once. It must not hit the rolling-backup restarts (those are 0.7 restarts that must
succeed), so a watcher injects it only once the ledger shows the ``approve-flip`` gate decided
(or the flip phase started), i.e. after the last 0.7 restart and before the 0.8 starts. The flow
then pauses with the node-failure decision; the test stops the client traffic, clears the fault
(the 0.7 restart of the rollback must work) and answers ``rollback`` through the Prefect API,
as an operator would in the UI.

What "the same metadata" means here (checked file by file, against the archives themselves):
the restored dir of every node is byte-identical to its backup right after the rollback. Two
things could legitimately change it once the 0.7 daemon runs again, and the test rules them out
rather than ignoring them: client writes (the traffic is stopped before the rollback starts),
and the daemon's own background work on its sled DB (``db/snap.<generation>``): the periodic
anti-entropy sync, 20 s after start, merges the entries the other nodes' (later) backups hold,
and the Merkle updater drains a ``merkle_todo`` left in a backup. Anti-entropy is pushed back
with a lab knob for the duration of the checks (its work is expected and harmless: it only
adds entries); a node whose backup holds pending Merkle work must still be identical in every
other file and hold exactly the backup's entries.

What happens to acknowledged writes (measured, not assumed): a restore returns each node to
its own backup point, and the minimal-downtime procedure backs up one zone after the other
while clients write. The lab, like Garage, stores an object on one node per zone and
acknowledges it after 2 of 3 replicas, and a read asks every replica and returns the newest
entry. So after the rollback a write is readable exactly when at least one of its replicas'
backups holds it. Every write acknowledged before the last zone stopped for its backup was
held by a replica backed up later, and survives; writes acknowledged after that (during the
last zone's round, the staging, and on the two 0.8 nodes that did start while the flow waited
for the decision) are lost by design: a restore goes back to the backup point, and the
rollback flow's docstring says so.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import tarfile
import threading
import time
from pathlib import Path

import pytest
import zstandard

from garage_lab import traffic
from garage_migrate.facts import parse_status
from garage_migrate.inventory import load_inventory
from garage_migrate.ledger import Ledger, LedgerFormatError
from garage_migrate.plan import MigrationOptions
from tests.conftest import garage as _garage
from garage_migrate.runtime import default_migration_id
from tests.e2e.stack import gate_of

FAST = MigrationOptions(watch_s=2.0, gate_deadline_s=90.0, gate_consecutive=2)
SOURCE = "0.7.3"
VICTIM = "node-b1"  # fails to start on 0.8
NOTE = "e2e"


# ---------------------------------------------------------------------------- helpers


def _tree_digest(root: Path) -> tuple[str, dict[str, str]]:
    """``Lab.meta_checksum``'s algorithm on any directory (relative path + content of every
    file, in sorted order), plus the SHA-256 of each file to say which ones differ."""
    h = hashlib.sha256()
    per_file = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        h.update(rel.encode() + b"\0")
        fh_sha = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                fh_sha.update(chunk)
        h.update(b"\0")
        per_file[rel] = fh_sha.hexdigest()
    return h.hexdigest(), per_file


def _extract(archive: Path, dest: Path, root: str = "meta") -> Path:
    """Extract a ``.tar.zst`` backup (python-zstandard + tarfile, as a stream)."""
    dest.mkdir(parents=True)
    with open(archive, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        with tarfile.open(fileobj=reader, mode="r|") as tf:
            tf.extractall(dest, filter="tar")
    return dest / root


def _snapshot(meta: Path) -> tuple[str, dict]:
    """The lab's sled stand-in: the newest ``db/snap.<generation>`` and its trees."""
    snaps = sorted((p for p in (meta / "db").iterdir() if p.name.startswith("snap.") and not p.name.endswith(".tmp")),
                   key=lambda p: int(p.name[5:], 16))
    return snaps[-1].name, json.loads(snaps[-1].read_text())


def _traffic_entries(trees: dict) -> dict[str, str]:
    """``key -> sha256 of the stored body`` of the live traffic objects in an object table."""
    out = {}
    for objs in trees.get("object:table", {}).values():
        for key, e in objs.items():
            if key.startswith("traffic/") and not e.get("deleted"):
                out[key] = hashlib.sha256(base64.b64decode(e["inline"] or "")).hexdigest()
    return out


class _Operator:
    """Plays the operator: injects the 0.8 start failure at the right moment, and answers the
    node-failure pause with ``rollback`` through the Prefect API."""

    def __init__(self, lab, inventory: str, ledger_path: Path, tr: traffic.Traffic):
        self.lab, self.inventory, self.ledger_path, self.tr = lab, inventory, ledger_path, tr
        self.fault_at: float | None = None
        self.resumed: list[tuple[str, float]] = []
        self.unexpected: list[str] = []
        self.errors: list[str] = []

    def _flip_reached(self) -> bool:
        try:
            d = Ledger.load(self.ledger_path).doc
        except (OSError, LedgerFormatError):
            return False
        flip = d.gates.get("approve-flip")
        return bool(flip and flip.decision) or \
            any(e.kind == "phase" and e.message == "start flip" for e in d.events)

    def _paused_runs(self):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["minimal-downtime-migration"])))
        return [r for r in runs if r.parameters.get("inventory") == self.inventory and r.state and r.state.is_paused()]

    def poll_once(self) -> None:
        from prefect.flow_runs import resume_flow_run

        if self.fault_at is None and self._flip_reached():
            self.lab.fault(VICTIM, "refuse-start", count=10)
            self.fault_at = time.time()
        for run in self._paused_runs():
            key = run.state.state_details.pause_key
            if any(k == key for k, _t in self.resumed):
                continue
            if key.startswith("flip-failure-1") and self.fault_at is not None:
                # no client write reaches the cluster from here on (see the module docstring),
                # and the 0.7 restart of the rollback must not be refused
                self.tr.stop()
                self.lab.clear_faults(VICTIM)
                for n in self.lab.nodes:  # read by a daemon when it starts: the rollback's 0.7 starts
                    self.lab.set_knobs(n["name"], anti_entropy_startup_s=3600.0)
                answer = {"action": "rollback", "note": NOTE}
            else:
                self.unexpected.append(key)
                answer = {"action": "abort" if not key.startswith("flip-failure") else "rollback",
                          "note": "unexpected pause in e2e test"}
            resume_flow_run(run.id, run_input=answer)
            self.resumed.append((key, time.time()))

    def run_until(self, finished: threading.Event) -> None:
        while not finished.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - the API may be briefly busy; keep polling
                self.errors.append(f"{type(exc).__name__}: {exc}")
            finished.wait(0.1 if self.fault_at is None else 0.5)


def _run_until_rolled_back(lab, tr: traffic.Traffic):
    """Run the flow (auto-approved) in a worker thread, play the operator in this one.
    Returns (final Prefect state, operator, seconds)."""
    from flows.migration import minimal_downtime_migration

    inventory = str(lab.dir / "inventory.yaml")
    inv = load_inventory(inventory)
    ledger_path = Path(inv.backup.root) / inv.cluster / default_migration_id(inv) / "ledger.json"
    box: dict = {}
    finished = threading.Event()

    def worker():
        try:
            box["state"] = asyncio.run(minimal_downtime_migration(
                inventory=inventory, options=FAST, auto_approve=True, pause_timeout=900, return_state=True))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            box["error"] = exc
        finally:
            finished.set()

    op = _Operator(lab, inventory, ledger_path, tr)
    t0 = time.monotonic()
    th = threading.Thread(target=worker, daemon=True, name="e2e-rollback-flow")
    th.start()
    op.run_until(finished)
    th.join(30)
    if "error" in box:
        raise AssertionError(f"the flow call raised instead of returning its state: {box['error']!r}") from box["error"]
    return box["state"], op, time.monotonic() - t0, Ledger.load(ledger_path)


# ---------------------------------------------------------------------------- the test
@pytest.mark.timeout(900)
@pytest.mark.parametrize("per_zone", [1, 2], ids=["3x1", "3x2"])
def test_rollback_after_a_failed_08_start_restores_073_everywhere(make_lab, prefect_server, tmp_path, per_zone):
    from flows.migration import MigrationAborted

    lab = make_lab(version=SOURCE, zones=3, per_zone=per_zone)
    names = [n["name"] for n in lab.nodes]
    zone_of = {n["name"]: n["zone"] for n in lab.nodes}
    tr = traffic.Traffic(lab).start()
    try:
        state, op, secs, led = _run_until_rolled_back(lab, tr)
    finally:
        tr.stop()
    print(f"minimal-downtime with a failed 0.8 start of {VICTIM}, rolled back: {secs:.0f}s; "
          f"resumed {[k for k, _ in op.resumed]}; operator errors {op.errors[:3]}")

    # -- the flow: paused once for the node failure, resumed with "rollback", ended failed
    assert op.fault_at is not None, "the flip was never reached: the fault was not injected"
    assert not op.unexpected, f"unexpected pauses (answered abort): {op.unexpected}"
    assert [gate_of(k) for k, _ in op.resumed] == ["flip-failure-1"], op.resumed
    assert state.is_failed(), f"the flow ended {state.type}: {state.message}"
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, MigrationAborted) and "rolled back" in str(exc), repr(exc)

    # -- the ledger: the failure, the person's decision, a rollback step per node
    flip_start = led.step(VICTIM, "flip:start")
    assert flip_start and flip_start.status == "failed", flip_start
    gate = led.gate("flip-failure-1")
    assert (gate.decision, gate.by, gate.note) == ("rollback", "person", NOTE), gate
    assert any(e.kind == "rollback" for e in led.doc.events), led.doc.events[-5:]
    assert led.gate("sync-rollback") and led.gate("sync-rollback").status == "passed", led.gate("sync-rollback")
    for n in names:
        rec = led.node(n)
        # the rollback plan's steps, each recorded done for this node
        done = {k: rec.steps[k].status for k in rec.steps if k.startswith("rollback-")}
        # the node whose 0.8 start failed is already stopped: its stop observes that and skips
        want_stop = "skipped" if n == VICTIM else "done"
        assert done == {"rollback-stop:stop": want_stop, "rollback-switch:switch": "done",
                        "rollback-restore:restore": "done", "rollback-start:start": "done"}, (n, done)
        assert rec.restored.source == rec.backup.path, (n, rec.restored, rec.backup)
        # the dir the 0.8 start may have touched is kept aside, never deleted
        assert Path(rec.restored.moved_aside).is_dir(), rec.restored
        assert rec.running_version == SOURCE, rec  # back on 0.7: the "version after" says so
    # the rollback ran as its plan says: its journalled acts are the plan's (saved beside the ledger)
    from tests.e2e.test_procedures import assert_journal_is_the_plan, skipped_steps

    (msg,) = [e.message for e in led.doc.events if e.kind == "rollback"]
    digest = msg.rsplit("(plan ", 1)[1].rstrip(")")
    rb_plan = json.loads(led.path.with_name(f"plan-{digest}.json").read_text())
    journal = [json.loads(x) for x in led.path.with_name("commands.jsonl").read_text().splitlines()]
    assert_journal_is_the_plan([e for e in journal if str(e.get("phase")).startswith("rollback-")], rb_plan,
                               skipped_steps(led))
    assert (VICTIM, "rollback-stop", "stop") in skipped_steps(led)  # the failed node was stopped already
    # (the ledger's top-level state reads "failed", not "rolled-back": _migrate overwrites what
    # rollback_all set when MigrationAborted goes through it; reported, not asserted here)
    assert "MigrationAborted" in (led.doc.error or ""), led.doc.error

    # -- metadata: each node's dir against its own backup archive (see the docstring)
    truth = lab.inspect()["nodes"]
    identical, explained = [], {}
    for n in names:
        backup = Path(led.node(n).backup.path)
        assert led.node(n).backup.version == SOURCE
        restored_from = _extract(backup, tmp_path / "backups" / n)
        want_sum, want_files = _tree_digest(restored_from)
        live = lab.node_dir(n) / "meta"
        got_sum, got_files = _tree_digest(live)
        # the test's digest is the lab's: the comparison below means "lab.inspect() checksums"
        assert got_sum == lab.meta_checksum(n)
        if got_sum == truth[n]["meta_checksum"] == want_sum:
            identical.append(n)
            continue
        # a difference is only acceptable as the daemon's own Merkle work on its DB snapshot
        snap_want, trees_want = _snapshot(restored_from)
        snap_got, trees_got = _snapshot(live)
        others_want = {k: v for k, v in want_files.items() if not k.startswith("db/snap.")}
        others_got = {k: v for k, v in got_files.items() if not k.startswith("db/snap.")}
        assert others_got == others_want, f"{n}: files other than the DB snapshot differ from the backup"
        pending = {t: c for t, c in trees_want.get("merkle_todo", {}).items() if c}
        assert pending, (f"{n}: the DB snapshot changed ({snap_want} -> {snap_got}) although the backup had no "
                         f"pending Merkle work and nothing else ran")
        strip = lambda t: {k: v for k, v in t.items() if k != "merkle_todo"}  # noqa: E731
        assert strip(trees_got) == strip(trees_want), f"{n}: the restored DB holds other entries than the backup"
        explained[n] = f"merkle_todo {pending} drained ({snap_want} -> {snap_got})"
    print(f"metadata identical to the backup on {identical}; explained differences: {explained}")

    # -- every node back on 0.7.3, the binary switched back, everyone healthy
    assert {n: truth[n]["running_version"] for n in names} == {n: SOURCE for n in names}
    assert all(truth[n]["binary_target"].endswith(f"garage-v{SOURCE}") for n in names), \
        {n: truth[n]["binary_target"] for n in names}
    for n in names:
        st = _garage(lab, n, "status")
        assert st.returncode == 0, (n, st.stderr)
        assert "FAILED NODES" not in st.stdout, st.stdout
        status = parse_status(st.stdout)
        assert not status.failed and len(status.healthy) == len(names), (n, st.stdout)

    # -- acknowledged writes (see the docstring for why this is the strongest true statement)
    acks = lab.inspect(checksums=False)["acknowledged_writes"]
    assert not [a for a in acks if a["t"] > tr.stopped_at], "a write was acknowledged after the traffic stopped"
    backed_up: dict[str, str] = {}
    for n in names:
        for key, sha in _traffic_entries(_snapshot(tmp_path / "backups" / n / "meta")[1]).items():
            backed_up.setdefault(key, sha)
    windows = lab.downtime_windows()
    backup_stop = {n: windows[n][0][0] for n in names}  # each node's first stop: its backup round
    last_zone = max({zone_of[n] for n in names}, key=lambda z: min(backup_stop[m] for m in names if zone_of[m] == z))
    boundary = min(backup_stop[n] for n in names if zone_of[n] == last_zone)
    first_stop = min(backup_stop.values())
    check = traffic.verify(lab)
    assert not check["changed"] and not check["unreadable"], check
    lost = set(check["lost"])
    t_of = {a["key"]: a["t"] for a in acks}
    before = [k for k, t in t_of.items() if t < boundary]
    during_rounds = [k for k in before if t_of[k] >= first_stop]
    flip = min(e.t for e in led.doc.events if e.kind == "phase" and e.message == "start flip")
    print(f"acks: {len(t_of)} in all, {len(before)} before the last zone's backup stop "
          f"({len(during_rounds)} of them during the earlier rounds); lost: {len(lost)}, "
          f"{sum(1 for k in lost if t_of[k] < flip)} acknowledged between that stop and the flip, "
          f"{sum(1 for k in lost if t_of[k] >= flip)} after the flip (by the nodes that started on 0.8)")
    assert len(before) > 0 and len(during_rounds) > 0, "the traffic did not run through the backup rounds"
    # 1. a write is readable after the rollback if and only if a backup holds it (with its content)
    assert lost == set(t_of) - set(backed_up), "lost writes differ from the writes no backup holds"
    assert all(backed_up[k] == a["sha256"] for a in acks for k in [a["key"]] if k in backed_up)
    # 2. every write acknowledged before the last zone stopped for its backup survived
    assert not [k for k in before if k in lost], sorted((t_of[k], k) for k in before if k in lost)[:5]
