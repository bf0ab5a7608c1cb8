"""Building blocks: tables, sizes (bytesize 1.1.0), durations (timeago 0.3.1), floats.

Part of :mod:`garage_lab.garage.render` (see its docstring for the conventions).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence



def format_table(rows: list[list[str]]) -> str:
    """Align rows like Garage's ``format_table_to_string`` (ref 2.3).

    Every column but a row's last cell is padded to the widest cell of that column plus two
    spaces; the last cell is written as is. Column widths count every cell, including the cells
    that are last in their row, so a ``NO ROLE ASSIGNED`` cell widens the Tags column (late 3.1)
    and an empty last cell leaves the padded previous cell, i.e. trailing spaces (late 1.1).

    Args:
        rows: the cells of each row; ``[""]`` (or ``[]``) is an empty line.

    Returns:
        One line per row, each ending with ``\\n``; ``""`` when there are no rows.
    """
    rows = [row or [""] for row in rows]
    widths: list[int] = []
    for row in rows:
        for i, cell in enumerate(row):
            if i == len(widths):
                widths.append(0)
            widths[i] = max(widths[i], len(cell))
    out = []
    for row in rows:
        padded = "".join(cell.ljust(widths[i] + 2) for i, cell in enumerate(row[:-1]))
        out.append(padded + row[-1] + "\n")
    return "".join(out)


# bytesize 1.1.0 swaps its two logarithm constants: LN_KB is ln(1024) and LN_KIB is ln(1000).
# The exponent of the base-1000 form is therefore picked with ln(1024) and vice versa, which is
# why 1 MiB prints as "1048.6 KB" (ref 2.13). The constants are copied digit for digit because
# ln(1048576)/ln(1024) must come out just below 2.0 as it does in Rust.
_LN_1024 = 6.931471806
_LN_1000 = 6.907755279


def bytesize(n: int, si: bool) -> str:
    """``bytesize::ByteSize::b(n).to_string_as(si)`` of bytesize 1.1.0 (ref 2.13).

    ``si=True`` is the binary form (``kiB``, ``MiB``...; base 1024), ``si=False`` the decimal one
    (``KB``, ``MB``...; base 1000), which is also what ``ByteSize``'s ``Display`` prints.

    Args:
        n: a byte count, 0 <= n < 2**64 (cast negative counters with ``n % 2**64`` first).
        si: which of the two forms.

    Returns:
        ``"<n> B"`` below one unit, else one decimal and a unit, e.g. ``"1.2 GiB"``.
    """
    if not 0 <= n < 2**64:
        raise ValueError(f"bytesize takes a u64, got {n}")
    unit, ln_base = (1024, _LN_1000) if si else (1000, _LN_1024)
    if n < unit:
        return f"{n} B"
    size = float(n)
    exp = max(1, int(math.log(size) / ln_base))
    prefix = ("kMGTPE" if si else "KMGTPE")[exp - 1]
    return f"{size / float(unit**exp):.1f} {prefix}{'iB' if si else 'B'}"


def _avail_cell(avail_total: tuple[int, int] | None, with_total: bool) -> str:
    """``1.2 TB (61.7%)`` (status) or ``1.2 TB/2.0 TB (61.7%)`` (stats); ``?`` when unknown."""
    if avail_total is None:
        return "?"
    avail, total = avail_total
    pct = avail / total * 100.0 if total else float("nan")
    shown = f"{bytesize(avail, False)}/{bytesize(total, False)}" if with_total else bytesize(avail, False)
    return f"{shown} ({pct:.1f}%)"


def data_avail_cell(avail: int, total: int) -> str:
    """The ``DataAvail`` cell of ``status`` for a node that reported its disk (late 3.1).

    Args:
        avail: available bytes on the data disk.
        total: total bytes of the data disk.

    Returns:
        e.g. ``"1.2 TB (61.7%)"`` (bytesize Display, base 1000).
    """
    return _avail_cell((avail, total), with_total=False)


# timeago 0.3.1: a month is S_IN_MNTH = 2_628_003 s and a year is 12 months.
_TIMEAGO_UNITS = (
    ("year", 12 * 2_628_003),
    ("month", 2_628_003),
    ("week", 7 * 86_400),
    ("day", 86_400),
    ("hour", 3_600),
    ("minute", 60),
    ("second", 1),
)


def _timeago_amount(secs: float) -> str | None:
    """The largest unit that fits, floored (``17 seconds``); ``None`` under one second."""
    for name, size in _TIMEAGO_UNITS:
        if secs >= size:
            count = int(secs // size)
            return f"{count} {name}{'' if count == 1 else 's'}"
    return None


def timeago(secs: float) -> str:
    """``timeago::Formatter::new().convert(d)`` as Garage 0.8 uses it (ref 2.7).

    Args:
        secs: the elapsed time in seconds.

    Returns:
        ``now`` under 1 s, else one unit only: ``1 second ago``, ``3 hours ago``, ``2 days ago``.
    """
    amount = _timeago_amount(secs)
    return "now" if amount is None else f"{amount} ago"


def timeago_future(secs: float) -> str:
    """The ``Next try`` cell of ``block list-errors`` (late 3.3).

    Args:
        secs: seconds until the event; negative when it is overdue.

    Returns:
        ``in 3 minutes``, ``in now`` under 1 s, ``in asap`` when overdue (0.8.3+; 0.8.1-0.8.2
        underflowed instead, which the lab does not simulate).
    """
    if secs < 0:
        return "in asap"
    return f"in {_timeago_amount(secs) or 'now'}"


def _f32(x: float) -> float:
    """The value Rust holds in an ``f32`` (Garage's throttle durations are ``f32``)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _tags(tags: Sequence[str]) -> str:
    return ",".join(tags)


def _capacity(capacity: int | None) -> str:
    """``NodeRole::capacity_string``: the number, or ``gateway``."""
    return "gateway" if capacity is None else str(capacity)


