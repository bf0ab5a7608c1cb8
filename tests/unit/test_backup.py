"""Backups, pure parts: the push tar parser, the pipelines, manifests, paths, comparisons, and
verification of local ``.tar.zst`` archives made here (no lab, no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
import zstandard

from garage_migrate import commands as C
from garage_migrate.backup import Manifest, TarStreamError, TarStreamReader, backup_paths, load_manifest, verify_backup
from garage_migrate.backup.manifest import (
    ListingEntry,
    archive_name,
    compare_hashes,
    compare_listing,
    compare_members,
    parse_listing,
    parse_sha256sum,
    remote_backup_paths,
    write_private_file,
)
from garage_migrate.backup.pipeline import ArchiveChecker, ArchiveWriter
from garage_migrate.backup.tarstream import Member
from garage_migrate.errors import BackupError, CommandRefused

NODE_ID = "ab" * 32
LONG = "meta/db/" + "x" * 150 + "/" + "y" * 120  # beyond ustar's 100+155 limits


def _tree(root: Path, big: int = 300_000) -> Path:
    """A small metadata-like tree with the awkward cases."""
    meta = root / "meta"
    (meta / "db" / "blobs").mkdir(parents=True)
    rng = random.Random(7)
    (meta / "node_key").write_bytes(rng.randbytes(64))
    (meta / "node_key").chmod(0o600)
    (meta / "node_key.pub").write_bytes(rng.randbytes(32))
    (meta / "db" / "conf").write_text("segment_size: 524288\n")
    (meta / "db" / "db").write_bytes(b"")
    (meta / "db" / "blobs" / "00000000").write_bytes(rng.randbytes(big // 2).hex().encode())
    (meta / "db" / "snap.0000000000000001").write_bytes(b"{}" * 1000)
    (meta / "caf\u00e9").write_bytes(b"accent")
    (meta / "link").symlink_to("db/conf")
    os.link(meta / "db" / "conf", meta / "hard")
    return meta


def _tar_bytes(meta: Path, fmt: int, extra_long: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        tf.add(meta, arcname="meta")
        if extra_long:
            data = b"long name content"
            ti = tarfile.TarInfo(LONG)
            ti.size = len(data)
            ti.mtime = 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _reference(data: bytes) -> list[Member]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for ti in tf:
            sha = hashlib.sha256(tf.extractfile(ti).read()).hexdigest() if ti.isreg() else None
            kind = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink"}.get(
                ti.type, "file" if ti.isreg() else "other")
            out.append(Member(name=ti.name, type=kind, size=ti.size if kind == "file" else 0, mode=ti.mode & 0o7777,
                              mtime=int(ti.mtime), sha256=sha,
                              linkname=(ti.linkname or None) if kind in ("symlink", "hardlink") else None))
    return out


def _feed(data: bytes, step: int) -> TarStreamReader:
    r = TarStreamReader()
    for i in range(0, len(data), step):
        r.feed(data[i: i + step])
    r.finish()
    return r


def _manifest(stats, **kw) -> Manifest:
    base = dict(cluster="lab", migration_id="m1", node="n1", node_id=NODE_ID, source_version="0.7.3",
                metadata_dir="/var/lib/garage/meta", mode="controller", archive="meta-0.7.3.tar.zst",
                created_at=datetime(2024, 1, 1, tzinfo=timezone.utc), zstd_level=3, du_bytes=1,
                uncompressed_bytes=stats.uncompressed_bytes, compressed_bytes=stats.compressed_bytes,
                archive_sha256=stats.archive_sha256, members=tuple(stats.members))
    base.update(kw)
    return Manifest(**base)


def _write_archive(tmp_path: Path, data: bytes, name: str = "a.tar.zst", step: int = 65536):
    path = tmp_path / name
    with open(path, "wb") as fh:
        w = ArchiveWriter(fh, level=3)
        for i in range(0, len(data), step):
            w.feed(data[i: i + step])
        stats = w.close()
    return path, stats


# ---------------------------------------------------------------------------- the push parser


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("step", [1, 7, 511, 512, 513, 10240, 1 << 30])
def test_push_parser_matches_tarfile_whatever_the_chunking(tmp_path, fmt, step):
    meta = _tree(tmp_path, big=20_000 if step == 1 else 300_000)
    data = _tar_bytes(meta, fmt, extra_long=fmt != tarfile.USTAR_FORMAT)
    r = _feed(data, step)
    assert r.members == _reference(data)
    assert r.total == len(data)
    names = {m.name for m in r.members}
    assert {"meta", "meta/db", "meta/caf\u00e9", "meta/link", "meta/hard"} <= names
    if fmt != tarfile.USTAR_FORMAT:
        assert LONG in names


def test_push_parser_reads_gnu_tar_output(tmp_path):
    tar = shutil.which("tar")
    if tar is None:
        pytest.skip("no tar here")
    _tree(tmp_path)
    data = subprocess.run([tar, "-C", str(tmp_path), "-cf", "-", "meta"], check=True, capture_output=True).stdout
    r = _feed(data, 4096)
    assert r.members == _reference(data)
    by = {m.name: m for m in r.members}
    assert by["meta/node_key"].mode == 0o600
    assert by["meta/db/conf"].sha256 == hashlib.sha256(b"segment_size: 524288\n").hexdigest()
    assert by["meta/link"].linkname == "db/conf"


def test_truncated_stream_names_the_file_it_stopped_in(tmp_path):
    meta = _tree(tmp_path)
    data = _tar_bytes(meta, tarfile.GNU_FORMAT, extra_long=False)
    members = _reference(data)
    blob = "meta/db/blobs/00000000"
    # offset of the blob's data: cut in its middle
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        ti = tf.getmember(blob)
        cut = ti.offset_data + ti.size // 2
    r = TarStreamReader()
    r.feed(data[:cut])
    with pytest.raises(TarStreamError) as info:
        r.finish()
    assert info.value.member == blob and blob in str(info.value)
    # cut between members: no end marker
    r = TarStreamReader()
    r.feed(data[: ti.offset_data + ti.size + (-ti.size % 512)])
    with pytest.raises(TarStreamError, match="no end-of-archive marker"):
        r.finish()
    assert members  # sanity


def test_corrupt_header_and_trailing_garbage_are_refused(tmp_path):
    data = bytearray(_tar_bytes(_tree(tmp_path), tarfile.GNU_FORMAT, extra_long=False))
    bad = bytearray(data)
    bad[0] ^= 0xFF  # the first header's name: its checksum no longer matches
    with pytest.raises(TarStreamError, match="corrupt tar header at byte 0"):
        TarStreamReader().feed(bytes(bad))
    r = TarStreamReader()
    r.feed(bytes(data))
    with pytest.raises(TarStreamError, match="after the end-of-archive"):
        r.feed(b"\0" * 100 + b"junk")


def test_sparse_members_are_refused():
    ti = tarfile.TarInfo("meta/sparse")
    ti.type = tarfile.GNUTYPE_SPARSE
    block = ti.tobuf(tarfile.GNU_FORMAT)
    with pytest.raises(TarStreamError, match="sparse"):
        TarStreamReader().feed(block)


# ---------------------------------------------------------------------------- pipelines and verify


def test_archive_writer_then_verify_is_clean(tmp_path):
    data = _tar_bytes(_tree(tmp_path), tarfile.GNU_FORMAT)
    path, stats = _write_archive(tmp_path, data)
    assert stats.uncompressed_bytes == len(data)
    assert stats.compressed_bytes == path.stat().st_size
    assert stats.archive_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # the zstd CLI and python-zstandard both read it; the frame carries a checksum
    params = zstandard.get_frame_parameters(path.read_bytes()[:18])
    assert params.has_checksum
    out = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(path.read_bytes()), read_across_frames=True).read()
    assert out == data
    report = verify_backup(path, _manifest(stats))
    assert report.ok, report.summary()
    assert report.members == len(stats.members) and report.files == sum(m.type == "file" for m in stats.members)


def test_one_corrupt_byte_fails_verification_and_names_the_file(tmp_path):
    meta = tmp_path / "src" / "meta"
    meta.mkdir(parents=True)
    rng = random.Random(1)
    (meta / "small").write_bytes(b"hello")
    # one file holds almost all of the archive, so a byte in the middle lands in its data
    (meta / "big").write_bytes(rng.randbytes(1 << 20))
    data = _tar_bytes(meta, tarfile.GNU_FORMAT, extra_long=False)
    path, stats = _write_archive(tmp_path, data)
    manifest = _manifest(stats)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    report = verify_backup(path, manifest)
    assert not report.ok
    assert any(p.path == "meta/big" for p in report.problems), report.summary()
    with pytest.raises(BackupError, match="meta/big") as info:
        report.raise_for_problems("n1")
    assert info.value.code == "BACKUP_FAILED"


def test_a_corrupt_checksum_names_the_frame(tmp_path):
    data = _tar_bytes(_tree(tmp_path), tarfile.GNU_FORMAT)
    path, stats = _write_archive(tmp_path, data)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # the last byte is the frame's content checksum
    path.write_bytes(bytes(raw))
    report = verify_backup(path, _manifest(stats))
    assert not report.ok
    assert any(p.kind in ("corrupt", "archive") for p in report.problems), report.summary()


def test_truncated_archive_fails_verification(tmp_path):
    data = _tar_bytes(_tree(tmp_path), tarfile.GNU_FORMAT)
    path, stats = _write_archive(tmp_path, data)
    path.write_bytes(path.read_bytes()[: stats.compressed_bytes // 2])
    report = verify_backup(path, _manifest(stats))
    assert not report.ok
    assert report.problems[0].kind in ("truncated", "corrupt", "missing")


def test_verify_against_a_node_listing(tmp_path):
    data = _tar_bytes(_tree(tmp_path), tarfile.GNU_FORMAT, extra_long=False)
    path, stats = _write_archive(tmp_path, data)
    listing = {m.name: ListingEntry(m.name, "file" if m.type == "hardlink" else m.type,
                                    m.size if m.type != "hardlink" else 21, m.mtime) for m in stats.members}
    listing["meta/hard"] = ListingEntry("meta/hard", "file", 21, listing["meta/db/conf"].mtime)
    assert verify_backup(path, _manifest(stats), listing).ok
    listing.pop("meta/db/conf")
    listing["meta/new"] = ListingEntry("meta/new", "file", 3, 0)
    report = verify_backup(path, _manifest(stats), listing)
    assert {(p.path, p.kind) for p in report.problems} == {("meta/db/conf", "missing"), ("meta/new", "unexpected")}


def test_manifest_mismatch_names_files(tmp_path):
    data = _tar_bytes(_tree(tmp_path), tarfile.GNU_FORMAT, extra_long=False)
    path, stats = _write_archive(tmp_path, data)
    members = list(stats.members)
    i = next(i for i, m in enumerate(members) if m.name == "meta/db/conf")
    members[i] = dataclasses.replace(members[i], sha256="0" * 64)
    report = verify_backup(path, _manifest(stats, members=tuple(members)))
    assert [(p.path, p.kind) for p in report.problems] == [("meta/db/conf", "sha256")]


def test_archive_checker_reads_what_the_writer_wrote_in_any_chunking(tmp_path):
    data = _tar_bytes(_tree(tmp_path), tarfile.PAX_FORMAT)
    path, stats = _write_archive(tmp_path, data)
    raw = path.read_bytes()
    for step in (1000, 65536, len(raw)):
        c = ArchiveChecker()
        for i in range(0, len(raw), step):
            c.feed(raw[i: i + step])
        got = c.close()
        assert got.members == stats.members
        assert (got.archive_sha256, got.compressed_bytes, got.uncompressed_bytes) == (
            stats.archive_sha256, stats.compressed_bytes, stats.uncompressed_bytes)


def test_archive_checker_detects_corruption_and_truncation(tmp_path):
    meta = tmp_path / "src" / "meta"
    meta.mkdir(parents=True)
    (meta / "big").write_bytes(random.Random(2).randbytes(1 << 20).hex().encode())
    data = _tar_bytes(meta, tarfile.GNU_FORMAT, extra_long=False)
    path, _stats = _write_archive(tmp_path, data)
    raw = bytearray(path.read_bytes())
    c = ArchiveChecker()
    c.feed(bytes(raw[: len(raw) // 2]))
    with pytest.raises(TarStreamError, match="meta/big"):
        c.close()
    raw[-1] ^= 1
    with pytest.raises(zstandard.ZstdError):
        c = ArchiveChecker()
        c.feed(bytes(raw))


# ---------------------------------------------------------------------------- manifests and paths


def test_paths_layout_and_refused_names(tmp_path):
    p = backup_paths(tmp_path, "prod-eu", "m-2024.01", "g1", "v0.7.3")
    assert p.archive == tmp_path / "prod-eu" / "m-2024.01" / "g1" / "meta-0.7.3.tar.zst"
    assert p.manifest == p.dir / "manifest.json"
    assert remote_backup_paths("/var/backups", "c", "m", "g1", "0.7.3") == (
        "/var/backups/c/m/g1", "/var/backups/c/m/g1/meta-0.7.3.tar.zst", "/var/backups/c/m/g1/manifest.json")
    for bad in ("..", ".", "a/b", "", "-x", "a b"):
        with pytest.raises(BackupError):
            backup_paths(tmp_path, "c", bad, "g1", "0.7.3")
    with pytest.raises(BackupError):
        archive_name("latest")
    with pytest.raises(BackupError):
        remote_backup_paths("relative", "c", "m", "g1", "0.7.3")


def test_manifest_round_trip_and_private_write(tmp_path):
    data = _tar_bytes(_tree(tmp_path), tarfile.GNU_FORMAT)
    _path, stats = _write_archive(tmp_path, data)
    m = _manifest(stats)
    target = tmp_path / "manifest.json"
    write_private_file(target, m.to_json().encode())
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    back = load_manifest(target)
    assert back == m
    assert back.root == "meta"
    assert back.identity() == ("lab", "m1", "n1", NODE_ID, "0.7.3", "/var/lib/garage/meta", "controller")
    doc = json.loads(target.read_text())
    doc["format_version"] = 2
    target.write_text(json.dumps(doc))
    with pytest.raises(BackupError, match="not a valid backup manifest"):
        load_manifest(target)
    target.write_text("{")
    with pytest.raises(BackupError, match="cannot read"):
        load_manifest(target)


def test_listing_parse_and_compare():
    out = ("d 4096 1700000000.5 \0f 21 1700000001.9999999999 db/conf\0l 7 1700000002.0 link\0"
           "f 3 1700000003.0 odd\nname\0")
    listing = parse_listing(out, "meta")
    assert listing["meta"] == ListingEntry("meta", "dir", 4096, 1700000000)
    assert listing["meta/db/conf"].mtime == 1700000001  # truncated, as tar stores it
    assert listing["meta/odd\nname"].size == 3
    members = [Member("meta", "dir", 0, 0o755, 1), Member("meta/db/conf", "file", 21, 0o644, 1700000001, "a" * 64),
               Member("meta/link", "symlink", 0, 0o777, 5, None, "db/conf"),
               Member("meta/odd\nname", "file", 3, 0o644, 1700000003, "b" * 64)]
    assert compare_listing(members, listing) == []
    changed = dict(listing, **{"meta/db/conf": ListingEntry("meta/db/conf", "file", 21, 1700000099)})
    assert [(p.path, p.kind) for p in compare_listing(members, changed)] == [("meta/db/conf", "mtime")]
    assert compare_listing(members, changed, check_mtime=False) == []
    with pytest.raises(BackupError):
        parse_listing("garbage\0", "meta")


def test_sha256sum_parse_with_escaped_names_and_compare():
    a, b = "a" * 64, "b" * 64
    out = f"{a}  /m/meta/db/conf\n\\{b}  /m/meta/odd\\nname\n"
    got = parse_sha256sum(out)
    assert got == {"/m/meta/db/conf": a, "/m/meta/odd\nname": b}
    members = [Member("meta/db/conf", "file", 1, 0o644, 0, a), Member("meta/x", "file", 1, 0o644, 0, b)]
    probs = compare_hashes(members, {"meta/db/conf": b})
    assert [(p.path, p.kind) for p in probs] == [("meta/db/conf", "sha256"), ("meta/x", "missing")]
    with pytest.raises(BackupError):
        parse_sha256sum("nope  /x\n")


def test_compare_members_reports_each_difference():
    base = [Member("meta", "dir", 0, 0o700, 0), Member("meta/a", "file", 1, 0o600, 0, "a" * 64)]
    got = [Member("meta", "dir", 0, 0o755, 0), Member("meta/a", "file", 2, 0o600, 0, "b" * 64),
           Member("meta/z", "file", 0, 0o600, 0, "c" * 64)]
    kinds = {(p.path, p.kind) for p in compare_members(base, got)}
    assert kinds == {("meta", "mode"), ("meta/a", "size"), ("meta/a", "sha256"), ("meta/z", "unexpected")}


# ---------------------------------------------------------------------------- command builders


def test_backup_builders_are_exact_and_allow_listed():
    assert C.list_tree("/v/meta").argv == ("find", "/v/meta", "-printf", "%y %s %T@ %P\\0")
    assert C.sha256sum_files(["/v/a", "/v/b"]).argv == ("sha256sum", "/v/a", "/v/b")
    assert C.mkdir_private("/b/c").argv == ("mkdir", "-p", "-m", "0700", "/b/c")
    cmd = C.tar_extract_as("/v/.meta.restore-1.tar.zst", "/v", "meta", ".meta.restore-1", timeout=60)
    assert cmd.argv == ("tar", "--zstd", "-x", "-p", "-k", "-f", "/v/.meta.restore-1.tar.zst", "-C", "/v",
                        "--transform=s|^meta\\(/\\|$\\)|.meta.restore-1\\1|S", "meta")
    assert C.tar_extract_as("/v/a.tar.zst", "/v", "meta.d", "x", timeout=1).argv[-2].startswith("--transform=s|^meta\\.d")
    for bad in ("a|b", "..", "a/b", "a&b"):
        with pytest.raises(CommandRefused):
            C.tar_extract_as("/v/a.tar.zst", "/v", "meta", bad, timeout=1)
    with pytest.raises(CommandRefused):
        C.sha256sum_files([])
    with pytest.raises(CommandRefused):
        C.sha256sum_files(["relative"])
