"""A strict command-line parser that behaves like Garage's structopt 0.3 / clap 2.34 CLI.

Why it is one module of ~670 lines: the grammar tables (which commands, options and
positionals each version has) and the clap engine that parses against them and words its
errors are read together; every error text depends on both (the usage line printed under an
error is built from the grammar of the innermost command). Splitting them would put one
behaviour in two places.

Standard library only (it runs in every simulated ``garage`` invocation). :func:`parse` returns
either a :class:`Command` or a :class:`ClapExit` carrying what clap would print and the exit
code: ``--help``/``--version`` on stdout with 0, every parse error on stderr with 1 (ref 2.2).

The grammar is the subset of Garage's CLI that the lab simulates, per personality (ref 2.1,
2.9-2.13; late 1, 3). Everything else is rejected like clap rejects unknown input.

What is reproduced from clap 2.34, from memory of its source [inf: the references only say the
texts are inferred, ref 14]:

* parsing: options are order-free within a command, a command's flags must come before its
  subcommand (after it they belong to the subcommand and are unknown there), ``--`` ends
  options, ``--opt=value``/``-ovalue``/``-o=value``, clustered short flags, leading dashes
  stripped (``---yes`` is ``--yes``), ``-h`` is help except where the command uses it
  (top-level ``-h`` is ``--rpc-host``);
* error texts: ``Found argument ... which wasn't expected``, ``The subcommand ... wasn't
  recognized`` with ``Did you mean`` (strsim 0.8 Jaro-Winkler > 0.8), missing or empty values,
  repeated arguments, integer validation (Rust ``FromStr`` messages), each followed by the
  ``USAGE:`` line clap would compute and ``For more information try --help``;
* a missing required subcommand prints the command's help on stderr (structopt sets
  ``SubcommandRequiredElseHelp``);
* help texts in clap 2's default template at the 120-column width clap uses when not on a TTY.
  The ``about`` strings are Garage's doc comments as remembered [inf].
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache

from .personality import Personality

DEFAULT_CONFIG = "/etc/garage.toml"
"""Garage's default for ``-c``; :func:`parse` leaves ``Command.config`` as ``None`` instead."""

_TERM_WIDTH = 120  # clap 2 without a terminal
_TAB = "    "
_MORE = "\n\nFor more information try --help"


class CliError(Exception):
    """A handled error of a command: printed as ``Error: <message>`` with exit code 1."""



@dataclass(frozen=True)
class Command:
    """A successfully parsed command line.

    Attributes:
        rpc_host: ``-h/--rpc-host`` (or ``GARAGE_RPC_HOST`` when ``env`` was given), else ``None``.
        rpc_secret: ``-s/--rpc-secret`` (or ``GARAGE_RPC_SECRET``), else ``None``.
        config: ``-c/--config`` (or ``GARAGE_CONFIG_FILE``), else ``None``: the caller applies
            the fallbacks and finally :data:`DEFAULT_CONFIG`.
        path: the subcommand chain, e.g. ``("repair", "tables")``.
        flags: long names of the flags given to the subcommands, e.g. ``{"all-nodes", "yes"}``.
        args: option and positional values of the subcommands by clap name (``"tranquility"``,
            ``"max-size"``, ``"name"``...), including positional defaults (0.7.3 scrub ``"2"``).
            An option given without any value (``--max-size --max-objects 5``) is absent, as in
            clap 2.
    """

    rpc_host: str | None
    rpc_secret: str | None
    config: str | None
    path: tuple[str, ...]
    flags: frozenset[str] = frozenset()
    args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClapExit:
    """What clap prints before exiting instead of running a command."""

    code: int
    stdout: str
    stderr: str


# ---------------------------------------------------------------------------------------------
# Grammar
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Arg:
    """One clap argument. ``name`` is structopt's kebab-case field name (shown as ``<name>``)."""

    name: str
    help: str = ""
    long: str | None = None
    short: str | None = None
    takes_value: bool = False
    required: bool = False
    default: str | None = None
    env: str | None = None
    int_bits: int | None = None  # u32 / usize fields get a FromStr validator from structopt

    @property
    def positional(self) -> bool:
        return self.long is None and self.short is None

    @property
    def is_flag(self) -> bool:
        return not self.positional and not self.takes_value

    def __str__(self) -> str:
        """clap's Display of the argument, used in errors and usage lines."""
        if self.positional:
            return f"<{self.name}>"
        switch = f"--{self.long}" if self.long else f"-{self.short}"
        return f"{switch} <{self.name}>" if self.takes_value else switch


def _flag(name: str, help: str, short: str | None = None) -> _Arg:
    return _Arg(name, help, long=name, short=short)


def _option(name: str, help: str, **kw) -> _Arg:
    return _Arg(name, help, long=kw.pop("long", name), takes_value=True, **kw)


def _pos(
    name: str, help: str = "", *, required: bool = True, int_bits: int | None = None, default: str | None = None
) -> _Arg:
    return _Arg(name, help, required=required and default is None, default=default, int_bits=int_bits)


@dataclass(frozen=True)
class _Cmd:
    name: str
    about: str = ""
    args: tuple[_Arg, ...] = ()
    subs: tuple[_Cmd, ...] = ()


_HELP_FLAG = _Arg("hclap_help", "Prints help information", long="help", short="h")
_VERSION_FLAG = _Arg("vclap_version", "Prints version information", long="version", short="V")
_HELP_SUB = _Cmd("help", "Prints this message or the help of the given subcommand(s)")
_U32, _USIZE = 32, 64


def _leaf(name: str, about: str, *args: _Arg) -> _Cmd:
    return _Cmd(name, about, args)


@lru_cache(maxsize=None)
def _grammar(p: Personality) -> _Cmd:
    """The lab's subset of Garage's ``Opt`` for one personality (ref 2.1, 2.9-2.13; late 1, 3)."""
    yes = _flag("yes", "Confirm the launch of the repair operation")
    if p.scrub_subcommands:
        scrub = _Cmd("scrub", "Verify integrity of all blocks on disc (extremely slow, i/o intensive)", subs=(
            _leaf("start", "Start scrub"),
            _leaf("pause", "Pause scrub (it will resume automatically after 24 hours)"),
            _leaf("resume", "Resume paused scrub"),
            _leaf("cancel", "Cancel scrub in progress"),
            _leaf("set-tranquility", "Set tranquility level for in-progress and future scrubs",
                  _pos("tranquility", int_bits=_U32)),
        ))
    else:
        scrub = _leaf("scrub", "Verify integrity of all blocks on disc (extremely slow, i/o intensive)",
                      _pos("tranquility", "Tranquility factor (see tranquilizer documentation)", int_bits=_U32, default="2"))
    bucket_subs = [
        _leaf("list", "List buckets"),
        _leaf("info", "Get bucket info", _pos("name", "Bucket name")),
    ]
    if p.has_counters:  # quotas came with the object counters (0.8.0)
        bucket_subs.append(_leaf(
            "set-quotas", "Set the quotas for this bucket",
            _pos("bucket", "Bucket name"),
            _option("max-size", "Set a maximum size for the bucket (specify a size e.g. in MiB or GiB, "
                                "or `none` for no size restriction)"),
            _option("max-objects", "Set a maximum number of objects for the bucket (or `none` for no restriction)"),
        ))
    subs = [
        _leaf("server", "Run Garage server"),
        _leaf("status", "Get network status"),
        _Cmd("node", "Operations on individual Garage nodes", subs=(
            _leaf("id", "Print identifier (public key) of this Garage node",
                  _flag("quiet", "Do not print usage instructions to stderr", "q")),
        )),
        _Cmd("layout", "Operations on the assignation of node roles in the cluster layout", subs=(
            _leaf("show", "Show roles currently assigned to nodes and changes staged for commit"),
        )),
        _Cmd("bucket", "Operations on buckets", subs=tuple(bucket_subs)),
        _Cmd("repair", "Start repair of node data on remote node",
             (_flag("all-nodes", "Launch repair operation on all nodes", "a"), yes), (
                 _leaf("tables", "Only do a full sync of metadata tables"),
                 _leaf("blocks", "Only repair (resync/rebalance) the set of stored blocks"),
                 _leaf("versions", "Only redo the propagation of object deletions to the version table (slow)"),
                 _leaf("block_refs", "Only redo the propagation of version deletions to the block ref table (extremely slow)"),
                 scrub,
             )),
    ]
    if p.has_offline_repair:
        subs.append(_Cmd(
            "offline-repair",
            "Offline reparation of node data (these repairs must be run offline directly on the server node)",
            (yes,), (_leaf("k2v_item_counters", "Repair K2V item counters"), _leaf("object_counters", "Repair object counters")),
        ))
    subs.append(_leaf("stats", "Gather node statistics",
                      _flag("all-nodes", "Gather statistics from all nodes", "a"),
                      _flag("detailed", "Gather detailed statistics (this can be long)", "d")))
    if p.has_worker_cmd:
        listing = _leaf("list", "List all workers on Garage node",
                        _flag("busy", "Show only busy workers", "b"), _flag("errors", "Show only workers with errors", "e"))
        if p.has_worker_get:
            worker_subs: tuple[_Cmd, ...] = (
                listing,
                _leaf("info", "Get detailed information about a worker", _pos("tid", int_bits=_USIZE)),
                _leaf("get", "Get worker parameter",
                      _flag("all-nodes", "Gather variable values from all nodes", "a"),
                      _pos("variable", "Variable name to get, or none to get all variables", required=False)),
                _leaf("set", "Set worker parameter",
                      _flag("all-nodes", "Set variable values on all nodes", "a"),
                      _pos("variable", "Variable node to set"), _pos("value", "Value to set the variable to")),
            )
        else:
            worker_subs = (listing, _Cmd("set", "Set worker parameter", subs=(
                _leaf("scrub-tranquility", "Set tranquility of scrub operations", _pos("tranquility", int_bits=_U32)),
                _leaf("resync-n-workers", "Set number of concurrent block resync workers", _pos("n-workers", int_bits=_USIZE)),
                _leaf("resync-tranquility", "Set tranquility of block resync operations", _pos("tranquility", int_bits=_U32)),
            )))
        subs.append(_Cmd("worker", "Manage background workers", subs=worker_subs))
    if p.has_block_cmd:
        subs.append(_Cmd("block", "Low-level debug operations on data blocks", subs=(
            _leaf("list-errors", "List all blocks that currently have a resync error"),
        )))
    top_args = (
        _option("rpc-host", "Host to connect to for admin operations, in the format: <public-key>@<ip>:<port>",
                short="h", env="GARAGE_RPC_HOST"),
        _option("rpc-secret", "RPC secret network key for admin operations", short="s", env="GARAGE_RPC_SECRET"),
        _option("config-file", "Path to configuration file", long="config", short="c",
                env="GARAGE_CONFIG_FILE", default=DEFAULT_CONFIG),
    )
    return _Cmd("garage", "", top_args, tuple(subs))


# ---------------------------------------------------------------------------------------------
# strsim 0.8 (used by clap's suggestions)
# ---------------------------------------------------------------------------------------------


def _jaro(a: str, b: str) -> float:
    """strsim 0.8 ``jaro``, including its way of counting transpositions."""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    if len(a) == 1 and len(b) == 1:
        return 1.0 if a == b else 0.0
    search = max(len(a), len(b)) // 2 - 1
    consumed = [False] * len(b)
    matches = transpositions = 0
    last_j = 0
    for i, ca in enumerate(a):
        lo, hi = max(0, i - search), min(len(b) - 1, i + search)
        for j in range(lo, hi + 1):
            if not consumed[j] and b[j] == ca:
                consumed[j] = True
                matches += 1
                if j < last_j:
                    transpositions += 1
                last_j = j
                break
    if matches == 0:
        return 0.0
    return (matches / len(a) + matches / len(b) + (matches - transpositions) / matches) / 3.0


def jaro_winkler(a: str, b: str) -> float:
    """strsim 0.8 ``jaro_winkler`` (the common prefix is not capped at 4)."""
    jaro = _jaro(a, b)
    prefix = 0
    for ca, cb in zip(a, b):
        if ca != cb:
            break
        prefix += 1
    return min(1.0, jaro + 0.1 * prefix * (1.0 - jaro))


def _did_you_mean(value: str, candidates: list[str]) -> str | None:
    """clap's ``did_you_mean``: the most similar candidate above 0.8, first one on ties."""
    best: tuple[float, str] | None = None
    for c in candidates:
        score = jaro_winkler(value, c)
        if score > 0.8 and (best is None or best[0] < score):
            best = (score, c)
    return None if best is None else best[1]


# ---------------------------------------------------------------------------------------------
# Help
# ---------------------------------------------------------------------------------------------


def _fill(line: str, width: int) -> list[str]:
    """textwrap 0.11 ``fill`` with ``break_words(false)`` and its hyphen splitter, simplified."""
    words = line.split(" ")
    out: list[str] = []
    cur = ""
    for word in words:
        while True:
            sep = " " if cur else ""
            if len(cur) + len(sep) + len(word) <= width:
                cur += sep + word
                break
            room = width - len(cur) - len(sep)
            heads = [i + 1 for i in range(1, len(word) - 1)
                     if word[i] == "-" and word[i - 1].isalnum() and word[i + 1].isalnum() and i + 1 <= room]
            if heads:
                cur += sep + word[:heads[-1]]
                word = word[heads[-1]:]
            elif not cur:
                cur = word  # an unbreakable word longer than the line stays whole
                break
            out.append(cur)
            cur = ""
    out.append(cur)
    return out


def _wrap(text: str, width: int) -> str:
    return "\n".join(part for line in text.split("\n") for part in _fill(line, width))


class _Level:
    """One command being parsed: its grammar node, names, and the values matched so far."""

    def __init__(self, cmd: _Cmd, bin_name: str, version: str | None, env: Mapping[str, str]):
        self.cmd = cmd
        self.bin_name = bin_name
        self.version = version
        self.env = env
        # clap gives -h/-V to help/version only when the command does not use them itself.
        shorts = {a.short for a in cmd.args}
        autos = [auto if auto.short not in shorts else replace(auto, short=None)
                 for auto in (_HELP_FLAG, _VERSION_FLAG) if version is not None or auto is _HELP_FLAG]
        self.args: list[_Arg] = list(cmd.args) + autos
        self.subs: tuple[_Cmd, ...] = cmd.subs + ((_HELP_SUB,) if cmd.subs else ())
        self.positionals = [a for a in cmd.args if a.positional]
        self.values: dict[str, list[str]] = {}  # insertion order = order of first use
        self.occurs: dict[str, int] = {}

    # -- matching ---------------------------------------------------------------------------

    def by_long(self, long: str) -> _Arg | None:
        return next((a for a in self.args if a.long == long), None)

    def by_short(self, short: str) -> _Arg | None:
        return next((a for a in self.args if a.short == short), None)

    def by_name(self, name: str) -> _Arg:
        return next(a for a in self.args if a.name == name)

    def sub(self, name: str) -> _Cmd | None:
        return next((s for s in self.subs if s.name == name), None)

    def occur(self, arg: _Arg) -> None:
        self.values.setdefault(arg.name, [])
        self.occurs[arg.name] = self.occurs.get(arg.name, 0) + 1

    def add_value(self, arg: _Arg, value: str) -> None:
        self.values.setdefault(arg.name, []).append(value)

    # -- usage ------------------------------------------------------------------------------

    def help_usage(self) -> str:
        """clap's ``create_help_usage``: ``garage repair [FLAGS] <SUBCOMMAND>``."""
        usage = self.bin_name
        if any(a.is_flag for a in self.cmd.args):
            usage += " [FLAGS]"
        if any(a.takes_value and not a.required for a in self.cmd.args):
            usage += " [OPTIONS]"
        usage += "".join(f" {a}" for a in self.positionals if a.required)
        optional = [a for a in self.positionals if not a.required]
        if len(optional) > 1:
            usage += " [ARGS]"
        elif optional:
            usage += f" [{optional[0].name}]"
        if self.cmd.subs:
            usage += " <SUBCOMMAND>"
        return usage

    def required_usage(self, names: list[str]) -> list[str]:
        """clap's ``get_required_usage_from``: positionals by index first, then the others."""
        wanted = dict.fromkeys(names)
        pos = [str(a) for a in self.positionals if a.name in wanted]
        return pos + [str(self.by_name(n)) for n in wanted if not self.by_name(n).positional]

    def error_usage(self, extra: Iterable[str] = ()) -> str:
        """clap's ``create_error_usage``: the help usage, or a "smart" one naming what was used."""
        used = [n for n in self.values if not self.by_name(n).positional and not self.by_name(n).required]
        used += [n for n in extra if n not in used]
        if not used:
            return f"USAGE:\n{_TAB}{self.help_usage()}"
        required = [a.name for a in self.args if a.required]
        return f"USAGE:\n{_TAB}" + " ".join([self.bin_name] + self.required_usage(required + used))

    # -- help -------------------------------------------------------------------------------

    def help_text(self) -> str:
        """clap 2's default help template (without the final newline clap adds when printing)."""
        title = self.bin_name.replace(" ", "-") if " " in self.bin_name else self.cmd.name
        out = f"{title} {self.version or ''}\n"
        if self.cmd.about:
            out += _wrap(self.cmd.about, _TERM_WIDTH) + "\n"
        out += f"\nUSAGE:\n{_TAB}{self.help_usage()}\n\n"
        by_name = lambda a: a.name  # noqa: E731 - clap sorts flags and options by arg name
        sections = [
            ("FLAGS", sorted((a for a in self.args if a.is_flag), key=by_name)),
            ("OPTIONS", sorted((a for a in self.args if a.takes_value), key=by_name)),
            ("ARGS", self.positionals),
        ]
        blocks = [f"{title}:\n" + self._arg_lines(args) for title, args in sections if args]
        if self.subs:
            blocks.append("SUBCOMMANDS:\n" + self._sub_lines())
        return out + "\n\n".join(blocks)

    def _spec(self, a: _Arg) -> str:
        specs = []
        if a.env:
            specs.append(f" [env: {a.env}={self.env.get(a.env, '')}]")
        if a.default is not None:
            specs.append(f" [default: {a.default}]")
        return " ".join(specs)  # each spec starts with a space: clap 2 really prints two

    @staticmethod
    def _help_cell(text: str, longest: int, cont_indent: int) -> str:
        if longest + 12 + len(text) >= _TERM_WIDTH:
            text = _wrap(text, _TERM_WIDTH - longest - 12)
        return ("\n" + " " * cont_indent).join(text.split("\n"))

    def _arg_lines(self, args: list[_Arg]) -> str:
        longest = max([2] + [len(str(a)) for a in args])
        lines = []
        for a in args:
            if a.positional:
                line = f"{_TAB}{a}" + " " * (longest + 4 - len(str(a)))
                indent = longest + 8
            else:
                line = _TAB + (f"-{a.short}" if a.short else _TAB)
                if a.long:
                    line += (", " if a.short else "") + f"--{a.long}"
                if a.takes_value:
                    line += f" <{a.name}>"
                line += " " * (longest - len(str(a)) + (4 if a.long else 8))
                indent = longest + 12
            lines.append(line + self._help_cell(a.help + self._spec(a), longest, indent))
        return "\n".join(lines)

    def _sub_lines(self) -> str:
        longest = max([2] + [len(s.name) for s in self.subs])
        return "\n".join(
            f"{_TAB}{s.name}" + " " * (longest + 4 - len(s.name)) + self._help_cell(s.about, longest, longest + 8)
            for s in sorted(self.subs, key=lambda s: s.name)
        )


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class _Exit(Exception):
    def __init__(self, result: ClapExit):
        super().__init__(result)
        self.result = result


def _error(message: str) -> _Exit:
    return _Exit(ClapExit(1, "", f"error: {message}\n"))


def _unknown_argument(arg: str, suggestion: str, usage: str) -> _Exit:
    return _error(f"Found argument '{arg}' which wasn't expected, or isn't valid in this context"
                  f"{suggestion or ''}\n\n{usage}{_MORE}")


def _int_error(value: str, bits: int) -> str | None:
    """The ``ParseIntError`` text of Rust's ``u32``/``usize`` ``FromStr``, or ``None`` if valid."""
    if value == "":
        return "cannot parse integer from empty string"
    digits = value[1:] if value[0] == "+" else value
    if not digits or any(c not in "0123456789" for c in digits):
        return "invalid digit found in string"
    if int(digits) >= 2**bits:
        return "number too large to fit in target type"
    return None


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, p: Personality, env: Mapping[str, str]):
        self.p = p
        self.env = env

    def level(self, cmd: _Cmd, bin_name: str, top: bool = False) -> _Level:
        version = None if cmd is _HELP_SUB else (self.p.stats_version_string if top else self.p.tag)
        return _Level(cmd, bin_name, version, self.env)

    def run(self, lvl: _Level, rest: deque[str]) -> list[_Level]:
        """Parse one command and, recursively, its subcommand; return the chain of levels."""
        pending: _Arg | None = None  # an option still waiting for its value
        pos_index = 0
        trailing = False
        sub: _Cmd | None = None
        while rest:
            arg = rest.popleft()
            starts_new = arg.startswith("-") and arg != "-"
            if not trailing and arg == "--":
                trailing = True
                continue
            if not trailing:
                if pending is None and lvl.sub(arg) is not None:
                    sub = lvl.sub(arg)
                    break
                if starts_new:
                    pending = self.long(lvl, arg, rest) if arg.startswith("--") else self.short(lvl, arg)
                    continue
                if pending is not None:
                    lvl.add_value(pending, arg)
                    pending = None
                    continue
            suggestion = _did_you_mean(arg, [s.name for s in lvl.subs])
            if suggestion is not None:
                raise _error(
                    f"The subcommand '{arg}' wasn't recognized\n\tDid you mean '{suggestion}'?\n\n"
                    f"If you believe you received this message in error, try re-running with "
                    f"'{lvl.bin_name} -- {arg}'\n\n{lvl.error_usage()}{_MORE}")
            if pos_index >= len(lvl.positionals):
                raise _unknown_argument(arg, "", lvl.error_usage())
            lvl.add_value(lvl.positionals[pos_index], arg)
            lvl.occur(lvl.positionals[pos_index])
            pos_index += 1

        chain = [lvl]
        if sub is _HELP_SUB:
            self.help_subcommand(lvl, rest)
        if sub is not None:
            chain += self.run(self.level(sub, f"{lvl.bin_name} {sub.name}"), rest)
        elif lvl.cmd.subs:
            raise _Exit(ClapExit(1, "", lvl.help_text() + "\n"))
        self.validate(lvl, pending)
        return chain

    def long(self, lvl: _Level, arg: str, rest: deque[str]) -> _Arg | None:
        body = arg.lstrip("-")
        name, eq, value = body.partition("=")
        found = lvl.by_long(name)
        if found is not None and found.takes_value:
            return self.option(lvl, found, eq + value if eq else None)
        if found is not None:
            self.flag(lvl, found)
            return None
        suggestion, extra = self.flag_suggestion(lvl, name, list(rest))
        raise _unknown_argument(f"--{name}", suggestion, lvl.error_usage(extra))

    def short(self, lvl: _Level, arg: str) -> _Arg | None:
        body = arg.lstrip("-")
        for c in body:
            found = lvl.by_short(c)
            if found is not None and found.takes_value:
                value = body.split(c, 1)[1]
                return self.option(lvl, found, value or None)
            if found is None:
                raise _unknown_argument(f"-{c}", "", lvl.error_usage())
            self.flag(lvl, found)
        return None

    @staticmethod
    def option(lvl: _Level, arg: _Arg, inline: str | None) -> _Arg | None:
        if inline is not None:
            lvl.add_value(arg, inline.lstrip("="))
        lvl.occur(arg)
        return arg if inline is None else None

    @staticmethod
    def flag(lvl: _Level, arg: _Arg) -> None:
        if arg.name == _HELP_FLAG.name:
            raise _Exit(ClapExit(0, lvl.help_text() + "\n", ""))
        if arg.name == _VERSION_FLAG.name:
            title = lvl.bin_name.replace(" ", "-") if " " in lvl.bin_name else lvl.cmd.name
            raise _Exit(ClapExit(0, f"{title} {lvl.version}\n", ""))
        lvl.occur(arg)

    @staticmethod
    def flag_suggestion(lvl: _Level, name: str, rest: list[str]) -> tuple[str, list[str]]:
        """clap's ``did_you_mean_flag_suffix``; a match here is also named in the usage line."""
        own = _did_you_mean(name, [a.long for a in lvl.args if a.long and not a.positional])
        if own is not None:
            return f"\n\tDid you mean --{own}?", [lvl.by_long(own).name]
        best: tuple[int, str] | None = None
        for sub in lvl.subs:
            cand = _did_you_mean(name, [a.long for a in sub.args if a.long])
            if cand is not None and sub.name in rest and (best is None or rest.index(sub.name) < best[0]):
                best = (rest.index(sub.name), f"\n\tDid you mean to put '--{cand}' after the subcommand '{sub.name}'?")
        return (best[1] if best else ""), []

    def help_subcommand(self, lvl: _Level, rest: deque[str]) -> None:
        """``garage [<cmd>...] help [<sub>...]``: the help of the named command, on stdout."""
        target = lvl
        for name in rest:
            cmd = target.sub(name)
            if cmd is None:
                raise _error(f"The subcommand '{name}' wasn't recognized\n\nUSAGE:\n"
                             f"{_TAB}{lvl.bin_name} help <subcommands>...{_MORE}")
            target = self.level(cmd, f"{target.bin_name} {cmd.name}")
        raise _Exit(ClapExit(0, target.help_text() + "\n", ""))

    def validate(self, lvl: _Level, pending: _Arg | None) -> None:
        """clap's ``Validator::validate``: env/defaults, required, empty value, values, repeats."""
        for a in lvl.args:
            if a.name not in lvl.values:
                if a.env and a.env in self.env:
                    lvl.add_value(a, self.env[a.env])
                elif a.default is not None and a.positional:
                    lvl.add_value(a, a.default)
        missing = [a.name for a in lvl.args if a.required and not lvl.values.get(a.name)]
        if missing:
            listed = "".join(f"\n{_TAB}{u}" for u in lvl.required_usage(missing))
            raise _error(f"The following required arguments were not provided:{listed}\n\n{lvl.error_usage()}{_MORE}")
        if pending is not None and not lvl.values.get(pending.name):
            raise _error(f"The argument '{pending}' requires a value but none was supplied\n\n{lvl.error_usage()}{_MORE}")
        for name, values in lvl.values.items():
            arg = lvl.by_name(name)
            for value in values:
                problem = _int_error(value, arg.int_bits) if arg.int_bits else None
                if problem:
                    raise _error(f"Invalid value for '{arg}': {problem}")
            if lvl.occurs.get(name, 0) > 1:
                raise _error(f"The argument '{arg}' was provided more than once, but cannot be used multiple "
                             f"times\n\n{lvl.error_usage()}{_MORE}")


def parse(p: Personality, argv: list[str], env: Mapping[str, str] | None = None) -> Command | ClapExit:
    """Parse ``garage`` arguments the way the given Garage version's clap 2.34 CLI would.

    Args:
        p: the personality, which decides the grammar and the version strings.
        argv: the arguments after the program name.
        env: the environment, if ``GARAGE_RPC_HOST``, ``GARAGE_RPC_SECRET`` and
            ``GARAGE_CONFIG_FILE`` should be applied (and shown in ``--help``); by default the
            parse is pure and those are left to the caller.

    Returns:
        The command, or what clap prints and the exit code for help, version and errors.
    """
    parser = _Parser(p, env or {})
    top = parser.level(_grammar(p), "garage", top=True)
    try:
        chain = parser.run(top, deque(argv))
    except _Exit as exit_:
        return exit_.result

    def given(name: str) -> str | None:
        values = top.values.get(name)
        return values[0] if values else None

    flags = frozenset(lvl.by_name(n).long for lvl in chain[1:] for n in lvl.values if lvl.by_name(n).is_flag)
    args = {n: v[0] for lvl in chain[1:] for n, v in lvl.values.items() if v and not lvl.by_name(n).is_flag}
    return Command(given("rpc-host"), given("rpc-secret"), given("config-file"),
                   tuple(lvl.cmd.name for lvl in chain[1:]), flags, args)
