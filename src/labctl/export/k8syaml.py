"""Manifests as YAML: block style for people, every string quoted so no value changes type.

A string is plain only where YAML cannot read it as anything else (a letter, ``/`` or
``_`` first, then letters, digits and ``_./:-``, none of YAML's words for true, false or
null); others are JSON strings (valid YAML double-quoted scalars), so ``"1"``, ``"on"`` or
``"0.30"`` stay strings. A multi-line string is a literal block (``|``, ``|-``) where its
lines allow, so a dashboard's JSON reads as itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import re
from typing import Any

#: Strings written without quotes: nothing YAML could read as another type or as syntax.
_PLAIN = re.compile(r"[A-Za-z/_][A-Za-z0-9_./:-]*")
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


def dump(doc: Mapping[str, Any]) -> str:
    """One YAML document for a manifest (a mapping of strings, numbers, booleans, None,
    lists and mappings)."""
    return "\n".join(_mapping(doc, 0)) + "\n"


def dump_all(docs: Sequence[Mapping[str, Any]]) -> str:
    """Several documents, separated by ``---``."""
    return "---\n".join(dump(d) for d in docs)


def _string(text: str) -> str:
    plain = _PLAIN.fullmatch(text) and text.lower() not in _RESERVED and text[-1] != ":"
    return text if plain else json.dumps(text, ensure_ascii=False)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return _string(str(value))


def _block(text: str, indent: int) -> list[str] | None:
    """A literal block for a multi-line string whose lines it keeps exactly (None: quote it)."""
    lines = text.split("\n")
    trailing = lines[-1] == ""
    body = lines[:-1] if trailing else lines
    if (
        len(body) < 2
        or not body[0].strip()
        or body[0][0] == " "
        or (trailing and len(lines) > 1 and text.endswith("\n\n"))
        or any(line != line.rstrip() or "\t" in line or not line.isprintable() for line in body)
    ):
        return None
    pad = " " * indent
    return ["|" if trailing else "|-", *(pad + line if line else "" for line in body)]


def _value(value: Any, indent: int) -> tuple[str, list[str]]:
    """What follows ``key:`` on its line, and the lines under it."""
    if isinstance(value, Mapping):
        return ("", _mapping(value, indent + 2)) if value else (" {}", [])
    if isinstance(value, (list, tuple)):
        return ("", _sequence(value, indent + 2)) if value else (" []", [])
    if isinstance(value, str) and "\n" in value:
        block = _block(value, indent + 2)
        if block is not None:
            return " " + block[0], block[1:]
    return " " + _scalar(value), []


def _mapping(doc: Mapping[Any, Any], indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    for key, value in doc.items():
        head, rest = _value(value, indent)
        out += [f"{pad}{_string(str(key))}:{head}", *rest]
    return out


def _sequence(items: Sequence[Any], indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    for item in items:
        if isinstance(item, Mapping) and item:
            lines = _mapping(item, indent + 2)
            out += [f"{pad}- {lines[0].lstrip()}", *lines[1:]]
        elif isinstance(item, (list, tuple)) and item:
            lines = _sequence(item, indent + 2)
            out += [f"{pad}- {lines[0].lstrip()}", *lines[1:]]
        else:
            head, rest = _value(item, indent)
            out += [f"{pad}-{head}", *rest]
    return out
