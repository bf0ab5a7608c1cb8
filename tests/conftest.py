"""Shared fixtures and helpers: labs that are always torn down (even after a failed test),
the one ``run`` helper for coroutines, and the node-local ``garage`` / ``service`` runners.

Labs get their subnet from the harness's one allocator (``garage_lab.spec.SUBNETS``): the spec
leaves ``subnet`` empty and ``Lab.up`` picks the next free ``127.42.C``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import timings  # noqa: E402 - needs ROOT on sys.path


def pytest_collection_modifyitems(config, items):
    """Tests under tests/lab are lab tests; CI runs them, never skips them. Files run longest
    first (:mod:`tests.timings`), so that ``-n 3 --dist loadfile`` ends on short files."""
    for item in items:
        if "/tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)
    timings.longest_first(items, ROOT)


def pytest_runtest_logreport(report):
    """Add each test's phases to its file's time (recorded when ``GM_TIMINGS_OUT`` is set)."""
    timings.RECORDER.add(report)


def pytest_sessionfinish(session):
    """Write the files' measured times to ``GM_TIMINGS_OUT`` (the controller's view under xdist)."""
    if not hasattr(session.config, "workerinput"):
        timings.RECORDER.write(os.environ.get("GM_TIMINGS_OUT"))


def run(coro, limit: float | None = 120):
    """Run a coroutine to completion in a fresh event loop, within ``limit`` seconds (None: no limit)."""
    return asyncio.run(coro if limit is None else asyncio.wait_for(coro, limit))


class _Labs:
    """Brings labs up on demand and takes every one of them down at the end of its scope."""

    def __init__(self, tmp_path_factory, prefix: str):
        self.tmp_path_factory = tmp_path_factory
        self.prefix = prefix
        self.labs: list = []

    def __call__(self, timeout: float = 60, wait_prometheus: bool = True, **kw):
        from garage_lab.harness import Lab, LabSpec

        d = self.tmp_path_factory.mktemp(self.prefix)
        kw.setdefault("ssh_port", 2222)
        lab = Lab.up(LabSpec(dir=str(d), **kw), timeout=timeout, wait_prometheus=wait_prometheus)
        self.labs.append(lab)
        return lab

    def down_all(self) -> None:
        for lab in self.labs:
            try:
                lab.down()
            except Exception as exc:  # noqa: BLE001 - report, and keep tearing down the others
                print(f"lab teardown failed for {lab.dir}: {exc}", file=sys.stderr)


@pytest.fixture
def make_lab(tmp_path_factory):
    """Factory: ``make_lab(version="0.7.3", zones=3, per_zone=2, **spec)`` returns an up lab,
    taken down after the test."""
    labs = _Labs(tmp_path_factory, "lab")
    yield labs
    labs.down_all()


@pytest.fixture(scope="module")
def module_lab(tmp_path_factory):
    """Like ``make_lab``, but the labs live until the end of the test module."""
    labs = _Labs(tmp_path_factory, "lab")
    yield labs
    labs.down_all()


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
