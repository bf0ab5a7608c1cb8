"""What the Prefect UI shows: the deployments' forms, the decision forms, the artifacts, the
GarageCluster block and the pull step's message (Prefect, and for some tests its server)."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import typing
import uuid

import pydantic
import pytest
import yaml

from tests.e2e.stack import ROOT

INVENTORY = """\
cluster: blockc
ssh: {{user: root, known_hosts: {known_hosts}}}
prometheus: {{url: "http://127.0.0.1:9", bearer_token_env: GM_TEST_PROM_TOKEN}}
backup: {{root: /var/backups/garage}}
target: {{version: 0.8.7, binary: {binary}, sha256: {sha}}}
nodes:
  - {{name: n1, host: 10.0.0.1, zone: dc1}}
"""


def _deployed_flows():
    """(deployment name, flow) of every deployment in ``deployments/prefect.yaml``."""
    doc = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    out = []
    for d in doc["deployments"]:
        path, name = d["entrypoint"].split(":")
        out.append((d["name"], getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)))
    return out


def _walk(schema: dict):
    """(where, name, property) of every property of a schema and of its definitions."""
    for name, prop in schema["properties"].items():
        yield "parameters", name, prop
    for dname, d in schema.get("definitions", {}).items():
        for name, prop in d.get("properties", {}).items():
            yield dname, name, prop


def test_every_parameter_of_every_deployment_has_its_own_title_and_a_one_line_description():
    from prefect.utilities.callables import parameter_schema

    flows = _deployed_flows()
    assert {n for n, _ in flows} == {"minimal-downtime", "simple", "minimal-downtime-maintenance-window", "rollback",
                                     "retry-node", "post-migration-watch"}
    models = set()
    for dep, fn in flows:
        schema = parameter_schema(fn).model_dump()
        seen = list(_walk(schema))
        models |= {w for w, _, _ in seen}
        for where, name, prop in seen:
            what = f"{dep}: {where}.{name}"
            title, desc = prop.get("title", ""), prop.get("description", "")
            assert title and title != name and "_" not in title and title[0].isupper(), what
            assert desc and "\n" not in desc and desc.endswith((".", ")")), what
            assert "`" not in desc and ":class:" not in desc, what  # plain text, no reST
            if name.endswith("_per_s"):
                assert "per second" in title and "per second" in desc, what  # units in words
            elif name.endswith("_s") or "timeout" in name:
                assert "(seconds)" in title and "seconds" in desc, what
        for dname, d in schema.get("definitions", {}).items():
            # a model's docstring is the form's text of that section: one plain line
            assert d.get("description") and "`" not in d["description"] and "\n" not in d["description"], dname
    assert models == {"parameters", "MigrationOptions", "FanoutPolicy", "GarageCluster"}
    # the choices are enums
    rb = parameter_schema(dict(flows)["rollback"]).model_dump()["properties"]["procedure"]
    assert rb["enum"] == ["minimal-downtime", "simple"]
    md = parameter_schema(dict(flows)["minimal-downtime"]).model_dump()
    assert md["definitions"]["MigrationOptions"]["properties"]["extra_repairs"]["items"]["enum"] == \
        ["versions", "block_refs"]
    # minimal-downtime has its own descriptions (not "arguments as for simple_migration")
    assert all(p.get("description") for p in md["properties"].values())


def test_a_decision_form_offers_only_the_choices_given():
    from flows.approvals import Approval, NodeFailureDecision, offering

    only = offering(NodeFailureDecision, ("retry",))
    action = only.model_json_schema()["properties"]["action"]
    assert action.get("enum", [action.get("const")]) == ["retry"] and "rollback" not in json.dumps(action)
    assert typing.get_args(only.model_fields["action"].annotation) == ("retry",)
    with pytest.raises(pydantic.ValidationError):
        only(action="rollback")
    assert only(action="retry").action == "retry"
    # as the pause saves it: with the dialog's text, still only "retry"
    shown = only.with_initial_data(description="text").model_json_schema()["properties"]["action"]
    assert shown.get("enum", [shown.get("const")]) == ["retry"]
    assert offering(Approval, ("approve", "abort")) is Approval
    with pytest.raises(ValueError, match="offers"):
        offering(Approval, ("retry",))


@pytest.fixture
def inventory_text(tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    binary = tmp_path / "garage-v0.8.7"
    binary.write_text("")
    return INVENTORY.format(known_hosts=kh, binary=binary, sha="a" * 64)


def test_a_garage_cluster_block_gives_its_inventory_and_its_secrets_only_while_open(inventory_text, monkeypatch):
    from flows.blocks import GarageCluster, inventory_of

    monkeypatch.delenv("GM_TEST_PROM_TOKEN", raising=False)
    block = GarageCluster(inventory_yaml=inventory_text, secret_env={"GM_TEST_PROM_TOKEN": "tok-123"},
                          ssh_private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----")
    assert "tok-123" not in repr(block) and "abc" not in repr(block)
    with inventory_of(block) as inv:
        assert inv.cluster == "blockc" and inv.prometheus.bearer_token() == "tok-123"
        key = inv.ssh.key_file
        assert key.read_text().startswith("-----BEGIN OPENSSH") and key.stat().st_mode & 0o777 == 0o600
        assert inv.ssh_target("n1", "10.0.0.1").key_file == key
    assert "GM_TEST_PROM_TOKEN" not in os.environ and not key.exists()
    with inventory_of("/some/path.yaml") as same:
        assert same == "/some/path.yaml"
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        GarageCluster(inventory_path="/a.yaml", inventory_yaml=inventory_text)


@pytest.mark.timeout(600)
def test_a_block_reference_from_the_form_becomes_the_block(inventory_text, prefect_server, tmp_path):
    """The UI sends a block as ``{"$ref": {"block_document_id": ...}}``; the flow gets the block."""
    from flows.blocks import GarageCluster
    from flows.migration import minimal_downtime_migration

    path = tmp_path / "inventory.yaml"
    path.write_text(inventory_text)
    name = f"c-{uuid.uuid4().hex[:8]}"
    block_id = GarageCluster(inventory_path=str(path), secret_env={"GM_TEST_PROM_TOKEN": "s"}).save(name)
    got = minimal_downtime_migration.validate_parameters(
        {"inventory": {"$ref": {"block_document_id": str(block_id)}}})["inventory"]
    assert isinstance(got, GarageCluster) and got.parse().cluster == "blockc"
    assert got.secret_env["GM_TEST_PROM_TOKEN"].get_secret_value() == "s"
    assert minimal_downtime_migration.validate_parameters({"inventory": str(path)})["inventory"] == str(path)


def _cards(api: str, flow_run_id) -> list[dict]:
    """The artifacts of a flow run, as the run's artifacts tab lists them."""
    import httpx

    r = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}},
                   timeout=30)
    r.raise_for_status()
    return r.json()


@pytest.mark.timeout(600)
def test_the_reporter_keeps_one_card_each_and_updates_the_ledger_table_in_place(prefect_server):
    from prefect import flow
    from prefect.context import get_run_context

    from flows.adapters import PrefectReporter

    def rows(status):
        return [{"node": n, "zone": z, "phase": "p", "step": "s", "status": status, "attempts": "1",
                 "last change": "t"} for n, z in (("n1", "dc1"), ("n2", "dc2"))]

    @flow
    async def publish():
        rep = PrefectReporter()
        await rep.plan("m-cards", "# plan", "The migration plan")
        for i, (phase, status) in enumerate((("a", "running"), ("b", "done"), ("c", "done"))):
            await rep.progress("m-cards", phase, 30.0 * (i + 1), rows(status))
        assert rep.links() == {}  # no report yet
        await rep.report("m-cards", "**report**", "Final report")
        await rep.report("m-cards", "**dry run summary**", "Dry run: what would run")  # same card, on top
        return str(get_run_context().flow_run.id), rep.links(), rep.finished({"state": "done"})

    frid, links, finished = asyncio.run(publish())
    cards = _cards(prefect_server.api, frid)
    assert sorted((c["type"], c["key"]) for c in cards) == [
        ("markdown", "plan-m-cards"), ("markdown", "report-m-cards"), ("progress", "progress-m-cards"),
        ("table", "ledger-m-cards")]
    by_key = {c["key"]: c for c in cards}
    table = by_key["ledger-m-cards"]
    data = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert [r["status"] for r in data] == ["done", "done"] and list(data[0]) == [
        "node", "zone", "phase", "step", "status", "attempts", "last change"]
    assert table["description"] == "Ledger of Migration m-cards: after phase c"
    assert by_key["progress-m-cards"]["data"] == 90.0
    assert by_key["report-m-cards"]["data"] == "**dry run summary**\n\n---\n\n**report**"
    assert by_key["report-m-cards"]["description"] == "Dry run: what would run"
    # the flow's result names the report, and so does its final state's message
    assert finished.is_completed() and finished.message == f"Report: {links['report_url']}"
    assert finished.data == {"state": "done", **links}
    assert links["report_artifact"] == "report-m-cards" and links["report_artifact_id"] == by_key["report-m-cards"]["id"]
    assert links["report_url"] == f"{prefect_server.url}/artifacts/artifact/{links['report_artifact_id']}"


def test_the_pull_step_names_the_variable_when_it_is_unset_or_wrong(monkeypatch, tmp_path):
    from flows.pull_step import ENV_VAR, ProjectHomeError, enter_project_home

    here = os.getcwd()
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    try:
        with pytest.raises(ProjectHomeError, match=f"{ENV_VAR} is not set on this worker.*export {ENV_VAR}="):
            enter_project_home()
        monkeypatch.setenv(ENV_VAR, str(tmp_path))
        with pytest.raises(ProjectHomeError, match=f"{ENV_VAR}={tmp_path} is not a garage-migrate checkout"):
            enter_project_home()
        (tmp_path / "flows").mkdir()
        (tmp_path / "flows" / "migration.py").write_text("")
        assert enter_project_home() == {"directory": str(tmp_path.resolve())}
        assert os.getcwd() == str(tmp_path.resolve())
    finally:
        os.chdir(here)
