"""The DB lock probe reads ``/proc/locks`` and never takes sled's lock (source audit, "Lock probe")."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from garage_migrate import commands as C
from garage_migrate.actions import NodeSpec, Probes
from garage_migrate.commands import NodeContext
from garage_migrate.probes import lock_holders


def _file_id(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_a_real_flock_is_found_in_the_real_proc_locks_and_released_is_gone(tmp_path):
    db = tmp_path / "db"
    db.write_bytes(b"")
    with open(db, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what sled does on db/db
        assert lock_holders(Path("/proc/locks").read_text(), _file_id(db)) == (os.getpid(),)
        fcntl.flock(f, fcntl.LOCK_UN)
    assert lock_holders(Path("/proc/locks").read_text(), _file_id(db)) == ()


def test_another_file_s_lock_and_waiters_are_not_holders(tmp_path):
    # /proc/locks as fs/locks.c prints it: major and minor in hex, the inode in decimal
    dev = os.makedev(0x103, 0x2a)
    text = ("1: FLOCK  ADVISORY  WRITE 4242 103:2a:131090 0 EOF\n"
            "1: -> FLOCK  ADVISORY  WRITE 4343 103:2a:131090 0 EOF\n"
            "2: POSIX  ADVISORY  READ 77 103:2a:99 0 EOF\n"
            "3: FLOCK  ADVISORY  WRITE 88 fd:00:131090 0 EOF\n"
            "garbage that is not a lock line\n")
    assert lock_holders(text, f"{dev}:131090") == (4242,)
    assert lock_holders(text, f"{dev}:99") == (77,)
    assert lock_holders(text, f"{dev}:5") == ()
    with pytest.raises(ValueError):
        lock_holders(text, "not an id")


def test_the_probe_is_read_only_by_construction():
    n = NodeSpec(name="g1", ctx=NodeContext(name="g1", sudo=True), metadata_dir="/var/lib/garage/meta",
                 stop_signal="SIGINT", staged_path="/usr/local/bin/garage-v0.8.7")
    p = Probes.of(n)
    assert p.lock_file.argv == ("stat", "-c", "%d:%i", "/var/lib/garage/meta/db/db") and p.lock_file.sudo
    assert p.locks.argv == ("cat", "/proc/locks")
    assert all(c.kind == "observe" for c in p.all)
    assert "flock" not in C.FIXED_EXECUTABLES
