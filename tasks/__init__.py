"""Prefect tasks: one per migration step, each a thin wrapper around one engine call.

Tasks retry only transient faults (transport trouble, timeouts) through ``retry_condition_fn``;
an operator error (wrong binary, checksum mismatch, a held DB lock) fails at once and goes to a
person. Probes are never cached (``NO_CACHE``): a stale health check is worse than none.
Every log line carries the node name.
"""

from __future__ import annotations

import dataclasses

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from garage_migrate import api_step, steps
from garage_migrate.errors import is_transient
from garage_migrate.steps import Runtime, StepResult


def transient_only(task_, task_run, state) -> bool:
    """``retry_condition_fn``: retry a failed task only when its error is transient."""
    try:
        state.result(_sync=True)  # in an async task, result() would return an un-awaited coroutine
    except BaseException as exc:  # noqa: BLE001 - we classify whatever the task raised
        return is_transient(exc)
    return False


def _rt(rt: Runtime) -> Runtime:
    # route the engine's logs to this task run's logger
    return dataclasses.replace(rt, log=get_run_logger())


RETRYING = dict(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=transient_only, cache_policy=NO_CACHE)
ONCE = dict(retries=0, cache_policy=NO_CACHE)


@task(name="preflight", task_run_name="preflight-{node}", **RETRYING)
async def preflight(rt: Runtime, node: str) -> StepResult:
    """Reachability, versions, disk space, config keys 0.8 ignores."""
    return await steps.preflight(_rt(rt), node)


@task(name="set-api", task_run_name="api-{node}-{enabled}", **RETRYING)
async def set_api(rt: Runtime, node: str | None, enabled: bool) -> StepResult:
    """Cut or restore client access (the inventory's API gate)."""
    return await api_step.set_api(_rt(rt), node, enabled)


@task(name="launch-repair", task_run_name="repair-{what}", **RETRYING)
async def launch_repair(rt: Runtime, what: str) -> StepResult:
    """``garage repair --all-nodes --yes <what>`` (returns at once; the gate waits)."""
    return await steps.launch_repair(_rt(rt), what)


@task(name="stop-node", task_run_name="stop-{node}", **RETRYING)
async def stop_node(rt: Runtime, node: str) -> StepResult:
    """Stop gracefully; verified stopped and lock released."""
    return await steps.stop_node(_rt(rt), node)


@task(name="start-node", task_run_name="start-{node}-{version}", **RETRYING)
async def start_node(rt: Runtime, node: str, version: str) -> StepResult:
    """Start; verified version (and backup present before any 0.8 start)."""
    return await steps.start_node(_rt(rt), node, version)


@task(name="wait-healthy", task_run_name="healthy-{scope}", **RETRYING)
async def wait_healthy(rt: Runtime, nodes: list[str], scope: str) -> StepResult:
    """Every node of ``nodes`` sees the others healthy."""
    return await steps.wait_healthy(_rt(rt), nodes)


@task(name="backup-metadata", task_run_name="backup-{node}", **RETRYING)
async def backup_metadata(rt: Runtime, node: str) -> StepResult:
    """Back up the stopped node's metadata, verified (reuses a verified backup)."""
    from garage_migrate import backup_step

    return await backup_step.backup_metadata(_rt(rt), node)


@task(name="stage-binary", task_run_name="stage-{node}", **RETRYING)
async def stage_binary(rt: Runtime, node: str, helper: bool = False) -> StepResult:
    """Upload + sha256 + version check of the staged binary (and the flip helper); live symlink untouched."""
    return await steps.stage_binary(_rt(rt), node, helper)


@task(name="switch-binary", task_run_name="switch-{node}-{to}", **RETRYING)
async def switch_binary(rt: Runtime, node: str, to: str = "target") -> StepResult:
    """Atomic, reversible symlink flip."""
    return await steps.switch_binary(_rt(rt), node, to)


@task(name="offline-repair", task_run_name="offline-repair-{node}", **ONCE)
async def offline_repair(rt: Runtime, node: str) -> StepResult:
    """``offline-repair --yes object_counters``; never retried blindly."""
    return await steps.offline_repair(_rt(rt), node)


@task(name="check-counters", task_run_name="check-counters", **RETRYING)
async def check_counters(rt: Runtime) -> StepResult:
    """Bucket counters consistent with the object tables."""
    return await steps.check_counters(_rt(rt))


@task(name="flip", task_run_name="flip-{unit.target}", **ONCE)
async def flip(rt: Runtime, unit) -> object:
    """The whole simultaneous restart as one task (no per-node task or state round trip inside
    the window; never retried blindly: a failed start goes to a person)."""
    from garage_migrate.executor.interfaces import EngineSteps

    return await EngineSteps().flip(_rt(rt), unit)


__all__ = [
    "backup_metadata", "check_counters", "flip", "launch_repair", "offline_repair", "preflight", "set_api",
    "stage_binary", "start_node", "stop_node", "switch_binary", "transient_only", "wait_healthy",
]
