"""Fault-matrix rows 1, 4, 5, 7-12, 20, 21, 23 and 24 (``docs/faults.md``) on one 3x1 lab.

One simple migration (the engine's executor, steps and cluster lock, no Prefect: these rows
halt, and a halt needs no task retry) is driven through a chain of faults with the same
migration id: each run meets the next faults, halts in a safe state, the test records what the
ledger, the journal and the lab's ground truth say, lifts the faults and runs again. The last
run completes. Before the first run, the rows that are refused before any act (an inventory
that disagrees with the layout, a node whose SSH is refused, a binary whose checksum is wrong)
are tried against the untouched cluster.

The module fixture ``chain`` runs it all once and keeps each row's evidence; each row's test
asserts its own, so each can fail alone. Time is skipped, never waited for: the hung stop of
row 4 ends when the test moves the runtime's injected clock past the stop timeout.
"""

from __future__ import annotations

import pytest

from garage_migrate.actions import STOP_TIMEOUT
from tests.e2e.faultrun import assert_done_and_nothing_lost
from tests.lab.faultchain import NODES, run_chain


@pytest.fixture(scope="module")
def lab(module_lab):
    # 4 MiB of metadata per node, so a tar stream can be cut or damaged in its middle
    return module_lab(version="0.7.3", zones=3, per_zone=1, meta_size=4 << 20)


@pytest.fixture(scope="module")
def chain(lab, tmp_path_factory):
    """Every run of the chain, once; each row's evidence (``broken`` says where it stopped)."""
    return run_chain(lab, tmp_path_factory.mktemp("faults-lab"))


def row(chain, n):
    assert n in chain, f"the chain stopped before row {n}: {chain.get('broken')}"
    return chain[n]


ALL_073 = {n: ("0.7.3", "garage-v0.7.3") for n in NODES}


def test_fault_24_inventory_disagreeing_with_the_layout_is_refused_before_any_act(chain):
    ev = row(chain, 24)
    err = ev["error"]
    assert err is not None and err.code == "DISCOVERY_MISMATCH", err
    assert "node-a1: inventory says zone dc2, the layout says dc1" in str(err)
    assert ev["untouched"]  # no service event, every node still serving 0.7.3, no act journalled


def test_fault_01_ssh_refused_for_one_node_before_preflight_is_refused_before_any_act(chain):
    ev = row(chain, 1)
    err = ev["error"]
    assert err is not None and err.code == "NODE_UNREACHABLE" and err.node == "node-b1", err.context()
    assert ev["untouched"]


def test_fault_04_stop_hanging_past_its_timeout_halts_without_killing(chain):
    ev = row(chain, 4)
    err = ev["error"]
    assert ev["sigint"] is not None  # not vacuous: the daemon got its SIGINT and ignored it
    assert err is not None and err.code == "STEP_FAILED" and err.node == "node-a1", err
    assert f"still running {STOP_TIMEOUT:.0f}s after SIGINT: it was not killed" in str(err)
    assert ev["a1"].status == "failed" and ev["a1"].code == "STEP_FAILED"
    # nothing escalated: no service stop (SIGTERM then SIGKILL) and no SIGKILL of node-a1
    assert ev["a1_ends"] == []
    # the safe state: node-a1 still runs 0.7.3 (hung), the others restarted on 0.7.3 (API cut);
    # the run failed with the lock held: the same migration id resumes
    assert ev["truth"] == ALL_073
    assert ev["state"] == "failed" and ev["lock"] is not None


def test_fault_10_on_node_backup_disk_full_halts_and_leaves_no_archive(chain):
    ev = row(chain, 10)
    assert ev["error"] is not None and ev["error"].code == "BACKUP_FAILED", ev["error"]
    for n in NODES:
        s = ev["steps"][n]
        assert s.status == "failed" and s.code == "BACKUP_FAILED" and "not enough space on the node" in s.detail, s
        assert ev["files"][n] == []
    # stopped for their backups, nothing switched: every node on its 0.7.3 binary
    assert ev["truth"] == {n: (None, "garage-v0.7.3") for n in NODES}


def _backups(chain):
    return row(chain, "backups")


def test_fault_09_controller_backup_disk_full_halts_before_streaming(chain):
    ev = _backups(chain)
    s = ev["steps"]["node-b1"]
    assert s.status == "failed" and s.code == "BACKUP_FAILED", s
    assert "not enough space on the controller" in s.detail
    assert ev["files"]["node-b1"] == []
    assert ev["truth"]["node-b1"] == (None, "garage-v0.7.3")


def test_fault_11_truncated_tar_stream_halts_and_leaves_nothing_that_looks_valid(chain):
    ev = _backups(chain)
    s = ev["steps"]["node-c1"]
    assert ev["faults_left"]["node-c1"] == []  # not vacuous: the stream was cut
    assert s.status == "failed" and s.code == "BACKUP_FAILED", s
    assert "the stream was cut short" in s.detail and "zstd?" not in s.detail, s.detail  # said as it is
    assert ev["files"]["node-c1"] == []
    assert ev["truth"]["node-c1"] == (None, "garage-v0.7.3")


def test_fault_12_corrupted_archive_at_verify_time_halts_and_keeps_nothing(chain):
    ev = _backups(chain)
    s = ev["steps"]["node-a1"]
    assert ev["faults_left"]["node-a1"] == []  # not vacuous: a byte of the stream was flipped
    assert s.status == "failed" and s.code == "BACKUP_FAILED", s
    assert "the new backup does not match the node" in s.detail, s.detail
    assert ev["files"]["node-a1"] == []
    assert ev["truth"]["node-a1"] == (None, "garage-v0.7.3")
    assert ev["error"] is not None and ev["error"].code == "BACKUP_FAILED"


def test_fault_21_staged_binary_of_the_wrong_version_halts_before_anything_is_disrupted(chain):
    ev = row(chain, 21)
    err = ev["error"]
    assert err is not None and err.code == "STEP_FAILED", err
    for n in NODES:
        s = ev["steps"][n]
        assert s.status == "failed" and "staged binary reports 0.8.0, expected 0.8.7" in s.detail, s
        assert ev["switched"][n] is None
    # the stage phase comes before the first disruptive phase: the run ended in it, its only
    # acts were the uploads of the stage, and no daemon stopped or started
    assert ev["phases"][-1] == "start stage", ev["phases"]
    assert ev["acts"] and {(ph, st) for ph, st, _ in ev["acts"]} == {("stage", "stage")}, ev["acts"]
    assert ev["unchanged"]
    # every node still on its 0.7.3 binary
    assert {n: t[1] for n, t in ev["truth"].items()} == {n: "garage-v0.7.3" for n in NODES}


def test_fault_20_binary_with_a_wrong_checksum_is_never_used(chain):
    ev = row(chain, 20)
    # the inventory's binary does not match its checksum: refused before connecting to any node
    local = ev["local"]
    assert local is not None and local.code == "INVENTORY_INVALID" and "target.sha256" in str(local), local
    assert ev["untouched"]
    # a staged file on the node with the wrong checksum (row 21's 0.8.0) is uploaded again and
    # checked before the switch: the switched binary is the inventory's
    want = _sha256_of_target(chain)
    assert ev["staged_before"] is not None and ev["staged_before"] != want
    assert ev["staged_after"] == want
    assert ev["stage"]["node-a1"].status == "done" and "sha256 ok" in ev["stage"]["node-a1"].detail
    assert {n: t[1] for n, t in ev["truth"].items()} == {n: "garage-v0.8.7" for n in NODES}
    # the backups of that run (row 21's stopped before them) read back against their manifests
    assert "3 of 3 backups verified" in ev["verify"], ev["verify"]


def _sha256_of_target(chain):
    return chain["target_sha256"]


def _repairs(chain):
    return row(chain, "repairs")


def test_fault_07_offline_repair_hitting_the_lock_halts_with_lock_held(chain):
    ev = _repairs(chain)
    s = ev["steps"]["node-c1"]
    assert ev["holder_alive"]
    assert s.status == "failed" and s.code == "LOCK_HELD", s
    assert ev["steps"]["node-a1"].status == "done"
    # no 0.8 start anywhere: every node stopped on the switched binary
    assert {n: t[0] for n, t in ev["truth"].items()} == {n: None for n in NODES}
    assert all(v is None for v in ev["starts"].values())


def test_fault_08_offline_repair_failing_halts_before_any_08_start(chain):
    ev = _repairs(chain)
    s = ev["steps"]["node-b1"]
    assert s.status == "failed" and s.code == "STEP_FAILED" and "offline-repair failed" in s.detail, s
    assert {n: t[0] for n, t in ev["truth"].items()} == {n: None for n in NODES}


def test_fault_05_daemon_refusing_to_start_on_08_halts_and_says_so(chain):
    ev = row(chain, 5)
    err = ev["error"]
    assert err is not None and err.node == "node-b1" and "refuses to start" in str(err), err
    assert ev["b1"].status == "failed"
    # the others run 0.8.7; node-b1 is stopped: no node runs 0.7 (never a mixed cluster)
    assert {n: t[0] for n, t in ev["truth"].items()} == {"node-a1": "0.8.7", "node-b1": None, "node-c1": "0.8.7"}
    assert any(e["node"] == "node-b1" for e in ev["starts"])  # not vacuous: its start was tried


def test_fault_23_nodes_already_on_08_a_fresh_run_is_refused_the_resumed_one_completes(lab, chain):
    ev = row(chain, 23)
    fresh = ev["fresh"]
    assert fresh is not None and fresh.code == "DISCOVERY_MISMATCH" and "node-a1 runs 0.8.7" in str(fresh), fresh
    assert ev["fresh_untouched"]
    assert ev["error"] is None, ev["error"]
    led = assert_done_and_nothing_lost(lab, ev["result"])
    # the resumed run re-planned from the nodes as they are, and did not start node-a1 again
    assert any(e.kind == "replan" for e in led.doc.events)
    assert ev["a1_start_attempts_after"] == ev["a1_start_attempts"]
