"""The ledger as a person reads it in the Prefect UI: one short row per node.

The ledger table artifact has the few columns that answer "where is each node, and did it go
well": node, zone, phase, step, status, attempts, last change. Versions, backup paths and
digests, every step's history and every command stay in the ledger (``ledger.json``) and the
command journal (``commands.jsonl``); the CLI's ``status`` and the report show them.
"""

from __future__ import annotations

import time

from .ledger_model import LedgerDoc

COLUMNS = ("node", "zone", "phase", "step", "status", "attempts", "last change")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def status_rows(doc: LedgerDoc) -> list[dict[str, str]]:
    """One row per node, about its latest step (the one that changed last), in node order.

    ``attempts`` counts the runs of that step (a retried step shows 2+); a node no step has
    touched yet shows empty cells.
    """
    rows = []
    for name, rec in sorted(doc.nodes.items()):
        row = dict.fromkeys(COLUMNS, "")
        row.update(node=name, zone=rec.zone or "")
        if rec.steps:
            key, st = max(rec.steps.items(), key=lambda kv: kv[1].when)
            phase, _, step = key.partition(":")
            row.update(phase=phase, step=step, status=st.status, attempts=str(max(1, len(st.attempts))),
                       **{"last change": _when(st.when)})
        rows.append(row)
    return rows
