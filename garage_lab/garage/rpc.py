"""The simulated netapp: length-prefixed JSON over TCP with a version-tag handshake.

Like netapp, a connection starts with a handshake that carries the version tag
(``0x6761726167650007`` for 0.7, ``...0008`` for 0.8) and a network key derived from
``rpc_secret``. A side that sees a different tag or key drops the connection, so 0.7 and 0.8
nodes never connect, and a CLI of one version cannot reach a daemon of the other (ref 1, 7).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20


class RpcError(Exception):
    """A failed RPC: transport trouble or an error answered by the remote handler.

    Attributes:
        kind: ``"connect"`` (could not connect or handshake refused), ``"closed"`` (the peer
            went away), ``"timeout"``, or ``"remote"`` (the handler answered an error).
        remote_kind: for ``"remote"``, the handler's error class (``"BadRequest"``,
            ``"Internal"``, ...).
    """

    def __init__(self, kind: str, message: str, remote_kind: str = ""):
        self.kind = kind
        self.remote_kind = remote_kind
        super().__init__(message)


def network_key(rpc_secret: str | None) -> str:
    """A short digest of the RPC secret, compared during the handshake."""
    return hashlib.sha256((rpc_secret or "").encode()).hexdigest()[:16]


async def send(writer: asyncio.StreamWriter, obj: Any) -> None:
    """Write one frame."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    writer.write(HEADER.pack(len(data)) + data)
    await writer.drain()


async def recv(reader: asyncio.StreamReader) -> Any:
    """Read one frame.

    Raises:
        asyncio.IncompleteReadError: the connection closed.
        ValueError: the frame is too large.
    """
    (n,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if n > MAX_FRAME:
        raise ValueError("frame too large")
    return json.loads(await reader.readexactly(n))


class Connection:
    """One handshaken connection used for request/response calls in both directions.

    ``handler`` answers the requests the other side sends; calls made here are matched with
    their answers by id, so many calls can be in flight on one connection.
    """

    def __init__(self, reader, writer, peer_info: dict, handler=None):
        self.reader = reader
        self.writer = writer
        self.peer = peer_info
        self.handler = handler
        self._next = 0
        self._waiting: dict[int, asyncio.Future] = {}
        self._send_lock = asyncio.Lock()
        self.closed = asyncio.Event()
        self._task = asyncio.ensure_future(self._read_loop())

    async def _send(self, obj) -> None:
        async with self._send_lock:
            await send(self.writer, obj)

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await recv(self.reader)
                if "m" in msg:
                    asyncio.ensure_future(self._serve(msg))
                else:
                    fut = self._waiting.pop(msg.get("id"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, OSError):
            pass
        finally:
            self._teardown()

    async def _serve(self, msg) -> None:
        try:
            if self.handler is None:
                raise RpcError("remote", "no handler", "Internal")
            result = await self.handler(msg["m"], msg.get("a") or {}, self.peer)
            answer = {"id": msg["id"], "r": result}
        except RpcError as exc:
            answer = {"id": msg["id"], "e": {"k": exc.remote_kind or exc.kind, "msg": str(exc)}}
        except Exception as exc:  # noqa: BLE001 - a handler bug must answer, not hang the caller
            answer = {"id": msg["id"], "e": {"k": "Internal", "msg": f"{type(exc).__name__}: {exc}"}}
        try:
            await self._send(answer)
        except (ConnectionError, OSError):
            self._teardown()

    def _teardown(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RpcError("closed", "Not connected"))
        self._waiting.clear()
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - closing an already broken transport
            pass

    async def call(self, method: str, args: dict | None = None, timeout: float = 10.0):
        """Send a request and wait for its answer.

        Raises:
            RpcError: closed connection, timeout, or an error answered by the remote handler.
        """
        if self.closed.is_set():
            raise RpcError("closed", "Not connected")
        self._next += 1
        rid = self._next
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            await self._send({"id": rid, "m": method, "a": args or {}})
            msg = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self._waiting.pop(rid, None)
            raise RpcError("timeout", "Timeout") from None
        except (ConnectionError, OSError):
            self._teardown()
            raise RpcError("closed", "Not connected") from None
        if "e" in msg:
            raise RpcError("remote", msg["e"]["msg"], msg["e"]["k"])
        return msg["r"]

    def close(self) -> None:
        """Close the connection; pending calls fail with ``Not connected``."""
        self._teardown()
        self._task.cancel()


async def connect(host: str, port: int, hello: dict, handler=None, timeout: float = 5.0) -> Connection:
    """Open a connection and perform the handshake.

    ``hello`` must carry ``tag`` and ``netkey``. The server answers with its own hello, or
    closes the connection if the tag or key differs.

    Raises:
        RpcError: kind ``"connect"`` with a netapp-like message.
    """
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (ConnectionRefusedError, OSError, asyncio.TimeoutError) as exc:
        errno_ = getattr(exc, "errno", None)
        if isinstance(exc, ConnectionRefusedError) or errno_ == 111:
            raise RpcError("connect", "IO error: Connection refused (os error 111)") from None
        raise RpcError("connect", f"IO error: {exc}") from None
    try:
        await send(writer, hello)
        theirs = await asyncio.wait_for(recv(reader), timeout)
    except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.TimeoutError, ValueError):
        writer.close()
        # [inf] netapp's exact wording for a refused handshake is not in the reference
        raise RpcError("connect", "Handshake error: connection closed by peer (version or network key mismatch?)") from None
    return Connection(reader, writer, theirs, handler)
