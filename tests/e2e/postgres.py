"""A throwaway PostgreSQL server for the tests that run Prefect on PostgreSQL.

Debian's ``postgresql`` server binaries (installed by ``scripts/bootstrap.sh``), a cluster made
by ``initdb`` in a temporary directory, and ``postgres`` started directly (not through
``pg_ctlcluster``: the test holds its PID and stops it by that PID, even after a failure).
It listens on 127.0.0.1 on a free port and on a socket in its own directory, with ``trust``
authentication for local connections only, and without fsync (a test database is thrown away).

As root (CI), the cluster belongs to the ``postgres`` user, since PostgreSQL refuses to run as
root; as anyone else it belongs to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.e2e.stack import _free_port


def server_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` that has ``initdb`` and ``postgres``."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")
             if Path(p).with_name("initdb").exists()]
    return max(found, key=lambda p: int(p.parent.name)) if found else None


class PostgresCluster:
    """``initdb`` + ``postgres`` in a temporary directory; ``url(db)`` is an asyncpg URL."""

    def __init__(self):
        self.bin = server_bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries not found: run scripts/bootstrap.sh "
                               "(apt-get install postgresql)")
        self.dir = Path(tempfile.mkdtemp(prefix="gm-postgres-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.user = "postgres"  # the superuser initdb creates (-U)
        self._as = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    def _demote(self) -> dict:
        """Popen arguments that run a command as the ``postgres`` user when we are root."""
        if self._as is None:
            return {}
        return {"user": self._as.pw_uid, "group": self._as.pw_gid, "extra_groups": []}

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        res = subprocess.run([str(self.bin / args[0]), *args[1:]], check=False, capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.dir, **self._demote())
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def start(self, timeout: float = 60) -> PostgresCluster:
        """initdb, start the server and wait until it accepts connections."""
        if self._as is not None:
            os.chown(self.dir, self._as.pw_uid, self._as.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8",
                  "--no-instructions", "--locale=C")
        with open(self.dir / "postgres.log", "wb") as log:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.dir),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd=self.dir, **self._demote())
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log()}")
            ready = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port),
                                    "-U", self.user], check=False, capture_output=True, stdin=subprocess.DEVNULL)
            if ready.returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready in {timeout:.0f} s: {self.log()}")
            time.sleep(0.3)

    def create_database(self, name: str) -> str:
        """``createdb name``; returns its ``postgresql+asyncpg://`` URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return self.url(name)

    def url(self, db: str) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{db}"

    def log(self) -> str:
        p = self.dir / "postgres.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def stop(self) -> None:
        """Stop the server by PID (SIGINT: fast shutdown, then SIGKILL) and remove its files."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGINT)  # the postmaster stops its backends itself
                self.proc.wait(20)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
