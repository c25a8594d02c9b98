"""The OpenAI-compatible endpoint: route by ``model``, admit, and relay chunk by chunk.

``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and
``/v1/audio/transcriptions`` (multipart, passed through) go to the deployment
whose name, served model id or alias the request names; ``/v1/models`` lists
them all. Streams are relayed event by event as they arrive, never buffered.
``stream_options.include_usage`` is added upstream when the client did not ask,
so that token counts are always known, and the usage event is then removed
from what the client sees. Errors use OpenAI's envelope; 429 and 503 carry
``Retry-After``. Neither keys nor prompts are ever logged.

An engine that dies under load fails only the requests it was answering: a
stream in flight ends with an error event, and a request that finds the engine
gone (its connection refused, or closed before any answer) goes back to the
queue, which is held through the restart as it is through a swap (twice at
most, so that a request that kills its engine does not do so forever).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
import json
import re
import time
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from labctl import jsontext
from labctl.config import GatewayConfig
from labctl.gateway.admission import Admission, Rejected
from labctl.sim.live import ITL_BUCKETS, REQUEST_BUCKETS, TTFT_BUCKETS

#: Members and elements a request body may hold (a prompt of token ids, a long chat): about
#: the most a 32 MiB body of real requests holds, and far fewer objects than memory allows.
MAX_BODY_ITEMS = 2_000_000
_USAGE_EVENT = re.compile(rb'"choices":\s*\[\]')


@dataclass(frozen=True)
class Route:
    """A deployment as the gateway sees it."""

    name: str
    served: str
    aliases: tuple[str, ...]
    #: Where its current revision serves (None while it has none).
    url: str | None
    limit: int
    queue_size: int
    #: The API key its engine's /v1 takes (None: none); clients never see it.
    key: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, self.served, *self.aliases)


def form_model(raw: bytes) -> str | None:
    """The ``model`` field of a multipart form (the audio endpoints'), found in linear time:
    the first part named ``model``, its value after the blank line that ends its headers."""
    at = raw.find(b'name="model"')
    if at < 0:
        return None
    start = raw.find(b"\r\n\r\n", at)
    if start < 0:
        return None
    end = raw.find(b"\r\n", start + 4)
    if end < 0:
        return None
    return raw[start + 4 : min(end, start + 4 + 1024)].decode(errors="replace")


def _is_error_envelope(data: bytes) -> bool:
    """Whether an engine's error body is OpenAI's envelope (then it is relayed as it is)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("error"), dict)


def error(status: int, message: str, kind: str, code: str | None = None,
          param: str | None = None, retry_after: float | None = None) -> web.Response:  # fmt: skip
    """OpenAI's error envelope."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else {}
    return web.json_response(body, status=status, headers=headers)


class _Reply(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


class _EngineGone(Exception):
    """The engine refused the connection: the request never reached it, so it may go again."""


async def _no_restart(name: str) -> bool:
    return False


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter("labctl_gateway_requests", "Requests answered, by model and status.",
                                ["model", "code"], registry=r)  # fmt: skip
        self.queue_depth = Gauge("labctl_gateway_queue_depth", "Requests waiting for a slot.",
                                 ["model"], registry=r)  # fmt: skip
        self.in_flight = Gauge("labctl_gateway_in_flight", "Requests running upstream.",
                               ["model"], registry=r)  # fmt: skip
        self.queue_wait = Histogram("labctl_gateway_queue_wait_seconds",
                                    "Time requests waited for a slot (held through swaps included).",
                                    ["model"], buckets=TTFT_BUCKETS, registry=r)  # fmt: skip
        self.ttft = Histogram("labctl_gateway_time_to_first_token_seconds",
                              "From the gateway receiving a request to its first token.",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)  # fmt: skip
        self.itl = Histogram("labctl_gateway_inter_token_latency_seconds",
                             "Between streamed events of a response.",
                             ["model"], buckets=ITL_BUCKETS, registry=r)  # fmt: skip
        self.duration = Histogram("labctl_gateway_request_duration_seconds",
                                  "From the gateway receiving a request to its last byte.",
                                  ["model"], buckets=REQUEST_BUCKETS, registry=r)  # fmt: skip
        self.tokens = Counter("labctl_gateway_tokens", "Tokens, by kind (prompt, completion).",
                              ["model", "kind"], registry=r)  # fmt: skip


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        routes: Callable[[], list[Route]],
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
        engine_gone: Callable[[str], Awaitable[bool]] = _no_restart,
    ) -> None:
        self.config = config
        self.routes = routes
        #: Told when a deployment's engine refuses connections; True when it has died and a
        #: restart is under way (the deployment is then held, and the request waits for it).
        self.engine_gone = engine_gone
        self.metrics = GatewayMetrics(registry)
        self.clock = clock
        self.admissions: dict[str, Admission] = {}
        self._keys = {k.key: k for k in config.keys}
        self._recent: dict[str, deque[float]] = {}
        self._http: aiohttp.ClientSession | None = None

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/models", self.models)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                     "/v1/audio/transcriptions"):  # fmt: skip
            router.add_post(path, self.relay)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                auto_decompress=False,
            )
        return self._http

    # -- swaps (the deploy controller's hooks) -----------------------------------------

    def admission(self, route: Route) -> Admission:
        adm = self.admissions.get(route.name)
        if adm is not None and (adm.limit, adm.queue_size) != (route.limit, route.queue_size):
            adm.resize(route.limit, route.queue_size)  # a redeploy changed them
        if adm is None:
            adm = Admission(route.name, route.limit, route.queue_size,
                            self.config.queue_timeout, self.config.swap_timeout, self.clock)  # fmt: skip
            self.admissions[route.name] = adm
            self.metrics.queue_depth.labels(route.name).set_function(lambda: adm.depth)
            self.metrics.in_flight.labels(route.name).set_function(lambda: adm.in_flight)
        return adm

    def _route_named(self, name: str) -> Route | None:
        return next((r for r in self.routes() if r.name == name), None)

    async def drain(self, name: str) -> None:
        route = self._route_named(name)
        if route is not None:
            await self.admission(route).drain(self.config.drain_timeout)

    def hold(self, name: str) -> None:
        """Hold new requests for ``name`` now (its engine died; a restart follows)."""
        route = self._route_named(name)
        if route is not None:
            self.admission(route).hold()

    async def resume(self, name: str, url: str | None) -> None:
        adm = self.admissions.get(name)
        if adm is not None:
            adm.resume()

    # -- requests ----------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> str | None:
        """The caller's key (None when the gateway takes no keys)."""
        if not self._keys:
            return None
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        key = self._keys.get(token)
        if key is None:
            raise _Reply(error(401, "Incorrect API key provided." if token else
                               "You didn't provide an API key (Authorization: Bearer KEY).",
                               "invalid_request_error", "invalid_api_key"))  # fmt: skip
        if key.rate_per_minute is not None:
            now = self.clock()
            recent = self._recent.setdefault(token, deque())
            while recent and recent[0] <= now - 60:
                recent.popleft()
            if len(recent) >= key.rate_per_minute:
                raise _Reply(error(429, f"Rate limit reached: {key.rate_per_minute} requests per "
                                   "minute for this key.", "rate_limit_error", "rate_limit_exceeded",
                                   retry_after=60 - (now - recent[0])))  # fmt: skip
            recent.append(now)
        return token

    def _find(self, model: str) -> Route:
        for route in self.routes():
            if model in route.names:
                return route
        raise _Reply(error(404, f"The model `{model}` does not exist.", "invalid_request_error",
                           "model_not_found", "model"))  # fmt: skip

    async def models(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
        except _Reply as reply:
            return reply.response
        data, seen = [], set()
        for route in self.routes():
            for name in route.names:
                if name not in seen:
                    seen.add(name)
                    data.append({"id": name, "object": "model", "owned_by": "labctl",
                                 "created": 0, "root": route.served,
                                 "labctl_deployment": route.name})  # fmt: skip
        return web.json_response({"object": "list", "data": data})

    async def relay(self, request: web.Request) -> web.StreamResponse:
        t0 = self.clock()
        model_label = "unknown"
        status = 500
        try:
            token = self._authorize(request)
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise _Reply(error(413, f"The request body is larger than {self.config.max_body_bytes} "
                                   "bytes (gateway.max_body_bytes).", "invalid_request_error",
                                   "request_too_large")) from None  # fmt: skip
            multipart = request.content_type.startswith("multipart/")
            doc, model = self._parse(raw, multipart)
            route = self._find(model)
            model_label = route.name
            key = self._keys.get(token or "")
            if key is not None and key.models and not set(route.names) & set(key.models):
                raise _Reply(error(403, f"This API key may not use the model `{model}`.",
                                   "permission_error", "model_not_allowed", "model"))  # fmt: skip
            adm = self.admission(route)
            priority = (
                doc.pop("priority", 0) if doc is not None else 0
            )  # the gateway's, not the engine's
            if not isinstance(priority, int) or isinstance(priority, bool):
                raise _Reply(error(400, f"priority must be an integer (lower runs first), not {priority!r}",
                                   "invalid_request_error", None, "priority"))  # fmt: skip
            tries = 0
            while True:
                tries += 1
                try:
                    waited = await adm.acquire(priority)
                except Rejected as exc:
                    kind = "rate_limit_error" if exc.status == 429 else "service_unavailable"
                    raise _Reply(
                        error(exc.status, str(exc), kind, None, retry_after=exc.retry_after)
                    ) from None
                self.metrics.queue_wait.labels(route.name).observe(waited)
                if waited:  # it may have been swapped while the request waited
                    route = self._route_named(route.name) or route
                try:
                    response = await self._forward(request, route, raw, doc, multipart, t0)
                except _EngineGone as gone:
                    adm.release()
                    if tries < 3 and await self.engine_gone(route.name):
                        continue  # back in the queue, held until the restart is done
                    raise _Reply(error(502, str(gone), "api_error", None)) from None
                except BaseException:
                    adm.release()
                    raise
                adm.release()
                status = response.status
                return response
        except _Reply as reply:
            status = reply.response.status
            return reply.response
        except asyncio.CancelledError:
            status = 499  # the client went away; upstream was cancelled with it
            raise
        finally:
            self.metrics.requests.labels(model_label, str(status)).inc()
            self.metrics.duration.labels(model_label).observe(self.clock() - t0)

    def _parse(self, raw: bytes, multipart: bool) -> tuple[dict[str, Any] | None, str]:
        if multipart:
            model = form_model(raw)
            if model is None:
                raise _Reply(
                    error(
                        400, "the form has no model field", "invalid_request_error", None, "model"
                    )
                )
            return None, model
        try:
            doc = jsontext.loads(raw, max_items=MAX_BODY_ITEMS)
        except ValueError as exc:
            raise _Reply(
                error(400, f"the request body is not valid JSON: {exc}", "invalid_request_error")
            ) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
            raise _Reply(error(400, "the request needs a JSON object with a model", "invalid_request_error",
                               None, "model"))  # fmt: skip
        return doc, doc["model"]

    async def _forward(
        self, request: web.Request, route: Route, raw: bytes, doc: dict[str, Any] | None,
        multipart: bool, t0: float,
    ) -> web.StreamResponse:  # fmt: skip
        current = route
        if current.url is None:
            raise _Reply(error(503, f"{route.name} is not serving right now", "service_unavailable",
                               None, retry_after=5))  # fmt: skip
        asked = True
        stream = False
        if doc is not None:
            doc = dict(doc)  # a retry after a restart starts from the client's own body
            doc["model"] = current.served
            stream = bool(doc.get("stream"))
            if stream:
                given = doc.get("stream_options")
                opts: dict[str, Any] = given if isinstance(given, dict) else {}
                asked = bool(opts.get("include_usage"))
                doc["stream_options"] = {**opts, "include_usage": True}
            body = json.dumps(doc).encode()
            headers = {"Content-Type": "application/json"}
        else:
            body = raw
            headers = {"Content-Type": request.headers.get("Content-Type", "")}
        if current.key:
            headers["Authorization"] = f"Bearer {current.key}"
        try:
            upstream = await self.http().post(
                current.url + request.path, data=body, headers=headers
            )
        except aiohttp.ClientConnectorError as exc:
            raise _EngineGone(f"{route.name}'s engine refused the connection: {exc}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            # it took the request and went away before answering: retried once if it died
            raise _EngineGone(f"{route.name}'s engine closed the connection before answering: "
                              f"{exc}") from None  # fmt: skip
        except (aiohttp.ClientError, OSError) as exc:
            raise _Reply(error(502, f"{route.name}'s engine did not answer: {exc}", "api_error",
                               None)) from None  # fmt: skip
        async with upstream:
            kind = upstream.headers.get("Content-Type", "application/json")
            if not (stream and upstream.status == 200 and kind.startswith("text/event-stream")):
                try:
                    data = await upstream.read()
                except (aiohttp.ClientError, OSError) as exc:
                    raise _Reply(error(502, f"{route.name}'s engine stopped while answering: "
                                       f"{exc}", "api_error", None)) from None  # fmt: skip
                self._count_usage(route.name, data)
                if doc is not None and upstream.status == 200 and not stream:
                    self.metrics.ttft.labels(route.name).observe(self.clock() - t0)
                if upstream.status >= 400 and not _is_error_envelope(data):
                    raise _Reply(error(upstream.status, f"{route.name}'s engine answered HTTP "
                                       f"{upstream.status} to {request.path}: "
                                       f"{data[:200].decode(errors='replace').strip()!r}",
                                       "api_error" if upstream.status >= 500 else
                                       "invalid_request_error", None))  # fmt: skip
                return web.Response(
                    body=data, status=upstream.status, content_type=kind.split(";")[0]
                )
            resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                           "Cache-Control": "no-cache"})  # fmt: skip
            await resp.prepare(request)
            await self._relay_events(upstream, resp, route.name, asked, t0)
            await resp.write_eof()
            return resp

    async def _relay_events(
        self, upstream: aiohttp.ClientResponse, resp: web.StreamResponse, name: str, asked: bool,
        t0: float,
    ) -> None:  # fmt: skip
        buf = b""
        last: float | None = None
        ttft, itl = self.metrics.ttft.labels(name), self.metrics.itl.labels(name)
        chunks = upstream.content.iter_any().__aiter__()
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except (aiohttp.ClientError, OSError) as exc:
                # the engine went away mid-stream: say so in the stream, as OpenAI's API does
                event = {"error": {"message": f"{name}'s engine stopped while streaming "
                                   f"({type(exc).__name__}); retry the request",
                                   "type": "api_error", "param": None, "code": 502}}  # fmt: skip
                buf = b""
                await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                break
            now = self.clock()
            buf += chunk
            out = []
            while (end := buf.find(b"\n\n")) >= 0:
                event_bytes, buf = buf[: end + 2], buf[end + 2 :]
                if b'"usage":{' in event_bytes and _USAGE_EVENT.search(event_bytes):
                    self._count_usage(name, event_bytes[5:].strip())
                    if not asked:
                        continue  # added by the gateway: not the client's to see
                elif b'"choices":[{' in event_bytes or b'"choices": [{' in event_bytes:
                    if last is None:
                        ttft.observe(now - t0)
                    else:
                        itl.observe(now - last)
                    last = now
                out.append(event_bytes)
            if out:
                await resp.write(b"".join(out))
        if buf:
            await resp.write(buf)

    def _count_usage(self, name: str, data: bytes) -> None:
        try:
            usage = json.loads(data).get("usage")
        except (ValueError, AttributeError):
            return
        if isinstance(usage, dict):
            for kind in ("prompt", "completion"):
                n = usage.get(f"{kind}_tokens")
                if isinstance(n, int) and n > 0:
                    self.metrics.tokens.labels(name, kind).inc(n)
