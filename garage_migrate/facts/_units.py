"""Durations and sizes as Garage prints them.

- "Last seen" ages: 0.7.3 prints ``<N>s ago``; 0.8 uses the timeago 0.3.1 crate with one unit
  (``now``, ``1 second ago``, ``17 seconds ago``, ``1 minute ago``, ... ``2 years ago``).
- Sizes: bytesize 1.1 ``to_string_as(true)`` gives ``1.2 GiB`` (base 1024, lowercase ``kiB``),
  ``to_string_as(false)`` and ``Display`` give ``1.3 GB`` (base 1000); both keep one decimal,
  and below one unit they print ``<n> B``. The exponent quirk (reference 2.13) only changes
  which unit is chosen, not what a printed value means, so reading back needs no quirk.
"""

from __future__ import annotations

import math
import re

_TIMEAGO_UNITS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    # timeago's month and year lengths are not in the references; 30 and 365 days keep the
    # result a lower bound for every plausible definition (30.44 / 365.25 days included).
    "month": 30 * 86400,
    "year": 365 * 86400,
}
_TIMEAGO_RE = re.compile(r"(\d+) (second|minute|hour|day|week|month|year)(s?) ago")
_SECS_AGO_RE = re.compile(r"(\d+)s ago")


def parse_ago(text: str) -> float | None:
    """Read a "Last seen" cell as seconds, a lower bound of the real age.

    Args:
        text: ``never seen``, ``<N>s ago`` (0.7.3) or a timeago string (0.8).

    Returns:
        Seconds, or ``None`` for ``never seen``.

    Raises:
        ValueError: anything else (including a wrong singular/plural, which timeago never prints).
    """
    if text == "never seen":
        return None
    if text == "now":
        return 0.0
    m = _SECS_AGO_RE.fullmatch(text)
    if m:
        return float(m.group(1))
    m = _TIMEAGO_RE.fullmatch(text)
    if m:
        n = int(m.group(1))
        if (n == 1) == (m.group(3) == "s"):
            raise ValueError(f"bad plural in age {text!r}")
        return float(n * _TIMEAGO_UNITS[m.group(2)])
    raise ValueError(f"not an age: {text!r}")


_BINARY_PREFIX = {"k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
_DECIMAL_PREFIX = {"K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
_SIZE_RE = re.compile(r"(\d+) B|(\d+\.\d) (?:([kMGTPE])iB|([KMGTPE])B)")
_PAIR_RE = re.compile(r"(.+?) \((.+)\)")
U64_MAX = 2**64 - 1


def size_interval(text: str) -> tuple[float, float]:
    """Return the byte interval a single bytesize string stands for.

    ``1.2 GiB`` means anything that rounds to 1.2 at one decimal, i.e. [1.15, 1.25] GiB.

    Raises:
        ValueError: not a bytesize string.
    """
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"not a size: {text!r}")
    if m.group(1) is not None:
        n = float(m.group(1))
        return n, n
    value = float(m.group(2))
    if m.group(3) is not None:
        unit = 1024 ** _BINARY_PREFIX[m.group(3)]
    else:
        unit = 1000 ** _DECIMAL_PREFIX[m.group(4)]
    return (value - 0.05) * unit, (value + 0.05) * unit


def parse_size_pair(text: str) -> int:
    """Read ``<binary> (<decimal>)`` (e.g. ``1.2 GiB (1.3 GB)``) back to approximate bytes.

    Both forms are rounded, so the result is the middle of the intersection of the two
    intervals they stand for. A negative counter cast to u64 reads as about 2**64.

    Raises:
        ValueError: not such a pair, or the two forms contradict each other.
    """
    m = _PAIR_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"not a size pair: {text!r}")
    lo1, hi1 = size_interval(m.group(1))
    lo2, hi2 = size_interval(m.group(2))
    lo, hi = max(lo1, lo2), min(hi1, hi2)
    # A little slack: the decimal rounding in Rust and the float maths here can disagree in
    # the last ulp at an interval edge.
    if lo > hi * (1 + 1e-9):
        raise ValueError(f"size forms disagree: {text!r}")
    if lo == hi:
        return min(int(lo), U64_MAX)
    return min(int(math.floor((lo + hi) / 2)), U64_MAX)
