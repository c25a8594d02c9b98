"""JSON from untrusted hands (HTTP bodies, model files), bounded and strict.

Python's ``json`` accepts ``NaN``, ``Infinity`` and ``1e999`` (not JSON), recurses
once per nesting level (a 100,000-deep list is a ``RecursionError``, not a
``ValueError``), and builds every object it reads (a few MiB of ``[0,0,...]`` become
millions of them). So before parsing, the text's count of members and elements and
its nesting depth are measured with C-speed scans; only then is it parsed, with
non-finite numbers refused and named by their key. Every failure is a
:class:`JsonError`, a ``ValueError`` with a one-line message and a ``kind``.
"""

from __future__ import annotations

from itertools import accumulate
import json
import re
from typing import Any

#: Deeper than any document labctl reads (config.json nests 4 levels, API bodies 5).
MAX_DEPTH = 64

#: A JSON string: its brackets, commas and colons are text, not structure. An unterminated
#: one runs to the end (a lone backslash included), so no quote is a new start to re-scan
#: from: the scan stays linear.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
#: Opening brackets to +1 and closing ones to -1, as signed bytes.
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


class JsonError(ValueError):
    """Not JSON, not strict JSON, too large or nested too deeply.

    ``kind`` says which: ``items``, ``depth``, ``encoding``, ``syntax``, ``number``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _NonFinite:
    """Stands in for NaN, Infinity or an overflowing number until its key is known."""

    def __init__(self, text: str) -> None:
        self.text = text


def nesting_depth(raw: bytes, enough: int = MAX_DEPTH) -> int:
    """How deeply ``raw`` nests lists and objects, brackets inside strings not counted.

    Linear in the size and done in C but for one pass over the brackets alone, so a
    document is measured before anything recurses into it. A document with no more than
    ``enough`` opening brackets is not scanned: their count bounds its depth.
    """
    opening = raw.count(b"[") + raw.count(b"{")
    if opening <= enough:
        return opening  # cannot nest deeper than it has brackets
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = memoryview(brackets.translate(_STEPS)).cast("b")
    return max(0, max(accumulate(steps)))


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH, max_items: int | None = None) -> Any:
    """Parse strict JSON nested at most ``max_depth`` levels, of at most ``max_items``
    members and elements (commas and colons: an upper bound that bounds the objects, and so
    the memory, the parse creates).

    Raises:
        JsonError: one line saying what is wrong (and where, when known).
    """
    data = raw.encode() if isinstance(raw, str) else raw
    if max_items is not None:
        items = data.count(b",") + data.count(b":")
        if items > max_items:
            raise JsonError(
                "items",
                f"about {items:,} JSON members and elements, beyond the limit of {max_items:,}",
            )
    depth = nesting_depth(data, max_depth)
    if depth > max_depth:
        raise JsonError("depth", f"JSON nests deeper than {max_depth} levels ({depth:,})")
    found: list[_NonFinite] = []

    def constant(text: str) -> _NonFinite:
        found.append(_NonFinite(text))
        return found[-1]

    def number(text: str) -> float | _NonFinite:
        value = float(text)
        return value if value - value == 0 else constant(text)

    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=constant, parse_float=number)
    except UnicodeDecodeError as exc:
        raise JsonError("encoding", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise JsonError(
            "syntax", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:
        # Integers beyond 4,300 digits, or nesting the scan could not see (unbalanced).
        reason = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise JsonError("syntax", f"not JSON labctl can read ({reason})") from None
    if found:
        key, value = _locate(doc)
        raise JsonError(
            "number",
            f"field {key} is {value}, which is not a number JSON allows (Python writes it for "
            "a NaN or an overflow); replace it with a finite number or null",
        )
    return doc


def _locate(doc: Any) -> tuple[str, str]:
    """The dotted key of the first non-finite value in ``doc``, and its text."""
    todo: list[tuple[Any, str]] = [(doc, "")]
    while todo:
        item, path = todo.pop()
        if isinstance(item, _NonFinite):
            return repr(path or "(top level)"), item.text
        if isinstance(item, dict):
            pairs = [(v, f"{path}.{k}" if path else str(k)) for k, v in item.items()]
            todo.extend(reversed(pairs))  # popped in document order
        elif isinstance(item, list):
            todo.extend(reversed([(v, f"{path}[{i}]") for i, v in enumerate(item)]))
    return "'?'", "NaN"
