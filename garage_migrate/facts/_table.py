"""Line handling and Garage table splitting (reference garage-0.7-to-0.8.md section 2.3).

Garage builds tables from TAB-separated rows and pads every column but the last to its widest
cell + 2; the last column is not padded. Cells can be empty, so rows are cut at column start
offsets, never split on whitespace runs. With a header the offsets come from the header;
headerless tables (0.8.0 ``worker list``, ``bucket info`` sub-tables, ``worker get``) rebuild the
offsets from the data rows the same way the formatter computed them: column k+1 starts at the
start of column k plus its widest cell plus 2.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .models import ParseError

Line = tuple[int, str]
"""A 1-based line number and the line without its newline."""

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def numbered_lines(text: str) -> list[Line]:
    """Split ``text`` into numbered lines.

    A single trailing newline does not make an extra empty line. CRLF is folded to LF because a
    pty on the SSH path may add carriage returns; Garage itself never prints them.
    """
    text = text.replace("\r\n", "\n")
    if text.endswith("\n"):
        text = text[:-1]
    if text == "":
        return []
    return list(enumerate(text.split("\n"), start=1))


def strip_ansi(text: str) -> str:
    """Remove ANSI colour sequences (0.8 daemon logs always carry them)."""
    return _ANSI_RE.sub("", text)


def header_offsets(line: Line, names: Sequence[str], command: str, indent: int = 0) -> list[int]:
    """Return the start offset of each column of a header line.

    The header must be exactly ``names`` in order (names may contain single spaces, such as
    ``Last seen``), each but the last followed by at least two spaces, after ``indent`` spaces.

    Raises:
        ParseError: the line is not that header.
    """
    no, text = line
    if text[:indent] != " " * indent:
        raise ParseError(f"expected header indented by {indent} spaces", command=command,
                         line_no=no, line=text)
    offsets: list[int] = []
    pos = indent
    for i, name in enumerate(names):
        if text[pos:pos + len(name)] != name:
            raise ParseError(f"expected header column {name!r} at offset {pos}",
                             command=command, line_no=no, line=text)
        offsets.append(pos)
        pos += len(name)
        if i == len(names) - 1:
            if text[pos:] != "":
                raise ParseError("unexpected text after the last header column",
                                 command=command, line_no=no, line=text)
            break
        gap = len(text[pos:]) - len(text[pos:].lstrip(" "))
        if gap < 2:
            raise ParseError(f"header column {name!r} is not followed by padding",
                             command=command, line_no=no, line=text)
        pos += gap
    return offsets


def cut_row(line: Line, offsets: Sequence[int], command: str) -> list[str]:
    """Cut a data row at the header ``offsets`` and return its cells.

    Every non-last cell must be followed by at least the formatter's two spaces of padding and
    must not begin with a space (unless empty): either failure means the row does not belong
    to this header. The last cell is right-stripped, because an empty last cell leaves the
    previous cell's padding as trailing spaces (0.8.1+ ``worker list``).

    Raises:
        ParseError: the row is misaligned with the header.
    """
    no, text = line
    cells: list[str] = []
    for i, start in enumerate(offsets):
        last = i == len(offsets) - 1
        end = None if last else offsets[i + 1]
        seg = text[start:end]
        if not last and end is not None and len(text) > end and not seg.endswith("  "):
            raise ParseError(f"cell {i + 1} overflows its column", command=command,
                             line_no=no, line=text)
        cell = seg.rstrip(" ")
        if cell.startswith(" "):
            raise ParseError(f"cell {i + 1} is not aligned with its column", command=command,
                             line_no=no, line=text)
        cells.append(cell)
    return cells


def split_headerless(
    rows: Sequence[Line], ncols: int, command: str
) -> tuple[list[list[str]], list[int]]:
    """Split a headerless table whose non-last cells contain no spaces.

    Returns:
        The cells of each row (the last cell is the rest of the line, right-stripped), and the
        column start offsets derived from the rows.

    Raises:
        ParseError: a row does not fit the derived offsets.
    """
    cells: list[list[str]] = [[] for _ in rows]
    starts: list[int] = []
    start = 0
    for col in range(ncols):
        starts.append(start)
        if col == ncols - 1:
            for r, (_no, text) in enumerate(rows):
                cells[r].append(text[start:].rstrip(" "))
            break
        width = 0
        for r, (no, text) in enumerate(rows):
            if start > len(text):
                raise ParseError(f"row ends before column {col + 1}", command=command,
                                 line_no=no, line=text)
            m = re.match(r"[^ ]*", text[start:])
            cell = m.group(0) if m else ""
            cells[r].append(cell)
            width = max(width, len(cell))
        nxt = start + width + 2
        for r, (no, text) in enumerate(rows):
            pad = text[start + len(cells[r][col]):nxt]
            if pad.strip(" ") or len(text) < nxt:
                raise ParseError(f"column {col + 1} is misaligned (expected padding up to "
                                 f"offset {nxt})", command=command, line_no=no, line=text)
        start = nxt
    return cells, starts


def split_headerless_anchored(
    rows: Sequence[Line], ncols: int, command: str
) -> list[list[str]]:
    """Split a headerless table whose last cell has no spaces but the one before it may.

    The last column is found from the right (its start must be the same on every row); the
    rest is split with :func:`split_headerless`, and the padding before the last column must
    match the widest penultimate cell, as the formatter would have printed it.

    Raises:
        ParseError: a row does not fit.
    """
    if not rows:
        return []
    last_start = None
    for no, text in rows:
        m = re.search(r"[^ ]+$", text)
        if m is None:
            raise ParseError("row has no last cell", command=command, line_no=no, line=text)
        if last_start is None:
            last_start = m.start()
        elif m.start() != last_start:
            raise ParseError(f"last column does not start at offset {last_start}",
                             command=command, line_no=no, line=text)
    assert last_start is not None
    prefixes = [(no, text[:last_start]) for no, text in rows]
    head, starts = split_headerless(prefixes, ncols - 1, command)
    width = max(len(c[-1]) for c in head)
    if starts[-1] + width + 2 != last_start:
        no, text = rows[0]
        raise ParseError(f"last column starts at {last_start}, expected "
                         f"{starts[-1] + width + 2}", command=command, line_no=no, line=text)
    return [h + [text[last_start:]] for h, (_no, text) in zip(head, rows)]


def split_sections(lines: Sequence[Line]) -> list[list[Line]]:
    """Group lines into blocks separated by blank lines (blank lines are dropped)."""
    blocks: list[list[Line]] = []
    cur: list[Line] = []
    for ln in lines:
        if ln[1].strip() == "":
            if cur:
                blocks.append(cur)
                cur = []
        else:
            cur.append(ln)
    if cur:
        blocks.append(cur)
    return blocks
