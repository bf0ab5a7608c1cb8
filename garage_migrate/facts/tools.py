"""Facts about the node's tools (not Garage's): what the plan may ask the node to run."""

from __future__ import annotations

import re

__all__ = ["parse_zstd_version"]

_ZSTD_VERSION = re.compile(r"\bv(\d+\.\d+\.\d+)\b")


def parse_zstd_version(returncode: int, stdout: str) -> str | None:
    """The version of the node's ``zstd`` CLI from ``zstd --version``, or ``None`` when it has none.

    ``*** Zstandard CLI (64-bit) v1.5.4, by Yann Collet ***`` -> ``"1.5.4"``; a failed call
    (exit 127: not installed) or an output that names no version means "no usable zstd": the
    backup then compresses on the controller.
    """
    if returncode != 0:
        return None
    m = _ZSTD_VERSION.search(stdout)
    return m.group(1) if m else None
