"""The flip helper (garage_migrate/node/flip.sh) on a real lab node, behind real OpenSSH:
staged and checked, then stop, switch and start in one SSH round trip each, run twice (the
second changes nothing); a wrong or missing helper refused before the window; a DB lock that
stays held after the stop reported as LOCK_HELD."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest

from garage_migrate import backup_step, flip_steps, steps
from garage_migrate.actions import flip as F
from garage_migrate.errors import LockHeldError, StepError
from garage_migrate.journal import CommandJournal, with_journal
from garage_migrate.runtime import open_runtime
from tests.conftest import run


@pytest.fixture
def make_lab(make_lab):
    return functools.partial(make_lab, wait_prometheus=False)


HOLD = ("import fcntl, sys, time\nf = open(sys.argv[1], 'rb+')\nfcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "print('held', flush=True)\ntime.sleep(120)\n")


def _truth(lab, name):
    return lab.inspect(checksums=False)["nodes"][name]


@pytest.mark.timeout(300)
def test_flip_helper_stops_switches_and_starts_a_lab_node_in_one_round_trip_each(make_lab, tmp_path):
    lab = make_lab(version="0.7.3", zones=3, per_zone=1)
    a, b, c = (n["name"] for n in lab.nodes)
    journal_path = tmp_path / "commands.jsonl"

    async def scenario():
        out = {}
        async with open_runtime(str(lab.dir / "inventory.yaml"), "minimal-downtime") as rt:
            rt = with_journal(rt, CommandJournal(journal_path))
            for n in (a, b, c):
                await steps.preflight(rt, n)
            out["stage"] = [await steps.stage_binary(rt, a, helper=True) for _ in range(2)]
            await steps.stage_binary(rt, b, helper=True)
            # c has no helper at all, b one that was changed after staging: both refused before the window
            helper_b = F.helper_path(rt.spec(b))
            with open(helper_b, "ab") as fh:
                fh.write(b"\n# changed\n")
            with pytest.raises(StepError) as bad:
                await flip_steps.check_helpers(rt, [a, b, c])
            out["refused"] = str(bad.value)
            out["b_untouched"] = _truth(lab, b)["running_version"]
            await flip_steps.check_helpers(rt, [a])  # the right one passes
            out["stop"] = [await flip_steps.helper_stop(rt, a) for _ in range(2)]
            out["stopped"] = _truth(lab, a)
            await backup_step.backup_metadata(rt, a)  # no 0.8 start without a backup
            out["switch"] = [await flip_steps.helper_switch(rt, a) for _ in range(2)]
            out["start"] = [await flip_steps.helper_start(rt, a, "0.8.7") for _ in range(2)]
            out["started"] = _truth(lab, a)
            # the stage step puts the right helper back over the changed one
            out["restage"] = await steps.stage_binary(rt, b, helper=True)
            await flip_steps.check_helpers(rt, [a, b])
            # b stopped, but something else (not the daemon) still holds a lock on its DB
            await flip_steps.helper_stop(rt, b)
            db = lab.node_dir(b) / "meta" / "db" / "db"
            # a POSIX lock (/proc/locks lists it too), in a process of its own: a POSIX lock
            # dies with any close(2) of the file in its process, and this one reads the lab
            holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db)], stdout=subprocess.PIPE, text=True)
            try:
                assert holder.stdout.readline().strip() == "held"
                with pytest.raises(LockHeldError) as held:
                    await flip_steps.helper_stop(rt, b)
            finally:
                holder.kill()
                holder.wait()
            out["held"] = held.value
        return out
    out = run(scenario(), limit=None)
    assert [r.status for r in out["stage"]] == ["done", "skipped"]
    assert "flip helper staged" in out["stage"][0].detail and "already staged" in out["stage"][1].detail
    assert f"{c}: no flip helper" in out["refused"] and f"{b}: flip helper sha256" in out["refused"]
    assert out["b_untouched"] == "0.7.3"
    assert [r.status for r in out["stop"]] == ["done", "skipped"]
    assert out["stopped"]["running_version"] is None and out["stopped"]["lock_holder"] is None
    assert [r.status for r in out["switch"]] == ["done", "skipped"]
    assert [r.status for r in out["start"]] == ["done", "skipped"]
    assert out["started"]["running_version"] == "0.8.7" and out["started"]["binary_target"].endswith("garage-v0.8.7")
    # the helper's node-side timestamps come back with each result
    assert float(out["stop"][0].data["t.signalled"]) <= float(out["stop"][0].data["t.exited"])
    assert float(out["start"][0].data["t.started"]) <= float(out["start"][0].data["t"])
    assert "flip helper staged" in out["restage"].detail
    assert out["held"].code == "LOCK_HELD"
    # one act per stop, switch and start on a: the helper's call, nothing else
    acts = [json.loads(x) for x in journal_path.read_text().splitlines()]
    calls = [e["argv"][i + 1:i + 3] for e in acts if e["node"] == a and e["kind"] == "act" and e["event"] == "started"
             for i, w in enumerate(e["argv"][:-1]) if w.endswith("/garage-migrate-flip")]
    verbs = [c[1] if c[0] == "armed" else c[0] for c in calls]
    assert verbs == ["stop", "stop", "switch", "switch", "start", "start"]
    # the stop and the start are armed (released by one write once every node is ready)
    assert [c[0] == "armed" for c in calls] == [True, True, False, False, True, True]
    released = [e for e in acts if e["node"] == a and e["event"] == "released"]
    # the second stop found the node stopped before arming; a start arms at once, and released
    # with "go" (not "go-down": no flip unit saw the node down) it observes: the second skips
    assert [e["word"] for e in released] == ["go", "go", "go"]


@pytest.mark.timeout(300)
def test_flip_helper_moves_garage_toml_with_the_binary_in_the_switch_and_discovery_stays_on(make_lab, tmp_path):
    # the nodes find their peers through Consul (0.7's top-level keys, which 0.8 ignores): the
    # flip's one switch call per node moves the translated config with the binary
    lab = make_lab(version="0.7.3", zones=3, per_zone=1, discovery=("consul",))
    a, b, _c = (n["name"] for n in lab.nodes)
    conf = {n: lab.node_dir(n) / "etc" / "garage.toml" for n in (a, b)}
    original = {n: conf[n].read_bytes() for n in (a, b)}
    mode = {n: conf[n].stat().st_mode & 0o777 for n in (a, b)}
    journal_path = tmp_path / "commands.jsonl"

    async def scenario():
        out = {}
        async with open_runtime(str(lab.dir / "inventory.yaml"), "minimal-downtime") as rt:
            rt = with_journal(rt, CommandJournal(journal_path))
            for n in (a, b):
                await steps.preflight(rt, n)
                await steps.stage_binary(rt, n, helper=True)
            out["shas"] = rt.spec(a).config_shas
            # b's live config edited after discovery: refused before the window, nothing stopped
            conf[b].write_bytes(original[b] + b"# edited by hand\n")
            with pytest.raises(StepError) as bad:
                await flip_steps.check_configs(rt, [a, b])
            out["refused"] = str(bad.value)
            out["b_running"] = _truth(lab, b)["running_version"]
            # had the check been skipped, the helper itself refuses the switch and changes nothing
            await flip_steps.helper_stop(rt, b)
            with pytest.raises(StepError) as bad_switch:
                await flip_steps.helper_switch(rt, b)
            out["refused_switch"] = str(bad_switch.value)
            out["b_after"] = _truth(lab, b)
            kept = await flip_steps.check_configs(rt, [a])
            out["kept_field"] = kept
            await rt.ledger.record_steps([], kept)  # what the window's opening write sets (run_barrier)
            await flip_steps.helper_stop(rt, a)
            await backup_step.backup_metadata(rt, a)  # no 0.8 start without a backup
            out["switch"] = [await flip_steps.helper_switch(rt, a) for _ in range(2)]
            out["live"] = conf[a].read_text()
            out["again"] = await flip_steps.check_configs(rt, [a])  # a re-run before the window passes
            out["start"] = await flip_steps.helper_start(rt, a, "0.8.7")
            out["started"] = _truth(lab, a)
            # the rollback's switch puts the kept 0.7 config back with the binary
            await steps.stop_node(rt, a)
            out["back"] = await steps.switch_binary(rt, a, "source")
        return out
    out = run(scenario(), limit=None)
    assert out["shas"] is not None
    assert f"{b}: " in out["refused"] and "changed since the plan was made" in out["refused"] and a not in out["refused"]
    assert out["b_running"] == "0.7.3"
    assert "config-changed" in out["refused_switch"] and "nothing was changed" in out["refused_switch"]
    assert out["b_after"]["binary_target"].endswith("garage-v0.7.3")
    keep = lab.node_dir(a) / "etc" / "garage.toml.garage-migrate.before-0.8"
    assert out["kept_field"] == {a: {"config_kept": str(keep)}} == out["again"]
    assert [r.status for r in out["switch"]] == ["done", "skipped"]
    assert "old one kept at" in out["switch"][0].detail and "0.8 config already" in out["switch"][1].detail
    assert "[consul_discovery]" in out["live"] and "consul_host" not in out["live"]
    assert out["started"]["running_version"] == "0.8.7"
    assert out["started"]["discovery"] == ["consul"]  # 0.8.7 reads [consul_discovery]: discovery stays on
    assert out["back"].status == "done"
    assert conf[a].read_bytes() == original[a] and conf[a].stat().st_mode & 0o777 == mode[a]
    # the switch was one act per call on a: the helper's, config included (no cat, no upload, no mv)
    acts = [json.loads(x) for x in journal_path.read_text().splitlines()]
    a_switch = [e for e in acts if e["node"] == a and e["kind"] == "act" and e["event"] == "started"
                and any(w.endswith("/garage-migrate-flip") for w in e["argv"]) and "switch" in e["argv"]]
    assert len(a_switch) == 2 and all(len(e["argv"]) >= 9 for e in a_switch)
