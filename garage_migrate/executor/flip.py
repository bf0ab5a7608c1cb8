"""The simultaneous restart as one unit: every stop at once, a barrier, every start at once.

The plan's ``flip`` phase has three ``together`` waves (stop, switch, start). Run wave by wave
and node step by node step, each step a Prefect task with its state round trips, the window
grew with the cluster (issue 13). Here they run as one unit, handed to the step runner in one
call (:meth:`StepRunner.flip`, one Prefect task in the flows):

1. before the window, the executor fixes what runs (:func:`unit_for`: the steps the ledger
   does not record as done, and the stops a resumed flip found necessary), the step runner
   checks every node's flip helper (:func:`garage_migrate.flip_steps.check_helpers`, which
   also opens every SSH connection) and every config that moves with the binary, and one
   fenced ledger write records every stop ``running``;
2. every node's stop and start calls are opened and *armed* (:class:`Gate`,
   :meth:`garage_migrate.ssh.NodeShell.run_armed`): each stop observes, says it is armed and
   waits; each start says it is armed at once. Once every call is armed, every stop is
   released by one write each (no exec, no login inside the window). A call that fails before
   arming, or not all armed within :data:`~garage_migrate.actions.flip.ARM_TIMEOUT`, and no
   stop is released: the cluster stays up on the source;
3. each node's switch follows its own stop at once; the barrier: no start before every stop
   and switch has finished. A failed stop or switch means no start at all (the cluster stays
   on 0.7, stopped where it was stopped);
4. one ledger write records every stop and switch result and every start ``running``; every
   start is released at once, as ``go-down`` where this unit's own stop saw the node down (no
   observation needed), else ``go`` (it observes first); each verifies its version itself, so
   verification overlaps the other nodes' starts; one write records the starts' results.

A failed start is returned to the executor, which asks a person (retry or roll back) as it
always did (:meth:`Executor.flip_failed`). While the unit runs, a SIGTERM or SIGINT (a cancel
from the Prefect UI, a Ctrl-C) is held (:mod:`.deferral`) and delivered once the barrier is
complete: the flip is never left split by a cancel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..actions.flip import ARM_TIMEOUT
from ..errors import NotReleasedError, SupersededError
from ..journal import in_step
from ..plan import Step
from ..steps import Runtime, StepResult

NodeCall = Callable[[str], Awaitable[StepResult]]
#: An armed node call: the node and its ``release``, awaited once armed (go: true).
ArmedCall = Callable[[str, Callable[[], Awaitable[bool]]], Awaitable[StepResult]]


@dataclass(frozen=True)
class FlipUnit:
    """What the flip runs, fixed before the window.

    Attributes:
        phase: the plan's phase (``flip``): the ledger's and the journal's key prefix.
        target: the version every node starts on.
        stops: the stop steps to run (the others are done, or not needed).
        switches: the switch steps to run.
        starts: the start steps to run.
        retried: the number of the "retry the node" decision this unit answers (its starts'
            records say so), or None for the flip itself.
    """

    phase: str
    target: str
    stops: tuple[Step, ...]
    switches: tuple[Step, ...]
    starts: tuple[Step, ...]
    retried: int | None = None

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node the unit touches, in plan order."""
        seen: dict[str, None] = {}
        for s in (*self.stops, *self.switches, *self.starts):
            seen.setdefault(s.node, None)
        return tuple(seen)


@dataclass
class FlipOutcome:
    """What the unit did.

    Attributes:
        results: ``(node, kind)`` -> the step's result.
        failed: node -> the error of its failed step (``failed_at`` says which part).
        failed_at: ``stop`` (a stop or switch failed: nothing was started), ``start``, or None.
        times: ``released``, ``barrier``, ``done``: the controller's clock (``time.time``).
    """

    results: dict[tuple[str, str], StepResult] = field(default_factory=dict)
    failed: dict[str, BaseException] = field(default_factory=dict)
    failed_at: str | None = None
    times: dict[str, float] = field(default_factory=dict)


class Gate:
    """Where the armed calls of the window wait, to be released together or not at all.

    With ``expected`` nodes, it opens by itself once each of them has armed or ended: ``go``
    unless one ended in failure first, or they did not all arm within ``deadline_s`` of the
    first (then no node acts: the cluster stays as it was). Without, its owner opens it (the
    barrier opens the starts' gate).
    """

    def __init__(self, expected=None, *, deadline_s: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._waiting = set(expected) if expected is not None else None
        self._open = asyncio.Event()
        self._deadline = deadline_s
        self._timer: asyncio.TimerHandle | None = None
        self._clock = clock
        self.go = True
        self.why: str | None = None
        self.opened_at: float | None = None

    def release_for(self, node: str) -> Callable[[], Awaitable[bool]]:
        """The ``release`` of ``node``'s armed call: it waits for the gate, then says go or not.
        (One timer for the deadline, not one per waiter: when the gate opens, every waiter
        resumes in the same pass of the event loop and writes its word at once.)"""
        async def release() -> bool:
            self._seen(node)
            await self._open.wait()
            return self.go
        return release

    def _expire(self) -> None:
        self.open(False, f"not every node armed within {self._deadline:.0f}s "
                         f"(still waiting for {', '.join(sorted(self._waiting or ())) or '-'})")

    def ended(self, node: str, failed: bool) -> None:
        """``node``'s call returned (``failed``: raised) without waiting or after its release."""
        if failed:
            self.open(False, f"{node}'s call failed before the release")
        self._seen(node)

    def arrived(self, node: str) -> None:
        """``node``'s call is armed and waits elsewhere (a start waits for the barrier)."""
        self._seen(node)

    def _seen(self, node: str) -> None:
        if self._waiting is not None:
            if self._timer is None and self._deadline is not None and not self._open.is_set():
                # counted from the first call to arm (or to end)
                self._timer = asyncio.get_running_loop().call_later(self._deadline, self._expire)
            self._waiting.discard(node)
            if not self._waiting:
                self.open(True)

    def open(self, go: bool, why: str | None = None) -> None:
        """Release every armed call (``go``) or abort them all; the first call decides."""
        if self._open.is_set():
            return
        if self._timer is not None:
            self._timer.cancel()
        self.go, self.why, self.opened_at = go, why, self._clock()
        self._open.set()


def _key(unit: FlipUnit, s: Step) -> str:
    return f"{unit.phase}:{s.kind}"


def _attempt(rt: Runtime, unit: FlipUnit, s: Step, opened: bool) -> int:
    rec = rt.ledger.step(s.node, _key(unit, s))
    n = len(rec.attempts) if rec is not None else 0
    return n if opened else n + 1


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "code", "FAILED"))


async def _run(rt: Runtime, unit: FlipUnit, s: Step, call: NodeCall, opened: bool,
               release: Callable[[], Awaitable[bool]] | None = None) -> StepResult:
    with in_step(unit.phase, s.kind, _attempt(rt, unit, s, opened), allowed=s.allowed()):
        return await (call(s.node) if release is None else call(s.node, release))


async def run_barrier(rt: Runtime, unit: FlipUnit, *, stop: ArmedCall, switch: NodeCall, start: ArmedCall,
                      clock: Callable[[], float] = time.time,
                      before: dict[str, dict[str, object]] | None = None,
                      arm_timeout: float = ARM_TIMEOUT) -> FlipOutcome:
    """Run ``unit`` as the module docstring says, with ``stop``/``switch``/``start`` the
    per-node calls (the helper's, or a test's; ``stop`` and ``start`` take the node and their
    ``release``, awaited once armed), and ``before`` node fields of the ledger (where a switch
    keeps the old config) set in the fenced write that opens the window.

    Raises:
        SupersededError: another run took the migration over (before anything acted, or at a
            ledger write: nothing more is released after it).
    """
    led, out = rt.ledger, FlipOutcome()
    await led.record_steps(((s.node, _key(unit, s), "running", "", None) for s in unit.stops), before)  # fenced
    switches = {s.node: s for s in unit.switches}
    stops = {s.node: s for s in unit.stops}
    starts = {s.node: s for s in unit.starts}
    first = list(dict.fromkeys([*stops, *switches]))
    # every stop and every start is opened and armed before the window: the stops are released
    # together once all are armed (or none, if one cannot be), the starts at the barrier
    arming = Gate([*stops, *starts], deadline_s=arm_timeout, clock=clock)
    start_gate = Gate(clock=clock)
    down_here: set[str] = set()  # stopped (or found stopped) by this unit's own call, just now

    def start_release(node: str) -> Callable[[], Awaitable[bool | str]]:
        wait = start_gate.release_for(node)

        async def release() -> bool | str:
            arming.arrived(node)
            if not await wait():
                return False
            # this unit's own stop saw the node down moments ago: no observation needed
            return "go-down" if node in down_here else "go"
        return release

    async def start_one(node: str) -> StepResult:
        try:
            r = await _run(rt, unit, starts[node], start, False, start_release(node))
        except BaseException:
            arming.ended(node, failed=True)  # before arming: no node is released
            raise
        arming.ended(node, failed=False)
        return r

    async def down(node: str) -> None:
        # a node's switch follows its own stop at once: it does not wait for the others
        if node in stops:
            try:
                out.results[(node, "stop")] = await _run(rt, unit, stops[node], stop, True, arming.release_for(node))
            except BaseException:
                arming.ended(node, failed=True)
                raise
            arming.ended(node, failed=False)
            down_here.add(node)
        if node in switches:
            out.results[(node, "switch")] = await _run(rt, unit, switches[node], switch, False)

    armed_starts = {n: asyncio.create_task(start_one(n)) for n in starts}
    res = await asyncio.gather(*(down(n) for n in first), return_exceptions=True)
    out.times["released"] = arming.opened_at or clock()
    out.times["barrier"] = clock()
    failed = {n: r for n, r in zip(first, res) if isinstance(r, BaseException)}
    superseded = next((r for r in failed.values() if isinstance(r, SupersededError)), None)
    start_failed: dict[str, BaseException] = {}
    if failed:  # (a superseded run is one of them)
        if not arming.go:
            rt.log.warning("flip: no stop was released: %s", arming.why)
        start_gate.open(False, "a stop or switch failed")
        got = await asyncio.gather(*armed_starts.values(), return_exceptions=True)  # none acted
        # a start that failed before arming held every stop back: it is the cause
        start_failed = {n: r for n, r in zip(armed_starts, got)
                        if isinstance(r, BaseException) and not isinstance(r, NotReleasedError)}
    if superseded is not None:
        raise superseded
    recs = []
    for n in first:
        for kind, steps in (("stop", stops), ("switch", switches)):
            if n not in steps:
                continue
            r = out.results.get((n, kind))
            if r is not None:
                recs.append((n, f"{unit.phase}:{kind}", r.status, r.detail, None))
            elif n in failed and (kind == "stop" or (n, "stop") in out.results or n not in stops):
                e = failed[n]
                recs.append((n, f"{unit.phase}:{kind}", "failed", f"{type(e).__name__}: {e}", _code(e)))
    if failed:
        recs += [(n, f"{unit.phase}:start", "failed", f"{type(e).__name__}: {e}", _code(e))
                 for n, e in start_failed.items()]
        await led.record_steps(recs)
        out.failed, out.failed_at = {**start_failed, **{n: e for n, e in failed.items() if n not in start_failed}}, "stop"
        return out  # the barrier failed: no node starts on the target
    try:
        await led.record_steps(recs + [(s.node, _key(unit, s), "running", "", None) for s in unit.starts])
    except BaseException:
        start_gate.open(False, "the ledger write at the barrier failed")
        await asyncio.gather(*armed_starts.values(), return_exceptions=True)
        raise
    start_gate.open(True)
    order = list(unit.starts)  # every start was armed with the stops
    res = await asyncio.gather(*(armed_starts[s.node] for s in order), return_exceptions=True)
    out.times["done"] = clock()
    recs, versions = [], {}
    for s, r in zip(order, res):
        if isinstance(r, SupersededError):
            raise r
        if isinstance(r, BaseException):
            out.failed[s.node] = r
            recs.append((s.node, _key(unit, s), "failed", f"{type(r).__name__}: {r}", _code(r), unit.retried))
        else:
            out.results[(s.node, "start")] = r
            recs.append((s.node, _key(unit, s), r.status, r.detail, None, unit.retried))
            versions[s.node] = {"running_version": (r.data or {}).get("version", unit.target)}
    await led.record_steps(recs, versions)
    if out.failed:
        out.failed_at = "start"
    return out


# ---------------------------------------------------------------------------- in the executor
def is_flip(phase) -> bool:
    """Whether ``phase`` is a simultaneous restart: its stop, switch and start waves together."""
    waves = {w.name: w for w in phase.waves}
    return phase.name == "flip" and all(n in waves and waves[n].together for n in ("stop", "switch", "start"))


def unit_for(ex, phase) -> FlipUnit:
    """The unit of ``phase`` for executor ``ex``: its steps minus those the ledger records as
    done (logged), except a stop that a resumed flip found necessary (the node runs the source)."""
    from . import flipresume

    waves = {w.name: w for w in phase.waves}
    picked: dict[str, list[Step]] = {"stop": [], "switch": [], "start": []}
    for kind, chosen in picked.items():
        for s in waves[kind].steps:
            key = f"{phase.name}:{s.kind}"
            found = ex.flip_found.get(s.node) if kind == "stop" else None
            done = ex.window.done(phase.name, s)
            if done and found is not None and flipresume.needs_stop(found, ex.plan.target_version):
                ex.log.warning("[%s] %s: done in the ledger, but the node is %s: stopping it again", s.node, key,
                               found.describe())
            elif done:
                ex.log.info("[%s] %s: skipped: done earlier in this migration (ledger)", s.node, key)
                continue
            chosen.append(s)
    return FlipUnit(phase.name, ex.plan.target_version, tuple(picked["stop"]), tuple(picked["switch"]),
                    tuple(picked["start"]))


async def execute_flip(ex, phase) -> None:
    """Run the flip phase of executor ``ex``: its stop, switch and start waves as one unit, with
    SIGTERM/SIGINT held until the barrier is complete, then its other waves (``wait-healthy``)
    as usual. A failed start goes to :meth:`Executor.flip_failed` (a person decides), unless a
    cancel is held: then nobody can be asked in this run, and the run ends with the nodes as
    they are (none on 0.7 while another is on 0.8); the next run resumes the flip and asks.

    Raises:
        whatever a failed stop or switch raised (nothing was started); the held signal's
        exception (``TerminationSignal`` in Prefect, ``KeyboardInterrupt``) once the barrier is
        complete.
    """
    unit_waves = [w for w in phase.waves if w.name in ("stop", "switch", "start")]
    for w in unit_waves:
        await ex.window.before(phase, w)  # refuses what cannot finish in the window, before any stop
    unit = unit_for(ex, phase)
    ex.rt.ledger.check_holder()
    ex.log.info("flip: %d stops, %d switches, %d starts released together, a barrier between stops and starts",
                len(unit.stops), len(unit.switches), len(unit.starts))
    outcome = await run_held(ex, unit)
    if outcome.failed_at == "stop":
        failed = outcome.failed
        ex.log.error("wave stop failed on %s", ", ".join(f"{n}: {e}" for n, e in failed.items()))
        # the cause, not a node that was only held back because of it
        raise next((e for e in failed.values() if not isinstance(e, NotReleasedError)), next(iter(failed.values())))
    if outcome.failed_at == "start":
        await ex.flip_failed(dict(outcome.failed))
    for w in phase.waves:
        if w not in unit_waves:
            await ex.window.before(phase, w)
            await ex.run_wave(phase, w)


async def run_held(ex, unit: FlipUnit) -> FlipOutcome:
    """Run ``unit`` through the step runner with SIGTERM/SIGINT held (:mod:`.deferral`); a held
    signal is recorded (``cancel-deferred``) and delivered once the barrier is complete.

    Raises:
        the held signal's exception (``TerminationSignal`` in Prefect, ``KeyboardInterrupt``).
    """
    from .deferral import SignalDeferral

    held = getattr(ex.steps, "signal_deferral", SignalDeferral)(ex.log)
    with held:
        outcome = await ex.steps.flip(ex.rt, unit)
    t = outcome.times
    if "released" in t:
        ex.log.info("flip: barrier %.2fs after the release%s", t.get("barrier", 0) - t["released"],
                    f", last start {t['done'] - t['released']:.2f}s after it" if "done" in t else "")
    for n, e in outcome.failed.items():
        await ex.emit("node.failed", phase=unit.phase, node=n, message=f"{unit.phase}: {type(e).__name__}: {e}",
                      step=outcome.failed_at, code=_code(e))
    if held.received:
        where = {None: "every node is on " + unit.target, "start": "the start failed on "
                 + ", ".join(sorted(outcome.failed)) + " (no other node runs the source)",
                 "stop": "a stop failed on " + ", ".join(sorted(outcome.failed)) + ": no node was started"}[outcome.failed_at]
        msg = (f"{held.describe()} held during the simultaneous restart until its barrier was complete: {where}; "
               "the run ends now as cancelled" + ("; the next run asks about the failed start" if outcome.failed_at == "start" else ""))
        ex.log.warning("flip: %s", msg)
        await ex.rt.ledger.event("cancel-deferred", msg, nodes=sorted(outcome.failed) or None)
        held.deliver()  # the previous handler ends the run (Prefect's raises TerminationSignal)
        # asyncio.run's own SIGINT handler cancels the main task instead: let it land here
        await asyncio.sleep(0)
        from ..errors import MigrationAborted

        raise MigrationAborted(f"cancelled during the flip: {msg}")  # a handler that returned
    return outcome
