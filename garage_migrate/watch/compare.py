"""Compare one watch observation with the baseline (pure: no I/O, no clock).

What counts as a regression (each a line in :attr:`Comparison.regressions`, which raises the
``watch.regression`` event):

- a node that was up at the baseline is down (or unread);
- more errored blocks (``resync_errors``) on a node than at the baseline;
- a resync or Merkle queue more than ``queue_margin`` above the baseline's;
- an API's error ratio (errors / requests) above ``error_ratio_max`` times the baseline's,
  and above it by at least ``error_floor`` (a few errors on a quiet node are not a
  regression); absent rates are not compared;
- a bucket of the baseline that is gone, a bucket counter that is negative, or the buckets'
  objects summing to less than ``(1 - objects_drop_max)`` times what the baseline's object
  tables implied (per bucket too when the baseline had counters, i.e. was taken on 0.8).

Anything else that differs (a queue still draining, a rate that changed) is shown, not raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import APIS, Snapshot


@dataclass(frozen=True)
class Thresholds:
    """Where a difference becomes a regression (see the module docstring)."""

    error_ratio_max: float = 2.0
    error_floor: float = 0.01
    queue_margin: int = 1000
    objects_drop_max: float = 0.10


@dataclass(frozen=True)
class NodeRow:
    """One node, baseline against now (``None``: unknown on that side)."""

    node: str
    up: tuple[bool | None, bool]
    errored_blocks: tuple[int | None, int | None]
    resync_queue: tuple[int | None, int | None]
    merkle_todo: tuple[int | None, int | None]
    error_ratio: dict[str, tuple[float | None, float | None]]
    requests: dict[str, tuple[float | None, float | None]]
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class BucketRow:
    """One bucket, baseline against now."""

    bucket: str
    alias: str
    objects: tuple[int | None, int | None]
    bytes: tuple[int | None, int | None]
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Comparison:
    """An observation compared with the baseline."""

    at: float
    nodes: tuple[NodeRow, ...]
    buckets: tuple[BucketRow, ...]
    objects: tuple[int | None, int | None]  # implied by the baseline's tables, counted by the buckets now
    regressions: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """No regression."""
        return not self.regressions


def error_ratio(rates: dict[str, float | None], api: str) -> float | None:
    """``errors / requests`` of ``api``; ``None`` when the requests are absent or none came.

    An absent *error* series beside a present request series is no error: Garage exports a
    counter only after its first increment (ref 4.2), and both come from the same scrape, so
    the target was read.
    """
    req_key, err_key = APIS[api]
    req, err = rates.get(req_key), rates.get(err_key)
    if req is None or req <= 0:
        return None
    return (err or 0.0) / req


def _above(base: int | None, now: int | None, margin: int) -> bool:
    return now is not None and now > (base or 0) + margin


def _compare_node(name: str, base: Snapshot, now: Snapshot, th: Thresholds) -> NodeRow:
    b, n = base.nodes.get(name), now.nodes.get(name)
    problems: list[str] = []
    if (n is None or not n.up) and (b is None or b.up):
        problems.append(f"{name}: down" + (f" ({n.detail})" if n is not None and n.detail else ""))
    b_err = b.resync_errors if b else None
    n_err = n.resync_errors if n else None
    if n_err is not None and n_err > (b_err or 0):
        problems.append(f"{name}: {n_err} errored blocks (baseline {b_err if b_err is not None else 'unknown'})")
    for what in ("resync_queue", "merkle_todo"):
        bv, nv = (getattr(b, what) if b else None), (getattr(n, what) if n else None)
        if _above(bv, nv, th.queue_margin):
            problems.append(f"{name}: {what.replace('_', ' ')} {nv} (baseline {bv}, margin {th.queue_margin})")
    ratios, requests = {}, {}
    for api, (req_key, _err_key) in APIS.items():
        br = error_ratio(b.rates, api) if b else None
        nr = error_ratio(n.rates, api) if n else None
        ratios[api] = (br, nr)
        requests[api] = ((b.rates.get(req_key) if b else None), (n.rates.get(req_key) if n else None))
        if nr is not None and nr > (br or 0.0) * th.error_ratio_max and nr - (br or 0.0) >= th.error_floor:
            problems.append(f"{name}: {api} error ratio {nr:.1%} (baseline "
                            f"{'unknown' if br is None else f'{br:.1%}'}, max x{th.error_ratio_max:g})")
    return NodeRow(node=name, up=(b.up if b else None, bool(n and n.up)), errored_blocks=(b_err, n_err),
                   resync_queue=(b.resync_queue if b else None, n.resync_queue if n else None),
                   merkle_todo=(b.merkle_todo if b else None, n.merkle_todo if n else None),
                   error_ratio=ratios, requests=requests, problems=tuple(problems))


def _compare_buckets(base: Snapshot, now: Snapshot, th: Thresholds) -> list[BucketRow]:
    rows = []
    for bid in sorted(set(base.buckets) | set(now.buckets), key=lambda i: (base.buckets.get(i) or now.buckets[i]).alias):
        b, n = base.buckets.get(bid), now.buckets.get(bid)
        alias = (n or b).alias
        problems = []
        if n is None:
            problems.append(f"bucket {alias}: gone since the baseline")
        elif (n.objects is not None and n.objects < 0) or (n.bytes is not None and (n.bytes < 0 or n.bytes >= 2**63)):
            problems.append(f"bucket {alias}: negative counters ({n.objects} objects)")
        elif b is not None and b.objects is not None and n.objects is not None \
                and n.objects < b.objects * (1 - th.objects_drop_max):
            problems.append(f"bucket {alias}: {n.objects} objects, baseline {b.objects}")
        rows.append(BucketRow(bucket=bid, alias=alias, objects=(b.objects if b else None, n.objects if n else None),
                              bytes=(b.bytes if b else None, n.bytes if n else None), problems=tuple(problems)))
    return rows


#: the thresholds of the module docstring
DEFAULT_THRESHOLDS = Thresholds()


def compare(base: Snapshot, now: Snapshot, th: Thresholds = DEFAULT_THRESHOLDS) -> Comparison:
    """Compare the observation ``now`` with the baseline ``base`` (see the module docstring)."""
    nodes = tuple(_compare_node(name, base, now, th) for name in sorted(set(base.nodes) | set(now.nodes)))
    buckets = tuple(_compare_buckets(base, now, th))
    counted = [r.objects[1] for r in buckets if r.objects[1] is not None]
    total = sum(counted) if counted and len(counted) == len(now.buckets) else None
    regressions = [p for r in nodes for p in r.problems] + [p for r in buckets for p in r.problems]
    if base.implied_objects and total is not None and total < base.implied_objects * (1 - th.objects_drop_max):
        regressions.append(f"buckets count {total} objects, the baseline's object tables implied "
                           f"{base.implied_objects} (more than {th.objects_drop_max:.0%} fewer)")
    return Comparison(at=now.at, nodes=nodes, buckets=buckets, objects=(base.implied_objects, total),
                      regressions=tuple(regressions), notes=tuple(now.notes))
