"""Log lines (tracing-subscriber 0.3 for 0.8, pretty_env_logger 0.4 for 0.7.3) and panics.

Part of :mod:`garage_lab.garage.render` (see its docstring for the conventions).
"""

from __future__ import annotations

from datetime import datetime, timezone

from ..personality import Personality


# ansi_term escapes used by tracing-subscriber 0.3 [dep, from memory]: dimmed timestamp and
# target, level coloured by severity.
_DIM, _RESET = "\x1b[2m", "\x1b[0m"
_TRACING_LEVELS = {
    "TRACE": ("\x1b[35m", "TRACE"),
    "DEBUG": ("\x1b[34m", "DEBUG"),
    "INFO": ("\x1b[32m", " INFO"),
    "WARN": ("\x1b[33m", " WARN"),
    "ERROR": ("\x1b[31m", "ERROR"),
}
# pretty_env_logger 0.4 pads every level to five characters.
_ENV_LOGGER_LEVELS = {"TRACE": "TRACE", "DEBUG": "DEBUG", "INFO": "INFO ", "WARN": "WARN ", "ERROR": "ERROR"}


def _level(level: str) -> str:
    level = level.upper()
    return "WARN" if level == "WARNING" else level


def rfc3339_micros(epoch: float) -> str:
    """tracing-subscriber's ``SystemTime`` timestamp: ``2022-11-21T14:05:33.123456Z``."""
    micros = round(epoch * 1_000_000)
    dt = datetime.fromtimestamp(micros // 1_000_000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{micros % 1_000_000:06d}Z"


def log_line(p: Personality, level: str, target: str, msg: str, now_epoch: float, state: dict) -> str:
    """One daemon/CLI log line on stderr (ref 13 item 16).

    0.8 (tracing-subscriber 0.3 ``fmt``, ANSI always on; escape codes [inf] from memory of the
    crate)::

        ESC[2m2022-11-21T14:05:33.123456ZESC[0m ESC[32m INFOESC[0m ESC[2mgarage::repair::onlineESC[0mESC[2m:ESC[0m msg

    which reads ``2022-11-21T14:05:33.123456Z  INFO garage::repair::online: msg`` once the escape
    codes are removed. 0.7.3 (pretty_env_logger 0.4, no timestamp, colour only on a TTY, which
    the lab's log files are not): `` INFO  garage::repair > msg`` with the target padded to the
    longest target seen so far by this process.

    Args:
        p: the personality (``log_timestamps`` selects the 0.8 format).
        level: ``TRACE``, ``DEBUG``, ``INFO``, ``WARN`` or ``ERROR`` (any case).
        target: the Rust module path.
        msg: the message.
        now_epoch: the time of the event, in seconds since the epoch.
        state: per-process mutable state; keeps the 0.7.3 target width under
            ``"max_target_width"``.

    Returns:
        The line, with its newline.
    """
    level = _level(level)
    if p.log_timestamps:
        colour, text = _TRACING_LEVELS[level]
        return (
            f"{_DIM}{rfc3339_micros(now_epoch)}{_RESET} {colour}{text}{_RESET} "
            f"{_DIM}{target}{_RESET}{_DIM}:{_RESET} {msg}\n"
        )
    width = max(state.get("max_target_width", 0), len(target))
    state["max_target_width"] = width
    return f" {_ENV_LOGGER_LEVELS[level]} {target.ljust(width)} > {msg}\n"


# The explanation of Garage 0.8's panic hook, reconstructed from memory of src/garage/main.rs
# [inf]; the typos ("a the following", "the the full") are believed to be in the original.
_PANIC_EXPLANATION = """\
Panics are internal errors that Garage is unable to handle on its own.
They can be caused by bugs in Garage's code, or by corrupted data in
the node's storage. If you feel that this error is likely to be a bug
in Garage, please report it on our issue tracker a the following address:

        https://git.deuxfleurs.fr/Deuxfleurs/garage/issues

Please include the last log messages and the the full backtrace below in
your bug report, as well as any relevant information on the context in
which Garage was running when this error occurred.
"""

# A stand-in for backtrace::Backtrace's Debug output [invented: a real one lists ~40 frames].
_FAKE_BACKTRACE = """\
   0: garage::main::{{closure}}
   1: std::panicking::rust_panic_with_hook
   2: std::panicking::begin_panic_handler::{{closure}}
   3: std::sys_common::backtrace::__rust_end_short_backtrace
   4: rust_begin_unwind
   5: core::panicking::panic_fmt
   6: core::result::unwrap_failed
"""


def panic_banner(p: Personality, msg: str, location: str, *, server: bool = False, log_state: dict | None = None) -> str:
    """What a panic writes on stderr before the process aborts or exits (ref 2.2).

    0.8 installs its hook for every command: the PANIC banner, then ``abort()`` (returncode
    -6). 0.7.3 hooks only ``server``, logging the panic at ERROR before ``abort()``; any other
    0.7.3 command panics the default Rust way (exit code 101).

    Args:
        p: the personality.
        msg: the panic message.
        location: ``<file>:<line>:<col>``.
        server: the panicking command is ``server`` (matters for 0.7.3 only).
        log_state: the 0.7.3 logger state (see :func:`log_line`).

    Returns:
        The text; the caller then aborts (or exits 101 for 0.7.3 non-server commands).
    """
    panicked = f"panicked at '{msg}', {location}"
    if p.log_timestamps:
        return (
            "======== PANIC (internal Garage error) ========\n"
            f"{panicked}\n\n{_PANIC_EXPLANATION}\n"
            f"GARAGE VERSION: {p.stats_version_string}\n\nBACKTRACE:\n{_FAKE_BACKTRACE}"
        )
    if server:
        return log_line(p, "ERROR", "garage", panicked, 0.0, {} if log_state is None else log_state)
    return f"thread 'main' {panicked}\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n"


