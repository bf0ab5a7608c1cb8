"""Dependencies point one way (issue 9 §7), checked on the source (no import needed):

- the engine (``garage_migrate/``) imports neither ``prefect`` nor the Prefect layer
  (``flows``, ``tasks``), nor the lab, nor the application layer; the one exception is the CLI's
  ``run`` command, which imports the flows *lazily*, inside its functions (listed below), so
  that importing the engine never loads Prefect;
- the Prefect layer (``flows/``, ``tasks/``) imports the engine, never the lab or ``apps``;
- the lab (``garage_lab/``) imports nothing of the orchestrator (the demo lives in ``apps``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
ORCHESTRATOR = {"garage_migrate", "flows", "tasks", "prefect", "apps"}
PREFECT_LAYER = {"prefect", "flows", "tasks"}

# (file, function) pairs of the engine allowed to import the Prefect layer lazily: the CLI's
# `run` (a temporary Prefect server, the prompt that answers pauses, draining Prefect's workers)
LAZY_RUN = {
    ("garage_migrate/cli.py", "_answer_pauses"),
    ("garage_migrate/cli.py", "_run"),
    ("garage_migrate/cli.py", "_drain_prefect"),
}


def _imports(path: Path):
    """Yield ``(top-level package, enclosing function or None)`` of every absolute import."""
    tree = ast.parse(path.read_text(), str(path))

    def walk(node, func):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and func is None else func
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield a.name.split(".")[0], func
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child.module.split(".")[0], func
            yield from walk(child, f)
    yield from walk(tree, None)


def _violations(package: str, forbidden: set[str], allowed: set[tuple[str, str]] = frozenset()) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for top, func in _imports(path):
            if top in forbidden and (rel, func) not in allowed:
                out.append(f"{rel}: imports {top}" + (f" in {func}()" if func else " at module level"))
    return out


def test_the_engine_imports_no_prefect_flows_tasks_lab_or_apps():
    assert _violations("garage_migrate", PREFECT_LAYER | {"garage_lab", "apps"}, LAZY_RUN) == []


def test_the_lazy_run_exception_is_really_used_and_really_lazy():
    used = {(str(p.relative_to(ROOT)), f) for p in [ROOT / "garage_migrate/cli.py"]
            for top, f in _imports(p) if top in PREFECT_LAYER}
    assert used == LAZY_RUN  # no stale entry, and never a module-level import


def test_the_prefect_layer_imports_neither_the_lab_nor_apps():
    assert _violations("flows", {"garage_lab", "apps"}) == []
    assert _violations("tasks", {"garage_lab", "apps"}) == []


def test_the_lab_imports_nothing_of_the_orchestrator():
    assert _violations("garage_lab", ORCHESTRATOR) == []


PROBE = """
import importlib, json, pkgutil, sys
sys.path.insert(0, sys.argv[1])
import garage_migrate
for m in pkgutil.walk_packages(garage_migrate.__path__, "garage_migrate."):
    importlib.import_module(m.name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_importing_every_engine_module_loads_no_prefect():
    res = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = set(json.loads(res.stdout.splitlines()[-1]))
    assert not loaded & (PREFECT_LAYER | {"garage_lab", "apps"}), sorted(loaded & PREFECT_LAYER)
