"""The builders of the backup and restore actions (the backup engine names its paths with them)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from .. import commands as C
from ..commands import RemoteCommand
from .node import NodeSpec, Probes
from .values import LocalStream, Op, Upload


#: Seconds added to every size-derived backup timeout, and the worst rate assumed (bytes/s):
#: the same figures as :class:`garage_migrate.backup.engine.BackupOptions`' defaults.
BACKUP_TIMEOUT_FLOOR = 300.0
BACKUP_MIN_RATE = 20.0 * 1024 * 1024


def backup_timeout(metadata_bytes: int | None) -> float:
    """The archive command's timeout for a metadata dir of ``metadata_bytes`` (as discovered).

    Sized for twice the discovered size (the dir may grow between discovery and the backup;
    a timeout only bounds a stuck command), rounded up to a power of two of at least 1 GiB:
    the timeout is part of the plan, and so of its digest, and a size that changes a little
    between a run and its retry must not make the plan another one (a person's approval is
    reused only for the same plan).
    """
    need = max(2 * (metadata_bytes or 0), 1 << 30)
    return BACKUP_TIMEOUT_FLOOR + (1 << (need - 1).bit_length()) / BACKUP_MIN_RATE


def on_node_temp(archive: str) -> str:
    """The temp name of an on-node archive while it is written and checked (renamed when it
    verified). Fixed, so the plan can show it: the cluster lock and the backup dir's lock
    keep a second writer away."""
    d, name = posixpath.split(archive)
    return posixpath.join(d, f".{name}.tmp.tar.zst")


@dataclass(frozen=True)
class BackupActions:
    """The backup step (the node stopped): listing, size, then the archive.

    ``controller`` mode streams ``tar -cf -`` into an archive on the controller; ``on-node``
    mode runs the guide's ``tar -acf`` into a private dir on the node, renames the checked
    archive into place and copies the manifest beside it (the temp archive is removed again
    if anything fails).
    """

    probes: Probes
    listing: RemoteCommand
    size: RemoteCommand
    stream: LocalStream | None
    mkdir: RemoteCommand | None = None
    archive: RemoteCommand | None = None
    sync: RemoteCommand | None = None
    install: RemoteCommand | None = None
    manifest_copy: Upload | None = None
    cleanup: tuple[RemoteCommand, ...] = ()

    def ops(self) -> tuple[Op, ...]:
        """Every action, in the order a backup runs them."""
        return tuple(x for x in (*self.probes.all, self.listing, self.size, self.stream,
                                 self.mkdir, self.archive, self.sync, self.install, self.manifest_copy)
                     if x is not None)


def backup(n: NodeSpec, *, mode: str, metadata_bytes: int | None, local_archive: str,
           remote_paths: tuple[str, str, str] | None) -> BackupActions:
    """The backup step's actions on ``n``.

    Args:
        n: the node.
        mode: ``controller`` or ``on-node`` (the inventory's ``backup.mode``).
        metadata_bytes: the metadata dir's size as discovered (sets the archive's timeout).
        local_archive: the archive on the controller (controller mode).
        remote_paths: ``(dir, archive, manifest)`` on the node (on-node mode).
    """
    ctx, meta = n.ctx, n.metadata_dir
    timeout = backup_timeout(metadata_bytes)
    base = dict(probes=Probes.of(n), listing=C.list_tree(meta, sudo=ctx.sudo), size=C.du_bytes(meta, sudo=ctx.sudo))
    if mode == "controller":
        return BackupActions(**base, stream=LocalStream(C.tar_stream(meta, timeout=timeout, sudo=ctx.sudo),
                                                        local_archive))
    assert remote_paths is not None
    rdir, rarchive, rmanifest = remote_paths
    tmp = on_node_temp(rarchive)
    return BackupActions(**base, stream=None, mkdir=C.mkdir_private(rdir, sudo=ctx.sudo),
                         archive=C.tar_archive(meta, tmp, timeout=timeout, sudo=ctx.sudo), sync=C.sync(sudo=ctx.sudo),
                         install=C.rename(tmp, rarchive, sudo=ctx.sudo),
                         manifest_copy=Upload(rmanifest, "a copy of the manifest beside the archive"),
                         cleanup=(C.remove_file(tmp, sudo=ctx.sudo), C.remove_file(rarchive, sudo=ctx.sudo)))


def size_timeout(nbytes: int) -> float:
    """A command timeout for moving or reading ``nbytes`` (the backup engine's default rule)."""
    return BACKUP_TIMEOUT_FLOOR + nbytes / BACKUP_MIN_RATE


@dataclass(frozen=True)
class RestorePaths:
    """Where a restore works on the node, named by the rollback plan's ``tag`` (so the plan
    shows the very paths): the extracted copy, the current dir moved aside, the uploaded archive."""

    meta: str
    parent: str
    staging_name: str
    staging: str
    aside: str
    remote_archive: str


def restore_paths(metadata_dir: str, tag: str, archive_on_node: str | None) -> RestorePaths:
    """The paths of a restore of ``metadata_dir`` tagged ``tag``; ``archive_on_node``: an
    on-node backup's archive (none is uploaded then)."""
    meta = metadata_dir.rstrip("/")
    parent, name = posixpath.split(meta)
    staging_name = f".{name}.restore-{tag}"
    return RestorePaths(meta=meta, parent=parent or "/", staging_name=staging_name,
                        staging=posixpath.join(parent or "/", staging_name), aside=f"{meta}.pre-restore-{tag}",
                        remote_archive=archive_on_node or posixpath.join(parent or "/", f".{name}.restore-{tag}.tar.zst"))


@dataclass(frozen=True)
class RestoreActions:
    """A restore from a verified backup (node stopped): the archive on the node, extracted
    beside the metadata dir and checked, the current dir moved aside (never deleted), the
    extracted one renamed into place; the uploaded archive removed afterwards."""

    probes: Probes
    upload: Upload | None
    hash_: RemoteCommand
    extract: RemoteCommand
    exists: RemoteCommand
    move_aside: RemoteCommand
    install: RemoteCommand
    sync: RemoteCommand
    remove_upload: RemoteCommand | None
    put_back: RemoteCommand  # on failure: the moved-aside dir goes back

    def ops(self) -> tuple[Op, ...]:
        """Every action of a clean restore, in order."""
        return tuple(x for x in (*self.probes.all, self.upload, self.hash_, self.extract,
                                 self.exists, self.move_aside, self.install, self.sync, self.remove_upload)
                     if x is not None)


def restore(n: NodeSpec, *, tag: str, member_root: str, compressed_bytes: int, uncompressed_bytes: int,
            archive_on_node: str | None) -> RestoreActions:
    """The restore step's actions on ``n`` (see :class:`RestoreActions`)."""
    ctx = n.ctx
    p = restore_paths(n.metadata_dir, tag, archive_on_node)
    return RestoreActions(
        probes=Probes.of(n), upload=None if archive_on_node else Upload(p.remote_archive, "the backup archive"),
        hash_=C.sha256sum_files([p.remote_archive], sudo=ctx.sudo, timeout=size_timeout(compressed_bytes)),
        extract=C.tar_extract_as(p.remote_archive, p.parent, member_root, p.staging_name,
                                 timeout=size_timeout(uncompressed_bytes), sudo=ctx.sudo),
        exists=C.exists(p.meta, sudo=ctx.sudo), move_aside=C.rename(p.meta, p.aside, sudo=ctx.sudo),
        install=C.rename(p.staging, p.meta, sudo=ctx.sudo), sync=C.sync(sudo=ctx.sudo),
        remove_upload=None if archive_on_node else C.remove_file(p.remote_archive, sudo=ctx.sudo),
        put_back=C.rename(p.aside, p.meta, sudo=ctx.sudo))


def for_node_backup(inv, facts, migration_id: str, node: str, source_version: str) -> BackupActions:
    """The backup step's actions on ``node`` from the inventory and the discovered facts (the
    planner's and the backup step's: one place)."""
    from ..backup.manifest import backup_paths, remote_backup_paths
    from .node import spec

    f = facts.node(node)
    local = backup_paths(inv.backup.root, inv.cluster, migration_id, node, source_version).archive
    remote = (remote_backup_paths(inv.node(node).backup_root, inv.cluster, migration_id, node,
                                  source_version.removeprefix("v"))
              if inv.backup.mode == "on-node" else None)
    return backup(spec(inv, facts, node), mode=inv.backup.mode, metadata_bytes=f.metadata_bytes,
                  local_archive=str(local), remote_paths=remote)
