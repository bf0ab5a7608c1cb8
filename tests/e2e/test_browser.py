"""The Prefect server on PostgreSQL, driven through its API and through its UI in a real browser.

The module's stack (``pg_stack``): Debian's PostgreSQL server (a throwaway cluster,
:mod:`tests.e2e.postgres`), ``prefect server start`` with
``PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://...`` (older name:
``PREFECT_API_DATABASE_CONNECTION_URL``), the process work pool, a worker and
``prefect deploy --all``, as a team runs Prefect beyond one laptop (README, "The Prefect server
on PostgreSQL"). Two minimal-downtime migrations run on it, each on its own 3x1 lab, at the same
time (one server start, one deploy, and the two runs overlap instead of adding up):

- **through the API**: the deployment is triggered with parameters, pauses for its approval, is
  resumed with a RunInput and completes (started in the background when the module starts, by
  ``api_run``; checked by the last test);
- **in the browser**: Debian's headless Chromium driven by Node's ``playwright-core``
  (``tests/e2e/browser/run_and_approve.js``; no browser download). A person fills the
  deployment's run form, submits it, opens the run, waits for it to pause, clicks Resume, reads
  the plan in the dialog, chooses "approve" with a note and sees the run continue to Completed.
  The screenshots (the form, the dialog, the completed run) are kept in
  ``test-artifacts/browser/`` under the repository (``GARAGE_MIGRATE_ARTIFACTS`` moves
  ``test-artifacts/``); the test prints the path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.realserver import (
    MD,
    OPTIONS,
    TARGET,
    assert_approved_and_completed,
    lab_spec,
    ledger_of,
    wait_for_approval,
)
from tests.e2e.stack import ROOT

BROWSER_DIR = ROOT / "tests" / "e2e" / "browser"
CHROMIUM = "/usr/bin/chromium"
NOTE = "approved in the browser"
API_NOTE = "approved through the API (PostgreSQL)"


def _psql(postgres, sql: str) -> str:
    res = subprocess.run([str(postgres.bin / "psql"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U",
                          postgres.user, "-d", "prefect", "-At", "-c", sql],
                         check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


class _ApiRun:
    """The API test's migration: triggered through the API with parameters, and resumed through
    the API with a RunInput as soon as it pauses at its approval (in a thread, so that it runs
    beside the browser test's migration). What it saw is kept for the test to check."""

    def __init__(self, stack, postgres, lab):
        self.stack, self.postgres, self.lab = stack, postgres, lab
        self.inventory = str(lab.dir / "inventory.yaml")
        self.t0 = time.monotonic()
        self.frid = stack.run_deployment(MD, inventory=self.inventory, options=OPTIONS, auto_approve=False,
                                         pause_timeout=900)
        self.paused = None  # the flow run as it paused
        self.row_while_paused = None  # its row in PostgreSQL then
        self.approved_at: float | None = None
        self.resumed = None  # the API's answer to the resume
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._answer, name="api-run", daemon=True)
        self.thread.start()

    def _answer(self) -> None:
        try:
            self.paused = wait_for_approval(self.stack, self.frid, timeout=900)
            self.row_while_paused = _psql(self.postgres, "select state_type || ' ' || state_name from flow_run "
                                                         f"where id = '{self.frid}'")
            self.approved_at = time.time()
            self.resumed = self.stack.resume(self.frid, {"action": "approve", "note": API_NOTE})
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


@pytest.fixture(scope="module", autouse=True)
def api_run(pg_stack, postgres, module_lab):
    """The API test's run, started when the module starts (see the module's docstring)."""
    run = _ApiRun(pg_stack, postgres, module_lab(**lab_spec()))
    yield run
    run.thread.join(5)


def _artifacts() -> Path:
    base = Path(os.environ.get("GARAGE_MIGRATE_ARTIFACTS", ROOT / "test-artifacts"))
    d = base / "browser"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def _drive(cfg: dict, timeout: float) -> list[dict]:
    """Run the Node script; its process group (Node and Chromium) is stopped by PID at the end."""
    node = shutil.which("node") or "/usr/bin/node"
    proc = subprocess.Popen([node, str(BROWSER_DIR / "run_and_approve.js"), json.dumps(cfg)], cwd=BROWSER_DIR,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(10)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
    events = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    errors = [e["message"] for e in events if e["event"] == "error"]
    assert proc.returncode == 0 and not errors, f"browser run failed ({proc.returncode}): {errors}\n{err[-3000:]}"
    return events


@pytest.mark.timeout(1800)  # includes the module stack's start (PostgreSQL, server, deploy)
def test_a_person_runs_the_deployment_from_its_form_and_approves_the_plan_in_the_browser(pg_stack, make_lab):
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run scripts/bootstrap.sh"
    assert (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), \
        "playwright-core is missing: run scripts/bootstrap.sh (npm ci in tests/e2e/browser)"
    lab = make_lab(**lab_spec())
    inventory = str(lab.dir / "inventory.yaml")
    artifacts = _artifacts()
    profile = Path(tempfile.mkdtemp(prefix="gm-chromium-"))
    t0 = time.monotonic()
    try:
        events = _drive({
            "url": pg_stack.url, "deployment": "minimal-downtime", "inventory": inventory, "note": NOTE,
            "options": {"watch": OPTIONS["watch_s"], "gate_deadline": OPTIONS["gate_deadline_s"],
                        "gate_consecutive": OPTIONS["gate_consecutive"]},
            "artifacts": str(artifacts), "profile": str(profile), "chromium": CHROMIUM, "timeout_s": 400,
        }, timeout=1100)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        print(f"browser screenshots: {artifacts}")
    secs = time.monotonic() - t0
    by = {e["event"]: e for e in events}
    assert [e["event"] for e in events] == ["form-filled", "submitted", "paused", "dialog", "choices", "resumed",
                                            "completed"], events
    frid = by["submitted"]["flow_run_id"]

    # the form's values reached the run: the lab's inventory and the options typed in
    fr = pg_stack.flow_run(frid)
    assert fr.deployment_id is not None and fr.parameters["inventory"] == inventory, fr.parameters
    assert {k: fr.parameters["options"][k] for k in OPTIONS} == OPTIONS, fr.parameters["options"]

    # the dialog showed this migration's plan: its id, every node, the target version
    mid = ledger_of(lab).doc.migration_id
    text = by["dialog"]["text"]
    for want in (mid, TARGET, *(n["name"] for n in lab.nodes)):
        assert want in text, f"{want!r} not in the resume dialog:\n{text[:3000]}"
    # the choices of the approval form, and only those
    assert sorted(by["choices"]["choices"]) == ["abort", "approve"], by["choices"]

    assert_approved_and_completed(pg_stack, lab, frid, NOTE, approved_at=by["dialog"]["t"])
    for name in ("1-run-form.png", "2-resume-dialog.png", "3-resume-dialog-approved.png", "4-run-completed.png"):
        png = artifacts / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    print(f"browser test: {secs:.0f} s from the run form to Completed; screenshots in {artifacts}")


@pytest.mark.timeout(1200)
def test_the_minimal_downtime_deployment_paused_and_resumed_through_the_api_on_postgresql(api_run, postgres):
    api_run.thread.join(1000)
    assert not api_run.thread.is_alive() and api_run.error is None, (api_run.error, api_run.stack.logs())
    # the parameters given through the API are the run's
    params = api_run.paused.parameters
    assert params["inventory"] == api_run.inventory, params
    assert {k: params["options"][k] for k in OPTIONS} == OPTIONS, params
    # the server keeps its runs in PostgreSQL: the paused run was a row of its flow_run table
    assert api_run.row_while_paused == "PAUSED Paused", api_run.row_while_paused
    assert api_run.resumed.status.value == "ACCEPT", api_run.resumed
    assert_approved_and_completed(api_run.stack, api_run.lab, api_run.frid, API_NOTE, api_run.approved_at)
    assert _psql(postgres, f"select state_type from flow_run where id = '{api_run.frid}'") == "COMPLETED"
    print(f"minimal-downtime on the PostgreSQL-backed server: {time.monotonic() - api_run.t0:.0f} s from the "
          f"API trigger to Completed (beside the browser test's run)")
