"""Benchmarks: ``python -m benchmarks`` runs them all (``make bench``); each module runs alone too
(``python -m benchmarks.backup --help``). They print figures; they never fail on speed."""

#: Modules run by ``python -m benchmarks``, in order.
ALL = ("lab", "backup", "sync_gate", "downtime", "commands", "flow_overhead")
