"""Tests of the simulated Garage CLI parser (garage_lab.garage.clap), per personality.

"ref" is shared/reference/garage-0.7-to-0.8.md, "late" is shared/reference/garage-0.8-late.md.
The grammar comes from the references. The clap 2.34 texts are inferred, as the references say
(ref 2.2, 14): these tests pin the wording the lab reproduces.
"""

from __future__ import annotations

import pytest

from garage_lab.garage import clap
from garage_lab.garage.clap import ClapExit, Command, parse
from garage_lab.garage.personality import FEATURES_RELEASE_08, V073, V080, V087

ALL = [V073, V080, V087]
V08 = [V080, V087]


def ok(p, *argv, **kw) -> Command:
    result = parse(p, list(argv), **kw)
    assert isinstance(result, Command), result
    return result


def fails(p, *argv) -> str:
    """Parse, expect a clap error (stderr, exit 1), return stderr."""
    result = parse(p, list(argv))
    assert isinstance(result, ClapExit), result
    assert (result.code, result.stdout) == (1, ""), result
    assert result.stderr.endswith("\n")
    return result.stderr


def unexpected(arg: str, usage: str, hint: str = "") -> str:
    return (f"error: Found argument '{arg}' which wasn't expected, or isn't valid in this context{hint}\n\n"
            f"USAGE:\n    {usage}\n\nFor more information try --help\n")


# ----------------------------------------------------------------------------- grammar

COMMON = [
    (["server"], ("server",), set(), {}),
    (["status"], ("status",), set(), {}),
    (["node", "id"], ("node", "id"), set(), {}),
    (["node", "id", "-q"], ("node", "id"), {"quiet"}, {}),
    (["node", "id", "--quiet"], ("node", "id"), {"quiet"}, {}),
    (["layout", "show"], ("layout", "show"), set(), {}),
    (["repair", "tables"], ("repair", "tables"), set(), {}),
    (["repair", "-a", "--yes", "blocks"], ("repair", "blocks"), {"all-nodes", "yes"}, {}),
    (["repair", "--yes", "--all-nodes", "versions"], ("repair", "versions"), {"all-nodes", "yes"}, {}),
    (["repair", "--yes", "block_refs"], ("repair", "block_refs"), {"yes"}, {}),
    (["stats"], ("stats",), set(), {}),
    (["stats", "-a", "-d"], ("stats",), {"all-nodes", "detailed"}, {}),
    (["stats", "-ad"], ("stats",), {"all-nodes", "detailed"}, {}),
    (["stats", "--detailed", "--all-nodes"], ("stats",), {"all-nodes", "detailed"}, {}),
    (["bucket", "list"], ("bucket", "list"), set(), {}),
    (["bucket", "info", "mybucket"], ("bucket", "info"), set(), {"name": "mybucket"}),
]


@pytest.mark.parametrize("p", ALL, ids=lambda p: p.version)
@pytest.mark.parametrize("argv, path, flags, args", COMMON, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_commands_common_to_every_version(p, argv, path, flags, args):
    """ref 2.1, 2.6-2.10, 2.13: the commands every simulated version accepts."""
    c = ok(p, *argv)
    assert (c.path, c.flags, c.args) == (path, frozenset(flags), args)


V08_ONLY = [
    (["repair", "scrub", "start"], ("repair", "scrub", "start"), set(), {}),
    (["repair", "--yes", "scrub", "pause"], ("repair", "scrub", "pause"), {"yes"}, {}),
    (["repair", "scrub", "resume"], ("repair", "scrub", "resume"), set(), {}),
    (["repair", "scrub", "cancel"], ("repair", "scrub", "cancel"), set(), {}),
    (["repair", "scrub", "set-tranquility", "3"], ("repair", "scrub", "set-tranquility"), set(), {"tranquility": "3"}),
    (["offline-repair", "--yes", "object_counters"], ("offline-repair", "object_counters"), {"yes"}, {}),
    (["offline-repair", "k2v_item_counters"], ("offline-repair", "k2v_item_counters"), set(), {}),
    (["worker", "list"], ("worker", "list"), set(), {}),
    (["worker", "list", "-b", "-e"], ("worker", "list"), {"busy", "errors"}, {}),
    (["worker", "list", "--errors"], ("worker", "list"), {"errors"}, {}),
    (["bucket", "set-quotas", "--max-size", "10GiB", "b"], ("bucket", "set-quotas"), set(), {"max-size": "10GiB", "bucket": "b"}),
    (["bucket", "set-quotas", "b", "--max-objects", "none", "--max-size=1G"], ("bucket", "set-quotas"), set(),
     {"bucket": "b", "max-objects": "none", "max-size": "1G"}),
]


@pytest.mark.parametrize("p", V08, ids=lambda p: p.version)
@pytest.mark.parametrize("argv, path, flags, args", V08_ONLY, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_commands_of_0_8(p, argv, path, flags, args):
    """ref 2.9, 2.11-2.13; late 1, 3.2: scrub subcommands, offline-repair, worker list, set-quotas."""
    c = ok(p, *argv)
    assert (c.path, c.flags, c.args) == (path, frozenset(flags), args)


def test_worker_set_of_0_8_0_takes_three_subcommands():
    """ref 2.11: `worker set <scrub-tranquility|resync-n-workers|resync-tranquility> <N>`."""
    assert ok(V080, "worker", "set", "scrub-tranquility", "3").args == {"tranquility": "3"}
    assert ok(V080, "worker", "set", "resync-tranquility", "0").path == ("worker", "set", "resync-tranquility")
    assert ok(V080, "worker", "set", "resync-n-workers", "4").args == {"n-workers": "4"}


def test_worker_get_set_info_of_0_8_7():
    """late 1.2, 1.3: `worker get [-a] [VAR]`, `worker set [-a] VAR VALUE`, `worker info TID`."""
    assert ok(V087, "worker", "get").args == {}
    c = ok(V087, "worker", "get", "-a", "scrub-next-run")
    assert (c.flags, c.args) == ({"all-nodes"}, {"variable": "scrub-next-run"})
    c = ok(V087, "worker", "set", "resync-tranquility", "3", "--all-nodes")
    assert (c.path, c.flags, c.args) == (("worker", "set"), {"all-nodes"}, {"variable": "resync-tranquility", "value": "3"})
    assert ok(V087, "worker", "info", "42").args == {"tid": "42"}
    assert ok(V087, "block", "list-errors").path == ("block", "list-errors")


def test_0_7_3_scrub_takes_an_optional_tranquility_defaulting_to_2():
    """ref 2.9: v0.7.3 `scrub [TRANQUILITY]`, default 2."""
    assert ok(V073, "repair", "--yes", "scrub").args == {"tranquility": "2"}
    assert ok(V073, "repair", "scrub", "5").args == {"tranquility": "5"}
    assert fails(V073, "repair", "scrub", "start") == "error: Invalid value for '<tranquility>': invalid digit found in string\n"


# ----------------------------------------------------------------------------- global options


def test_global_options_before_the_subcommand():
    """ref 2.1: -h is --rpc-host (not help), -s --rpc-secret, -c --config; they go first."""
    c = ok(V080, "-h", "abc@10.0.0.1:3901", "-s", "ff", "-c", "/x.toml", "status")
    assert (c.rpc_host, c.rpc_secret, c.config, c.path) == ("abc@10.0.0.1:3901", "ff", "/x.toml", ("status",))
    c = ok(V073, "--rpc-host=h@1:2", "--rpc-secret", "s", "--config", "c", "stats")
    assert (c.rpc_host, c.rpc_secret, c.config) == ("h@1:2", "s", "c")
    c = ok(V087, "-hk@a:1", "-s=s", "status")
    assert (c.rpc_host, c.rpc_secret) == ("k@a:1", "s")


def test_config_is_none_unless_given_and_env_is_opt_in():
    """ref 2.1: default /etc/garage.toml and GARAGE_* env vars are applied by the caller by default."""
    assert ok(V080, "status").config is None and clap.DEFAULT_CONFIG == "/etc/garage.toml"
    env = {"GARAGE_CONFIG_FILE": "/env.toml", "GARAGE_RPC_HOST": "e@h:1", "GARAGE_RPC_SECRET": "es"}
    c = ok(V080, "status", env=env)
    assert (c.rpc_host, c.rpc_secret, c.config) == ("e@h:1", "es", "/env.toml")
    assert ok(V080, "-c", "/cli.toml", "status", env=env).config == "/cli.toml"


def test_global_option_after_the_subcommand_is_a_clap_error():
    """ref 2.1: `garage status -c x` is a clap error."""
    assert fails(V080, "status", "-c", "x") == unexpected("-c", "garage status")


def test_global_option_without_value_at_the_end():
    """clap 2 [inf]: an option missing its value at the end of a command."""
    assert fails(V087, "bucket", "set-quotas", "b", "--max-size") == (
        "error: The argument '--max-size <max-size>' requires a value but none was supplied\n\n"
        "USAGE:\n    garage bucket set-quotas <bucket> --max-size <max-size>\n\nFor more information try --help\n")


# ----------------------------------------------------------------------------- flag placement


@pytest.mark.parametrize("p", ALL, ids=lambda p: p.version)
def test_flag_after_the_sub_subcommand_is_rejected(p):
    """ref 2.2 / checklist 2: `garage repair tables --yes` is a clap error, exit 1."""
    assert fails(p, "repair", "tables", "--yes") == unexpected("--yes", "garage repair tables")
    assert fails(p, "repair", "tables", "-a") == unexpected("-a", "garage repair tables")


def test_offline_repair_flag_after_what_is_rejected():
    """ref 2.12 / checklist 6: `--yes` must come before the subcommand."""
    assert fails(V080, "offline-repair", "object_counters", "--yes") == unexpected(
        "--yes", "garage offline-repair object_counters")


def test_subcommand_flag_before_the_subcommand_suggests_moving_it():
    """clap 2.34 did_you_mean_flag_suffix [inf]: a flag of a later subcommand is pointed at."""
    assert fails(V080, "--all-nodes", "repair", "tables") == unexpected(
        "--all-nodes", "garage [OPTIONS] <SUBCOMMAND>",
        "\n\tDid you mean to put '--all-nodes' after the subcommand 'repair'?")


def test_misspelt_flag_suggests_the_close_one_and_names_it_in_usage():
    """clap 2 [inf]: Jaro-Winkler > 0.8 gives `Did you mean --yes?`."""
    assert fails(V087, "repair", "--ye", "tables") == unexpected("--ye", "garage repair --yes", "\n\tDid you mean --yes?")


def test_options_are_order_free_within_the_innermost_command():
    """brief / clap 2: options before or after the positional of the same command."""
    a = ok(V080, "bucket", "set-quotas", "--max-objects", "5", "b")
    b = ok(V080, "bucket", "set-quotas", "b", "--max-objects", "5")
    assert a == b


def test_double_dash_ends_options():
    """clap 2: after `--` a leading dash is a value, not a flag."""
    assert ok(V080, "bucket", "info", "--", "-odd-name").args == {"name": "-odd-name"}


# ----------------------------------------------------------------------------- missing / unknown


@pytest.mark.parametrize("p", ALL, ids=lambda p: p.version)
def test_repair_without_what_prints_help_on_stderr_with_exit_1(p):
    """ref 2.2 / 2.9: `garage repair` (and the cookbook's `repair --all-nodes --yes`) does not parse."""
    for argv in (["repair"], ["repair", "--all-nodes", "--yes"]):
        err = fails(p, *argv)
        assert err.startswith(f"garage-repair v{p.version}\nStart repair of node data on remote node\n\n"
                              "USAGE:\n    garage repair [FLAGS] <SUBCOMMAND>\n\nFLAGS:\n")
        assert "\nSUBCOMMANDS:\n    block_refs    " in err


def test_no_subcommand_at_all_prints_top_help_on_stderr():
    """ref 2.2: a required subcommand that is missing prints help on stderr, exit 1."""
    assert fails(V087).startswith(f"garage v0.8.7 [features: {FEATURES_RELEASE_08}]\n\nUSAGE:\n    garage [OPTIONS] <SUBCOMMAND>\n")


@pytest.mark.parametrize("p", ALL, ids=lambda p: p.version)
def test_there_is_no_rebalance(p):
    """ref 2.9 / late 3.2: `rebalance` is v0.9."""
    assert fails(p, "repair", "--yes", "rebalance") == unexpected("rebalance", "garage repair --yes")


def test_0_7_3_rejects_0_8_commands():
    """ref 2.2 / checklist 8: offline-repair and worker are unknown to v0.7.3."""
    assert fails(V073, "offline-repair", "--yes", "object_counters") == unexpected(
        "offline-repair", "garage [OPTIONS] <SUBCOMMAND>")
    assert fails(V073, "worker", "list") == unexpected("worker", "garage [OPTIONS] <SUBCOMMAND>")
    assert fails(V073, "bucket", "set-quotas", "b") == unexpected("set-quotas", "garage bucket <SUBCOMMAND>")


def test_0_8_0_rejects_late_commands():
    """ref 2.11 / late 1.3, 3.3: no `worker get`, `worker info` or `block` in v0.8.0."""
    assert fails(V080, "worker", "get") == unexpected("get", "garage worker <SUBCOMMAND>")
    assert fails(V080, "worker", "info", "1") == unexpected("info", "garage worker <SUBCOMMAND>")
    assert fails(V080, "block", "list-errors") == unexpected("block", "garage [OPTIONS] <SUBCOMMAND>")


def test_typo_in_subcommand_suggests_the_close_one():
    """clap 2 invalid_subcommand [inf]: `The subcommand ... wasn't recognized` + Did you mean."""
    assert fails(V080, "wroker", "list") == (
        "error: The subcommand 'wroker' wasn't recognized\n\tDid you mean 'worker'?\n\n"
        "If you believe you received this message in error, try re-running with 'garage -- wroker'\n\n"
        "USAGE:\n    garage [OPTIONS] <SUBCOMMAND>\n\nFor more information try --help\n")


def test_extra_positional_is_rejected():
    """clap 2: a positional nobody takes is an unexpected argument."""
    assert fails(V087, "status", "extra") == unexpected("extra", "garage status")
    assert fails(V087, "bucket", "info", "a", "b") == unexpected("b", "garage bucket info <name>")


def test_missing_positional_lists_it():
    """clap 2 missing_required_argument [inf]."""
    assert fails(V080, "bucket", "info") == (
        "error: The following required arguments were not provided:\n    <name>\n\n"
        "USAGE:\n    garage bucket info <name>\n\nFor more information try --help\n")
    assert fails(V087, "worker", "set", "-a", "x") == (
        "error: The following required arguments were not provided:\n    <value>\n\n"
        "USAGE:\n    garage worker set <variable> <value> --all-nodes\n\nFor more information try --help\n")


def test_repeated_flag_is_rejected():
    """clap 2 unexpected_multiple_usage [inf]."""
    assert fails(V080, "stats", "-a", "--all-nodes") == (
        "error: The argument '--all-nodes' was provided more than once, but cannot be used multiple times\n\n"
        "USAGE:\n    garage stats --all-nodes\n\nFor more information try --help\n")


@pytest.mark.parametrize("value, message", [
    ("x", "invalid digit found in string"),
    ("", "cannot parse integer from empty string"),
    ("4294967296", "number too large to fit in target type"),
])
def test_integer_arguments_are_validated_like_rust_from_str(value, message):
    """structopt u32 validator: clap's `Invalid value for` + Rust ParseIntError text."""
    assert fails(V080, "repair", "scrub", "set-tranquility", value) == f"error: Invalid value for '<tranquility>': {message}\n"
    assert ok(V080, "repair", "scrub", "set-tranquility", "+7").args == {"tranquility": "+7"}


def test_negative_number_is_an_unknown_short_flag():
    """clap 2 without AllowNegativeNumbers: `-1` is parsed as flag `-1`."""
    assert fails(V080, "worker", "set", "scrub-tranquility", "-1") == unexpected(
        "-1", "garage worker set scrub-tranquility <tranquility>")


# ----------------------------------------------------------------------------- help and version


@pytest.mark.parametrize("p, text", [
    (V073, "garage v0.7.3\n"),
    (V080, f"garage v0.8.0 [features: {FEATURES_RELEASE_08}]\n"),
    (V087, f"garage v0.8.7 [features: {FEATURES_RELEASE_08}]\n"),
])
def test_version_on_stdout_exit_0(p, text):
    """ref 2.4 / late 6: `garage --version` and `-V`."""
    assert parse(p, ["--version"]) == ClapExit(0, text, "")
    assert parse(p, ["-V"]) == ClapExit(0, text, "")


def test_subcommand_version_has_dashed_name_and_no_features():
    """ref 2.4: `garage server --version` prints `garage-server v0.8.0`."""
    assert parse(V080, ["server", "--version"]) == ClapExit(0, "garage-server v0.8.0\n", "")
    assert parse(V087, ["repair", "tables", "-V"]) == ClapExit(0, "garage-repair-tables v0.8.7\n", "")


def test_help_on_stdout_exit_0_and_h_is_help_inside_subcommands():
    """ref 2.1: `--help` is help everywhere; `-h` is help only below the top level."""
    expected = (
        "garage-stats v0.8.0\n"
        "Gather node statistics\n"
        "\n"
        "USAGE:\n"
        "    garage stats [FLAGS]\n"
        "\n"
        "FLAGS:\n"
        "    -a, --all-nodes    Gather statistics from all nodes\n"
        "    -d, --detailed     Gather detailed statistics (this can be long)\n"
        "    -h, --help         Prints help information\n"
        "    -V, --version      Prints version information\n"
    )
    assert parse(V080, ["stats", "--help"]) == ClapExit(0, expected, "")
    assert parse(V080, ["stats", "-h"]) == ClapExit(0, expected, "")
    assert parse(V080, ["help", "stats"]) == ClapExit(0, expected, "")


def test_top_level_help_lists_version_specific_subcommands():
    """ref 2.1: top-level help has no `-h` for help (it is --rpc-host) and lists this version's commands."""
    out = parse(V073, ["--help"]).stdout
    assert "\n        --help       Prints help information\n" in out
    assert "\n    -h, --rpc-host <rpc-host>        Host to connect to" in out
    subs = [line.split()[0] for line in out.split("SUBCOMMANDS:\n")[1].splitlines() if line.startswith("    ") and line[4] != " "]
    assert subs == ["bucket", "help", "layout", "node", "repair", "server", "stats", "status"]
    subs87 = parse(V087, ["--help"]).stdout.split("SUBCOMMANDS:\n")[1]
    assert "    offline-repair    Offline reparation" in subs87 and "    worker  " in subs87 and "    block  " in subs87


def test_help_shows_options_positionals_and_defaults():
    """clap 2 help template [inf]: OPTIONS and ARGS sections, `[default: 2]`."""
    out = parse(V073, ["repair", "scrub", "--help"]).stdout
    assert out.endswith(
        "USAGE:\n    garage repair scrub [tranquility]\n\n"
        "FLAGS:\n    -h, --help       Prints help information\n    -V, --version    Prints version information\n\n"
        "ARGS:\n    <tranquility>    Tranquility factor (see tranquilizer documentation) [default: 2]\n")
    quotas = parse(V087, ["bucket", "set-quotas", "--help"]).stdout
    assert "USAGE:\n    garage bucket set-quotas [OPTIONS] <bucket>\n" in quotas
    assert "\n        --max-objects <max-objects>    Set a maximum number of objects" in quotas


def test_help_subcommand_with_unknown_name():
    """clap 2 unrecognized_subcommand [inf]."""
    assert fails(V080, "help", "nope") == (
        "error: The subcommand 'nope' wasn't recognized\n\n"
        "USAGE:\n    garage help <subcommands>...\n\nFor more information try --help\n")


# ----------------------------------------------------------------------------- strsim


def test_jaro_winkler_matches_strsim_documentation():
    """strsim 0.8 doc examples, which clap's suggestions rely on."""
    assert abs(clap.jaro_winkler("cheeseburger", "cheese fries") - 0.911) < 0.001
    assert abs(clap._jaro("Friedrich Nietzsche", "Jean-Paul Sartre") - 0.392) < 0.001
    assert clap.jaro_winkler("", "") == 1.0 and clap.jaro_winkler("a", "") == 0.0
