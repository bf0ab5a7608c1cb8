"""Client traffic against the lab's object API, and proof that acknowledged writes survive.

``write`` PUTs small objects through the nodes' S3 ports in turn (like a client behind a load
balancer that tries the next node when one refuses) and appends every acknowledged write to
``<lab>/traffic/acks.jsonl``. ``verify`` reads the latest acknowledged version of every key
back and reports what is missing or different. The object API is the lab's minimal HTTP one
(PUT/GET/DELETE ``/<bucket>/<key>``), not the S3 protocol.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import time
from dataclasses import dataclass, field

from .harness import PORT_S3, Lab


@dataclass
class TrafficReport:
    """What a traffic run did."""

    attempted: int = 0
    acknowledged: int = 0
    refused: int = 0
    errors: dict = field(default_factory=dict)
    seconds: float = 0.0


def _request(addr: str, method: str, path: str, body: bytes | None = None, timeout: float = 5.0):
    conn = http.client.HTTPConnection(addr, PORT_S3, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def write(lab: Lab, duration: float, rate: float = 20.0, bucket: str = "bucket-00",
          seed: int | None = None, max_writes: int | None = None) -> TrafficReport:
    """PUT objects for ``duration`` seconds at about ``rate`` per second; record the acks."""
    rng = random.Random(seed if seed is not None else os.getpid() ^ int(time.time()))
    out_dir = lab.dir / "traffic"
    out_dir.mkdir(exist_ok=True)
    report = TrafficReport()
    t0 = time.monotonic()
    nodes = [n["addr"] for n in lab.nodes]
    run_id = f"{int(time.time())}-{rng.getrandbits(24):06x}"
    with open(out_dir / "acks.jsonl", "a") as acks:
        i = 0
        while time.monotonic() - t0 < duration and (max_writes is None or i < max_writes):
            key = f"traffic/{run_id}/{i:06d}"
            body = rng.randbytes(rng.randint(16, 2048))
            report.attempted += 1
            acked = False
            for k in range(len(nodes)):
                addr = nodes[(i + k) % len(nodes)]
                try:
                    status, _ = _request(addr, "PUT", f"/{bucket}/{key}", body)
                except OSError as exc:
                    report.errors[type(exc).__name__] = report.errors.get(type(exc).__name__, 0) + 1
                    continue
                if status == 200:
                    acks.write(json.dumps({"bucket": bucket, "key": key, "sha256": hashlib.sha256(body).hexdigest(),
                                           "size": len(body), "via": addr, "t": time.time()}) + "\n")
                    acks.flush()
                    acked = True
                    break
                report.errors[str(status)] = report.errors.get(str(status), 0) + 1
            report.acknowledged += acked
            report.refused += not acked
            i += 1
            next_at = t0 + i / rate
            time.sleep(max(0.0, next_at - time.monotonic()))
    report.seconds = round(time.monotonic() - t0, 2)
    return report


def verify(lab: Lab) -> dict:
    """Read back the latest acknowledged write of every key; report lost or changed ones."""
    ack_file = lab.dir / "traffic" / "acks.jsonl"
    latest: dict[tuple[str, str], dict] = {}
    if ack_file.exists():
        for line in ack_file.read_text().splitlines():
            if line.strip():
                a = json.loads(line)
                latest[(a["bucket"], a["key"])] = a
    nodes = [n["addr"] for n in lab.nodes]
    lost, changed, unreadable = [], [], []
    for i, ((bucket, key), a) in enumerate(sorted(latest.items())):
        answer = None
        for k in range(len(nodes)):
            try:
                status, body = _request(nodes[(i + k) % len(nodes)], "GET", f"/{bucket}/{key}")
            except OSError:
                continue
            if status in (200, 404):
                answer = (status, body)
                break
        if answer is None:
            unreadable.append(key)
        elif answer[0] == 404:
            lost.append(key)
        elif hashlib.sha256(answer[1]).hexdigest() != a["sha256"]:
            changed.append(key)
    return {"checked": len(latest), "lost": lost, "changed": changed, "unreadable": unreadable,
            "ok": not (lost or changed or unreadable)}
