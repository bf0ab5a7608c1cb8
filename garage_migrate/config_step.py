"""The config's part of the stage and switch steps: ``garage.toml`` prepared for 0.8 before the
window, switched with the binary, switched back with it on rollback.

The plan lists these actions only for a node whose config changes for 0.8
(:func:`garage_migrate.actions.config_stage`; the diff is in the plan and its approval). Each
function observes first and does nothing when the node is already as wanted, so a re-run is safe.
"""

from __future__ import annotations

from . import actions as A
from .config08 import diff_lines, translate
from .errors import StepError


def _changed_lines(diff: tuple[str, ...]) -> tuple[str, ...]:
    # the moved lines themselves: hunk positions may differ (the API gate edits other lines)
    return tuple(ln for ln in diff if ln[:1] in "+-" and not ln.startswith(("+++", "---")))


async def stage_config(rt, node: str) -> str | None:
    """Write ``garage.toml`` translated for 0.8 beside the live one; what was done, or ``None``
    when the plan has nothing to translate on ``node``.

    Raises:
        StepError: the live config no longer translates to what the plan shows (changed since
            discovery: plan again, so that a person approves what will be switched).
    """
    from .steps import _upload_text

    spec = rt.spec(node)
    acts = A.config_stage(spec)
    if acts is None:
        return None
    live = (await rt.observe(node, acts.read)).stdout
    t = translate(live)
    if not t.changed:
        return f"{spec.ctx.config_path} is in the 0.8 layout already"
    if _changed_lines(diff_lines(live, t.text, spec.ctx.config_path)) != _changed_lines(spec.config_diff):
        raise StepError(f"{spec.ctx.config_path} changed since the plan was made: its 0.8 translation is not the "
                        f"one the plan shows; plan again", node=node)
    staged = await rt.observe(node, acts.read_other, check=False)
    if staged.returncode == 0 and staged.stdout == t.text:
        return f"0.8 config already staged at {acts.upload.remote}"
    await _upload_text(rt, node, t.text, acts.upload.remote)
    return f"0.8 config staged at {acts.upload.remote} ({'; '.join(t.changes)})"


async def switch_config(rt, node: str, to: str) -> str | None:
    """Put the staged 0.8 config in place (``to="target"``, the old one kept for a rollback and
    recorded in the ledger) or the kept one back (``to="source"``); ``None``: nothing to do.

    Raises:
        StepError: the staged (or kept) config is missing or is not the translation of the
            live one.
    """
    from .steps import _upload_text

    spec = rt.spec(node)
    kept = rt.ledger.node(node).config_kept
    acts = A.config_switch(spec, "target" if to == "target" else "source", kept)
    if acts is None:
        return None
    live = (await rt.observe(node, acts.read)).stdout
    other = await rt.observe(node, acts.read_other, check=False)
    if to == "target":
        t = translate(live)
        if not t.changed:
            return f"{spec.ctx.config_path} is in the 0.8 layout already"
        if other.returncode != 0 or other.stdout != t.text:
            raise StepError(f"the staged 0.8 config {acts.read_other.argv[-1]} is missing or is not the translation "
                            f"of {spec.ctx.config_path}: run the stage step again", node=node)
        await _upload_text(rt, node, live, acts.upload.remote)
        await rt.ledger.set_node(node, config_kept=acts.upload.remote)
        await rt.act(node, acts.install)
        return f"{spec.ctx.config_path}: the 0.8 config (old one kept at {acts.upload.remote})"
    if other.returncode != 0:
        if translate(live).changed:
            return f"{spec.ctx.config_path} is back in the 0.7 layout already"
        raise StepError(f"the config kept before 0.8, {kept}, is missing: put the 0.7 garage.toml back by hand",
                        node=node)
    if other.stdout == live:
        return f"{spec.ctx.config_path} is the kept config already"
    await rt.act(node, acts.install)
    return f"{spec.ctx.config_path}: the config from before 0.8 is back"
