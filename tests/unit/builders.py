"""Builders shared by the unit tests: an inventory and the facts discovery would find (no I/O)."""

from __future__ import annotations

from garage_migrate.discovery import ClusterFacts, NodeFacts
from garage_migrate.facts import parse_config, parse_version
from garage_migrate.inventory import parse_inventory

SHA = "a" * 64
RPC_SECRET = "0" * 64


def inventory_and_facts(zones: dict[str, int], mode: str = "3", versions: dict[str, str] | None = None,
                        backup_root: str = "/var/backups/garage"):
    """An inventory of ``zones`` (zone -> node count, nodes ``n1``, ``n2``...) and its facts.

    Args:
        zones: nodes per zone.
        mode: the replication mode in every node's config.
        versions: node -> running version (default 0.7.3 everywhere).
        backup_root: the inventory's backup root (the ledger goes there).
    """
    versions = versions or {}
    nodes = []
    i = 0
    for z, n in zones.items():
        for _k in range(n):
            i += 1
            nodes.append(f"  - {{name: n{i}, host: 10.0.0.{i}, zone: {z}}}")
    text = f"""
cluster: test
ssh: {{user: root, known_hosts: /tmp/known_hosts}}
backup: {{root: {backup_root}}}
target: {{version: 0.8.7, binary: /tmp/garage, sha256: {SHA}}}
nodes:
""" + "\n".join(nodes) + "\n"
    inv = parse_inventory(text)
    facts = []
    for node in inv.resolved_nodes():
        cfg = parse_config(f'metadata_dir = "/var/lib/garage/meta"\ndata_dir = "/var/lib/garage/data"\n'
                           f'replication_mode = "{mode}"\nrpc_bind_addr = "[::]:3901"\n'
                           f'rpc_secret = "{RPC_SECRET}"\n[s3_api]\ns3_region = "garage"\napi_bind_addr = "[::]:3900"\n')
        v = parse_version(f"garage v{versions.get(node.name, '0.7.3')}")
        facts.append(NodeFacts(node.name, node.host, node.zone, f"{int(node.name[1:]):064x}", cfg, True,
                               v, v, "/usr/local/bin/garage"))
    return inv, ClusterFacts(tuple(facts), None, None)


def backed_up_runtime(tmp_path, backed_up=("n1", "n2", "n3")):
    """A 3-zone minimal-downtime runtime on a fresh ledger, preflighted everywhere and backed up
    on ``backed_up`` (by the fake steps): what a rollback plan is made from."""
    import asyncio
    import logging

    from fakes import FakeSteps

    from garage_migrate.ledger import Ledger
    from garage_migrate.steps import Runtime

    inv, facts = inventory_and_facts({"dc1": 1, "dc2": 1, "dc3": 1}, backup_root=str(tmp_path))
    rt = Runtime(inv=inv, shells={}, ledger=Ledger.open(tmp_path, inv.cluster, "m1", "minimal-downtime"),
                 facts=facts, log=logging.getLogger("test"))
    steps = FakeSteps()
    for n in ("n1", "n2", "n3"):
        asyncio.run(steps.preflight(rt, n))
    for n in backed_up:
        asyncio.run(steps.backup_metadata(rt, n))
    return rt
