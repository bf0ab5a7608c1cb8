"""Security of a real run (issue 12 §6), on one 3x1 lab with recognisable secrets.

- The lab's ``rpc_secret``, metrics and admin tokens, the SSH key's passphrase and the
  Prometheus token are values no code would print by chance; a whole simple migration runs
  (the engine's executor, steps and cluster lock; every question approved), and none of them
  appears in any log record (every logger, DEBUG), anything the reporter published (what the
  flows turn into artifacts), the ledger, the command journal, or any file the controller wrote.
- Host keys: the run starts with an empty known_hosts and ``ssh.trust_on_first_use``; each node's
  key is recorded in known_hosts (owner-only) and in the ledger (``host-key-trusted``); a key
  that then differs from the recorded one is refused (HOST_KEY_CHANGED), trust on first use or not.
- Everything the controller wrote under the backup root is owner-only (dirs 0700, files 0600);
  with ``ssh.sudo`` off, no command the run journalled went through sudo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time

import asyncssh
import pytest
import yaml

from garage_migrate.cluster_lock import ClusterLock, RunIdentity, lock_nodes
from garage_migrate.errors import HostKeyError
from garage_migrate.executor import Answer, EngineSteps, run_migration
from garage_migrate.plan import MigrationOptions
from garage_migrate.runtime import open_runtime, plan_for
from tests.conftest import run

SEED = "security-seed"
SECRETS = {
    "rpc_secret": hashlib.sha256(f"rpc-secret:{SEED}".encode()).hexdigest(),  # as garage_lab.build makes it
    "metrics_token": "METRICS-TOKEN-7c1d5e0a93",
    "admin_token": "ADMIN-TOKEN-4be2a61f08",
    "key_passphrase": "KEY-PASSPHRASE-d0e8c2f7",
    "prometheus_token": "PROM-TOKEN-a9b3c1e5d7",
}
OPTS = MigrationOptions(watch_s=0.0, gate_deadline_s=60.0, gate_consecutive=1)


@pytest.fixture(scope="module")
def lab(module_lab):
    return module_lab(version="0.7.3", zones=3, per_zone=1, seed=SEED, metrics_token=SECRETS["metrics_token"],
                      admin_token=SECRETS["admin_token"])


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    """The lab's inventory with a passphrase-protected key, a Prometheus token from the
    environment, an empty known_hosts and trust on first use."""
    d = tmp_path_factory.mktemp("security")
    key = asyncssh.read_private_key(str(lab.dir / "id_ed25519"))
    key.write_private_key(str(d / "id_encrypted"), passphrase=SECRETS["key_passphrase"], rounds=50)
    (d / "id_encrypted").chmod(0o600)
    inv = yaml.safe_load((lab.dir / "inventory.yaml").read_text())
    inv["ssh"].update(key_file=str(d / "id_encrypted"), key_passphrase_env="GM_TEST_KEY_PASS",
                      known_hosts=str(d / "known_hosts"), trust_on_first_use=True)
    inv["prometheus"]["bearer_token_env"] = "GM_TEST_PROM_TOKEN"
    (d / "inventory.yaml").write_text(yaml.safe_dump(inv, sort_keys=False))
    os.environ["GM_TEST_KEY_PASS"] = SECRETS["key_passphrase"]
    os.environ["GM_TEST_PROM_TOKEN"] = SECRETS["prometheus_token"]
    yield d / "inventory.yaml", inv
    os.environ.pop("GM_TEST_KEY_PASS", None)
    os.environ.pop("GM_TEST_PROM_TOKEN", None)


class Approver:
    async def ask(self, kind, key, description, choices=()):
        return Answer(action="approve", note="security test", pause_key=key, flow_run_id="")


class Recorder:
    """A reporter keeping everything it is given: what the flows publish as artifacts."""

    def __init__(self):
        self.published: list[str] = []

    async def plan(self, migration_id, markdown, description):
        self.published += [markdown, description]

    async def progress(self, migration_id, phase, percent, rows):
        self.published.append(json.dumps(rows, default=str))

    async def report(self, migration_id, markdown, description):
        self.published += [markdown, description]

    async def event(self, name, migration_id, cluster, *, phase=None, node=None, message="", **data):
        self.published.append(json.dumps(dict(data, name=name, phase=phase, node=node, message=message),
                                         default=str))


class Everything(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))
        if record.exc_info:
            self.lines.append(logging.Formatter().formatException(record.exc_info))


async def _hold(rt):
    lock = ClusterLock(rt.shell, lock_nodes(rt.inv, rt.facts), rt.ledger, "simple", RunIdentity(kind="test"))
    await lock.acquire()
    return lock


@pytest.fixture(scope="module")
def migrated(lab, inventory):
    """One whole simple migration, with every log record captured."""
    path, _inv = inventory
    handler = Everything()
    root = logging.getLogger()
    old_level, others = root.level, list(root.handlers)
    # only ours while DEBUG is on: a handler another module installed (Prefect's console, once
    # imported) would write every asyncssh record to a closed capture stream and stall the run
    for h in others:
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    reporter = Recorder()
    try:
        async def go():
            async with open_runtime(str(path), "simple", "sec-1") as rt:
                res = await run_migration(rt, plan_for(rt, "simple", OPTS), OPTS, dry_run=False, hold=_hold,
                                          decider_for=lambda lock: Approver(), steps=EngineSteps(),
                                          reporter=reporter)
                return res, rt.ledger.path
        t0 = time.monotonic()
        res, ledger_path = run(go(), limit=600)
        print(f"simple migration on 3x1: {time.monotonic() - t0:.1f}s")
    finally:
        root.removeHandler(handler)
        for h in others:
            root.addHandler(h)
        root.setLevel(old_level)
    return res, ledger_path, handler.lines, reporter.published


def test_a_whole_migration_leaks_no_secret(lab, inventory, migrated):
    res, ledger_path, log_lines, published = migrated
    assert res["state"] == "done"
    # the control: these are the cluster's real secrets (the nodes' garage.toml holds them)
    toml = (lab.node_dir(lab.nodes[0]["name"]) / "etc" / "garage.toml").read_text()
    assert all(SECRETS[k] in toml for k in ("rpc_secret", "metrics_token", "admin_token"))
    assert {k: v["running_version"] for k, v in lab.inspect(checksums=False)["nodes"].items()} == \
        {n["name"]: "0.8.7" for n in lab.nodes}
    path, _inv = inventory
    files = [p for p in (lab.dir / "backups").rglob("*") if p.is_file()] + [p for p in path.parent.iterdir()
                                                                             if p.is_file() and p.name != "id_encrypted"]
    assert any(p.name == "ledger.json" for p in files) and any(p.name == "commands.jsonl" for p in files)
    assert len(log_lines) > 50 and published
    haystacks = {"log": "\n".join(log_lines), "published": "\n".join(published)}
    for p in files:
        haystacks[str(p)] = p.read_bytes().decode("utf-8", "replace")
    for name, secret in SECRETS.items():
        for where, text in haystacks.items():
            assert secret not in text, f"{name} leaked into {where}"
    # the journal is complete enough to matter: it holds the stops, starts and switches
    journal = [json.loads(ln) for ln in (ledger_path.parent / "commands.jsonl").read_text().splitlines()]
    assert len(journal) > 20
    # least privilege: the inventory does not ask for sudo, so nothing ran through it
    assert not [j for j in journal if (j.get("argv") or [""])[0] == "sudo" or j.get("command", "").startswith("sudo ")]


def test_the_controller_writes_owner_only_files(lab, migrated):
    _res, ledger_path, _l, _p = migrated
    root = lab.dir / "backups"
    seen = 0
    for p in [root / inv_dir for inv_dir in os.listdir(root)] + list(root.rglob("*")):
        mode = stat.S_IMODE(p.lstat().st_mode)
        if p.is_symlink():
            continue
        want = 0o700 if p.is_dir() else 0o600
        assert mode == want, f"{p} is {oct(mode)}, not {oct(want)}"
        seen += 1
    assert seen > 5 and (ledger_path.parent / "commands.jsonl").exists()


def test_trust_on_first_use_records_each_key_in_known_hosts_and_the_ledger(lab, inventory, migrated):
    from garage_migrate.ledger import Ledger

    path, _inv = inventory
    _res, ledger_path, log_lines, _p = migrated
    kh = path.parent / "known_hosts"
    assert stat.S_IMODE(kh.stat().st_mode) == 0o600
    lab_keys = (lab.dir / "known_hosts").read_text().split()
    recorded = kh.read_text().splitlines()
    assert sorted(ln.split()[0] for ln in recorded) == sorted(f"[{n['addr']}]:{lab.spec.ssh_port}" for n in lab.nodes)
    assert all(ln.split()[2] in lab_keys for ln in recorded)  # the lab's real host key, nothing else
    events = [e for e in Ledger.load(ledger_path).doc.events if e.kind == "host-key-trusted"]
    assert sorted(e.nodes[0] for e in events) == sorted(n["name"] for n in lab.nodes)
    assert all("SHA256:" in e.message and "trust_on_first_use" in e.message for e in events)
    assert sum("TRUST ON FIRST USE" in ln for ln in log_lines) == len(lab.nodes)


def test_a_changed_key_is_refused_even_with_trust_on_first_use(lab, inventory, tmp_path, migrated):
    path, inv = inventory
    lines = (path.parent / "known_hosts").read_text().splitlines()
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().split()
    lines[0] = f"{lines[0].split()[0]} {other[0]} {other[1]}"
    (tmp_path / "known_hosts").write_text("\n".join(lines) + "\n")
    inv = dict(inv, ssh=dict(inv["ssh"], known_hosts=str(tmp_path / "known_hosts")))
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(inv))

    async def go():
        async with open_runtime(str(tmp_path / "inventory.yaml"), "simple", "sec-2", persist=False):
            pass
    with pytest.raises(HostKeyError) as e:
        run(go(), limit=120)
    assert e.value.code == "HOST_KEY_CHANGED"
    assert (tmp_path / "known_hosts").read_text().splitlines() == lines  # nothing was added or replaced
