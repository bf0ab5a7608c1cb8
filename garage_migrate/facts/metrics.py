"""Prometheus text exposition (format 0.0.4) as served by Garage's ``/metrics``.

Garage 0.8 exports its queue gauges without a ``_total`` suffix (opentelemetry-prometheus
0.10); 0.7.3 exports only ``api_*`` and ``web_*`` series because its table/block/rpc
instruments were bound to the no-op provider (reference section 4.3). Absent series therefore
stay ``None`` in :class:`~garage_migrate.facts.models.QueueMetrics`; they are never read as 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from ._table import numbered_lines
from .models import ParseError, QueueMetrics, Sample

__all__ = ["parse_exposition", "parse_queue_metrics", "queue_metrics"]

_COMMAND = "metrics"
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE_RE = re.compile(rf"({_NAME})(\{{.*\}})?[ \t]+(\S+)(?:[ \t]+(-?\d+))?[ \t]*")
_LABEL_RE = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*')
_VALUE_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?Inf|NaN")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _unescape(raw: str, line: tuple[int, str]) -> str:
    out = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\":
            nxt = raw[i + 1:i + 2]
            if nxt not in _ESCAPES:
                raise ParseError(f"bad escape '\\{nxt}' in a label value", command=_COMMAND,
                                 line_no=line[0], line=line[1])
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _labels(body: str, line: tuple[int, str]) -> tuple[tuple[str, str], ...]:
    inner = body[1:-1]
    labels: list[tuple[str, str]] = []
    pos = 0
    while pos < len(inner):
        m = _LABEL_RE.match(inner, pos)
        if m is None:
            raise ParseError("bad label set", command=_COMMAND, line_no=line[0], line=line[1])
        key = m.group(1)
        if any(k == key for k, _ in labels):
            raise ParseError(f"repeated label {key!r}", command=_COMMAND, line_no=line[0],
                             line=line[1])
        labels.append((key, _unescape(m.group(2), line)))
        pos = m.end()
        if pos < len(inner):
            if inner[pos] != ",":
                raise ParseError("expected ',' between labels", command=_COMMAND,
                                 line_no=line[0], line=line[1])
            pos += 1
    return tuple(labels)


def parse_exposition(text: str) -> dict[str, list[Sample]]:
    """Parse Prometheus text exposition into samples grouped by sample name.

    ``# HELP`` and ``# TYPE`` lines are checked (a TYPE must name a known type, once per
    family), other comments and blank lines are skipped. Histogram series keep their own
    names (``x_bucket``, ``x_sum``, ``x_count``); ``le="+Inf"`` stays the string it is.

    Returns:
        ``{sample name: [Sample, ...]}`` in exposition order.

    Raises:
        ParseError: a malformed line, naming it.
    """
    out: dict[str, list[Sample]] = {}
    typed: set[str] = set()
    for line in numbered_lines(text):
        no, raw = line
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            parts = stripped.split(None, 3)
            if len(parts) >= 2 and parts[1] == "TYPE":
                if len(parts) != 4 or not re.fullmatch(_NAME, parts[2]) or parts[3] not in _TYPES:
                    raise ParseError("bad TYPE line", command=_COMMAND, line_no=no, line=raw)
                if parts[2] in typed:
                    raise ParseError("repeated TYPE line", command=_COMMAND, line_no=no, line=raw)
                typed.add(parts[2])
            elif len(parts) >= 2 and parts[1] == "HELP":
                if len(parts) < 3 or not re.fullmatch(_NAME, parts[2]):
                    raise ParseError("bad HELP line", command=_COMMAND, line_no=no, line=raw)
            continue
        m = _SAMPLE_RE.fullmatch(stripped)
        if m is None or not _VALUE_RE.fullmatch(m.group(3)):
            raise ParseError("not a sample line", command=_COMMAND, line_no=no, line=raw)
        labels = _labels(m.group(2), line) if m.group(2) else ()
        sample = Sample(name=m.group(1), labels=labels, value=float(m.group(3)))
        out.setdefault(sample.name, []).append(sample)
    return out


def _count(sample: Sample) -> int:
    v = sample.value
    if math.isnan(v) or math.isinf(v) or v < 0 or not v.is_integer():
        raise ParseError(f"queue length {v!r} of {sample.name} is not a count",
                         command=_COMMAND)
    return int(v)


def _per_table(samples: Sequence[Sample] | None) -> tuple[tuple[str, int], ...] | None:
    if not samples:
        return None
    out: list[tuple[str, int]] = []
    for s in samples:
        table = s.label("table_name")
        if table is None:
            raise ParseError(f"{s.name} sample without table_name", command=_COMMAND)
        if any(t == table for t, _ in out):
            raise ParseError(f"{s.name} repeated for table {table}", command=_COMMAND)
        out.append((table, _count(s)))
    return tuple(out)


def _single(samples: Sequence[Sample] | None) -> int | None:
    if not samples:
        return None
    if len(samples) != 1:
        raise ParseError(f"{samples[0].name} has {len(samples)} series, expected one",
                         command=_COMMAND)
    return _count(samples[0])


def queue_metrics(samples: Mapping[str, Sequence[Sample]]) -> QueueMetrics:
    """Extract the sync-gate queues from parsed samples (absent series give ``None``).

    Raises:
        ParseError: a queue series with a non-count value, a missing ``table_name``, or a
            repeated series.
    """
    return QueueMetrics(
        merkle_todo=_per_table(samples.get("table_merkle_updater_todo_queue_length")),
        gc_todo=_per_table(samples.get("table_gc_todo_queue_length")),
        resync_queue=_single(samples.get("block_resync_queue_length")),
        resync_errors=_single(samples.get("block_resync_errored_blocks")),
    )


def parse_queue_metrics(text: str) -> QueueMetrics:
    """Parse a ``/metrics`` body straight into :class:`QueueMetrics`.

    Raises:
        ParseError: see :func:`parse_exposition` and :func:`queue_metrics`.
    """
    return queue_metrics(parse_exposition(text))
