"""Each engine step on a real lab, run twice: the second run changes nothing and says why."""

from __future__ import annotations

import dataclasses
import functools
import time
from datetime import timedelta

from pathlib import Path

import pytest

from garage_migrate import api_step, backup_step, steps
from garage_migrate.runtime import open_runtime
from tests.conftest import run


@pytest.fixture
def make_lab(make_lab):
    return functools.partial(make_lab, wait_prometheus=False)


def _truth(lab, name):
    return lab.inspect()["nodes"][name]


async def _age_backup(rt, node: str, hours: float) -> None:
    """Make ``node``'s backup look ``hours`` older (its manifest and the ledger's record), as a
    backup taken in an earlier maintenance window is."""
    from garage_migrate.backup.manifest import load_manifest, write_private_file

    ref = rt.ledger.node(node).backup
    m = load_manifest(ref.manifest)
    old = m.model_copy(update={"created_at": m.created_at - timedelta(hours=hours)})
    write_private_file(Path(ref.manifest), old.to_json().encode())
    await rt.ledger.set_node(node, backup=ref.model_copy(update={"taken_at": old.created_at.timestamp()}))


def _row(rt, node: str) -> dict:
    """``node``'s row of the ledger table artifact."""
    return next(r for r in rt.ledger.table_rows([]) if r["node"] == node)


@pytest.mark.timeout(300)
def test_node_steps_are_idempotent_on_073_to_087(make_lab):
    # the nodes find their peers through Consul (0.7's top-level keys): the config goes to 0.8 with the binary
    lab = make_lab(version="0.7.3", zones=3, per_zone=1, discovery=("consul",))
    inv = str(lab.dir / "inventory.yaml")
    node = lab.nodes[0]["name"]
    conf = lab.node_dir(node) / "etc" / "garage.toml"
    original = conf.read_text()

    async def scenario():
        out = {"discovery_before": _truth(lab, node)["discovery"]}
        async with open_runtime(inv, "minimal-downtime") as rt:
            out["plan_diff"] = rt.facts.node(node).config_diff
            out["preflight"] = [await steps.preflight(rt, node) for _ in range(2)]
            out["stop"] = [await steps.stop_node(rt, node)]
            out["stopped_truth"] = _truth(lab, node)
            out["stop"].append(await steps.stop_node(rt, node))
            out["backup"] = [await backup_step.backup_metadata(rt, node) for _ in range(2)]
            # a backup older than the maximum age (an earlier window's) is not relied on: a new one
            await _age_backup(rt, node, hours=30)
            out["aged_kept"] = await backup_step.backup_metadata(rt, node)  # no age limit: reused
            await _age_backup(rt, node, hours=30)
            out["aged"] = await backup_step.backup_metadata(dataclasses.replace(rt, backup_max_age_s=24 * 3600), node)
            out["aged_ref"] = rt.ledger.node(node).backup
            out["stage"] = [await steps.stage_binary(rt, node) for _ in range(2)]
            out["live_after_stage"] = conf.read_text()
            out["switch"] = [await steps.switch_binary(rt, node) for _ in range(2)]
            out["live_after_switch"] = conf.read_text()
            out["kept"] = rt.ledger.node(node).config_kept
            out["kept_text"] = Path(out["kept"]).read_text() if out["kept"] else None
            out["repair"] = [await steps.offline_repair(rt, node)]
            out["after_first_repair"] = _truth(lab, node)
            out["repair"].append(await steps.offline_repair(rt, node))
            out["after_second_repair"] = _truth(lab, node)
            out["start"] = [await steps.start_node(rt, node, "0.8.7")]
            out["started_truth"] = _truth(lab, node)
            out["row_started"] = _row(rt, node)
            # as if the run that started it died before recording it: the skipped start records it
            await rt.ledger.set_node(node, running_version=None)
            out["start"].append(await steps.start_node(rt, node, "0.8.7"))
            out["row_skipped"] = _row(rt, node)
            out["final_truth"] = _truth(lab, node)
            # the rollback's switch puts the kept 0.7 config back with the binary, once
            await steps.stop_node(rt, node)
            out["back"] = [await steps.switch_binary(rt, node, "source") for _ in range(2)]
            out["live_after_back"] = conf.read_text()
        return out
    out = run(scenario(), limit=None)
    assert [r.status for r in out["stop"]] == ["done", "skipped"]
    assert out["stopped_truth"]["running_version"] is None and out["stopped_truth"]["lock_holder"] is None
    assert [r.status for r in out["backup"]] == ["done", "skipped"]  # the second one is reused
    assert out["aged_kept"].status == "skipped"
    assert out["aged"].status == "done" and "reused" not in out["aged"].detail
    assert time.time() - out["aged_ref"].taken_at < 600 and not out["aged_ref"].reused
    assert [r.status for r in out["stage"]] == ["done", "skipped"]
    assert [r.status for r in out["switch"]] == ["done", "skipped"]
    assert out["after_first_repair"]["binary_target"].endswith("garage-v0.8.7")
    # offline-repair is idempotent: a second run recomputes the same counts
    assert out["after_first_repair"]["local_counters"] == out["after_second_repair"]["local_counters"]
    assert out["after_first_repair"]["local_counters"]
    assert [r.status for r in out["start"]] == ["done", "skipped"]
    assert out["started_truth"]["running_version"] == "0.8.7"
    assert out["final_truth"]["pid"] == out["started_truth"]["pid"]  # not restarted
    # the ledger table's "version after" is what the start step saw the daemon answer
    assert (out["row_started"]["version before"], out["row_started"]["version after"]) == ("0.7.3", "0.8.7")
    assert out["row_skipped"]["version after"] == "0.8.7"
    # garage.toml: staged beside the live one, switched with the binary, kept for the rollback, back with it
    assert out["discovery_before"] == ["consul"] and any("consul_host" in ln for ln in out["plan_diff"])
    assert out["live_after_stage"] == original and "0.8 config staged" in out["stage"][0].detail
    assert "[consul_discovery]" in out["live_after_switch"] and "consul_host" not in out["live_after_switch"]
    assert out["kept"] and out["kept_text"] == original
    assert "0.8 layout already" in out["switch"][1].detail
    assert out["started_truth"]["discovery"] == ["consul"]  # 0.8.7 reads [consul_discovery]: discovery stays on
    assert [r.status for r in out["back"]] == ["done", "skipped"] and out["live_after_back"] == original
    assert not Path(out["kept"]).exists()  # moved back into place, not copied


def test_start_refuses_08_without_a_backup_of_this_migration(make_lab):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    node = lab.nodes[1]["name"]

    async def scenario():
        async with open_runtime(str(lab.dir / "inventory.yaml"), "simple") as rt:
            await steps.preflight(rt, node)
            await steps.stop_node(rt, node)
            await steps.stage_binary(rt, node)
            await steps.switch_binary(rt, node)
            with pytest.raises(steps.StepError, match="without a verified backup"):
                await steps.start_node(rt, node, "0.8.7")
    run(scenario(), limit=None)
    assert _truth(lab, node)["running_version"] is None


def test_offline_repair_with_the_daemon_running_is_lock_held_not_retried(make_lab):
    from garage_migrate.errors import LockHeldError, is_transient

    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    node = lab.nodes[0]["name"]

    async def scenario():
        async with open_runtime(str(lab.dir / "inventory.yaml"), "simple") as rt:
            for step in (steps.preflight, steps.stop_node, backup_step.backup_metadata, steps.stage_binary,
                         steps.switch_binary):
                await step(rt, node)
            await steps.start_node(rt, node, "0.8.7")
            with pytest.raises(LockHeldError) as exc:
                await steps.offline_repair(rt, node)
            return exc.value
    err = run(scenario(), limit=None)
    assert err.code == "LOCK_HELD" and not is_transient(err)


def test_api_gate_port_cuts_and_restores_clients_idempotently(make_lab):
    import socket

    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    node = lab.nodes[2]

    def s3_open() -> bool:
        try:
            socket.create_connection((node["addr"], 3900), timeout=1).close()
            return True
        except OSError:
            return False

    config = lab.node_dir(node["name"]) / "etc" / "garage.toml"
    before = config.read_text()

    async def scenario():
        async with open_runtime(str(lab.dir / "inventory.yaml"), "simple") as rt:
            await steps.preflight(rt, node["name"])
            a = [await api_step.set_api(rt, node["name"], False) for _ in range(2)]
            closed = not s3_open()
            kept = Path(steps.original_config_path(str(config)))
            kept_while_cut = (kept.read_text(), kept.stat().st_mode & 0o077)
            b = [await api_step.set_api(rt, node["name"], True) for _ in range(2)]
            return a, closed, kept_while_cut, b, rt.ledger.path
    a, closed, kept_while_cut, b, ledger_path = run(scenario(), limit=None)
    assert [r.status for r in a] == ["done", "skipped"] and closed
    assert [r.status for r in b] == ["done", "skipped"] and s3_open()
    assert _truth(lab, node["name"])["running_version"] == "0.7.3"
    # while the API is cut the original config is kept on the node (owner-only); it is restored
    # byte for byte, the copy removed, and the ledger holds only its digest: never the rpc_secret
    assert kept_while_cut == (before, 0)
    assert config.read_text() == before
    assert not Path(steps.original_config_path(str(config))).exists()
    assert lab.info["rpc_secret"] in before
    assert lab.info["rpc_secret"] not in Path(ledger_path).read_text()


def test_a_migration_after_one_that_left_the_api_cut_restores_the_real_original(make_lab):
    """Migration A cuts the API and is abandoned; migration B (another ledger) must not take the
    cut config for the original: it adopts the copy A kept on the node and restores that."""
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    node = lab.nodes[0]["name"]
    config = lab.node_dir(node) / "etc" / "garage.toml"
    before = config.read_text()
    inv = str(lab.dir / "inventory.yaml")

    async def scenario():
        async with open_runtime(inv, "simple", "migration-a") as rt:
            cut = await api_step.set_api(rt, node, False)
        async with open_runtime(inv, "simple", "migration-b") as rt:
            again = await api_step.set_api(rt, node, False)
            back = await api_step.set_api(rt, node, True)
        return cut, again, back
    cut, again, back = run(scenario(), limit=None)
    assert (cut.status, again.status, back.status) == ("done", "skipped", "done")
    assert config.read_text() == before


def test_the_lab_daemon_reads_discovery_the_way_each_version_does():
    import tomllib

    from garage_lab.garage.config import discovery_of
    from garage_lab.garage.personality import V073, V087
    from garage_migrate.config08 import translate

    old = ('consul_host = "127.0.0.1:8500"\nconsul_service_name = "g"\n'
           'kubernetes_namespace = "garage"\nkubernetes_service_name = "g"\n')
    new = translate(old).text
    assert discovery_of(V073, tomllib.loads(old)) == ("consul", "kubernetes")
    assert discovery_of(V087, tomllib.loads(old)) == ()  # reused as-is on 0.8: quietly off
    assert discovery_of(V087, tomllib.loads(new)) == ("consul", "kubernetes")
    assert discovery_of(V073, tomllib.loads(new)) == ()
