"""Hostile and malformed input never reaches a node (issue 12 §5), proven on a real sshd.

One 3x1 lab whose sshd logs every connection (``LogLevel VERBOSE``: ``Connection from ...``).
Every case of :mod:`tests.unit.hostile_cases`, made from the lab's own valid inventory, goes
through the entry points an operator uses: ``garage-migrate plan`` (the CLI), the runtime the
flows open (with the run's options and migration id), the flows' parameter validation (what
Prefect does with the form before a run starts) and ``garage-migrate run``'s option check. Each
is refused, and sshd saw no connection; then the lab's valid inventory connects, so the count
is known to move.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from garage_migrate import cli
from garage_migrate.errors import InventoryError
from garage_migrate.plan import MigrationOptions
from garage_migrate.runtime import open_runtime
from tests.conftest import run
from tests.unit.hostile_cases import CASES, PASSPHRASE, environment, materialise


@pytest.fixture(scope="module")
def lab(module_lab):
    return module_lab(version="0.7.3", zones=3, per_zone=1, sshd_log_level="VERBOSE", wait_prometheus=False)


def connections(lab) -> int:
    """Connections sshd accepted so far (its log, written by sshd itself)."""
    return (lab.dir / "ssh" / "sshd.log").read_text(errors="replace").count("Connection from ")


def new_connections(lab, before: int) -> str:
    """sshd's log from the first connection after the ``before``-th: what a failure shows."""
    text = (lab.dir / "ssh" / "sshd.log").read_text(errors="replace")
    at = -1
    for _ in range(before + 1):
        at = text.find("Connection from ", at + 1)
        if at < 0:
            return ""
    return text[max(0, at):][:3000] if at >= 0 else ""


def _runtime_refusal(path, case) -> Exception | None:
    async def go():
        async with open_runtime(str(path), "simple", case.migration_id, persist=False,
                                options=MigrationOptions(**case.options)):
            pass
    try:
        run(go(), limit=30)
    except InventoryError as exc:
        return exc
    return None


def test_no_hostile_input_opens_an_ssh_connection(lab, tmp_path, monkeypatch, capsys):
    from prefect.exceptions import ParameterTypeError

    from flows.migration import (
        simple_migration,  # Prefect validates the form's parameters with these types
    )

    base = yaml.safe_load((lab.dir / "inventory.yaml").read_text())
    before = connections(lab)
    seen = []
    for case in CASES:
        path = materialise(case, base, tmp_path / case.id)
        with monkeypatch.context() as m:
            for k, v in environment(case).items():
                m.delenv(k, raising=False) if v is None else m.setenv(k, v)
            if case.options_invalid:
                with pytest.raises(ParameterTypeError, match=case.expect):
                    simple_migration.validate_parameters({"inventory": str(path), "options": case.options})
            elif case.options or case.migration_id:
                exc = _runtime_refusal(path, case)
                assert exc is not None and re.search(case.expect, str(exc)), (case.id, exc)
            else:
                assert cli.main(["plan", "--inventory", str(path), "--procedure", "simple"]) == 1, case.id
                err = capsys.readouterr().err
                assert re.search(case.expect, err), (case.id, err)
                assert PASSPHRASE not in err
        seen.append(case.id)
        assert connections(lab) == before, f"{case.id} opened an SSH connection:\n{new_connections(lab, before)}"
    # the form's other bounds, and the CLI's options, refused before a Prefect server starts
    for params in ({"pause_timeout": 0}, {"pause_timeout": 10**9}, {"migration_id": "../../etc"},
                   {"migration_id": "a b"}):
        with pytest.raises(ParameterTypeError):
            simple_migration.validate_parameters({"inventory": str(lab.dir / "inventory.yaml"), **params})
    inv = str(lab.dir / "inventory.yaml")
    tampered = str(tmp_path / "binary-checksum-mismatch" / "inventory.yaml")
    for flags, rc, said in ((["--inventory", inv, "--watch", "1e9"], 2, "watch_s"),
                            (["--inventory", inv, "--pause-timeout", "0"], 2, "--pause-timeout"),
                            (["--inventory", tampered], 1, "target.sha256")):
        # `run` ends its process with os._exit: run it as the operator does, from a shell; each is
        # refused before a temporary Prefect server starts or the lock pre-check reads a node
        res = subprocess.run([sys.executable, "-m", "garage_migrate.cli", "run", "simple", "--no-input", *flags],
                             capture_output=True, text=True, timeout=120, check=False,
                             stdin=subprocess.DEVNULL, env=dict(os.environ, PREFECT_API_URL=""))
        assert res.returncode == rc and said in res.stderr, (flags, res.stderr[-2000:])
    assert connections(lab) == before, f"a refused option opened an SSH connection:\n{new_connections(lab, before)}"
    assert len(seen) == len(CASES) >= 30
    # the control: the lab's own inventory does connect, once per node, and sshd's log shows it
    assert cli.main(["plan", "--inventory", inv, "--procedure", "simple"]) == 0
    assert connections(lab) >= before + len(lab.nodes)


@pytest.fixture(scope="module")
def pool(lab):
    from garage_migrate.inventory import load_inventory
    from garage_migrate.ssh import SshPool

    return SshPool.from_inventory(load_inventory(lab.dir / "inventory.yaml"))


def test_hostile_file_names_reach_the_node_literally_through_sshd(lab, pool, tmp_path_factory):
    """The property of tests/unit/test_literal_args.py end to end: real sshd, the node's login shell."""
    from hypothesis import HealthCheck, given, settings

    from garage_migrate import commands as C
    from tests.unit.test_literal_args import segment

    where = tmp_path_factory.mktemp("hostile-names")
    node = lab.nodes[0]["name"]

    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    @given(name=segment)
    def check(name):
        f = where / name
        f.write_bytes(name.encode())

        async def go():
            try:
                return (await pool.shell(node).run(C.cat(str(f)))).stdout
            finally:
                await pool.close()
        try:
            assert run(go(), limit=60) == name
        finally:
            f.unlink()
        assert sorted(p.name for p in where.iterdir()) == [], "a name was executed as shell"

    check()
