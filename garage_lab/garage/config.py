"""``garage.toml`` as each simulated version reads it (ref 5; late 7.4).

Unknown keys are ignored without a word in every version, exactly like Garage (no
``deny_unknown_fields``): this is what silently turns off 0.7-style Consul/Kubernetes
discovery on 0.8.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from .personality import Personality

DB_ENGINES = {"sled": "sled", "sqlite": "sqlite", "sqlite3": "sqlite", "rusqlite": "sqlite",
              "lmdb": "lmdb", "heed": "lmdb"}
REPLICATION_MODES = {"none": 1, "1": 1, "2": 2, "2-dangerous": 2, "3": 3, "3-degraded": 3,
                     "3-dangerous": 3}
WRITE_QUORUM = {"none": 1, "1": 1, "2": 2, "2-dangerous": 1, "3": 2, "3-degraded": 2,
                "3-dangerous": 1}
READ_QUORUM = {"none": 1, "1": 1, "2": 1, "2-dangerous": 1, "3": 2, "3-degraded": 1,
               "3-dangerous": 1}


class ConfigError(Exception):
    """The configuration file cannot be used.

    Attributes:
        kind: ``"io"`` (unreadable), ``"decode"`` (TOML or schema error) or ``"value"``.
        detail: the message Garage would print after its context line.
    """

    def __init__(self, kind: str, detail: str):
        self.kind = kind
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True)
class NodeConfig:
    """The keys the simulator uses."""

    path: Path
    metadata_dir: Path
    data_dir: Path
    db_engine: str
    replication_mode: str
    rpc_secret: str | None
    rpc_bind_addr: str
    rpc_public_addr: str | None
    bootstrap_peers: tuple[str, ...]
    s3_api_bind_addr: str | None
    s3_region: str
    web_bind_addr: str | None
    admin_bind_addr: str | None
    metrics_token: str | None
    admin_token: str | None
    sled_flush_every_ms: int
    discovery: tuple[str, ...] = ()  # "consul" / "kubernetes": what this version's layout turns on

    @property
    def replication_factor(self) -> int:
        """Number of copies implied by ``replication_mode``."""
        return REPLICATION_MODES[self.replication_mode]

    @property
    def write_quorum(self) -> int:
        """Write quorum implied by ``replication_mode`` (ref 8)."""
        return WRITE_QUORUM[self.replication_mode]

    @property
    def read_quorum(self) -> int:
        """Read quorum implied by ``replication_mode`` (ref 8)."""
        return READ_QUORUM[self.replication_mode]

    @property
    def rpc_port(self) -> int:
        """Port of ``rpc_bind_addr``."""
        return int(self.rpc_bind_addr.rsplit(":", 1)[1])


def _required(d: dict, key: str, where: str = "") -> object:
    if key not in d:
        raise ConfigError("decode", f"missing field `{key}`" + (f" for key `{where}`" if where else ""))
    return d[key]


def load(p: Personality, path: Path) -> NodeConfig:
    """Read and validate ``path`` the way version ``p`` does.

    Raises:
        ConfigError: unreadable file, bad TOML, missing required key or bad value.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("io", f"IO error: {exc.strerror} (os error {exc.errno})") from None
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("decode", f"TOML decode error: {exc}") from None
    s3 = d.get("s3_api")
    web = d.get("s3_web")
    admin = d.get("admin") or {}
    if p.major_minor == (0, 7):
        # 0.7: [s3_api] api_bind_addr and the whole [s3_web] section are required (ref 5)
        if s3 is None:
            raise ConfigError("decode", "missing field `s3_api`")
        _required(s3, "api_bind_addr", "s3_api")
        if web is None:
            raise ConfigError("decode", "missing field `s3_web`")
        _required(web, "bind_addr", "s3_web")
        _required(web, "root_domain", "s3_web")
        db_engine = "sled"  # 0.7 has no db_engine key; ignored if present
    else:
        raw_engine = d.get("db_engine", "sled")
        if raw_engine not in DB_ENGINES:
            raise ConfigError(
                "value", f"Unsupported DB engine: {raw_engine} (options: sled, sqlite, lmdb)")
        db_engine = DB_ENGINES[raw_engine]
    if s3 is not None:
        _required(s3, "s3_region", "s3_api")
    mode = str(_required(d, "replication_mode"))
    if mode not in REPLICATION_MODES:
        raise ConfigError("value", f"Invalid replication_mode: {mode}")
    return NodeConfig(
        path=Path(path),
        metadata_dir=Path(str(_required(d, "metadata_dir"))),
        data_dir=Path(str(_required(d, "data_dir"))),
        db_engine=db_engine,
        replication_mode=mode,
        rpc_secret=d.get("rpc_secret"),
        rpc_bind_addr=str(_required(d, "rpc_bind_addr")),
        rpc_public_addr=d.get("rpc_public_addr"),
        bootstrap_peers=tuple(d.get("bootstrap_peers", ())),
        s3_api_bind_addr=(s3 or {}).get("api_bind_addr"),
        s3_region=(s3 or {}).get("s3_region", "garage"),
        web_bind_addr=(web or {}).get("bind_addr"),
        admin_bind_addr=admin.get("api_bind_addr"),
        metrics_token=admin.get("metrics_token"),
        admin_token=admin.get("admin_token"),
        sled_flush_every_ms=int(d.get("sled_flush_every_ms", 2000)),
        discovery=discovery_of(p, d),
    )


def discovery_of(p: Personality, d: dict) -> tuple[str, ...]:
    """The peer discovery a config turns on for version ``p`` (ref 5): 0.7 reads the top-level
    ``consul_host``/``consul_service_name`` and ``kubernetes_namespace``/``kubernetes_service_name``
    keys, 0.8 only ``[consul_discovery]`` and ``[kubernetes_discovery]``; each ignores the other
    layout without a word (no discovery, and no error)."""
    out = []
    if p.major_minor == (0, 7):
        if "consul_host" in d and "consul_service_name" in d:
            out.append("consul")
        if "kubernetes_namespace" in d and "kubernetes_service_name" in d:
            out.append("kubernetes")
        return tuple(out)
    consul = d.get("consul_discovery")
    if isinstance(consul, dict) and "consul_http_addr" in consul and "service_name" in consul:
        out.append("consul")
    k8s = d.get("kubernetes_discovery")
    if isinstance(k8s, dict) and "namespace" in k8s and "service_name" in k8s:
        out.append("kubernetes")
    return tuple(out)
