"""An empty Prefect database already at the migration head, for a server started on a new file.

On a fresh SQLite file, ``prefect server start`` first runs every one of Prefect's migrations:
measured 20 CPU-s and up to 205 s of wall time on a loaded 2-core machine (many small commits
that wait on the disk), against 11 CPU-s and 19 s for a start on a migrated copy. A terminal
run (``garage-migrate run`` without ``PREFECT_API_URL``) starts such a server every time, and
an operator waits for it before the first step. So the database is migrated once per machine,
user and Prefect version into a template (``prefect server database upgrade``, under a file
lock: parallel commands build it once), and each server gets a copy of it. The copy is what
the migrations would have made, nothing else; the server still checks and applies migrations
at its start, and makes its own defaults then, as on a fresh file.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path


def cache_dir() -> Path:
    """Where the template lives: ``$XDG_CACHE_HOME/garage-migrate`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "garage-migrate"


def migrated_sqlite(path: Path, env: dict[str, str], cache: Path | None = None,
                    prefect: str | None = None, timeout: float = 600.0) -> None:
    """Make ``path`` an empty Prefect database at the current migration head (see the module
    docstring); ``env`` is the server's environment (its settings), ``prefect`` the CLI.

    Raises:
        RuntimeError: the template could not be built (the caller may let the server migrate
            a fresh file itself).
    """
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    prefect = prefect or str(Path(sys.executable).with_name("prefect"))
    template = cache / f"prefect-db-{version('prefect')}-{os.getuid()}.sqlite"
    with open(f"{template}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel commands: one builds, the others wait for it
        if not template.exists():
            building = template.with_name(template.name + ".building")
            for stale in cache.glob(building.name + "*"):  # a build killed half-way
                stale.unlink()
            res = subprocess.run([prefect, "server", "database", "upgrade", "--yes"], capture_output=True,
                                 check=False, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                                 env=dict(env, PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{building}"))
            if res.returncode != 0:
                raise RuntimeError(f"prefect server database upgrade failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
            tmp = template.with_name(template.name + ".tmp")
            sqlite_copy(building, tmp)
            os.replace(tmp, template)  # whole, or not there
            for done in cache.glob(building.name + "*"):
                done.unlink()
        sqlite_copy(template, path)


def sqlite_copy(src: Path, dst: Path) -> None:
    """A consistent copy of SQLite database ``src`` (its WAL included) into the one file ``dst``."""
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()
