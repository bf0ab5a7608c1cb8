"""Typed reading of ``garage.toml`` (reference garage-0.7-to-0.8.md section 5, late 7.4).

Garage ignores unknown keys without a word in every version, so a 0.7 config reused on 0.8
silently loses Consul/Kubernetes discovery; :attr:`GarageConfig.deprecated_keys` lists the keys
that would be lost.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from .models import GarageConfig, ParseError

__all__ = ["DEPRECATED_TOP_LEVEL_KEYS", "parse_config"]

_COMMAND = "garage.toml"
_SECRET_KEY = re.compile(r"(?i)(secret|token|password|passwd)")

DEPRECATED_TOP_LEVEL_KEYS = (
    "consul_host",
    "consul_service_name",
    "kubernetes_namespace",
    "kubernetes_service_name",
    "kubernetes_skip_crd",
    "block_manager_background_tranquility",
)
_REPLICATION_MODES = {"none", "1", "2", "2-dangerous", "3", "3-degraded", "3-dangerous"}
_DB_ENGINES = {"sled": "sled", "sqlite": "sqlite", "sqlite3": "sqlite", "rusqlite": "sqlite",
               "lmdb": "lmdb", "heed": "lmdb"}


def _get(table: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    if key not in table:
        if required:
            raise ParseError(f"missing required key {where}{key}", command=_COMMAND)
        return None
    value = table[key]
    if not isinstance(value, str):
        raise ParseError(f"{where}{key} must be a string, got {type(value).__name__}",
                         command=_COMMAND)
    return value


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ParseError(f"[{name}] must be a table", command=_COMMAND)
    return value


def parse_config(text: str) -> GarageConfig:
    """Parse ``garage.toml`` text.

    Required keys are those both 0.7.3 and 0.8 require (``metadata_dir``, ``data_dir``,
    ``replication_mode``, ``rpc_bind_addr``); a config Garage would refuse is refused here.

    Raises:
        ParseError: invalid TOML (with its line), a missing or mistyped key, an unknown
            ``replication_mode`` or ``db_engine``, or both a secret and its ``_file`` variant.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line_no = int(m.group(1)) if m else None
        lines = text.splitlines()
        line = lines[line_no - 1] if line_no and line_no <= len(lines) else None
        if line is not None and _SECRET_KEY.search(line):
            # the offending line of a secret (rpc_secret, admin_token...) is shown without its value:
            # this message reaches logs, the ledger and the flow's state
            line = line.split("=", 1)[0] + "= <redacted>" if "=" in line else "<redacted>"
        raise ParseError(f"invalid TOML ({exc})", command=_COMMAND, line_no=line_no,
                         line=line) from None

    mode = _get(doc, "replication_mode", "", required=True)
    if mode not in _REPLICATION_MODES:
        raise ParseError(f"unknown replication_mode {mode!r}", command=_COMMAND)
    engine = _get(doc, "db_engine", "") or "sled"
    if engine not in _DB_ENGINES:
        raise ParseError(f"unsupported db_engine {engine!r} (options: sled, sqlite, lmdb)",
                         command=_COMMAND)

    s3 = _section(doc, "s3_api")
    web = _section(doc, "s3_web")
    admin = _section(doc, "admin")
    for where, table, key in (("", doc, "rpc_secret"), ("[admin] ", admin, "metrics_token"),
                              ("[admin] ", admin, "admin_token")):
        if key in table and f"{key}_file" in table:
            raise ParseError(f"only one of {where}{key} and {key}_file can be set",
                             command=_COMMAND)

    rpc_secret_file = _get(doc, "rpc_secret_file", "")
    return GarageConfig(
        metadata_dir=_get(doc, "metadata_dir", "", required=True),  # type: ignore[arg-type]
        data_dir=_get(doc, "data_dir", "", required=True),  # type: ignore[arg-type]
        db_engine=_DB_ENGINES[engine],
        replication_mode=mode,
        rpc_bind_addr=_get(doc, "rpc_bind_addr", "", required=True),  # type: ignore[arg-type]
        rpc_public_addr=_get(doc, "rpc_public_addr", ""),
        rpc_secret_present=_get(doc, "rpc_secret", "") is not None or rpc_secret_file is not None,
        rpc_secret_file=rpc_secret_file,
        s3_api_bind_addr=_get(s3, "api_bind_addr", "[s3_api] "),
        s3_region=_get(s3, "s3_region", "[s3_api] "),
        web_bind_addr=_get(web, "bind_addr", "[s3_web] "),
        admin_api_bind_addr=_get(admin, "api_bind_addr", "[admin] "),
        metrics_token=_get(admin, "metrics_token", "[admin] "),
        metrics_token_file=_get(admin, "metrics_token_file", "[admin] "),
        admin_token=_get(admin, "admin_token", "[admin] "),
        admin_token_file=_get(admin, "admin_token_file", "[admin] "),
        deprecated_keys=tuple(k for k in doc if k in DEPRECATED_TOP_LEVEL_KEYS),
    )
