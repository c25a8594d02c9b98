"""``labctl sim run``: the twin's scheduler as a discrete-event simulation.

Time jumps from one step's end to the next, so an hour of traffic takes
seconds. Requests are sent on their precomputed schedule; with a concurrency
limit a request waits for a free slot first and its latency counts from when it
is sent, as ``vllm bench serve --max-concurrency`` measures. What the API server
does during a step (tokens reaching their clients, the requests sent then, their
intake) is worked through in time order before the step's own tokens reach it: a
request sent in the middle of a step is taken in from that moment, and the engine
schedules it at the first step boundary after its intake.

A speech request runs its chunks one after another, as vLLM's server does: the
next chunk's engine request starts when the previous one ends. Its latency runs
from sending to the last chunk's last token, and the summary adds
``audio_seconds`` (audio of the completed requests) and ``rtfx`` (that over the
run's duration), the names ``vllm bench serve`` reports.

Latencies are the client's: each step's text tokens reach the client when the API
server has streamed them (``sim/api_server.py``), which the engine does not wait for; a
speech request's as the engine makes them (the speech twin's own calibration).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
import heapq
from typing import Any

from labctl.audio import SAMPLE_RATE
from labctl.errors import UsageError
from labctl.sim import perf as costs
from labctl.sim.api_server import ApiServer
from labctl.sim.engine import Twin
from labctl.sim.report import Outcome, summarize
from labctl.sim.scheduler import Batch, SimRequest, block_keys
from labctl.sim.whisper import mel_frames, plan_chunk
from labctl.sim.workload import Item


@dataclass(slots=True)
class _Client:
    """What a request's client has seen: when its tokens arrived (a speech request's, over
    all its chunks)."""

    first: float | None = None
    last: float | None = None
    finished: float | None = None
    itl: list[float] = field(default_factory=list)


@dataclass
class Timeline:
    """Engine state sampled once per simulated ``interval`` seconds, and the work done in each
    interval (from its sample's time to the next one's, or to ``end``).

    The samples (``kv_cache_usage``, ``running``, ``waiting``, ``preemptions``) are the state
    when the step that crosses the sample's time ends; ``waiting`` counts, besides the
    engine's queue, requests the client holds back under ``--max-concurrency``. The
    per-interval figures are over the steps' time in the interval: tokens computed, and
    time-weighted means of the batch, the KV cache usage and the engine's queue (idle time
    counts as none), and the share of it the API server had work, which the bottleneck
    classifier reads (``sim/explain.py``).
    """

    interval: float
    time: list[float] = field(default_factory=list)
    kv_cache_usage: list[float] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    preemptions: list[int] = field(default_factory=list)
    #: Prompt tokens computed in each interval (prefill chunks, and recomputation after a
    #: preemption).
    prompt_tokens: list[float] = field(default_factory=list)
    #: Tokens generated in each interval.
    generation_tokens: list[float] = field(default_factory=list)
    #: Mean sequences in the running batch over each interval.
    mean_batch: list[float] = field(default_factory=list)
    #: Mean KV cache usage (0–1) over each interval.
    mean_kv_cache_usage: list[float] = field(default_factory=list)
    #: Mean requests waiting in the engine (not the client's) over each interval.
    mean_waiting: list[float] = field(default_factory=list)
    #: Share of each interval the API server's processes had work (their mean, 0–1).
    api_server_busy: list[float] = field(default_factory=list)
    #: Mean requests the API servers held over each interval (taking them in, or on their
    #: way to the engine): a burst being taken in while the engine has nothing yet.
    mean_intake: list[float] = field(default_factory=list)
    #: When the run's last step ended (s); the last interval ends there.
    end: float = 0.0

    def span(self, k: int) -> tuple[float, float]:
        """Interval ``k``: from its sample's time to the next one's, or to the run's end."""
        start = self.time[k]
        if k + 1 < len(self.time):  # exactly where the next starts (no float drift between)
            return start, self.time[k + 1]
        return start, min(start + self.interval, max(self.end, start))

    def to_json(self) -> dict[str, Any]:
        return {
            "interval_s": self.interval,
            "time_s": self.time,
            "kv_cache_usage": self.kv_cache_usage,
            "num_requests_running": self.running,
            "num_requests_waiting": self.waiting,
            "num_preemptions_total": self.preemptions,
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "mean_batch": self.mean_batch,
            "mean_kv_cache_usage": self.mean_kv_cache_usage,
            "mean_num_requests_waiting": self.mean_waiting,
            "api_server_busy": self.api_server_busy,
            "mean_num_requests_in_api_server": self.mean_intake,
            "end_s": self.end,
        }


def simulate(
    twin: Twin,
    items: Sequence[Item],
    send_times: Sequence[float],
    max_concurrency: int | None = None,
    interval: float = 1.0,
    percentiles: Sequence[float] = (99,),
    chat: bool = False,
) -> tuple[dict[str, Any], Timeline]:
    """Run the workload through the twin; returns the summary (with these latency
    ``percentiles``) and the timeline. ``chat``: text requests are chats (the API server
    renders each one's chat template), not completions.

    Raises:
        UsageError: speech items for a text model, or text items for a speech model.
    """
    speech = any(item.audio for item in items)
    if speech != twin.speech:
        raise UsageError(
            f"{twin.model_name} is a speech model: give --audio-seconds or --audio-files"
            if twin.speech
            else f"--audio-seconds and --audio-files need a speech model (Whisper); "
            f"{twin.model_name} serves text"
        )
    sched = twin.scheduler()
    perf = twin.perf
    max_len = twin.fit.max_model_len
    pending = sorted(range(len(items)), key=lambda i: send_times[i])
    order = iter(pending)
    #: Each sent item's engine requests so far (a speech item's chunks, one at a time).
    reqs: dict[int, list[SimRequest]] = {}
    owner: dict[int, int] = {}
    sent: dict[int, float] = {}
    rejected: set[int] = set()
    #: (time it may be sent, index): requests scheduled but not yet sent.
    ready: list[tuple[float, int]] = []
    #: (time the engine sees it, index): sent, still in the API server.
    inbound: list[tuple[float, int]] = []
    #: When each concurrency slot became free (one per slot; unlimited without a limit).
    free_at: list[float] = [0.0] * max_concurrency if max_concurrency else []
    timeline = Timeline(interval)
    next_sample = 0.0
    #: Per interval: prompt tokens, generated tokens, and seconds × (sequences, KV usage,
    #: requests waiting) of the steps in it.
    work: list[list[float]] = []
    now = 0.0
    #: The API server's processes (item i's is i mod their count), each shared by the
    #: requests it is taking in (keyed by item) and the steps' tokens it streams out (keyed
    #: by the step's requests).
    servers: list[ApiServer[int | list[tuple[SimRequest, bool]]]] = [
        ApiServer(periods=True) for _ in range(twin.config.api_server_count)
    ]
    intake_cost = costs.intake_s(twin.arch.model_type, chat)
    token_cost = costs.STREAM_TOKEN_S
    clients: dict[int, _Client] = {}
    #: Requests whose client has seen the end.
    done = 0
    nxt = next(order, None)
    ids = iter(range(1, 2**62))

    def engine_request(i: int, at: float) -> SimRequest:
        """Item ``i``'s next engine request, arriving at ``at``."""
        item = items[i]
        done = reqs.setdefault(i, [])
        if item.audio:
            cap = max_len - item.prompt_len
            chunk = plan_chunk(len(done), item.audio[len(done)], item.prompt_len, cap, False)
            req = SimRequest(next(ids), item.prompt_len, chunk.generated, at,
                             encoder_positions=twin.encoder_positions)  # fmt: skip
        else:
            keys = (
                block_keys(item.prompt.split(), sched.block_size)
                if sched.prefix_caching and item.prompt
                else ()
            )
            req = SimRequest(next(ids), item.prompt_len, item.output_len, at, keys)
        done.append(req)
        owner[req.id] = i
        return req

    def to_engine(i: int, at: float) -> None:
        """Item ``i``'s next engine request is on its way: the engine sees it at ``at``."""
        heapq.heappush(inbound, (engine_request(i, at).arrival, i))

    def delivered(t: float, out: list[tuple[SimRequest, bool]]) -> None:
        """A step's tokens (each with whether it is its item's last) reach their clients
        at ``t``."""
        nonlocal done
        for req, last in out:
            seen = clients.setdefault(owner[req.id], _Client())
            if seen.last is not None:
                seen.itl.append(t - seen.last)
            else:
                seen.first = t
            seen.last = t
            if last:
                seen.finished = t
                done += 1
                if max_concurrency:
                    heapq.heappush(free_at, t)

    def handle(events: list[tuple[float, int | list[tuple[SimRequest, bool]]]]) -> None:
        """The API server's work done: requests taken in (the engine sees each after the
        rest of the API server's latency) and steps streamed."""
        for t, key in events:
            if isinstance(key, int):
                to_engine(key, t + costs.FRONTEND_S)
            else:
                delivered(t, key)

    def api_next() -> float | None:
        """When an API server next has work done."""
        if len(servers) == 1:
            return servers[0].next_done()
        return min((t for s in servers if (t := s.next_done()) is not None), default=None)

    def api_advance(t: float) -> None:
        for server in servers:
            handle(server.advance(t))

    def stream_out(out: list[tuple[SimRequest, bool]]) -> None:
        """A step's tokens, to the API servers of their requests."""
        if len(servers) == 1:
            handle(servers[0].stream(now, out, len(out) * token_cost))
            return
        parts: dict[int, list[tuple[SimRequest, bool]]] = {}
        for token in out:
            parts.setdefault(owner[token[0].id] % len(servers), []).append(token)
        for k, part in parts.items():
            handle(servers[k].stream(now, part, len(part) * token_cost))

    def next_send() -> float | None:
        """When the first request in hand goes out: its time come and a slot free."""
        if not ready or (max_concurrency and not free_at):
            return None
        return max(ready[0][0], free_at[0]) if max_concurrency else ready[0][0]

    def feed(until: float) -> None:
        """Send every request whose time has come and that has a free slot, in time order
        with the API server's work (a streamed last token frees a slot)."""
        nonlocal nxt
        while nxt is not None and send_times[nxt] <= until:
            heapq.heappush(ready, (send_times[nxt], nxt))
            nxt = next(order, None)
        while True:
            send_at = next_send()
            api_at = api_next()
            if api_at is not None and api_at <= until and (send_at is None or api_at < send_at):
                api_advance(api_at)
                continue
            if send_at is None or send_at > until:
                break
            t, i = heapq.heappop(ready)
            # Sent when both its time has come and a slot was free (the client waits).
            start = max(t, heapq.heappop(free_at)) if max_concurrency else t
            item = items[i]
            sent[i] = start
            if not item.audio and item.prompt_len + item.output_len > max_len:
                rejected.add(i)  # vLLM answers 400: longer than max_model_len
                if max_concurrency:
                    heapq.heappush(free_at, start)
                continue
            # The API server takes each request in, sharing its process with the others in
            # hand, before the engine sees it. (Speech requests' API-server costs, each audio
            # chunk's features included, are the speech twin's own calibration.)
            if item.audio:
                to_engine(i, start + costs.speech_frontend_s(len(item.audio)))
            else:
                handle(servers[i % len(servers)].add(start, i, intake_cost))
        api_advance(until)
        while inbound and inbound[0][0] <= until:
            sched.add(reqs[heapq.heappop(inbound)[1]][-1])

    def overlaps(t0: float, t1: float) -> Iterator[tuple[list[float], float]]:
        """Each interval's work row that ``t0`` to ``t1`` overlaps (made on first use), with
        the seconds it overlaps; one row, with 0 s, for an empty span."""
        k = int(t0 // interval)
        while True:
            while len(work) <= k:
                work.append([0.0] * 6)
            hi = (k + 1) * interval
            yield work[k], max(min(t1, hi) - max(t0, k * interval), 0.0)
            if t1 <= hi:
                return
            k += 1

    def account(t0: float, t1: float, batch: Batch) -> None:
        """Spread one step's work (``t0`` to ``t1``) over the intervals it overlaps."""
        prompt, generated = batch.cost.tokens, 0
        for req, n in batch.items:
            if req.computed + n >= req.prompt_len + req.generated:  # a token comes out
                generated += 1
                if n == 1 and req.generated:  # a decode step, not the end of a prefill
                    prompt -= 1
        seqs, kv, waiting = len(batch.items), sched.usage, len(sched.waiting)
        for w, seconds in overlaps(t0, t1):
            share = seconds / (t1 - t0) if t1 > t0 else 1.0
            w[0] += prompt * share
            w[1] += generated * share
            w[2] += seqs * seconds
            w[3] += kv * seconds
            w[4] += waiting * seconds

    def hold(t0: float, t1: float) -> None:
        """Spread the requests the API servers hold from ``t0`` to ``t1`` (taking them in,
        or on their way to the engine) over the intervals it overlaps."""
        held = sum(len(server) for server in servers) + len(inbound)
        if held and t1 > t0:
            for w, seconds in overlaps(t0, t1):
                w[5] += held * seconds

    total = len(items)
    last_step = 0.0
    # The API servers and the clients are worked through to ``now`` whenever it moves or a
    # slot frees at it, so each loop starts with everything due by ``now`` handled.
    feed(now)
    while done + len(rejected) < total:
        if sched.idle:
            upcoming = [t for t, _ in inbound[:1]]
            upcoming += [t for t in (api_next(), next_send()) if t is not None]
            if nxt is not None:
                upcoming.append(send_times[nxt])
            if not upcoming:
                break
            hold(now, max(now, min(upcoming)))
            now = max(now, min(upcoming))
            feed(now)
            continue
        batch = sched.schedule(now)
        if not batch.items:
            raise RuntimeError("the scheduler found nothing to run; the KV cache is too small")
        began, now = now, now + perf.step_seconds(batch.cost)
        last_step = now
        account(began, now, batch)
        hold(began, now)
        for req in sched.complete(batch, now):
            i = owner[req.id]
            if len(reqs[i]) < len(items[i].audio):
                sched.add(engine_request(i, now))  # a speech item's next chunk, right away
        # Each token that came out, with whether it is its item's last (a speech item's
        # last chunk's last).
        out = [(r, r.finished is not None and r is reqs[owner[r.id]][-1])
               for r, _ in batch.items if r.last_token == now]  # fmt: skip
        # The API servers' work during the step (earlier steps' tokens reaching their
        # clients, the requests those clients send next, intakes) comes first, in time
        # order: this step's tokens reach them only now.
        feed(now)
        if out and token_cost and not speech:
            stream_out(out)  # done after now: nothing more to work through at now
        elif out:
            delivered(now, out)
            feed(now)  # slots freed at now: their clients send again
        while now >= next_sample:
            timeline.time.append(round(next_sample, 6))
            timeline.kv_cache_usage.append(round(sched.usage, 4))
            timeline.running.append(len(sched.running))
            timeline.waiting.append(len(sched.waiting) + len(ready))
            timeline.preemptions.append(sched.preemptions_total)
            next_sample += interval
    timeline.end = round(last_step, 6)
    for k in range(len(timeline.time)):
        w_prompt, w_generated, w_seqs, w_kv, w_waiting, w_held = (
            work[k] if k < len(work) else [0.0] * 6
        )
        start, end = timeline.span(k)
        length = end - start if end > start else interval
        timeline.prompt_tokens.append(round(w_prompt, 3))
        timeline.generation_tokens.append(round(w_generated, 3))
        timeline.mean_batch.append(round(w_seqs / length, 4))
        timeline.mean_kv_cache_usage.append(round(w_kv / length, 4))
        timeline.mean_waiting.append(round(w_waiting / length, 4))
        timeline.mean_intake.append(round(w_held / length, 4))
        api_busy = sum(api.busy_between(start, start + length) for api in servers)
        timeline.api_server_busy.append(round(api_busy / len(servers) / length, 4))
    outcomes = []
    audio_s = 0.0
    for i, item in enumerate(items):
        seen = clients.get(i)
        if i in rejected or seen is None or seen.finished is None:
            outcomes.append(Outcome(item.prompt_len, 0, None, None, (), success=False))
            continue
        assert seen.first is not None
        chain = reqs[i]
        prompt = sum(r.prompt_len for r in chain)
        if item.audio:
            prompt += sum(mel_frames(n / SAMPLE_RATE) for n in item.audio)
            audio_s += item.audio_seconds
        outcomes.append(
            Outcome(prompt, sum(r.generated for r in chain), seen.first - sent[i],
                    seen.finished - sent[i], seen.itl, start=sent[i])
        )  # fmt: skip
    first_sent = min(sent.values()) if sent else 0.0
    duration = max(now - first_sent, 1e-9)
    summary = summarize(outcomes, duration, percentiles)
    if speech:
        summary["audio_seconds"] = audio_s
        summary["rtfx"] = audio_s / duration
    summary["num_preemptions"] = sched.preemptions_total
    summary["api_server_count"] = len(servers)
    #: Share of the run each API server process had work, on average: near 1, it (taking
    #: requests in or streaming tokens), not the GPU, set the pace.
    summary["api_server_busy"] = round(sum(s.busy for s in servers) / len(servers) / duration, 4)
    summary["kv_cache_tokens"] = twin.fit.kv_cache_tokens
    summary["max_num_seqs"] = twin.fit.max_num_seqs
    summary["vllm_version"] = twin.timing.version
    summary["async_scheduling"] = twin.timing.async_scheduling
    summary["max_num_batched_tokens"] = twin.fit.max_num_batched_tokens
    summary["peak_kv_cache_usage"] = max(timeline.kv_cache_usage, default=0.0)
    summary["peak_num_requests_waiting"] = max(timeline.waiting, default=0)
    return summary, timeline
