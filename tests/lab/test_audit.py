"""The lab's slips found by the source audit (shared/reference/source-audit.md), one test each,
named after the audit line."""

from __future__ import annotations

import functools
import re
import signal

import pytest

from garage_migrate import facts as F
from tests.conftest import garage, service


@pytest.fixture
def make_lab(make_lab):
    """These tests do not read Prometheus: skip waiting for its first scrape (it still runs)."""
    return functools.partial(make_lab, wait_prometheus=False)


def _stop(lab, node: str, sig: str = "INT") -> None:
    assert service(lab, node, "stop", "--signal", sig).returncode == 0


def test_audit_080_worker_tid_order(make_lab):
    """model/garage.rs (0.8.0): 16 job workers, the block manager (4 resync + scrub), then the
    tables bucket_v2, bucket_alias, key, block_ref, version, bucket_object_counter (+ its
    propagator), object, then k2v."""
    lab = make_lab(version="0.8.0", zones=3, per_zone=1)
    wl = F.parse_worker_list(garage(lab, lab.nodes[0]["name"], "worker", "list").stdout)
    tid = {w.name: w.tid for w in wl.workers}
    assert [tid[f"Job worker #{i}"] for i in range(16)] == list(range(1, 17))
    assert [tid[f"Block resync worker #{i}"] for i in range(1, 5)] + [tid["Block scrub worker"]] == [17, 18, 19, 20, 21]
    tables = ("bucket_v2", "bucket_alias", "key", "block_ref", "version", "bucket_object_counter", "object")
    firsts = [tid[f"{t} Merkle tree updater"] for t in tables]
    assert firsts == sorted(firsts) and firsts[0] == 22, dict(zip(tables, firsts))
    assert tid["bucket_object_counter index counter propagator"] == tid["bucket_object_counter GC"] + 1
    assert tid["object Merkle tree updater"] == tid["bucket_object_counter index counter propagator"] + 1
    assert min(tid[n] for n in tid if n.startswith("k2v")) > tid["object GC"]


def test_audit_080_worker_tid_order_leaves_087_as_it_was(make_lab):
    """The 0.8.7 spawn order (spawn_workers) is unchanged: the late 9 checklist TIDs hold."""
    lab = make_lab(version="0.8.7", zones=3, per_zone=1)
    wl = F.parse_worker_list(garage(lab, lab.nodes[0]["name"], "worker", "list").stdout)
    tid = {w.name: w.tid for w in wl.workers}
    assert (tid["Block resync worker #1"], tid["Block scrub worker"], tid["bucket_object_counter queue"]) == (1, 5, 25)


def test_audit_073_shutdown_log(make_lab):
    """server.rs (0.7.3) waits with watch_ctrl_c(): it logs ``Received CTRL+C, shutting down.``
    (target netapp), never the signal's name."""
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    n = lab.nodes[0]["name"]
    _stop(lab, n, "INT")
    lines = (lab.node_dir(n) / "log" / "garage.log").read_text().splitlines()
    assert [ln for ln in lines if "shutting down" in ln] == [
        next(ln for ln in lines if "Received CTRL+C" in ln)]
    assert re.fullmatch(r" INFO\s+netapp::util\s+> Received CTRL\+C, shutting down\.",
                        next(ln for ln in lines if "Received CTRL+C" in ln))
    assert not any("Received SIGINT" in ln for ln in lines)


def test_audit_073_second_server_on_a_locked_db(make_lab):
    """A second 0.7.3 server logs ``Loading configuration…``, ``Opening database…``, then its
    panic hook logs the panic with ``error!`` and aborts (SIGABRT)."""
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    n = lab.nodes[0]["name"]
    r = garage(lab, n, "server", timeout=20)
    assert r.returncode == -signal.SIGABRT
    lines = r.stderr.splitlines()
    assert len(lines) == 3, lines
    assert re.fullmatch(r" INFO\s+garage::server\s+> Loading configuration\.\.\.", lines[0]), lines
    assert re.fullmatch(r" INFO\s+garage::server\s+> Opening database\.\.\.", lines[1]), lines
    assert re.fullmatch(r" ERROR\s+garage\s+> panicked at 'Unable to open sled DB: Io\(Custom \{ kind: Other, "
                        r"error: \"could not acquire lock on .*/meta/db/db.*\" \}\)', src/garage/server.rs:40:10",
                        lines[2]), lines
    assert "thread 'main' panicked" not in r.stderr and "PANIC" not in r.stderr
    assert lab.lock_holder(n) == lab.daemon_info(n)["pid"]  # the running daemon kept its lock


@pytest.mark.parametrize("version", ["0.8.0", "0.8.7"])
def test_audit_080_offline_repair(make_lab, version):
    """0.8.0's offline-repair builds a full BackgroundRunner and Garage: its workers run in the
    repair process, log RPC errors, and drain at shutdown; exit 0. 0.8.7 runs without workers."""
    lab = make_lab(version=version, zones=3, per_zone=1)
    n = lab.nodes[0]["name"]
    lab.set_knobs(n, offline_repair_runner_s=0.5)
    _stop(lab, n)
    r = garage(lab, n, "offline-repair", "--yes", "object_counters")
    assert r.returncode == 0, r.stderr
    err = re.sub(r"\x1b\[[0-9;]*m", "", r.stderr)
    assert F.parse_offline_repair(r.returncode, r.stdout, r.stderr).kind == "ok"
    if version == "0.8.0":
        assert "Initialize membership management system..." in err and "Initialize object_table..." in err
        assert re.search(r"ERROR garage_util::background::worker: Error in worker object sync \(TID \d+\): ", err), err
        order = [err.index(t) for t in ("counting entries... (", "shutting down Garage internals...",
                                        "Error in worker object sync", "All workers exited peacefully", "Cleaning up...")]
        assert order == sorted(order), err
    else:
        assert "Error in worker" not in err and "membership" not in err
    assert lab.lock_holder(n) is None
    service(lab, n, "start")
    lab.wait_ready(30, prometheus=False)
