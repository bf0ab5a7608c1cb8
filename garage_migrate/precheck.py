"""Checks of a migration's inputs that need no node: run before the first SSH connection.

The inventory's models (:mod:`garage_migrate.inventory`) check each field alone; this module
checks what needs the controller's files or the run's options together, so that an operator's
typo is reported, every problem at once, before anything reaches a node:

- the target binary exists, is readable and has the inventory's SHA-256;
- the known_hosts file exists, parses, and holds an entry for every host the run will reach
  (unless ``ssh.trust_on_first_use`` says to accept and record a first key);
- the private key is readable and opens (with its passphrase from the environment, if any);
- the environment variables the inventory names (key passphrase, Prometheus token) are set;
- the options fit the inventory: ``stop_after_zone`` names a zone of the inventory and
  ``max_zones_down`` does not exceed the zones it lists.

Messages never hold a secret's value: only the name of the variable that holds it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh

from .errors import InventoryError

if TYPE_CHECKING:
    from .inventory import Inventory, SshTarget
    from .plan import MigrationOptions

__all__ = ["check_before_connecting", "check_migration_id", "check_ssh_inputs", "known_host_match",
           "known_hosts_pattern"]

_CHUNK = 1 << 20
_MIGRATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_migration_id(migration_id: str) -> str:
    """``migration_id``, if it is a name (it names a directory beside the backups).

    Raises:
        InventoryError: it holds a ``/``, a space, a quote or another character of a path or a shell.
    """
    if not isinstance(migration_id, str) or not _MIGRATION_ID.fullmatch(migration_id):
        raise InventoryError(f"migration id {migration_id!r} is not a name: use letters, digits, '.', '_' or '-' "
                             f"(it names a directory on the controller)",
                             problems=[("migration_id", "not a name")])
    return migration_id


def known_hosts_pattern(host: str, port: int) -> str:
    """How OpenSSH names ``host:port`` in known_hosts (``host`` for port 22, else ``[host]:port``)."""
    return host if port == 22 else f"[{host}]:{port}"


def known_host_match(entries: asyncssh.SSHKnownHosts, host: str, port: int) -> tuple:
    """``entries.match`` for ``host`` (a name or an address): asyncssh's ``addr`` must be an IP."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        addr: str | None = host
    except ValueError:
        addr = None  # a host name: matched by name only, as OpenSSH does without CheckHostIP
    return entries.match(host, addr, port)


def check_ssh_inputs(targets: list[SshTarget] | tuple[SshTarget, ...]) -> list[tuple[str, str]]:
    """Problems with what connecting to ``targets`` needs on the controller.

    Returns:
        ``(location, message)`` pairs; empty when every target can be attempted.
    """
    problems: list[tuple[str, str]] = []
    seen_keys: set[tuple[Path, str | None]] = set()
    known: dict[Path, asyncssh.SSHKnownHosts | None] = {}
    for t in targets:
        kh = Path(t.known_hosts)
        if kh not in known:
            known[kh] = _read_known_hosts(kh, t.trust_on_first_use, problems)
        entries = known[kh]
        if entries is not None and not t.trust_on_first_use:
            host_keys = known_host_match(entries, t.host, t.port)[0]
            if not host_keys:
                problems.append((f"ssh.known_hosts ({t.name})",
                                 (f"{kh} has no key for {known_hosts_pattern(t.host, t.port)}: host keys are always "
                                  f"verified. Check the fingerprint on the node (ssh-keygen -lf "
                                  f"/etc/ssh/ssh_host_ed25519_key.pub), then add it (ssh-keyscan -p {t.port} "
                                  f"{t.host} >> {kh}), or set ssh.trust_on_first_use to accept and record it")))
        if t.key_file is not None and (Path(t.key_file), t.key_passphrase_env) not in seen_keys:
            seen_keys.add((Path(t.key_file), t.key_passphrase_env))
            problems += _key_problems(Path(t.key_file), t.key_passphrase_env)
    return problems


def _read_known_hosts(kh: Path, tofu: bool, problems: list[tuple[str, str]]) -> asyncssh.SSHKnownHosts | None:
    if not kh.exists():
        if tofu and kh.parent.is_dir() and os.access(kh.parent, os.W_OK):
            return None  # trust on first use creates it
        problems.append(("ssh.known_hosts", f"{kh} does not exist; host keys are always verified"
                         + ("" if tofu else " (create it with the nodes' verified keys)")))
        return None
    try:
        data = kh.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(("ssh.known_hosts", f"cannot read {kh}: {_why(exc)}"))
        return None
    try:
        return asyncssh.import_known_hosts(data)
    except (ValueError, asyncssh.Error) as exc:
        problems.append(("ssh.known_hosts", f"{kh} is not a known_hosts file: {_why(exc)}"))
        return None


def _key_problems(key: Path, passphrase_env: str | None) -> list[tuple[str, str]]:
    where = "ssh.key_file"
    if not key.is_file():
        return [(where, f"{key} does not exist or is not a file")]
    try:
        data = key.read_bytes()
    except OSError as exc:
        return [(where, f"cannot read {key}: {_why(exc)}")]
    passphrase = None
    if passphrase_env is not None:
        passphrase = os.environ.get(passphrase_env)
        if not passphrase:
            return [("ssh.key_passphrase_env", f"${passphrase_env} is not set (it should hold {key}'s passphrase)")]
    try:
        asyncssh.import_private_key(data, passphrase)
    except asyncssh.KeyImportError as exc:
        if passphrase is None and "assphrase" in str(exc):
            return [(where, (f"{key}: it is encrypted: name the variable holding its passphrase in "
                             f"ssh.key_passphrase_env"))]
        return [(where, f"{key} is not a private key asyncssh can use: {exc}")]
    except asyncssh.KeyEncryptionError:
        hint = (f"the passphrase in ${passphrase_env} does not open it" if passphrase_env
                else "it is encrypted: name the variable holding its passphrase in ssh.key_passphrase_env")
        return [(where, f"{key}: {hint}")]
    except ValueError as exc:
        return [(where, f"{key} is not a private key asyncssh can use: {_why(exc)}")]
    return []


def _why(exc: BaseException) -> str:
    # OSError's str names the file and the reason; never the file's content
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__


def _binary_problems(inv: Inventory) -> list[tuple[str, str]]:
    b = Path(inv.target.binary)
    if not b.is_file():
        return [("target.binary", f"{b} does not exist or is not a file")]
    h = hashlib.sha256()
    try:
        with b.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        return [("target.binary", f"cannot read {b}: {_why(exc)}")]
    if h.hexdigest() != inv.target.sha256:
        return [("target.sha256", (f"{b} has SHA-256 {h.hexdigest()}, not the inventory's {inv.target.sha256}: "
                                   f"a different or damaged file (re-download it and check the release's checksum)"))]
    if not os.access(b, os.X_OK):
        return [("target.binary", f"{b} is not executable (chmod +x it): it is uploaded with its mode")]
    return []


def _option_problems(inv: Inventory, options: MigrationOptions | None) -> list[tuple[str, str]]:
    if options is None:
        return []
    zones = {n.zone for n in inv.nodes if n.zone is not None}
    problems = []
    f = options.fanout
    if f.stop_after_zone is not None and zones and f.stop_after_zone not in zones:
        problems.append(("options.fanout.stop_after_zone",
                         f"unknown zone {f.stop_after_zone!r} (the inventory's zones: {', '.join(sorted(zones))})"))
    if zones and f.max_zones_down > len(zones):
        problems.append(("options.fanout.max_zones_down",
                         f"{f.max_zones_down} is more than the {len(zones)} zone(s) of the inventory"))
    return problems


def check_before_connecting(inv: Inventory, options: MigrationOptions | None = None, *,
                            binary: bool = True) -> None:
    """Refuse a run whose inputs are wrong before any SSH connection is opened.

    Args:
        inv: the validated inventory.
        options: the run's options, checked against the inventory when given.
        binary: also check the target binary (a migration needs it; ``status`` does not).

    Raises:
        InventoryError: every problem found, each with its location.
    """
    targets = [n.ssh for n in inv.resolved_nodes()] + list(inv.gate_targets())
    problems = check_ssh_inputs(targets)
    if binary:
        problems += _binary_problems(inv)
    ps = inv.prometheus
    if ps is not None and ps.bearer_token_env is not None and not os.environ.get(ps.bearer_token_env):
        problems.append(("prometheus.bearer_token_env", f"${ps.bearer_token_env} is not set"))
    problems += _option_problems(inv, options)
    if problems:
        lines = "\n".join(f"  {w}: {m}" for w, m in problems)
        raise InventoryError(f"refused before connecting to any node ({len(problems)} problem"
                             f"{'s' if len(problems) != 1 else ''}):\n{lines}", problems=problems)
