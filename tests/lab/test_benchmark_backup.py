"""The backup benchmark runs once at its smallest size and reports every figure (issue 13: a
benchmark that CI runs cannot rot). Nothing here looks at a timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_the_backup_benchmark_completes_at_its_smallest_size_and_reports_its_figures(tmp_path):
    res = subprocess.run([sys.executable, "-m", "benchmarks.backup", "--smallest", "--dir", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         timeout=880)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    for figure in ("throughput ratio ours/guide:", "controller peak RSS, node-side:", "zone of 8: controller CPU",
                   "machine:"):
        assert figure in out, out
    result = json.loads(out.strip().splitlines()[-1].removeprefix("RESULT "))
    one, zone = result["one_node"], result["zone"]
    assert one["tar_mib"] > 64 and zone["nodes"] == 8 and zone["tar_mib"] > 64
    for k in ("ratio", "peak_rss_mib", "ours_mib_s", "guide_mib_s", "controller_side_mib_s"):
        assert one[k] > 0, k
    for k in ("node_cpu_s_per_gib", "controller_cpu_s_per_gib", "cpu_ratio", "peak_rss_mib"):
        assert zone[k] > 0, k
    # it really compared the two modes: the archives were equal in content, so equally compressed
    assert one["compression_ours"] == pytest.approx(one["compression_guide"], rel=0.05)
    assert not list(tmp_path.iterdir()) or all(p.name not in ("lab1", "labz") for p in tmp_path.iterdir())
