"""Fault shims for the lab's SSH sessions: ``<lab>/shim/tar``, ``<lab>/shim/df`` and ``<lab>/shim/zstd``.

The lab's sshd puts ``<lab>/shim`` first on ``PATH`` (see ``Lab.write_sshd_config``), so a
command such as ``timeout 600 tar -C /x -cf - meta`` run over SSH finds these first. Each shim
is a tiny ``sh`` script: when ``<lab>/nodes/$GARAGE_LAB_NODE/faults.json`` does not mention a
fault it handles, it ``exec``\\ s the real tool at once (no Python, no overhead on the data
path); otherwise it runs this module, which applies the fault:

- ``kill-tar`` (``bytes``: N): a ``tar`` writing its archive to stdout is cut after N bytes of
  output and SIGKILLed, and the shim dies of SIGKILL as tar would (through coreutils ``timeout``
  the session then exits 137). Other ``tar`` invocations are untouched.
- ``corrupt-tar`` (``bytes``: N): a ``tar`` writing its archive to stdout has the byte at
  offset N of its output flipped (the last byte when the output is shorter), as a failing disk
  or memory on the node would; tar itself exits 0. What the controller receives is then not
  what the node holds: the backup's verification must catch it.
- ``disk-full`` (``path``: P): ``tar`` creating an archive file under P, or extracting into a
  directory under P, fails as on a full disk (``Cannot write: No space left on device``, exit
  2; a created archive is left empty, as ENOSPC on the first write leaves it); ``df`` reports
  0 bytes available for any path under P.

- ``no-zstd``: the node has no ``zstd`` CLI: ``zstd`` (run by a session, or by ``tar`` as its
  compressor) fails as a missing command does (``zstd: not found``, exit 127). A lab built with
  ``LabSpec(no_zstd=(...))`` starts with it on those nodes (discovery then finds no zstd there
  and the backup compresses on the controller).

A fault with ``count`` is used up after that many triggers; without one it stays. Faults are
injected with ``Lab.fault(node, kind, **params)`` or ``garage-lab fault``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TOOLS = {"tar": ("/usr/bin/tar", "/bin/tar"), "df": ("/bin/df", "/usr/bin/df"), "zstd": ("/usr/bin/zstd", "/bin/zstd")}
#: Fault kinds each shim handles: the ``sh`` fast path greps faults.json for these words.
HANDLES = {"tar": ("kill-tar", "corrupt-tar", "disk-full"), "df": ("disk-full",), "zstd": ("no-zstd",)}
#: Tools a machine may lack (no shim then: the node lacks it anyway).
OPTIONAL = {"zstd"}


def _real(tool: str) -> str:
    for path in TOOLS[tool]:
        if os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(f"no real {tool} in {TOOLS[tool]}")


def _script(lab: Path, tool: str) -> str:
    words = "|".join(f"*{k}*" for k in HANDLES[tool])
    return (
        "#!/bin/sh\n"
        f"# garage-lab fault shim for {tool} (see garage_lab/shims.py). Without a {'/'.join(HANDLES[tool])} fault on\n"
        "# this session's node it is the real tool.\n"
        f'faults="{lab}/nodes/${{GARAGE_LAB_NODE:-_none_}}/faults.json"\n'
        'case "$(cat "$faults" 2>/dev/null)" in\n'
        f"  {words})\n"
        f'    GARAGE_LAB_DIR="{lab}" PYTHONPATH="{PROJECT_ROOT}" exec "{sys.executable}" -S -m garage_lab.shims '
        f'{tool} "{_real(tool)}" "$@" ;;\n'
        "esac\n"
        f'exec "{_real(tool)}" "$@"\n'
    )


def install(lab_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``<lab>/shim/tar`` and ``<lab>/shim/df``; return their paths.

    Idempotent: rewriting them while sessions run is safe (each write is an atomic rename).
    """
    lab = Path(lab_dir).resolve()
    d = lab / "shim"
    d.mkdir(exist_ok=True)
    out = []
    for tool in TOOLS:
        if tool in OPTIONAL and not any(os.access(p, os.X_OK) for p in TOOLS[tool]):
            continue
        path = d / tool
        tmp = d / f".{tool}.tmp"
        tmp.write_text(_script(lab, tool))
        tmp.chmod(0o755)
        os.replace(tmp, path)
        out.append(path)
    return out


# ---------------------------------------------------------------------------- the shims


def _under(path: str, root: str) -> bool:
    p = os.path.abspath(path)
    r = os.path.abspath(root).rstrip("/") or "/"
    return p == r or p.startswith(r + "/") or r == "/"


#: GNU tar short options that take an argument (the ones our commands could use).
_TAR_ARG_SHORT = set("fCTXbgHKLNV")


def parse_tar_args(args: list[str]) -> dict:
    """What a tar command line does: ``{"mode": c|x|t|None, "file": str|None, "dirs": [...]}``.

    Understands bundled short options (``-acf FILE``, ``-xpf FILE``), separate ones and the
    long forms ``--file[=]``, ``--directory[=]``, ``--create``, ``--extract``.
    """
    mode = None
    file = None
    dirs: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            break
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            if name in ("file", "directory"):
                if not eq:
                    value = args[i] if i < len(args) else ""
                    i += 1
                if name == "file":
                    file = value
                else:
                    dirs.append(value)
            elif name in ("create", "extract", "get", "list"):
                mode = {"create": "c", "extract": "x", "get": "x", "list": "t"}[name]
            continue
        if a.startswith("-") and len(a) > 1:
            letters = a[1:]
            j = 0
            while j < len(letters):
                ch = letters[j]
                j += 1
                if ch in "cxt":
                    mode = ch
                elif ch in _TAR_ARG_SHORT:
                    value = letters[j:] if j < len(letters) else (args[i] if i < len(args) else "")
                    if j >= len(letters):
                        i += 1
                    j = len(letters)
                    if ch == "f":
                        file = value
                    elif ch == "C":
                        dirs.append(value)
    return {"mode": mode, "file": file, "dirs": dirs}


def _faults(lab: Path, node: str):
    from garage_lab.garage.knobs import Faults

    return Faults.load(lab / "nodes" / node / "faults.json")


def _consume(lab: Path, node: str, kind: str) -> None:
    from garage_lab.garage.knobs import consume_fault

    consume_fault(lab / "nodes" / node / "faults.json", kind)


def _exec(real: str, args: list[str]) -> None:
    env = dict(os.environ)
    if env.get("PYTHONPATH") == str(PROJECT_ROOT):
        env.pop("PYTHONPATH")
    os.execve(real, [real, *args], env)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def shim_tar(real: str, args: list[str], lab: Path, node: str) -> int:
    """The ``tar`` shim; returns an exit status (or never returns)."""
    faults = _faults(lab, node)
    what = parse_tar_args(args)
    full = faults.find("disk-full")
    if full and full.get("path"):
        target = None
        if what["mode"] == "c" and what["file"] not in (None, "-"):
            target = what["file"]
        elif what["mode"] == "x":
            target = what["dirs"][-1] if what["dirs"] else os.getcwd()
        if target is not None and _under(target, full["path"]):
            _consume(lab, node, "disk-full")
            if what["mode"] == "c":
                # ENOSPC on the first write: the file exists, empty
                with open(target, "wb"):
                    pass
            name = target if what["mode"] == "c" else os.path.join(target, "(member)")
            sys.stderr.write(f"tar: {name}: Cannot write: No space left on device\n"
                             "tar: Error is not recoverable: exiting now\n")
            return 2
    corrupt = faults.find("corrupt-tar")
    if corrupt and what["mode"] == "c" and what["file"] == "-":
        _consume(lab, node, "corrupt-tar")
        return _corrupted(real, args, int(corrupt.get("bytes", 0)))
    kill = faults.find("kill-tar")
    if kill and what["mode"] == "c" and what["file"] == "-":
        limit = int(kill.get("bytes", 0))
        _consume(lab, node, "kill-tar")
        proc = subprocess.Popen([real, *args], stdout=subprocess.PIPE)
        sent = 0
        assert proc.stdout is not None
        while sent < limit:
            data = proc.stdout.read1(min(1 << 16, limit - sent))
            if not data:
                break
            _write_all(1, data)
            sent += len(data)
        if sent < limit:  # tar finished before the fault point
            return proc.wait()
        proc.kill()
        proc.wait()
        sys.stderr.write(f"garage-lab: kill-tar fault: tar killed after {sent} bytes\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    _exec(real, args)
    return 127  # not reached


def _corrupted(real: str, args: list[str], offset: int) -> int:
    """Run tar, copying its stdout with the byte at ``offset`` flipped; return tar's status."""
    proc = subprocess.Popen([real, *args], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    sent, held = 0, b""
    while True:
        data = proc.stdout.read1(1 << 16)
        if not data:
            break
        if sent + len(data) > offset >= sent:
            i = offset - sent
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
            offset = -1  # flipped once
        # the last chunk is held back, so a stream shorter than the offset has its last byte flipped
        if held:
            _write_all(1, held)
        sent += len(data)
        held = data
    if held and offset >= 0:
        held = held[:-1] + bytes([held[-1] ^ 0xFF])
    _write_all(1, held)
    return proc.wait()


def shim_df(real: str, args: list[str], lab: Path, node: str) -> int:
    """The ``df`` shim: real ``df``, with 0 available for paths under a disk-full path."""
    full = _faults(lab, node).find("disk-full")
    paths = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a in ("-B", "-t", "-x", "--block-size", "--type", "--exclude-type"):
            skip = True
        elif not a.startswith("-"):
            paths.append(a)
    hit = [bool(full and full.get("path") and _under(p, full["path"])) for p in paths]
    if not any(hit):
        _exec(real, args)
    _consume(lab, node, "disk-full")
    res = subprocess.run([real, *args], capture_output=True, text=True)
    sys.stderr.write(res.stderr)
    lines = res.stdout.splitlines()
    if not lines:
        return res.returncode
    header = lines[0].split()
    col = next((k for k, w in enumerate(header) if w in ("Avail", "Available")), None)
    out = [lines[0]]
    for n, line in enumerate(lines[1:]):
        if col is not None and (n >= len(hit) or hit[n]):
            parts = re.split(r"(\s+)", line.strip())
            words = parts[::2]
            if col < len(words):
                words[col] = "0"
                parts[::2] = words
                line = "".join(parts)
        out.append(line)
    sys.stdout.write("\n".join(out) + "\n")
    return res.returncode


def shim_zstd(real: str, args: list[str], lab: Path, node: str) -> int:
    """The ``zstd`` shim: with a ``no-zstd`` fault the node has none (exit 127, as ``sh`` says)."""
    if _faults(lab, node).find("no-zstd") is None:
        _exec(real, args)
    sys.stderr.write("sh: 1: zstd: not found\n")
    return 127


def main(argv: list[str] | None = None) -> int:
    """``python -m garage_lab.shims <tar|df|zstd> <real path> <args...>`` (run by the shim scripts)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tool, real, args = argv[0], argv[1], argv[2:]
    node = os.environ.get("GARAGE_LAB_NODE")
    lab = Path(os.environ.get("GARAGE_LAB_DIR", "/nonexistent"))
    if not node:
        _exec(real, args)
    if tool == "tar":
        return shim_tar(real, args, lab, node)
    if tool == "zstd":
        return shim_zstd(real, args, lab, node)
    return shim_df(real, args, lab, node)


if __name__ == "__main__":
    sys.exit(main())
