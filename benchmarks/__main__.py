"""``python -m benchmarks [name ...]``: run every benchmark (or the named ones) and print figures."""

from __future__ import annotations

import importlib
import sys

from . import ALL


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks named in ``argv`` (all by default); return the worst exit status."""
    names = list(argv if argv is not None else sys.argv[1:]) or list(ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(ALL)}", file=sys.stderr)
        return 2
    rc = 0
    for name in names:
        print(f"=== benchmark: {name} ===", flush=True)
        rc = max(rc, importlib.import_module(f"benchmarks.{name}").main([]))
    return rc


if __name__ == "__main__":
    from benchmarks import exit_on_signals

    exit_on_signals()
    sys.exit(main())
