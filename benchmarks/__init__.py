"""Benchmarks: ``python -m benchmarks`` runs them all (``make bench``); each module runs alone too
(``python -m benchmarks.backup --help``). They print figures; they never fail on speed."""

#: Modules run by ``python -m benchmarks``, in order.
ALL = ("lab", "backup", "sync_gate", "downtime", "commands", "flow_overhead")


def exit_on_signals() -> None:
    """Make SIGTERM and SIGINT end a benchmark run from the command line through its ``finally``
    blocks, so that its labs and Prefect server are stopped: by default SIGTERM kills the
    process outright, and a run started in the background has SIGINT ignored."""
    import signal

    def stop(signum, _frame):
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
