"""A real Prefect stack for operator tests: ``prefect server start``, a process work pool, a
worker and ``prefect deploy --all`` of ``deployments/prefect.yaml``, as an operator sets it up.

Everything is started in its own process group and stopped by PID (the worker ignores its
first SIGTERM: lab-environment trap 3, so it gets a second, then SIGKILL), even after a failed
test. The server runs with a short concurrency lease (30 s, renewed at three quarters of it)
so that a pause longer than a minute would be killed if any deployment carried a limit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "garage-migrate"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen | None, signals=(signal.SIGTERM, signal.SIGTERM, signal.SIGKILL)) -> None:
    if proc is None or proc.poll() is not None:
        return
    for sig in signals:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(8)
            return
        except subprocess.TimeoutExpired:
            continue


def _migrated_sqlite(path: Path, env: dict) -> None:
    """Make ``path`` an empty, migrated Prefect database (:mod:`garage_migrate.prefectdb`; the
    template in the system's temporary directory, shared by the xdist processes)."""
    from garage_migrate.prefectdb import migrated_sqlite

    migrated_sqlite(path, env, cache=Path(tempfile.gettempdir()) / f"gm-prefect-db-{os.getuid()}", prefect=PREFECT)


class PrefectStack:
    """Server + work pool + worker + deployments; ``api`` is the API URL."""

    def __init__(self, lease_s: int = 30, database_url: str | None = None):
        self.home = Path(tempfile.mkdtemp(prefix="gm-prefect-stack-"))
        # None: a fresh SQLite file in the stack's home (an empty database at the migration
        # head, see _migrated_sqlite); else e.g. postgresql+asyncpg://...
        self.sqlite = None if database_url else self.home / "prefect.db"
        self.database_url = database_url or f"sqlite+aiosqlite:///{self.sqlite}"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/api"
        self.lease_s = lease_s
        self.server: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.flow_pids: set[int] = set()

    def env(self, **extra) -> dict:
        e = dict(os.environ, PREFECT_HOME=str(self.home), PREFECT_API_URL=self.api,
                 PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_CLI_PROMPT="false",
                 GARAGE_MIGRATE_HOME=str(ROOT), **extra)
        return e

    def _cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        res = subprocess.run([PREFECT, *args], cwd=ROOT, env=self.env(), capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def start(self, timeout: float = 300) -> "PrefectStack":
        """The whole stack: the server, then the work pool, the deployments and the worker."""
        return self.start_server(timeout).start_operator()

    def start_server(self, timeout: float = 300) -> "PrefectStack":
        """``prefect server start`` on its database (by default a fresh SQLite file); returns once
        it is healthy. The UI is told the API's address (``PREFECT_UI_API_URL``): it derives it
        from the server's settings, not from ``--port``, and would call the default :4200."""
        env = self.env(PREFECT_SERVER_DATABASE_CONNECTION_URL=self.database_url,
                       PREFECT_SERVER_CONCURRENCY_INITIAL_DEPLOYMENT_LEASE_DURATION=str(self.lease_s),
                       PREFECT_UI_API_URL=self.api)
        env.pop("PREFECT_API_URL")
        if self.sqlite is not None:
            _migrated_sqlite(self.sqlite, self.env())
        self.server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                                       env=env, stdout=open(self.home / "server.log", "wb"), stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        # a loaded machine (CI, or several suites at once) may need longer: GM_E2E_SERVER_START_S
        limit = max(timeout, float(os.environ.get("GM_E2E_SERVER_START_S", "0")))
        deadline = time.monotonic() + limit
        while True:
            if self.server.poll() is not None:
                raise RuntimeError(f"prefect server exited: {(self.home / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.api}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"prefect server did not become healthy in {limit:.0f} s: "
                                       f"{(self.home / 'server.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        return self

    def start_operator(self) -> "PrefectStack":
        """On the running server: the work pool, ``prefect deploy --all`` and a worker."""
        self._cli("work-pool", "create", POOL, "--type", "process", "--overwrite")
        self._cli("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all", timeout=300)
        self.worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", POOL, "--type", "process"], cwd=ROOT,
            env=self.env(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1"),
            stdout=open(self.home / "worker.log", "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        return self

    def stop(self) -> None:
        """Stop the worker, the flow-run processes it started, and the server (by PID)."""
        self.stop_operator()
        _stop(self.server, (signal.SIGTERM, signal.SIGKILL))

    def stop_operator(self) -> None:
        """Stop the worker and any flow-run process it started that outlived it (by PID)."""
        _stop(self.worker)
        self.worker = None
        for pid in self.flow_pids:  # flow-run processes the worker started (if any outlived it)
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.flow_pids.clear()

    def logs(self) -> str:
        return "".join((self.home / f).read_text(errors="replace")[-6000:] for f in ("worker.log",)
                       if (self.home / f).exists())

    # ------------------------------------------------------------------ API helpers
    def client(self):
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api)

    def deployments(self) -> list:
        with self.client() as c:
            return c.read_deployments()

    def drop_pending_watch_runs(self) -> int:
        """Delete the post-migration watch runs not yet final; returns how many.

        A completed migration schedules its watch (every 15 min for 6 h by default) against its
        lab's inventory. The lab goes down with its test, and its subnet is soon another lab's:
        a worker of a later test would run those watches against that lab's sshd. So the tier
        deletes them at the end of every test (``tests/e2e/conftest.py``).
        """
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName

        n = 0
        with self.client() as c:
            for r in c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["post-migration-watch"]))):
                if r.state is None or not r.state.is_final():
                    c.delete_flow_run(r.id)
                    n += 1
        return n

    def run_deployment(self, name: str, **parameters):
        """Create a flow run of deployment ``flow/deployment``; returns its id."""
        with self.client() as c:
            dep = c.read_deployment_by_name(name)
            return c.create_flow_run_from_deployment(dep.id, parameters=parameters).id

    def flow_run(self, frid):
        with self.client() as c:
            return c.read_flow_run(frid)

    def wait_state(self, frid, pred, timeout: float = 240, what: str = "state"):
        deadline = time.monotonic() + timeout
        fr = None
        while time.monotonic() < deadline:
            fr = self.flow_run(frid)
            if fr.state is not None and pred(fr.state):
                return fr
            time.sleep(0.5)
        raise AssertionError(f"flow run {frid} never reached {what}; last {fr.state if fr else None}\n{self.logs()}")

    def wait_paused(self, frid, not_key: set[str] = frozenset(), timeout: float = 240):
        return self.wait_state(frid, lambda s: s.is_paused() and s.state_details.pause_key not in not_key,
                               timeout, f"a pause other than {sorted(not_key)}")

    def wait_final(self, frid, timeout: float = 600):
        return self.wait_state(frid, lambda s: s.is_final(), timeout, "a final state")

    def set_state(self, frid, state) -> None:
        with self.client() as c:
            c.set_flow_run_state(frid, state, force=True)

    def retry(self, frid) -> None:
        """``prefect flow-run retry <id>``, as an operator types it."""
        self._cli("flow-run", "retry", str(frid))

    def resume(self, frid, run_input: dict | None, timeout: float = 60):
        """``resume_flow_run``, as the UI's Resume sends it. Prefect proposes the Paused state
        first and saves the pause's form just after it: an answer sent in between is refused
        with "Run input schema not found". A person sees no form yet then and waits; so does
        this (bounded), so that a refusal returned here is the form's own."""
        deadline = time.monotonic() + timeout
        while True:
            with self.client() as c:
                res = c.resume_flow_run(frid, run_input=run_input)
            reason = getattr(getattr(res, "details", None), "reason", "") or ""
            if res.status.value != "REJECT" or not form_not_saved_yet(reason) or time.monotonic() > deadline:
                return res
            time.sleep(0.25)


def form_not_saved_yet(reason: str) -> bool:
    """Whether a refused resume was refused because Prefect has not yet saved the pause's form
    (it saves it just after the Paused state): the answer is to be sent again, not dropped."""
    return "Run input schema not found" in reason


def gate_of(pause_key: str) -> str:
    """The gate of a pause key (``approve-flip-1a2b3c4d-2`` -> ``approve-flip``): the suffix is
    new for every attempt, so that no pause key is ever used twice."""
    import re

    return re.sub(r"-[0-9a-f]{8}-\d+$", "", pause_key)


def service_events(lab, since: float) -> list[dict]:
    """The lab's service events (stop/start/kill of a node) after ``since``."""
    path = lab.dir / "events.jsonl"
    if not path.exists():
        return []
    return [e for e in (json.loads(x) for x in path.read_text().splitlines() if x.strip()) if e["t"] > since]


def flow_run_pids(flow_run_id) -> list[int]:
    """The live processes the worker started for ``flow_run_id`` (its ``PREFECT__FLOW_RUN_ID``)."""
    want = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if want in env and state != "Z":
            out.append(int(d.name))
    return sorted(out)


def process_gone(pid: int, timeout: float = 30) -> bool:
    """Whether ``pid`` exits (or is a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        if "\nState:\tZ" in state:
            return True
        time.sleep(0.3)
    return False
