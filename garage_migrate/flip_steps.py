"""The simultaneous restart's node steps over the staged flip helper (issue 13 §1).

One SSH round trip per node for each of stop, switch and start: the helper
(``garage_migrate/node/flip.sh``) does on the node the waiting the controller would otherwise
poll for (:mod:`garage_migrate.actions.flip`), and prints what it did with node-side
timestamps. The barrier that releases these calls together is :mod:`garage_migrate.executor.flip`.

Before the window (:func:`check_helpers`): every node's staged helper is hashed again and
compared with the packaged one. A node whose helper is missing or differs fails there, before
any node is stopped: never half-way through the window.
"""

from __future__ import annotations

import asyncio

from . import actions as A
from . import commands as C
from .actions import flip as F
from .errors import LockHeldError, NotReleasedError, StepError
from .facts import parse_stats_version_line
from .steps import Runtime, StepResult

__all__ = ["check_configs", "check_helpers", "helper_stage", "helper_start", "helper_stop", "helper_switch", "parse_helper_output"]


def parse_helper_output(text: str) -> dict[str, str]:
    """The helper's ``key=value`` words (later lines win; ``t`` is the last line's time and
    ``t.<key>`` the time of the line that set ``<key>``)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("version-line="):
            out["version-line"] = line.removeprefix("version-line=")
            continue
        words = dict(w.split("=", 1) for w in line.split() if "=" in w)
        t = words.pop("t", None)
        for k, v in words.items():
            out[k] = v
            if t is not None:
                out[f"t.{k}"] = t
        if t is not None:
            out["t"] = t
    return out


def _dry(rt: Runtime, node: str) -> bool:
    return bool(getattr(rt.shell(node), "records_only", False))


async def helper_stage(rt: Runtime, node: str) -> str:
    """Stage the helper on ``node`` (skipped when its sha256 is right); what was done.

    Raises:
        StepError: the uploaded helper does not hash to the packaged one.
    """
    acts = F.stage_helper(rt.spec(node))
    want, dest = F.helper_sha256(), acts.upload.remote
    res = await rt.observe(node, acts.hash_, check=False)
    if res.returncode == 0 and res.stdout.split()[:1] == [want]:
        return f"flip helper already staged at {dest}"
    await rt.shell(node).put_file(F.HELPER_SOURCE, dest)
    got = (await rt.observe(node, acts.hash_)).stdout.split()[:1]
    if got != [want]:
        raise StepError(f"staged flip helper {dest} has sha256 {got[0] if got else '?'}, expected {want}", node=node)
    return f"flip helper staged at {dest} (sha256 ok)"


async def check_helpers(rt: Runtime, nodes: list[str]) -> None:
    """Before the window: every node's staged helper hashes to the packaged one.

    Raises:
        StepError: on the first node (by name) whose helper is missing or differs; nothing
            was stopped.
    """
    want = F.helper_sha256()

    async def one(node: str) -> str | None:
        res = await rt.observe(node, F.stage_helper(rt.spec(node)).hash_, check=False)
        if res.returncode != 0:
            return f"{node}: no flip helper at {F.helper_path(rt.spec(node))} ({res.stderr.strip()[:200]})"
        got = res.stdout.split()[:1]
        return None if got == [want] else f"{node}: flip helper sha256 {got[0] if got else '?'}, expected {want}"
    bad = [b for b in await asyncio.gather(*(one(n) for n in nodes)) if b]
    if bad:
        raise StepError("the flip helper cannot be used (run the stage phase again): " + "; ".join(bad),
                        node=min(bad).split(":")[0])


def _fail(node: str, res, what: str) -> StepError:
    words = parse_helper_output(res.stdout)
    err = words.get("error", f"exit {res.returncode}")
    return StepError(f"{what}: flip helper: {err} (exit {res.returncode}; {res.stderr.strip()[:300]})", node=node,
                     exit_status=res.returncode, stderr=res.stderr)


async def _go() -> bool:
    return True


def _released(node: str, res, what: str) -> None:
    if res.returncode == 65:
        raise NotReleasedError(f"{what}: not released (another node's part failed first): nothing was done", node=node)


async def helper_stop(rt: Runtime, node: str, release=_go) -> StepResult:
    """Stop ``node`` in one round trip: observe, arm, and once ``release()`` says go (every
    node's stop armed: :mod:`garage_migrate.executor.flip`), signal and wait on the node for
    the exit and a free DB lock."""
    call = F.flip_stop(rt.spec(node)).call
    res = await rt.act_armed(node, call, release, check=False)
    _released(node, res, "stop")
    if _dry(rt, node):
        return StepResult("stop", node, "done", "dry run: recorded")
    w = parse_helper_output(res.stdout)
    sig = rt.node(node).stop_signal
    if res.returncode == 2:
        raise StepError(f"daemon still running {A.STOP_TIMEOUT:.0f}s after {sig}: it was not killed; find out why "
                        f"it does not stop (its log), stop it by hand and check that {rt.meta_dir(node)}/db/db is "
                        f"no longer locked, then run this migration again", node=node)
    if res.returncode == 3:
        raise LockHeldError("the service is stopped but the DB lock is still held", node=node)
    if res.returncode != 0:
        raise _fail(node, res, "stop")
    if w.get("result") == "skipped":
        rt.info(node, "stop: skipped: already stopped and the DB lock is free")
        return StepResult("stop", node, "skipped", "already stopped and the DB lock is free", w)
    return StepResult("stop", node, "done", f"stopped with {sig} (signalled {w.get('t.signalled', '?')}, "
                      f"exited {w.get('t.exited', '?')}, lock free {w.get('t', '?')})", w)


async def check_configs(rt: Runtime, nodes: list[str]) -> dict[str, dict[str, str]]:
    """Before the window: on every node whose ``garage.toml`` moves with the binary, the live
    and staged configs hash to the plan's digests (or the live one is the 0.8 one already: a
    re-run). Returns node -> ``{"config_kept": path}``, the ledger fields to write in the same
    fenced write that opens the window, so that a rollback knows where the old config is kept
    even when the run dies right after the switch.

    Raises:
        StepError: on the first node (by name) whose config is not the plan's; nothing was
            stopped.
    """
    async def one(node: str) -> tuple[str, str | None, str | None]:
        cfg = F.flip_switch(rt.spec(node)).config
        if cfg is None:
            return node, None, None
        ctx = rt.spec(node).ctx
        live, staged = await asyncio.gather(rt.observe(node, C.sha256sum(cfg.live, sudo=ctx.sudo), check=False),
                                            rt.observe(node, C.sha256sum(cfg.staged, sudo=ctx.sudo), check=False))
        if _dry(rt, node):
            return node, cfg.keep, None
        have = live.stdout.split()[:1] if live.returncode == 0 else []
        if have == [cfg.target_sha256]:
            return node, cfg.keep, None
        if have != [cfg.source_sha256]:
            return node, None, (f"{node}: {cfg.live} changed since the plan was made (sha256 "
                                f"{have[0] if have else 'unreadable'}, the plan's {cfg.source_sha256}): plan again")
        if staged.returncode != 0 or staged.stdout.split()[:1] != [cfg.target_sha256]:
            return node, None, (f"{node}: the staged 0.8 config {cfg.staged} is missing or is not the plan's "
                                f"translation: run the stage phase again")
        return node, cfg.keep, None
    found = await asyncio.gather(*(one(n) for n in nodes))
    bad = sorted(b for _n, _k, b in found if b)
    if bad:
        raise StepError("the 0.8 config cannot be switched with the binary: " + "; ".join(bad),
                        node=bad[0].split(":")[0])
    return {n: {"config_kept": k} for n, k, _b in found if k}


async def helper_switch(rt: Runtime, node: str) -> StepResult:
    """Point ``node``'s binary at the staged target in one round trip, its ``garage.toml``
    moved with it where it changes for 0.8 (the old one kept: :func:`check_configs` recorded
    where)."""
    spec = rt.spec(node)
    acts = F.flip_switch(spec)
    res = await rt.act(node, acts.call, check=False)
    cfg = acts.config
    if _dry(rt, node):
        return StepResult("switch", node, "done", "dry run: recorded" + (f"; {cfg.live} moved too" if cfg else ""))
    if res.returncode == 7:
        raise _fail(node, res, f"switch ({cfg.live if cfg else 'config'} is not the plan's: nothing was changed)")
    if res.returncode != 0:
        raise _fail(node, res, "switch")
    w = parse_helper_output(res.stdout)
    more = ""
    if cfg is not None and w.get("config") == "done":
        more = f"; {cfg.live}: the 0.8 config (old one kept at {cfg.keep})"
    elif cfg is not None and w.get("config") == "skipped":
        more = f"; {cfg.live} is the 0.8 config already"
    if w.get("result") == "skipped":
        rt.info(node, "switch: skipped: %s already points to %s%s", spec.ctx.binary_path, spec.staged_path, more)
        return StepResult("switch", node, "skipped", f"{spec.ctx.binary_path} already points to {spec.staged_path}{more}", w)
    what = f"{spec.ctx.binary_path} -> {spec.staged_path}" if w.get("binary") != "skipped" else \
        f"{spec.ctx.binary_path} already points to {spec.staged_path}"
    return StepResult("switch", node, "done", what + more, w)


async def helper_start(rt: Runtime, node: str, version: str, release=_go) -> StepResult:
    """Start ``node`` on ``version`` in one round trip: observe, arm, and once ``release()``
    says go (the barrier: every node down), start and wait until the daemon answers as
    ``version`` (its first ``stats`` line, parsed here again)."""
    if version.startswith("0.8.") and rt.ledger.node(node).backup is None:
        # the rule of both flows: no 0.8 start without a backup of this node's metadata
        raise StepError("refusing to start 0.8 on a node without a verified backup from this migration", node=node)
    res = await rt.act_armed(node, F.flip_start(rt.spec(node), version).call, release, check=False)
    _released(node, res, "start")
    if _dry(rt, node):
        return StepResult("start", node, "done", f"dry run: recorded (running {version})", {"version": version})
    w = parse_helper_output(res.stdout)
    if res.returncode == 4:
        raise StepError(f"the {version} daemon exited soon after its start, before answering (service not active): "
                        f"it refuses to start; read its log, fix the cause, then run this migration again", node=node)
    if res.returncode == 5:
        raise StepError(f"daemon did not answer as {version} within {A.START_TIMEOUT:.0f}s", node=node)
    if res.returncode != 0:
        raise _fail(node, res, "start")
    got = parse_stats_version_line(w.get("version-line", "")).version
    if got != version:
        raise StepError(f"running {got}, expected {version}", node=node)
    w["version"] = got
    if w.get("result") == "skipped":
        rt.info(node, "start: skipped: already running %s", got)
        return StepResult("start", node, "skipped", f"already running {got}", w)
    return StepResult("start", node, "done", f"running {got} (started {w.get('t.started', '?')}, answered "
                      f"{w.get('t', '?')})", w)
