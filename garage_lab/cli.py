"""``garage-lab``: bring a simulated Garage cluster up, look at it, break it, take it down.

    garage-lab up --dir DIR [--zones 3] [--per-zone 2] [--version 0.7.3] [--meta-size 64MiB] [--netns]
    garage-lab status --dir DIR
    garage-lab inspect --dir DIR [--no-checksums]
    garage-lab fault --dir DIR NODE KIND [--count N] [--seconds S] [--match TEXT] [--blocks N] [--path P] [--bytes N]
    garage-lab fault --dir DIR NODE|ZONE net-delay --ms 200 | net-loss --pct 2 | net-partition --side controller|peers|both
    garage-lab fault --dir DIR NODE ssh-drop --match TEXT [--seconds S]   (netns labs)
    garage-lab fault --dir DIR NODE|ZONE clear
    garage-lab traffic --dir DIR [--duration 10] [--rate 20] [--verify]   (boto3, with the lab's key)
    garage-lab down --dir DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from .garage.knobs import FAULT_KINDS
from .garage.units import parse_size
from .harness import Lab, LabError, LabSpec


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``garage-lab`` console script."""
    ap = argparse.ArgumentParser(prog="garage-lab", description="A simulated Garage cluster on real sshd and Prometheus.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="create and start a lab")
    up.add_argument("--dir", required=True)
    up.add_argument("--zones", type=int, default=3)
    up.add_argument("--per-zone", type=int, default=2)
    up.add_argument("--version", default="0.7.3", choices=["0.7.3", "0.8.0", "0.8.7"])
    up.add_argument("--meta-size", default="0", help="pad each node's metadata to this size (e.g. 64MiB, 2GiB)")
    up.add_argument("--subnet", default="", help="127.B.C to use for node addresses (default: a free one)")
    up.add_argument("--ssh-port", type=int, default=2222)
    up.add_argument("--seed", default="garage-lab")
    up.add_argument("--objects-per-bucket", type=int, default=24)
    up.add_argument("--timeout", type=float, default=60.0)
    up.add_argument("--discovery", action="append", choices=["consul", "kubernetes"], default=[],
                    help="put 0.7-style top-level discovery keys in garage.toml (repeatable)")
    up.add_argument("--no-zstd", action="append", default=[], metavar="NODE",
                    help="build NODE without a zstd CLI (repeatable): its backups compress on the controller")
    up.add_argument("--netns", action="store_true",
                    help="each node in its own network namespace, behind a bridge (network faults need it)")
    for name in ("status", "down"):
        s = sub.add_parser(name)
        s.add_argument("--dir", required=True)
    ins = sub.add_parser("inspect", help="ground truth as JSON (for tests; never for the orchestrator)")
    ins.add_argument("--dir", required=True)
    ins.add_argument("--no-checksums", action="store_true")
    f = sub.add_parser("fault", help="inject a fault on a node")
    f.add_argument("--dir", required=True)
    f.add_argument("node", help="a node name, or a zone name (every node of the zone)")
    f.add_argument("kind", choices=list(FAULT_KINDS) + ["clear"])
    f.add_argument("--count", type=int)
    f.add_argument("--seconds", type=float)
    f.add_argument("--match")
    f.add_argument("--blocks", type=int)
    f.add_argument("--path")
    f.add_argument("--bytes", type=int)
    f.add_argument("--ms", type=int, help="net-delay: milliseconds added per round trip")
    f.add_argument("--pct", type=int, help="net-loss: percent of packets dropped each way")
    f.add_argument("--side", choices=["controller", "peers", "both"], help="net-partition: cut from whom")
    t = sub.add_parser("traffic", help="write objects with boto3 and record acknowledged writes")
    t.add_argument("--dir", required=True)
    t.add_argument("--duration", type=float, default=10.0)
    t.add_argument("--rate", type=float, default=20.0)
    t.add_argument("--bucket", default="bucket-00")
    t.add_argument("--verify", action="store_true", help="only verify the recorded acknowledged writes")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            spec = LabSpec(dir=args.dir, zones=args.zones, per_zone=args.per_zone, version=args.version,
                           meta_size=parse_size(args.meta_size), subnet=args.subnet, ssh_port=args.ssh_port,
                           seed=args.seed, objects_per_bucket=args.objects_per_bucket,
                           discovery=tuple(args.discovery), no_zstd=tuple(args.no_zstd), netns=args.netns)
            lab = Lab.up(spec, timeout=args.timeout)
            print(json.dumps({"dir": str(lab.dir), "up_seconds": lab.info["up_seconds"],
                              "inventory": str(lab.dir / "inventory.yaml"), "prometheus": lab.prometheus_url,
                              "s3": dict(lab.s3_credentials, endpoint=lab.s3_endpoint(),
                                         endpoints=[lab.s3_endpoint(n["name"]) for n in lab.nodes]),
                              "nodes": lab.nodes}, indent=1))
            return 0
        if args.cmd == "traffic":
            from . import traffic

            lab = Lab(args.dir)
            if args.verify:
                res = traffic.verify(lab)
                print(json.dumps(res, indent=1))
                return 0 if res["ok"] else 1
            print(json.dumps(asdict(traffic.write(lab, args.duration, args.rate, args.bucket)), indent=1))
            return 0
        lab = Lab(args.dir)
        if args.cmd == "status":
            print(json.dumps(lab.status(), indent=1))
        elif args.cmd == "inspect":
            print(json.dumps(lab.inspect(checksums=not args.no_checksums), indent=1, sort_keys=True))
        elif args.cmd == "fault":
            names = [n["name"] for n in lab.nodes if args.node in (n["name"], n["zone"])]
            if not names:
                lab.node(args.node)  # says there is no such node
            params = {"seconds": args.seconds, "match": args.match, "blocks": args.blocks,
                      "path": args.path, "bytes": args.bytes, "ms": args.ms, "pct": args.pct, "side": args.side}
            for name in names:
                if args.kind == "clear":
                    lab.clear_faults(name)
                else:
                    lab.fault(name, args.kind, args.count, **params)
        elif args.cmd == "down":
            print(json.dumps({"killed": lab.down()}))
        return 0
    except LabError as exc:
        print(f"garage-lab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
