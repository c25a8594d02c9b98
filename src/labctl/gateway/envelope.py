"""Errors in OpenAI's envelope, as the gateway answers them.

``{"error": {"message", "type", "param", "code"}}``; 429 and 503 carry ``Retry-After``.
The daemon's admin API answers its errors through :func:`error` too.
"""

from __future__ import annotations

import json

from aiohttp import web


def error(status: int, message: str, kind: str, code: str | None = None,
          param: str | None = None, retry_after: float | None = None) -> web.Response:  # fmt: skip
    """OpenAI's error envelope."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else {}
    return web.json_response(body, status=status, headers=headers)


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
