"""Errors in OpenAI's envelope, as the gateway answers them.

``{"error": {"message", "type", "param", "code"}}``; 429 and 503 carry ``Retry-After``.
The guard answers the ``/v1`` requests it refuses through :func:`error` too.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def body(message: str, kind: str, code: str | int | None = None,
         param: str | None = None) -> dict[str, Any]:  # fmt: skip
    """OpenAI's error envelope, as a document."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error(status: int, message: str, kind: str, code: str | None = None,
          param: str | None = None, retry_after: float | None = None) -> web.Response:  # fmt: skip
    """OpenAI's error envelope, as an answer."""
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else {}
    return web.json_response(body(message, kind, code, param), status=status, headers=headers)


class Reply(Exception):
    """An answer decided before the request reached an engine (an error, mostly)."""

    def __init__(self, response: web.Response) -> None:
        self.response = response


def is_error_envelope(data: bytes) -> bool:
    """Whether an engine's error body is OpenAI's envelope (then it is relayed as it is)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("error"), dict)
