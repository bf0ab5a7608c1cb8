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


def _drop_watch_runs(request) -> None:
    for name in ("prefect_stack", "pg_stack"):
        if name in request.fixturenames:
            try:
                stack = request.getfixturevalue(name)
            except Exception:  # noqa: BLE001 - the stack never started: nothing was scheduled
                continue
            if stack.server is not None and stack.server.poll() is None:
                stack.drop_pending_watch_runs()


@pytest.fixture(autouse=True)
def _no_watch_run_outlives_its_test(request):
    """The watch runs a test's migrations scheduled are deleted when it ends (see
    :meth:`tests.e2e.stack.PrefectStack.drop_pending_watch_runs`); a module whose tests check
    the watch runs of its one migration is marked ``watch_runs_live_for_module``."""
    yield
    if request.node.get_closest_marker("watch_runs_live_for_module") is None:
        _drop_watch_runs(request)


@pytest.fixture(autouse=True, scope="module")
def _no_watch_run_outlives_its_module(request):
    yield
    _drop_watch_runs(request)


@pytest.fixture(scope="session")
def prefect_stack():
    """One real Prefect server (``prefect server start``, fresh SQLite) for the whole session.

    The flow tests run their flows in this process against its API (``prefect_server``); the
    operator tests add a work pool, the deployments and a worker to it (their ``stack``). A
    server start on a fresh database takes 15-60 s on these machines, so the tier starts one,
    not one per kind of test. It is stopped by PID at the end of the session, even after a
    failure.
    """
    from tests.e2e.stack import PrefectStack

    s = PrefectStack(lease_s=30)
    try:
        yield s.start_server()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def stack(prefect_stack):
    """The session's server with a module's work pool, deployments and worker (the operator
    tests); the worker, and any flow-run process it left, is stopped by PID at the end of the
    module."""
    try:
        yield prefect_stack.start_operator()
    finally:
        prefect_stack.stop_operator()


@pytest.fixture(scope="session")
def prefect_server(prefect_stack):
    """This process's Prefect client talks to the session's server (as under
    ``prefect_test_harness``, through settings: ``os.environ`` is left alone, so the CLI runs
    of the operator tests still start their own temporary servers)."""
    import prefect.context
    import prefect.settings

    with prefect.settings.temporary_settings(updates={prefect.settings.PREFECT_API_URL: prefect_stack.api}):
        with prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()):
            yield prefect_stack
            _drain_prefect_workers()


def _drain_prefect_workers() -> None:
    """Ship the logs and events still queued in this process before the server stops (as
    ``prefect_test_harness`` does), so that nothing tries to reach a stopped server at exit."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain():
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # the worker was never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())



@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server for a module (:class:`tests.e2e.postgres.PostgresCluster`),
    stopped by PID at its end, even after a failure."""
    from tests.e2e.postgres import PostgresCluster

    pg = PostgresCluster()
    try:
        yield pg.start()
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def pg_stack(postgres):
    """A second real Prefect stack, on PostgreSQL: ``prefect server start`` on a database of
    ``postgres``, the work pool, ``prefect deploy --all`` and a worker. The PostgreSQL test and
    the browser test share it (one server start, one deploy: tests/e2e/test_browser.py). Stopped
    by PID at the end of the module, even after a failure (before the database under it).
    """
    from tests.e2e.stack import PrefectStack

    stack = PrefectStack(lease_s=30, database_url=postgres.create_database("prefect"))
    try:
        # the first start creates Prefect's tables in PostgreSQL: slower than on SQLite
        yield stack.start(timeout=300)
    finally:
        stack.stop()
