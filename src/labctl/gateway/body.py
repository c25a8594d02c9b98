"""A request's body: the model it names, and the body the engine gets instead.

The engine's body differs from the client's in at most three top-level members: ``model``
(the served id, where the client used the deployment's name or an alias),
``stream_options`` (``include_usage`` added, so that token counts are always known) and
``priority`` (the gateway's, removed). In the common case the client's bytes are spliced:
the ``model`` value replaced in place and ``stream_options`` put first, with C-speed
searches and one copy, where encoding the parsed body again would cost more the longer
its prompt. Only a body that needs more (a ``priority``, ``stream_options`` of its own, a
``"model"`` that appears more than once) is encoded again; one that needs nothing goes as
it came.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: After a ``"model"`` key: the colon and its string value (group 1).
_MODEL_VALUE = re.compile(rb'\s*:\s*("[^"\\]*(?:\\.[^"\\]*)*")', re.DOTALL)
_USAGE_ON = b'"stream_options":{"include_usage":true},'
#: A letter of "model" written as an escape (``"mod\u0065l"`` is a ``model`` key too).
_LETTER_ESCAPE = re.compile(rb"\\u006[45cdfCDF]")


def for_engine(raw: bytes, doc: dict[str, Any], served: str) -> tuple[bytes, bool, bool]:
    """The body the engine gets, whether it streams, and whether the client asked for usage.

    ``doc`` is ``raw`` parsed (a JSON object with a string ``model``).
    """
    stream = bool(doc.get("stream"))
    given = doc.get("stream_options")
    opts: dict[str, Any] = given if isinstance(given, dict) else {}
    asked = not stream or bool(opts.get("include_usage"))
    rename = doc.get("model") != served
    if not rename and asked and "priority" not in doc:
        return raw, stream, asked
    if "priority" not in doc and (asked or "stream_options" not in doc):
        body = _splice(raw, served if rename else None, not asked)
        if body is not None:
            return body, stream, asked
    out = {k: v for k, v in doc.items() if k != "priority"}
    out["model"] = served
    if not asked:
        out["stream_options"] = {**opts, "include_usage": True}
    return json.dumps(out).encode(), stream, asked


def _splice(raw: bytes, model: str | None, usage: bool) -> bytes | None:
    """``raw`` with its ``model`` value replaced (``model`` not None) and ``stream_options``
    added (``usage``), or None where the bytes alone cannot say where ``model`` is.

    ``raw`` holds a top-level ``model`` key (it was parsed); where ``"model"`` occurs only
    once, that is it: inside a string every quote is escaped, so the seven bytes
    ``"model"`` cannot occur there, and a nested ``model`` key would be a second occurrence
    (unless the top-level key is spelt with escapes, which is then looked for).
    """
    view = memoryview(raw)  # slices of it are not copies: the one join below is the copy
    start = raw.find(b"{") + 1  # the object's own brace: only whitespace comes before it
    parts: list[bytes | memoryview] = [view[:start], _USAGE_ON] if usage else [view[:start]]
    if model is None:
        parts.append(view[start:])
    else:
        at = raw.find(b'"model"')
        if at < 0 or raw.find(b'"model"', at + 7) >= 0 or _LETTER_ESCAPE.search(raw):
            return None
        m = _MODEL_VALUE.match(raw, at + 7)
        if m is None:
            return None
        parts += (view[start : m.start(1)], json.dumps(model).encode(), view[m.end(1) :])
    return b"".join(parts)
