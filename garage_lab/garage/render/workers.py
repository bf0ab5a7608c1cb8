"""``worker list``, ``worker info``, ``worker get`` / ``set``.

Part of :mod:`garage_lab.garage.render` (see its docstring for the conventions).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..personality import Personality
from ..workers import Worker
from .text import _f32, format_table, timeago


# The record the worker renderers format is the daemon's own (one worker record in the lab).
WorkerRow = Worker


_STATE_RANK = {"Busy": 0, "Throttled": 0, "Idle": 1, "Done": 2}


def _state_cell(p: Personality, w: WorkerRow) -> str:
    """``WorkerState``'s Display: ``Thr:1.500`` in 0.8.0, ``Busy*`` from 0.8.1."""
    if w.state != "Throttled":
        return w.state
    return "Busy*" if p.worker_list_table else f"Thr:{_f32(w.throttle_secs):.3f}"


def _listed_workers(workers: Iterable[WorkerRow], busy: bool, errors: bool) -> list[WorkerRow]:
    """Sort (Busy/Throttled, Idle, Done; then TID) and apply ``-b`` / ``-e`` (ref 2.11, late 1.1)."""
    listed = sorted(workers, key=lambda w: (_STATE_RANK[w.state], w.tid))
    if busy:
        listed = [w for w in listed if w.state in ("Busy", "Throttled")]
    if errors:
        listed = [w for w in listed if w.errors > 0]
    return listed


def _dash(value: object | None) -> str:
    return "-" if value is None else str(value)


def render_worker_list(p: Personality, workers: list[WorkerRow], busy: bool, errors: bool) -> str:
    """``garage worker list [-b] [-e]`` (ref 2.11 for 0.8.0; late 1.1 for 0.8.1+).

    Args:
        p: the personality: headerless 3 columns with info lines, or the 9-column table.
        workers: every worker of the node, in any order.
        busy: ``-b``: keep Busy and Throttled workers only.
        errors: ``-e``: keep workers with errors only (0.8.0 then also shows the message of
            non-consecutive errors).

    Returns:
        The table; in 0.8.0 an empty selection prints nothing at all.
    """
    listed = _listed_workers(workers, busy, errors)
    if p.worker_list_table:
        rows = [["TID", "State", "Name", "Tranq", "Done", "Queue", "Errors", "Consec", "Last"]]
        for w in listed:
            has_errors = w.errors > 0
            last = timeago(w.last_error_secs_ago) if w.last_error_secs_ago is not None else ""
            rows.append([str(w.tid), _state_cell(p, w), w.name, _dash(w.tranq), _dash(w.progress), _dash(w.queue),
                         str(w.errors) if has_errors else "-", str(w.consecutive_errors) if has_errors else "-", last])
        return format_table(rows)
    rows = []
    for w in listed:
        rows.append([str(w.tid), _state_cell(p, w), w.name])
        sub = list(w.info)
        ago = timeago(w.last_error_secs_ago) if w.last_error_secs_ago is not None else "(?) ago"
        message = w.last_error if w.last_error is not None else "(?)"
        if w.consecutive_errors > 0:
            sub += [f"{w.consecutive_errors} consecutive errors ({w.errors} total), last {ago}", message]
        elif w.errors > 0:
            sub.append(f"({w.errors} errors, last {ago})")
            if errors:
                sub.append(message)
        rows += [["", "", f"  {line}"] for line in sub]
    return format_table(rows)


def render_worker_info(
    p: Personality, w: WorkerRow, message_lines: tuple[str, ...], persistent_errors: int | None
) -> str:
    """``garage worker info <TID>`` (late 1.2; 0.8.1+).

    Args:
        p: the personality.
        w: the worker (tranq, progress and queue are shown when set).
        message_lines: free-text status lines (the first goes after ``Message:``).
        persistent_errors: errored blocks (resync) or corruptions (scrub), else ``None``.

    Returns:
        The headerless two-column table.
    """
    if w.state == "Throttled":
        state = f"Busy (throttled, paused for {_f32(w.throttle_secs):.3f}s)"
    else:
        state = _state_cell(p, w)
    rows = [["Task id:", str(w.tid)], ["Worker name:", w.name], ["Worker state:", state]]
    if w.tranq is not None:
        rows.append(["Tranquility:", str(w.tranq)])
    rows += [[""], ["Total errors:", str(w.errors)], ["Consecutive errs:", str(w.consecutive_errors)]]
    if w.last_error is not None:
        ago = timeago(w.last_error_secs_ago) if w.last_error_secs_ago is not None else "now"
        rows += [["Last error:", w.last_error], ["Last error time:", ago]]
    rows.append([""])
    for label, value in (("Progress:", w.progress), ("Queue length:", w.queue), ("Persistent errors:", persistent_errors)):
        if value is not None:
            rows.append([label, str(value)])
    for i, line in enumerate(message_lines):
        if i == 0:
            if rows[-1] != [""]:
                rows.append([""])
            rows.append(["Message:", line])
        else:
            rows.append(["", line])
    return format_table(rows)


def render_worker_vars(rows: list[tuple[str, str, str]]) -> str:
    """``worker get`` / 0.8.2+ ``worker set``: ``<ID16>  <var>  <value>`` rows (late 1.3).

    Args:
        rows: ``(id16, variable, value)`` in the order to print (``get`` sorts by name per node).

    Returns:
        The headerless table.
    """
    return format_table([list(r) for r in rows])


_WORKER_SET_REPLIES = {
    "resync-n-workers": "Number of resync workers updated",
    "scrub-tranquility": "Scrub tranquility updated",
    "resync-tranquility": "Resync tranquility updated",
}


def render_worker_set_legacy(variable: str) -> str:
    """The one-line reply of 0.8.0 ``worker set <variable> <N>`` (ref 2.11).

    Args:
        variable: ``resync-n-workers``, ``scrub-tranquility`` or ``resync-tranquility``.

    Returns:
        e.g. ``"Scrub tranquility updated\\n"``.
    """
    return _WORKER_SET_REPLIES[variable] + "\n"


