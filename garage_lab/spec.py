"""What a lab is made of: its spec, its conventional ports, and the subnets labs live on.

Every node of a lab listens on its own loopback address ``127.42.C.<n>`` with Garage's
conventional ports (S3 3900, RPC 3901, web 3902, admin 3903); Prometheus listens on
``127.42.C.254``. :data:`SUBNETS` is the one place that picks ``C``: the harness uses it when a
spec leaves ``subnet`` empty, and so do the tests (through ``Lab.up``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SSHD = "/usr/sbin/sshd"
ZONE_LETTERS = "abcdefghijklmnopqrstuvwxyz"
PORT_S3, PORT_RPC, PORT_WEB, PORT_ADMIN = 3900, 3901, 3902, 3903
SSHD_MAX_LISTEN = 16  # OpenSSH's MAX_LISTEN_SOCKS


class LabError(Exception):
    """The lab could not be brought up, inspected or torn down."""


@dataclass
class LabSpec:
    """What ``garage-lab up`` builds."""

    dir: str
    zones: int = 3
    per_zone: int = 2
    version: str = "0.7.3"
    meta_size: int = 0
    subnet: str = ""  # "127.42.C"; empty: the next free one from SUBNETS
    ssh_port: int = 2222
    seed: str = "garage-lab"
    buckets: int = 8
    objects_per_bucket: int = 24
    unsynced: int = 4  # objects missing from one replica, so `repair tables` has work to do
    metrics_token: str | None = None  # None: generate one; "": no token
    admin_token: str | None = None
    prometheus_port: int = 9090
    knobs: dict = field(default_factory=dict)
    replication_mode: str = "3"  # e.g. "3-dangerous": two zones may be down at once
    discovery: tuple[str, ...] = ()  # "consul" / "kubernetes": 0.7-style top-level keys in garage.toml
    no_zstd: tuple[str, ...] = ()  # nodes built without a zstd CLI (a persistent "no-zstd" fault)
    netns: bool = False  # each node in its own network namespace (garage_lab/netns.py)

    sshd_log_level: str = "ERROR"  # VERBOSE logs every connection (tests that prove none was opened)


def _free(addr: str, port: int) -> bool:
    s = socket.socket()
    try:
        s.bind((addr, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class SubnetAllocator:
    """Hands out ``127.42.C`` subnets whose first node address is free, never one twice.

    Each process starts at its own offset (from its PID) and moves on after every pick, so
    the labs of one test run, and those of other runs on the same machine, do not collide even
    before a picked lab has bound its addresses.
    """

    LOW, HIGH = 20, 250
    #: what a live lab holds for its whole life, whatever its nodes do: a node stopped during a
    #: test frees its RPC port, but not the lab's sshd (2222, the default ``ssh_port``) nor its
    #: Prometheus (``.254:9090``); another process must not take the subnet then
    PROBES = ((1, PORT_RPC), (1, 2222), (254, 9090))

    #: a claim is fresh for this long: the time a lab takes to bind its addresses
    CLAIM_S = 120.0

    def __init__(self, start: int | None = None, claims: str | None = None):
        span = self.HIGH - self.LOW
        # parallel test processes have consecutive PIDs: spread their starting points apart
        self._next = (os.getpid() * 97 if start is None else start) % span
        self._claims = claims or os.path.join(tempfile.gettempdir(), "garage-lab-subnets")

    def _claim(self, c: int) -> bool:
        """Claim subnet ``c`` for the lab about to start (an exclusive create, so two processes
        probing at the same moment cannot both take it); a claim older than
        :data:`CLAIM_S` is the past (its lab is bound, or gone) and is taken over."""
        os.makedirs(self._claims, exist_ok=True)
        path = os.path.join(self._claims, str(c))
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.stat(path).st_mtime < self.CLAIM_S:
                return False
            os.unlink(path)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True

    def __iter__(self):
        return self

    def __next__(self) -> str:
        span = self.HIGH - self.LOW
        for _ in range(span):
            c = self.LOW + self._next % span
            self._next += 1
            if all(_free(f"127.42.{c}.{host}", port) for host, port in self.PROBES) and self._claim(c):
                return f"127.42.{c}"
        raise LabError(f"no free 127.42.C.0/24 subnet for a lab (C in {self.LOW}..{self.HIGH - 1})")


SUBNETS = SubnetAllocator()
