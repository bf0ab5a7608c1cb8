"""Every remote command garage-migrate runs is built here, as a value.

A :class:`RemoteCommand` is an argv tuple plus how to run it (node-side timeout, ``sudo -n``,
optional stdin). It renders to one shell string in which every word went through
:func:`shlex.quote`, because sshd hands the command to the login shell. Commands compare with
``==``, so tests assert on the exact command a step would run, and the dry run shows the same
strings as the real run.

Only allow-listed executables are built (:data:`FIXED_EXECUTABLES`), plus what the inventory
configures for a node (its Garage binary, its service commands, API-gate commands) and Garage
binaries named by version (``.../garage-v0.8.7``) for staging. :func:`check_allowed` is called
by every builder here and again by the SSH runner before anything leaves the controller.

Remote paths must be absolute: nothing here depends on the remote working directory, and an
absolute path can never be read as an option.

The builders live in :mod:`.core` (the value, the node context, the allow-list), :mod:`.node`
(the Garage CLI, files, processes, the service), :mod:`.backup` (tar, zstd, listings, digests)
and :mod:`.flip` (the flip helper's calls); import them from here.
"""

from __future__ import annotations

from .backup import (list_tree, mkdir_private, sha256sum_files, tar_archive, tar_extract_as, tar_stream,
    tar_zstd_stream, zstd_test, zstd_version)
from .core import (DEFAULT_TIMEOUT, FIXED_EXECUTABLES, FLIP_HELPER_NAME, GARAGE_BINARY_NAME, KILL_AFTER,
    NodeContext, OFFLINE_REPAIR_WHATS, REPAIR_WHATS, RemoteCommand, ServiceControl, WRAPPERS, check_allowed,
    is_allowed)
from .flip import (ConfigFlip, flip_helper_path, flip_start, flip_stop, flip_switch)
from .node import (cat, db_file_id, df_avail, du_bytes, exists, garage, garage_version, kill, list_files,
    lock_record_read, lock_record_remove, lock_record_take, mkdir_p, offline_repair, proc_locks, readlink_f,
    remove_file, rename, repair, service_signal, service_start, service_status, service_stop, sha256sum,
    signal_name, stat, switch_symlink, symlink, sync)

__all__ = [
    "ConfigFlip",
    "DEFAULT_TIMEOUT",
    "FIXED_EXECUTABLES",
    "FLIP_HELPER_NAME",
    "GARAGE_BINARY_NAME",
    "KILL_AFTER",
    "NodeContext",
    "OFFLINE_REPAIR_WHATS",
    "REPAIR_WHATS",
    "RemoteCommand",
    "ServiceControl",
    "WRAPPERS",
    "cat",
    "check_allowed",
    "db_file_id",
    "df_avail",
    "du_bytes",
    "exists",
    "flip_helper_path",
    "flip_start",
    "flip_stop",
    "flip_switch",
    "garage",
    "garage_version",
    "is_allowed",
    "kill",
    "list_files",
    "list_tree",
    "lock_record_read",
    "lock_record_remove",
    "lock_record_take",
    "mkdir_p",
    "mkdir_private",
    "offline_repair",
    "proc_locks",
    "readlink_f",
    "remove_file",
    "rename",
    "repair",
    "service_signal",
    "service_start",
    "service_status",
    "service_stop",
    "sha256sum",
    "sha256sum_files",
    "signal_name",
    "stat",
    "switch_symlink",
    "symlink",
    "sync",
    "tar_archive",
    "tar_extract_as",
    "tar_stream",
    "tar_zstd_stream",
    "zstd_test",
    "zstd_version",
]
