"""The lab's fork server: ``garage`` and ``garage-service`` calls without a Python start each.

Every ``garage status`` or ``garage-service is-active`` run over SSH used to be a new Python
process importing the simulator: ~170 ms of CPU for ``garage``, ~60 ms for the service
control, thousands of times in a test run, on 2 cores shared with the daemons and the
orchestrator. That cost is the lab's, not Garage's (a real ``garage`` CLI is a native binary),
and it inflated every figure measured on the lab (issue 13 §5). This server imports the
simulator once; for each call, a client (:mod:`garage_lab.fastcli`, ~14 ms) passes it its
stdin/stdout/stderr, working directory, umask, arguments and environment, and the server forks
a child that becomes that command: it writes to the caller's own pipes, so sshd, ``timeout``
and the orchestrator see the same bytes and the same exit status as before.

What the server guarantees, so that the shortcut changes nothing but the cost:
- the child gets the caller's fds, cwd, umask and environment, fresh std streams, default
  signal handlers and a re-seeded ``random``;
- signals the client receives (TERM, INT, HUP, QUIT: what ``timeout`` and sshd send) are sent
  on to the child; if the client dies (SIGKILL), the child is SIGKILLed;
- the client ends with the child's exit code, or dies of the child's signal.

Long-lived or lock-holding commands (``garage server``, ``garage offline-repair``) are not
sent here by the launchers: they stay processes of their own, with their own PID, as the
lab's lock probe and the orchestrator's kills expect.

Run as ``python -m garage_lab.forkserver SOCKET`` (the lab starts one per lab and stops it by
PID with the lab).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import sys
import traceback

MAGIC = b"GMFS1"


def _preload() -> None:
    """Import what the commands need, once, before any fork."""
    import argparse  # noqa: F401  (garage-service)

    from . import service  # noqa: F401
    from .garage import main  # noqa: F401


def _recv_request(conn: socket.socket) -> tuple[list[int], bytes] | None:
    """Read one request: the caller's fds and the body (``None``: not a valid request)."""
    fds: list[int] = []
    data, anc, _flags, _addr = conn.recvmsg(65536, socket.CMSG_SPACE(3 * struct.calcsize("i")))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += list(struct.unpack("%di" % (len(payload) // 4), payload[: len(payload) // 4 * 4]))
    if len(data) < 7:
        for fd in fds:
            os.close(fd)
        return None
    mask, (size,) = data[:3], struct.unpack("!I", data[3:7])
    body = data[7:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            break
        body += chunk
    it = iter(fds)
    return [next(it) if m else -1 for m in mask], body


def _become(fds: list[int], body: bytes) -> int:
    """In the child: turn into the requested command; return its exit code."""
    fields = body.split(b"\0")
    if fields[0] != MAGIC:
        return 2
    cwd, umask, target, n = fields[1].decode(), int(fields[2]), fields[3].decode(), int(fields[4])
    args = [a.decode("utf-8", "surrogateescape") for a in fields[5:5 + n]]
    env = dict(kv.split(b"=", 1) for kv in fields[5 + n:] if b"=" in kv)
    for fd, want in zip(fds, (0, 1, 2)):
        if fd >= 0:
            os.dup2(fd, want)
            os.close(fd)
        else:
            os.close(want)
    os.closerange(3, 65536)  # nothing of the server's: its socket, its other callers' connections
    os.chdir(cwd)
    os.umask(umask)
    os.environb.clear()
    os.environb.update(env)
    sys.stdin = open(0, encoding="utf-8", closefd=False) if fds[0] >= 0 else None
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False) if fds[1] >= 0 else None
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False,
                      buffering=1) if fds[2] >= 0 else None
    if "random" in sys.modules:
        sys.modules["random"].seed()
    if target == "service":
        from .service import main as entry
        sys.argv = ["garage-service", *args]
        return entry(args) or 0
    from .garage.main import main as entry
    sys.argv = ["garage", *args]
    return entry([target.removeprefix("garage:"), *args]) or 0


def _child(fds: list[int], body: bytes) -> None:
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 1
    try:
        code = _become(fds, body)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - as Python's own top level: the traceback, exit 1
        traceback.print_exc()
        code = 1
    _flush()
    os._exit(code & 0xFF)


def _flush() -> None:
    for f in (sys.stdout, sys.stderr):
        try:
            if f is not None:
                f.flush()
        except (OSError, ValueError):
            pass


def serve(path: str) -> None:
    """Serve calls on the Unix socket ``path`` until SIGTERM."""
    _preload()
    with_tmp = path + ".tmp"
    if os.path.exists(with_tmp):
        os.unlink(with_tmp)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(with_tmp)
    os.chmod(with_tmp, 0o600)
    srv.listen(256)
    os.replace(with_tmp, path)  # the launchers use the socket only once it accepts
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    running: dict[int, socket.socket] = {}  # child PID -> its caller's connection
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    while not stopping:
        readable, _, _ = select.select([srv, wake_r, *running.values()], [], [], 5.0)
        if wake_r in readable:
            os.read(wake_r, 512)
        for conn in [c for c in readable if c not in (srv, wake_r)]:
            pid = next(p for p, c in running.items() if c is conn)
            try:
                got = conn.recv(64)
            except OSError:
                got = b""
            if not got:  # the caller died: so does its command
                _kill(pid, signal.SIGKILL)
            for sig in got:
                _kill(pid, sig)
        if srv in readable:
            conn, _ = srv.accept()
            try:
                req = _recv_request(conn)
            except OSError:
                req = None
            if req is None:
                conn.close()
            else:
                fds, body = req
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    srv.close()
                    conn.close()
                    for c in running.values():
                        c.close()
                    signal.set_wakeup_fd(-1)
                    os.close(wake_r)
                    os.close(wake_w)
                    _child(fds, body)
                for fd in fds:
                    if fd >= 0:
                        os.close(fd)
                running[pid] = conn
        _reap(running)
    for pid in list(running):
        _kill(pid, signal.SIGKILL)
    if os.path.exists(path):
        os.unlink(path)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(running: dict[int, socket.socket]) -> None:
    """Collect ended children and tell their callers how they ended."""
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = running.pop(pid, None)
        if conn is None:
            continue
        if os.WIFSIGNALED(status):
            msg = bytes([1, os.WTERMSIG(status)])
        else:
            msg = bytes([0, os.WEXITSTATUS(status) & 0xFF])
        try:
            conn.sendall(msg)
        except OSError:
            pass
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
