"""``labctl sim serve``: the twin as a vLLM-compatible OpenAI server.

It starts the way vLLM does (``labctl.sim.startup``: load weights, profile memory, size
the KV cache, capture graphs, with vLLM's log lines) and takes its memory on the simulated
GPU as its own process (or through a worker that can be left orphaned). It then serves ``/v1/models``,
``/v1/completions``, ``/v1/chat/completions`` (streaming or not), ``/health``
and ``/metrics`` with vLLM's metric names. Output text is deterministic filler;
token counts follow the request: a prompt costs one token per word, and a chat
message four more for its template markers (start, role, newline, end).

A speech model (Whisper) serves ``/v1/audio/transcriptions`` and
``/v1/audio/translations`` instead (``labctl.sim.speech``) and refuses the text
paths as vLLM does ("The model does not support Chat Completions API"); any other
model refuses the audio paths.

With ``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1`` it sleeps and wakes as vLLM
does (``labctl.sim.sleep``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import contextlib
import hmac
import json
import os
import signal
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from labctl.errors import EngineError, GpuError
from labctl.sim.engine import Twin
from labctl.sim.envelope import error_response
from labctl.sim.live import FILLER, LiveEngine, Stream
from labctl.sim.sleep import SleepMode, dev_mode
from labctl.sim.speech import SpeechApi
from labctl.sim.startup import NO_FAULTS, Faults, GpuLedger, log, start_engine

__all__ = ["Faults", "GpuLedger", "TwinServer", "run", "serve"]

#: What every completion answers with ``--fail-completions``.
_BROKEN = "CUDA error: an illegal memory access was encountered (--fail-completions)"


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    return error_response(status, message, param)


class TwinServer:
    def __init__(
        self, twin: Twin, engine: LiveEngine, faults: Faults = NO_FAULTS,
        sleep: SleepMode | None = None,
    ) -> None:  # fmt: skip
        self.twin = twin
        #: Its sleep mode; its endpoints are served in vLLM's development mode only.
        self.sleep = sleep if sleep is not None and dev_mode() else None
        self.faults = faults
        self.streams = 0
        self.engine = engine
        self.model = twin.model_name
        self.max_model_len = twin.fit.max_model_len
        self.created = int(time.time())
        self.speech = SpeechApi(engine, self.model, _BROKEN if faults.fail_completions else None)

    def app(self) -> web.Application:
        guards = [self._api_key] + ([self.sleep.guard] if self.sleep else [])
        app = web.Application(client_max_size=32 * 2**20, middlewares=guards)
        if self.sleep is not None:
            self.sleep.add_routes(app)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/audio/transcriptions", self.speech.transcriptions)
        app.router.add_post("/v1/audio/translations", self.speech.translations)
        return app

    @web.middleware
    async def _api_key(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """As vLLM with ``VLLM_API_KEY`` (or ``--api-key``): ``/v1`` takes the key as a bearer
        token; ``/health`` and ``/metrics`` stay open."""
        key = os.environ.get("VLLM_API_KEY")
        if key and request.path.startswith("/v1"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(
                given.encode("utf-8", "surrogateescape"), f"Bearer {key}".encode()
            ):
                return web.json_response({"error": "Unauthorized"}, status=401)
        result: web.StreamResponse = await handler(request)
        return result

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.engine.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "vllm",
                        "root": self.twin.config.model,
                        "parent": None,
                        "max_model_len": self.max_model_len,
                    }
                ],
            }
        )

    async def _body(self, request: web.Request, api: str) -> dict[str, Any] | web.Response:
        if self.twin.speech:
            return _error(400, f"The model does not support {api} API")
        if self.faults.fail_completions:
            return _error(500, _BROKEN)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object")
        if body.get("model") not in (None, self.model):
            return _error(404, f"The model `{body.get('model')}` does not exist.", "model")
        if body.get("n", 1) != 1:
            return _error(400, "n must be 1 (the twin generates one choice per request)", "n")
        return body

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, "Completions")
        if isinstance(body, web.Response):
            return body
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        tokens: list[object]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            tokens = list(prompt)
        elif isinstance(prompt, str):
            tokens = list(prompt.split()) or [""]
        else:
            return _error(
                400, "prompt must be a string, one string in a list, or token ids", "prompt"
            )
        return await self._generate(request, body, tokens, body.get("max_tokens", 16), chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, "Chat Completions")
        if isinstance(body, web.Response):
            return body
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages must be a non-empty list", "messages")
        tokens: list[object] = ["<bos>"]
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):  # content parts: count the text ones
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                return _error(400, "each message needs a role and text content", "messages")
            role = str(m.get("role", "user"))
            tokens += ["<start>", role, "\n", *content.split(), "<end>"]
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        return await self._generate(request, body, tokens, max_tokens, chat=True)

    async def _generate(
        self,
        request: web.Request,
        body: dict[str, Any],
        tokens: list[object],
        max_tokens: Any,
        chat: bool,
    ) -> web.StreamResponse:
        prompt_len = len(tokens)
        if max_tokens is None:
            max_tokens = self.max_model_len - prompt_len
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return _error(
                400, f"max_tokens must be a positive integer, not {max_tokens!r}", "max_tokens"
            )
        if prompt_len + max_tokens > self.max_model_len:
            return _error(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {prompt_len + max_tokens} tokens ({prompt_len} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or "
                "completion.",
            )
        stop = body.get("stop") or []
        stops = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str) and s]
        stream_opts = body.get("stream_options") or {}
        include_usage = (
            bool(stream_opts.get("include_usage")) if isinstance(stream_opts, dict) else False
        )
        rid = ("chatcmpl-" if chat else "cmpl-") + os.urandom(12).hex()
        created = int(time.time())
        stream = await self.engine.submit(prompt_len, max_tokens, tokens, chat=chat)
        if body.get("stream"):
            return await self._stream(request, stream, rid, created, chat, stops, include_usage)
        text, finish = "", "length"
        try:
            while (n := await stream.queue.get()) is not None:
                text += (" " if n > 1 else "") + FILLER[(n - 1) % len(FILLER)]
                if stops and (cut := _stop_at(text, stops)) is not None:
                    text, finish = text[:cut], "stop"
                    self.engine.cancel(stream, stopped=True)
                    break
        except asyncio.CancelledError:
            self.engine.cancel(stream)
            raise
        generated = stream.req.generated
        usage = {"prompt_tokens": prompt_len, "completion_tokens": generated,
                 "total_tokens": prompt_len + generated}  # fmt: skip
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return web.json_response(
            {"id": rid, "object": "chat.completion" if chat else "text_completion",
             "created": created, "model": self.model, "choices": [choice], "usage": usage}
        )  # fmt: skip

    async def _stream(
        self,
        request: web.Request,
        stream: Stream,
        rid: str,
        created: int,
        chat: bool,
        stops: list[str],
        include_usage: bool,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = f'{{"id":"{rid}","object":"{obj}","created":{created},"model":{json.dumps(self.model)},"choices":['
        tail = ',"usage":null}' if include_usage else "}"

        def chunk(piece: str, finish: str | None, first: bool = False) -> bytes:
            fin = "null" if finish is None else f'"{finish}"'
            if chat:
                delta = {"content": piece} if not first else {"role": "assistant", "content": piece}
                choice = f'{{"index":0,"delta":{json.dumps(delta)},"logprobs":null,"finish_reason":{fin}}}'
            else:
                choice = f'{{"index":0,"text":{json.dumps(piece)},"logprobs":null,"finish_reason":{fin}}}'
            return f"data: {head}{choice}]{tail}\n\n".encode()

        text, finish = "", "length"
        self.streams += 1
        fail_at = malformed_at = -1
        every = self.faults.error_mid_stream_every
        if every and self.streams % every == 0:
            fail_at = max(1, stream.req.max_tokens // 2)
        every = self.faults.malformed_sse_every
        if every and self.streams % every == 0:
            malformed_at = max(1, stream.req.max_tokens // 2)
        try:
            if chat:
                await resp.write(chunk("", None, first=True))
            while (n := await stream.queue.get()) is not None:
                if n == fail_at:
                    self.engine.cancel(stream)
                    error = {"error": {"message": "EngineCore encountered an issue "
                             "(--error-mid-stream-every)", "type": "InternalServerError",
                             "param": None, "code": 500}}  # fmt: skip
                    await resp.write(f"data: {json.dumps(error)}\n\n".encode())
                    await resp.write(b"data: [DONE]\n\n")
                    return resp
                if n == malformed_at:
                    await resp.write(f'data: {head}{{"index":0,"text":"\n\n'.encode())
                piece = (" " if n > 1 else "") + FILLER[(n - 1) % len(FILLER)]
                text += piece
                if stops and (cut := _stop_at(text, stops)) is not None:
                    keep = len(piece) - (len(text) - cut)
                    piece, finish = piece[: max(0, keep)], "stop"
                    self.engine.cancel(stream, stopped=True)
                    if piece:
                        await resp.write(chunk(piece, None))
                    break
                await resp.write(chunk(piece, None))
            await resp.write(chunk("", finish))
            if include_usage:
                g = stream.req.generated
                usage = {"prompt_tokens": stream.req.prompt_len, "completion_tokens": g,
                         "total_tokens": stream.req.prompt_len + g}  # fmt: skip
                await resp.write(f'data: {head}],"usage":{json.dumps(usage)}}}\n\n'.encode())
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.engine.cancel(stream)  # the client went away: stop generating for it
            raise
        return resp


def _stop_at(text: str, stops: list[str]) -> int | None:
    hits = [i for s in stops if (i := text.find(s)) >= 0]
    return min(hits) if hits else None


async def serve(
    twin: Twin,
    host: str,
    port: int,
    time_scale: float = 1.0,
    load_gbps: float = 2.0,
    faults: Faults = NO_FAULTS,
    machine: GpuLedger | None = None,
    gpu_index: int = 0,
    on_listening: Callable[[str], None] = lambda url: None,
    sleep_mode: bool = False,
) -> None:
    """Start up, serve until SIGTERM or SIGINT, then shut down and release the memory.

    ``sleep_mode``: vLLM's ``--enable-sleep-mode`` (``labctl.sim.sleep``).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if faults.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    starting = asyncio.create_task(
        start_engine(twin, machine, gpu_index, time_scale, load_gbps, faults)
    )
    stopped = asyncio.create_task(stop.wait())
    try:
        # as vLLM does, a SIGTERM during startup ends it there (not after the weights load)
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            log("Shutting down during startup.")
            if machine is not None:
                machine.release()
            return
        stopped.cancel()
        worker = starting.result()
    except BaseException:
        stopped.cancel()
        if machine is not None:
            machine.release()
        raise
    engine = LiveEngine(twin, time_scale)
    if faults.crash_after_requests is not None:
        limit = faults.crash_after_requests

        def crash(n: int) -> None:
            if n >= limit:
                log(
                    f"EngineDeadError: EngineCore encountered an issue (--crash-after-requests {limit})",
                    "ERROR",
                )
                os._exit(70)

        engine.on_finished = crash
    if machine is not None:
        ledger = machine

        def busy(share: float) -> None:
            with contextlib.suppress(GpuError):
                ledger.set_activity(gpu_index, share, pid=worker)

        engine.on_busy = busy
    sleep = SleepMode(twin, engine, enabled=sleep_mode, faults=faults, machine=machine,
                      gpu_index=gpu_index, holders=(worker, worker), time_scale=time_scale,
                      load_gbps=load_gbps)  # fmt: skip
    server = TwinServer(twin, engine, faults, sleep)
    runner = web.AppRunner(
        server.app(), access_log=None, handle_signals=False, handler_cancellation=True
    )  # a client that goes away: as vLLM, abort
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)  # a burst of connections, as vLLM takes
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if machine is not None:
            machine.release()
        raise EngineError(
            f"OSError: [Errno {exc.errno}] could not bind {host}:{port}: {exc.strerror}"
        ) from exc
    addresses = runner.addresses
    bound = addresses[0][1] if addresses else port
    url = f"http://{host}:{bound}"
    log(f"Starting vLLM API server 0 on {url}")
    log("Application startup complete.")
    on_listening(url)
    task = asyncio.create_task(engine.run())
    try:
        await stop.wait()
        log("Shutting down FastAPI HTTP server.")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()
        if machine is not None:
            machine.release()


def run(
    twin: Twin,
    host: str,
    port: int,
    time_scale: float,
    load_gbps: float,
    faults: Faults,
    machine: GpuLedger | None,
    gpu_index: int,
    on_listening: Callable[[str], None],
    sleep_mode: bool = False,
) -> None:
    asyncio.run(serve(twin, host, port, time_scale, load_gbps, faults, machine, gpu_index,
                      on_listening, sleep_mode))  # fmt: skip
