"""Bring a lab cluster up and down: :class:`Lab`, the one object tests, the demo and the CLI hold.

A lab is a directory (built by :mod:`.build`), its processes (started and stopped by
:mod:`.processes`: node daemons, one real sshd per 16 nodes, one real Prometheus), its ground
truth (read by :mod:`.truth`) and its faults and knobs (:mod:`.faults`). :class:`Lab` is the
thin handle over them: it knows the lab's facts from ``<dir>/lab.json`` and delegates.

``from garage_lab.harness import Lab, LabSpec, LabError, PORT_S3, parse_size`` keeps working
for callers; the spec, ports and subnet allocator live in :mod:`.spec`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import build, faults, processes, truth
from .garage.personality import PERSONALITIES
from .garage.units import parse_size
from .spec import PORT_ADMIN, PORT_RPC, PORT_S3, PORT_WEB, SSHD, SUBNETS, LabError, LabSpec

__all__ = ["Lab", "LabError", "LabSpec", "PORT_ADMIN", "PORT_RPC", "PORT_S3", "PORT_WEB", "SUBNETS", "parse_size"]


class Lab:
    """A lab cluster rooted at ``dir``; its facts live in ``dir/lab.json``."""

    def __init__(self, dir: str | Path):
        self.dir = Path(dir).resolve()
        try:
            self.info = json.loads((self.dir / "lab.json").read_text())
        except (OSError, ValueError) as exc:
            raise LabError(f"{self.dir} is not a lab directory ({exc})") from None
        self.spec = LabSpec(**self.info["spec"])

    # ------------------------------------------------------------------ facts
    @property
    def nodes(self) -> list[dict]:
        """Node records: name, addr, zone, id64."""
        return self.info["nodes"]

    def node(self, name: str) -> dict:
        """The record of node ``name``."""
        for n in self.nodes:
            if n["name"] == name:
                return n
        raise LabError(f"no node {name!r} in this lab")

    def node_dir(self, name: str) -> Path:
        """``<lab>/nodes/<name>``."""
        return self.dir / "nodes" / name

    @property
    def prometheus_url(self) -> str:
        """Base URL of the lab's Prometheus."""
        return self.info["prometheus_url"]

    def launcher(self, version: str) -> Path:
        """The lab "binary" of a Garage version."""
        return self.dir / "dist" / f"garage-v{version.removeprefix('v')}"

    @property
    def s3_credentials(self) -> dict:
        """The data set's access key: ``region``, ``access_key_id``, ``secret_access_key``."""
        return self.info["s3"]

    def s3_endpoint(self, name: str | None = None) -> str:
        """``http://<addr>:3900`` of node ``name`` (default: the first node)."""
        node = self.node(name) if name else self.nodes[0]
        return f"http://{node['addr']}:{PORT_S3}"

    def save(self) -> None:
        """Write ``lab.json`` atomically (PIDs and timings change while the lab runs)."""
        tmp = self.dir / "lab.json.tmp"
        tmp.write_text(json.dumps(self.info, indent=1))
        os.replace(tmp, self.dir / "lab.json")

    # ------------------------------------------------------------------ up and down
    @classmethod
    def up(cls, spec: LabSpec, wait: bool = True, timeout: float = 60.0, wait_prometheus: bool = True) -> "Lab":
        """Create and start a lab (``spec.netns``: each node in its own network namespace, see
        :mod:`.netns`); with ``wait``, return once it is healthy (and, with
        ``wait_prometheus``, once Prometheus has scraped every node: ~6 s on a fresh TSDB).

        Raises:
            LabError: missing system tools, a busy address, or a lab that did not get healthy.
        """
        import shutil

        if spec.version not in PERSONALITIES:
            raise LabError(f"unknown version {spec.version}; the lab simulates {', '.join(PERSONALITIES)}")
        for tool in (SSHD, shutil.which("prometheus") or "prometheus", shutil.which("ssh-keygen") or "ssh-keygen"):
            if not Path(tool).exists():
                raise LabError(f"{tool} is missing: run `make deps` (apt-get install openssh-server prometheus)")
        if spec.netns:
            from . import netns

            if missing := netns.available():
                raise LabError(missing)
        t0 = time.monotonic()
        lab = build.create(cls, spec)
        processes.start(lab, wait, timeout, wait_prometheus, t0)
        lab.info["up_seconds"] = round(time.monotonic() - t0, 2)
        lab.save()
        return lab

    def wait_ready(self, timeout: float = 60.0, prometheus: bool = True) -> None:
        """Wait until every node sees its same-version peers and Prometheus scrapes all nodes.

        Raises:
            LabError: not ready before ``timeout`` (the message says what is missing).
        """
        processes.wait_ready(self, timeout, prometheus)

    def sshd_ready(self) -> bool:
        """Whether sshd accepts connections on every non-refused node address."""
        return processes.sshd_ready(self)

    def prometheus_up(self) -> int:
        """How many garage targets Prometheus reports as up (-1 if it does not answer)."""
        return processes.prometheus_up(self)

    def write_sshd_config(self) -> None:
        """(Re)write the sshd configs; nodes with an ``ssh-refuse`` fault get no listener."""
        build.write_sshd_config(self)

    def reload_sshd(self) -> None:
        """Apply changed sshd configs (SIGHUP re-execs sshd; open sessions stay)."""
        processes.reload_sshd(self)

    def down(self) -> list[int]:
        """Kill every process of this lab; return the PIDs that were killed."""
        return processes.down(self)

    # ------------------------------------------------------------------ ground truth
    def daemon_info(self, name: str) -> dict | None:
        """The running daemon's self-description (pid, version), or None."""
        return truth.daemon_info(self, name)

    def status(self) -> dict:
        """Per node: running, pid, version, peers seen; plus sshd and Prometheus state."""
        return truth.status(self)

    def lock_holder(self, name: str) -> int | None:
        """PID holding the flock on the node's ``meta/db/db`` (from /proc/locks), or None."""
        return truth.lock_holder(self, name)

    def meta_checksum(self, name: str) -> str:
        """SHA-256 over the relative paths and contents of every file of the metadata dir."""
        return truth.meta_checksum(self, name)

    def inspect(self, checksums: bool = True) -> dict:
        """Ground truth for tests (the orchestrator must never read this): see :func:`.truth.inspect`."""
        return truth.inspect(self, checksums)

    def downtime_windows(self) -> dict[str, list[tuple[float, float]]]:
        """Per node, the intervals between a stop (or kill) and the next start (service events)."""
        return truth.downtime_windows(self)

    # ------------------------------------------------------------------ faults and knobs
    def fault(self, name: str, kind: str, count: int | None = None, **params) -> None:
        """Inject a fault on node ``name`` (see ``garage_lab.garage.knobs.FAULT_KINDS``)."""
        faults.fault(self, name, kind, count, **params)

    def zone_fault(self, zone: str, kind: str, count: int | None = None, **params) -> list[str]:
        """Inject a fault on every node of ``zone`` (e.g. ``net-partition`` of a whole zone)."""
        return faults.zone_fault(self, zone, kind, count, **params)

    def netns_rules(self, name: str) -> str:
        """A netns lab: node ``name``'s nftables ruleset (what its network faults made)."""
        from . import netns

        return netns.rules(self, name)

    def clear_faults(self, name: str) -> None:
        """Remove every fault from node ``name``."""
        faults.clear_faults(self, name)

    def set_knobs(self, name: str, **knobs) -> None:
        """Change a node's knobs (a running daemon picks them up within a second)."""
        faults.set_knobs(self, name, **knobs)
