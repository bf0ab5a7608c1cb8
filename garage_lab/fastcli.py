"""The lab's CLI client: hands one ``garage`` or ``garage-service`` call to the lab's fork server.

Run as ``python -I -S garage_lab/fastcli.py SOCKET TARGET ARGS...`` by the lab's launchers
(see :mod:`garage_lab.forkserver` for why). It imports only C modules (no ``socket``, no
``json``: this start is what the fork server saves, ~14 ms instead of ~170 ms of CPU), sends
its working directory, umask, arguments, environment and its own stdin/stdout/stderr
(``SCM_RIGHTS``) to the server, forwards the signals it gets (TERM, INT, HUP, QUIT) to the
command, and ends as the command ended: the same exit code, or killed by the same signal.

On a netns lab each node's namespace has its own server; the launcher's socket path names
the namespace with a stand-in that this client replaces with its own namespace's inode.

If the server does not answer (the lab was started before it existed, or it is gone), the
client ``exec``\\ s the command the slow way, as a process of its own, so a call never fails
because of this shortcut.
"""

import _signal
import _socket
import _struct
import posix
import sys

MAGIC = b"GMFS1"
NETNS_MARK = "@NETNS@"  # build.NETNS_MARK (not imported: this client imports only C modules)
FORWARDED = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGQUIT)


def _slow_path(target: str, args: list[str]) -> None:
    """``exec`` the command as its own Python process (what the launchers did before)."""
    py = sys.executable
    if target == "service":
        argv = [py, "-S", "-m", "garage_lab.service", *args]
    else:
        argv = [py, "-S", "-m", "garage_lab.garage", target.removeprefix("garage:"), *args]
    posix.execv(py, argv)


def _request(target: str, args: list[str]) -> bytes:
    env = [k + b"=" + v for k, v in posix.environ.items()]
    fields = [MAGIC, posix.getcwd().encode(), b"%d" % _umask(), target.encode(), b"%d" % len(args),
              *(a.encode("utf-8", "surrogateescape") for a in args), *env]
    body = b"\0".join(fields)
    return _struct.pack("!I", len(body)) + body


def _umask() -> int:
    old = posix.umask(0o022)
    posix.umask(old)
    return old


def main() -> None:
    sock_path, target, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if NETNS_MARK in sock_path:
        # a netns lab: the server of the namespace this call runs in (by its inode), so the
        # command runs where it was called, as its own process would have
        sock_path = sock_path.replace(NETNS_MARK, str(posix.stat("/proc/self/ns/net").st_ino))
    fds = []
    for fd in (0, 1, 2):
        try:
            posix.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(-1)
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.connect(sock_path)
    except OSError:
        s.close()
        _slow_path(target, args)
    live = [fd for fd in fds if fd >= 0]
    mask = bytes(1 if fd >= 0 else 0 for fd in fds)
    s.sendmsg([mask + _request(target, args)],
              [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _struct.pack("%di" % len(live), *live))])

    def forward(signum, _frame):
        try:
            s.send(bytes([signum]))
        except OSError:
            pass

    for sig in FORWARDED:
        _signal.signal(sig, forward)
    status = b""
    while len(status) < 2:
        chunk = s.recv(2 - len(status))
        if not chunk:
            posix.write(2, b"garage-lab: the lab's CLI server went away during the call\n")
            posix._exit(1)
        status += chunk
    kind, value = status[0], status[1]
    if kind == 1:  # killed by a signal: die of it too, as the command's own process would have
        _signal.signal(value, _signal.SIG_DFL)
        posix.kill(posix.getpid(), value)
        posix._exit(128 + value)
    posix._exit(value)


if __name__ == "__main__":
    main()
