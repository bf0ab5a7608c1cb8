"""Child processes that do not outlive the command that started them.

``garage-migrate run`` stops its temporary Prefect server by PID on every exit it sees (an
error, Ctrl-C, SIGTERM). A SIGKILL of the command (an operator's ``kill -9``, the OOM killer, a
CI runner that kills the job) is the one exit it never sees: the server, in its own session so
that it can be stopped with its process group, would run on with nobody to stop it. On Linux
the kernel can send the child a signal when its parent dies (``PR_SET_PDEATHSIG``): the server
gets SIGTERM, its graceful stop.
"""

from __future__ import annotations

import ctypes
import signal
import sys

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before ``exec`` (``subprocess.Popen(preexec_fn=...)``): be sent SIGTERM when
    the parent dies. Does nothing where the kernel has no such option (not Linux)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
