"""Inventory: the lab's format, defaults and overrides, and errors that name the field and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from garage_migrate import commands as C
from garage_migrate.errors import InventoryError
from garage_migrate.inventory import Inventory, load_inventory, parse_inventory

SHA = "a8076d3d28d21e02012b20eaf7dbf75409a6277134439025f282e368e3305abf"

# Byte for byte what garage_lab.harness.Lab._write_inventory writes (yaml.safe_dump, sort_keys=False);
# tests/lab/test_ssh_runner.py loads a real one, so a drift of the lab's format fails there too.
LAB_INVENTORY = f"""\
# Written by `garage-lab up`: how an orchestrator reaches this lab, as it would a real cluster.
cluster: lab-127-42-99
ssh:
  user: root
  port: 2222
  key_file: /lab/id_ed25519
  known_hosts: /lab/known_hosts
  connect_timeout: 5.0
garage:
  config_path: /etc/garage.toml
  binary_path: /usr/local/bin/garage
service:
  kind: custom
  start:
  - /lab/bin/garage-service
  - start
  stop:
  - /lab/bin/garage-service
  - stop
  status:
  - /lab/bin/garage-service
  - is-active
  signal:
  - /lab/bin/garage-service
  - kill
  - --signal
prometheus:
  url: http://127.42.99.254:9090
  job: garage
api_gate:
  kind: port
backup:
  root: /lab/backups
target:
  version: 0.8.7
  binary: /lab/dist/garage-v0.8.7
  sha256: {SHA}
nodes:
- name: node-a1
  host: 127.42.99.1
  zone: dc1
  binary_path: /lab/nodes/node-a1/usr/local/bin/garage
  config_path: /lab/nodes/node-a1/etc/garage.toml
- name: node-a2
  host: 127.42.99.2
  zone: dc1
  binary_path: /lab/nodes/node-a2/usr/local/bin/garage
  config_path: /lab/nodes/node-a2/etc/garage.toml
"""

MINIMAL = f"""\
cluster: prod
backup: {{root: /var/backups/garage}}
target: {{version: 0.8.7, binary: /srv/garage-v0.8.7, sha256: {SHA}}}
nodes:
  - {{name: g1, host: 10.0.0.1}}
"""


def problems_of(text: str) -> list[tuple[str, str]]:
    with pytest.raises(InventoryError) as info:
        parse_inventory(textwrap.dedent(text), source="inv.yaml")
    assert info.value.code == "INVENTORY_INVALID"
    return info.value.problems


def one_problem(text: str) -> tuple[str, str]:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


# ---------------------------------------------------------------------------- accepted input


def test_the_lab_inventory_loads_with_its_overrides():
    inv = parse_inventory(LAB_INVENTORY)
    assert inv.cluster == "lab-127-42-99"
    assert inv.ssh.port == 2222 and inv.ssh.connect_timeout == 5.0
    assert inv.ssh.key_file == Path("/lab/id_ed25519")
    assert inv.api_gate.kind == "port" and (inv.api_gate.moved_s3_port, inv.api_gate.moved_web_port) == (3990, 3992)
    assert inv.prometheus is not None and inv.prometheus.job == "garage"
    assert inv.target.version == "0.8.7" and inv.target.sha256 == SHA
    a1, a2 = inv.resolved_nodes()
    assert (a1.name, a1.host, a1.zone) == ("node-a1", "127.42.99.1", "dc1")
    assert a1.binary_path == "/lab/nodes/node-a1/usr/local/bin/garage"
    assert a2.config_path == "/lab/nodes/node-a2/etc/garage.toml"
    assert a1.ssh.port == 2222 and a1.ssh.known_hosts == Path("/lab/known_hosts")
    assert a1.backup_root == "/lab/backups"
    assert a1.stop_signal == "SIGINT"
    # what the lab's service script expects, straight from the inventory
    assert C.service_signal(a1.ctx, a1.stop_signal).argv == ("/lab/bin/garage-service", "kill", "--signal", "SIGINT")
    assert C.service_status(a2.ctx).argv == ("/lab/bin/garage-service", "is-active")
    assert C.garage(a2.ctx, "status").argv == (
        "/lab/nodes/node-a2/usr/local/bin/garage", "-c", "/lab/nodes/node-a2/etc/garage.toml", "status")


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    inv = parse_inventory(MINIMAL)
    (g1,) = inv.resolved_nodes()
    assert g1.ssh.user == "root" and g1.ssh.port == 22
    assert g1.ssh.known_hosts == tmp_path / ".ssh/known_hosts", "~ is expanded; checking is never off"
    assert g1.ssh.key_file is None
    assert (g1.ssh.connect_timeout, g1.ssh.keepalive_interval, g1.ssh.max_channels) == (10.0, 15.0, 8)
    assert g1.binary_path == "/usr/local/bin/garage" and g1.config_path == "/etc/garage.toml"
    assert g1.ctx.sudo is False and g1.ctx.service.kind == "systemd"
    assert C.service_stop(g1.ctx).argv == ("systemctl", "stop", "garage")
    assert inv.api_gate.kind == "none" and inv.prometheus is None
    assert inv.backup.mode == "controller" and inv.backup.zstd_level == 3


def test_node_overrides_and_cluster_defaults():
    inv = parse_inventory(MINIMAL.replace("  - {name: g1, host: 10.0.0.1}", textwrap.dedent("""\
          - {name: g1, host: 10.0.0.1, zone: dc1}
          - name: g2
            host: 10.0.0.2
            ssh_port: 2202
            binary_path: /opt/garage/bin/garage
            config_path: /opt/garage/garage.toml
            backup_root: /srv/backups/
        """)).replace("cluster: prod", "cluster: prod\nssh: {sudo: true, user: ops, port: 2200}"))
    g1, g2 = inv.resolved_nodes()
    assert (g1.ssh.port, g2.ssh.port) == (2200, 2202)
    assert g2.ssh.user == "ops" and g2.ctx.sudo is True
    assert (g1.binary_path, g2.binary_path) == ("/usr/local/bin/garage", "/opt/garage/bin/garage")
    assert g2.config_path == "/opt/garage/garage.toml"
    assert (g1.backup_root, g2.backup_root) == ("/var/backups/garage", "/srv/backups")
    assert C.garage(g2.ctx, "status").render() == (
        "sudo -n timeout --kill-after=5 60 /opt/garage/bin/garage -c /opt/garage/garage.toml status")
    assert inv.node("g2") == g2
    with pytest.raises(InventoryError, match="no node 'g3'"):
        inv.node("g3")


def test_normalisation():
    inv = parse_inventory(MINIMAL.replace("version: 0.8.7", "version: v0.8.0").replace(SHA, SHA.upper())
                          + "service: {stop_signal: sigint}\n")
    assert inv.target.version == "0.8.0"
    assert inv.target.sha256 == SHA
    assert inv.service.stop_signal == "SIGINT"


def test_same_host_on_another_port_is_another_node():
    inv = parse_inventory(MINIMAL + "  - {name: g2, host: 10.0.0.1, ssh_port: 2201}\n")
    assert [n.ssh.port for n in inv.resolved_nodes()] == [22, 2201]


def test_models_are_frozen():
    inv = parse_inventory(MINIMAL)
    with pytest.raises(ValidationError):
        inv.cluster = "other"  # type: ignore[misc]


def test_commands_gate_on_a_proxy_and_on_a_node():
    inv = parse_inventory(MINIMAL + textwrap.dedent("""\
        api_gate:
          kind: commands
          disable: {host: proxy.example, argv: [/usr/local/sbin/s3-gate, close]}
          enable: {host: g1, argv: [/usr/local/sbin/s3-gate, open]}
        """))
    (proxy,) = inv.gate_targets()
    assert (proxy.name, proxy.host, proxy.port) == ("proxy.example", "proxy.example", 22)
    assert C.is_allowed(C.RemoteCommand(("/usr/local/sbin/s3-gate", "close")), proxy.ctx)
    assert not C.is_allowed(C.RemoteCommand(("/usr/local/sbin/s3-gate", "open")), proxy.ctx)
    g1 = inv.node("g1")
    assert C.is_allowed(C.RemoteCommand(("/usr/local/sbin/s3-gate", "open")), g1.ctx)


def test_bearer_token_comes_from_the_environment(monkeypatch):
    inv = parse_inventory(MINIMAL + "prometheus: {url: 'https://prom:9090', bearer_token_env: PROM_TOKEN}\n")
    monkeypatch.delenv("PROM_TOKEN", raising=False)
    with pytest.raises(InventoryError, match=r"\$PROM_TOKEN is not set"):
        inv.prometheus.bearer_token()
    monkeypatch.setenv("PROM_TOKEN", "s3cr3t")
    assert inv.prometheus.bearer_token() == "s3cr3t"
    assert parse_inventory(MINIMAL + "prometheus: {url: 'http://p'}\n").prometheus.bearer_token() is None


def test_load_inventory_reads_a_file(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text(LAB_INVENTORY)
    assert load_inventory(path).cluster == "lab-127-42-99"
    with pytest.raises(InventoryError, match="cannot read inventory"):
        load_inventory(tmp_path / "missing.yaml")


def test_the_models_validate_plain_dicts_too():
    with pytest.raises(ValidationError):
        Inventory.model_validate({"cluster": "c"})


# ---------------------------------------------------------------------------- errors with lines


def test_missing_field_points_at_the_mapping_that_lacks_it():
    where, msg = one_problem("""\
        cluster: prod
        backup: {root: /b}
        target: {version: 0.8.7, binary: /x, sha256: %s}
        nodes:
          - {name: g1, host: 10.0.0.1}
          - name: g2
            zone: dc2
        """ % SHA)
    assert where == "inv.yaml:6 nodes[1].host"
    assert msg == "Field required"


def test_unknown_field_is_an_error_with_a_suggestion():
    where, msg = one_problem(MINIMAL + "ssh:\n  port: 22\n  know_hosts: /x\n")
    assert where == "inv.yaml:8 ssh.know_hosts"
    assert msg.startswith("unknown field: did you mean 'known_hosts'?")
    where, msg = one_problem(MINIMAL.replace("host: 10.0.0.1}", "host: 10.0.0.1, bianry_path: /x}"))
    assert where == "inv.yaml:5 nodes[0].bianry_path"
    assert "did you mean 'binary_path'" in msg
    where, _ = one_problem(MINIMAL + "colour: blue\n")
    assert where == "inv.yaml:6 colour"


def test_duplicate_node_name_points_at_the_second():
    where, msg = one_problem(MINIMAL + "  - {name: g1, host: 10.0.0.2}\n")
    assert where == "inv.yaml:6 nodes[1].name"
    assert msg == "duplicate node name (also nodes[0])"


def test_duplicate_host_and_port():
    where, msg = one_problem(MINIMAL + "  - {name: g2, host: 10.0.0.1}\n")
    assert where == "inv.yaml:6 nodes[1].host"
    assert msg == "10.0.0.1 port 22 is also nodes[0]"


@pytest.mark.parametrize(("change", "where", "fragment"), [
    (("version: 0.8.7", "version: 0.7.3"), "inv.yaml:3 target.version", "must be a 0.8.x release"),
    (("version: 0.8.7", "version: 0.9.0"), "inv.yaml:3 target.version", "must be a 0.8.x release"),
    (("version: 0.8.7", "version: 0.8"), "inv.yaml:3 target.version", 'quote the version, e.g. "0.8.7"'),
    ((SHA, SHA[:-1]), "inv.yaml:3 target.sha256", "64 hexadecimal digits"),
    ((SHA, "z" * 64), "inv.yaml:3 target.sha256", "64 hexadecimal digits"),
    (("root: /var/backups/garage", "root: backups"), "inv.yaml:2 backup.root", "absolute path"),
    (("root: /var/backups/garage", "root: /var/../etc"), "inv.yaml:2 backup.root", "not a plain absolute path"),
    (("name: g1", "name: g 1"), "inv.yaml:5 nodes[0].name", "letters, digits"),
    (("name: g1", "name: ../g1"), "inv.yaml:5 nodes[0].name", "letters, digits"),
    (("host: 10.0.0.1", "host: root@10.0.0.1"), "inv.yaml:5 nodes[0].host", "the user goes in ssh.user"),
    (("cluster: prod", "cluster: prod\nssh: {known_hosts: null}"), "inv.yaml:2 ssh.known_hosts",
     "host-key checking cannot be turned off"),
    (("cluster: prod", "cluster: prod\nssh: {port: 0}"), "inv.yaml:2 ssh.port", "greater than or equal to 1"),
    (("cluster: prod", "cluster: prod\nssh: {max_channels: 0}"), "inv.yaml:2 ssh.max_channels", "greater than"),
    (("cluster: prod", "cluster: prod\ngarage: {binary_path: garage}"), "inv.yaml:2 garage.binary_path",
     "absolute path"),
    (("cluster: prod", "cluster: prod\nservice: {stop_signal: NOPE}"), "inv.yaml:2 service.stop_signal",
     "not a signal name"),
    (("cluster: prod", "cluster: prod\nprometheus: {url: 'prom:9090'}"), "inv.yaml:2 prometheus.url",
     "http:// or https://"),
    (("cluster: prod", "cluster: prod\nprometheus: {url: 'http://p', bearer_token_env: 'abc def'}"),
     "inv.yaml:2 prometheus.bearer_token_env", "NAME of an environment variable"),
    (("cluster: prod", "cluster: prod\nbackup2: 1"), "inv.yaml:2 backup2", "unknown field"),
    (("cluster: prod", "cluster: 12"), "inv.yaml:1 cluster", "as a int, quote it"),
])
def test_field_errors_name_field_and_line(change, where, fragment):
    got_where, msg = one_problem(MINIMAL.replace(*change))
    assert got_where == where
    assert fragment in msg


def test_custom_service_needs_its_commands_and_systemd_refuses_them():
    problems = problems_of(MINIMAL + "service:\n  kind: custom\n  start: [/bin/svc, start]\n")
    assert [w for w, _ in problems] == ["inv.yaml:6 service.stop", "inv.yaml:6 service.status",
                                        "inv.yaml:6 service.signal"]
    assert {m for _, m in problems} == {"required when kind is custom"}
    where, msg = one_problem(MINIMAL + "service:\n  kind: systemd\n  start: [/bin/svc, start]\n")
    assert where == "inv.yaml:8 service.start"
    assert "only used when kind is custom" in msg
    where, msg = one_problem(MINIMAL + "service:\n  kind: custom\n  start: [bin/svc]\n  stop: [/s]\n"
                             "  status: [/s]\n  signal: [/s]\n")
    assert where == "inv.yaml:8 service.start"
    assert "bare name or an absolute path" in msg


def test_yaml_booleans_in_argv_get_a_hint():
    where, msg = one_problem(MINIMAL + "api_gate:\n  kind: commands\n  disable: {host: p, argv: [/g, off]}\n"
                             "  enable: {host: p, argv: [/g, 'on']}\n")
    assert where == "inv.yaml:8 api_gate.disable.argv[1]"
    assert "YAML read False as a bool, quote it" in msg


def test_api_gate_fields_belong_to_their_kind():
    where, msg = one_problem(MINIMAL + "api_gate:\n  kind: commands\n  disable: {host: p, argv: [/g, close]}\n")
    assert (where, msg) == ("inv.yaml:6 api_gate.enable", "required when kind is commands")
    where, msg = one_problem(MINIMAL + "api_gate:\n  kind: none\n  moved_s3_port: 4000\n")
    assert where == "inv.yaml:8 api_gate.moved_s3_port"
    assert "only used when kind is port" in msg
    where, msg = one_problem(MINIMAL + "api_gate: {kind: port, moved_s3_port: 4000, moved_web_port: 4000}\n")
    assert where == "inv.yaml:6 api_gate.moved_web_port"
    where, _ = one_problem(MINIMAL + "api_gate: {kind: proxy}\n")
    assert where == "inv.yaml:6 api_gate.kind"


def test_several_problems_are_reported_together():
    problems = problems_of(MINIMAL.replace("version: 0.8.7", "version: 0.7.3").replace(SHA, "abc")
                           + "ssh: {port: 99999}\n")
    assert [w for w, _ in problems] == ["inv.yaml:6 ssh.port", "inv.yaml:3 target.version",
                                        "inv.yaml:3 target.sha256"]
    with pytest.raises(InventoryError) as info:
        parse_inventory(MINIMAL + "ssh: {port: 99999}\n", source="inv.yaml")
    assert str(info.value) == ("invalid inventory inv.yaml (1 problem):\n"
                               "  inv.yaml:6 ssh.port: Input should be less than or equal to 65535")


def test_empty_node_list():
    where, msg = one_problem("cluster: c\nbackup: {root: /b}\ntarget: {version: 0.8.7, binary: /x, sha256: %s}\n"
                             "nodes: []\n" % SHA)
    assert where == "inv.yaml:4 nodes"
    assert "at least 1" in msg


@pytest.mark.parametrize(("text", "fragment"), [
    ("cluster: a\ncluster: b\n", "inv.yaml:2: duplicate key 'cluster' (first on line 1)"),
    (MINIMAL + "  - {name: g2, host: h, host: i}\n", "inv.yaml:6: duplicate key 'host'"),
    ("cluster: [a,\n", "inv.yaml:2: invalid YAML"),
    ("", "inv.yaml: the inventory is empty"),
    ("- a\n- b\n", "inv.yaml:1: the inventory must be a mapping"),
    ("just text\n", "inv.yaml:1: the inventory must be a mapping"),
])
def test_yaml_level_errors(text, fragment):
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, source="inv.yaml")
    assert fragment in str(info.value)
