"""The twin's error answers, in vLLM's envelope: ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

from aiohttp import web

#: vLLM's error type by status where its serving layer builds the error itself.
KINDS = {400: "BadRequestError", 404: "NotFoundError", 501: "NotImplementedError"}


def error_response(
    status: int, message: str, param: str | None = None, kind: str | None = None
) -> web.Response:
    """An error as vLLM answers it. ``kind`` defaults to its serving layer's type for the
    status; FastAPI-level errors carry the status phrase instead ("Bad Request")."""
    kind = kind or KINDS.get(status, "InternalServerError")
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)
