"""The daemon's log lines and its metric instruments.

Log lines go to stderr in the version's format (checklist 16; :func:`.render.log_line`).
Counters and histograms are recorded here by every component; gauges are computed at scrape
time by the admin API (:meth:`.admin_api.AdminApi.exposition`).
"""

from __future__ import annotations

import sys
import time

from . import render
from .personality import Personality


def log_once(p: Personality, level: str, target: str, msg: str, state: dict) -> None:
    """One log line on stderr from a short-lived command (the CLI, ``offline-repair``)."""
    sys.stderr.write(render.log_line(p, level, target, msg, time.time(), state).rstrip("\n") + "\n")


class Logger:
    """Daemon log lines on stderr in the version's format (checklist 16)."""

    def __init__(self, p: Personality):
        self.p = p
        self.state: dict = {}
        # 0.8.0 built tracing with `log-always`, which probably prints every line twice [inf]
        self.repeat = 2 if p.version == "0.8.0" else 1

    def __call__(self, level: str, target: str, msg: str) -> None:
        line = render.log_line(self.p, level, target, msg, time.time(), self.state)
        for _ in range(self.repeat):
            sys.stderr.write(line if line.endswith("\n") else line + "\n")
        sys.stderr.flush()


class Metrics:
    """Counters and histograms; gauges are computed at scrape time."""

    def __init__(self):
        self.counters: dict[tuple[str, tuple], float] = {}
        self.hists: dict[tuple[str, tuple], list[float]] = {}

    def inc(self, name: str, labels: dict, by: float = 1.0) -> None:
        """Add ``by`` to the counter ``name`` with ``labels``."""
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0.0) + by

    def observe(self, name: str, labels: dict, value: float) -> None:
        """Record one observation of the histogram ``name``."""
        self.hists.setdefault((name, tuple(sorted(labels.items()))), []).append(value)
