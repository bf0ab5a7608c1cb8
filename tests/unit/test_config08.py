"""The 0.8 translation of ``garage.toml`` against the reference's config table (garage-0.7-to-0.8.md
section 5: Consul and Kubernetes keys move to their sections; the 0.7 top-level ones are ignored)."""

from __future__ import annotations

import hashlib
import tomllib

import pytest

from garage_migrate.config08 import MOVES, diff_lines, restored_in_form_of, translate
from garage_migrate.errors import PlanError

BASE = '''# node 1
metadata_dir = "/var/lib/garage/meta"
data_dir = "/var/lib/garage/data"
replication_mode = "3"
rpc_bind_addr = "[::]:3901"
rpc_secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
'''
TAIL = '''
[s3_api]
s3_region = "garage"
api_bind_addr = "[::]:3900"
'''


def test_the_reference_table_is_the_translation():
    # the table's rows, as written in the reference
    assert MOVES == {"consul_host": ("consul_discovery", "consul_http_addr"),
                     "consul_service_name": ("consul_discovery", "service_name"),
                     "kubernetes_namespace": ("kubernetes_discovery", "namespace"),
                     "kubernetes_service_name": ("kubernetes_discovery", "service_name"),
                     "kubernetes_skip_crd": ("kubernetes_discovery", "skip_crd")}


def test_consul_keys_move_to_consul_discovery_and_everything_else_is_kept_byte_for_byte():
    text = BASE + 'consul_host = "consul.service:8500"\nconsul_service_name = "garage-rpc"\n' + TAIL
    t = translate(text)
    doc = tomllib.loads(t.text)
    assert doc["consul_discovery"] == {"consul_http_addr": "http://consul.service:8500", "service_name": "garage-rpc"}
    assert "consul_host" not in doc and "consul_service_name" not in doc
    assert t.changes == ("consul_host -> [consul_discovery] consul_http_addr",
                         "consul_service_name -> [consul_discovery] service_name")
    assert t.text.startswith(BASE + TAIL)  # comments, order and the secret untouched
    assert translate(t.text).changes == () and translate(t.text).text == t.text  # idempotent


def test_kubernetes_keys_move_with_their_types_and_a_url_keeps_its_scheme():
    text = (BASE + 'kubernetes_namespace = "garage"\nkubernetes_service_name = "garage-daemon"\n'
            'kubernetes_skip_crd = true\nconsul_host = "https://consul:8501"\nconsul_service_name = "g"\n' + TAIL)
    doc = tomllib.loads(translate(text).text)
    assert doc["kubernetes_discovery"] == {"namespace": "garage", "service_name": "garage-daemon", "skip_crd": True}
    assert doc["consul_discovery"]["consul_http_addr"] == "https://consul:8501"


def test_the_removed_tranquility_key_is_dropped_and_said():
    t = translate(BASE + "block_manager_background_tranquility = 4\n" + TAIL)
    assert "block_manager_background_tranquility" not in tomllib.loads(t.text)
    assert t.changes == ("block_manager_background_tranquility: removed in 0.8: use "
                         "`garage worker set resync-tranquility <n>`",)


def test_a_config_without_old_keys_is_returned_as_is():
    t = translate(BASE + TAIL)
    assert not t.changed and t.text == BASE + TAIL


def test_a_key_in_both_layouts_is_refused_rather_than_guessed():
    text = BASE + 'consul_host = "a:8500"\n' + TAIL + '\n[consul_discovery]\nconsul_http_addr = "http://b:8500"\n'
    with pytest.raises(PlanError, match="both consul_host and"):
        translate(text)
    # a key under a table with the same name is not a top-level key: nothing to move
    assert not translate(BASE + TAIL + 'consul_host = "x"\n').changed


def test_the_diff_shows_only_the_moved_lines():
    text = BASE + 'consul_host = "consul:8500"\nconsul_service_name = "garage"\n' + TAIL
    d = diff_lines(text, translate(text).text, "/etc/garage.toml")
    assert d[:2] == ("--- /etc/garage.toml (0.7)", "+++ /etc/garage.toml (0.8)")
    body = [ln for ln in d[2:] if not ln.startswith("@@")]
    assert '-consul_host = "consul:8500"' in body and '+consul_http_addr = "http://consul:8500"' in body
    assert "+[consul_discovery]" in body and not any("rpc_secret" in ln for ln in d)


def test_restoring_a_kept_07_config_under_08_keeps_discovery_on():
    old = BASE + 'consul_host = "consul:8500"\nconsul_service_name = "garage"\n' + TAIL
    live08 = translate(old.replace("[::]:3900", "[::]:3990")).text  # the API was cut, then switched
    assert restored_in_form_of(old, live08) == translate(old).text
    assert restored_in_form_of(old, old) == old  # still on 0.7: the original as it was


# ---------------------------------------------------------------------------- in the plan


def _with_consul(facts):
    import dataclasses

    old = BASE + 'consul_host = "consul:8500"\nconsul_service_name = "garage"\n' + TAIL
    diff = diff_lines(old, translate(old).text, "/etc/garage.toml")
    shas = (hashlib.sha256(old.encode()).hexdigest(), hashlib.sha256(translate(old).text.encode()).hexdigest())
    return dataclasses.replace(facts, nodes=tuple(dataclasses.replace(f, config_diff=diff, config_shas=shas)
                                                  for f in facts.nodes)), diff


def test_the_plan_stages_the_08_config_shows_its_diff_at_the_flip_approval_and_switches_it_with_the_binary():
    from builders import inventory_and_facts

    from garage_migrate import actions as A
    from garage_migrate.plan import MigrationOptions, make_plan

    inv, facts = inventory_and_facts({"z1": 1, "z2": 1, "z3": 1})
    facts, diff = _with_consul(facts)
    plan = make_plan(inv, facts, "minimal-downtime", "m1", MigrationOptions())
    stage = next(s for s in plan.steps() if s.kind == "stage" and s.node == "n1")
    switch = next(s for s in plan.steps() if s.kind == "switch" and s.node == "n1")
    staged = A.staged_config_path("/etc/garage.toml", "0.8.7")
    assert f"sftp put {staged}" in [a.op.render() for a in stage.acts]
    # one helper call moves the binary and the config, checking both files' digests on the node
    (call,) = [a.op for a in switch.acts]
    live_sha, target_sha = facts.node("n1").config_shas
    spec = A.spec(inv, facts, "n1")
    assert call.argv[1:4] == ("switch", spec.staged_path, spec.ctx.binary_path)
    assert call.argv[-5:] == (staged, "/etc/garage.toml", A.kept_config_path("/etc/garage.toml"), live_sha, target_sha)
    assert target_sha == hashlib.sha256(translate(BASE + 'consul_host = "consul:8500"\nconsul_service_name = "garage"\n'
                                                  + TAIL).text.encode()).hexdigest()
    # the person approving the flip sees the diff (the approval shows the plan from the flip on)
    md = plan.to_markdown(from_phase="approve-flip")
    assert "```diff" in md and '-consul_host = "consul:8500"' in md and "+[consul_discovery]" in md
    assert '+consul_http_addr = "http://consul:8500"' in plan.to_text()
    # a node whose config is 0.8-ready: no config action at all
    inv2, plain = inventory_and_facts({"z1": 1, "z2": 1, "z3": 1})
    plain_plan = make_plan(inv2, plain, "minimal-downtime", "m1", MigrationOptions())
    sw = next(s for s in plain_plan.steps() if s.kind == "switch" and s.node == "n1")
    assert not any("garage.toml" in a.op.render() for a in sw.acts) and "```diff" not in plain_plan.to_markdown()


def test_the_rollback_switches_the_kept_config_back_with_the_binary(tmp_path):
    import asyncio

    from builders import backed_up_runtime

    from garage_migrate import actions as A
    from garage_migrate.executor.rollback import rollback_plan_for

    rt = backed_up_runtime(tmp_path)
    kept = A.kept_config_path("/etc/garage.toml")
    asyncio.run(rt.ledger.set_node("n1", config_kept=kept))  # what the switch recorded on n1 only
    plan = rollback_plan_for(rt, tag="rb-x")
    sw = {s.node: [a.op.render() for a in s.acts] for s in plan.phase("rollback-switch").waves[0].steps}
    assert sw["n1"][-1].endswith(f"mv -T {kept} /etc/garage.toml")
    assert not any("garage.toml" in c for c in sw["n2"])
