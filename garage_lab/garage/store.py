"""A node's metadata directory: the sled-style DB lock and the persisted trees.

Layout under ``metadata_dir`` (ref 6): ``node_key``, ``node_key.pub``, ``cluster_layout``,
``peer_list``, ``db/`` (``conf``, ``db``, ``blobs/``, ``snap.<hex>``) and, from the first 0.8
run, ``scrub_info`` / ``resync_cfg``.

The lab keeps every tree of the node in one JSON snapshot ``db/snap.<generation>``, rewritten
through a temp file and an atomic rename. ``db/db`` is the file sled locks: the daemon (or an
offline repair) takes a non-blocking exclusive ``flock`` on it for its whole life, so a killed
process can never leave a stale lock (ref 6, sled 0.34.7). ``db/blobs/`` holds the padding
that gives the metadata a realistic, compressible size.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
from pathlib import Path

SNAP_PREFIX = "snap."

# Trees every version has (sled tree names are unchanged between 0.7 and 0.8, ref 7).
BASE_TREES = (
    "bucket_v2:table",
    "bucket_alias:table",
    "key:table",
    "object:table",
    "version:table",
    "block_ref:table",
    "block_local_rc",
    "block_local_resync_queue",
    "block_local_resync_errors",
    "merkle_todo",
    "gc_todo",
)
# Created empty by the first 0.8 start (ref 7); 0.7 ignores them.
COUNTER_TREES = (
    "local_counter_v2:bucket_object_counter",
    "bucket_object_counter:table",
)
INSERT_QUEUE_TREE = "bucket_object_counter:insert_queue"  # 0.8.2+

SLED_LOCK_TEXT = (
    'could not acquire lock on "{path}": Os {{ code: 11, kind: WouldBlock, '
    'message: "Resource temporarily unavailable" }}'
)


class LockHeld(Exception):
    """Another process holds the sled lock on ``<metadata_dir>/db/db``.

    Attributes:
        path: the locked file.
        text: sled's error text, as Garage prints it.
    """

    def __init__(self, path: Path):
        self.path = path
        self.text = SLED_LOCK_TEXT.format(path=path)
        super().__init__(self.text)


class Store:
    """The persisted trees of one node and the DB lock."""

    def __init__(self, metadata_dir: Path):
        self.meta = Path(metadata_dir)
        self.db_dir = self.meta / "db"
        self.trees: dict[str, dict] = {}
        self.generation = 0
        self.dirty = False
        self._lock_fd: int | None = None

    # -- locking ---------------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """Take the exclusive, non-blocking flock sled takes on ``db/db``.

        Raises:
            LockHeld: another live process holds it.
        """
        self.db_dir.mkdir(parents=True, exist_ok=True)
        path = self.db_dir / "db"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockHeld(path) from None
            raise
        self._lock_fd = fd

    def release_lock(self) -> None:
        """Release the lock (also released by the kernel when the process dies)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- trees ---------------------------------------------------------------------------
    def _snapshots(self) -> list[Path]:
        if not self.db_dir.is_dir():
            return []
        snaps = [
            p for p in self.db_dir.iterdir()
            if p.name.startswith(SNAP_PREFIX) and not p.name.endswith(".tmp")
        ]
        return sorted(snaps, key=lambda p: int(p.name[len(SNAP_PREFIX):], 16))

    def load(self) -> None:
        """Load the newest snapshot; a fresh directory starts with empty base trees."""
        snaps = self._snapshots()
        if snaps:
            newest = snaps[-1]
            self.generation = int(newest.name[len(SNAP_PREFIX):], 16)
            self.trees = json.loads(newest.read_text())
        else:
            self.generation = 0
            self.trees = {}
        for name in BASE_TREES:
            self.trees.setdefault(name, {})
        self.dirty = False

    def ensure_trees(self, names: tuple[str, ...]) -> None:
        """Create missing trees empty, as a newer version does on open."""
        for name in names:
            if name not in self.trees:
                self.trees[name] = {}
                self.dirty = True

    def tree(self, name: str) -> dict:
        """The tree ``name`` (created empty if missing)."""
        return self.trees.setdefault(name, {})

    def mark_dirty(self) -> None:
        """Record that the trees changed and need a flush."""
        self.dirty = True

    def flush(self) -> bool:
        """Write a new snapshot if anything changed; return whether one was written."""
        if not self.dirty:
            return False
        self.generation += 1
        self.db_dir.mkdir(parents=True, exist_ok=True)
        final = self.db_dir / f"{SNAP_PREFIX}{self.generation:016x}"
        tmp = final.with_name(final.name + ".tmp")
        data = json.dumps(self.trees, sort_keys=True, separators=(",", ":")).encode()
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        for old in self._snapshots():
            if old != final:
                old.unlink(missing_ok=True)
        self.dirty = False
        return True


def write_padding(metadata_dir: Path, size: int, seed: str) -> None:
    """Fill ``db/blobs/`` with ``size`` bytes of deterministic, compressible data.

    Real sled metadata compresses about 2-4x with zstd. Hex text of random bytes mixed with
    repeated record framing lands in that range, and every MiB differs, so a compressor gets
    no free long-range matches.
    """
    blobs = Path(metadata_dir) / "db" / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    chunk_size = 1 << 20
    file_size = 64 << 20
    written = 0
    index = 0
    while written < size:
        this_file = min(file_size, size - written)
        with open(blobs / f"{index:08x}", "wb") as fh:
            left = this_file
            while left > 0:
                n = min(chunk_size, left)
                raw = rng.randbytes(n // 4).hex()
                record = ('{"k":"' + raw[:48] + '","v":"' + raw + '"}\n').encode()
                fh.write(record[:n].ljust(n, b" "))
                left -= n
        written += this_file
        index += 1
