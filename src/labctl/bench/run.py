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
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
import contextlib
from dataclasses import dataclass, field
import datetime as dt
import json
import math
from pathlib import Path
import random
import selectors
import time
from typing import Any

from labctl.bench.http import (
    Client,
    Connection,
    Endpoint,
    LagRecorder,
    RequestFailed,
    call_json,
)
from labctl.errors import UsageError
from labctl.sim.report import Outcome, percentile, summarize
from labctl.sim.workload import Item, arrival_times, from_file, synthetic

CLIENT_LAG_LIMIT_S = 0.001
MALFORMED = "malformed SSE from the server"
MID_STREAM = "server error mid-stream"
#: Per-request arrays (``vllm bench serve --save-detailed``); kept only when asked for.
DETAIL_FIELDS = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times",
                 "queue_times", "generated_texts", "errors")  # fmt: skip
WORDS = ["time", "year", "people", "way", "day", "man", "thing", "woman", "life", "child", "world", "school", "state", "family", "student", "group", "country", "problem", "hand", "part", "place", "case", "week", "company", "system", "program", "question", "work", "government", "number", "night", "point", "home", "water", "room", "mother", "area", "money", "story", "fact", "month", "lot", "right", "study", "book", "eye", "job", "word", "business", "issue", "side", "kind", "head", "house", "service", "friend", "father", "power", "hour", "game", "line", "end", "member", "law", "car", "city", "community", "name", "president", "team", "minute", "idea", "kid", "body", "information", "back", "parent", "face", "others", "level", "office", "door", "health", "person", "art", "war", "history", "party", "result", "change", "morning", "reason", "research", "girl", "guy", "moment", "air", "teacher", "force", "education"]  # fmt: skip


@dataclass(frozen=True)
class BenchConfig:
    base_url: str
    model: str
    num_prompts: int = 1000
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    input_len: int = 1024
    output_len: int = 128
    range_ratio: float = 0.0
    dataset: Path | None = None
    endpoint: str = "completions"  # or "chat"
    goodput: dict[str, float] | None = None
    warmup: int = 0
    api_key: str | None = None
    seed: int = 0
    timeout: float = 600.0
    percentiles: Sequence[float] = (99,)

    def validate(self) -> None:
        if self.num_prompts < 1:
            raise UsageError(f"--num-prompts {self.num_prompts} must be at least 1")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise UsageError(f"--max-concurrency {self.max_concurrency} must be at least 1")
        if not self.request_rate > 0:
            raise UsageError(f"--request-rate {self.request_rate} must be positive, or inf")
        if self.endpoint not in ("chat", "completions"):
            raise UsageError(f"--endpoint {self.endpoint!r}: use chat or completions")
        if self.warmup < 0:
            raise UsageError(f"--warmup {self.warmup} must be 0 or more")
        if not self.timeout > 0:
            raise UsageError(f"--timeout {self.timeout} must be positive (seconds)")
        try:
            Endpoint.parse(self.base_url)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc


class TimedSelector(selectors.DefaultSelector):
    """The event loop's selector, noting how long each iteration that had I/O stayed busy."""

    def __init__(self) -> None:
        super().__init__()
        self.busy: list[float] = []
        self._back: float | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        now = time.perf_counter()
        if self._back is not None:
            self.busy.append(now - self._back)
            self._back = None
        ready = super().select(timeout)
        if ready:
            self._back = time.perf_counter()
        return ready


def new_loop() -> tuple[asyncio.AbstractEventLoop, TimedSelector]:
    selector = TimedSelector()
    return asyncio.SelectorEventLoop(selector), selector


@dataclass
class Progress:
    """Live counters for a display; read from the same event loop."""

    total: int = 0
    sent: int = 0
    completed: int = 0
    failed: int = 0
    finished_at: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    phase: str = "starting"
    started: float = 0.0

    @property
    def in_flight(self) -> int:
        return self.sent - self.completed - self.failed

    def rate(self, window: float = 5.0) -> float:
        """Completions per second over the last ``window`` seconds (or since the start)."""
        now = time.perf_counter()
        window = min(window, now - self.started) if self.started else window
        recent = [t for t in self.finished_at[-2000:] if t >= now - window]
        return len(recent) / window if window > 0 else 0.0

    def median_ttft_ms(self) -> float | None:
        recent = self.ttfts[-500:]
        return percentile(recent, 50) * 1000 if recent else None


class _Stream:
    """One streamed request: the sink its connection feeds."""

    __slots__ = ("chunks", "done", "error", "first", "future", "itl", "lag", "last", "prev",
                 "texts", "usage")  # fmt: skip

    def __init__(self, lag: LagRecorder) -> None:
        self.lag = lag
        self.prev = 0.0  # the time of the read before the current one
        self.future: asyncio.Future[tuple[int, bytes, str | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self.first: float | None = None
        self.last = 0.0
        self.itl: list[float] = []
        self.texts: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None
        self.done = False
        self.chunks = 0

    def on_event(self, data: bytes, t: float) -> None:
        if data == b"[DONE]":
            self.done = True
            return
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            if self.error is None:
                self.error = f"{MALFORMED}: {_clip(data)}"
            return
        if "error" in doc:
            if self.error is None:
                self.error = f"{MID_STREAM}: {_message(doc)}"
            return
        choices = doc.get("choices")
        if choices:
            if self.first is None:
                self.first = self.prev = t
            else:
                if t == self.last:  # same read: the previous event came at most this much earlier
                    self.lag.coalesced.append(min(self.lag.current, t - self.prev))
                else:
                    self.prev = self.last
                self.itl.append(t - self.last)
            self.last = t
            self.chunks += 1
            c = choices[0] if isinstance(choices[0], dict) else {}
            piece = c.get("text")
            if piece is None:
                delta = c.get("delta")
                piece = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(piece, str) and piece:
                self.texts.append(piece)
        usage = doc.get("usage")
        if isinstance(usage, dict):
            self.usage = usage

    def on_done(self, status: int, body: bytes, error: str | None) -> None:
        if not self.future.done():
            self.future.set_result((status, body, error))


def raise_fd_limit(connections: int, warnings: list[str]) -> None:
    """Lift the soft open-files limit (often 1024) to what ``connections`` sockets need."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 256
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < want:
        warnings.append(
            f"only {soft} open files are allowed (ulimit -n) for {connections} connections: "
            "raise the limit or lower the concurrency"
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _p99_with_zeros(bounds: list[float], total: int) -> float:
    """p99 over ``total`` events of which those not in ``bounds`` are exact (0)."""
    zeros = max(0, total - len(bounds))
    return percentile([0.0] * zeros + bounds, 99) if total else 0.0


def reason(error: str) -> str:
    """The failure's kind, for counting: one malformed event's text is not a reason of its own."""
    return MALFORMED if error.startswith(MALFORMED) else error


def _clip(data: bytes, n: int = 60) -> str:
    text = data.decode("utf-8", "replace")
    return repr(text if len(text) <= n else text[:n] + "…")


def _message(doc: Any) -> str:
    if isinstance(doc, dict):
        err = doc.get("error", doc)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            if msg:
                return str(msg)
        elif isinstance(err, str):
            return err
        if "detail" in doc:
            return str(doc["detail"])
    return "no message"


@dataclass
class _Result:
    outcome: Outcome
    text: str
    usage_tokens: bool
    chunks: int
    #: The prompt length asked for, to check against what the server counted.
    requested: int


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
        self.endpoint = Endpoint.parse(config.base_url)
        self.lag = LagRecorder()
        self.client = Client(self.endpoint, config.api_key, self.lag)
        self.progress = progress or Progress()
        self.warnings: list[str] = []
        self.stop = asyncio.Event()
        self.path = "/v1/chat/completions" if config.endpoint == "chat" else "/v1/completions"
        self.tokens_per_word = 1.0
        self.overhead = 0.0
        self.can_tokenize = False

    # -- requests -------------------------------------------------------------------

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
            conn = await self.client.request("POST", self.path, body, stream)
            async with asyncio.timeout(self.config.timeout):
                status, raw, error = await stream.future
            if error is None and status != 200:
                try:
                    error = f"HTTP {status}: {_message(json.loads(raw))}"
                except ValueError:
                    error = f"HTTP {status}: {_clip(raw)}"
            elif error is None and stream.error:
                error = stream.error
            elif error is None and stream.first is None:
                error = "the stream ended without any output"
            elif error is None and not stream.done:
                error = "the stream ended without data: [DONE]"
        except RequestFailed as exc:
            error = str(exc)
        except TimeoutError:
            error = f"no complete answer in {self.config.timeout:g} s (--timeout)"
        except asyncio.CancelledError:
            error = "interrupted"
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
        outcome = Outcome(
            prompt_tokens if isinstance(prompt_tokens, int) else item.prompt_len,
            out_tokens if isinstance(out_tokens, int) else stream.chunks,
            stream.first - st, stream.last - st, stream.itl, True, start, queue_time,
        )  # fmt: skip
        return _Result(outcome, "".join(stream.texts), has_usage, stream.chunks, item.prompt_len)

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

    async def warm(self, items: list[Item], prompts: list[str], ignore_eos: bool) -> None:
        n = self.config.warmup
        if not n:
            return
        self.progress.phase = "warmup"
        width = min(n, self.config.max_concurrency or n)
        sem = asyncio.Semaphore(width)

        async def go(i: int) -> None:
            async with sem:
                k = i % len(items)
                await self.one(self.body(items[k], prompts[k], ignore_eos), items[k], 0.0, 0.0)

        await asyncio.gather(*(go(i) for i in range(n)))

    async def run(self, selector: TimedSelector | None = None) -> dict[str, Any]:
        try:
            await self.preflight()
            items, prompts, ignore_eos = self.items()
            await self.warm(items, prompts, ignore_eos)
            return await self._measure(items, prompts, ignore_eos, selector)
        finally:
            self.client.close()

    async def _measure(
        self,
        items: list[Item],
        prompts: list[str],
        ignore_eos: bool,
        selector: TimedSelector | None,
    ) -> dict[str, Any]:
        c = self.config
        p = self.progress
        p.total, p.phase, p.started = len(items), "running", time.perf_counter()
        raise_fd_limit(c.max_concurrency or len(items), self.warnings)
        schedule = arrival_times(len(items), c.request_rate, c.burstiness, c.seed)
        bodies = [self.body(it, pr, ignore_eos) for it, pr in zip(items, prompts, strict=True)]
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
            self.warnings.append(
                f"{len(missing)} responses carried no usage and the server has no /tokenize: "
                "their output tokens are counted as streamed chunks"
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
        outcomes = [r.outcome for r in done]
        doc: dict[str, Any] = {
            "date": dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
            "endpoint_type": "openai-chat" if c.endpoint == "chat" else "openai",
            "backend": "openai-chat" if c.endpoint == "chat" else "openai",
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
            if r.outcome.success and r.usage_tokens
        ]
        doc |= {
            "url": str(self.endpoint),
            "endpoint": self.path,
            "interrupted": self.stop.is_set(),
            "not_sent": c.num_prompts - len(done),
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


def run_sync(
    config: BenchConfig,
    tick: Callable[[Progress], None] | None = None,
    on_start: Callable[[Runner, asyncio.AbstractEventLoop], None] | None = None,
) -> dict[str, Any]:
    """Run on a fresh event loop whose iterations are timed for the self-check."""
    loop, selector = new_loop()
    try:
        runner = Runner(config, tick=tick)
        if on_start is not None:
            on_start(runner, loop)
        return loop.run_until_complete(runner.run(selector))
    finally:
        loop.close()
