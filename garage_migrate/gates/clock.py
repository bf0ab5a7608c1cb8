"""The clock a gate polls with: injected, so tests never wait for time to pass."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic time and a way to wait for it."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale (only differences are meaningful)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`asyncio.sleep`."""

    def monotonic(self) -> float:
        """See :meth:`Clock.monotonic`."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """See :meth:`Clock.sleep`."""
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A clock for tests: :meth:`sleep` advances time at once instead of waiting.

    Args:
        start: the initial reading of :meth:`monotonic`.

    Attributes:
        now: the current reading.
        sleeps: every duration passed to :meth:`sleep`, in order.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """See :meth:`Clock.monotonic`."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance by ``seconds`` and yield once to the event loop.

        Raises:
            ValueError: ``seconds`` is negative (a gate bug: it would make time run backwards).
        """
        if seconds < 0:
            raise ValueError(f"cannot sleep {seconds!r} seconds")
        self.sleeps.append(seconds)
        self.now += seconds
        # other tasks still get their turn, as with a real sleep
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        """Move time forward without a sleep (e.g. a slow observation in a scripted source)."""
        if seconds < 0:
            raise ValueError(f"cannot advance {seconds!r} seconds")
        self.now += seconds

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now!r})"
