"""End-to-end tier: the flows against a real lab, under a real (subprocess) Prefect server."""

from __future__ import annotations

import functools
import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def make_lab(make_lab):
    """Labs of this tier start on 0.7.3, which exports no queue metrics: the flows' gates read
    ``garage stats`` until every node runs 0.8, tens of seconds in (a 0.8 node whose series
    are absent is read through ``stats`` too). So the labs do not wait the ~4 s for
    Prometheus's first scrape (targets are applied in 5 s batches); it still runs and scrapes
    from the start."""
    return functools.partial(make_lab, wait_prometheus=False)


@pytest.fixture(scope="module")
def module_lab(module_lab):
    """See ``make_lab``."""
    return functools.partial(module_lab, wait_prometheus=False)


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server with a temporary SQLite database, for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
