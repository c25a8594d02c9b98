"""The OpenAI-compatible endpoint: route by ``model`` and API family, admit, and relay.

Every path of every API family the engines serve (``labctl.engines.families()``) goes to
the deployment whose name, served model id or alias the request names (in its body, or
in the path for a family whose path has ``{model}``), and which serves that family;
``/v1/models`` lists them all. The deploy controller pushes each deployment's route as it
changes (:meth:`Gateway.publish`), and has it drained through a swap
(:meth:`Gateway.drain`).

Streams are relayed event by event as they arrive, never buffered
(:mod:`labctl.gateway.relay`, over the gateway's own engine client,
:mod:`labctl.gateway.upstream`). ``stream_options.include_usage`` is added upstream when
the client did not ask, so that token counts are always known, and the usage event is
then removed from what the client sees (:mod:`labctl.gateway.body`).

Speech requests (``/v1/audio/…``, multipart forms) route by the form's ``model`` field
(:mod:`labctl.gateway.form`); the file must be there, non-empty and within
``gateway.max_audio_bytes``; its length is read from its header to count the audio
seconds, the duration by audio length and the live real-time factor of each deployment;
an engine that takes a family on another path gets it there, with the form fields it
needs (:class:`labctl.engines.Upstream`).

Robot actions (``POST /vla/{deployment}/act``, OpenVLA's protocol) are checked before they
reach the engine (an H×W×3 uint8 json-numpy frame, an instruction, and an ``unnorm_key``
where the checkpoint has several datasets' statistics), go to the engine's ``/act``, and
an answer of OpenVLA's ``"error"`` (HTTP 200) is a failed request, a 502 here. Each action
is timed from the frame's arrival (held through a swap included) against the deployment's
``control_hz``. Errors use OpenAI's
envelope; 429 and 503 carry ``Retry-After``. Neither keys nor prompts are ever logged.

An engine that dies under load fails only the requests it was answering: a stream in
flight ends with an error event, and a request that finds the engine gone (its
connection refused, or closed before any answer) goes back to the queue, which is held
through the restart as it is through a swap (twice at most, so that a request that kills
its engine does not do so forever).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
import time
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from labctl import audio, jsontext, vla
from labctl.config import GatewayConfig
from labctl.engines import Family, Route, families
from labctl.gateway.admission import Admission, Rejected
from labctl.gateway.body import for_engine
from labctl.gateway.envelope import Reply, error, is_error_envelope
from labctl.gateway.form import Form, FormError, parse
from labctl.gateway.metrics import Bound, GatewayMetrics
from labctl.gateway.relay import EventRelay
from labctl.gateway.upstream import Connection, EngineFailed, EngineGone, Pool

__all__ = ["MAX_BODY_ITEMS", "Gateway"]

#: Members and elements a request body may hold (a prompt of token ids, a long chat): about
#: the most a 32 MiB body of real requests holds, and far fewer objects than memory allows.
MAX_BODY_ITEMS = 2_000_000
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_JSON = "Content-Type: application/json\r\n"
_SPEECH = frozenset({"transcriptions", "translations"})
_TRUE = frozenset({"true", "True", "TRUE", "1"})


class _Act:
    """An action request: the actions its answer carried (a chunk of K: K)."""

    __slots__ = ("actions",)

    def __init__(self) -> None:
        self.actions = 0


class _Speech:
    """A speech request's audio length (seconds; None: its header did not say)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds


async def _no_restart(name: str) -> bool:
    return False


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
        engine_gone: Callable[[str], Awaitable[bool]] = _no_restart,
    ) -> None:
        self.config = config
        #: Each deployment's route as the deploy controller last published it.
        self.routes: dict[str, Route] = {}
        #: Every name a route answers to → the routes answering to it (one, in a valid lab).
        self._by_name: dict[str, tuple[Route, ...]] = {}
        #: Told when a deployment's engine refuses connections; True when it has died and a
        #: restart is under way (the deployment is then held, and the request waits for it).
        self.engine_gone = engine_gone
        self.metrics = GatewayMetrics(registry)
        self.clock = clock
        self.admissions: dict[str, Admission] = {}
        self._keys = {k.key: k for k in config.keys}
        self._recent: dict[str, deque[float]] = {}
        self.pool = Pool()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """``/v1/models``, and every path of every API family the engines serve."""
        router.add_get("/v1/models", self.models)
        for family in families():
            for path in family.paths:
                router.add_post(path, self._handler(family))

    def _handler(self, family: Family) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.relay(request, family)

        return handle

    async def close(self) -> None:
        self.pool.close()

    # -- swaps (the deploy controller's hooks) -----------------------------------------

    def admission(self, route: Route) -> Admission:
        adm = self.admissions.get(route.name)
        if adm is None:
            adm = Admission(route.name, route.limit, route.queue_size,
                            self.config.queue_timeout, self.config.swap_timeout, self.clock)  # fmt: skip
            self.admissions[route.name] = adm
            self.metrics.queue_depth.labels(route.name).set_function(lambda: adm.depth)
            self.metrics.in_flight.labels(route.name).set_function(lambda: adm.in_flight)
        elif adm.limit != route.limit or adm.queue_size != route.queue_size:
            adm.resize(route.limit, route.queue_size)  # a redeploy changed them
        return adm

    def publish(self, route: Route) -> None:
        """A deployment's route as it is now (the controller's, at each change of state): a
        held route holds its new requests; otherwise those held go to where it serves now
        (nowhere: they get a 503)."""
        self.routes[route.name] = route
        self._index()
        if route.rtfx_floor is not None:
            self.metrics.audio(route.name, self.clock)
            self.metrics.rtfx_floor.labels(route.name).set(route.rtfx_floor)
        if route.control_hz is not None:
            self.metrics.vla(route.name)
            self.metrics.control_hz.labels(route.name).set(route.control_hz)
        if route.held:
            self.admission(route).hold()
        elif route.name in self.admissions:
            self.admission(route).resume()

    def _index(self) -> None:
        by_name: dict[str, tuple[Route, ...]] = {}
        for route in self.routes.values():
            for name in dict.fromkeys(route.names):
                by_name[name] = (*by_name.get(name, ()), route)
        self._by_name = by_name

    async def drain(self, name: str) -> None:
        route = self.routes.get(name)
        if route is not None:
            await self.admission(route).drain(self.config.drain_timeout)

    # -- requests ----------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> str | None:
        """The caller's key (None when the gateway takes no keys)."""
        if not self._keys:
            return None
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        key = self._keys.get(token)
        if key is None:
            raise Reply(error(401, "Incorrect API key provided." if token else
                              "You didn't provide an API key (Authorization: Bearer KEY).",
                              "invalid_request_error", "invalid_api_key"))  # fmt: skip
        if key.rate_per_minute is not None:
            now = self.clock()
            recent = self._recent.get(token)
            if recent is None:
                recent = self._recent[token] = deque()
            while recent and recent[0] <= now - 60:
                recent.popleft()
            if len(recent) >= key.rate_per_minute:
                raise Reply(error(429, f"Rate limit reached: {key.rate_per_minute} requests per "
                                  "minute for this key.", "rate_limit_error", "rate_limit_exceeded",
                                  retry_after=60 - (now - recent[0])))  # fmt: skip
            recent.append(now)
        return token

    def _find(self, model: str, family: Family) -> Route:
        found = self._by_name.get(model, ())
        for route in found:
            if family.name in route.families:
                return route
        if found:
            serves = ", ".join(sorted(found[0].families)) or "nothing"
            raise Reply(error(400, f"The model `{model}` does not serve {family.name} "
                              f"({family.paths[0]}); it serves: {serves}.",
                              "invalid_request_error", "model_not_supported", "model"))  # fmt: skip
        raise Reply(error(404, f"The model `{model}` does not exist.", "invalid_request_error",
                          "model_not_found", "model"))  # fmt: skip

    async def models(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
        except Reply as reply:
            return reply.response
        data, seen = [], set()
        for route in self.routes.values():
            for name in route.names:
                if name not in seen:
                    seen.add(name)
                    data.append({"id": name, "object": "model", "owned_by": "labctl",
                                 "created": 0, "root": route.served,
                                 "labctl_deployment": route.name})  # fmt: skip
        return web.json_response({"object": "list", "data": data})

    async def relay(self, request: web.Request, family: Family) -> web.StreamResponse:
        t0 = self.clock()
        bound: Bound | None = None
        speech: _Speech | None = None
        label = "unknown"
        status = 500
        try:
            token = self._authorize(request)
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise Reply(error(413, f"The request body is larger than {self.config.max_body_bytes} "
                                  "bytes (gateway.max_body_bytes).", "invalid_request_error",
                                  "request_too_large")) from None  # fmt: skip
            form: Form | None = None
            act: _Act | None = None
            unnorm: tuple[bool, str | None] = (False, None)
            if "model" in request.match_info:
                doc, model = None, request.match_info["model"]
                if family.name == "actions":
                    act, unnorm = _Act(), (True, _observation(raw).unnorm_key)
            elif family.body == "multipart" or request.content_type.startswith("multipart/"):
                doc, form = None, self._form(request, raw)
                model = form.fields["model"]
                if family.name in _SPEECH:
                    speech = self._speech(form)
            else:
                doc, model = self._parse(raw)
            route = self._find(model, family)
            label = route.name
            bound = self.metrics.bound(label)
            if unnorm[0]:
                _check_unnorm(route, unnorm[1])
            if token is not None:
                key = self._keys[token]
                if key.models and not set(route.names) & set(key.models):
                    raise Reply(error(403, f"This API key may not use the model `{model}`.",
                                      "permission_error", "model_not_allowed", "model"))  # fmt: skip
            priority = (
                doc.get("priority", 0) if doc is not None else 0
            )  # the gateway's, not the engine's
            if not isinstance(priority, int) or isinstance(priority, bool):
                raise Reply(error(400, f"priority must be an integer (lower runs first), not {priority!r}",
                                  "invalid_request_error", None, "priority"))  # fmt: skip
            adm = self.admission(route)
            tries = 0
            while True:
                tries += 1
                waited = 0.0
                if not adm.try_enter():
                    try:
                        waited = await adm.acquire(priority)
                    except Rejected as exc:
                        kind = "rate_limit_error" if exc.status == 429 else "service_unavailable"
                        raise Reply(
                            error(exc.status, str(exc), kind, None, retry_after=exc.retry_after)
                        ) from None
                    route = self.routes.get(route.name) or route  # swapped while it waited?
                bound.queue_wait.observe(waited)
                try:
                    response = await self._forward(request, route, family, raw, doc, form,
                                                   speech, act, t0, bound)  # fmt: skip
                except EngineGone as gone:  # the request never reached it: it may go again
                    adm.release()
                    if tries < 3 and await self.engine_gone(route.name):
                        continue  # back in the queue, held until the restart is done
                    raise Reply(error(502, f"{route.name}: {gone}; the request did not reach it",
                                      "api_error", None)) from None  # fmt: skip
                except BaseException:
                    adm.release()
                    raise
                adm.release()
                status = response.status
                return response
        except _ClientGone as gone:
            status = 499  # the client went away mid-stream; upstream was dropped with it
            return gone.response
        except Reply as reply:
            status = reply.response.status
            return reply.response
        except asyncio.CancelledError:
            status = 499  # the client went away; upstream was cancelled with it
            raise
        finally:
            if status == 200 and bound is not None:
                bound.ok.inc()
                if speech is not None:
                    self.metrics.audio(label, self.clock).observe(speech.seconds, self.clock() - t0)
                if act is not None and act.actions:
                    hz = self.routes[label].control_hz or 5.0
                    self.metrics.vla(label).observe(self.clock() - t0, act.actions, hz)
            else:
                self.metrics.requests.labels(label, str(status)).inc()
            duration = bound.duration if bound is not None else self.metrics.duration.labels(label)
            duration.observe(self.clock() - t0)

    def _form(self, request: web.Request, raw: bytes) -> Form:
        """The request's multipart form, which names its model.

        Raises:
            Reply: a 400 naming what is wrong with it.
        """
        kind = request.headers.get("Content-Type", "")
        if not kind.startswith("multipart/form-data"):
            raise Reply(error(400, "this endpoint takes a multipart/form-data body (the audio "
                              f"file and the model), not {kind[:80] or 'none'!r}",
                              "invalid_request_error"))  # fmt: skip
        try:
            form = parse(raw, kind)
        except FormError as exc:
            raise Reply(error(400, f"the request body is not a valid multipart form: {exc}",
                              "invalid_request_error")) from None  # fmt: skip
        if not form.fields.get("model"):
            raise Reply(error(400, "the form has no model field; add one naming the deployment",
                              "invalid_request_error", None, "model"))  # fmt: skip
        return form

    def _speech(self, form: Form) -> _Speech:
        """The audio a speech form carries, checked: there, non-empty, within the limit.

        Raises:
            Reply: a 400 naming what is wrong with the file.
        """
        data = form.file_bytes
        if data is None:
            raise Reply(error(400, "the form has no file field; send the audio as a file part "
                              "named file", "invalid_request_error", None, "file"))  # fmt: skip
        if len(data) == 0:
            raise Reply(error(400, "Invalid or unsupported audio file: the file is empty.",
                              "invalid_request_error", None, "file"))  # fmt: skip
        limit = self.config.max_audio_bytes
        if len(data) > limit:
            raise Reply(error(400, f"Maximum file size exceeded: {len(data) / 2**20:.1f} MiB, "
                              f"the limit is {limit / 2**20:g} MiB (gateway.max_audio_bytes).",
                              "invalid_request_error", None, "file"))  # fmt: skip
        try:
            return _Speech(audio.probe(data).seconds)
        except audio.AudioError:
            return _Speech(None)  # the engine may read what libsndfile does not; it decides

    def _parse(self, raw: bytes) -> tuple[dict[str, Any] | None, str]:
        try:
            doc = jsontext.loads(raw, max_items=MAX_BODY_ITEMS)
        except ValueError as exc:
            raise Reply(
                error(400, f"the request body is not valid JSON: {exc}", "invalid_request_error")
            ) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
            raise Reply(error(400, "the request needs a JSON object with a model", "invalid_request_error",
                              None, "model"))  # fmt: skip
        return doc, doc["model"]

    async def _forward(
        self, request: web.Request, route: Route, family: Family, raw: bytes,
        doc: dict[str, Any] | None, form: Form | None, speech: _Speech | None,
        act: _Act | None, t0: float, bound: Bound,
    ) -> web.StreamResponse:  # fmt: skip
        if route.url is None:
            raise Reply(error(503, f"{route.name} is not serving right now", "service_unavailable",
                              None, retry_after=5))  # fmt: skip
        path = family.engine_path or request.path
        body: bytes | list[bytes | memoryview]
        if doc is not None:
            body, stream, asked = for_engine(raw, doc, route.served)
            headers = _JSON
        else:
            body, stream, asked = raw, False, True
            if form is not None:
                upstream = dict(route.upstream).get(family.name)
                rename = {"model": route.served} if form.fields["model"] != route.served else {}
                if rename or upstream is not None:
                    body = form.for_engine(rename, upstream.form if upstream else ())
                if upstream is not None:
                    path = upstream.path
                stream = family.streams and form.fields.get("stream", "") in _TRUE
            kind = request.headers.get("Content-Type", "")
            if "\r" in kind or "\n" in kind:
                raise Reply(error(400, "the Content-Type header is not valid",
                                  "invalid_request_error"))  # fmt: skip
            headers = f"Content-Type: {kind}\r\n"
        if route.key:
            headers += f"Authorization: Bearer {route.key}\r\n"
        try:
            conn, head = await self.pool.request(route.url, path, headers, body)
        except EngineFailed as exc:
            raise Reply(error(502, f"{route.name}: {exc}", "api_error",
                              None)) from None  # fmt: skip
        try:
            if stream and head.status == 200 and head.content_type.startswith("text/event-stream"):
                return await self._stream(request, conn, route.name, asked, t0, bound)
            try:
                data = await conn.done
            except EngineFailed as exc:
                raise Reply(error(502, f"{route.name}: {exc} before its answer ended",
                                  "api_error", None)) from None  # fmt: skip
            bound.count_usage(data)
            if speech is not None and speech.seconds is None and head.status == 200:
                speech.seconds = _usage_seconds(data)
            if act is not None and head.status == 200:
                try:
                    answer = vla.action(data)
                except vla.VlaError as exc:  # OpenVLA's server answers its errors with 200
                    raise Reply(error(502, f"{route.name}: {exc}", "api_error", None)) from None
                act.actions = answer.shape[0] if answer.ndim == 2 else 1
            if doc is not None and head.status == 200 and not stream:
                bound.ttft.observe(self.clock() - t0)
            if head.status >= 400 and not is_error_envelope(data):
                raise Reply(error(head.status, f"{route.name}'s engine answered HTTP "
                                  f"{head.status} to {request.path}: "
                                  f"{data[:200].decode(errors='replace').strip()!r}",
                                  "api_error" if head.status >= 500 else
                                  "invalid_request_error", None))  # fmt: skip
            return web.Response(
                body=data, status=head.status, content_type=head.content_type.split(";")[0]
            )
        finally:
            self.pool.release(conn)  # kept where its response ended cleanly, else dropped

    async def _stream(
        self, request: web.Request, conn: Connection, name: str, asked: bool, t0: float,
        bound: Bound,
    ) -> web.StreamResponse:  # fmt: skip
        """Relay a stream; the relay writes in the engine connection's read callback, while
        this task sends the headers (with the events read so far) and the last chunk (with
        the events of the read that ended the stream), and waits for the client when it
        falls behind."""
        resp = _EventStream(status=200, headers=_SSE_HEADERS)
        chunked = request.version >= (1, 1)
        if chunked:
            resp.enable_chunked_encoding()
        writer = await resp.prepare(request)
        transport = request.transport
        if writer is None or transport is None or transport.is_closing():
            raise _ClientGone(resp)

        relay = EventRelay(transport, chunked, name, asked, t0, self.clock, bound.ttft,
                           bound.itl, bound.count_usage, conn.pause)  # fmt: skip
        conn.attach(relay)  # what came with the engine's headers is held for this write:
        try:
            if relay.done is None:
                first = relay.take()
                if first:
                    await resp.write(first)  # the headers and the first events in one write
                else:
                    writer.send_headers()  # the client sees its 200 now, not at the first token
            while relay.done is None and not relay.gone:
                await relay.wake
                if relay.paused and relay.done is None and not relay.gone:
                    await writer.drain()  # the client fell behind: read on once it catches up
                    relay.paused = False
                    conn.resume()
                relay.rearm()
            if relay.gone:
                raise _ClientGone(resp)
            await resp.write_eof(relay.take())  # the last events and the last chunk in one write
        except ConnectionError:
            raise _ClientGone(resp) from None
        return resp


def _observation(raw: bytes) -> vla.Observation:
    """An ``/act`` body, checked as the engine would take it.

    Raises:
        Reply: a 400 naming what is wrong with it.
    """
    try:
        doc = jsontext.loads(raw, max_items=MAX_BODY_ITEMS)
    except ValueError as exc:
        raise Reply(error(400, f"the request body is not valid JSON: {exc}",
                          "invalid_request_error")) from None  # fmt: skip
    try:
        return vla.observation(doc)
    except vla.VlaError as exc:
        raise Reply(error(400, str(exc), "invalid_request_error", None, "image"
                          if "image" in str(exc) else None)) from None  # fmt: skip


def _check_unnorm(route: Route, key: str | None) -> None:
    """Raises Reply: a 400 where the checkpoint's datasets are known and ``key`` picks none."""
    keys = route.unnorm_keys
    if key is None and len(keys) > 1:
        raise Reply(error(400, f"unnorm_key is required: {route.name}'s checkpoint holds the "
                          f"action statistics of {len(keys)} datasets ({', '.join(keys[:8])}"
                          f"{', …' if len(keys) > 8 else ''}); add one as \"unnorm_key\"",
                          "invalid_request_error", None, "unnorm_key"))  # fmt: skip
    if key is not None and keys and key not in keys:
        raise Reply(error(400, f"unnorm_key {key!r} is not one of {route.name}'s datasets "
                          f"({', '.join(keys[:8])}{', …' if len(keys) > 8 else ''})",
                          "invalid_request_error", None, "unnorm_key"))  # fmt: skip


def _usage_seconds(data: bytes) -> float | None:
    """The audio seconds a transcription's answer reports (``usage.seconds``, or a
    verbose answer's ``duration``), where it does."""
    if not data.startswith(b"{") or len(data) > 4 * 2**20:
        return None
    try:
        doc = jsontext.loads(data, max_items=MAX_BODY_ITEMS)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    usage = doc.get("usage")
    value = usage.get("seconds") if isinstance(usage, dict) else doc.get("duration")
    if not isinstance(value, (int, float, str)) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if 0 < seconds < 1e7 else None


class _EventStream(web.StreamResponse):
    """A relayed event stream: its headers go out with its first events, in one write."""

    #: aiohttp (3.12 and later) writes a stream's headers at ``prepare()``, as a packet of
    #: their own; held back, they go with the first write (as aiohttp does for a
    #: ``Response``), and ``_stream`` sends them alone where no event came with the
    #: engine's headers. Older aiohttp, which has no such attribute, writes them at once.
    _send_headers_immediately = False


class _ClientGone(Exception):
    """The client went away mid-stream (the server then ends its request as it can)."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
