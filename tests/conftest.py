"""Shared fixtures: labs that are always torn down, even after a failed test."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Each lab gets its own 127.42.C.0/24 so labs of one test run (and other runs on the machine)
# never collide: a per-process starting point, then the next C whose RPC address is free.
_subnet_counter = itertools.count(os.getpid() % 230)


class _Subnets:
    """Yields third octets ``C`` (for ``127.42.C``) not in use by another lab."""

    def __next__(self) -> int:
        import socket

        for _ in range(460):
            c = 20 + next(_subnet_counter) % 230
            s = socket.socket()
            try:
                s.bind((f"127.42.{c}.1", 3901))
                return c
            except OSError:
                continue
            finally:
                s.close()
        raise RuntimeError("no free 127.42.C.0/24 subnet for a lab")


_subnets = _Subnets()


def pytest_collection_modifyitems(config, items):
    """Tests under tests/lab are lab tests; CI runs them, never skips them."""
    for item in items:
        if "/tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture
def make_lab(tmp_path_factory):
    """Factory: ``make_lab(version="0.7.3", zones=3, per_zone=2, **spec)`` returns an up lab."""
    from garage_lab.harness import Lab, LabSpec

    labs: list[Lab] = []

    def factory(timeout: float = 60, wait_prometheus: bool = True, **kw) -> Lab:
        d = tmp_path_factory.mktemp("lab")
        spec = LabSpec(dir=str(d), subnet=f"127.42.{next(_subnets)}", ssh_port=2222, **kw)
        lab = Lab.up(spec, timeout=timeout, wait_prometheus=wait_prometheus)
        labs.append(lab)
        return lab

    yield factory
    for lab in labs:
        try:
            lab.down()
        except Exception as exc:  # noqa: BLE001 - report, and keep tearing down the others
            print(f"lab teardown failed for {lab.dir}: {exc}", file=sys.stderr)


def garage(lab, node: str, *args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run the node's current ``garage`` binary locally, in the node's context."""
    nd = lab.node_dir(node)
    e = dict(os.environ, GARAGE_LAB_NODE=node)
    e.pop("RUST_LOG", None)
    e.update(env or {})
    return subprocess.run([str(nd / "usr/local/bin/garage"), "-c", str(nd / "etc/garage.toml"), *args],
                          capture_output=True, text=True, env=e, timeout=timeout)


def service(lab, node: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the lab's service control for ``node``."""
    e = dict(os.environ, GARAGE_LAB_NODE=node)
    return subprocess.run([str(lab.dir / "bin" / "garage-service"), *args], capture_output=True, text=True,
                          env=e, timeout=timeout)
