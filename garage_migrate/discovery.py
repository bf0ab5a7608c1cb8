"""Discovery: read the cluster's facts over SSH and refuse clear mismatches with the inventory.

For every node, concurrently: its ``garage.toml``, ``garage node id -q``, the service state,
the version of the binary at ``binary_path`` and, when the daemon runs, the version it runs
(first line of ``garage stats``). Then ``garage status`` and ``layout show`` from one running
node give zones and roles. Everything here only reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field

from . import commands as C
from .config08 import diff_lines, translate
from .errors import CommandError, DiscoveryError, GarageMigrateError, PlanError
from .facts import (
    ClusterStatus,
    GarageConfig,
    GarageVersion,
    Layout,
    ParseError,
    parse_config,
    parse_layout,
    parse_node_id,
    parse_stats,
    parse_status,
    parse_version,
)
from .facts.tools import parse_zstd_version
from .inventory import Inventory, ResolvedNode
from .ssh import NodeShell

log = logging.getLogger("garage_migrate.discovery")

# replication_mode -> (copies, write quorum) (ref 5, 8)
REPLICATION = {"none": (1, 1), "1": (1, 1), "2": (2, 2), "2-dangerous": (2, 1),
               "3": (3, 2), "3-degraded": (3, 2), "3-dangerous": (3, 1)}


@dataclass(frozen=True)
class NodeFacts:
    """What discovery learnt about one node.

    Attributes:
        name: inventory name.
        host: SSH host.
        zone: zone from the layout (or the inventory when the layout has no role).
        id64: full node ID (``node id -q``).
        config: the parsed ``garage.toml``.
        running: the service is active.
        daemon_version: version the running daemon reports, or ``None`` when stopped.
        binary_version: version of the binary at ``binary_path``.
        binary_target: where ``binary_path`` resolves (``readlink -f``).
        metadata_bytes: size of ``metadata_dir`` (``du -sb``), which sets the backup's timeout
            in the plan; ``None`` when it could not be measured.
        zstd_version: the node's ``zstd`` CLI version, ``None`` when it has none: backups are
            compressed on the node when it has one.
        config_diff: the changes of its ``garage.toml`` for 0.8 (:mod:`garage_migrate.config08`),
            a diff of the moved lines only; empty when the config is 0.8-ready.
        config_shas: with a diff, the sha256 of the live config and of its translation (what
            the flip's switch checks on the node before moving it); never the text itself.
    """

    name: str
    host: str
    zone: str | None
    id64: str
    config: GarageConfig
    running: bool
    daemon_version: GarageVersion | None
    binary_version: GarageVersion
    binary_target: str
    metadata_bytes: int | None = None
    zstd_version: str | None = None
    config_diff: tuple[str, ...] = ()
    config_shas: tuple[str, str] | None = None

    @property
    def id16(self) -> str:
        """The 16-hex ID Garage prints."""
        return self.id64[:16]

    @property
    def version(self) -> str | None:
        """The running version if any, else the installed binary's."""
        v = self.daemon_version or self.binary_version
        return v.version


@dataclass(frozen=True)
class ClusterFacts:
    """Facts about the whole cluster, as discovered."""

    nodes: tuple[NodeFacts, ...]
    layout: Layout | None
    status: ClusterStatus | None
    warnings: tuple[str, ...] = field(default=())

    def node(self, name: str) -> NodeFacts:
        """Facts of node ``name``."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def zones(self) -> dict[str, tuple[str, ...]]:
        """Node names by zone, zones sorted."""
        out: dict[str, list[str]] = {}
        for n in self.nodes:
            out.setdefault(n.zone or "?", []).append(n.name)
        return {z: tuple(v) for z, v in sorted(out.items())}

    @property
    def replication_mode(self) -> str:
        """The cluster's ``replication_mode`` (checked identical on every node)."""
        return self.nodes[0].config.replication_mode

    def versions(self) -> dict[str, str | None]:
        """Version per node (running, else installed)."""
        return {n.name: n.version for n in self.nodes}

    def to_markdown(self) -> str:
        """A table of the facts, for approval forms and reports."""
        lines = ["| node | zone | id | running | version | binary |", "|---|---|---|---|---|---|"]
        for n in self.nodes:
            lines.append(f"| {n.name} | {n.zone} | `{n.id16}` | {'yes' if n.running else 'no'} | "
                         f"{n.daemon_version.version if n.daemon_version else '-'} | {n.binary_version.version} |")
        for w in self.warnings:
            lines.append(f"\n- warning: {w}")
        return "\n".join(lines)


def _sha256(text: str) -> str:
    # the digest of the file the text was read from (UTF-8, as written by the stage's upload)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


async def _node_facts(node: ResolvedNode, shell: NodeShell) -> tuple[NodeFacts, str | None, str | None]:
    ctx = node.ctx
    cfg_text = (await shell.run(C.cat(ctx.config_path, sudo=ctx.sudo))).stdout
    try:
        config = parse_config(cfg_text)
    except ParseError as exc:
        raise DiscoveryError(f"{node.name}: cannot read {ctx.config_path}: {exc}", node=node.name) from None
    node_id = parse_node_id((await shell.run(C.garage(ctx, "node", "id", "-q"))).stdout)
    status = await shell.run(C.service_status(ctx), check=False)
    running = status.returncode == 0
    binary_version = parse_version((await shell.run(C.garage_version(ctx.binary_path, ctx=ctx))).stdout)
    target = (await shell.run(C.readlink_f(ctx.binary_path))).stdout.strip()
    daemon_version = None
    status_text = layout_text = None
    if running:
        try:
            stats = parse_stats((await shell.run(C.garage(ctx, "stats"))).stdout)
            daemon_version = stats.version
            status_text = (await shell.run(C.garage(ctx, "status"))).stdout
            layout_text = (await shell.run(C.garage(ctx, "layout", "show"))).stdout
        except CommandError as exc:
            # running but unreachable with this binary: e.g. the binary was already swapped
            log.warning("%s: daemon is active but does not answer the CLI: %s", node.name, exc)
    du = await shell.run(C.du_bytes(config.metadata_dir, sudo=ctx.sudo), check=False)
    size = int(du.stdout.split()[0]) if du.returncode == 0 and du.stdout.split()[:1] and du.stdout.split()[0].isdigit() else None
    zstd = await shell.run(C.zstd_version(), check=False)
    try:
        translated = translate(cfg_text).text
        diff = diff_lines(cfg_text, translated, ctx.config_path)
    except PlanError as exc:
        raise DiscoveryError(f"{node.name}: {ctx.config_path} cannot be prepared for 0.8: {exc}",
                             node=node.name) from None
    facts = NodeFacts(node.name, node.host, node.zone, node_id.id64, config, running, daemon_version,
                      binary_version, target, size, parse_zstd_version(zstd.returncode, zstd.stdout), diff,
                      (_sha256(cfg_text), _sha256(translated)) if diff else None)
    return facts, status_text, layout_text


async def discover(inv: Inventory, shells, *, procedure: str = "simple", resuming: bool = False) -> ClusterFacts:
    """Read the cluster's facts and check them against the inventory.

    Args:
        inv: the inventory.
        shells: ``name -> NodeShell`` (e.g. ``SshPool.shell``), any mapping or callable.
        procedure: ``simple`` or ``minimal-downtime`` (the latter needs a zone to be expendable).
        resuming: a migration is in progress (its ledger exists), so nodes may already run the
            target version.

    Raises:
        DiscoveryError: a mismatch between the inventory and the cluster.
        TransportError: a node cannot be reached.
    """
    get = shells if callable(shells) else shells.__getitem__
    nodes = inv.resolved_nodes()
    results = await asyncio.gather(*(_node_facts(n, get(n.name)) for n in nodes))
    facts = [r[0] for r in results]
    layout = status = None
    for _f, st, lay in results:
        if st and lay:
            status, layout = parse_status(st), parse_layout(lay)
            break
    problems: list[str] = []
    warnings: list[str] = []
    by_id16 = {f.id16: f for f in facts}
    if layout is not None:
        roles = {r.id16: r for r in layout.roles}
        zoned = []
        for f in facts:
            role = roles.get(f.id16)
            if role is None:
                problems.append(f"{f.name} ({f.id16}) is not in the cluster layout")
                zoned.append(f)
                continue
            if f.zone is not None and f.zone != role.zone:
                problems.append(f"{f.name}: inventory says zone {f.zone}, the layout says {role.zone}")
            zoned.append(dataclasses.replace(f, zone=role.zone))
        facts = zoned
        for r in layout.roles:
            if r.capacity is not None and r.id16 not in by_id16:
                problems.append(f"layout storage node {r.id16} (zone {r.zone}) is not in the inventory")
    else:
        warnings.append("no running node answered: zones come from the inventory only")
    modes = {f.config.replication_mode for f in facts}
    if len(modes) > 1:
        problems.append(f"nodes disagree on replication_mode: {sorted(modes)}")
    for f in facts:
        v = f.version or ""
        allowed = v.startswith("0.7.") or (resuming and v == inv.target.version.removeprefix("v"))
        if not allowed:
            problems.append(f"{f.name} runs {v or 'an unknown version'}: only 0.7.x can be migrated"
                            + ("" if resuming else " (or resume a migration in progress)"))
        elif inv.source is not None and v.startswith("0.7.") and v != inv.source.version:
            problems.append(f"{f.name} runs {v}, not the inventory's source.version {inv.source.version}")
        if f.config.deprecated_keys:
            warnings.append(f"{f.name}: keys ignored silently by 0.8: {', '.join(f.config.deprecated_keys)} "
                            f"(the stage step prepares a translated garage.toml, switched with the binary)")
    if procedure == "minimal-downtime" and facts:
        copies, quorum = REPLICATION.get(facts[0].config.replication_mode, (0, 0))
        zones = {f.zone for f in facts}
        if copies - 1 < quorum or len(zones) < copies:
            problems.append(f"replication_mode {facts[0].config.replication_mode!r} with {len(zones)} zone(s) "
                            "cannot keep quorum with a zone down: use the simple procedure")
    if problems:
        raise DiscoveryError("discovery refused the cluster:\n- " + "\n- ".join(problems))
    for w in warnings:
        log.warning(w)
    return ClusterFacts(tuple(facts), layout, status, tuple(warnings))


__all__ = ["ClusterFacts", "NodeFacts", "discover", "GarageMigrateError"]
