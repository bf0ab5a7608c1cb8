"""``garage.toml`` for 0.8, translated from a 0.7 one (reference garage-0.7-to-0.8.md section 5).

Pure: text in, text out. Garage ignores unknown keys without a word in both versions, so a 0.7
config reused as-is on 0.8 quietly turns Consul and Kubernetes discovery off: 0.8 reads them from
``[consul_discovery]`` and ``[kubernetes_discovery]`` only. The translation (the reference's
config table):

======================================  ==========================================
0.7 (top level)                         0.8
======================================  ==========================================
``consul_host``                         ``[consul_discovery] consul_http_addr``
``consul_service_name``                 ``[consul_discovery] service_name``
``kubernetes_namespace``                ``[kubernetes_discovery] namespace``
``kubernetes_service_name``             ``[kubernetes_discovery] service_name``
``kubernetes_skip_crd``                 ``[kubernetes_discovery] skip_crd``
``block_manager_background_tranquility``  removed (``garage worker set resync-tranquility``)
======================================  ==========================================

0.7's ``consul_host`` is ``host:port`` (0.7 puts ``http://`` in front of it); 0.8's
``consul_http_addr`` is a URL, so a value without a scheme gets ``http://``.

Only the moved lines change: the old ones are removed where they are, the new sections are
appended at the end, every other byte (comments, order, secrets) is kept. Translating a
translated config changes nothing. The result is parsed again and checked to hold exactly the
expected keys before it is returned.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from dataclasses import dataclass
from typing import Any

from .errors import PlanError

__all__ = ["MOVES", "REMOVED", "ConfigTranslation", "diff_lines", "restored_in_form_of", "translate"]

#: 0.7 top-level key -> (0.8 section, 0.8 key)
MOVES: dict[str, tuple[str, str]] = {
    "consul_host": ("consul_discovery", "consul_http_addr"),
    "consul_service_name": ("consul_discovery", "service_name"),
    "kubernetes_namespace": ("kubernetes_discovery", "namespace"),
    "kubernetes_service_name": ("kubernetes_discovery", "service_name"),
    "kubernetes_skip_crd": ("kubernetes_discovery", "skip_crd"),
}
#: 0.7 top-level keys 0.8 dropped, and what replaces them.
REMOVED: dict[str, str] = {
    "block_manager_background_tranquility": "removed in 0.8: use `garage worker set resync-tranquility <n>`",
}
_HEADER = re.compile(r"^\s*\[")


@dataclass(frozen=True)
class ConfigTranslation:
    """The 0.8 config of a node and what changed.

    Attributes:
        text: the translated ``garage.toml`` (the input itself when nothing changes).
        changes: one sentence per moved or removed key, in file order; empty: 0.8-ready.
    """

    text: str
    changes: tuple[str, ...]

    @property
    def changed(self) -> bool:
        """Whether the 0.8 config differs from the 0.7 one."""
        return bool(self.changes)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a TOML basic string: the same escapes
    if isinstance(v, int | float):
        return repr(v)
    raise PlanError(f"cannot write a {type(v).__name__} value in garage.toml")


def _top_level_key_lines(lines: list[str], keys: set[str]) -> dict[str, int]:
    """Line index of each top-level ``key =`` among ``keys`` (before the first table header)."""
    out: dict[str, int] = {}
    for i, line in enumerate(lines):
        if _HEADER.match(line):
            break
        m = re.match(r"^\s*([A-Za-z0-9_-]+)\s*=", line)
        if m and m.group(1) in keys:
            out[m.group(1)] = i
    return out


def translate(text: str) -> ConfigTranslation:
    """The 0.8 ``garage.toml`` for a 0.7 one (see the module docstring).

    Raises:
        PlanError: invalid TOML; a key in both layouts (``consul_host`` and
            ``[consul_discovery]``: which one is meant cannot be decided here); a moved key
            whose value spans lines.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"garage.toml is not valid TOML: {exc}") from None
    old = [k for k in doc if k in MOVES or k in REMOVED]
    if not old:
        return ConfigTranslation(text, ())
    lines = text.splitlines(keepends=True)
    where = _top_level_key_lines(lines, set(old))
    changes: list[str] = []
    added: dict[str, dict[str, Any]] = {}
    for key in sorted(old, key=lambda k: where.get(k, len(lines))):
        if key not in where:
            raise PlanError(f"garage.toml: cannot find the line of {key} (a dotted or multi-line "
                                         f"key?): translate it by hand")
        if key in REMOVED:
            changes.append(f"{key}: {REMOVED[key]}")
            continue
        section, new = MOVES[key]
        if isinstance(doc.get(section), dict) and new in doc[section]:
            raise PlanError(f"garage.toml has both {key} and [{section}] {new}: keep one of them")
        value = doc[key]
        if key == "consul_host" and isinstance(value, str) and "://" not in value:
            value = "http://" + value
        added.setdefault(section, {})[new] = value
        changes.append(f"{key} -> [{section}] {new}")
    for key in old:
        i = where[key]
        if lines[i].rstrip("\r\n").count('"') % 2 or lines[i].rstrip().endswith("["):
            raise PlanError(f"garage.toml: {key} spans lines: translate it by hand")
    out = [ln for i, ln in enumerate(lines) if i not in set(where.values())]
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    for section, keys in added.items():
        if section in doc:
            raise PlanError(f"garage.toml already has a [{section}] section: merge the old keys "
                                         f"into it by hand")
        out.append(f"\n# moved from the top level by garage-migrate (Garage 0.8 reads [{section}] only)\n")
        out.append(f"[{section}]\n")
        out += [f"{k} = {_toml_value(v)}\n" for k, v in keys.items()]
    result = "".join(out)
    _check(doc, result, old, added)
    return ConfigTranslation(result, tuple(changes))


def _check(doc: dict, result: str, old: list[str], added: dict[str, dict[str, Any]]) -> None:
    """The translated text parses to the same document, with exactly the keys moved."""
    want = {k: v for k, v in doc.items() if k not in old}
    want.update({s: dict(v) for s, v in added.items()})
    got = tomllib.loads(result)
    if got != want:
        raise PlanError("the translated garage.toml does not hold the expected keys (a bug): "
                                     "translate it by hand")


def diff_lines(old: str, new: str, path: str = "garage.toml") -> tuple[str, ...]:
    """A unified diff of two configs, without context lines: only what the translation changes
    (no secret is on a moved line: discovery keys only)."""
    return tuple(ln.rstrip("\n") for ln in difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"{path} (0.7)", f"{path} (0.8)", n=0))


def restored_in_form_of(original: str, live: str) -> str:
    """``original`` in the layout ``live`` is in: translated when ``live`` is a 0.8 config and
    ``original`` a 0.7 one (restoring a config kept from before the switch must not turn
    discovery off again), else ``original`` itself."""
    if not translate(live).changed and translate(original).changed:
        try:
            live_doc = tomllib.loads(live)
        except tomllib.TOMLDecodeError:
            return original
        if any(s in live_doc for s in ("consul_discovery", "kubernetes_discovery")):
            return translate(original).text
    return original
