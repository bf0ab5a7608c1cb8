"""The sync-gate benchmark runs at its smallest size and reports its figures (never timings)."""

from __future__ import annotations

import re

import pytest

from benchmarks import sync_gate


@pytest.mark.timeout(600)
def test_sync_gate_benchmark_reports_latency_and_cli_rate_for_both_modes(capsys):
    assert sync_gate.main(["--sizes", "3"]) == 0
    out = capsys.readouterr().out
    assert "target latency 4 s" in out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+3\s+(every look|paced)", line)]
    assert len(rows) == 2, out
    for r in rows:
        assert "True" in r, out  # the gate passed
        float(r[-1])  # CLI commands per second
        assert r[-5] != "n/a" and float(r[-5]) >= 0, out  # latency from the ground truth
