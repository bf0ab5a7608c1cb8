"""Hostile and malformed inputs (issue 12 §5): one table, used by the unit tests (each is refused,
with the right code and message) and by the lab test (each is refused by the real entry point
with no SSH connection opened, as the lab's sshd log shows).

A case turns a valid inventory (a dict whose files exist: binary, known_hosts, key) into a bad
input: an inventory text, the run's options, the migration id and environment variables. Its
``expect`` is a regular expression the refusal's message must match.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PASSPHRASE = "PASSPHRASE-s3cr3t-9f2e"


@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        id: the test id.
        change: ``(inventory dict, scratch dir) -> dict | str``: the dict to dump as YAML, or the raw text.
        expect: regex the refusal's message matches.
        options: :class:`~garage_migrate.plan.MigrationOptions` fields of the run.
        migration_id: the run's migration id.
        env: environment variables set for the run.
        options_invalid: the options themselves are refused (the form / CLI check), not the inventory.
    """

    id: str
    change: Callable[[dict, Path], dict | str]
    expect: str
    options: dict = field(default_factory=dict)
    migration_id: str | None = None
    env: dict = field(default_factory=dict)
    options_invalid: bool = False


def _set(path: str, value) -> Callable[[dict, Path], dict]:
    """A change that sets ``a.b[0].c`` to ``value`` (``None`` deletes it)."""
    def change(d: dict, _tmp: Path) -> dict:
        *parents, last = _parse(path)
        cur = d
        for p in parents:
            cur = cur[p]
        if value is _DELETE:
            del cur[last]
        else:
            cur[last] = value
        return d
    return change


_DELETE = object()


def _parse(path: str) -> list:
    out: list = []
    for part in path.replace("]", "").split("."):
        name, *idx = part.split("[")
        out.append(name)
        out += [int(i) for i in idx]
    return out


def _text(fn: Callable[[str], str]) -> Callable[[dict, Path], str]:
    def change(d: dict, _tmp: Path) -> str:
        return fn(yaml.safe_dump(d, sort_keys=False))
    return change


def _file(key: str, make: Callable[[Path, dict], Path]) -> Callable[[dict, Path], dict]:
    """Point ``key`` (``ssh.known_hosts``...) at a file ``make(tmp, d)`` writes."""
    def change(d: dict, tmp: Path) -> dict:
        section, name = key.split(".")
        d[section][name] = str(make(tmp, d))
        return d
    return change


def _known_hosts_without_first(tmp: Path, d: dict) -> Path:
    lines = Path(d["ssh"]["known_hosts"]).read_text().splitlines()
    first = d["nodes"][0]["host"]
    p = tmp / "known_hosts.partial"
    p.write_text("".join(ln + "\n" for ln in lines if first not in ln.split()[0].strip("[]").split("]")[0].split(",")))
    return p


def _write(name: str, data: bytes, mode: int = 0o600) -> Callable[[Path, dict], Path]:
    def make(tmp: Path, _d: dict) -> Path:
        p = tmp / name
        p.write_bytes(data)
        p.chmod(mode)
        return p
    return make


def _encrypted_key(tmp: Path, d: dict) -> Path:
    import asyncssh

    key = asyncssh.read_private_key(d["ssh"]["key_file"])
    p = tmp / "id_encrypted"
    key.write_private_key(str(p), passphrase=PASSPHRASE, rounds=50)  # a test key: a fast KDF
    p.chmod(0o600)
    return p


def _other_binary(tmp: Path, d: dict) -> Path:
    p = tmp / "garage-v0.8.7"
    p.write_bytes(Path(d["target"]["binary"]).read_bytes() + b"\n# tampered\n")
    p.chmod(0o755)
    return p


def _non_executable_binary(d: dict, tmp: Path) -> dict:
    p = tmp / "garage-plain"
    data = Path(d["target"]["binary"]).read_bytes()
    p.write_bytes(data)
    p.chmod(0o644)
    d["target"]["binary"] = str(p)
    d["target"]["sha256"] = hashlib.sha256(data).hexdigest()
    return d


def _with(*changes: Callable[[dict, Path], dict]) -> Callable[[dict, Path], dict]:
    def change(d: dict, tmp: Path) -> dict:
        for c in changes:
            d = c(d, tmp)
        return d
    return change


def _duplicate(field_name: str) -> Callable[[dict, Path], dict]:
    def change(d: dict, _tmp: Path) -> dict:
        d["nodes"][1][field_name] = d["nodes"][0][field_name]
        return d
    return change


def _yaml_bad_line(text: str) -> str:
    # an unclosed flow sequence on the line after `target:`: the message names that line
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("nodes:"))
    lines.insert(i, "extra: [unclosed, {a: 1}")
    return "\n".join(lines) + "\n"


def _yaml_tab(text: str) -> str:
    return text.replace("\n  ", "\n\t", 1)


def _yaml_dup_key(text: str) -> str:
    return text + "cluster: second\n"


CASES: list[Case] = [
    # ---------------------------------------------------------------- YAML syntax
    Case("yaml-unclosed-flow", _text(_yaml_bad_line), r"inventory\.yaml:\d+: invalid YAML"),
    Case("yaml-tab-indent", _text(_yaml_tab), r"inventory\.yaml:\d+: invalid YAML"),
    Case("yaml-duplicate-key", _text(_yaml_dup_key), r":\d+: duplicate key 'cluster' \(first on line \d+\)"),
    Case("yaml-not-a-mapping", lambda d, t: "- just\n- a list\n", r"inventory\.yaml:1: the inventory must be a mapping"),
    Case("yaml-empty", lambda d, t: "# nothing\n", r"the inventory is empty"),
    Case("yaml-binary-garbage", lambda d, t: "cluster: \x00\x01\n", r"invalid YAML"),
    # ---------------------------------------------------------------- missing fields, unknown fields
    Case("missing-target", _set("target", _DELETE), r"target: Field required"),
    Case("missing-node-host", _set("nodes[1].host", _DELETE), r":\d+ nodes\[1\]\.host: Field required"),
    Case("missing-sha256", _set("target.sha256", _DELETE), r"target\.sha256: Field required"),
    Case("no-nodes", _set("nodes", []), r"nodes: List should have at least 1 item"),
    Case("unknown-field-typo", _set("nodes[0].hots", "x"), r"nodes\[0\]\.hots: unknown field: did you mean 'host'"),
    # ---------------------------------------------------------------- duplicates, zones
    Case("duplicate-node-name", _duplicate("name"), r"nodes\[1\]\.name: duplicate node name \(also nodes\[0\]\)"),
    Case("duplicate-host", _duplicate("host"), r"nodes\[1\]\.host: .* is also nodes\[0\]"),
    Case("zone-with-space", _set("nodes[0].zone", "dc 1"), r"nodes\[0\]\.zone: use letters"),
    Case("unknown-zone-in-options", lambda d, t: d, r"stop_after_zone: unknown zone 'dc9'",
         options={"fanout": {"stop_after_zone": "dc9"}}),
    Case("more-zones-down-than-zones", lambda d, t: d, r"max_zones_down: 9 is more than the \d+ zone",
         options={"fanout": {"max_zones_down": 9}}),
    # ---------------------------------------------------------------- versions
    Case("target-0.9", _set("target.version", "0.9.0"), r"target\.version: must be a 0\.8\.x release"),
    Case("target-0.7", _set("target.version", "0.7.3"), r"target\.version: must be a 0\.8\.x release"),
    Case("target-as-number", _set("target.version", 0.8), r"YAML read 0\.8 as a number"),
    Case("source-0.6", _set("source", {"version": "0.6.0"}), r"source\.version: must be a 0\.7\.x release"),
    Case("source-0.8", _set("source", {"version": "0.8.7"}), r"source\.version: must be a 0\.7\.x release"),
    # ---------------------------------------------------------------- the binary
    Case("binary-missing", _set("target.binary", "/nonexistent/garage-v0.8.7"), r"target\.binary: .* does not exist"),
    Case("binary-checksum-mismatch", _file("target.binary", _other_binary),
         r"target\.sha256: .* has SHA-256 [0-9a-f]{64}, not the inventory's"),
    Case("sha256-not-hex", _set("target.sha256", "z" * 64), r"target\.sha256: must be 64 hexadecimal digits"),
    Case("binary-not-executable", _non_executable_binary, r"target\.binary: .* is not executable"),
    # ---------------------------------------------------------------- host keys
    Case("known-hosts-without-node", _file("ssh.known_hosts", _known_hosts_without_first),
         r"ssh\.known_hosts \(node-?\w+\): .* has no key for"),
    Case("known-hosts-missing", _set("ssh.known_hosts", "/nonexistent/known_hosts"),
         r"ssh\.known_hosts: .* does not exist; host keys are always verified"),
    Case("known-hosts-disabled", _set("ssh.known_hosts", None), r"host-key checking cannot be turned off"),
    Case("known-hosts-garbage", _file("ssh.known_hosts", _write("kh.garbage", b"\xff\xfe not a known_hosts\n")),
         r"ssh\.known_hosts"),
    # ---------------------------------------------------------------- keys and secrets from the environment
    Case("key-missing", _set("ssh.key_file", "/nonexistent/id_ed25519"), r"ssh\.key_file: .* does not exist"),
    Case("key-is-a-directory", _set("ssh.key_file", "/"), r"ssh\.key_file: / does not exist or is not a file"),
    Case("key-garbage", _file("ssh.key_file", _write("id_garbage", b"-----BEGIN NOTHING-----\n")),
         r"ssh\.key_file: .* is not a private key"),
    Case("key-encrypted-no-passphrase", _file("ssh.key_file", _encrypted_key),
         r"ssh\.key_file: .* it is encrypted: name the variable"),
    Case("key-wrong-passphrase", _with(_file("ssh.key_file", _encrypted_key), _set("ssh.key_passphrase_env", "GM_KEY_PASS")),
         r"the passphrase in \$GM_KEY_PASS does not open it", env={"GM_KEY_PASS": "not-the-passphrase"}),
    Case("passphrase-env-unset", _with(_file("ssh.key_file", _encrypted_key), _set("ssh.key_passphrase_env", "GM_KEY_PASS")),
         r"ssh\.key_passphrase_env: \$GM_KEY_PASS is not set", env={"GM_KEY_PASS": ""}),
    Case("passphrase-pasted-literally", _set("ssh.key_passphrase_env", PASSPHRASE + " !"),
         r"ssh\.key_passphrase_env: must be the NAME of an environment variable"),
    Case("bearer-token-env-unset", _set("prometheus.bearer_token_env", "GM_PROM_TOKEN"),
         r"prometheus\.bearer_token_env: \$GM_PROM_TOKEN is not set", env={"GM_PROM_TOKEN": ""}),
    Case("prometheus-file-url", _set("prometheus.url", "file:///etc/passwd"), r"prometheus\.url: must be an http"),
    # ---------------------------------------------------------------- absurd timeouts and form values
    Case("connect-timeout-zero", _set("ssh.connect_timeout", 0), r"ssh\.connect_timeout: Input should be greater than 0"),
    Case("connect-timeout-huge", _set("ssh.connect_timeout", 1e9), r"ssh\.connect_timeout: Input should be less than"),
    Case("connect-timeout-inf", _text(lambda t: t.replace("connect_timeout: 5.0", "connect_timeout: .inf")),
         r"ssh\.connect_timeout: Input should be less than"),
    Case("connect-timeout-words", _set("ssh.connect_timeout", "ten seconds"), r"ssh\.connect_timeout: Input should be a valid number"),
    Case("prometheus-timeout-negative", _set("prometheus.timeout", -1), r"prometheus\.timeout: Input should be greater than 0"),
    Case("gate-deadline-a-century", lambda d, t: d, r"gate_deadline_s", options={"gate_deadline_s": 3e9},
         options_invalid=True),
    Case("gate-deadline-nan", lambda d, t: d, r"gate_deadline_s", options={"gate_deadline_s": float("nan")},
         options_invalid=True),
    Case("watch-negative", lambda d, t: d, r"watch_s", options={"watch_s": -5}, options_invalid=True),
    Case("gate-consecutive-zero", lambda d, t: d, r"gate_consecutive", options={"gate_consecutive": 0},
         options_invalid=True),
    Case("parallel-nodes-absurd", lambda d, t: d, r"max_parallel_nodes", options={"fanout": {"max_parallel_nodes": 10**6}},
         options_invalid=True),
    Case("stop-after-zone-shell", lambda d, t: d, r"stop_after_zone", options={"fanout": {"stop_after_zone": "dc1; reboot"}},
         options_invalid=True),
    Case("form-extra-field", lambda d, t: d, r"(?i)extra inputs", options={"skip_backups": True}, options_invalid=True),
    # ---------------------------------------------------------------- names and paths a shell would read
    Case("node-name-semicolon", _set("nodes[0].name", "a;rm -rf /"), r"nodes\[0\]\.name: use letters"),
    Case("node-name-space", _set("nodes[0].name", "node a1"), r"nodes\[0\]\.name: use letters"),
    Case("node-name-newline", _set("nodes[0].name", "a1\nb1"), r"nodes\[0\]\.name: use letters"),
    Case("node-name-quote", _set("nodes[0].name", "a1'"), r"nodes\[0\]\.name: use letters"),
    Case("node-name-dollar", _set("nodes[0].name", "$(reboot)"), r"nodes\[0\]\.name: use letters"),
    Case("binary-path-semicolon", _set("nodes[0].binary_path", "/usr/local/bin/garage; reboot"),
         r"nodes\[0\]\.binary_path: .* holds ' ', ';'"),
    Case("config-path-subshell", _set("nodes[0].config_path", "/etc/garage$(id).toml"),
         r"nodes\[0\]\.config_path: .* holds '\$', '\(', '\)'"),
    Case("config-path-backtick", _set("nodes[1].config_path", "/etc/`id`.toml"), r"nodes\[1\]\.config_path: .* holds '`'"),
    Case("backup-root-newline", _set("backup.root", "/var/backups\n/etc"), r"backup\.root: .* is not a plain absolute path"),
    Case("backup-root-quote", _set("backup.root", "/var/backups/it's"), r"backup\.root: .* holds \"'\""),
    Case("backup-root-relative", _set("backup.root", "backups"), r"backup\.root: must be an absolute path"),
    Case("path-dotdot", _set("nodes[0].binary_path", "/usr/local/../../etc/passwd"), r"is not a plain absolute path"),
    Case("host-option-injection", _set("nodes[0].host", "-oProxyCommand=reboot"), r"nodes\[0\]\.host: .* is not a host"),
    Case("host-with-space", _set("nodes[0].host", "10.0.0.1 evil"), r"nodes\[0\]\.host: .* is not a host"),
    Case("host-with-semicolon", _set("nodes[0].host", "h;id"), r"nodes\[0\]\.host: .* is not a host"),
    Case("ssh-user-injection", _set("ssh.user", "root;id"), r"ssh\.user: use letters"),
    Case("cluster-name-path", _set("cluster", "../etc"), r"cluster: use letters"),
    Case("service-unit-injection", _set("service", {"kind": "systemd", "unit": "garage;reboot"}), r"service\.unit: use letters"),
    Case("service-argv-newline", _set("service.start", ["/bin/garage-service", "start\nreboot"]),
         r"service\.start: .*control characters"),
    Case("service-argv-relative", _set("service.stop", ["bin/stop"]), r"service\.stop: .*bare name or an absolute path"),
    Case("stop-signal-injection", _set("service.stop_signal", "INT; reboot"), r"service\.stop_signal: .* is not a signal"),
    Case("migration-id-traversal", lambda d, t: d, r"migration id '\.\./\.\./etc' is not a name", migration_id="../../etc"),
    Case("migration-id-space", lambda d, t: d, r"is not a name", migration_id="m 1; id"),
]


def materialise(case: Case, base: dict, tmp: Path) -> Path:
    """Write ``case``'s inventory under ``tmp`` and return its path."""
    tmp.mkdir(parents=True, exist_ok=True)
    out = case.change(copy.deepcopy(base), tmp)
    text = out if isinstance(out, str) else yaml.safe_dump(out, sort_keys=False)
    path = tmp / "inventory.yaml"
    path.write_text(text)
    return path


def environment(case: Case) -> dict[str, str | None]:
    """The variables to set (``None``: unset) for ``case``; a ``""`` value means unset."""
    return {k: (v or None) for k, v in case.env.items()}


def apply_env(env: dict[str, str | None]) -> dict[str, str | None]:
    """Set ``env`` in ``os.environ``; return what to restore."""
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    return saved
