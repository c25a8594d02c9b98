"""The listener's guard: who may ask the lab what, from where, and what its log may say.

The lab starts processes on the operator's machine, so a request must prove it is
meant for this lab before a handler sees it:

- ``Host`` names the lab (its listen address, ``localhost``, a loopback address or a
  name in ``lab.allowed_hosts``), so that a page whose name was rebound to 127.0.0.1
  (DNS rebinding) is refused;
- ``/api`` and the dashboard's data take the admin token, as a bearer token or as the
  session cookie the one-time login link sets (``HttpOnly``, ``SameSite=Strict``);
- a request that changes state must be ``application/json`` from the same origin (or
  from no browser at all: no ``Origin``/``Referer``), which a cross-site form or a
  ``text/plain`` fetch cannot be; ``/v1`` likewise refuses a foreign ``Origin``;
- a request body must arrive within the read timeout, and an idle connection is
  closed after the idle timeout (the runner's keep-alive);
- an error is answered in the envelope of the API it hit (OpenAI's under ``/v1``),
  and logged as one line with secrets removed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
import hmac
import ipaddress
import logging
import secrets
import time
from typing import Any
import urllib.parse

from aiohttp import web

from labctl import jsontext
from labctl.gateway.envelope import error
from labctl.secrets import Redactor, derive, one_line

#: Paths that take the admin token (the dashboard page itself and /login do not).
ADMIN_PREFIXES = ("/api/", "/dashboard/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_COOKIE = "labctl_session"
#: How long a one-time login link works.
LOGIN_CODE_TTL_S = 600.0
_WILDCARD = ("0.0.0.0", "::", "")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Log:
    """The daemon's log: one line per message, timestamped, secrets and control characters
    removed (a header with a bare CR must not forge a line)."""

    def __init__(self, redactor: Redactor) -> None:
        self.redact = redactor

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"{stamp} labctl: {self.redact(one_line(message))}", flush=True)


class _LogHandler(logging.Handler):
    """aiohttp's own messages (a malformed request, a handler's crash) as one redacted line."""

    def __init__(self, log: Log) -> None:
        super().__init__(logging.INFO)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                message += f": {type(exc).__name__}: {exc}"
            self.log(message)
        except Exception:  # a log line must never take a request down with it
            self.handleError(record)


def route_logs(log: Log) -> None:
    """Send aiohttp's loggers through ``log`` (and nowhere else: no tracebacks on stderr)."""
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal"):
        logger = logging.getLogger(name)
        logger.handlers = [_LogHandler(log)]
        logger.propagate = False
        logger.setLevel(logging.INFO)


#: The ``code`` of OpenAI's envelope for the statuses the guard answers under /v1 and /vla.
_V1_CODES = {403: "forbidden", 404: "not_found", 405: "method_not_allowed",
             408: "request_timeout", 413: "request_too_large", 415: "unsupported_media_type",
             500: "internal_error"}  # fmt: skip


def api_error(path: str, status: int, message: str, headers: dict[str, str] | None = None
              ) -> web.Response:  # fmt: skip
    """An error in the envelope of the API ``path`` belongs to (OpenAI's under /v1 and the
    gateway's /vla)."""
    if path.startswith(("/v1/", "/vla/")) or path == "/v1":
        kind = "api_error" if status >= 500 else "invalid_request_error"
        reply = error(status, message, kind, _V1_CODES.get(status))
        reply.headers.update(headers or {})
        return reply
    return web.json_response(error_body(status, message), status=status, headers=headers)


def error_body(status: int, message: str) -> dict[str, Any]:
    """The admin API's error envelope (the dashboard and the CLI read ``error.message``)."""
    return {"error": {"message": message, "code": status}}


class Guard:
    """The checks every request passes before its handler (see the module doc)."""

    def __init__(
        self,
        token: str,
        listen_host: str,
        allowed_hosts: Iterable[str] = (),
        keys: Iterable[str] = (),
        read_timeout: float = 60.0,
        log: Log | None = None,
    ) -> None:
        self.token = token
        self.listen_host = listen_host.strip("[]").lower()
        self.allowed = {h.lower().rstrip(".") for h in allowed_hosts}
        self.keys = set(keys)
        self.read_timeout = read_timeout
        self.log = log or Log(Redactor([token, *self.keys]))
        self.session = derive(token, "labctl dashboard session")
        self._codes: dict[str, float] = {}

    # -- who may ask ------------------------------------------------------------------

    def host_allowed(self, host: str | None) -> bool:
        """Whether a ``Host`` header names this lab."""
        if not host:
            return True  # HTTP/1.0 without Host: no browser sends that
        name = _hostname(host)
        if name is None:
            return False
        if name in ("localhost", self.listen_host) or name in self.allowed:
            return True
        if any(a.startswith("*.") and name.endswith(a[1:]) for a in self.allowed):
            return True
        addr = _address(name)
        if addr is not None and addr.is_loopback:
            return True
        # listening on every interface: the machine's own addresses name it too
        return self.listen_host in _WILDCARD and addr is not None

    def same_origin(self, request: web.Request) -> bool:
        """No browser origin at all, or the one this request's ``Host`` names."""
        origin = request.headers.get("Origin")
        if origin is None:
            referer = request.headers.get("Referer")
            if referer is None:
                return True
            parts = urllib.parse.urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (a sandboxed frame, a file:// page) included
        return _netloc(parts.netloc, parts.scheme) == _netloc(request.host, request.scheme)

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if given:  # header bytes that are not UTF-8 arrive as surrogates: never a match
            return hmac.compare_digest(_raw(given), self.token.encode())
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(_raw(cookie), self.session.encode())

    # -- one-time login links ------------------------------------------------------------

    def login_code(self) -> str:
        """A code for ``/login?code=…`` that works once, within ten minutes."""
        now = time.monotonic()
        self._codes = {c: t for c, t in self._codes.items() if t > now}
        code = secrets.token_urlsafe(24)
        self._codes[code] = now + LOGIN_CODE_TTL_S
        return code

    def _session_cookie(self, response: web.StreamResponse) -> None:
        response.set_cookie(SESSION_COOKIE, self.session, path="/", httponly=True,
                            samesite="Strict", max_age=30 * 86400)  # fmt: skip

    async def login(self, request: web.Request) -> web.StreamResponse:
        """``GET /login?code=…``: a one-time link (printed by ``labctl up``) becomes a session."""
        code = request.query.get("code", "")
        expires = self._codes.pop(code, None)
        if expires is None or expires < time.monotonic():
            return api_error(request.path, 403, "this login link was used already or has "
                             "expired; `labctl dashboard` prints a new one")  # fmt: skip
        response = web.HTTPSeeOther("/")
        self._session_cookie(response)
        return response

    async def token_login(self, request: web.Request) -> web.StreamResponse:
        """``POST /dashboard/login`` with ``{"token": …}``: the page's form for the token."""
        try:
            doc = jsontext.loads(await request.read(), max_items=100)
            given = doc.get("token") if isinstance(doc, dict) else None
        except ValueError:
            given = None
        if not isinstance(given, str) or not hmac.compare_digest(_raw(given), self.token.encode()):
            return api_error(request.path, 401, "the admin token is wrong (LABCTL_TOKEN, or "
                             "$LABCTL_HOME/admin-token on the lab's machine)")  # fmt: skip
        response = web.json_response({"ok": True})
        self._session_cookie(response)
        return response

    # -- the middleware ------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not self.host_allowed(request.headers.get("Host")):
            return api_error(path, 403, f"the Host header {one_line(request.host)[:100]!r} does "
                             "not name this lab; add the name to lab.allowed_hosts if it is one")  # fmt: skip
        changes = request.method not in SAFE_METHODS
        if changes and request.can_read_body:
            try:
                if request.content.is_eof():  # it came with the headers: nothing to wait for
                    await request.read()
                else:
                    async with asyncio.timeout(self.read_timeout):
                        await request.read()  # cached: handlers read it again for free
            except TimeoutError:
                return api_error(path, 408, f"the request body did not arrive within "
                                 f"{self.read_timeout:g} s (gateway.read_timeout)",
                                 {"Connection": "close"})  # fmt: skip
            except web.HTTPRequestEntityTooLarge:
                return api_error(path, 413, f"the request body is larger than "
                                 f"{request.client_max_size} bytes (gateway.max_body_bytes)")  # fmt: skip
        admin = path.startswith(ADMIN_PREFIXES)
        if changes and (admin or path.startswith("/v1/")) and not self.same_origin(request):
            return api_error(path, 403, "cross-origin request refused: the origin of the page "
                             "that sent it is not this lab's")  # fmt: skip
        if changes and admin and request.content_type != "application/json":
            return api_error(path, 415, f"send the request as application/json, not "
                             f"{one_line(request.content_type)[:60] or 'no content type'}")  # fmt: skip
        if admin and path != "/dashboard/login" and not self.authorized(request):
            header = request.headers.get("Authorization", "")
            given = header[7:].strip() if header.lower().startswith("bearer ") else ""
            if given in self.keys:
                return api_error(path, 403, "an API key is not an admin token (LABCTL_TOKEN)")
            return api_error(path, 401, "the admin token is missing or wrong (LABCTL_TOKEN, or "
                             "$LABCTL_HOME/admin-token on the lab's machine)")  # fmt: skip
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400 and (exc.content_type != "application/json"):
                message = exc.text if exc.text and exc.status not in (404, 405) else (
                    f"{request.method} {path} is not part of this lab's API"
                    if exc.status in (404, 405) else exc.reason)  # fmt: skip
                headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
                return api_error(path, exc.status, message, headers)
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # a bug: one line in the log, a 500 in the API's envelope
            self.log(f"{request.method} {path} failed: {type(exc).__name__}: {exc}")
            return api_error(path, 500, f"internal error ({type(exc).__name__}); see the lab's log")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _hostname(host: str) -> str | None:
    """The name in a ``Host`` header (port and IPv6 brackets removed), lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else None
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".") or None


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _netloc(netloc: str, scheme: str) -> tuple[str | None, int]:
    name = _hostname(netloc)
    port = 443 if scheme == "https" else 80
    rest = netloc.rsplit("]", 1)[-1] if netloc.startswith("[") else netloc
    if ":" in rest:
        tail = rest.rsplit(":", 1)[1]
        port = int(tail) if tail.isdigit() else -1
    return name, port
