"""The Prefect server on PostgreSQL, as a team runs it beyond one laptop (README, "Prefect on
PostgreSQL"): Debian's PostgreSQL server, ``prefect server start`` with
``PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://...`` (older name:
``PREFECT_API_DATABASE_CONNECTION_URL``), a process worker and
``prefect deploy --all`` (the session's ``pg_stack``). The minimal-downtime deployment is
triggered through the API with parameters, pauses for its approval, is resumed through the API
with a RunInput and completes on a 3x1 lab.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.e2e.realserver import (
    MD,
    OPTIONS,
    assert_approved_and_completed,
    lab_spec,
    wait_for_approval,
)

NOTE = "approved through the API (PostgreSQL)"


def _psql(postgres, sql: str) -> str:
    res = subprocess.run([str(postgres.bin / "psql"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U",
                          postgres.user, "-d", "prefect", "-At", "-c", sql],
                         check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.timeout(900)
def test_minimal_downtime_deployment_paused_and_resumed_through_the_api_on_postgresql(pg_stack, postgres,
                                                                                       make_lab):
    lab = make_lab(**lab_spec())
    inventory = str(lab.dir / "inventory.yaml")
    t0 = time.monotonic()
    frid = pg_stack.run_deployment(MD, inventory=inventory, options=OPTIONS, auto_approve=False, pause_timeout=900)
    fr = wait_for_approval(pg_stack, frid)
    # the server keeps its runs in PostgreSQL: the paused run is a row of its flow_run table
    assert _psql(postgres, f"select state_type || ' ' || state_name from flow_run where id = '{frid}'") \
        == "PAUSED Paused"
    assert fr.parameters["inventory"] == inventory and fr.parameters["options"]["watch_s"] == OPTIONS["watch_s"]
    approved_at = time.time()
    res = pg_stack.resume(frid, {"action": "approve", "note": NOTE})
    assert res.status.value == "ACCEPT", res
    assert_approved_and_completed(pg_stack, lab, frid, NOTE, approved_at)
    assert _psql(postgres, f"select state_type from flow_run where id = '{frid}'") == "COMPLETED"
    print(f"minimal-downtime on the PostgreSQL-backed server: {time.monotonic() - t0:.0f} s from the API "
          f"trigger to Completed")
