"""The API gate's step (``disable-api`` / ``enable-api``): the guide's way to cut client access on
0.7, which cannot disable its endpoints. The S3/web bind ports move away in ``garage.toml`` (the
original kept on the node, owner-only, the ledger holding only its sha256) and a running node is
restarted on the same version for it to take effect; re-enabling puts the original back, in its
0.8 layout once the node runs 0.8. Or, with ``api_gate.kind: commands``, one command on a gate
host (a reverse proxy). Like every step, it observes first and a re-run changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import re

from . import actions as A
from .config08 import restored_in_form_of
from .errors import StepError
from .steps import (Runtime, StepResult, _record, _skip, _upload_text, daemon_version, service_active, start_node,
                    stop_node)

__all__ = ["move_ports", "set_api"]


async def set_api(rt: Runtime, node: str, enabled: bool) -> StepResult:
    """Move the S3/web bind ports away (or back) in ``garage.toml``: the guide's way to cut
    client access on 0.7, which cannot disable its endpoints. Takes effect at the next start.
    """
    gate = rt.inv.api_gate
    key = "enable-api" if enabled else "disable-api"
    if gate.kind == "none":
        return await _record(rt, _skip(rt, key, node, "api_gate is none"), key)
    if gate.kind == "commands":
        # cluster-level: one command on the gate host (e.g. the reverse proxy)
        spec = gate.enable if enabled else gate.disable
        await rt.act(spec.host, A.gate_command(tuple(spec.argv)))
        await rt.ledger.record_gate(key, status="done", host=spec.host)
        return StepResult(key, None, "done", f"gate command ran on {spec.host}")
    acts = A.set_api(rt.spec(node), enabled)
    text = (await rt.observe(node, acts.read_config)).stdout
    original = await _original_config(rt, node, text, keep=not enabled)
    if original is None:
        return await _record(rt, _skip(rt, key, node, "the API was never disabled in this migration"), key)
    # restored under 0.8: in its 0.8 layout, or discovery would quietly turn off again
    want = restored_in_form_of(original, text) if enabled else move_ports(original, gate.moved_s3_port,
                                                                          gate.moved_web_port)
    client_addr = _bind_of(original, "s3_api")  # where clients reach the S3 API
    running = await service_active(rt, node)
    stale = running and client_addr is not None and await _client_reachable(rt, node, client_addr) != enabled
    # an earlier attempt of this step stopped the node to restart it and broke before the start
    pending = rt.ledger.node(node).api_restart_version
    if want == text and not stale and not pending:
        return await _record(rt, _skip(rt, key, node, "config and running daemon already "
                                       + ("serve" if enabled else "refuse") + " clients"), key)
    if want != text:
        await _upload_text(rt, node, want, acts.upload.remote)
        await rt.act(node, acts.rename)
        if enabled and want != original:
            # restored in its 0.8 layout: a re-run must recognise it (the kept copy goes below)
            await rt.ledger.set_node(node, config_original_sha256=_sha256(want))
    # Garage reads its bind addresses at start only (0.7 cannot disable endpoints, ref 9):
    # a running node is restarted on the same version for the change to take effect
    if running or pending:
        version = (await daemon_version(rt, node) if running else None) or pending
        await rt.ledger.set_node(node, api_restart_version=version)
        await stop_node(rt, node)  # observes first: waits out a stop still under way
        if version:
            await start_node(rt, node, version)
        await rt.ledger.set_node(node, api_restart_version=None)
        if client_addr and await _client_reachable(rt, node, client_addr) != enabled:
            raise StepError(f"S3 endpoint {client_addr} is {'not ' if enabled else 'still '}reachable", node=node)
    if enabled:  # restored: the kept copy has served (the ledger keeps its digest)
        await rt.act(node, acts.drop_original)
    return await _record(rt, StepResult(key, node, "done", ("API restored" if enabled else "API cut")
                                        + (f": clients' S3 address {client_addr} " + ("open" if enabled else "closed")
                                           if (running or pending) and client_addr else " (takes effect at the next start)")), key)


async def _original_config(rt: Runtime, node: str, text: str, keep: bool) -> str | None:
    """The node's original ``garage.toml``, kept on the node beside the config while the API is cut.

    The copy (:func:`original_config_path`) is written once, by the first cut, before the
    config changes, and removed when the API is restored; the ledger records only its sha256.
    A copy left by an earlier migration that cut the API and never restored it holds the real
    original, so a new migration adopts it instead of taking the cut config for the original.
    A format-1 ledger of a version before 1ad4641 held the original itself; reading it kept
    only its sha256 and, in this process, the text (:meth:`Ledger.legacy_config_original`):
    it is moved to the node here, where format 2 keeps it. (A process that read such a ledger
    and died before this step leaves only the digest: the error below says to restore by hand.)
    ``None``: the API was never cut in this migration (and ``keep`` is false).

    Raises:
        StepError: the kept copy is missing (and the config is not the original) or differs
            from the recorded digest.
    """
    rec = rt.ledger.node(node)
    digest = rec.config_original_sha256
    if digest is not None and _sha256(text) == digest:
        return text  # the config is the original (not cut yet, or restored)
    read = A.read_original(rt.node(node).ctx)
    path = read.argv[-1]
    legacy = rt.ledger.legacy_config_original(node)
    if legacy is not None:
        # on the node from now on: the ledger will never hold it again
        await _upload_text(rt, node, legacy, path)
        await rt.ledger.set_node(node, config_original_path=path)
        rt.info(node, "the original config recorded by an older ledger format is kept at %s now", path)
        return legacy
    res = await rt.observe(node, read, check=False)
    kept = res.stdout if res.returncode == 0 else None
    if digest is not None:
        if kept is None or _sha256(kept) != digest:
            raise StepError(f"the original config kept at {path} is missing or is not the one recorded "
                            f"(sha256 {digest[:16]}): restore it by hand before re-enabling the API", node=node)
        return kept
    if not keep:
        return None
    if kept is None:
        kept = text
        await _upload_text(rt, node, text, path)
    else:
        rt.info(node, "the API was left cut by an earlier run: restoring from its original config, %s", path)
    await rt.ledger.set_node(node, config_original_sha256=_sha256(kept), config_original_path=path)
    return kept


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _bind_of(toml_text: str, section: str) -> str | None:
    import tomllib

    try:
        d = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError:
        return None
    return (d.get(section) or {}).get("api_bind_addr" if section == "s3_api" else "bind_addr")


async def _client_reachable(rt: Runtime, node: str, addr: str) -> bool:
    """Whether a client reaches ``addr`` (node ``node``'s S3 API) now.

    The node's shell answers when it can (a dry run's shell knows the ports it recorded
    moving); otherwise a TCP connection from the controller tells.
    """
    probe = getattr(rt.shell(node), "reachable", None)
    answer = await probe(addr) if probe is not None else None
    return answer if answer is not None else await _reachable(addr)


async def _reachable(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    host = host.strip("[]")
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2.0)
    except (OSError, asyncio.TimeoutError):
        return False
    w.close()
    return True


_BIND = re.compile(r'^(\s*(?:api_bind_addr|bind_addr)\s*=\s*")([^"]*):(\d+)(".*)$')


def move_ports(toml_text: str, s3_port: int, web_port: int) -> str:
    """Rewrite ``[s3_api] api_bind_addr`` and ``[s3_web] bind_addr`` to other ports."""
    out, section = [], ""
    for line in toml_text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.strip("[]").strip()
        m = _BIND.match(line.rstrip("\n"))
        if m and section in ("s3_api", "s3_web") and (section == "s3_api") == ("api_bind_addr" in m.group(1)):
            port = s3_port if section == "s3_api" else web_port
            line = f"{m.group(1)}{m.group(2)}:{port}{m.group(4)}\n"
        out.append(line)
    return "".join(out)
