"""The inventory: which cluster, how to reach its nodes, and what to migrate to.

Loaded from YAML into frozen pydantic models. Cluster-level settings are defaults; a node may
override anything path-like (``binary_path``, ``config_path``, ``backup_root``) and its SSH
port. :meth:`Inventory.resolved_nodes` applies the overrides once and hands out plain values
(:class:`ResolvedNode`, with the :class:`SshTarget` the runner connects to and the
:class:`~garage_migrate.commands.NodeContext` the command builders need).

A minimal inventory::

    cluster: prod-eu
    ssh: {user: root, key_file: ~/.ssh/id_ed25519, known_hosts: ~/.ssh/known_hosts}
    backup: {root: /var/backups/garage}
    target: {version: 0.8.7, binary: ./garage-v0.8.7, sha256: <64 hex>}
    nodes:
      - {name: g1, host: 10.0.0.1, zone: dc1}

Errors name the field and, when loaded from YAML, the file and line::

    inventory.yaml:14 nodes[1].host: Field required

Unknown keys are errors (Garage itself ignores unknown config keys silently; we do not).
"""

from __future__ import annotations

import difflib
import os
import re
import signal as _signal
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .commands import NodeContext, ServiceControl
from .errors import InventoryError

__all__ = [
    "ApiGateSettings",
    "BackupSettings",
    "GarageSettings",
    "GateCommand",
    "Inventory",
    "Node",
    "PrometheusSettings",
    "ResolvedNode",
    "ServiceSettings",
    "SourceSettings",
    "SshSettings",
    "SshTarget",
    "TargetSettings",
    "load_inventory",
    "parse_inventory",
]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEX64_RE = re.compile(r"[0-9a-fA-F]{64}")
_TARGET_VERSION_RE = re.compile(r"v?(0\.8\.\d+)")
_SOURCE_VERSION_RE = re.compile(r"v?(0\.7\.\d+)")
# what a remote path may hold: it is quoted on the way out anyway, but a path with a shell
# metacharacter, a space or a quote in an inventory is far more often a paste error (or an
# attack) than a real directory, and it would reach log lines and operator commands verbatim
_REMOTE_PATH_RE = re.compile(r"/[A-Za-z0-9._/+@,=:~-]*")
# host names, IPv4, IPv6 (with a %zone); nothing a shell or an ssh_config would read specially
_HOST_RE = re.compile(r"[A-Za-z0-9_.:%\[\]-]+")


# ---------------------------------------------------------------------------- field types


def _name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError("use letters, digits, '.', '_' or '-' (it appears in paths and log lines)")
    return value


def _remote_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    if "\n" in value or "\0" in value or ".." in value.split("/"):
        raise ValueError(f"{value!r} is not a plain absolute path")
    if not _REMOTE_PATH_RE.fullmatch(value):
        bad = sorted({c for c in value if not _REMOTE_PATH_RE.fullmatch("/" + c)})
        raise ValueError(f"{value!r} holds {', '.join(repr(c) for c in bad)}: use letters, digits and "
                         f"'/._+@,=:~-' (no spaces, quotes or shell metacharacters)")
    return value.rstrip("/") or "/"


def _local_path(value: Any) -> Any:
    if isinstance(value, (str, Path)):
        return Path(value).expanduser()
    return value


def _argv(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("must be a non-empty argv list")
    if any(not w for w in value):
        raise ValueError("argv words must not be empty")
    if any(ord(c) < 32 or ord(c) == 127 for w in value for c in w):
        # a newline would split the journal's and the log's lines; words are quoted, never parsed
        raise ValueError("argv words must not hold control characters (newline, tab, NUL...)")
    exe = value[0]
    if "/" in exe and not exe.startswith("/"):
        raise ValueError(f"the program must be a bare name or an absolute path, got {exe!r}")
    return value


def _host(value: str) -> str:
    if not value or any(c.isspace() for c in value) or value.startswith("-") or "@" in value:
        raise ValueError(f"{value!r} is not a host name or address (the user goes in ssh.user)")
    if not _HOST_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a host name or address (letters, digits, '.', ':', '-', '_')")
    return value


def _known_hosts(value: Any) -> Any:
    if value in (None, "", False):
        raise ValueError("host-key checking cannot be turned off: give a known_hosts file")
    return _local_path(value)


def _release(value: Any, pattern: re.Pattern, example: str, want: str) -> Any:
    """A quoted ``x.y.z`` version matching ``pattern`` (YAML reads an unquoted one as a number)."""
    if isinstance(value, float):
        raise ValueError(f"YAML read {value!r} as a number: quote the version, e.g. \"{example}\"")
    m = pattern.fullmatch(value.strip()) if isinstance(value, str) else None
    if isinstance(value, str) and not m:
        raise ValueError(f"must be {want}, got {value!r}")
    return m.group(1) if m else value


def _target_version(value: Any) -> Any:
    return _release(value, _TARGET_VERSION_RE, "0.8.7", "a 0.8.x release (this tool migrates 0.7.3 to 0.8)")


def _source_version(value: Any) -> Any:
    return _release(value, _SOURCE_VERSION_RE, "0.7.3", "a 0.7.x release (this tool migrates 0.7 to 0.8)")


def _env_name(value: str) -> str:
    if not _ENV_RE.fullmatch(value):
        raise ValueError("must be the NAME of an environment variable, not the secret itself")
    return value


def _sha256(value: str) -> str:
    if not _HEX64_RE.fullmatch(value):
        raise ValueError("must be 64 hexadecimal digits")
    return value.lower()


def _signal_name(value: str) -> str:
    try:
        return _signal.Signals["SIG" + value.strip().upper().removeprefix("SIG")].name
    except KeyError:
        raise ValueError(f"{value!r} is not a signal name (e.g. INT)") from None


Name = Annotated[str, AfterValidator(_name)]
RemotePath = Annotated[str, AfterValidator(_remote_path)]
LocalPath = Annotated[Path, BeforeValidator(_local_path)]
KnownHosts = Annotated[Path, BeforeValidator(_known_hosts)]
Argv = Annotated[list[str], AfterValidator(_argv)]
Host = Annotated[str, AfterValidator(_host)]
Port = Annotated[int, Field(ge=1, le=65535)]
EnvName = Annotated[str, AfterValidator(_env_name)]


def _problem(loc: tuple, kind: str, message: str, value: Any = None) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# ---------------------------------------------------------------------------- sections


class SshSettings(_Model):
    """How to reach every node (a node may override ``port``).

    Attributes:
        user: SSH user.
        port: SSH port.
        key_file: private key; ``None`` uses asyncssh's defaults (``~/.ssh/id_*``, agent).
        known_hosts: the known_hosts file; host keys are always verified against it.
        connect_timeout: seconds to connect and authenticate.
        keepalive_interval: seconds between keepalives, so a dead node is noticed.
        sudo: run privileged commands through ``sudo -n``.
        max_channels: concurrent sessions per connection (OpenSSH ``MaxSessions`` defaults to 10).
        key_passphrase_env: name of the environment variable holding ``key_file``'s passphrase
            (the passphrase itself never goes in the inventory).
        trust_on_first_use: accept the key a node offers when known_hosts has no entry for it,
            append it to known_hosts and record it in the ledger (``host-key-trusted``). Off by
            default; a key that differs from a recorded one is refused either way.
    """

    user: Name = "root"
    port: Port = 22
    key_file: LocalPath | None = None
    known_hosts: KnownHosts = "~/.ssh/known_hosts"  # type: ignore[assignment]  # expanded when loaded
    connect_timeout: float = Field(10.0, gt=0, le=300)
    keepalive_interval: float = Field(15.0, gt=0, le=3600)
    sudo: bool = False
    max_channels: int = Field(8, ge=1, le=64)
    key_passphrase_env: EnvName | None = None
    trust_on_first_use: bool = False

    def key_passphrase(self) -> str | None:
        """The key's passphrase from the environment, or ``None`` when none is configured.

        Raises:
            InventoryError: the variable is configured but not set (its value is never shown).
        """
        if self.key_passphrase_env is None:
            return None
        value = os.environ.get(self.key_passphrase_env)
        if not value:
            raise InventoryError(f"ssh.key_passphrase_env: ${self.key_passphrase_env} is not set")
        return value


class GarageSettings(_Model):
    """Where Garage lives on the nodes (each node may override both paths).

    Attributes:
        binary_path: the binary the service runs; usually a symlink, flipped by the migration.
        config_path: ``garage.toml``.
    """

    binary_path: RemotePath = "/usr/local/bin/garage"
    config_path: RemotePath = "/etc/garage.toml"


class ServiceSettings(_Model):
    """How the Garage service is started, stopped and checked.

    Attributes:
        kind: ``systemd`` (``systemctl start|stop|is-active <unit>``, ``systemctl kill -s SIG``)
            or ``custom`` with the four argv lists.
        unit: the systemd unit.
        start: custom start argv.
        stop: custom stop argv.
        status: custom status argv: exit 0 when running.
        signal: custom argv that delivers a signal; the name (``SIGINT``) is appended.
        stop_signal: the graceful stop signal for 0.7 daemons (SIGTERM kills 0.7.3 at once);
            normalized to ``SIGINT`` form.
    """

    kind: Literal["systemd", "custom"] = "systemd"
    unit: Name = "garage"
    start: Argv | None = None
    stop: Argv | None = None
    status: Argv | None = None
    signal: Argv | None = None
    stop_signal: Annotated[str, AfterValidator(_signal_name)] = "INT"

    @model_validator(mode="after")
    def _check(self) -> ServiceSettings:
        problems = []
        verbs = ("start", "stop", "status", "signal")
        for verb in verbs:
            if self.kind == "custom" and getattr(self, verb) is None:
                problems.append(_problem((verb,), "missing_for_kind", "required when kind is custom"))
            if self.kind == "systemd" and getattr(self, verb) is not None:
                problems.append(_problem((verb,), "unused_for_kind",
                                         "only used when kind is custom (systemd uses systemctl)", getattr(self, verb)))
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    def control(self) -> ServiceControl:
        """The command-builder view of these settings."""
        return ServiceControl(kind=self.kind, unit=self.unit, start=tuple(self.start or ()),
                              stop=tuple(self.stop or ()), status=tuple(self.status or ()),
                              signal=tuple(self.signal or ()))


class PrometheusSettings(_Model):
    """Where the cluster's metrics are queried.

    Attributes:
        url: base URL of Prometheus (``http(s)://host:port``).
        job: the scrape job of the Garage nodes.
        bearer_token_env: name of the environment variable holding a bearer token for the
            Prometheus API, if it needs one (the token itself never goes in the inventory).
        timeout: seconds per query.
    """

    url: str
    job: str = "garage"
    bearer_token_env: str | None = None
    timeout: float = Field(10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _check(self) -> PrometheusSettings:
        problems = []
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", self.url):
            problems.append(_problem(("url",), "url", "must be an http:// or https:// URL", self.url))
        if self.bearer_token_env is not None and not _ENV_RE.fullmatch(self.bearer_token_env):
            problems.append(_problem(("bearer_token_env",), "env_name",
                                     "must be the NAME of an environment variable, not the token",
                                     "<hidden>"))
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    def bearer_token(self) -> str | None:
        """The token from the environment, or ``None`` when no variable is configured.

        Raises:
            InventoryError: the variable is configured but not set.
        """
        if self.bearer_token_env is None:
            return None
        token = os.environ.get(self.bearer_token_env)
        if not token:
            raise InventoryError(f"prometheus.bearer_token_env: ${self.bearer_token_env} is not set")
        return token


class GateCommand(_Model):
    """A command run over SSH on ``host`` (a node name, or e.g. a reverse proxy's address).

    Attributes:
        host: a node name or an address reached with the cluster's SSH settings.
        argv: the command.
    """

    host: Host
    argv: Argv


class ApiGateSettings(_Model):
    """How client traffic is kept away during the offline window.

    Attributes:
        kind: ``none``; ``commands`` (``disable``/``enable`` commands, e.g. on a reverse
            proxy); or ``port`` (move ``[s3_api] api_bind_addr`` and ``[s3_web] bind_addr``).
        disable: for ``commands``: cut client access.
        enable: for ``commands``: restore it.
        moved_s3_port: for ``port``: where the S3 API listens while gated.
        moved_web_port: for ``port``: where the web endpoint listens while gated.
    """

    kind: Literal["none", "commands", "port"] = "none"
    disable: GateCommand | None = None
    enable: GateCommand | None = None
    moved_s3_port: Port = 3990
    moved_web_port: Port = 3992

    @model_validator(mode="after")
    def _check(self) -> ApiGateSettings:
        problems = []
        for f in ("disable", "enable"):
            if self.kind == "commands" and getattr(self, f) is None:
                problems.append(_problem((f,), "missing_for_kind", "required when kind is commands"))
            if self.kind != "commands" and f in self.model_fields_set:
                problems.append(_problem((f,), "unused_for_kind", "only used when kind is commands"))
        for f in ("moved_s3_port", "moved_web_port"):
            if self.kind != "port" and f in self.model_fields_set:
                problems.append(_problem((f,), "unused_for_kind", "only used when kind is port", getattr(self, f)))
        if self.kind == "port" and self.moved_s3_port == self.moved_web_port:
            problems.append(_problem(("moved_web_port",), "same_port", "must differ from moved_s3_port",
                                     self.moved_web_port))
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self


class BackupSettings(_Model):
    """Metadata backups, taken with the daemon stopped.

    Attributes:
        root: where archives go: on the node (``on-node``; a node may override it) or on the
            controller (``controller``).
        mode: ``on-node`` (the guide's ``tar -acf`` on the node) or ``controller`` (streamed).
        zstd_level: compression level of streamed archives.
        compress_on: where a streamed archive is compressed: ``auto`` (the default) on the node
            when discovery found its ``zstd`` CLI, else on the controller; ``controller``:
            always on the controller (the node only runs ``tar``).
    """

    root: RemotePath
    mode: Literal["on-node", "controller"] = "controller"
    zstd_level: int = Field(3, ge=1, le=19)
    compress_on: Literal["auto", "controller"] = "auto"


class SourceSettings(_Model):
    """The Garage release the cluster runs now (optional: discovery reads it from the nodes).

    Attributes:
        version: ``0.7.x``; when given, discovery refuses a node that runs anything else.
    """

    version: Annotated[str, BeforeValidator(_source_version)]


class TargetSettings(_Model):
    """The Garage release to migrate to.

    Attributes:
        version: ``0.8.x`` (a leading ``v`` is dropped).
        binary: path on the controller of the new binary, uploaded to each node.
        sha256: its expected SHA-256 (64 hex digits, stored lowercase).
    """

    version: Annotated[str, BeforeValidator(_target_version)]
    binary: LocalPath
    sha256: Annotated[str, AfterValidator(_sha256)]


# ---------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class SshTarget:
    """Everything the SSH runner needs to reach one host.

    Attributes:
        name: the node name (log prefix, pool key).
        host: address or name to connect to.
        port: SSH port.
        user: SSH user.
        key_file: private key, or ``None`` for asyncssh's defaults.
        known_hosts: known_hosts file (always used).
        connect_timeout: seconds.
        keepalive_interval: seconds.
        max_channels: concurrent sessions on the connection.
        ctx: what this host may run (the allow-list context).
        key_passphrase_env: environment variable with ``key_file``'s passphrase, if any.
        trust_on_first_use: accept and record an unknown host key (see :class:`SshSettings`).
    """

    name: str
    host: str
    port: int
    user: str
    key_file: Path | None
    known_hosts: Path
    connect_timeout: float
    keepalive_interval: float
    max_channels: int
    ctx: NodeContext = field(repr=False)
    key_passphrase_env: str | None = None
    trust_on_first_use: bool = False


@dataclass(frozen=True)
class ResolvedNode:
    """A node with the cluster defaults and its overrides applied.

    Attributes:
        name: node name.
        host: SSH host.
        zone: zone from the inventory, or ``None`` (discovery reads the layout).
        ssh: how to reach it.
        ctx: what the command builders need (binary, config, service, sudo).
        backup_root: where its backups go.
        stop_signal: graceful stop signal for a 0.7 daemon (``SIGINT``).
    """

    name: str
    host: str
    zone: str | None
    ssh: SshTarget
    ctx: NodeContext
    backup_root: str
    stop_signal: str

    @property
    def binary_path(self) -> str:
        """The node's Garage binary path."""
        return self.ctx.binary_path

    @property
    def config_path(self) -> str:
        """The node's ``garage.toml`` path."""
        return self.ctx.config_path


class Node(_Model):
    """One Garage node; ``None`` fields fall back to the cluster settings.

    Attributes:
        name: unique node name.
        host: SSH host (unique with its port).
        zone: expected zone, checked against the layout by discovery.
        ssh_port: overrides ``ssh.port``.
        binary_path: overrides ``garage.binary_path``.
        config_path: overrides ``garage.config_path``.
        backup_root: overrides ``backup.root``.
    """

    name: Name
    host: Host
    zone: Name | None = None
    ssh_port: Port | None = None
    binary_path: RemotePath | None = None
    config_path: RemotePath | None = None
    backup_root: RemotePath | None = None

    def effective(self, inv: Inventory) -> ResolvedNode:
        """This node with ``inv``'s defaults applied."""
        ctx = NodeContext(
            name=self.name,
            binary_path=self.binary_path or inv.garage.binary_path,
            config_path=self.config_path or inv.garage.config_path,
            sudo=inv.ssh.sudo,
            service=inv.service.control(),
            trusted=inv.gate_argvs_for(self.name, self.host),
        )
        return ResolvedNode(
            name=self.name, host=self.host, zone=self.zone, ctx=ctx,
            ssh=inv.ssh_target(self.name, self.host, self.ssh_port, ctx),
            backup_root=self.backup_root or inv.backup.root,
            stop_signal=inv.service.stop_signal,
        )


class Inventory(_Model):
    """The whole inventory.

    Attributes:
        cluster: the cluster's name (used in paths and the ledger).
        ssh: SSH defaults.
        garage: binary and config path defaults.
        service: service control.
        prometheus: metrics source, or ``None`` (gates then read ``garage stats``).
        api_gate: how client traffic is cut during the offline window.
        backup: metadata backup settings.
        source: the release the cluster runs now, if the operator states it.
        target: the release to migrate to.
        nodes: the storage nodes (and gateways) of the cluster.
    """

    cluster: Name
    # factories: defaults are built (and ~ expanded) when an inventory is loaded, not on import
    ssh: SshSettings = Field(default_factory=SshSettings)
    garage: GarageSettings = Field(default_factory=GarageSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    prometheus: PrometheusSettings | None = None
    api_gate: ApiGateSettings = Field(default_factory=ApiGateSettings)
    backup: BackupSettings
    source: SourceSettings | None = None
    target: TargetSettings
    nodes: list[Node] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Inventory:
        problems = []
        names: dict[str, int] = {}
        addrs: dict[tuple[str, int], int] = {}
        for i, n in enumerate(self.nodes):
            if n.name in names:
                problems.append(_problem(("nodes", i, "name"), "duplicate",
                                         f"duplicate node name (also nodes[{names[n.name]}])", n.name))
            names.setdefault(n.name, i)
            addr = (n.host, n.ssh_port or self.ssh.port)
            if addr in addrs:
                problems.append(_problem(("nodes", i, "host"), "duplicate",
                                         f"{addr[0]} port {addr[1]} is also nodes[{addrs[addr]}]", n.host))
            addrs.setdefault(addr, i)
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    def ssh_target(self, name: str, host: str, port: int | None = None, ctx: NodeContext | None = None) -> SshTarget:
        """An :class:`SshTarget` for ``host`` with the cluster's SSH settings."""
        s = self.ssh
        return SshTarget(name=name, host=host, port=port or s.port, user=s.user, key_file=s.key_file,
                         known_hosts=s.known_hosts, connect_timeout=s.connect_timeout,
                         keepalive_interval=s.keepalive_interval, max_channels=s.max_channels,
                         ctx=ctx or NodeContext(name=name, sudo=s.sudo), key_passphrase_env=s.key_passphrase_env,
                         trust_on_first_use=s.trust_on_first_use)

    def gate_argvs_for(self, name: str, host: str) -> tuple[tuple[str, ...], ...]:
        """The API-gate commands configured to run on this node (by name or host)."""
        g = self.api_gate
        return tuple(tuple(c.argv) for c in (g.disable, g.enable) if c is not None and c.host in (name, host))

    def resolved_nodes(self) -> tuple[ResolvedNode, ...]:
        """Every node with defaults and overrides applied, in inventory order."""
        return tuple(n.effective(self) for n in self.nodes)

    def node(self, name: str) -> ResolvedNode:
        """The resolved node ``name``.

        Raises:
            InventoryError: no such node.
        """
        for n in self.nodes:
            if n.name == name:
                return n.effective(self)
        raise InventoryError(f"no node {name!r} in the inventory (nodes: {', '.join(n.name for n in self.nodes)})")

    def gate_targets(self) -> tuple[SshTarget, ...]:
        """SSH targets for API-gate hosts that are not nodes (e.g. a reverse proxy)."""
        nodes = {n.name for n in self.nodes} | {n.host for n in self.nodes}
        out: dict[str, SshTarget] = {}
        for c in (self.api_gate.disable, self.api_gate.enable):
            if c is None or c.host in nodes:
                continue
            ctx = NodeContext(name=c.host, sudo=self.ssh.sudo, trusted=self.gate_argvs_for(c.host, c.host))
            out[c.host] = self.ssh_target(c.host, c.host, None, ctx)
        return tuple(out.values())


# ---------------------------------------------------------------------------- YAML loading


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Read and validate an inventory file.

    Raises:
        InventoryError: unreadable file, invalid YAML, or invalid content; each problem names
            the field and the line.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"cannot read inventory {p}: {exc}") from None
    return parse_inventory(text, source=str(p))


def parse_inventory(text: str, source: str = "<inventory>") -> Inventory:
    """Validate inventory YAML text.

    Args:
        text: the YAML document.
        source: how to name it in messages (the file path).

    Raises:
        InventoryError: invalid YAML (with its line), duplicate keys, or invalid content.
    """
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader refuses control characters here already
        root = loader.get_single_node()
        if root is None:
            raise InventoryError(f"{source}: the inventory is empty", problems=[(source, "empty")])
        _check_duplicate_keys(root, source)
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        reason = getattr(exc, "problem", None) or str(exc)
        raise InventoryError(f"{where}: invalid YAML: {reason}",
                             problems=[(where, f"invalid YAML: {reason}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise InventoryError(f"{source}:{root.start_mark.line + 1}: the inventory must be a mapping",
                             problems=[(f"{source}:{root.start_mark.line + 1}", "must be a mapping")])
    try:
        return Inventory.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            where = f"{source}:{_line_of(root, loc)} {_dotted(loc)}"
            problems.append((where, _message(err, loc)))
        lines = "\n".join(f"  {w}: {m}" for w, m in problems)
        raise InventoryError(f"invalid inventory {source} ({len(problems)} problem"
                             f"{'s' if len(problems) != 1 else ''}):\n{lines}", problems=problems) from None


def _check_duplicate_keys(node: yaml.Node, source: str) -> None:
    # PyYAML keeps the last of two equal keys without a word: a silent override of a node's path
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else id(key)
            if k in seen:
                where = f"{source}:{key.start_mark.line + 1}"
                raise InventoryError(f"{where}: duplicate key {k!r} (first on line {seen[k]})",
                                     problems=[(where, f"duplicate key {k!r}")])
            seen[k] = key.start_mark.line + 1
            _check_duplicate_keys(value, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, source)


def _line_of(root: yaml.Node, loc: tuple) -> int:
    """1-based line of the deepest YAML node along a pydantic error location."""
    node, line = root, root.start_mark.line
    for seg in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(seg, str):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == seg:
                    node, line = value, key.start_mark.line
                    break
            else:
                break  # a missing key: the mapping that lacks it is the place to fix
        elif isinstance(node, yaml.SequenceNode) and isinstance(seg, int) and 0 <= seg < len(node.value):
            node = node.value[seg]
            line = node.start_mark.line
        else:
            break
    return line + 1


def _dotted(loc: tuple) -> str:
    out = ""
    for seg in loc:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out or "(top level)"


def _message(err: dict, loc: tuple) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "string_type" and isinstance(err.get("input"), (bool, int, float)):
        # YAML 1.1 reads off/yes/no as booleans and 1.0 as a number
        msg += f": YAML read {err['input']!r} as a {type(err['input']).__name__}, quote it"
    if err["type"] == "extra_forbidden" and loc:
        allowed = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        msg = "unknown field" + (f": did you mean {hint[0]!r}?" if hint else "") + (
            f" (allowed: {', '.join(allowed)})" if allowed else "")
    return msg


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the model found at ``loc`` under :class:`Inventory` (for hints)."""
    model: Any = Inventory
    for seg in loc:
        if isinstance(seg, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or seg not in model.model_fields:
            return []
        model = _unwrap(model.model_fields[seg].annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation
        elif origin in (list, typing.Annotated):
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation
