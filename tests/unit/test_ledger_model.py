"""The typed ledger: its records, format 2 on disk, reading format 1, and what it refuses.

The format-1 files under ``tests/fixtures/ledger/`` were written by the format-1 code itself
(see their README); they are read here as an existing ledger would be after an upgrade.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pydantic
import pytest

from garage_migrate import api_step
from garage_migrate.errors import LedgerFormatError
from garage_migrate.ledger import Ledger
from garage_migrate.ledger_model import (FORMAT, BackupRef, Holder, LedgerDoc, NodeRecord, dump, migrate_1_to_2,
                                         parse)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ledger"
SECRET = "f00dfeed" * 8  # the rpc_secret of format1-config-original.json


def run(coro):
    return asyncio.run(coro)


def _fixture(tmp_path, name: str = "format1.json") -> Path:
    dest = tmp_path / "c" / "m" / "ledger.json"
    dest.parent.mkdir(parents=True)
    shutil.copyfile(FIXTURES / name, dest)
    return dest


def _busy_ledger(tmp_path) -> Ledger:
    """A format-2 ledger with a record of every kind, written through the API."""
    led = Ledger.open(tmp_path, "c", "m", "minimal-downtime")
    assert run(led.claim(Holder(token="t1", flow_run_id="run-1", controller="ctl", pid=7, kind="migration",
                                since=1.0, heartbeat=2.0), lambda cur: None)) is None

    async def fill():
        await led.set_node("n1", zone="z1", id64="0" * 16, version_before="0.7.3", metadata_bytes=10,
                           binary_before="/usr/local/lib/garage-v0.7.3")
        await led.record_step("n1", "rolling:stop", "running")
        await led.record_step("n1", "rolling:stop", "failed", "StepError: hang", code="STEP_FAILED")
        await led.record_step("n1", "rolling:stop", "running")
        await led.record_step("n1", "rolling:stop", "done", "stopped with SIGINT")
        await led.set_node("n1", backup=BackupRef(path="/b/n1.tar.zst", manifest="/b/manifest.json", sha256="a" * 64,
                                                  bytes=123, version="0.7.3"), running_version="0.8.7")
        await led.record_cluster_step("pre:repair:launch_repair:tables", "done", "launched")
        await led.record_gate("approve-flip", status="waiting", decision=None, by=None, plan_digest="d1")
        await led.record_gate("approve-flip", status="decided", decision="approve", by="person", note="ok",
                              plan_digest="d1", flow_run_id="run-1", pause_key="approve-flip-x-1", decided_at=3.0)
        await led.event("decision", "approve-flip: approve", note="ok", by="person", pause_key="approve-flip-x-1")
        await led.set(plan_digest="d1", error="StepError: earlier")
    run(fill())
    return led


# ---------------------------------------------------------------------------- round trip
def test_round_trip_through_the_file_keeps_every_record(tmp_path):
    led = _busy_ledger(tmp_path)
    back = Ledger.load(led.path).doc
    assert back == led.doc and back.format == FORMAT == 2
    assert back.holder.token == "t1" and back.gates["approve-flip"].by == "person"
    stop = back.nodes["n1"].steps["rolling:stop"]
    assert [(a.status, a.code) for a in stop.attempts] == [("failed", "STEP_FAILED"), ("done", None)]
    assert (stop.status, stop.code, stop.started) == ("done", None, stop.attempts[-1].started)
    # the text on disk is what dump() makes of the document: stable, sorted, validated
    assert led.path.read_text() == dump(back, "x")[0]
    assert json.loads(led.path.read_text())["format"] == 2


def test_a_write_applies_the_change_to_typed_records(tmp_path):
    led = _busy_ledger(tmp_path)
    led.mutate(lambda d: setattr(d.nodes["n1"], "zone", "z9"))
    assert Ledger.load(led.path).node("n1").zone == "z9"
    assert led.step_done("n1", "rolling:stop") and not led.step_done("n1", "flip:start")
    assert led.progress(4) == 25.0


# ---------------------------------------------------------------------------- format 1
def test_format_1_is_migrated_on_read_and_the_file_left_as_it_was(tmp_path):
    path = _fixture(tmp_path)
    before = path.read_bytes()
    doc = Ledger.load(path).doc
    assert path.read_bytes() == before  # reading never writes
    assert (doc.format, doc.migration_id, doc.procedure, doc.state) == (2, "prod-eu-to-v0.8.7", "minimal-downtime",
                                                                       "failed")
    assert doc.holder.token == "c" * 32 and doc.holder.flow_run_id.startswith("3333")
    g1, g2, g3 = (doc.nodes[n] for n in ("g1", "g2", "g3"))
    assert (g1.zone, g1.version_before, g1.running_version, g3.running_version) == ("dc1", "0.7.3", "0.8.7", None)
    assert g3.backup.reused and g3.backup.sha256 == "cd" * 32 and g3.backup.bytes is None
    assert g3.restored.source == g3.backup.path and g3.restored.moved_aside.endswith("before-restore.1")
    assert g1.config_original_sha256 == "9" * 64
    flip = g2.steps["flip:start"]
    # format 1 kept one record per step, and a failed attempt's code after the retry succeeded
    assert (flip.status, flip.retried, flip.code, len(flip.attempts)) == ("done", 1, None, 1)
    gate = doc.gates["sync-before-1"]
    assert (gate.decision, gate.by, gate.note, gate.pause_key) == ("wait", "person", "give it time",
                                                                  "sync-before-1-3f2a9c1d-1")
    assert doc.gates["approve-flip"].by == "auto-approve" and doc.gates["disable-api"].host == "proxy-1"
    kinds = [e.kind for e in doc.events]
    assert kinds.count("takeover") == 1 and "unlock" in kinds and "proceed-anyway" in kinds
    unlock = next(e for e in doc.events if e.kind == "unlock")
    assert unlock.nodes == ["g1", "g2", "g3"] and unlock.previous.flow_run_id.startswith("2222")
    assert "token" not in unlock.previous.model_dump()  # events name a run, not its fencing token


def _leaves(x, path=()):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _leaves(v, path + (i,))
    else:
        yield path, x


def test_format_1_migration_loses_nothing_but_what_it_documents(tmp_path):
    old = json.loads((FIXTURES / "format1.json").read_text())
    new = json.loads(dump(Ledger.load(_fixture(tmp_path)).doc, "x")[0])
    dropped = []
    for path, value in _leaves(old):
        if path == ("format",):
            continue
        target = tuple("source" if p == "from" and path[-2] == "restored" else p for p in path)
        node = new
        try:
            for p in target:
                node = node[p]
        except (KeyError, IndexError):
            dropped.append(path)
            continue
        if node is None and value is not None:
            dropped.append(path)
            continue
        assert node == value, path
    # only the fencing tokens of previous holders, and the stale codes of steps that then succeeded
    assert all(p[-1] == "token" and p[0] == "events" or p[-1] == "code" and p[0] == "nodes" for p in dropped), dropped
    assert any(p[-1] == "token" for p in dropped) and ("nodes", "g2", "steps", "flip:start", "code") in dropped
    assert migrate_1_to_2(old)[0]["format"] == 2 and old["format"] == 1  # the input is not changed


def test_a_write_through_a_format_1_ledger_writes_format_2_owner_only(tmp_path):
    path = _fixture(tmp_path)
    path.chmod(0o644)
    led = Ledger.open(tmp_path, "c", "m", "minimal-downtime")
    migrated = led.doc
    run(led.event("rerun", "after the upgrade"))
    back = Ledger.load(path).doc
    assert json.loads(path.read_text())["format"] == 2
    assert back.events[:-1] == migrated.events and back.nodes == migrated.nodes and back.gates == migrated.gates
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.with_name("ledger.lock").stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------------------- refusals
def _assert_refused(path: Path, *needles: str) -> None:
    before = path.read_bytes()
    with pytest.raises(LedgerFormatError) as ei:
        Ledger.load(path)
    with pytest.raises(LedgerFormatError):
        Ledger.open(path.parent.parent.parent, path.parent.parent.name, path.parent.name, "simple")
    msg = str(ei.value)
    assert str(path) in msg and all(n in msg for n in needles), msg
    assert path.read_bytes() == before, "a refused ledger was changed"
    assert not list(path.parent.glob("*.tmp"))


def test_a_future_format_is_refused_with_a_clear_message(tmp_path):
    path = _fixture(tmp_path)
    data = json.loads(path.read_text())
    path.write_text(json.dumps(dict(data, format=3)))
    _assert_refused(path, "ledger format 3", "reads formats 1, 2", "newer garage-migrate", "upgrade",
                    "left as it is")


@pytest.mark.parametrize("damage, needles", [
    (lambda t: t[: len(t) // 2], ("not JSON",)),
    (lambda t: "[]", ("no format number",)),
    (lambda t: t.replace('"status": "done"', '"status": "exploded"', 1), ("not a valid format-2 ledger", ".status")),
    (lambda t: t.replace('"zone": "z1"', '"zone": "z1", "zonee": "z2"'), ("nodes.n1.zonee", "Extra inputs")),
    (lambda t: t.replace('"sha256": "' + "a" * 64, '"sha256": "not-a-digest'), ("nodes.n1.backup.sha256",)),
])
def test_an_invalid_document_is_refused_whole_and_left_untouched(tmp_path, damage, needles):
    led = _busy_ledger(tmp_path)
    text = led.path.read_text()
    led.path.write_text(damage(text))
    assert led.path.read_text() != text
    _assert_refused(led.path, "refused", *needles)
    # a process holding a good snapshot keeps it: never half-read, and it cannot write over the file
    with pytest.raises(LedgerFormatError):
        led.refresh()
    assert led.doc.nodes["n1"].zone == "z1"
    before = led.path.read_bytes()
    with pytest.raises(LedgerFormatError):
        run(led.event("x", "y"))
    assert led.path.read_bytes() == before


def test_a_file_that_is_not_text_is_refused(tmp_path):
    path = _fixture(tmp_path)
    path.write_bytes(b'{"format": 2, "\xff\xfe')
    _assert_refused(path, "not UTF-8")


def test_an_invalid_format_1_document_is_refused(tmp_path):
    path = _fixture(tmp_path)
    path.write_text(path.read_text().replace('"kind": "phase"', '"kind": "phase", "colour": "red"', 1))
    _assert_refused(path, "not a valid format-1 ledger", "events.0.colour")


def test_a_writer_s_typo_or_bad_value_raises_and_writes_nothing(tmp_path):
    led = _busy_ledger(tmp_path)
    before = led.path.read_bytes()
    for bad in (led.set_node("n1", zonee="z2"), led.set_node("n1", metadata_bytes="lots"),
                led.record_gate("approve-flip", decison="approve"), led.record_gate("x", by="somebody"),
                led.event("decision", "m", notes="typo"), led.set(state="half-done"), led.set(nodes={}),
                led.record_step("n1", "k", "exploded")):
        with pytest.raises((ValueError, pydantic.ValidationError)):
            run(bad)
    # a record appended as a plain dict escapes the checks on assignment, not the one on write
    with pytest.raises(LedgerFormatError, match="refusing to write"):
        led.mutate(lambda d: d.events.append({"t": 1.0, "kind": "x", "message": "y", "colour": "red"}))
    assert led.path.read_bytes() == before


def test_a_read_only_ledger_validates_its_changes_too(tmp_path):
    led = Ledger.open(tmp_path, "c", "m", "simple", persist=False)
    run(led.record_step("n1", "zone:stop", "would-run", "dry run"))
    assert led.step("n1", "zone:stop").status == "would-run" and not led.path.exists()
    with pytest.raises(LedgerFormatError):
        led.mutate(lambda d: (d.events.append({"t": 1.0}), setattr(d, "state", "done")))
    assert led.doc.events == [] and led.doc.state == "running"  # the refused change left no trace


# ---------------------------------------------------------------------------- no secret
def test_no_field_can_hold_the_config_text():
    toml = f'rpc_secret = "{SECRET}"\n[s3_api]\napi_bind_addr = "[::]:3900"\n'
    for fields in ({"config_original": toml}, {"config_original_sha256": toml}, {"config_original_path": toml},
                   {"config_original_path": "etc/garage.toml"}):
        with pytest.raises(pydantic.ValidationError):
            NodeRecord(**fields)
    rec = NodeRecord(config_original_sha256=hashlib.sha256(toml.encode()).hexdigest(),
                     config_original_path="/etc/garage.toml.garage-migrate.orig")
    assert SECRET not in rec.model_dump_json()


def test_a_legacy_config_original_is_kept_as_its_digest_and_never_written_back(tmp_path):
    path = _fixture(tmp_path, "format1-config-original.json")
    text = json.loads(path.read_text())["nodes"]["g1"]["config_original"]
    assert SECRET in text
    led = Ledger.open(tmp_path, "c", "m", "simple")
    assert led.node("g1").config_original_sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert led.node("g1").config_original_path is None  # that version kept no copy on the node
    assert led.legacy_config_original("g1") == text and led.legacy_config_original("g2") is None
    run(led.event("rerun", "after the upgrade"))
    assert SECRET not in path.read_text() and "config_original\"" not in path.read_text()
    assert led.legacy_config_original("g1") == text  # still in this process's memory
    # a process that reads the new file has the digest only
    assert Ledger.load(path).legacy_config_original("g1") is None
    assert parse(path.read_text(), "x").legacy_config_originals == {}


class _Shell:
    """Receives uploads (what ``put_file`` would put on the node)."""

    def __init__(self):
        self.files: dict[str, str] = {}

    async def put_file(self, local: str, remote: str) -> None:
        self.files[remote] = Path(local).read_text()


def test_set_api_moves_a_legacy_original_to_the_node(tmp_path):
    """Restoring the API of a migration begun by a format-1 version: the original comes from
    that ledger (in memory), goes to the node, and the ledger records where."""
    _fixture(tmp_path, "format1-config-original.json")
    led = Ledger.open(tmp_path, "c", "m", "simple")
    original = led.legacy_config_original("g1")
    cut = api_step.move_ports(original, 3990, 3992)
    shell, said = _Shell(), []
    rt = SimpleNamespace(ledger=led, dry_run=False, shell=lambda n: shell, info=lambda *a: said.append(a),
                         node=lambda n: SimpleNamespace(ctx=SimpleNamespace(config_path="/etc/garage.toml", sudo=False)))
    got = run(api_step._original_config(rt, "g1", cut, keep=False))
    kept = "/etc/garage.toml.garage-migrate.orig"
    assert got == original and shell.files == {kept: original}
    rec = Ledger.load(led.path).node("g1")
    assert rec.config_original_path == kept and rec.config_original_sha256 == hashlib.sha256(original.encode()).hexdigest()
    assert SECRET not in led.path.read_text()


# ---------------------------------------------------------------------------- views
def test_the_version_after_column_reads_the_running_version_the_start_step_writes(tmp_path):
    rows = {r["node"]: r for r in Ledger.load(_fixture(tmp_path)).table_rows(["flip:start"])}
    assert [(rows[n]["version before"], rows[n]["version after"]) for n in ("g1", "g2", "g3")] == \
        [("0.7.3", "0.8.7"), ("0.7.3", "0.8.7"), ("0.7.3", "")]
    assert rows["g3"]["backup sha256"] == "cd" * 8 and rows["g2"]["flip:start"].startswith("done ")
    assert "version_after" not in NodeRecord.model_fields  # nothing would write it


def test_ledger_files_are_owner_only_and_so_is_their_directory(tmp_path):
    led = _busy_ledger(tmp_path)
    assert led.path.stat().st_mode & 0o777 == 0o600
    assert led.path.parent.stat().st_mode & 0o777 == 0o700
    assert led.path.with_name("ledger.lock").stat().st_mode & 0o777 == 0o600


def test_a_new_ledger_is_a_valid_empty_document():
    doc = LedgerDoc.new("m", "c", "simple", now=5.0)
    assert (doc.state, doc.holder, doc.nodes, doc.events, doc.created) == ("running", None, {}, [], 5.0)
    with pytest.raises(pydantic.ValidationError):
        LedgerDoc.new("m", "c", "fast")


def _inventory(tmp_path) -> str:
    path = tmp_path / "inventory.yaml"
    path.write_text(f"""cluster: c
ssh: {{user: root, known_hosts: /tmp/known_hosts}}
backup: {{root: {tmp_path}}}
target: {{version: 0.8.7, binary: /tmp/garage, sha256: {"a" * 64}}}
nodes:
  - {{name: g1, host: 10.0.0.1, zone: dc1}}
  - {{name: g2, host: 10.0.0.2, zone: dc2}}
  - {{name: g3, host: 10.0.0.3, zone: dc3}}
""")
    return str(path)


def test_status_prints_the_fields_of_a_format_1_ledger(tmp_path, capsys):
    from garage_migrate.cli import main

    path = _fixture(tmp_path)
    assert main(["status", "--inventory", _inventory(tmp_path), "--migration-id", "m"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"migration m: minimal-downtime, state failed, ledger {path}"), out
    assert "  error: StepError: g3: did not answer as 0.8.7" in out
    assert "  g1 [dc1] 0.7.3 -> 0.8.7: flip:start=done, preflight:preflight=done, rolling:backup=done, " \
           "rolling:stop=done" in out
    assert "  g3 [dc3] 0.7.3 -> -: " in out
    assert "held by migration 33333333-3333-3333-3333-333333333333 on ctl-1 (pid 4444)" in out
    assert "  gate sync-before-1: wait give it time" in out and "  gate approve-flip: approve gate passed cleanly" in out


def test_status_refuses_an_unreadable_ledger_with_its_reason(tmp_path, capsys):
    from garage_migrate.cli import main

    path = _fixture(tmp_path)
    path.write_text(json.dumps({"format": 9}))
    assert main(["status", "--inventory", _inventory(tmp_path), "--migration-id", "m"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and f"garage-migrate: {path}: ledger format 9" in captured.err


def test_the_report_reads_versions_backups_and_decisions_from_the_fields(tmp_path):
    from garage_migrate.runtime import watch_report

    led = Ledger.load(_fixture(tmp_path))
    md = watch_report(SimpleNamespace(ledger=led), [{"g1": ()}])
    assert md.startswith("## Migration prod-eu-to-v0.8.7: report")
    assert f"| g1 | dc1 | 0.7.3 | 0.8.7 | {led.node('g1').backup.path} |" in md
    assert "| g3 | dc3 | 0.7.3 |  |" in md
    assert "- sync-before-1: wait give it time" in md and "- sync gate after did not pass" in md
