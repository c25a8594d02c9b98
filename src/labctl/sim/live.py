"""The twin's engine in real time: the scheduler stepping on the event loop, vLLM's metrics.

Each step takes the time the perf model gives it, times ``time_scale`` (0: as
fast as the loop can go). Steps are laid end to end on a simulated timeline
that tracks the wall clock, so a slow event loop does not make the twin drift.
A text request's tokens reach its stream when the simulated API server has streamed
them (``sim/api_server.py``), as the offline run has it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from labctl.sim import perf as costs
from labctl.sim.api_server import ApiServer
from labctl.sim.engine import Twin
from labctl.sim.scheduler import Scheduler, SimRequest, block_keys

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
#: The twin's output text, one word per token, the same for every request.
FILLER = ["the", "lab", "runs", "on", "the", "card", "it", "owns", "and", "every", "token", "here", "is", "counted", "once", "so", "the", "numbers", "stay", "honest", "while", "the", "queue", "drains", "and", "the", "cache", "fills"]  # fmt: skip


def buckets_1_2_5(limit: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, … up to ``limit`` (vLLM's token-count buckets)."""
    out: list[float] = []
    scale = 1
    while True:
        for m in (1, 2, 5):
            if m * scale > limit:
                return out
            out.append(float(m * scale))
        scale *= 10


class TwinMetrics:
    """vLLM V1's Prometheus metrics, with its names, labels and buckets."""

    def __init__(self, model_name: str, max_model_len: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        names = ["model_name", "engine"]
        labels = {"model_name": model_name, "engine": "0"}
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=r).labels(**labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=r).labels(**labels)

        def hist(name: str, doc: str, buckets: tuple[float, ...] | list[float]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=r).labels(**labels)

        tokens = buckets_1_2_5(max_model_len)
        self.running = gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        )
        self.waiting = gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        )
        self.kv_usage = gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        self.preemptions = counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        )
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
        )
        self.prefix_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        self._success = Counter("vllm:request_success", "Count of successfully processed requests.",
                                [*names, "finished_reason"], registry=r)  # fmt: skip
        self._labels = labels
        self.ttft = hist(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self.itl = hist(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        )
        self.tpot = hist(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        self.e2e = hist(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_BUCKETS,
        )
        self.queue = hist(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_BUCKETS,
        )
        self.inference = hist(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_BUCKETS,
        )
        self.prefill = hist(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_BUCKETS,
        )
        self.decode = hist(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_BUCKETS,
        )
        self.req_prompt = hist(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", tokens
        )
        self.req_generation = hist(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", tokens
        )
        self.req_max_tokens = hist(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            tokens,
        )
        self.iteration = hist("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", ITERATION_BUCKETS)  # fmt: skip

    def success(self, reason: str) -> None:
        self._success.labels(**self._labels, finished_reason=reason).inc()


@dataclass(frozen=True)
class AudioInput:
    """What a speech request adds to an engine request: its clip's encoder positions, and
    how vLLM's metrics count it."""

    #: Encoder positions the clip takes (1,500 whatever its length).
    positions: int
    #: Counted with the decoder prompt as prompt tokens (vLLM: mel frames of the audio).
    mel_frames: int
    #: The request's ``max_tokens`` parameter (``vllm:request_params_max_tokens``).
    max_tokens: int
    #: Its last token is end-of-text: finished_reason "stop" rather than "length".
    stops: bool


@dataclass(eq=False)
class Stream:
    """One request's channel from the engine to its HTTP handler."""

    req: SimRequest
    arrival: float
    queue: asyncio.Queue[int | None]
    audio: AudioInput | None = None
    #: The API server process that took it in and streams its tokens.
    api: int = 0


class _ApiServerCpu(Collector):
    """``process_cpu_seconds_total`` of the API server's one process, as vLLM's page has it
    (prometheus_client's process collector): the simulated process's busy seconds by now,
    in the event loop's time."""

    def __init__(self, api: ApiServer[Any]) -> None:
        self.api = api

    def collect(self) -> Iterable[Metric]:
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:  # read off the loop: what it has had so far
            now = self.api.now
        yield CounterMetricFamily("process_cpu_seconds", "Total user and system CPU time "
                                  "spent in seconds.", value=self.api.busy_at(now))  # fmt: skip


class LiveEngine:
    """Runs a :class:`Twin`'s scheduler in real time on the running event loop."""

    def __init__(
        self,
        twin: Twin,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if time_scale < 0:
            raise ValueError(f"time_scale {time_scale} must be ≥ 0")
        self.twin = twin
        self.time_scale = time_scale
        self.clock = clock
        self.sched: Scheduler = twin.scheduler()
        self.metrics = TwinMetrics(twin.model_name, twin.fit.max_model_len)
        self.metrics.kv_usage.set(0.0)
        self._streams: dict[int, Stream] = {}
        self._wake = asyncio.Event()
        self._next_id = 0
        self.finished_total = 0
        #: Called after each finished request (the fault flags hook in here).
        self.on_finished: Callable[[int], None] = lambda n: None
        #: Called about once a second with the share of that time spent stepping (0–1),
        #: which drives the simulated GPU's utilization and power.
        self.on_busy: Callable[[float], None] = lambda busy: None
        self._busy_s = 0.0
        self._busy_since = clock()
        #: The simulated API server's processes (in the event loop's time), each shared by
        #: the requests it is taking in (each waiting on a future) and the steps' tokens it
        #: streams (each step's puts onto its streams), and when each next wakes.
        self._apis: list[ApiServer[asyncio.Future[None] | list[tuple[Stream, int | None]]]]
        self._apis = [ApiServer() for _ in range(twin.config.api_server_count)]
        self._api_timers: list[asyncio.TimerHandle | None] = [None] * len(self._apis)
        self._api_turn = 0
        if len(self._apis) == 1:  # as vLLM: one API server process exports its own
            self.metrics.registry.register(_ApiServerCpu(self._apis[0]))

    async def submit(
        self,
        prompt_len: int,
        max_tokens: int,
        prompt_tokens: Sequence[object] = (),
        audio: AudioInput | None = None,
        frontend_s: float | None = None,
        chat: bool = False,
    ) -> Stream:
        """Queue a request; tokens arrive on the returned stream's queue (``None`` ends it).

        ``audio`` makes it a speech chunk: its clip is encoded when it is admitted.
        ``frontend_s`` is the API server's share of the latency, before the engine sees it
        (default: a text request's, ``perf.FRONTEND_S`` after the API server has taken it in,
        sharing its process with the other requests in hand as the offline run has it; a
        transcription's first chunk pays its whole request's; later chunks none). ``chat``:
        a chat, whose template the API server renders.
        """
        arrival = self.clock()
        api = self._api_turn
        self._api_turn = (api + 1) % len(self._apis)
        if self.time_scale and frontend_s is None:
            cost = costs.intake_s(self.twin.arch.model_type, chat)
            await self._take_in(api, cost * self.time_scale)
            await asyncio.sleep(costs.FRONTEND_S * self.time_scale)
        elif self.time_scale and frontend_s:
            await asyncio.sleep(frontend_s * self.time_scale)
        self._next_id += 1
        keys = block_keys(prompt_tokens, self.sched.block_size) if self.sched.prefix_caching else ()
        req = SimRequest(self._next_id, prompt_len, max_tokens, arrival, prefix_keys=keys,
                         encoder_positions=audio.positions if audio else 0)  # fmt: skip
        stream = Stream(req, arrival, asyncio.Queue(), audio, api)
        self._streams[req.id] = stream
        self.metrics.req_max_tokens.observe(audio.max_tokens if audio else max_tokens)
        self.sched.add(req)
        self.metrics.waiting.set(len(self.sched.waiting))
        self._wake.set()
        return stream

    async def _take_in(self, api: int, cost: float) -> None:
        """Wait until API server ``api`` has spent ``cost`` on this request, shared with the
        others in hand."""
        loop = asyncio.get_running_loop()
        through: asyncio.Future[None] = loop.create_future()
        self._api_done(api, self._apis[api].add(loop.time(), through, cost))
        await through

    def _stream_out(self, puts: list[tuple[Stream, int | None]]) -> None:
        """A step's tokens (and ends) for text streams: they reach the streams when their
        API servers have streamed them."""
        per_token = costs.STREAM_TOKEN_S * self.time_scale
        if not per_token:
            for stream, value in puts:
                stream.queue.put_nowait(value)
            return
        parts: dict[int, list[tuple[Stream, int | None]]] = {}
        for put in puts:
            parts.setdefault(put[0].api, []).append(put)
        now = asyncio.get_running_loop().time()
        for api, part in parts.items():
            tokens = sum(1 for _, value in part if value is not None)
            self._api_done(api, self._apis[api].stream(now, part, per_token * tokens))

    def _api_done(
        self,
        api: int,
        done: list[tuple[float, asyncio.Future[None] | list[tuple[Stream, int | None]]]],
    ) -> None:
        """Release the requests API server ``api`` is through with and deliver the tokens
        it has streamed; wake when its next piece of work is done."""
        for _, key in done:
            if isinstance(key, asyncio.Future):
                if not key.done():  # not given up by its client meanwhile
                    key.set_result(None)
                continue
            for stream, value in key:
                stream.queue.put_nowait(value)
        timer = self._api_timers[api]
        if timer is not None:
            timer.cancel()
        nxt = self._apis[api].next_done()
        loop = asyncio.get_running_loop()
        self._api_timers[api] = None if nxt is None else loop.call_at(nxt, self._api_tick, api)

    def _api_tick(self, api: int) -> None:
        self._api_timers[api] = None
        self._api_done(api, self._apis[api].advance(asyncio.get_running_loop().time()))

    def cancel(self, stream: Stream, stopped: bool = False) -> None:
        """End a request early: its client went away, or (``stopped``) a stop string matched."""
        if stream.req.finished is None and self._streams.pop(stream.req.id, None) is not None:
            self.sched.abort(stream.req)
            if stopped and stream.req.first_token is not None:
                self._record_finished(stream, self.clock(), "stop")
            self._publish()

    def _publish(self) -> None:
        m, s = self.metrics, self.sched
        m.running.set(len(s.running))
        m.waiting.set(len(s.waiting))
        m.kv_usage.set(s.usage)

    async def run(self) -> None:
        """Step forever (cancel the task to stop)."""
        sim_now = self.clock()
        while True:
            if self.sched.idle:
                self._account(0.0)
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                except TimeoutError:
                    continue  # idle for a second: report it
                sim_now = self.clock()
            sim_now = max(sim_now, self.clock() - 0.05)  # never run far behind the wall clock
            before_hits, before_queries = self.sched.prefix_hits, self.sched.prefix_queries
            batch = self.sched.schedule(self.clock())
            if batch.preempted:
                self.metrics.preemptions.inc(len(batch.preempted))
            if not batch.items:
                await asyncio.sleep(0.001)
                continue
            step = self.twin.perf.step_seconds(batch.cost) * self.time_scale
            sim_now += step
            self._account(step)
            delay = sim_now - self.clock()
            await asyncio.sleep(max(0.0, delay))
            now = self.clock()
            new_prompt = 0
            for r, n in batch.items:
                if r.computed < r.prompt_len:
                    new_prompt += n
                    own = self._streams.get(r.id)
                    if r.computed == 0 and own is not None and own.audio is not None:
                        new_prompt += own.audio.mel_frames
            finished = self.sched.complete(batch, now)
            m = self.metrics
            m.iteration.observe(batch.cost.tokens)
            if new_prompt:
                m.prompt_tokens.inc(new_prompt)
            if self.sched.prefix_queries > before_queries:
                m.prefix_queries.inc(self.sched.prefix_queries - before_queries)
                m.prefix_hits.inc(self.sched.prefix_hits - before_hits)
            out = 0
            puts: list[tuple[Stream, int | None]] = []
            for req, _ in batch.items:
                if req.last_token != now:
                    continue
                out += 1
                stream = self._streams.get(req.id)
                if stream is None:
                    continue
                if req.generated == 1:
                    m.ttft.observe(now - stream.arrival)
                    if req.admitted is not None:
                        m.queue.observe(max(0.0, req.admitted - stream.arrival))
                elif req.itl:
                    m.itl.observe(req.itl[-1])
                if stream.audio is None:
                    puts.append((stream, req.generated))
                else:
                    stream.queue.put_nowait(req.generated)
            if out:
                m.generation_tokens.inc(out)
            for req in finished:
                stream = self._streams.pop(req.id, None)
                if stream is None:
                    continue
                ends = "stop" if stream.audio is not None and stream.audio.stops else "length"
                self._record_finished(stream, now, ends)
                if stream.audio is None:
                    puts.append((stream, None))  # after its last token
                else:
                    stream.queue.put_nowait(None)
            if puts:
                self._stream_out(puts)
            self._publish()

    def _account(self, busy: float) -> None:
        self._busy_s += busy
        now = self.clock()
        window = now - self._busy_since
        if window >= 1.0:
            self.on_busy(min(1.0, self._busy_s / window))
            self._busy_s, self._busy_since = 0.0, now

    def _record_finished(self, stream: Stream, now: float, reason: str) -> None:
        req, m = stream.req, self.metrics
        assert req.first_token is not None
        m.e2e.observe(now - stream.arrival)
        m.req_prompt.observe(req.prompt_len + (stream.audio.mel_frames if stream.audio else 0))
        m.req_generation.observe(req.generated)
        m.tpot.observe((now - req.first_token) / (req.generated - 1) if req.generated > 1 else 0.0)
        if req.admitted is not None:
            m.inference.observe(now - req.admitted)
            m.prefill.observe(req.first_token - req.admitted)
        m.decode.observe(now - req.first_token)
        m.success(reason)
        self.finished_total += 1
        self.on_finished(self.finished_total)
