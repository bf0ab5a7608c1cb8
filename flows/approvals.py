"""Asking a person, the Prefect way: the forms and the pause that waits for a real answer.

Three defects of the obvious ``pause_flow_run(wait_for_input=Form.with_initial_data(action=...))``
were found on a real server, and each is closed here:

1. **A pause key already used returns the form's defaults.** Prefect refuses a pause whose key
   the run already used (its ``pause_keys`` policy) and answers Running; ``pause_flow_run`` then
   loads the response, finds none and returns ``Form()``, i.e. the defaults. A default of
   ``approve`` was an approval nobody gave. Here no form has a default action (the server
   rejects a resume whose input lacks one), every pause has a key new for each attempt of each
   process (``<gate>-<token>-<n>``), and an answer is only ever the response stored for *that*
   key: no response is "not decided".
2. **Anything that moves a paused run out of Paused wakes the paused process.** A retry, a
   state set through the API, a Resume without input: ``pause_flow_run`` returns as soon as the
   run is Running. Here the process reads the run's state history after its pause: if the run
   went anywhere but straight back to Running (Crashed, Scheduled, Pending: a new attempt), the
   run was taken over and this process stops without touching a node
   (:class:`~garage_migrate.errors.SupersededError`, turned into Prefect's ``Abort`` by the
   flow so that no state is proposed for the new attempt). If it came straight back to Running
   without an answer, it pauses again with a new key.
3. **The wait is bounded by the pause timeout only** (the deployments carry no concurrency
   limit whose lease would kill a paused run; see ``deployments/prefect.yaml``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Literal

import pydantic
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.input import RunInput, keyset_from_paused_state
from prefect.input.actions import aread_flow_run_input
from prefect.states import Paused
from prefect.utilities.engine import propose_state

from garage_migrate.errors import MigrationAborted, SupersededError
from garage_migrate.executor import Answer

NOTE = pydantic.Field("", title="Note", description="Why (kept in the ledger and the report).")


class Approval(RunInput):
    """Approve or abort the next risky phase. There is no default: choose one."""

    action: Literal["approve", "abort"] = pydantic.Field(
        title="Decision", description="approve: run the phase shown below; abort: stop the migration here")
    note: str = NOTE


class GateDecision(RunInput):
    """A sync gate did not pass. There is no default: choose one."""

    action: Literal["wait_more", "proceed_anyway", "abort"] = pydantic.Field(
        title="Decision", description="wait_more: run the gate again; proceed_anyway: go on (recorded); "
                                      "abort: stop the migration here")
    note: str = NOTE


class CountersDecision(RunInput):
    """The bucket counters look wrong. There is no default: choose one."""

    action: Literal["proceed_anyway", "abort"] = pydantic.Field(
        title="Decision", description="proceed_anyway: go on (recorded); abort: stop the migration here")
    note: str = NOTE


class NodeFailureDecision(RunInput):
    """Nodes failed to come up on 0.8 after the simultaneous restart. There is no default."""

    action: Literal["retry", "rollback"] = pydantic.Field(
        title="Decision", description="retry: start the failed nodes on 0.8 again; rollback: every node back "
                                      "to 0.7 from its verified backup")
    note: str = NOTE


def prefect_key(*parts: str) -> str:
    """A pause/artifact key: lowercase letters, digits and dashes only (Prefect's rule)."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def pause_key(gate: str, token: str, n: int) -> str:
    """``<gate>-<first 8 of the token>-<n>``: new for each attempt of each process."""
    return prefect_key(gate, token[:8], str(n))


# the states a run passes through when something other than a resume moved it out of Paused
_TAKEOVER_STATES = frozenset({"SCHEDULED", "PENDING", "CRASHED", "FAILED", "CANCELLED", "CANCELLING", "COMPLETED"})


class Asker:
    """Pauses the current flow run until a person answers a form (one per flow run process).

    Args:
        token: this process's holder token (makes the pause keys unique).
        superseded: set by the cluster lock's heartbeat when another run took over.
        log: the run logger.
        poll_interval: seconds between two reads of the run's state.
    """

    def __init__(self, token: str, superseded: asyncio.Event | None = None, log=None, poll_interval: float = 1.0):
        self.token = token
        self.superseded = superseded or asyncio.Event()
        self.log = log
        self.poll_interval = poll_interval
        self._n = 0

    async def ask(self, form: type[RunInput], gate: str, description: str, timeout: float) -> Answer:
        """Pause until a real answer arrives; pause again after a resume without one.

        Raises:
            SupersededError: the run left Paused for another attempt (retry, crash, cancel).
            MigrationAborted: nobody answered within ``timeout`` seconds (not approved).
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MigrationAborted(f"no answer at {gate} within {timeout:.0f} s: not approved, nothing done")
            self._n += 1
            key = pause_key(gate, self.token, self._n)
            answer = await self._pause_once(form, key, description, left)
            if answer is not None:
                return answer
            if self.log is not None:
                self.log.warning("%s: the run was resumed without an answer: that is not a decision; asking again", gate)

    async def _pause_once(self, form, key: str, description: str, timeout: float) -> Answer | None:
        ctx = FlowRunContext.get()
        if ctx is None:
            raise RuntimeError("a person can only be asked from inside a flow run")
        frid = ctx.flow_run.id
        proposed = Paused(timeout_seconds=int(max(1, timeout)), reschedule=False, pause_key=key)
        keyset = keyset_from_paused_state(proposed)
        proposed.state_details.run_input_keyset = keyset
        if self.log is not None:
            self.log.info("Paused for a decision at %s: answer it from the run's page (Resume)", key)
        async with get_client() as client:
            state = await propose_state(client=client, state=proposed, flow_run_id=frid)
            if not state.is_paused():
                # Prefect refused the pause (e.g. a key it has seen): never read that as an answer
                await self._check_not_taken_over(client, frid, None)
                return None
            paused_id = state.id
            await form.with_initial_data(description=description).asave(keyset)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                await asyncio.sleep(self.poll_interval)
                if self.superseded.is_set():
                    raise SupersededError(f"run taken over while paused at {key}: stopping, nothing touched")
                fr = await client.read_flow_run(frid)
                st = fr.state
                if st is None or (st.is_paused() and st.state_details.pause_key == key):
                    continue
                await self._check_not_taken_over(client, frid, paused_id)
                if not st.is_running():
                    continue
                raw = await aread_flow_run_input(keyset["response"], flow_run_id=frid)
                if not raw:
                    return None
                try:
                    got = form(**raw)
                except pydantic.ValidationError:
                    return None
                return Answer(action=got.action, note=got.note, pause_key=key, flow_run_id=str(frid))
        raise MigrationAborted(f"no answer at {key} within {timeout:.0f} s: not approved, nothing done")

    async def _check_not_taken_over(self, client, frid, paused_id) -> None:
        """Raise if, since our Paused state, the run went through anything but Running."""
        states = await client.read_flow_run_states(frid)
        ids = [s.id for s in states]
        after = states[ids.index(paused_id) + 1:] if paused_id in ids else states[-1:]
        moved = [s for s in after if s.type.value in _TAKEOVER_STATES]
        if moved:
            names = ", ".join(s.name or s.type.value for s in moved)
            raise SupersededError(f"the flow run left its pause through {names} (a retry, a crash or a cancel): "
                                  f"this process stops and touches nothing")


#: the form each kind of executor decision is asked with
FORMS: dict[str, type[RunInput]] = {"approval": Approval, "gate": GateDecision, "counters": CountersDecision,
                                    "flip-failure": NodeFailureDecision}


class PrefectDecider:
    """The executor's :class:`~garage_migrate.executor.Decider` in a flow run: pauses through
    :class:`Asker` with the kind's form, for at most ``pause_timeout`` seconds (or what the
    callable answers when it is asked: the maintenance window's bound)."""

    def __init__(self, asker: Asker, pause_timeout: float | Callable[[], float]):
        self.asker = asker
        self.pause_timeout = pause_timeout

    async def ask(self, kind: str, key: str, description: str) -> Answer:
        """See :meth:`garage_migrate.executor.Decider.ask`."""
        timeout = self.pause_timeout() if callable(self.pause_timeout) else self.pause_timeout
        return await self.asker.ask(FORMS[kind], key, description, timeout)
