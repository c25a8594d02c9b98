"""``labctl sim serve``: the twin as a vLLM-compatible OpenAI server.

It starts the way vLLM does — load weights (at a configurable disk speed, shard by
shard, with vLLM's progress lines), profile memory, size the KV cache, capture
graphs — printing vLLM's log lines,
and takes its memory on the simulated GPU as its own process (or through a
worker that can be left orphaned). It then serves ``/v1/models``,
``/v1/completions``, ``/v1/chat/completions`` (streaming or not), ``/health``
and ``/metrics`` with vLLM's metric names. Output text is deterministic filler;
token counts follow the request: a prompt costs one token per word, and a chat
message four more for its template markers (start, role, newline, end).

A speech model (Whisper) serves ``/v1/audio/transcriptions`` and
``/v1/audio/translations`` instead (``labctl.sim.speech``) and refuses the text
paths as vLLM does ("The model does not support Chat Completions API"); any other
model refuses the audio paths.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import contextlib
from dataclasses import dataclass
import hmac
import json
import math
import os
import signal
import sys
import time
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from labctl.errors import EngineError, GpuError
from labctl.sim.engine import Twin
from labctl.sim.envelope import error_response
from labctl.sim.live import FILLER, LiveEngine, Stream
from labctl.sim.speech import SpeechApi
from labctl.units import GiB

#: The twin's checkpoint comes in shards of at most 5 GB (the Hugging Face hub's default), and
#: in at least eight, so that even a small model's slow load shows its progress as it goes.
SHARD_BYTES = 5 * 10**9
MIN_SHARDS = 8
#: vLLM's speech endpoints warm up at startup: the first librosa calls ("can take ~7s") and
#: the multimodal input processor ("~2.5s"), as its own docstrings put them.
AUDIO_WARMUP_S = 7.0
PROCESSOR_WARMUP_S = 2.5


class GpuLedger(Protocol):
    """Where the twin takes its memory: the simulated GPUs' ledger (``labctl.gpu.sim``).

    Passed in from above so that the twin does not depend on the GPU layer.
    """

    def free_bytes(self, index: int) -> tuple[int, int] | None: ...

    def allocate(self, index: int, nbytes: int, pid: int | None = None, name: str = "") -> None: ...

    def release(self, pid: int | None = None) -> None: ...

    def set_activity(self, index: int, busy: float, pid: int | None = None) -> None: ...

    def hold_in_worker(
        self, index: int, nbytes: int, name: str = "worker", seconds: float | None = None
    ) -> int: ...


@dataclass(frozen=True)
class Faults:
    """Failure modes for tests of everything that supervises an engine."""

    fail_startup_after: float | None = None
    hang_startup: bool = False
    crash_after_requests: int | None = None
    ignore_sigterm: bool = False
    orphan_worker: bool = False
    #: Every Nth streamed response ends halfway with an error event, as vLLM sends one.
    error_mid_stream_every: int | None = None
    #: Every Nth streamed response carries one event that is not valid JSON.
    malformed_sse_every: int | None = None
    #: Healthy, lists its model, but every completion fails (a broken CUDA context).
    fail_completions: bool = False


def _log(message: str, level: str = "INFO") -> None:
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(f"{level} {stamp} [labctl twin pid={os.getpid()}] {message}", file=sys.stderr, flush=True)


def _shard_line(done: int, shards: int, elapsed: float, total: float) -> None:
    """vLLM's progress line for its weights, as tqdm writes it: what the lab reads to show how
    much is loaded (``VllmAdapter.progress``)."""
    if done == 0:
        timing = "00:00<?, ?it/s"
    else:
        per = elapsed / done
        timing = f"{_clock(elapsed)}<{_clock(total - elapsed)}, {per:5.2f}s/it"
    print(f"Loading safetensors checkpoint shards: {100 * done // shards:3d}% Completed | "
          f"{done}/{shards} [{timing}]", file=sys.stderr, flush=True)  # fmt: skip


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(max(seconds, 0.0)), 60)
    return f"{minutes:02d}:{secs:02d}"


#: What every completion answers with ``--fail-completions``.
_BROKEN = "CUDA error: an illegal memory access was encountered (--fail-completions)"


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    return error_response(status, message, param)


class TwinServer:
    def __init__(self, twin: Twin, engine: LiveEngine, faults: Faults = Faults()) -> None:
        self.twin = twin
        self.faults = faults
        self.streams = 0
        self.engine = engine
        self.model = twin.model_name
        self.max_model_len = twin.fit.max_model_len
        self.created = int(time.time())
        self.speech = SpeechApi(engine, self.model, _BROKEN if faults.fail_completions else None)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 2**20, middlewares=[self._api_key])
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
        stream = await self.engine.submit(prompt_len, max_tokens, tokens)
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


# -- startup ---------------------------------------------------------------------------


async def start_engine(
    twin: Twin,
    machine: GpuLedger | None,
    gpu_index: int,
    time_scale: float,
    load_gbps: float,
    faults: Faults,
) -> int | None:
    """Go through vLLM's startup phases; returns the pid of an orphanable worker, if any.

    Raises:
        EngineError: the GPU lacks the memory, or a fault flag says fail (vLLM's words).
    """
    fit = twin.fit
    started = time.monotonic()

    async def phase(seconds: float) -> None:
        if faults.fail_startup_after is not None:
            left = faults.fail_startup_after - (time.monotonic() - started)
            if seconds * time_scale >= left:
                await asyncio.sleep(max(0.0, left))
                raise EngineError(
                    "RuntimeError: Engine core initialization failed. See root cause above. "
                    "Failed core proc(s): {'EngineCore_DP0': 1}"
                )
        await asyncio.sleep(seconds * time_scale)

    _log(f"Starting to load model {twin.config.model}...")
    if twin.speech:
        _log("Encoder-decoder models do not support chunked prefill nor prefix caching; "
             "disabling both.")  # fmt: skip
        _log("Encoder-decoder models do not support FULL_AND_PIECEWISE. Overriding "
             "cudagraph_mode to FULL_DECODE_ONLY.")  # fmt: skip
    if faults.hang_startup:
        _log("loading is stuck (--hang-startup)", "WARNING")
        await asyncio.Event().wait()
    budget = fit.budget_bytes
    worker = None
    if machine is not None:
        room = machine.free_bytes(gpu_index)
        if room is None:
            raise EngineError(f"RuntimeError: CUDA error: invalid device ordinal (GPU {gpu_index})")
        free, total = room
        if free < budget:
            raise EngineError(
                f"ValueError: Free memory on device cuda:{gpu_index} ({free / GiB:.2f}/"
                f"{total / GiB:.2f} GiB) on startup is less than desired GPU "
                f"memory utilization ({fit.gpu_memory_utilization}, {budget / GiB:.2f} GiB). "
                "Decrease GPU memory utilization or reduce GPU memory used by other processes."
            )
    load_s = fit.weights_bytes / (load_gbps * 1e9) if load_gbps > 0 else 0.0
    shards = max(math.ceil(fit.weights_bytes / SHARD_BYTES), MIN_SHARDS)
    _shard_line(0, shards, 0.0, load_s * time_scale)
    for done in range(1, shards + 1):
        await phase(load_s / shards)
        _shard_line(done, shards, load_s * time_scale * done / shards, load_s * time_scale)
    _log(f"Loading weights took {load_s * time_scale:.2f} seconds")
    if machine is not None:
        try:
            if faults.orphan_worker:
                worker = machine.hold_in_worker(gpu_index, fit.weights_bytes, name="twin-worker")
            else:
                machine.allocate(gpu_index, fit.weights_bytes, name="twin")
        except GpuError as exc:
            raise EngineError(f"torch.OutOfMemoryError: {exc}") from exc
    _log(
        f"Model loading took {fit.weights_bytes / GiB:.4f} GiB and {load_s * time_scale:.6f} seconds"
    )
    await phase(2.0)
    _log(f"Memory profiling takes {2.0 * time_scale:.2f} seconds")
    _log(f"Available KV cache memory: {fit.kv_cache_bytes / GiB:.2f} GiB")
    if machine is not None:
        rest = max(0, budget - fit.weights_bytes)
        try:
            if worker is not None:
                machine.allocate(gpu_index, rest, pid=worker, name="twin-worker")
            else:
                machine.allocate(gpu_index, rest, name="twin")
        except GpuError as exc:
            raise EngineError(f"torch.OutOfMemoryError: {exc}") from exc
    _log(f"GPU KV cache size: {fit.kv_cache_tokens:,} tokens")
    # An encoder-decoder model's line reserves cross-attention for a whole batch budget of
    # encoder tokens, not one clip's: vLLM's figure, not the plan's real capacity.
    logged = fit.encoder_decoder.vllm_logged_concurrency if fit.encoder_decoder else None
    _log(
        f"Maximum concurrency for {fit.max_model_len:,} tokens per request: "
        f"{fit.max_concurrency if logged is None else logged:.2f}x"
    )
    if fit.cuda_graph_bytes:
        await phase(5.0)
        _log(
            f"Graph capturing finished in {5.0 * time_scale:.0f} secs, took "
            f"{fit.cuda_graph_bytes / GiB:.2f} GiB"
        )
    _log(
        "init engine (profile, create kv cache, warmup model) took "
        f"{time.monotonic() - started:.2f} seconds"
    )
    if twin.speech:
        # The API server's speech endpoints warm librosa and the input processor up first.
        _log("Warming up audio preprocessing libraries...")
        await phase(AUDIO_WARMUP_S)
        _log(f"Audio preprocessing warmup completed in {AUDIO_WARMUP_S * time_scale:.2f}s")
        _log("Warming up multimodal input processor...")
        await phase(PROCESSOR_WARMUP_S)
        _log(f"Input processor warmup completed in {PROCESSOR_WARMUP_S * time_scale:.2f}s")
    return worker


async def serve(
    twin: Twin,
    host: str,
    port: int,
    time_scale: float = 1.0,
    load_gbps: float = 2.0,
    faults: Faults = Faults(),
    machine: GpuLedger | None = None,
    gpu_index: int = 0,
    on_listening: Callable[[str], None] = lambda url: None,
) -> None:
    """Start up, serve until SIGTERM or SIGINT, then shut down and release the memory."""
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
            _log("Shutting down during startup.")
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
                _log(
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
    server = TwinServer(twin, engine, faults)
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
    _log(f"Starting vLLM API server 0 on {url}")
    _log("Application startup complete.")
    on_listening(url)
    task = asyncio.create_task(engine.run())
    try:
        await stop.wait()
        _log("Shutting down FastAPI HTTP server.")
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
) -> None:
    asyncio.run(
        serve(twin, host, port, time_scale, load_gbps, faults, machine, gpu_index, on_listening)
    )
