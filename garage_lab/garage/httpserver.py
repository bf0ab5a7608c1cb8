"""A minimal HTTP/1.1 server loop for the admin, S3 and web ports (stdlib asyncio streams).

Keep-alive connections, ``Content-Length`` bodies (``Expect: 100-continue`` is answered, as
S3 clients send it before large bodies), and responses to ``HEAD`` without a body. A handler
is ``async (method, target, headers, body, peer) -> response | None`` where a response is
``(status, reason, body[, content_type[, extra_headers]])`` and ``None`` drops the connection
(how the lab's ``metrics-down`` fault looks to a scraper).
"""

from __future__ import annotations

import asyncio


async def read_http(reader, writer=None) -> tuple[str, str, dict, bytes] | None:
    """Read one request: ``(method, target, headers with lower-case names, body)``, or None at EOF."""
    line = await reader.readline()
    if not line:
        return None
    try:
        method, target, _ = line.decode("latin-1").split(" ", 2)
    except ValueError:
        return None
    headers = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    body = b""
    n = int(headers.get("content-length", "0") or 0)
    if n:
        if writer is not None and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        body = await reader.readexactly(n)
    return method, target, headers, body


async def respond(writer, status: int, reason: str, body: bytes, ctype: str = "text/plain",
                  extra: dict | None = None, head: bool = False) -> None:
    """Write one response; for ``HEAD``, the headers of the body but not the body."""
    lines = [f"HTTP/1.1 {status} {reason}", f"content-type: {ctype}", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body))
    await writer.drain()


async def serve_http(reader, writer, handler) -> None:
    """Serve requests on one connection until the client closes it or the handler drops it."""
    try:
        while True:
            req = await read_http(reader, writer)
            if req is None:
                break
            res = await handler(*req, writer.get_extra_info("peername"))
            if res is None:  # drop the connection (fault)
                break
            await respond(writer, *res, head=req[0] == "HEAD")
    except (ConnectionError, asyncio.IncompleteReadError, OSError):
        pass
    finally:
        writer.close()
