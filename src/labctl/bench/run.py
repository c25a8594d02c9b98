"""One benchmark run: a seeded schedule of streamed requests, timed as ``vllm bench serve`` does.

Every request is timed from just before it is sent (setting up a new connection
included, as in vLLM's client): TTFT at the first event with non-empty
``choices``, one ITL sample per later such event,
E2EL at the last of them (the trailing usage event does not count). Output and
prompt token counts come from the server's ``usage``; without it, from the
server's ``/tokenize`` of the generated text, and only then from the number of
streamed chunks. With ``max_concurrency``, the time a request waited for a slot
is kept apart (``client_queue_time``) and never hidden in, or added to, its
latencies.

The client watches itself: how long after arriving it read each piece of data
(kernel receive timestamps) and how long each event-loop iteration was busy.
When either exceeds :data:`CLIENT_LAG_LIMIT_S` at p99, the run is marked
``client_limited``: its latencies say more about the client than the server.

The parts live in their own modules: the options in :mod:`labctl.bench.options`,
live counters in :mod:`labctl.bench.progress`, one request's stream in
:mod:`labctl.bench.stream` and the client's self-check in
:mod:`labctl.bench.selfcheck`; speech (``--backend openai-audio``) is a
:class:`Runner` of its own in :mod:`labctl.bench.speech`, and so are robots
(``--backend openvla``) in :mod:`labctl.bench.robots`. This module runs them
and re-exports the names callers import from it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
import datetime as dt
import json
import math
import random
import time
from typing import Any

from labctl.bench.audio import Clip, estimate_tokens
from labctl.bench.frames import Frame
from labctl.bench.http import Client, Connection, Endpoint, LagRecorder, RequestFailed, call_json
from labctl.bench.options import BACKENDS, DETAIL_FIELDS, BenchConfig
from labctl.bench.progress import INTERRUPTED, Progress
from labctl.bench.selfcheck import (
    CLIENT_LAG_LIMIT_S,
    TimedSelector,
    _ms,
    _p99_with_zeros,
    new_loop,
    raise_fd_limit,
)
from labctl.bench.stream import _clip, _message, _Result, _Stream, reason
from labctl.sim.report import Outcome, percentile, summarize
from labctl.sim.workload import Item, arrival_times, from_file, synthetic

#: Callers import these from here, including the ones now defined in the other parts.
__all__ = ["DETAIL_FIELDS", "WORDS", "BenchConfig", "Progress", "Runner", "_Result", "_Stream",
           "_p99_with_zeros", "make_runner", "new_loop", "reason", "run_sync"]  # fmt: skip

WORDS = ["time", "year", "people", "way", "day", "man", "thing", "woman", "life", "child", "world", "school", "state", "family", "student", "group", "country", "problem", "hand", "part", "place", "case", "week", "company", "system", "program", "question", "work", "government", "number", "night", "point", "home", "water", "room", "mother", "area", "money", "story", "fact", "month", "lot", "right", "study", "book", "eye", "job", "word", "business", "issue", "side", "kind", "head", "house", "service", "friend", "father", "power", "hour", "game", "line", "end", "member", "law", "car", "city", "community", "name", "president", "team", "minute", "idea", "kid", "body", "information", "back", "parent", "face", "others", "level", "office", "door", "health", "person", "art", "war", "history", "party", "result", "change", "morning", "reason", "research", "girl", "guy", "moment", "air", "teacher", "force", "education"]  # fmt: skip


class Runner:
    def __init__(
        self,
        config: BenchConfig,
        progress: Progress | None = None,
        tick: Callable[[Progress], None] | None = None,
    ) -> None:
        config.validate()
        self.tick = tick
        self.config = config
        self.endpoint, self.path = self.route()
        self.lag = LagRecorder()
        self.client = Client(self.endpoint, config.api_key, self.lag)
        self.progress = progress or Progress()
        self.warnings: list[str] = []
        self.stop = asyncio.Event()
        #: How request bodies are encoded.
        self.content_type = "application/json"
        self.tokens_per_word = 1.0
        self.overhead = 0.0
        self.can_tokenize = False

    # -- requests -------------------------------------------------------------------

    def route(self) -> tuple[Endpoint, str]:
        """The server, and the path requests are posted to."""
        return Endpoint.parse(self.config.base_url), BACKENDS[self.config.kind]

    def body(self, item: Item, prompt: str, ignore_eos: bool) -> bytes:
        doc: dict[str, Any] = {"model": self.config.model, "stream": True,
                               "stream_options": {"include_usage": True}}  # fmt: skip
        if self.config.endpoint == "chat":
            doc["messages"] = [{"role": "user", "content": prompt}]
            doc["max_completion_tokens"] = item.output_len
        else:
            doc["prompt"] = prompt
            doc["max_tokens"] = item.output_len
        if ignore_eos:
            doc["ignore_eos"] = True
        return json.dumps(doc).encode()

    async def one(self, body: bytes, item: Item, start: float, queue_time: float) -> _Result:
        """Send one request and time it; failures come back as failed outcomes with the reason."""
        stream = _Stream(self.lag)
        st = time.perf_counter()
        conn: Connection | None = None
        error: str | None = None
        try:
            conn = await self.client.request("POST", self.path, body, stream, self.content_type)
            async with asyncio.timeout(self.config.timeout):
                status, raw, error = await stream.future
            if error is None:
                ended = conn.parser.ended if conn.parser is not None else time.perf_counter()
                error = self.check(stream, status, raw, ended)
        except RequestFailed as exc:
            error = str(exc)
        except TimeoutError:
            error = f"no complete answer in {self.config.timeout:g} s (--timeout)"
        except asyncio.CancelledError:
            error = INTERRUPTED
        finally:
            if conn is not None:
                if error is None:
                    self.client.release(conn)
                else:
                    self.client.discard(conn)
        if error is None and stream.error:
            error = stream.error
        if error is not None:
            return _Result(
                Outcome(item.prompt_len, 0, None, None, (), False, start, queue_time, error),
                "", False, 0, item.prompt_len,
            )  # fmt: skip
        assert stream.first is not None
        usage = stream.usage or {}
        out_tokens = usage.get("completion_tokens")
        prompt_tokens = usage.get("prompt_tokens")
        has_usage = isinstance(out_tokens, int)
        text = "".join(stream.texts)
        if not isinstance(out_tokens, int):  # counted again by the server's tokenizer, if any
            out_tokens = estimate_tokens(text) if stream.plain else stream.chunks
        outcome = Outcome(
            prompt_tokens if isinstance(prompt_tokens, int) else item.prompt_len,
            out_tokens, stream.first - st, stream.last - st, stream.itl, True, start, queue_time,
        )  # fmt: skip
        return _Result(outcome, text, has_usage, stream.chunks, item.prompt_len, not stream.plain)

    def check(self, stream: _Stream, status: int, raw: bytes, ended: float) -> str | None:
        """Why a response that arrived in full (read to its end at ``ended``) failed, or None."""
        if status != 200:
            try:
                return f"HTTP {status}: {_message(json.loads(raw))}"
            except ValueError:
                return f"HTTP {status}: {_clip(raw)}"
        if stream.error:
            return stream.error
        if stream.first is None:
            return "the stream ended without any output"
        if not stream.done:
            return "the stream ended without data: [DONE]"
        return None

    # -- before the run ---------------------------------------------------------------

    async def preflight(self) -> None:
        """Check the model is served and learn how the server counts prompt tokens."""
        try:
            status, doc = await call_json(self.client, "GET", "/v1/models", limit_s=10)
        except RequestFailed as exc:
            self.warnings.append(f"{self.endpoint}/v1/models: {exc}")
            return
        if status == 200 and isinstance(doc, dict) and isinstance(doc.get("data"), list):
            ids = [m.get("id") for m in doc["data"] if isinstance(m, dict)]
            if self.config.model not in ids:
                served = ", ".join(str(i) for i in ids) or "nothing"
                self.warnings.append(
                    f"model {self.config.model!r} is not served at {self.endpoint} "
                    f"(it serves: {served}); pass one of those with --model"
                )
                return
        elif status in (401, 403):
            self.warnings.append(f"{self.endpoint}/v1/models: HTTP {status}: check --api-key")
        try:
            status, doc = await call_json(
                self.client, "POST", "/tokenize", {"model": self.config.model, "prompt": "a b"}
            )
            self.can_tokenize = status == 200 and isinstance(doc, dict) and "tokens" in doc
        except RequestFailed:
            self.can_tokenize = False
        if self.config.dataset is None:
            await self.calibrate()

    async def calibrate(self) -> None:
        """Two one-token requests with 16 and 48 words: tokens per word and template overhead."""
        counts = []
        for words in (16, 48):
            item = Item(words, 1)
            body = json.loads(self.body(item, " ".join(WORDS[:words]), False))
            body.pop("stream_options")
            body["stream"] = False
            try:
                status, doc = await call_json(self.client, "POST", self.path, body)
            except RequestFailed:
                return
            usage = doc.get("usage") if isinstance(doc, dict) else None
            if status != 200 or not isinstance(usage, dict) or "prompt_tokens" not in usage:
                if status == 200:
                    self.warnings.append(
                        "the server reports no usage: prompt lengths are not verified"
                    )
                return
            counts.append(int(usage["prompt_tokens"]))
        slope = (counts[1] - counts[0]) / 32
        if slope > 0:
            self.tokens_per_word = slope
            self.overhead = counts[0] - 16 * slope

    def prompt(self, rng: random.Random, tokens: int) -> str:
        words = max(1, round((tokens - self.overhead) / self.tokens_per_word))
        return " ".join(rng.choices(WORDS, k=words))

    # -- the run ----------------------------------------------------------------------

    def items(self) -> tuple[list[Item], list[str], bool]:
        c = self.config
        if c.dataset is not None:
            items = from_file(c.dataset, c.num_prompts, None, c.seed)
            return items, [i.prompt or "" for i in items], False
        items = synthetic(c.num_prompts, c.input_len, c.output_len, c.range_ratio, c.seed)
        rng = random.Random(c.seed + 7)
        return items, [self.prompt(rng, i.prompt_len) for i in items], True

    def workload(self) -> tuple[list[Item], list[bytes]]:
        """The requests of the run, in order, and their bodies, all built before it starts."""
        items, prompts, ignore_eos = self.items()
        return items, [self.body(it, pr, ignore_eos) for it, pr in zip(items, prompts, strict=True)]

    async def warm(self, items: list[Item], bodies: Sequence[bytes]) -> None:
        n = self.config.warmup
        if not n:
            return
        self.progress.phase = "warmup"
        width = min(n, self.config.max_concurrency or n)
        sem = asyncio.Semaphore(width)

        async def go(i: int) -> None:
            async with sem:
                k = i % len(items)
                await self.one(bodies[k], items[k], 0.0, 0.0)

        await asyncio.gather(*(go(i) for i in range(n)))

    async def run(self, selector: TimedSelector | None = None) -> dict[str, Any]:
        try:
            await self.preflight()
            items, bodies = self.workload()
            await self.warm(items, bodies)
            return await self._measure(items, bodies, selector)
        finally:
            self.client.close()

    async def _measure(
        self,
        items: list[Item],
        bodies: Sequence[bytes],
        selector: TimedSelector | None,
    ) -> dict[str, Any]:
        c = self.config
        p = self.progress
        p.total, p.phase, p.started = len(items), "running", time.perf_counter()
        raise_fd_limit(c.max_concurrency or len(items), self.warnings)
        schedule = arrival_times(len(items), c.request_rate, c.burstiness, c.seed)
        self.lag.samples.clear()
        self.lag.coalesced.clear()
        if selector is not None:
            selector.busy.clear()
        sem = asyncio.Semaphore(c.max_concurrency) if c.max_concurrency else None
        results: list[_Result | None] = [None] * len(items)
        slips: list[float] = []
        loop = asyncio.get_running_loop()

        async def request(i: int) -> None:
            queue_time = 0.0
            if sem is not None:
                t = time.perf_counter()
                await sem.acquire()
                queue_time = time.perf_counter() - t
            try:
                if self.stop.is_set():
                    return
                p.sent += 1
                r = await self.one(bodies[i], items[i], time.perf_counter() - t0, queue_time)
                results[i] = r
                if r.outcome.success:
                    p.completed += 1
                    if r.outcome.ttft is not None:
                        p.ttfts.append(r.outcome.ttft)
                elif r.outcome.error == INTERRUPTED:
                    p.cut += 1
                else:
                    p.failed += 1
                p.finished_at.append(time.perf_counter())
            finally:
                if sem is not None:
                    sem.release()

        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()
        stopper = asyncio.create_task(self.stop.wait())
        ticker = asyncio.create_task(self._ticker()) if self.tick else None
        for i, at in enumerate(schedule):
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.wait([stopper], timeout=delay)
            if self.stop.is_set():
                break
            slips.append(max(0.0, time.perf_counter() - t0 - at))
            tasks.append(loop.create_task(request(i)))
        if tasks:
            waiter: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*tasks))
            both: list[asyncio.Future[Any]] = [waiter, stopper]
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        stopper.cancel()
        duration = time.perf_counter() - t0
        if ticker is not None:
            ticker.cancel()
        done = [r for r in results if r is not None]
        await self._count_without_usage(done)
        return self.report(done, duration, slips, selector)

    async def _ticker(self) -> None:
        assert self.tick is not None
        while True:
            self.tick(self.progress)
            await asyncio.sleep(0.5)

    async def _count_without_usage(self, done: list[_Result]) -> None:
        """Requests that got no usage: count their text with the server's tokenizer if it has one."""
        missing = [r for r in done if r.outcome.success and not r.usage_tokens]
        if not missing:
            return
        if not self.can_tokenize:
            streamed = sum(1 for r in missing if r.streamed)
            if streamed:
                self.warnings.append(
                    f"{streamed} responses carried no usage and the server has no /tokenize: "
                    "their output tokens are counted as streamed chunks"
                )
            if len(missing) > streamed:
                self.warnings.append(
                    f"{len(missing) - streamed} answers carried no usage and the server has no "
                    "/tokenize: their output tokens are estimated from their text (1.3 per word)"
                )
            return
        for r in missing:
            try:
                status, doc = await call_json(
                    self.client, "POST", "/tokenize",
                    {"model": self.config.model, "prompt": r.text, "add_special_tokens": False},
                )  # fmt: skip
            except RequestFailed:
                continue
            if status == 200 and isinstance(doc, dict) and isinstance(doc.get("count"), int):
                o = r.outcome
                r.outcome = Outcome(o.prompt_len, doc["count"], o.ttft, o.e2el, o.itl, True,
                                    o.start, o.queue_time)  # fmt: skip

    def report(
        self,
        done: list[_Result],
        duration: float,
        slips: list[float],
        selector: TimedSelector | None,
    ) -> dict[str, Any]:
        c = self.config
        cut = sum(1 for r in done if r.outcome.error == INTERRUPTED)
        done = [r for r in done if r.outcome.error != INTERRUPTED]  # cut short, not failed
        outcomes = [r.outcome for r in done]
        doc: dict[str, Any] = {
            "date": dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
            "endpoint_type": c.kind,
            "backend": c.kind,
            "label": None,
            "model_id": c.model,
            "tokenizer_id": c.model,
            "num_prompts": c.num_prompts,
            "request_rate": c.request_rate if math.isfinite(c.request_rate) else "inf",
            "burstiness": c.burstiness,
            "max_concurrency": c.max_concurrency,
        }
        queued = c.max_concurrency is not None
        doc |= summarize(outcomes, max(duration, 1e-9), c.percentiles, c.goodput,
                         client_queue=queued, queue_inclusive=queued and math.isfinite(c.request_rate))  # fmt: skip
        doc["rtfx"] = 0.0
        chunks = sum(r.chunks for r in done if r.outcome.success)
        # Judged only where responses streamed: without data there is no timing to distort.
        lag = self.lag.samples if chunks else []
        busy = selector.busy if selector is not None and chunks else []
        busy_p99 = percentile(busy, 99) if busy else None
        error_p99: float | None
        if lag:  # kernel arrival times: only events that shared a read can be off
            error_p99 = _p99_with_zeros(self.lag.coalesced, chunks)
        else:  # read times: off by up to a loop iteration
            error_p99 = busy_p99
        limited = error_p99 is not None and error_p99 > CLIENT_LAG_LIMIT_S
        reasons = Counter(reason(r.outcome.error) for r in done if r.outcome.error)
        prompt_err = [
            abs(r.outcome.prompt_len - r.requested) / r.requested
            for r in done
            if r.outcome.success and r.usage_tokens and r.requested > 0
        ]
        doc |= {
            "url": str(self.endpoint),
            "endpoint": self.path,
            "interrupted": self.stop.is_set(),
            "not_sent": c.num_prompts - len(done) - cut,
            "cut": cut,
            "total_chunks": chunks,
            "chunk_throughput": chunks / duration if duration > 0 else 0.0,
            "errors_by_reason": dict(reasons.most_common()),
            "client_limited": limited,
            "client_check": {
                "limit_ms": CLIENT_LAG_LIMIT_S * 1000,
                "timestamps": "kernel" if lag else "read",
                "timestamp_error_p99_ms": _ms(error_p99),
                "read_lag_p99_ms": _ms(percentile(lag, 99) if lag else None),
                "coalesced_events": len(self.lag.coalesced),
                "event_loop_busy_p99_ms": _ms(busy_p99),
                "send_slip_p99_ms": _ms(percentile(slips, 99) if slips else 0.0),
            },
            "prompt_len_error_mean": sum(prompt_err) / len(prompt_err) if prompt_err else None,
            "warnings": list(self.warnings),
        }
        if limited:
            assert error_p99 is not None
            doc["warnings"].append(
                f"client_limited: the client's timestamps may be up to {error_p99 * 1000:.2f} ms "
                "late (p99; limit 1 ms): latencies include the client's own delay. Lower the "
                "load per labctl bench process."
            )
        if c.goodput:
            doc["goodput_slos_ms"] = dict(c.goodput)
        doc |= {
            "input_lens": [o.prompt_len for o in outcomes],
            "output_lens": [o.output_len for o in outcomes],
            "ttfts": [o.ttft or 0.0 for o in outcomes],
            "itls": [list(o.itl) for o in outcomes],
            "latencies": [o.e2el or 0.0 for o in outcomes],
            "start_times": [o.start for o in outcomes],
            "queue_times": [o.queue_time for o in outcomes],
            "generated_texts": [r.text for r in done],
            "errors": [o.error or "" for o in outcomes],
        }
        return doc


def make_runner(
    config: BenchConfig,
    tick: Callable[[Progress], None] | None = None,
    clips: Sequence[Clip] | None = None,
    frames: Sequence[Frame] | None = None,
) -> Runner:
    """The runner for the config's backend; speech reads (or is given) its clips first, and
    robots their camera frames.

    Raises:
        UsageError: a bad option, an audio file that is not audio, or an image that is not one.
    """
    if config.vla:
        from labctl.bench.robots import RobotRunner  # it builds on this module

        return RobotRunner(config, frames, tick=tick)
    if config.audio:
        from labctl.bench.speech import AudioRunner  # it builds on this module

        return AudioRunner(config, clips, tick=tick)
    return Runner(config, tick=tick)


def run_sync(
    config: BenchConfig,
    tick: Callable[[Progress], None] | None = None,
    on_start: Callable[[Runner, asyncio.AbstractEventLoop], None] | None = None,
) -> dict[str, Any]:
    """Run on a fresh event loop whose iterations are timed for the self-check."""
    loop, selector = new_loop()
    try:
        runner = make_runner(config, tick)
        if on_start is not None:
            on_start(runner, loop)
        return loop.run_until_complete(runner.run(selector))
    finally:
        loop.close()
