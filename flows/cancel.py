"""A cancel from the Prefect UI during the simultaneous restart (fault row 25), Prefect's side.

Prefect 3.9's worker cancels a run in two moves: it sends the flow's process a cancel *intent*
over the attempt control channel, which the process acknowledges, and then SIGTERM; the
engine's SIGTERM handler raises ``TerminationSignal`` and, the intent being ``cancel``, ends the
run Cancelled. The process acknowledges the intent only while Prefect's own SIGTERM handler is
installed (``prefect.utilities.engine.commit_control_intent_and_ack``: otherwise the worker
falls back to a crash-style termination and the run ends Crashed).

The executor holds SIGTERM while the flip runs (:mod:`garage_migrate.executor.deferral`).
:class:`PrefectSignalDeferral` lets the hold handler stand in for Prefect's during that time,
under Prefect's own bridge lock, so that the intent is still acknowledged; once the barrier is
complete the held SIGTERM goes to Prefect's handler, and the run ends Cancelled.
"""

from __future__ import annotations

from garage_migrate.executor.deferral import SignalDeferral


class PrefectSignalDeferral(SignalDeferral):
    """:class:`SignalDeferral` that keeps Prefect's cancel handshake working while it holds."""

    def __enter__(self) -> PrefectSignalDeferral:
        import signal

        from prefect.utilities import engine as E

        self._stood_in = None
        with E._prefect_sigterm_bridge_lock:
            prefect_handler = E._prefect_sigterm_handler
            installed = signal.getsignal(signal.SIGTERM) is prefect_handler
            super().__enter__()
            if self.active and installed:
                # the control listener's ack checks the installed handler against this name
                E._prefect_sigterm_handler = self.handler
                self._stood_in = prefect_handler
        return self

    def __exit__(self, *exc) -> None:
        from prefect.utilities import engine as E

        with E._prefect_sigterm_bridge_lock:
            super().__exit__(*exc)  # Prefect's handler is back for SIGTERM
            if self._stood_in is not None:
                E._prefect_sigterm_handler = self._stood_in
                self._stood_in = None
