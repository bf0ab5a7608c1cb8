"""Backups: the verified backup to the controller against the guide's own ``tar -acf`` on the
node, then a zone of nodes at once, compressed on the nodes against compressed on the controller.

**1. One node** (a 1-node 0.7.3 lab with ``--size`` of metadata, 2 GiB by default, less if the
disk is short: the size used is printed). The node is stopped and its metadata read once to warm
the page cache; then each repetition runs, in rotating order:

- **ours**: :func:`garage_migrate.backup.backup_node` as the plan runs it on a node with zstd
  (compressed on the node: ``tar --use-compress-program='zstd -T0 -<level>'`` over the lab's
  real sshd, hashed and written on the controller, file hashes by ``sha256sum`` on the node,
  the archive read back in full), in a child process so that its peak RSS (``VmHWM``) and CPU
  time (``getrusage``) are the controller's alone. The figure is the **whole verified step**
  (stop and lock checks, listing, ``du``, transfer, fsync, verification);
- **guide**: the guide's ``tar -acf meta-v0.7.tar.zst meta/`` run on the node (the lab's nodes
  are this machine), unverified;
- **controller-side**: the same step with the node sending plain ``tar`` and the controller
  compressing (the fallback for a node without zstd), for reference.

Throughput is tar-stream bytes per second. Targets (issue 13 section 3): ours/guide >= 0.8;
controller peak RSS <= 150 MiB.

**2. A zone at once**: a lab of one zone of ``--zone-nodes`` nodes (8) with ``--zone-size`` of
metadata each (256 MiB); every node is backed up at once by one controller process, first
compressed on the nodes, then on the controller (alternating over ``--zone-reps``). The figure is
the controller process's CPU time (user + system, ``getrusage``) per GiB of tar stream backed
up: the lab's nodes share this machine's cores with the controller, so wall time cannot show what
the controller saves, CPU time can. Target: node-side <= 1/3 of controller-side.

Figures are printed, never asserted; the last line is ``RESULT <json>`` for tools.

Usage: ``python -m benchmarks.backup [--size 2GiB] [--reps 3] [--zone-nodes 8] [--zone-size 256MiB]
[--zone-reps 2] [--level 3] [--dir DIR] [--keep]``; ``--smallest`` is the CI's run (64 MiB, one
repetition, a zone of 8 x 8 MiB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
GiB = 1 << 30
TARGET_RATIO = 0.8
TARGET_RSS_MIB = 150
TARGET_CPU_RATIO = 1 / 3
NODE = "node-a1"


def _parse_size(text: str) -> int:
    from garage_lab.harness import parse_size

    return parse_size(text)


def _vmhwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def _cpu_s() -> float:
    """CPU seconds of this process and its waited-for children (the controller's share)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _pick_size(wanted: int, where: Path, copies: int = 1) -> tuple[int, str]:
    """The metadata size per node to use: ``copies`` nodes' metadata plus one archive each must fit."""
    free = shutil.disk_usage(where).free
    need = 2 * copies * wanted + GiB
    if free >= need:
        return wanted, f"{free / GiB:.1f} GiB free in {where}"
    size = max(8 * MiB, int((free - GiB) / (2 * copies)) // (8 * MiB) * (8 * MiB))
    return size, (f"only {free / GiB:.1f} GiB free in {where}: using {size / MiB:.0f} MiB instead of "
                  f"{wanted / MiB:.0f} MiB per node")


def _machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    z = subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} cores ({model}), {platform.python_implementation()} {platform.python_version()}, {z}"


# ---------------------------------------------------------------------------- the child (the controller)


def _child(args: argparse.Namespace) -> int:
    """Back up ``--nodes`` at once, as the controller does; print one JSON line of figures."""
    from garage_migrate.backup import backup_node, observe_stopped
    from garage_migrate.inventory import load_inventory
    from garage_migrate.ssh import SshPool

    logging.basicConfig(level=logging.WARNING)
    lab = Path(args.lab)
    info = json.loads((lab / "lab.json").read_text())
    ids = {n["name"]: n["id64"] for n in info["nodes"]}
    names = args.nodes.split(",")
    inv = load_inventory(lab / "inventory.yaml")

    async def one(pool, name):
        shell, ctx = pool.shell(name), inv.node(name).ctx
        proof = await observe_stopped(shell, ctx)
        return await backup_node(shell, ctx, node_id=ids[name], metadata_dir=str(lab / "nodes" / name / "meta"),
                                 stopped=proof, dest_root=args.dest, cluster="bench", migration_id=args.migration,
                                 source_version="0.7.3", level=args.level, compress_on=args.compress_on,
                                 # a throughput figure, not a deadline: a loaded machine must not time it out
                                 archive_timeout=7200.0)

    async def go():
        async with SshPool.from_inventory(inv) as pool:
            return await asyncio.gather(*(one(pool, n) for n in names))

    cpu0, t0 = _cpu_s(), time.monotonic()
    recs = asyncio.run(go())
    cpu, wall = _cpu_s() - cpu0, time.monotonic() - t0
    print(json.dumps({"cpu_s": cpu, "wall_s": wall, "vmhwm_kib": _vmhwm_kib(),
                      "total_s": max(r.seconds for r in recs), "transfer_s": max(r.transfer_seconds for r in recs),
                      "verify_s": max(r.verify.seconds for r in recs),
                      "uncompressed": sum(r.manifest.uncompressed_bytes for r in recs),
                      "compressed": sum(r.manifest.compressed_bytes for r in recs),
                      "compressed_on": sorted({r.manifest.compressed_on for r in recs}),
                      "reused": any(r.reused for r in recs)}))
    return 0


def _controller(lab_dir: Path, work: Path, tag: str, level: int, nodes: list[str], compress_on: str) -> dict:
    dest = work / f"dest-{tag}"
    cmd = [sys.executable, "-m", "benchmarks.backup", "--child", "--lab", str(lab_dir), "--dest", str(dest),
           "--migration", f"bench-{tag}", "--level", str(level), "--nodes", ",".join(nodes),
           "--compress-on", compress_on]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=7200)
    shutil.rmtree(dest, ignore_errors=True)
    if res.returncode != 0:
        raise RuntimeError(f"backup ({compress_on}) failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["reused"] or out["compressed_on"] != [compress_on]:
        raise RuntimeError(f"backup ({compress_on}) did not take a new backup as asked: {out}")
    return out


def _guide(parent: Path, work: Path) -> dict:
    """The guide's ``tar -acf meta-v0.7.tar.zst meta/``, on the node (this machine)."""
    out = work / "meta-v0.7.tar.zst"
    t0 = time.monotonic()
    subprocess.run(["tar", "-acf", str(out), "meta/"], cwd=parent, check=True, timeout=7200)
    dt = time.monotonic() - t0
    size = out.stat().st_size
    out.unlink()
    return {"total_s": dt, "compressed": size}


def _tar_bytes(parent: Path) -> int:
    """Read the whole tar stream once: warms the page cache for every contender, and sizes it."""
    proc = subprocess.Popen(["tar", "-C", str(parent), "-cf", "-", "meta"], stdout=subprocess.PIPE)
    n = 0
    assert proc.stdout is not None
    while chunk := proc.stdout.read(4 * MiB):
        n += len(chunk)
    if proc.wait() != 0:
        raise RuntimeError("tar of the lab metadata failed")
    return n


def _stop_all(lab, names: list[str]) -> None:
    for name in names:
        subprocess.run([str(lab.dir / "bin" / "garage-service"), "stop", "--signal", "INT"],
                       env=dict(os.environ, GARAGE_LAB_NODE=name), check=True, timeout=120)


# ---------------------------------------------------------------------------- the two parts


def one_node(args, work: Path, size: int) -> dict:
    """Part 1: ours (node-compressed, verified) vs the guide's ``tar -acf`` vs controller-side."""
    from garage_lab import shims
    from garage_lab.harness import Lab, LabSpec

    print(f"\n## 1. one node: {size / MiB:.0f} MiB of metadata", flush=True)
    t0 = time.monotonic()
    # own subnets (127.41.x, like benchmarks.lab): a stopped node frees its RPC port, and the tests'
    # allocator would take the subnet for another lab while our sshd still listens on it
    lab = Lab.up(LabSpec(dir=str(work / "lab1"), zones=1, per_zone=1, meta_size=size, version="0.7.3",
                         subnet="127.41.210"),
                 timeout=1200, wait_prometheus=False)
    try:
        shims.install(lab.dir)
        print(f"lab up in {time.monotonic() - t0:.0f}s", flush=True)
        _stop_all(lab, [NODE])
        parent = lab.node_dir(NODE)
        tar_bytes = _tar_bytes(parent)
        print(f"tar stream {tar_bytes / MiB:.1f} MiB, zstd level {args.level}, {args.reps} repetition(s)\n")
        print(f"{'rep':>3}  {'ours: verified step':>30}  {'guide tar -acf':>22}  {'controller-side step':>24}  "
              f"{'peak RSS':>9}  {'CPU':>6}")
        rows = []
        for rep in range(1, args.reps + 1):
            order = ["ours", "guide", "ctl"] if rep <= args.reference_reps else ["ours", "guide"]
            k = (rep - 1) % len(order)  # rotate: this machine's noise is larger than some differences
            runs = {}
            for what in order[k:] + order[:k]:
                if what == "guide":
                    runs[what] = _guide(parent, work)
                else:
                    runs[what] = _controller(lab.dir, work, f"{what}-{rep}", args.level, [NODE],
                                             "node" if what == "ours" else "controller")
            o, g, c = runs["ours"], runs["guide"], runs.get("ctl")
            row = {"ours": tar_bytes / o["total_s"] / MiB, "guide": tar_bytes / g["total_s"] / MiB,
                   "ctl": tar_bytes / c["total_s"] / MiB if c else None, "rss": o["vmhwm_kib"] / 1024,
                   "rss_ctl": c["vmhwm_kib"] / 1024 if c else 0, "cpu": o["cpu_s"], "o": o, "g": g, "c": c}
            rows.append(row)
            ctl = f"{row['ctl']:>11.0f} MiB/s ({c['total_s']:5.1f}s)" if c else "-"
            print(f"{rep:>3}  {row['ours']:>7.0f} MiB/s ({o['total_s']:5.1f}s, verify {o['verify_s']:4.1f}s)  "
                  f"{row['guide']:>10.0f} MiB/s ({g['total_s']:5.1f}s)  "
                  f"{ctl:>24}  {row['rss']:>5.0f} MiB  {o['cpu_s']:>5.1f}s", flush=True)
    finally:
        lab.down()
        shutil.rmtree(work / "lab1", ignore_errors=True)
    med = {k: statistics.median(r[k] for r in rows if r[k] is not None) for k in ("ours", "guide", "ctl")}
    peak = max(r["rss"] for r in rows)
    return {"size_mib": size / MiB, "tar_mib": tar_bytes / MiB, "ours_mib_s": med["ours"],
            "ours_cpu_s": statistics.median(r["cpu"] for r in rows),
            "controller_side_peak_rss_mib": max(r["rss_ctl"] for r in rows),
            "guide_mib_s": med["guide"], "controller_side_mib_s": med["ctl"], "ratio": med["ours"] / med["guide"],
            "ratio_controller_side": med["ctl"] / med["guide"], "peak_rss_mib": peak,
            "compression_ours": tar_bytes / rows[-1]["o"]["compressed"],
            "compression_guide": tar_bytes / rows[-1]["g"]["compressed"]}


def zone(args, work: Path, size: int) -> dict:
    """Part 2: ``--zone-nodes`` nodes at once, node-side vs controller-side: controller CPU-s per GiB."""
    from garage_lab import shims
    from garage_lab.harness import Lab, LabSpec

    n = args.zone_nodes
    print(f"\n## 2. a zone of {n} nodes at once, {size / MiB:.0f} MiB of metadata each", flush=True)
    t0 = time.monotonic()
    lab = Lab.up(LabSpec(dir=str(work / "labz"), zones=1, per_zone=n, meta_size=size, version="0.7.3",
                         subnet="127.41.211"),
                 timeout=1200, wait_prometheus=False)
    try:
        shims.install(lab.dir)
        print(f"lab up in {time.monotonic() - t0:.0f}s", flush=True)
        names = [x["name"] for x in lab.info["nodes"]]
        _stop_all(lab, names)
        tar_bytes = sum(_tar_bytes(lab.node_dir(x)) for x in names)
        print(f"tar streams {tar_bytes / MiB:.0f} MiB in all; {args.zone_reps} repetition(s)\n")
        print(f"{'rep':>3}  {'compressed on':>13}  {'controller CPU':>14}  {'CPU-s/GiB':>9}  {'wall':>6}  {'peak RSS':>9}")
        per = {"node": [], "controller": []}
        rss: dict[str, list[float]] = {"node": [], "controller": []}
        for rep in range(1, args.zone_reps + 1):
            order = ["node", "controller"] if rep % 2 else ["controller", "node"]
            for where in order:
                r = _controller(lab.dir, work, f"zone-{where}-{rep}", args.level, names, where)
                cpg = r["cpu_s"] / (r["uncompressed"] / GiB)
                per[where].append(cpg)
                rss[where].append(r["vmhwm_kib"] / 1024)
                print(f"{rep:>3}  {where:>13}  {r['cpu_s']:>12.1f} s  {cpg:>9.2f}  {r['wall_s']:>5.1f}s  "
                      f"{r['vmhwm_kib'] / 1024:>5.0f} MiB", flush=True)
    finally:
        lab.down()
        shutil.rmtree(work / "labz", ignore_errors=True)
    node_cpg, ctl_cpg = statistics.median(per["node"]), statistics.median(per["controller"])
    return {"nodes": n, "size_mib_each": size / MiB, "tar_mib": tar_bytes / MiB, "node_cpu_s_per_gib": node_cpg,
            "controller_cpu_s_per_gib": ctl_cpg, "cpu_ratio": node_cpg / ctl_cpg, "peak_rss_mib": max(rss["node"]),
            "controller_side_peak_rss_mib": max(rss["controller"])}


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures; returns 0 (or 2 when it cannot run)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.backup", description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="2GiB", help="metadata of the one-node lab (default 2GiB)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of part 1 (default 3)")
    ap.add_argument("--reference-reps", type=int, default=1,
                    help="repetitions of part 1 that also run the controller-side step (default 1: the slowest)")
    ap.add_argument("--zone-nodes", type=int, default=8, help="nodes of the zone in part 2 (default 8)")
    ap.add_argument("--zone-size", default="256MiB", help="metadata per node in part 2 (default 256MiB)")
    ap.add_argument("--zone-reps", type=int, default=2, help="repetitions of part 2 (default 2)")
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--smallest", action="store_true",
                    help="the CI's run: 64MiB, 1 repetition, a zone of 8 x 8MiB, 1 repetition")
    ap.add_argument("--dir", help="work directory (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    for hidden in ("--lab", "--dest", "--migration", "--nodes", "--compress-on"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    if args.smallest:
        args.size, args.reps, args.zone_size, args.zone_reps = "64MiB", 1, "8MiB", 1
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if shutil.which("zstd") is None:
        print("the zstd CLI is missing (apt-get install -y zstd): the node-side mode and the guide's baseline "
              "need it", file=sys.stderr)
        return 2
    work = Path(args.dir or tempfile.mkdtemp(prefix="garage-bench-backup-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"machine: {_machine()}")
        size, why = _pick_size(_parse_size(args.size), work)
        zsize, zwhy = _pick_size(_parse_size(args.zone_size), work, args.zone_nodes)
        print(f"disk: {why}; zone: {zwhy}")
        one = one_node(args, work, size)
        z = zone(args, work, zsize)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    def met(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print("\n## summary")
    print(f"one node, {one['tar_mib']:.0f} MiB tar stream: ours (node-compressed, verified) {one['ours_mib_s']:.0f} MiB/s, "
          f"guide's tar -acf {one['guide_mib_s']:.0f} MiB/s, controller-side verified {one['controller_side_mib_s']:.0f} MiB/s")
    print(f"throughput ratio ours/guide: {one['ratio']:.2f} (target >= {TARGET_RATIO}: {met(one['ratio'] >= TARGET_RATIO)}); "
          f"controller-side/guide: {one['ratio_controller_side']:.2f}")
    print(f"controller peak RSS, node-side: {one['peak_rss_mib']:.0f} MiB one node (target <= {TARGET_RSS_MIB} MiB: "
          f"{met(one['peak_rss_mib'] <= TARGET_RSS_MIB)}), {z['peak_rss_mib']:.0f} MiB for {z['nodes']} nodes at once; "
          f"controller-side: {one['controller_side_peak_rss_mib']:.0f} MiB one node, "
          f"{z['controller_side_peak_rss_mib']:.0f} MiB for {z['nodes']}")
    print(f"zone of {z['nodes']}: controller CPU {z['node_cpu_s_per_gib']:.2f} s/GiB node-side, "
          f"{z['controller_cpu_s_per_gib']:.2f} s/GiB controller-side: ratio {z['cpu_ratio']:.2f} "
          f"(target <= {TARGET_CPU_RATIO:.2f}: {met(z['cpu_ratio'] <= TARGET_CPU_RATIO)})")
    print(f"compression: ours x{one['compression_ours']:.2f}, guide x{one['compression_guide']:.2f}")
    print("note: the lab's nodes (sshd, tar, zstd, sha256sum) run on the controller's own cores; on a real "
          "cluster that work is on the nodes")
    print("RESULT " + json.dumps({"one_node": one, "zone": z}))
    return 0


if __name__ == "__main__":
    from benchmarks import exit_on_signals

    exit_on_signals()
    sys.exit(main())
