"""Hostile and malformed input is refused before anything reaches a node (issue 12 §5).

Every case of :mod:`tests.unit.hostile_cases` goes through what a run does first: the options
(the Prefect form, the CLI flags) are validated, the inventory is loaded, and
:func:`garage_migrate.precheck.check_before_connecting` checks the controller's files; none of
these opens a connection (the lab test proves it against a real sshd). Each refusal is typed,
names the field (and, from YAML, the line), and holds no secret.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import asyncssh
import pytest
import yaml
from pydantic import ValidationError

from garage_migrate.errors import ErrorCode, InventoryError
from garage_migrate.inventory import load_inventory
from garage_migrate.plan import MigrationOptions
from garage_migrate.precheck import check_before_connecting, check_migration_id
from tests.unit.hostile_cases import CASES, PASSPHRASE, Case, environment, materialise

HOSTS = ("10.9.0.1", "10.9.0.2", "10.9.0.3")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """A valid inventory whose files exist: an executable binary with its digest, a key, and a
    known_hosts with every node's (made-up) host key."""
    d = tmp_path_factory.mktemp("base")
    binary = d / "garage-v0.8.7"
    binary.write_bytes(b"#!/bin/sh\necho garage v0.8.7\n")
    binary.chmod(0o755)
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(d / "id_ed25519"))
    (d / "id_ed25519").chmod(0o600)
    host = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().split()
    (d / "known_hosts").write_text("".join(f"[{h}]:2222 {host[0]} {host[1]}\n" for h in HOSTS))
    return {
        "cluster": "hostile",
        "ssh": {"user": "root", "port": 2222, "key_file": str(d / "id_ed25519"),
                "known_hosts": str(d / "known_hosts"), "connect_timeout": 5.0},
        "service": {"kind": "custom", "start": ["/bin/garage-service", "start"], "stop": ["/bin/garage-service", "stop"],
                    "status": ["/bin/garage-service", "is-active"], "signal": ["/bin/garage-service", "kill"]},
        "prometheus": {"url": "http://127.0.0.1:9090", "job": "garage"},
        "backup": {"root": str(d / "backups")},
        "target": {"version": "0.8.7", "binary": str(binary), "sha256": hashlib.sha256(binary.read_bytes()).hexdigest()},
        "nodes": [{"name": f"node-{z}1", "host": h, "zone": f"dc{i + 1}"} for i, (z, h) in enumerate(zip("abc", HOSTS))],
    }


def refusal(case: Case, base: dict, tmp, monkeypatch) -> Exception | None:
    """What refuses ``case`` first, as a run meets it: the options, the inventory, the local checks."""
    path = materialise(case, base, tmp)
    for k, v in environment(case).items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)
    try:
        opts = MigrationOptions(**case.options) if case.options else None
    except ValidationError as exc:
        return exc
    try:
        inv = load_inventory(path)
        check_before_connecting(inv, opts)
        if case.migration_id is not None:
            check_migration_id(case.migration_id)
    except InventoryError as exc:
        return exc
    return None


def test_there_are_at_least_thirty_distinct_cases():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


def test_the_base_inventory_passes_every_check(base, tmp_path, monkeypatch):
    # the control: each case is refused for its own change, not for the base
    assert refusal(Case("base", lambda d, t: d, ""), base, tmp_path, monkeypatch) is None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_with_a_typed_located_message(case, base, tmp_path, monkeypatch):
    exc = refusal(case, base, tmp_path, monkeypatch)
    assert exc is not None, f"{case.id} was accepted"
    if case.options_invalid:
        assert isinstance(exc, ValidationError), repr(exc)
    else:
        assert isinstance(exc, InventoryError), repr(exc)
        assert exc.code == ErrorCode.INVENTORY_INVALID and exc.problems
    assert __import__("re").search(case.expect, str(exc)), str(exc)
    assert PASSPHRASE not in str(exc) and "not-the-passphrase" not in str(exc)


def test_a_yaml_error_names_the_line_it_is_on(base, tmp_path):
    text = yaml.safe_dump(base, sort_keys=False).splitlines()
    at = next(i for i, ln in enumerate(text) if ln.startswith("nodes:"))
    text.insert(at, "extra: [unclosed, {a: 1}")
    (tmp_path / "inv.yaml").write_text("\n".join(text) + "\n")
    with pytest.raises(InventoryError) as e:
        load_inventory(tmp_path / "inv.yaml")
    line = int(str(e.value).split(":")[1])
    assert line in (at + 1, at + 2), (line, at)  # the unclosed line, or the one where YAML noticed


def test_a_field_error_names_the_line_of_the_field(base, tmp_path):
    d = dict(base, nodes=[dict(n) for n in base["nodes"]])
    d["nodes"][2]["name"] = "c1;reboot"
    text = yaml.safe_dump(d, sort_keys=False)
    (tmp_path / "inv.yaml").write_text(text)
    want = next(i for i, ln in enumerate(text.splitlines(), 1) if "c1;reboot" in ln)
    with pytest.raises(InventoryError, match=rf"inv\.yaml:{want} nodes\[2\]\.name: use letters"):
        load_inventory(tmp_path / "inv.yaml")


def test_every_problem_is_reported_at_once(base, tmp_path, monkeypatch):
    d = dict(base, ssh=dict(base["ssh"], known_hosts="/nonexistent/kh", key_file="/nonexistent/key"),
             target=dict(base["target"], binary="/nonexistent/garage"))
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(InventoryError) as e:
        check_before_connecting(load_inventory(tmp_path / "inv.yaml"))
    assert {w for w, _m in e.value.problems} >= {"ssh.known_hosts", "ssh.key_file", "target.binary"}


def test_trust_on_first_use_lets_a_node_missing_from_known_hosts_through(base, tmp_path):
    # the only escape from "every node in known_hosts": explicit, and recorded when used (lab test)
    d = dict(base, ssh=dict(base["ssh"], known_hosts=str(tmp_path / "fresh_known_hosts"), trust_on_first_use=True))
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(d))
    check_before_connecting(load_inventory(tmp_path / "inv.yaml"))
    d["ssh"]["trust_on_first_use"] = False
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(InventoryError, match="does not exist; host keys are always verified"):
        check_before_connecting(load_inventory(tmp_path / "inv.yaml"))


def test_an_encrypted_key_opens_with_its_passphrase_from_the_environment(base, tmp_path, monkeypatch):
    from tests.unit.hostile_cases import _encrypted_key

    d = dict(base, ssh=dict(base["ssh"], key_file=str(_encrypted_key(tmp_path, base)), key_passphrase_env="GM_KEY_PASS"))
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(d))
    monkeypatch.setenv("GM_KEY_PASS", PASSPHRASE)
    inv = load_inventory(tmp_path / "inv.yaml")
    check_before_connecting(inv)
    assert inv.ssh.key_passphrase() == PASSPHRASE and PASSPHRASE not in repr(inv)


@pytest.mark.parametrize("line", ['rpc_secret = "{s}', 'admin_token = {s}"', "metrics_token = {s} x"])
def test_a_broken_secret_line_of_garage_toml_is_reported_without_its_value(line):
    from garage_migrate.errors import ParseError
    from garage_migrate.facts import parse_config

    secret = "c0ffee" * 10 + "beef"
    text = f'metadata_dir = "/m"\ndata_dir = "/d"\n{line.format(s=secret)}\nreplication_mode = "3"\n'
    with pytest.raises(ParseError) as e:
        parse_config(text)
    assert e.value.line_no == 3 and "<redacted>" in str(e.value)
    assert secret not in str(e.value) and secret not in repr(e.value.context())


def test_nodes_named_by_host_name_are_found_in_known_hosts(base, tmp_path):
    # asyncssh matches an address only if it is an IP: a host name must still be looked up by name
    key = Path(base["ssh"]["known_hosts"]).read_text().split()[1:3]
    (tmp_path / "kh").write_text(f"[g1.example.net]:2222 {key[0]} {key[1]}\n")
    d = dict(base, ssh=dict(base["ssh"], known_hosts=str(tmp_path / "kh")),
             nodes=[{"name": "g1", "host": "g1.example.net"}])
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(d))
    check_before_connecting(load_inventory(tmp_path / "inv.yaml"))
    d["nodes"].append({"name": "g2", "host": "g2.example.net"})
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(InventoryError, match=r"ssh\.known_hosts \(g2\): .* has no key for \[g2\.example\.net\]:2222"):
        check_before_connecting(load_inventory(tmp_path / "inv.yaml"))
