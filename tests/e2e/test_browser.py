"""The Prefect UI in a real browser: Debian's headless Chromium driven by Node's
``playwright-core`` (``tests/e2e/browser/run_and_approve.js``; no browser download), against the
session's real server with its deployments and worker (``pg_stack``, shared with the PostgreSQL
test).

A person fills the minimal-downtime deployment's run form, submits it, opens the run, waits for
it to pause, clicks Resume, reads the plan in the dialog, chooses "approve" with a note and sees
the run continue to Completed. The screenshots (the form, the dialog, the completed run) are
kept in ``test-artifacts/browser/`` under the repository (``GARAGE_MIGRATE_ARTIFACTS`` moves
it); the test prints the path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.realserver import (
    OPTIONS,
    TARGET,
    assert_approved_and_completed,
    lab_spec,
    ledger_of,
)
from tests.e2e.stack import ROOT

BROWSER_DIR = ROOT / "tests" / "e2e" / "browser"
CHROMIUM = "/usr/bin/chromium"
NOTE = "approved in the browser"


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


@pytest.mark.timeout(1200)
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
