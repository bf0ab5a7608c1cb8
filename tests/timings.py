"""The suite's file order: longest files first, so that ``-n 3 --dist loadfile`` ends on short ones.

xdist's ``loadfile`` hands whole files to the workers in collection order, and by default
(``--loadscope-reorder``) sorts them by their number of tests first, which puts the few-test,
many-minute e2e files (a crash-resume chain, the netns fault rows) last: one worker then runs a
ten-minute file alone while the others are idle. The Makefile runs with
``--no-loadscope-reorder`` and this module orders the files by their measured time instead
(longest processing time first, the classic bound for this kind of scheduling).

The times come from ``tests/timings.json``, written by a run with ``GM_TIMINGS_OUT=<path>``
(each file's setup + call + teardown, summed over its tests). They only order the files: a
stale or missing entry changes when a file runs, never whether or how. A file without an entry
gets its tier's default.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMINGS = HERE / "timings.json"
#: seconds for a file the timings do not know yet (a new file), by tier
DEFAULTS = {"e2e": 120.0, "lab": 30.0, "unit": 2.0}


def _rel(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def _default(rel: str) -> float:
    parts = Path(rel).parts
    tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else "unit"
    return DEFAULTS.get(tier, DEFAULTS["unit"])


def load(path: Path = TIMINGS) -> dict[str, float]:
    """The recorded seconds per test file (empty when there is no record)."""
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text()).get("files", {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def longest_first(items: list, root: Path, known: dict[str, float] | None = None) -> None:
    """Sort ``items`` in place by their file's time, longest first; a file's tests keep their
    order and stay together (the sort is stable and its key is the file's)."""
    known = load() if known is None else known
    rels = {id(item): _rel(str(item.fspath), root) for item in items}
    weight = {rel: known.get(rel, _default(rel)) for rel in set(rels.values())}
    items.sort(key=lambda it: (-weight[rels[id(it)]], rels[id(it)]))


class Recorder:
    """Sums each file's test phases from the run's reports, and writes them when asked."""

    def __init__(self):
        self.files: dict[str, float] = defaultdict(float)

    def add(self, report) -> None:
        """Count one report (a test's setup, call or teardown)."""
        self.files[report.nodeid.split("::", 1)[0]] += float(getattr(report, "duration", 0.0) or 0.0)

    def write(self, out: str | None) -> None:
        """Write ``{"files": {path: seconds}}`` to ``out`` (nothing when ``out`` is empty)."""
        if not out or not self.files:
            return
        doc = {"note": "seconds per test file (setup + call + teardown), from one full run; "
                       "used only to order the files (tests/timings.py)",
               "files": {k: round(v, 1) for k, v in sorted(self.files.items(), key=lambda kv: -kv[1])}}
        Path(out).write_text(json.dumps(doc, indent=1) + "\n")
        os.chmod(out, 0o644)


RECORDER = Recorder()
