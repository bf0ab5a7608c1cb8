"""Faults and knobs of a running lab: what ``garage-lab fault`` changes.

Both live in per-node files that the daemons, the CLI and the shims re-read when they change
(:mod:`garage_lab.garage.knobs`); an ``ssh-refuse`` fault also rewrites and reloads sshd.
"""

from __future__ import annotations

import json
import os

from .garage.knobs import FAULT_KINDS, Faults, save_faults
from .spec import LabError


def fault(lab, name: str, kind: str, count: int | None = None, **params) -> None:
    """Inject a fault on node ``name`` (see ``garage_lab.garage.knobs.FAULT_KINDS``)."""
    if kind not in FAULT_KINDS:
        raise LabError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
    path = lab.node_dir(name) / "faults.json"
    faults = Faults.load(path)
    entry = {"kind": kind, **{k: v for k, v in params.items() if v is not None}}
    if count is not None:
        entry["count"] = count
    faults.entries.append(entry)
    save_faults(path, faults)
    if kind == "ssh-refuse":
        lab.reload_sshd()


def clear_faults(lab, name: str) -> None:
    """Remove every fault from node ``name``."""
    path = lab.node_dir(name) / "faults.json"
    had_ssh = Faults.load(path).find("ssh-refuse") is not None
    save_faults(path, Faults())
    if had_ssh:
        lab.reload_sshd()


def set_knobs(lab, name: str, **knobs) -> None:
    """Change a node's knobs (a running daemon picks them up within a second)."""
    path = lab.node_dir(name) / "lab.json"
    try:
        cur = json.loads(path.read_text())
    except (OSError, ValueError):
        cur = {}
    cur.update(knobs)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cur))
    os.replace(tmp, path)
