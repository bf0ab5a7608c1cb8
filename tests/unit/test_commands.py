"""Command building: the allow-list, quoting, wrappers, and the exact argv of every builder."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from garage_migrate import commands as C
from garage_migrate.commands import NodeContext, RemoteCommand, ServiceControl
from garage_migrate.errors import CommandRefused

SYSTEMD = NodeContext(name="g1")
SUDO = NodeContext(name="g2", sudo=True)
LAB_SVC = "/lab/bin/garage-service"
CUSTOM = NodeContext(
    name="node-a1",
    binary_path="/lab/nodes/node-a1/usr/local/bin/garage",
    config_path="/lab/nodes/node-a1/etc/garage.toml",
    service=ServiceControl(kind="custom", start=(LAB_SVC, "start"), stop=(LAB_SVC, "stop"),
                           status=(LAB_SVC, "is-active"), signal=(LAB_SVC, "kill", "--signal")),
)


# ---------------------------------------------------------------------------- the allow-list


def test_allow_list_is_pinned():
    # Growing this list is a decision: update this test in the same change, on purpose.
    assert C.FIXED_EXECUTABLES == frozenset({
        "cat", "df", "du", "find", "kill", "ln", "mkdir", "mv", "readlink", "rm", "sha256sum",
        "stat", "sync", "systemctl", "tar", "test", "zstd",
    })
    # no ``flock``: probing sled's lock with it takes the lock for an instant (see probes.db_lock)
    assert C.WRAPPERS == frozenset({"sudo", "timeout"})
    assert C.GARAGE_BINARY_NAME.pattern == r"garage(-v\d+\.\d+\.\d+)?"
    assert C.KILL_AFTER == 5


@pytest.mark.parametrize("argv", [
    ("cat", "/etc/garage.toml"),
    ("/usr/bin/sha256sum", "/x"),
    ("/usr/local/bin/garage", "--version"),
    ("/opt/garage/garage-v0.8.7", "--version"),
    ("/lab/nodes/node-a1/usr/local/bin/garage", "-c", "/x", "status"),  # CUSTOM's configured binary
    (LAB_SVC, "start"),
    (LAB_SVC, "kill", "--signal", "SIGINT"),
])
def test_allowed(argv):
    assert C.is_allowed(RemoteCommand(argv), CUSTOM)


@pytest.mark.parametrize("argv", [
    ("sh", "-c", "true"),
    ("bash", "-c", "true"),
    ("sudo", "cat", "/x"),  # wrappers come from render(), never from argv
    ("timeout", "5", "sh"),
    ("bin/cat", "/x"),  # relative to the remote cwd
    ("garage", "status"),  # bare: whatever PATH finds
    ("garage-v0.8.7", "--version"),
    ("/tmp/garage-evil", "--version"),
    ("/opt/garage-v0.8", "--version"),
    ("/usr/bin/python3", "-c", "pass"),
    (LAB_SVC, "restart"),  # only the configured service argv prefixes
    (LAB_SVC,),
])
def test_refused(argv):
    cmd = RemoteCommand(argv)
    assert not C.is_allowed(cmd, CUSTOM)
    with pytest.raises(CommandRefused, match="not on the allow-list on node-a1"):
        C.check_allowed(cmd, CUSTOM)


def test_a_configured_binary_is_trusted_only_on_its_own_node():
    odd = NodeContext(name="x", binary_path="/srv/bin/objstore")
    cmd = RemoteCommand(("/srv/bin/objstore", "status"))
    assert C.is_allowed(cmd, odd)
    assert not C.is_allowed(cmd, SYSTEMD)
    assert not C.is_allowed(cmd)


def test_extra_executables_are_exact_strings():
    assert C.is_allowed(RemoteCommand(("sh", "-c", "true")), extra={"sh"})
    assert not C.is_allowed(RemoteCommand(("/bin/sh", "-c", "true")), extra={"sh"})


def test_trusted_gate_commands_are_prefixes():
    ctx = NodeContext(name="proxy", trusted=(("/usr/sbin/nginx-gate", "off"),))
    assert C.is_allowed(RemoteCommand(("/usr/sbin/nginx-gate", "off")), ctx)
    assert not C.is_allowed(RemoteCommand(("/usr/sbin/nginx-gate", "rm-rf")), ctx)


# ---------------------------------------------------------------------------- RemoteCommand


def test_commands_are_values():
    a = C.cat("/etc/garage.toml")
    b = C.cat("/etc/garage.toml")
    assert a == b and hash(a) == hash(b)
    assert a != C.cat("/etc/garage.toml", timeout=5)
    assert a != C.cat("/etc/garage.toml", sudo=True)
    assert RemoteCommand(["cat", "/x"]) == RemoteCommand(("cat", "/x")), "lists are frozen into tuples"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.timeout = 1  # type: ignore[misc]
    assert a.replace(sudo=True) == C.cat("/etc/garage.toml", sudo=True)
    assert a.executable == "cat"


def test_render_wraps_sudo_outside_timeout():
    cmd = RemoteCommand(("cat", "/etc/garage.toml"), timeout=30, sudo=True)
    assert cmd.words() == ("sudo", "-n", "timeout", "--kill-after=5", "30", "cat", "/etc/garage.toml")
    assert cmd.render() == "sudo -n timeout --kill-after=5 30 cat /etc/garage.toml"
    assert str(cmd) == cmd.render()
    assert RemoteCommand(("cat", "/x")).render() == "cat /x"
    assert RemoteCommand(("cat", "/x"), sudo=True).render() == "sudo -n cat /x"


@pytest.mark.parametrize(("timeout", "text"), [(60, "60"), (1.5, "1.5"), (0.25, "0.25"), (0.0004, "0.001"),
                                               (3600.0, "3600"), (2.1234, "2.124"), (0.001, "0.001"),
                                               (59.9999, "60")])
def test_timeout_is_rendered_as_a_plain_decimal_never_zero(timeout, text):
    assert RemoteCommand(("sync",), timeout=timeout).words()[2] == text


NASTY = ["plain", "with space", "quote'single", 'quote"double', "$HOME", "`id`", "$(id)", "a;b", "a|b",
         "a&&b", "*", "~", "back\\slash", "new\nline", "tab\there", "", "-n", "é ü", "'", "!"]


def test_render_quotes_every_word_so_the_shell_sees_the_same_argv():
    cmd = RemoteCommand(("cat", *NASTY), timeout=2, sudo=True)
    assert shlex.split(cmd.render()) == list(cmd.words())
    for word in NASTY:
        assert shlex.quote(word) in cmd.render()


@pytest.mark.parametrize("kwargs", [
    {"argv": ()},
    {"argv": ("cat", 3)},
    {"argv": ("cat", "a\0b")},
    {"argv": ("sync",), "timeout": 0},
    {"argv": ("sync",), "timeout": -1},
    {"argv": ("sync",), "timeout": 8 * 86400},
    {"argv": ("sync",), "stdin": "text"},
])
def test_malformed_commands_are_refused(kwargs):
    with pytest.raises(CommandRefused):
        RemoteCommand(**kwargs)


def test_stdin_is_bytes_and_not_in_repr():
    cmd = RemoteCommand(("sha256sum",), stdin=b"secret bytes")
    assert cmd.stdin == b"secret bytes"
    assert "secret" not in repr(cmd)


# ---------------------------------------------------------------------------- garage


def test_garage_puts_the_config_before_the_subcommand():
    assert C.garage(SYSTEMD, "status").argv == ("/usr/local/bin/garage", "-c", "/etc/garage.toml", "status")
    assert C.garage(SYSTEMD, "status").render() == "timeout --kill-after=5 60 /usr/local/bin/garage -c /etc/garage.toml status"
    assert C.garage(SUDO, "stats", "-a").render() == (
        "sudo -n timeout --kill-after=5 60 /usr/local/bin/garage -c /etc/garage.toml stats -a")
    assert C.garage(CUSTOM, "node", "id", "-q").argv == (
        "/lab/nodes/node-a1/usr/local/bin/garage", "-c", "/lab/nodes/node-a1/etc/garage.toml", "node", "id", "-q")
    assert C.garage(SYSTEMD, "layout", "show", timeout=5).timeout == 5


@pytest.mark.parametrize("args", [
    (),
    ("-c", "/etc/other.toml", "status"),
    ("--help",),
    ("status", "-c", "/x"),
    ("status", "--config=/x"),
    ("repair", "tables", "--yes"),
    ("repair", "--all-nodes", "tables", "--yes"),
    ("offline-repair", "object_counters", "--yes"),
])
def test_garage_refuses_what_garage_would_reject(args):
    with pytest.raises(CommandRefused):
        C.garage(SYSTEMD, *args)


def test_repair_flags_go_before_what():
    assert C.repair(SYSTEMD, "tables").argv[3:] == ("repair", "--all-nodes", "--yes", "tables")
    assert C.repair(SYSTEMD, "blocks", all_nodes=False).argv[3:] == ("repair", "--yes", "blocks")
    assert C.repair(SYSTEMD, "tables", yes=False).argv[3:] == ("repair", "--all-nodes", "tables")
    assert C.repair(SYSTEMD, "scrub", "set-tranquility", "3").argv[3:] == (
        "repair", "--all-nodes", "--yes", "scrub", "set-tranquility", "3")
    assert C.garage(SYSTEMD, "repair", "--yes", "scrub", "set-tranquility", "-1").argv[-1] == "-1"
    with pytest.raises(CommandRefused, match="unknown repair 'rebalance'"):
        C.repair(SYSTEMD, "rebalance")
    assert C.REPAIR_WHATS == frozenset({"tables", "blocks", "versions", "block_refs", "scrub"})


def test_offline_repair():
    cmd = C.offline_repair(SUDO, "object_counters", timeout=3600)
    assert cmd.render() == ("sudo -n timeout --kill-after=5 3600 /usr/local/bin/garage -c /etc/garage.toml "
                            "offline-repair --yes object_counters")
    assert C.offline_repair(SYSTEMD, "object_counters", timeout=9, yes=False).argv[3:] == (
        "offline-repair", "object_counters")
    with pytest.raises(CommandRefused):
        C.offline_repair(SYSTEMD, "tables", timeout=9)
    with pytest.raises(TypeError):
        C.offline_repair(SYSTEMD, "object_counters")  # type: ignore[call-arg]  # the timeout is explicit
    assert C.OFFLINE_REPAIR_WHATS == frozenset({"object_counters", "k2v_item_counters"})


def test_garage_version_of_a_staged_or_configured_binary():
    assert C.garage_version("/opt/garage/garage-v0.8.7").argv == ("/opt/garage/garage-v0.8.7", "--version")
    assert C.garage_version(CUSTOM.binary_path, ctx=CUSTOM).argv == (CUSTOM.binary_path, "--version")
    assert C.is_allowed(C.garage_version("/lab/nodes/node-a1/usr/local/bin/garage")), "named garage"
    odd = NodeContext(name="x", binary_path="/srv/bin/objstore")
    assert C.garage_version("/srv/bin/objstore", ctx=odd).argv[0] == "/srv/bin/objstore"
    with pytest.raises(CommandRefused):
        C.garage_version("/srv/bin/objstore")  # only as the configured binary of its node
    with pytest.raises(CommandRefused):
        C.garage_version("/tmp/not-garage")
    with pytest.raises(CommandRefused):
        C.garage_version("garage-v0.8.7")


# ---------------------------------------------------------------------------- files and backups


@pytest.mark.parametrize(("cmd", "argv"), [
    (C.cat("/etc/garage.toml"), ("cat", "/etc/garage.toml")),
    (C.sha256sum("/opt/garage-v0.8.7"), ("sha256sum", "/opt/garage-v0.8.7")),
    (C.readlink_f("/usr/local/bin/garage"), ("readlink", "-f", "/usr/local/bin/garage")),
    (C.stat("/x"), ("stat", "-L", "-c", "%s %a %U %Y %F", "/x")),
    (C.exists("/x"), ("test", "-e", "/x")),
    (C.mkdir_p("/var/backups/garage"), ("mkdir", "-p", "/var/backups/garage")),
    (C.remove_file("/usr/local/bin/garage-v0.8.7.part"), ("rm", "-f", "/usr/local/bin/garage-v0.8.7.part")),
    (C.list_files("/var/backups"), ("find", "/var/backups", "-mindepth", "1", "-maxdepth", "1",
                                    "-printf", "%y %s %T@ %f\\n")),
    (C.du_bytes("/var/lib/garage/meta"), ("du", "-sb", "/var/lib/garage/meta")),
    (C.df_avail("/var/backups"), ("df", "-B1", "--output=avail,target", "/var/backups")),
    (C.symlink("/opt/garage-v0.8.7", "/usr/local/bin/garage"),
     ("ln", "-sfn", "/opt/garage-v0.8.7", "/usr/local/bin/garage")),
    (C.rename("/a/b.tmp", "/a/b"), ("mv", "-T", "/a/b.tmp", "/a/b")),
    (C.sync(), ("sync",)),
    (C.kill(1234, "int"), ("kill", "-s", "INT", "1234")),
    (C.zstd_test("/b/meta.tar.zst"), ("zstd", "-tq", "/b/meta.tar.zst")),
    (C.tar_stream("/var/lib/garage/meta/", timeout=600), ("tar", "-C", "/var/lib/garage", "-cf", "-", "meta")),
    (C.tar_stream("/meta", timeout=600), ("tar", "-C", "/", "-cf", "-", "meta")),
    (C.tar_archive("/var/lib/garage/meta", "/var/lib/garage/meta-v0.7.tar.zst", timeout=600),
     ("tar", "-acf", "/var/lib/garage/meta-v0.7.tar.zst", "-C", "/var/lib/garage", "meta")),
], ids=lambda v: v[0] if isinstance(v, tuple) else None)
def test_builder_argv(cmd, argv):
    assert cmd.argv == argv
    assert cmd.timeout is not None, "every builder sets an explicit timeout"
    assert C.is_allowed(cmd)


def test_switch_symlink_is_a_new_link_renamed_over_the_old():
    ln, mv = C.switch_symlink("/opt/garage-v0.8.7", "/usr/local/bin/garage", sudo=True)
    assert ln == RemoteCommand(("ln", "-sfn", "/opt/garage-v0.8.7", "/usr/local/bin/garage.garage-migrate.tmp"),
                               timeout=C.DEFAULT_TIMEOUT, sudo=True)
    assert mv == RemoteCommand(("mv", "-T", "/usr/local/bin/garage.garage-migrate.tmp", "/usr/local/bin/garage"),
                               timeout=C.DEFAULT_TIMEOUT, sudo=True)


@pytest.mark.parametrize("build", [
    lambda: C.cat("etc/garage.toml"),
    lambda: C.cat("~/garage.toml"),
    lambda: C.cat("/var/../etc/shadow"),
    lambda: C.cat("/x\ny"),
    lambda: C.sha256sum("-"),
    lambda: C.remove_file("/"),
    lambda: C.tar_stream("/", timeout=5),
    lambda: C.tar_archive("/m", "meta.tar.zst", timeout=5),
    lambda: C.switch_symlink("/opt/g", "/"),
    lambda: C.symlink("relative", "/usr/local/bin/garage"),
    lambda: C.kill(1, "TERM"),
    lambda: C.kill(0, "TERM"),
    lambda: C.kill(True, "TERM"),
    lambda: C.kill(1234, "NOSUCH"),
])
def test_malformed_paths_and_targets_are_refused(build):
    with pytest.raises(CommandRefused):
        build()


def test_long_running_builders_need_an_explicit_timeout():
    with pytest.raises(TypeError):
        C.tar_stream("/m")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        C.tar_archive("/m", "/m.tar.zst")  # type: ignore[call-arg]


# ---------------------------------------------------------------------------- service


def test_systemd_service_commands():
    assert C.service_start(SYSTEMD).argv == ("systemctl", "start", "garage")
    assert C.service_stop(SYSTEMD).argv == ("systemctl", "stop", "garage")
    assert C.service_status(SYSTEMD).argv == ("systemctl", "is-active", "garage")
    assert C.service_signal(SYSTEMD, "INT").argv == ("systemctl", "kill", "-s", "SIGINT", "garage")
    assert C.service_signal(SUDO, 2).render() == "sudo -n timeout --kill-after=5 30 systemctl kill -s SIGINT garage"
    other = NodeContext(name="x", service=ServiceControl(unit="garage-s3"))
    assert C.service_stop(other).argv == ("systemctl", "stop", "garage-s3")


def test_custom_service_commands_from_the_inventory():
    assert C.service_start(CUSTOM).argv == (LAB_SVC, "start")
    assert C.service_stop(CUSTOM).argv == (LAB_SVC, "stop")
    assert C.service_status(CUSTOM).argv == (LAB_SVC, "is-active")
    assert C.service_signal(CUSTOM, "int").argv == (LAB_SVC, "kill", "--signal", "SIGINT")
    assert C.service_signal(CUSTOM, "SIGTERM").argv[-1] == "SIGTERM"


def test_custom_service_control_needs_all_four_commands():
    with pytest.raises(CommandRefused, match="needs a stop command"):
        ServiceControl(kind="custom", start=("/x",), status=("/x",), signal=("/x",))
    with pytest.raises(CommandRefused):
        ServiceControl(kind="upstart")  # type: ignore[arg-type]


@pytest.mark.parametrize(("given", "name"), [("INT", "SIGINT"), ("sigterm", "SIGTERM"), (" hup ", "SIGHUP"),
                                             (9, "SIGKILL")])
def test_signal_name(given, name):
    assert C.signal_name(given) == name


def test_node_context_paths_must_be_absolute():
    with pytest.raises(CommandRefused):
        NodeContext(name="x", binary_path="garage")
    with pytest.raises(CommandRefused):
        NodeContext(name="x", config_path="etc/garage.toml")
