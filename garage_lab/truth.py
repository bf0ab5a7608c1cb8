"""Ground truth of a lab, for tests and the demo (the orchestrator must never read this).

Read straight from the lab's files and processes: which daemon runs which version, who holds
each sled lock (``/proc/locks``), the persisted trees, metadata checksums, the service events
(downtime windows) and the writes acknowledged to the traffic client.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from pathlib import Path

from . import processes, service
from .garage.store import INSERT_QUEUE_TREE, Store
from .spec import PORT_RPC


def rpc_status(lab, node: dict, version: str) -> dict | None:
    import asyncio

    from .garage import rpc
    from .garage.personality import get

    p = get(version)

    async def go():
        conn = await rpc.connect(node["addr"], PORT_RPC, {"tag": p.rpc_tag, "netkey": rpc.network_key(lab.info["rpc_secret"]), "node": "cli"}, timeout=1.0)
        try:
            return await conn.call("status", timeout=2.0)
        finally:
            conn.close()
    try:
        return asyncio.run(go())
    except Exception:  # noqa: BLE001 - any failure means "does not answer"
        return None


def daemon_info(lab, name: str) -> dict | None:
    """The running daemon's self-description (pid, version), or None."""
    nd = lab.node_dir(name)
    pid = service.main_pid(nd)
    if not pid:
        return None
    try:
        d = json.loads((nd / "run" / "daemon.json").read_text())
    except (OSError, ValueError):
        return {"pid": pid, "version": None}
    return d if d.get("pid") == pid else {"pid": pid, "version": None}


def status(lab) -> dict:
    """Per node: running, pid, version, peers seen; plus sshd and Prometheus state."""
    out = []
    for n in lab.nodes:
        d = daemon_info(lab, n["name"])
        row = {"name": n["name"], "addr": n["addr"], "zone": n["zone"], "running": d is not None,
               "pid": d["pid"] if d else None, "version": d.get("version") if d else None,
               "binary": os.path.basename(os.readlink(lab.node_dir(n["name"]) / "usr/local/bin/garage"))
               if (lab.node_dir(n["name"]) / "usr/local/bin/garage").is_symlink() else "file",
               "peers_up": None}
        if d and d.get("version"):
            st = rpc_status(lab, n, d["version"])
            if st is not None:
                row["peers_up"] = sum(1 for k, v in st["known"].items() if v["is_up"] and k != st["node"])
        out.append(row)
    pids = lab.info["pids"]
    return {"dir": str(lab.dir), "nodes": out,
            "sshd": bool(processes.sshd_pids(lab)) and all(service.proc_alive(p) for p in processes.sshd_pids(lab)),
            "prometheus": bool(pids.get("prometheus") and service.proc_alive(pids["prometheus"])),
            "prometheus_url": lab.prometheus_url}


def lock_holder(lab, name: str) -> int | None:
    """PID holding the flock on the node's ``meta/db/db`` (from /proc/locks), or None."""
    path = lab.node_dir(name) / "meta" / "db" / "db"
    try:
        ino = os.stat(path).st_ino
    except OSError:
        return None
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
        if len(parts) >= 6 and parts[1] == "FLOCK":
            try:
                if int(parts[5].split(":")[2]) == ino:
                    return int(parts[4])
            except (IndexError, ValueError):
                continue
    return None


def meta_checksum(lab, name: str) -> str:
    """SHA-256 over the relative paths and contents of every file of the metadata dir."""
    meta = lab.node_dir(name) / "meta"
    h = hashlib.sha256()
    for path in sorted(p for p in meta.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(meta)).encode() + b"\0")
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def inspect(lab, checksums: bool = True) -> dict:
    """Ground truth for tests (the orchestrator must never read this).

    Per node: running version and pid, lock holder, the binary the service would start,
    object counts and counter values from the persisted trees, and a metadata checksum;
    plus the acknowledged writes recorded by ``garage-lab traffic``.
    """
    nodes = {}
    for n in lab.nodes:
        nd = lab.node_dir(n["name"])
        d = daemon_info(lab, n["name"])
        store = Store(nd / "meta")
        store.load()
        objects = {b: sum(1 for e in objs.values() if not e.get("deleted")) for b, objs in store.tree("object:table").items()}
        counters = {b: {k: v for k, v in c.items()} for b, c in store.trees.get("bucket_object_counter:table", {}).items()}
        binary = nd / "usr/local/bin/garage"
        nodes[n["name"]] = {
            "zone": n["zone"], "id64": n["id64"],
            "running_version": d.get("version") if d else None, "pid": d["pid"] if d else None,
            # the peer discovery the running daemon's config turned on, as its version reads it
            "discovery": d.get("discovery") if d else None,
            "lock_holder": lock_holder(lab, n["name"]),
            "binary_target": os.readlink(binary) if binary.is_symlink() else str(binary),
            "objects": objects,
            "counter_trees": "local_counter_v2:bucket_object_counter" in store.trees,
            "counters": counters,
            "local_counters": store.trees.get("local_counter_v2:bucket_object_counter", {}),
            "insert_queue": len(store.trees.get(INSERT_QUEUE_TREE, {})),
            "merkle_todo": store.tree("merkle_todo"),
            "resync_queue": len(store.tree("block_local_resync_queue")),
            "resync_errors": len(store.tree("block_local_resync_errors")),
            "scrub_info": (nd / "meta" / "scrub_info").exists(),
            "meta_checksum": meta_checksum(lab, n["name"]) if checksums else None,
        }
    acks = []
    ack_file = lab.dir / "traffic" / "acks.jsonl"
    if ack_file.exists():
        acks = [json.loads(line) for line in ack_file.read_text().splitlines() if line.strip()]
    return {"nodes": nodes, "acknowledged_writes": acks}


def downtime_windows(lab) -> dict[str, list[tuple[float, float]]]:
    """Per node, the intervals between a stop (or kill) and the next start, from the
    service events: the ground truth a test uses to prove no two zones were down at once."""
    path = lab.dir / "events.jsonl"
    events = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    out: dict[str, list[tuple[float, float]]] = {n["name"]: [] for n in lab.nodes}
    down_since: dict[str, float] = {}
    for e in sorted(events, key=lambda e: e["t"]):
        if e["event"] in ("stop", "kill") and e.get("signal") not in ("SIGHUP",) and e["node"] not in down_since:
            down_since[e["node"]] = e["t"]
        elif e["event"] == "start" and e["node"] in down_since:
            out[e["node"]].append((down_since.pop(e["node"]), e["t"]))
    for node, since in down_since.items():
        out[node].append((since, float("inf")))
    return out


def service_events(lab) -> list[dict]:
    """Every service event of the lab (``events.jsonl``: start, stop, kill), in time order."""
    path = lab.dir / "events.jsonl"
    events = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    return sorted(events, key=lambda e: e["t"])


#: 0.8's log line written once the daemon listens on every port (its admin API last), with the
#: line's UTC timestamp; 0.7.3 logs without timestamps (it is never the one started on the flip)
_READY_08 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z\s+INFO garage_api::generic_server: Admin API server listening")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ready_times(lab, name: str) -> list[float]:
    """When node ``name``'s 0.8 daemons started answering (epoch seconds, from its log: the
    admin API listening, the last of its listeners), in order: one per 0.8 start."""
    path = lab.node_dir(name) / "log" / "garage.log"
    out = []
    if not path.exists():
        return out
    with open(path, errors="replace") as fh:
        for line in fh:
            if "Admin API server listening" in line and (m := _READY_08.match(_ANSI.sub("", line))):
                out.append(datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.UTC).timestamp())
    return out
