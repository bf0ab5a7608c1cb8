"""Sizes as the lab's commands take them: one parser, one meaning.

Every unit is binary (``K`` = ``KB`` = ``KiB`` = 2^10, ``M`` = ``MB`` = ``MiB`` = 2^20, ...):
the lab's ``--meta-size``, the backup benchmark's ``--size`` and the simulated
``bucket set-quotas --max-size`` all read a size through :func:`parse_size`, so ``64M`` means
the same everywhere. (Garage's bytesize crate reads ``MB`` as 10^6; no test or caller of the
lab passes a decimal unit, and the orchestrator never parses these inputs.)
"""

from __future__ import annotations

_POWERS = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """``64MiB`` / ``2G`` / ``512k`` / ``123`` to bytes (binary units; case-insensitive).

    Raises:
        ValueError: not a number followed by an optional unit.
    """
    s = text.strip().lower()
    i = len(s)
    while i and not (s[i - 1].isdigit() or s[i - 1] == "."):
        i -= 1
    number, unit = s[:i].strip(), s[i:].strip()
    if unit not in _POWERS:
        unit = unit.removesuffix("ib").removesuffix("b")
    if not number or unit not in _POWERS:
        raise ValueError(f"not a size: {text!r} (e.g. 64MiB, 2G, 123)")
    return int(float(number) * (1 << (10 * _POWERS[unit])))
