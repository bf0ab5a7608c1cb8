"""Holding SIGTERM and SIGINT while the simultaneous restart runs (fault row 25).

A cancel from the Prefect UI moves the run to Cancelling; the worker sends the flow's process
SIGTERM, waits a grace period (30 s) and then SIGKILLs it (Prefect 3.9:
``runner/_process_manager.py``, ``runner/_cancellation_manager.py``); the engine's SIGTERM
handler raises ``TerminationSignal``, which ends the run Cancelled. Raised in the middle of
the flip, that would leave some nodes stopped or on 0.8 while others still run 0.7.

So while the flip unit runs, :class:`SignalDeferral` replaces those handlers with one that
only records the signal and its time; on leaving, it puts the previous handlers back, and the
executor records a ``cancel-deferred`` event and then delivers the signal again
(:meth:`SignalDeferral.deliver`): the previous handler (Prefect's, Python's
``KeyboardInterrupt``) ends the run as it would have. A SIGKILL cannot be held: the next run's
flip-resume (:mod:`.flipresume`) finishes the flip from what it finds on the nodes.

Signal handlers can only be set from the main thread: elsewhere nothing is held, and the log
says so. A step runner may bring its own subclass (``StepRunner.signal_deferral``): the Prefect
adapter's keeps Prefect's cancel handshake working while the signal is held
(:mod:`flows.cancel`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

HELD = (signal.SIGTERM, signal.SIGINT)


class SignalDeferral:
    """A context manager that holds :data:`HELD` signals while it is open.

    Attributes:
        received: ``(signal number, time.time())`` of every signal held, in order.
        active: whether the handlers were installed (main thread only).
    """

    def __init__(self, log: logging.Logger | logging.LoggerAdapter | None = None, signals=HELD):
        self.log = log or logging.getLogger("garage_migrate.executor")
        self.signals = tuple(signals)
        self.received: list[tuple[int, float]] = []
        self.active = False
        self._previous: dict[int, object] = {}
        self.handler = self._hold  # one object: what signal.getsignal returns while held

    def _hold(self, signum, frame) -> None:
        self.received.append((signum, time.time()))

    def __enter__(self) -> SignalDeferral:
        if threading.current_thread() is not threading.main_thread():
            self.log.warning("flip: not in the main thread: a cancel during the flip cannot be held")
            return self
        for s in self.signals:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self.handler)
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous.clear()

    def describe(self) -> str:
        """``SIGTERM at 01:02:03.456 UTC`` for every held signal."""
        return ", ".join(f"{signal.Signals(s).name} at {_utc(t)}" for s, t in self.received)

    def deliver(self) -> None:
        """Deliver the first held signal again, to the handler that was there before (after
        :meth:`__exit__`): it ends the run as it would have without the flip."""
        if self.received:
            signal.raise_signal(self.received[0][0])


def _utc(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d} UTC"
