"""Faults and knobs of a running lab: what ``garage-lab fault`` changes.

Both live in per-node files that the daemons, the CLI and the shims re-read when they change
(:mod:`garage_lab.garage.knobs`); an ``ssh-refuse`` fault also rewrites and reloads sshd.

On a netns lab (:mod:`garage_lab.netns`) four more act on the network, and are applied at
once: ``net-delay`` (``ms``), ``net-loss`` (``pct``) and ``net-partition`` (``side``:
``controller``, ``peers`` or ``both``) become nftables rules and the relay's delay in the
node's namespace; ``ssh-drop`` (``match``, ``seconds``; one use unless ``count`` says more) is
watched for by the node's relay (:mod:`garage_lab.relay`). Clearing a node's faults lifts them.
"""

from __future__ import annotations

import json
import os

from .garage.knobs import FAULT_KINDS, Faults, save_faults
from .spec import LabError

NET_KINDS = ("net-delay", "net-loss", "net-partition", "ssh-drop")


def fault(lab, name: str, kind: str, count: int | None = None, **params) -> None:
    """Inject a fault on node ``name`` (see ``garage_lab.garage.knobs.FAULT_KINDS``)."""
    if kind not in FAULT_KINDS:
        raise LabError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
    if kind in NET_KINDS and not lab.spec.netns:
        raise LabError(f"{kind} needs a real network under the lab: bring it up with `garage-lab up --netns`")
    if kind == "ssh-drop" and not params.get("match"):
        raise LabError("ssh-drop needs `match`: text of the command whose SSH session to kill")
    if kind == "ssh-drop" and count is None:
        count = 1  # "the next matching command"
    path = lab.node_dir(name) / "faults.json"
    faults = Faults.load(path)
    entry = {"kind": kind, **{k: v for k, v in params.items() if v is not None}}
    if count is not None:
        entry["count"] = count
    faults.entries.append(entry)
    save_faults(path, faults)
    if kind == "ssh-refuse":
        lab.reload_sshd()
    if kind in ("net-delay", "net-loss", "net-partition"):
        from . import netns

        try:
            netns.apply(lab, name)
        except LabError:
            faults.entries.remove(entry)  # a fault that could not be applied is not recorded as on
            save_faults(path, faults)
            netns.apply(lab, name)
            raise


def zone_fault(lab, zone: str, kind: str, count: int | None = None, **params) -> list[str]:
    """Inject a fault on every node of ``zone``; return their names."""
    names = [n["name"] for n in lab.nodes if n["zone"] == zone]
    if not names:
        raise LabError(f"no zone {zone!r} in this lab (zones: {', '.join(sorted({n['zone'] for n in lab.nodes}))})")
    for name in names:
        fault(lab, name, kind, count, **params)
    return names


def clear_faults(lab, name: str) -> None:
    """Remove every fault from node ``name``."""
    path = lab.node_dir(name) / "faults.json"
    had = Faults.load(path)
    save_faults(path, Faults())
    if had.find("ssh-refuse") is not None:
        lab.reload_sshd()
    if lab.spec.netns:
        from . import netns

        netns.apply(lab, name)


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
