"""Client traffic through a real S3 client (boto3), and proof that acknowledged writes survive.

``write`` PUTs small objects through the nodes' S3 ports in turn (like a client behind a load
balancer that tries the next node when one refuses) and appends every acknowledged write to
``<lab>/traffic/acks.jsonl``. ``verify`` reads the latest acknowledged version of every key
back and reports what is missing or different. :class:`Traffic` runs ``write`` in a background
thread for as long as a test or the demo needs (start, stop, counts, when it stopped).

The client is boto3, signing with the access key of the lab's data set (AWS SigV4, path-style
addressing, region ``garage``): the claim that every acknowledged write survives a migration
is checked by a client nobody here wrote. Retries are off and timeouts short, so one refused
or lost request counts as what it was instead of being hidden by a retry.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field

from .harness import Lab, LabError

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 5.0


@dataclass
class TrafficReport:
    """What a traffic run did."""

    attempted: int = 0
    acknowledged: int = 0
    refused: int = 0
    errors: dict = field(default_factory=dict)
    seconds: float = 0.0


def s3_client(lab: Lab, node: str | None = None, access_key_id: str | None = None,
              secret_access_key: str | None = None):
    """A boto3 S3 client for node ``node`` (default: the first), with the lab's key by default.

    Raises:
        LabError: boto3 is not installed (it comes with the ``test`` extra).
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise LabError("boto3 is missing: run `make deps` (it is in the test extra of pyproject.toml)") from None
    creds = lab.s3_credentials
    cfg = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                 retries={"total_max_attempts": 1, "mode": "standard"},
                 connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                 # plain PUTs with a Content-Length (no aws-chunked trailers) over http
                 request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return boto3.session.Session().client(
        "s3", endpoint_url=lab.s3_endpoint(node), region_name=creds["region"], config=cfg,
        aws_access_key_id=access_key_id or creds["access_key_id"],
        aws_secret_access_key=secret_access_key or creds["secret_access_key"])


def _error_name(exc: Exception) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or exc.response["Error"].get("Code"))
    return type(exc).__name__


def write(lab: Lab, duration: float, rate: float = 20.0, bucket: str = "bucket-00",
          seed: int | None = None, max_writes: int | None = None,
          stop: threading.Event | None = None, report: TrafficReport | None = None) -> TrafficReport:
    """PUT objects for ``duration`` seconds (or until ``stop`` is set) at about ``rate`` per
    second; record the acknowledged ones. ``report`` is updated as writes happen."""
    from botocore.exceptions import BotoCoreError, ClientError

    rng = random.Random(seed if seed is not None else os.getpid() ^ int(time.time()))
    out_dir = lab.dir / "traffic"
    out_dir.mkdir(exist_ok=True)
    report = report if report is not None else TrafficReport()
    nodes = [(n["addr"], s3_client(lab, n["name"])) for n in lab.nodes]
    t0 = time.monotonic()
    run_id = f"{int(time.time())}-{rng.getrandbits(24):06x}"
    with open(out_dir / "acks.jsonl", "a") as acks:
        i = 0
        while time.monotonic() - t0 < duration and (max_writes is None or i < max_writes) \
                and not (stop is not None and stop.is_set()):
            key = f"traffic/{run_id}/{i:06d}"
            body = rng.randbytes(rng.randint(16, 2048))
            report.attempted += 1
            acked = False
            for k in range(len(nodes)):
                addr, client = nodes[(i + k) % len(nodes)]
                try:
                    client.put_object(Bucket=bucket, Key=key, Body=body)
                except (ClientError, BotoCoreError) as exc:
                    name = _error_name(exc)
                    report.errors[name] = report.errors.get(name, 0) + 1
                    continue
                acks.write(json.dumps({"bucket": bucket, "key": key, "sha256": hashlib.sha256(body).hexdigest(),
                                       "size": len(body), "via": addr, "t": time.time()}) + "\n")
                acks.flush()
                acked = True
                break
            report.acknowledged += acked
            report.refused += not acked
            i += 1
            delay = max(0.0, t0 + i / rate - time.monotonic())
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
    report.seconds = round(report.seconds + time.monotonic() - t0, 2)
    return report


def verify(lab: Lab) -> dict:
    """Read back the latest acknowledged write of every key; report lost or changed ones."""
    from botocore.exceptions import BotoCoreError, ClientError

    ack_file = lab.dir / "traffic" / "acks.jsonl"
    latest: dict[tuple[str, str], dict] = {}
    if ack_file.exists():
        for line in ack_file.read_text().splitlines():
            if line.strip():
                a = json.loads(line)
                latest[(a["bucket"], a["key"])] = a
    clients = [s3_client(lab, n["name"]) for n in lab.nodes] if latest else []
    lost, changed, unreadable = [], [], []
    for i, ((bucket, key), a) in enumerate(sorted(latest.items())):
        answer = None
        for k in range(len(clients)):
            try:
                answer = clients[(i + k) % len(clients)].get_object(Bucket=bucket, Key=key)["Body"].read()
                break
            except ClientError as exc:
                if exc.response["Error"].get("Code") == "NoSuchKey":
                    answer = False
                    break
            except BotoCoreError:
                continue
        if answer is None:
            unreadable.append(key)
        elif answer is False:
            lost.append(key)
        elif hashlib.sha256(answer).hexdigest() != a["sha256"]:
            changed.append(key)
    return {"checked": len(latest), "lost": lost, "changed": changed, "unreadable": unreadable,
            "ok": not (lost or changed or unreadable)}


class Traffic:
    """Client writes in a background thread, from ``start()`` until ``stop()`` (or a ``with`` block).

    Attributes:
        report: the running totals (attempted, acknowledged, refused, errors).
        stopped_at: wall-clock time (``time.time()``) when the writer had stopped, else None;
            no write is acknowledged after it.
    """

    def __init__(self, lab: Lab, rate: float = 10.0, bucket: str = "bucket-00", seed: int | None = None):
        self.lab, self.rate, self.bucket, self.seed = lab, rate, bucket, seed
        self.report = TrafficReport()
        self.stopped_at: float | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lab-traffic")

    def _run(self) -> None:
        try:
            write(self.lab, math.inf, self.rate, self.bucket, self.seed, stop=self._stop, report=self.report)
        except BaseException as exc:  # noqa: BLE001 - kept for stop() to raise in the caller's thread
            self.error = exc

    def start(self) -> "Traffic":
        """Start writing in the background; returns self."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop writing and wait for the writer (idempotent).

        Raises:
            LabError: the writer did not stop within ``timeout``, or it failed.
        """
        if self.stopped_at is not None:
            return
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise LabError("the traffic thread did not stop")
        self.stopped_at = time.time()
        if self.error is not None:
            raise LabError(f"the traffic writer failed: {self.error!r}") from self.error

    def __enter__(self) -> "Traffic":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def acknowledged(self) -> int:
        """Writes acknowledged so far."""
        return self.report.acknowledged

    @property
    def refused(self) -> int:
        """Writes that no node acknowledged."""
        return self.report.refused
