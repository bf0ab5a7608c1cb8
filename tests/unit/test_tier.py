"""The unit tier imports neither Prefect nor the lab (style note 13): checked by importing it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent
ROOT = UNIT.parent.parent
FORBIDDEN = ("prefect", "garage_lab", "flows", "tasks")

PROBE = """
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2].rsplit('/', 1)[0])  # as pytest's prepend import mode does
for path in sys.argv[2:]:
    name = "unit_probe_" + path.rsplit("/", 1)[-1][:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(mod)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_unit_tests_import_neither_prefect_nor_the_lab():
    files = sorted(str(p) for p in UNIT.glob("test_*.py"))
    res = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), *files], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = set(json.loads(res.stdout.splitlines()[-1]))
    assert not loaded & set(FORBIDDEN), sorted(loaded & set(FORBIDDEN))
