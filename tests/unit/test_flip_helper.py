"""The flip helper's commands (commands/flip.py, actions/flip.py) and the helper itself
(garage_migrate/node/flip.sh), run locally with stand-in service commands: every word reaches
its command literally, never as shell."""

from __future__ import annotations

import subprocess

import pytest

from garage_migrate import commands as C
from garage_migrate.actions import flip as F
from garage_migrate.errors import CommandRefused
from garage_migrate.flip_steps import parse_helper_output

SVC = C.ServiceControl(kind="custom", start=("/srv/svc", "start"), stop=("/srv/svc", "stop"),
                       status=("/srv/svc", "is-active"), signal=("/srv/svc", "kill", "--signal"))
CTX = C.NodeContext("n1", binary_path="/opt/garage/bin/garage", config_path="/etc/garage.toml", service=SVC)


def test_each_flip_step_is_one_helper_call_with_its_argv_groups_counted():
    stop = C.flip_stop(CTX, "/var/lib/garage/meta", "INT", wait=120, timeout=160)
    assert stop.argv == ("/opt/garage/bin/garage-migrate-flip", "stop", "120", "/var/lib/garage/meta/db/db",
                         "2", "/srv/svc", "is-active", "4", "/srv/svc", "kill", "--signal", "SIGINT",
                         "2", "/srv/svc", "stop")
    start = C.flip_start(CTX, "0.8.7", wait=60, timeout=80)
    assert start.argv == ("/opt/garage/bin/garage-migrate-flip", "start", "60", "0.8.7", "2", "/srv/svc", "is-active",
                          "2", "/srv/svc", "start", "4", "/opt/garage/bin/garage", "-c", "/etc/garage.toml", "stats")
    assert C.flip_switch(CTX, "/opt/garage/bin/garage-v0.8.7").argv == (
        "/opt/garage/bin/garage-migrate-flip", "switch", "/opt/garage/bin/garage-v0.8.7", "/opt/garage/bin/garage")
    sudo = C.NodeContext("n1", binary_path="/usr/local/bin/garage", sudo=True)
    assert C.flip_switch(sudo, "/usr/local/bin/garage-v0.8.7").render().startswith("sudo -n ")
    with pytest.raises(CommandRefused):
        C.flip_start(CTX, "0.8.7; rm -rf /", wait=60, timeout=80)


def test_the_helper_is_allowed_only_by_its_name_at_an_absolute_path():
    assert C.is_allowed(C.RemoteCommand(("/x/garage-migrate-flip", "switch", "/a", "/b")))
    assert not C.is_allowed(C.RemoteCommand(("garage-migrate-flip", "switch", "/a", "/b")))
    assert not C.is_allowed(C.RemoteCommand(("/x/garage-migrate-flip.sh", "switch", "/a", "/b")))
    assert "sh" not in C.FIXED_EXECUTABLES  # the helper runs as itself, never as `sh <file>`


def test_the_packaged_helper_is_posix_sh_and_its_hash_is_what_the_stage_step_checks():
    assert F.HELPER_SOURCE.read_bytes().startswith(b"#!/bin/sh\n")
    assert subprocess.run(["sh", "-n", str(F.HELPER_SOURCE)]).returncode == 0
    import hashlib
    assert F.helper_sha256() == hashlib.sha256(F.HELPER_SOURCE.read_bytes()).hexdigest()


def _group(*argv):
    return [str(len(argv)), *argv]


def test_the_helper_runs_each_word_literally_and_waits_for_the_stop_itself(tmp_path):
    state, db, rec, pwned = tmp_path / "running", tmp_path / "db", tmp_path / "rec", tmp_path / "pwned"
    state.write_text("1")
    db.write_text("")
    hostile = ["$(touch " + str(pwned) + ")", "a b", "--", "'", "\"", "`id`", "*"]
    record = ["/bin/sh", "-c", 'printf "%s\\n" "$@" > "$0"', str(rec), *hostile]
    status = ["/usr/bin/test", "-e", str(state)]
    signal_ = ["/bin/rm", "-f", str(state)]  # the daemon "exits" on the signal
    out = subprocess.run(["sh", str(F.HELPER_SOURCE), "stop", "5", str(db), *_group(*status), *_group(*signal_),
                          *_group(*record)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out
    words = parse_helper_output(out.stdout)
    assert words["result"] == "done" and words["lock"] == "free"
    assert float(words["t.signalled"]) <= float(words["t.exited"]) <= float(words["t"])
    assert rec.read_text().splitlines() == hostile  # every word arrived as it was written
    assert not pwned.exists()
    again = subprocess.run(["sh", str(F.HELPER_SOURCE), "stop", "5", str(db), *_group(*status), *_group(*signal_),
                            *_group(*record)], capture_output=True, text=True, timeout=60)
    assert parse_helper_output(again.stdout)["result"] == "skipped"


def test_the_helper_refuses_a_wrong_count_and_never_kills_a_daemon_that_does_not_stop(tmp_path):
    state, db = tmp_path / "running", tmp_path / "db"
    state.write_text("1")
    db.write_text("")
    status, signal_, stop = ["/usr/bin/test", "-e", str(state)], ["/bin/true"], ["/bin/true"]
    bad = subprocess.run(["sh", str(F.HELPER_SOURCE), "stop", "1", str(db), "3", *status, *_group(*signal_)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 64
    hung = subprocess.run(["sh", str(F.HELPER_SOURCE), "stop", "1", str(db), *_group(*status), *_group(*signal_),
                           *_group(*stop)], capture_output=True, text=True, timeout=60)
    assert hung.returncode == 2 and parse_helper_output(hung.stdout)["error"] == "still-running"
    assert state.exists()


def test_the_switch_flips_the_link_atomically_and_once(tmp_path):
    old, new, link = tmp_path / "garage-v0.7.3", tmp_path / "garage-v0.8.7", tmp_path / "garage"
    for f in (old, new):
        f.write_text("#!/bin/sh\n")
        f.chmod(0o755)
    link.symlink_to(old)
    runs = [subprocess.run(["sh", str(F.HELPER_SOURCE), "switch", str(new), str(link)], capture_output=True,
                           text=True, timeout=60) for _ in range(2)]
    assert [parse_helper_output(r.stdout)["result"] for r in runs] == ["done", "skipped"]
    assert link.resolve() == new and not (tmp_path / "garage.garage-migrate.tmp").exists()


def _sha(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


def _config_lab(tmp_path):
    """A node's binary link and garage.toml as the stage leaves them: live 0.7 config, staged
    0.8 one beside it (mode 0600, as the stage's upload writes it)."""
    old, new, link = tmp_path / "garage-v0.7.3", tmp_path / "garage-v0.8.7", tmp_path / "garage"
    for f in (old, new):
        f.write_text("#!/bin/sh\n")
        f.chmod(0o755)
    link.symlink_to(old)
    live, staged, keep = tmp_path / "garage.toml", tmp_path / "garage.toml.v0.8.7", tmp_path / "garage.toml.before"
    live.write_bytes(b'consul_host = "consul:8500"\n')
    live.chmod(0o640)
    staged.write_bytes(b'[consul_discovery]\nconsul_http_addr = "http://consul:8500"\n')
    staged.chmod(0o600)
    cfg = C.ConfigFlip(str(staged), str(live), str(keep), _sha(live.read_bytes()), _sha(staged.read_bytes()))
    return new, link, cfg


def _switch(new, link, cfg):
    return subprocess.run(["sh", str(F.HELPER_SOURCE), "switch", str(new), str(link), *cfg.argv()],
                          capture_output=True, text=True, timeout=60)


def test_the_switch_moves_garage_toml_with_the_binary_keeping_the_old_one_and_a_rerun_changes_nothing(tmp_path):
    from pathlib import Path

    new, link, cfg = _config_lab(tmp_path)
    before, after = Path(cfg.live).read_bytes(), Path(cfg.staged).read_bytes()
    first = _switch(new, link, cfg)
    assert first.returncode == 0, first
    w = parse_helper_output(first.stdout)
    assert (w["result"], w["binary"], w["config"]) == ("done", "done", "done")
    assert link.resolve() == new
    assert Path(cfg.live).read_bytes() == after and not Path(cfg.staged).exists()
    assert Path(cfg.keep).read_bytes() == before and Path(cfg.keep).stat().st_mode & 0o777 == 0o640  # cp -p
    again = parse_helper_output(_switch(new, link, cfg).stdout)
    assert (again["result"], again["config"]) == ("skipped", "skipped")
    assert Path(cfg.keep).read_bytes() == before  # the kept 0.7 config is never overwritten by a re-run


def test_the_switch_refuses_a_config_that_is_not_the_plans_and_changes_nothing(tmp_path):
    from pathlib import Path

    new, link, cfg = _config_lab(tmp_path)
    Path(cfg.live).write_bytes(b'consul_host = "other:8500"\n')  # edited since discovery
    out = _switch(new, link, cfg)
    assert out.returncode == 7 and parse_helper_output(out.stdout)["error"] == "config-changed"
    assert link.resolve() == tmp_path / "garage-v0.7.3" and Path(cfg.staged).exists() and not Path(cfg.keep).exists()
    (tmp_path / "b").mkdir()
    new, link, cfg = _config_lab(tmp_path / "b")
    Path(cfg.staged).write_bytes(b"# not the plan's translation\n")
    out = _switch(new, link, cfg)
    assert out.returncode == 7 and parse_helper_output(out.stdout)["error"] == "config-staged-mismatch"
    assert link.resolve() == tmp_path / "b" / "garage-v0.7.3" and not Path(cfg.keep).exists()


def test_the_switch_with_a_config_takes_exactly_five_more_words_each_checked():
    cfg = C.ConfigFlip("/etc/garage.toml.v0.8.7", "/etc/garage.toml", "/etc/garage.toml.keep", "a" * 64, "b" * 64)
    call = C.flip_switch(CTX, "/opt/garage/bin/garage-v0.8.7", config=cfg)
    assert call.argv[4:] == ("/etc/garage.toml.v0.8.7", "/etc/garage.toml", "/etc/garage.toml.keep", "a" * 64, "b" * 64)
    for bad in (C.ConfigFlip("rel/x", "/etc/garage.toml", "/k", "a" * 64, "b" * 64),
                C.ConfigFlip("/s", "/etc/garage.toml", "/k", "A" * 64, "b" * 64),
                C.ConfigFlip("/s", "/etc/garage.toml", "/k", "a" * 64, "b; rm -rf /")):
        with pytest.raises(CommandRefused):
            C.flip_switch(CTX, "/opt/garage/bin/garage-v0.8.7", config=bad)
    for n in (3, 5, 6, 8):  # two or seven arguments, nothing in between
        out = subprocess.run(["sh", str(F.HELPER_SOURCE), "switch", *(["/x"] * n)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 64


def _armed_stop(tmp_path, answer: bytes | None):
    """An armed stop of a 'running' node, answered with ``answer`` on stdin (None: EOF)."""
    state, db, signalled = tmp_path / "running", tmp_path / "db", tmp_path / "signalled"
    state.write_text("1")
    db.write_text("")
    status = ["/usr/bin/test", "-e", str(state)]
    signal_ = ["/bin/sh", "-c", 'rm -f "$0" && touch "$1"', str(state), str(signalled)]
    p = subprocess.Popen(["sh", str(F.HELPER_SOURCE), "armed", "stop", "5", str(db), *_group(*status),
                          *_group(*signal_), *_group("/bin/true")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    first = p.stdout.readline().decode()  # begin=stop
    second = p.stdout.readline().decode()  # armed=1: it waits for its release, having done nothing
    armed_before_signal = not signalled.exists()
    out, _err = p.communicate(answer or b"", timeout=60)
    return p.returncode, first + second + out.decode(), armed_before_signal, signalled.exists()


def test_an_armed_stop_observes_then_waits_for_go_and_only_then_signals(tmp_path):
    rc, out, waited, signalled = _armed_stop(tmp_path, b"go\n")
    w = parse_helper_output(out)
    assert rc == 0 and waited and signalled
    assert w["armed"] == "1" and w["result"] == "done"
    assert float(w["t.armed"]) <= float(w["t.signalled"])


@pytest.mark.parametrize("answer", [b"abort\n", None, b"go-on\n"], ids=["abort", "eof", "other"])
def test_an_armed_stop_that_is_not_released_changes_nothing(tmp_path, answer):
    rc, out, waited, signalled = _armed_stop(tmp_path, answer)
    assert rc == 65 and waited and not signalled
    assert parse_helper_output(out)["error"] == "not-released" and (tmp_path / "running").exists()


def test_an_armed_call_with_nothing_to_do_ends_before_arming_and_switch_is_never_armed(tmp_path):
    db = tmp_path / "db"
    db.write_text("")
    stopped = ["/bin/false"]  # is-active says no, and nothing holds the lock
    out = subprocess.run(["sh", str(F.HELPER_SOURCE), "armed", "stop", "5", str(db), *_group(*stopped),
                          *_group("/bin/true"), *_group("/bin/true")], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    w = parse_helper_output(out.stdout)
    assert out.returncode == 0 and w["result"] == "skipped" and "armed" not in w
    assert subprocess.run(["sh", str(F.HELPER_SOURCE), "armed", "switch", "/a", "/b"], capture_output=True,
                          timeout=60).returncode == 64
    # the plan's stop and start are armed; the switch is not
    assert C.flip_stop(CTX, "/m", "INT", wait=1, timeout=2, armed=True).argv[1:3] == ("armed", "stop")
    assert C.flip_start(CTX, "0.8.7", wait=1, timeout=2, armed=True).argv[1:3] == ("armed", "start")


def _armed_start(tmp_path, answer: bytes, running: bool):
    """An armed start, answered ``answer``; ``running``: the 'daemon' already answers 0.8.7."""
    state, started = tmp_path / "running", tmp_path / "started"
    if running:
        state.write_text("1")
    status = ["/usr/bin/test", "-e", str(state)]
    start = ["/bin/sh", "-c", 'touch "$0" "$1"', str(state), str(started)]
    stats = ["/bin/sh", "-c", 'test -e "$0" && printf "\\nGarage version: v0.8.7 [features: x]\\n"', str(state)]
    p = subprocess.Popen(["sh", str(F.HELPER_SOURCE), "armed", "start", "5", "0.8.7", *_group(*status),
                          *_group(*start), *_group(*stats)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    head = p.stdout.readline().decode() + p.stdout.readline().decode()  # begin, then armed at once
    out, _err = p.communicate(answer, timeout=60)
    return p.returncode, head + out.decode(), started.exists()


def test_an_armed_start_arms_at_once_and_go_down_starts_without_looking_again(tmp_path):
    rc, out, started = _armed_start(tmp_path, b"go-down\n", running=False)
    w = parse_helper_output(out)
    assert "armed=1" in out.splitlines()[1] and rc == 0 and started and w["result"] == "done"


def test_an_armed_start_released_with_go_observes_first_and_skips_a_running_daemon(tmp_path):
    rc, out, started = _armed_start(tmp_path, b"go\n", running=True)
    assert rc == 0 and not started and parse_helper_output(out)["result"] == "skipped"
    for sub in ("stopped", "aborted"):
        (tmp_path / sub).mkdir()
    rc, out, started = _armed_start(tmp_path / "stopped", b"go\n", running=False)
    assert rc == 0 and started and parse_helper_output(out)["result"] == "done"
    rc, out, started = _armed_start(tmp_path / "aborted", b"abort\n", running=False)
    assert rc == 65 and not started


def test_the_release_line_is_a_plain_word():
    from garage_migrate.ssh import release_line

    assert [release_line(a) for a in (True, "go", "go-down", False, None, "")] == [
        b"go\n", b"go\n", b"go-down\n", b"abort\n", b"abort\n", b"abort\n"]
    with pytest.raises(ValueError):
        release_line("go\nrm -rf /")
