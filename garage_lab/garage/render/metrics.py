"""The Prometheus text exposition of ``/metrics``.

Part of :mod:`garage_lab.garage.render` (see its docstring for the conventions).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from ..personality import Personality


@dataclass(frozen=True)
class HistogramSample:
    """A histogram series: cumulative bucket counts, sum and count.

    Attributes:
        buckets: ``(le, cumulative count)`` for each finite bound, ``le`` as printed (``"0.5"``).
        sum: sum of the observations.
        count: number of observations (the ``+Inf`` bucket).
    """

    buckets: tuple[tuple[str, int], ...]
    sum: float
    count: int

    @classmethod
    def from_observations(cls, bounds: Sequence[str], values: Iterable[float]) -> HistogramSample:
        """Bucket raw observations the way the opentelemetry 0.17 SDK does.

        The SDK puts a value in the first bucket whose bound is strictly greater than it, so a
        value equal to a bound is counted in the *next* bucket [dep-inf]. ``+Inf`` in ``bounds``
        is ignored (it is always implied).

        Args:
            bounds: the ``le`` strings, e.g. ``p.histogram_buckets``.
            values: the observations.

        Returns:
            The sample.
        """
        finite = [b for b in bounds if b != "+Inf"]
        limits = [float(b) for b in finite]
        per_bucket = [0] * (len(limits) + 1)
        total, count = 0.0, 0
        for v in values:
            index = next((i for i, limit in enumerate(limits) if v < limit), len(limits))
            per_bucket[index] += 1
            total += v
            count += 1
        cumulative, running = [], 0
        for le, n in zip(finite, per_bucket):
            running += n
            cumulative.append((le, running))
        return cls(tuple(cumulative), total, count)


@dataclass(frozen=True)
class MetricFamily:
    """One metric family for :func:`render_exposition`.

    Attributes:
        name: metric name (dots already replaced by underscores; no ``_total`` suffix).
        help: description for ``# HELP`` (omitted when empty).
        type: ``counter``, ``gauge`` or ``histogram``.
        samples: ``(labels, value)``; for histograms the value is a :class:`HistogramSample` or
            the raw observations (bucketed with the personality's ``histogram_buckets``).
    """

    name: str
    help: str
    type: str
    samples: list[tuple[dict[str, str], float | HistogramSample | Sequence[float]]]


def format_float(value: float) -> str:
    """Rust's ``f64`` Display, as the prometheus crate prints sample values.

    Integral values have no ``.0`` (``1``, ``4182``), there is never an exponent
    (``0.0000001``), and the specials are ``inf``, ``-inf`` and ``NaN``.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == int(value):
        return str(int(value))
    return format(Decimal(repr(value)), "f")


def _escape(text: str, quotes: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quotes else text


def _labels(labels: dict[str, str], extra: tuple[str, str] | None = None) -> str:
    pairs = sorted(labels.items()) + ([extra] if extra else [])
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v, True)}"' for k, v in pairs) + "}"


def _series_order(sample: tuple[dict[str, str], object]) -> tuple:
    """prometheus' ``Registry::gather`` order: label count, then label values by label name."""
    labels = sample[0]
    return (len(labels), [v for _k, v in sorted(labels.items())])


def render_exposition(p: Personality, families: list[MetricFamily]) -> str:
    """``GET /metrics``: prometheus text format as opentelemetry-prometheus 0.10 serves it (ref 4.2).

    Following the prometheus crate 0.13 (``Registry::gather`` + ``TextEncoder``) [dep, from
    memory]: families sorted by name, empty families dropped, series sorted by label values,
    label names sorted, ``# HELP`` only when there is a description, values in Rust ``f64``
    Display form (so integers print without ``.0``), histograms as ``_bucket{le=...}`` with a
    final ``+Inf`` bucket, then ``_sum`` and ``_count``.

    Args:
        p: the personality; gives the ``le`` bounds for raw histogram observations.
        families: the metric families.

    Returns:
        The exposition text.
    """
    out = []
    for fam in sorted(families, key=lambda f: f.name):
        if not fam.samples:
            continue
        if fam.help:
            out.append(f"# HELP {fam.name} {_escape(fam.help, False)}\n")
        out.append(f"# TYPE {fam.name} {fam.type}\n")
        for labels, value in sorted(fam.samples, key=_series_order):
            if fam.type != "histogram":
                out.append(f"{fam.name}{_labels(labels)} {format_float(float(value))}\n")
                continue
            h = value if isinstance(value, HistogramSample) else HistogramSample.from_observations(p.histogram_buckets, value)
            for le, n in h.buckets + (("+Inf", h.count),):
                out.append(f"{fam.name}_bucket{_labels(labels, ('le', le))} {n}\n")
            out.append(f"{fam.name}_sum{_labels(labels)} {format_float(h.sum)}\n")
            out.append(f"{fam.name}_count{_labels(labels)} {h.count}\n")
    return "".join(out)
