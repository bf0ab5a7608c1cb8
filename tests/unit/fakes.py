"""Fakes shared by the unit tests of the executor: a step runner that acts on nothing and a
decider that answers from a script."""

from __future__ import annotations

from garage_migrate.errors import StepError
from garage_migrate.executor import Answer, EngineSteps
from garage_migrate.gates import GateOutcome
from garage_migrate.steps import StepResult


class FakeSteps(EngineSteps):
    """A step runner that records ``(step, node, arg)`` and acts on nothing.

    Args:
        gates: the statuses the sync gates return, in order (then ``passed``).
        counters: the status ``check_counters`` returns.
        start_failures: node -> how many of its 0.8 starts fail first.
        on_call: called with each call tuple before it is recorded (to script a takeover).
        node_states: node -> ``NodeState`` that ``observe_node`` reports (default: stopped,
            with the target binary installed).
    """

    def __init__(self, gates=(), counters="done", start_failures=None, on_call=None, node_states=None):
        self.calls: list[tuple] = []
        self.gates = list(gates)
        self.counters = counters
        self.start_failures = dict(start_failures or {})
        self.on_call = on_call
        self.node_states = dict(node_states or {})

    def _rec(self, *call) -> None:
        if self.on_call is not None:
            self.on_call(call)
        self.calls.append(call)

    def acts(self) -> list[tuple]:
        """The calls that would change a node (everything but observations and gates)."""
        return [c for c in self.calls if c[0] not in ("preflight", "sync_gate", "observe_once", "wait_healthy",
                                                      "check_counters", "observe_node", "flip")]

    async def _done(self, step: str, node, arg=None) -> StepResult:
        self._rec(step, node, arg)
        return StepResult(step, node, "done")

    async def preflight(self, rt, node):
        # what the real preflight records and a rollback plan reads
        f = rt.nfacts(node)
        await rt.ledger.set_node(node, zone=f.zone, version_before=f.version, binary_before=f.binary_target)
        return await self._done("preflight", node)
    async def set_api(self, rt, node, enabled): return await self._done("set_api", node, enabled)
    async def launch_repair(self, rt, what): return await self._done("launch_repair", None, what)
    async def stop_node(self, rt, node): return await self._done("stop_node", node)
    async def wait_healthy(self, rt, nodes, scope): return await self._done("wait_healthy", None, scope)
    async def backup_metadata(self, rt, node):
        # a manifest on the controller, as the real step leaves (a rollback plan reads it)
        from garage_migrate.backup.manifest import Manifest, backup_paths, write_private_file
        from garage_migrate.ledger_model import BackupRef

        f, version = rt.nfacts(node), rt.ledger.node(node).version_before or "0.7.3"
        paths = backup_paths(rt.inv.backup.root, rt.inv.cluster, rt.ledger.doc.migration_id, node, version)
        paths.dir.mkdir(parents=True, exist_ok=True)
        m = Manifest(cluster=rt.inv.cluster, migration_id=rt.ledger.doc.migration_id, node=node, node_id=f.id64,
                     source_version=version, metadata_dir=f.config.metadata_dir, mode="controller",
                     archive=paths.archive.name, created_at="2026-12-01T12:00:00Z", zstd_level=3, du_bytes=10,
                     uncompressed_bytes=10240, compressed_bytes=512, archive_sha256="ab" * 32, members=())
        write_private_file(paths.manifest, m.model_dump_json().encode())
        await rt.ledger.set_node(node, backup=BackupRef(path=str(paths.archive), manifest=str(paths.manifest),
                                                        sha256="ab" * 32, version=version))
        return await self._done("backup_metadata", node)
    async def stage_binary(self, rt, node, helper=False): return await self._done("stage_binary", node)

    async def flip(self, rt, unit):
        """The real barrier (:func:`garage_migrate.executor.flip.run_barrier`) over this fake's
        stop, switch and start: the calls are recorded as the per-node steps were."""
        from garage_migrate.errors import NotReleasedError
        from garage_migrate.executor.flip import run_barrier

        self._rec("flip", None, tuple(unit.nodes))

        async def stop(n, release):  # armed as the helper's stop is: it acts once released
            if not await release():
                raise NotReleasedError("stop: not released", node=n)
            return await self.stop_node(rt, n)

        async def start(n, release):
            if not await release():
                raise NotReleasedError("start: not released", node=n)
            return await self.start_node(rt, n, unit.target)
        return await run_barrier(rt, unit, stop=stop, switch=lambda n: self.switch_binary(rt, n), start=start)
    async def switch_binary(self, rt, node, to="target"): return await self._done("switch_binary", node, to)
    async def offline_repair(self, rt, node): return await self._done("offline_repair", node)
    async def restore_node(self, rt, node, tag=None): return await self._done("restore_node", node)

    async def start_node(self, rt, node, version):
        self._rec("start_node", node, version)
        if version == "0.8.7" and self.start_failures.get(node, 0) > 0:
            self.start_failures[node] -= 1
            raise StepError("did not answer as 0.8.7", node=node)
        return StepResult("start", node, "done")

    async def check_counters(self, rt):
        self._rec("check_counters", None, None)
        return StepResult("check-counters", None, self.counters, "bucket b1: 3 objects counted, 5 in the table")

    async def sync_gate(self, rt, opts, name):
        self._rec("sync_gate", None, name)
        status = self.gates.pop(0) if self.gates else "passed"
        return GateOutcome(gate=name, status=status, passes=0 if status != "passed" else opts.gate_consecutive,
                           required=opts.gate_consecutive, elapsed=1.0, deadline=opts.gate_deadline_s, last={},
                           reasons=() if status == "passed" else ("n1: resync queue 12",))

    async def observe_node(self, rt, node):
        from garage_migrate.executor.flipresume import NodeState

        self._rec("observe_node", node, None)
        return self.node_states.get(node, NodeState(node, False, "0.8.7"))

    async def observe_once(self, rt):
        self._rec("observe_once", None, None)
        return {n.name: () for n in rt.facts.nodes}


class ScriptedDecider:
    """Answers questions from ``answers`` (gate key prefix -> actions in order) and records them."""

    def __init__(self, **answers: list[str]):
        self.answers = {k.replace("_", "-"): list(v) for k, v in answers.items()}
        self.asked: list[tuple[str, str]] = []
        self.descriptions: dict[str, str] = {}
        self.choices: dict[str, tuple[str, ...]] = {}

    async def ask(self, kind, key, description, choices=()):
        self.asked.append((kind, key))
        self.descriptions[key] = description
        self.choices[key] = tuple(choices)
        for prefix, actions in self.answers.items():
            if key.startswith(prefix) and actions:
                return Answer(action=actions.pop(0), note=f"scripted {kind}", pause_key=f"{key}-p", flow_run_id="fr")
        raise AssertionError(f"unexpected question {kind} {key}")
