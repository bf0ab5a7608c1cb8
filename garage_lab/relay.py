"""The netns lab's per-node relay: latency on SSH and admin connections, and the ``ssh-drop`` fault.

Runs inside a node's network namespace (:mod:`garage_lab.netns` starts it), listening on
``<addr>:<port + offset>`` for each ``--port``; nftables redirects what arrives on ``eth0`` for
``<port>`` there, and the relay forwards it to the real ``<addr>:<port>`` over ``lo``.

- **Latency**: ``<node>/net.json`` says ``delay_ms``; each direction delays every chunk by half
  of it (a round trip gains ``delay_ms``), as a delay line: chunks keep flowing, each sent
  ``delay_ms / 2`` after it was read, so throughput is not cut to one chunk per delay. The file
  is re-read when it changes, so a delay applies to open connections too.
- **ssh-drop** (``match``: TEXT, optional ``seconds``): once a process whose command line
  contains TEXT runs on this node under an SSH session (an ``sshd:`` ancestor, and
  ``GARAGE_LAB_NODE`` naming this node), the relay waits ``seconds`` (default 0) and SIGKILLs
  that session's ``sshd:`` processes: the controller's connection breaks mid-command, as when
  a link dies; the command itself is left to what its broken pipes do to it. One use by default.
  Each drop is recorded in ``<node>/net-events.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

CHUNK = 1 << 16


class Relay:
    """The relay of one node (see the module docstring)."""

    def __init__(self, node_dir: Path, addr: str):
        self.nd = node_dir
        self.addr = addr
        self.node = json.loads((node_dir / "node.json").read_text())["name"]
        self.delay = 0.0
        self._net_mtime = None
        self._faults_mtime = None
        self._drop: dict | None = None
        self._seen: dict[int, float] = {}

    # ------------------------------------------------------------------ latency
    def _reload_delay(self) -> None:
        path = self.nd / "net.json"
        try:
            m = path.stat().st_mtime_ns
            if m != self._net_mtime:
                self._net_mtime = m
                self.delay = float(json.loads(path.read_text()).get("delay_ms", 0)) / 2000.0
        except (OSError, ValueError):
            pass

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line: asyncio.Queue = asyncio.Queue()

        async def sender():
            while True:
                due, data = await line.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    break
                writer.write(data)
                await writer.drain()
        task = asyncio.create_task(sender())
        try:
            while True:
                data = await reader.read(CHUNK)
                line.put_nowait((time.monotonic() + self.delay, data or None))
                if not data:
                    break
                if line.qsize() > 64:  # back-pressure: do not buffer a whole stream in memory
                    await asyncio.sleep(self.delay or 0.001)
            await task
        except (ConnectionError, OSError, asyncio.CancelledError):
            task.cancel()
        finally:
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except (OSError, RuntimeError):
                pass

    async def _serve(self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(self.addr, port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pump(reader, up_w), self._pump(up_r, writer))
        finally:
            for w in (up_w, writer):
                w.close()

    # ------------------------------------------------------------------ ssh-drop
    def _reload_faults(self) -> None:
        path = self.nd / "faults.json"
        try:
            m = path.stat().st_mtime_ns
        except OSError:
            self._drop = None
            return
        if m == self._faults_mtime:
            return
        self._faults_mtime = m
        from .garage.knobs import Faults

        self._drop = Faults.load(path).find("ssh-drop")

    def _session_of(self, pid: int) -> list[int]:
        """The ``sshd:`` ancestors of ``pid`` (the SSH session serving it), nearest first."""
        out = []
        cur = pid
        for _ in range(32):
            try:
                stat = Path(f"/proc/{cur}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                cmd = Path(f"/proc/{cur}/cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                break
            if cmd.startswith(b"sshd: "):
                if b"[listener]" in cmd or b" -D " in cmd:
                    break  # the node's sshd itself: other sessions are not this fault's
                out.append(cur)
            if ppid <= 1:
                break
            cur = ppid
        return out

    def _matches(self, text: str) -> list[tuple[int, list[int], str]]:
        want = f"GARAGE_LAB_NODE={self.node}".encode()
        hits = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                if text.encode() not in cmd or cmd.startswith(b"sshd: "):
                    continue
                if want not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    continue
            except OSError:
                continue
            session = self._session_of(pid)
            if session:
                hits.append((pid, session, cmd.decode(errors="replace").strip()))
        return hits

    def _check_drop(self) -> None:
        self._reload_faults()
        if not self._drop or not self._drop.get("match"):
            return
        now = time.monotonic()
        for pid, session, cmd in self._matches(self._drop["match"]):
            first = self._seen.setdefault(pid, now)
            if now - first < float(self._drop.get("seconds") or 0):
                continue
            from .garage.knobs import consume_fault

            for s in session:
                try:
                    os.kill(s, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            consume_fault(self.nd / "faults.json", "ssh-drop")
            self._faults_mtime = None
            with open(self.nd / "net-events.jsonl", "a") as f:
                f.write(json.dumps({"t": time.time(), "event": "ssh-drop", "pid": pid, "killed": session,
                                    "command": cmd}) + "\n")
            self._seen.clear()
            return

    async def _watch(self) -> None:
        while True:
            self._reload_delay()
            try:
                self._check_drop()
            except Exception as exc:  # noqa: BLE001 - a watcher error must not stop the relay
                print(f"relay {self.node}: ssh-drop watcher: {exc!r}", file=sys.stderr, flush=True)
            await asyncio.sleep(0.05)

    async def run(self, ports: list[int], offset: int) -> None:
        """Serve every port until killed."""
        self._reload_delay()
        servers = []
        for port in ports:
            servers.append(await asyncio.start_server(lambda r, w, p=port: self._serve(p, r, w),
                                                      self.addr, port + offset, reuse_address=True))
        print(f"relay {self.node}: {self.addr} ports {ports} (+{offset})", flush=True)
        await self._watch()


def main(argv: list[str] | None = None) -> int:
    """``python -m garage_lab.relay --node-dir D --addr A --port P [--port P2] --offset O``."""
    ap = argparse.ArgumentParser(prog="garage-lab-relay")
    ap.add_argument("--node-dir", required=True)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, action="append", required=True)
    ap.add_argument("--offset", type=int, required=True)
    args = ap.parse_args(argv)
    asyncio.run(Relay(Path(args.node_dir), args.addr).run(args.port, args.offset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
