"""``labctl bench --backend openvla``: simulated robots running their control loops on a server.

Each of ``--robots N`` robots sends camera frames (:mod:`labctl.bench.frames`) to ``/act``
at ``--target-hz R``, robot i starting i/(N·R) s into the run so that the robots are
spread over a period rather than all sending at once, as independent robots are:

- **closed loop** (the default): a robot sends its next frame when its last action has
  arrived and its next tick (1/R after the previous one) has come; an action that came
  after that tick makes the robot send at once (the tick was missed). One request is in
  flight per robot, as a robot that acts on each answer has it.
- **open loop** (``--open-loop``): a robot sends at every tick, whether or not its earlier
  requests were answered, so a slow server builds a queue rather than slowing the robots.

The run lasts ``--duration`` seconds (no frame is sent after it; the answers in flight are
awaited) or until ``--num-prompts`` requests were sent, shared among the robots. Each
answer is read with :func:`labctl.vla.action`: a 200 whose JSON is ``"error"`` (OpenVLA's
way of failing) fails the request, as any other status does. Times come from the same
client as the text benchmark: sent just before the request is written, answered when its
last byte arrived (the kernel's receive timestamp). The figures are
:mod:`labctl.bench.control`'s.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
import datetime as dt
import json
import math
from pathlib import Path
import time
from typing import Any

from labctl import vla
from labctl.bench import frames as frames_
from labctl.bench.control import Answer, meets, summarize
from labctl.bench.frames import Frame
from labctl.bench.http import Endpoint, RequestFailed
from labctl.bench.options import BenchConfig
from labctl.bench.progress import INTERRUPTED, Progress
from labctl.bench.run import Runner
from labctl.bench.selfcheck import CLIENT_LAG_LIMIT_S, TimedSelector, _ms
from labctl.bench.stream import _clip, _message, reason
from labctl.sim.report import percentile

#: Sends that slip by more than this share of the control period (p99) make the run
#: client-limited: the client's own timing, not the server, then shapes rates and jitter.
SLIP_LIMIT_SHARE = 0.05


def load_frames(config: BenchConfig) -> list[Frame]:
    """The run's frames: the images of ``--image-dir``, or generated ones.

    Raises:
        UsageError: the folder is missing or empty, a file is not an image, or Pillow is missing.
    """
    if config.image_dir is not None:
        return frames_.from_dir(Path(config.image_dir))
    return frames_.generated(seed=config.seed)


class _Reply:
    """The sink of one ``/act`` request: the whole answer, when it ends."""

    def __init__(self) -> None:
        self.future: asyncio.Future[tuple[int, bytes, str | None]] = (
            asyncio.get_running_loop().create_future()
        )

    def on_event(self, data: bytes, t: float) -> None:
        """An answer is one JSON document; an event stream is not one (read_answer says so)."""

    def on_done(self, status: int, body: bytes, error: str | None) -> None:
        if not self.future.done():
            self.future.set_result((status, body, error))


def read_answer(status: int, raw: bytes) -> tuple[int, int, str | None]:
    """(actions, values per action, why it failed or None) for one answer's status and body."""
    if status != 200:
        try:
            return 0, 0, f"HTTP {status}: {_message(json.loads(raw))}"
        except ValueError:
            return 0, 0, f"HTTP {status}: {_clip(raw)}"
    try:
        action = vla.action(raw)
    except vla.VlaError as exc:
        return 0, 0, str(exc)
    if action.ndim == 1:
        return 1, int(action.shape[0]), None
    return int(action.shape[0]), int(action.shape[1]), None


def shares(total: int, robots: int) -> list[int]:
    """``total`` requests dealt to the robots as evenly as they go, the first ones one more."""
    return [total // robots + (1 if r < total % robots else 0) for r in range(robots)]


class RobotRunner(Runner):
    """A :class:`Runner` whose requests are robots' camera frames posted to ``/act``."""

    def __init__(
        self,
        config: BenchConfig,
        frames: Sequence[Frame] | None = None,
        progress: Progress | None = None,
        tick: Callable[[Progress], None] | None = None,
    ) -> None:
        super().__init__(config, progress, tick)
        self.frames = list(frames) if frames is not None else load_frames(config)
        #: One body per frame, built once: every request of that frame sends these bytes.
        self.bodies = frames_.bodies(self.frames, config.instruction, config.unnorm_key)
        self.period = 1.0 / config.target_hz
        self.answers: list[Answer] = []
        self.slips: list[float] = []
        self.progress.robots = config.robots

    def route(self) -> tuple[Endpoint, str]:
        return frames_.route(self.config.base_url)

    def frame_body(self, robot: int, k: int) -> bytes:
        """Robot ``robot``'s ``k``-th frame: the robots start at different frames and cycle."""
        return self.bodies[(robot + k) % len(self.bodies)]

    def offset(self, robot: int) -> float:
        """When the robot's first tick comes: the robots spread evenly over one period."""
        return robot * self.period / self.config.robots

    # -- one request ------------------------------------------------------------------

    async def act(self, answer: Answer, body: bytes, t0: float, measured: bool = True) -> None:
        """Send one frame and fill in ``answer`` (times relative to ``t0``)."""
        p = self.progress
        sink = _Reply()
        conn = None
        error: str | None = None
        start = time.perf_counter()
        answer.sent = start - t0
        if measured:
            p.sent += 1
            self.slips.append(max(0.0, answer.sent - answer.tick))
        try:
            conn = await self.client.request("POST", self.path, body, sink)
            async with asyncio.timeout(self.config.timeout):
                status, raw, error = await sink.future
            if error is None:
                ended = conn.parser.ended if conn.parser is not None else time.perf_counter()
                answer.arrived = ended - t0
                answer.actions, answer.dim, error = read_answer(status, raw)
        except RequestFailed as exc:
            error = str(exc)
        except TimeoutError:
            error = f"no answer in {self.config.timeout:g} s (--timeout)"
        except asyncio.CancelledError:
            answer.error = INTERRUPTED
            raise
        finally:
            if conn is not None:
                if error is None and answer.error is None:
                    self.client.release(conn)
                else:
                    self.client.discard(conn)
            answer.error = answer.error or error
            if measured:
                if answer.ok:
                    p.completed += 1
                    p.latencies.append(answer.latency or 0.0)
                    p.misses += answer.missed(self.period)
                elif answer.error == INTERRUPTED:
                    p.cut += 1
                else:
                    p.failed += 1
                p.finished_at.append(time.perf_counter())

    # -- the robots -------------------------------------------------------------------

    @staticmethod
    async def _until(at: float) -> None:
        """Wait for perf-counter time ``at`` (a stopped run cancels the robots waiting)."""
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)

    def _more(self, k: int, tick: float, count: int | None) -> bool:
        if self.stop.is_set():
            return False
        if count is not None:
            return k < count
        assert self.config.duration is not None
        return tick < self.config.duration - 1e-6  # not a tick that float sums put at the end

    async def closed_loop(self, robot: int, count: int | None, t0: float) -> None:
        """Send, wait for the action, then wait for the next tick (or go at once if it passed)."""
        tick, k = self.offset(robot), 0
        while self._more(k, tick, count):
            await self._until(t0 + tick)
            if self.stop.is_set():
                return
            answer = Answer(robot, tick, 0.0)
            self.answers.append(answer)
            await self.act(answer, self.frame_body(robot, k), t0)
            k += 1
            back = answer.arrived if answer.arrived is not None else time.perf_counter() - t0
            tick = max(tick + self.period, back)

    async def open_loop(
        self, robot: int, count: int | None, t0: float, pending: set[asyncio.Task[None]]
    ) -> None:
        """Send at every tick; the answers are awaited by the run, not by the robot."""
        tick, k = self.offset(robot), 0
        loop = asyncio.get_running_loop()
        while self._more(k, tick, count):
            await self._until(t0 + tick)
            if self.stop.is_set():
                return
            answer = Answer(robot, tick, 0.0)
            self.answers.append(answer)
            task = loop.create_task(self.act(answer, self.frame_body(robot, k), t0))
            pending.add(task)
            task.add_done_callback(pending.discard)
            k += 1
            tick += self.period

    def planned(self) -> int:
        """How many requests the run sends at most (all of them in an open loop)."""
        c = self.config
        if c.duration is None:
            return c.num_prompts
        return sum(max(0, math.ceil((c.duration - self.offset(r)) / self.period))
                   for r in range(c.robots))  # fmt: skip

    # -- the run ----------------------------------------------------------------------

    async def run(self, selector: TimedSelector | None = None) -> dict[str, Any]:
        try:
            await self.warm_robots()
            return await self._control(selector)
        finally:
            self.client.close()

    async def warm_robots(self) -> None:
        """``--warmup`` requests, one in flight per robot, not measured."""
        n = self.config.warmup
        if not n:
            return
        self.progress.phase = "warmup"
        sem = asyncio.Semaphore(self.config.robots)

        async def go(i: int) -> None:
            async with sem:
                robot = i % self.config.robots
                now = time.perf_counter()
                await self.act(
                    Answer(robot, 0.0, 0.0), self.frame_body(robot, i), now, measured=False
                )

        await asyncio.gather(*(go(i) for i in range(n)))

    async def _control(self, selector: TimedSelector | None) -> dict[str, Any]:
        c = self.config
        p = self.progress
        p.total, p.phase = self.planned(), "running"
        counts: list[int | None] = (
            [None] * c.robots if c.duration is not None else list(shares(c.num_prompts, c.robots))
        )
        self.lag.samples.clear()
        self.lag.coalesced.clear()
        if selector is not None:
            selector.busy.clear()
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()
        t0 = p.started = time.perf_counter()
        if c.open_loop:
            robots = [loop.create_task(self.open_loop(r, counts[r], t0, pending))
                      for r in range(c.robots)]  # fmt: skip
        else:
            robots = [loop.create_task(self.closed_loop(r, counts[r], t0)) for r in range(c.robots)]
        stopper = loop.create_task(self.stop.wait())
        ticker = loop.create_task(self._ticker()) if self.tick else None
        try:
            sending: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*robots))
            await asyncio.wait([sending, stopper], return_when=asyncio.FIRST_COMPLETED)
            if pending and not self.stop.is_set():  # the open loop's answers still in flight
                answering: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*pending))
                await asyncio.wait([answering, stopper], return_when=asyncio.FIRST_COMPLETED)
            if self.stop.is_set():
                left = [*robots, *pending]
                for task in left:
                    task.cancel()
                await asyncio.gather(*left, return_exceptions=True)
        finally:
            stopper.cancel()
            if ticker is not None:
                ticker.cancel()
        ends = [a.arrived for a in self.answers if a.arrived is not None]
        duration = max([time.perf_counter() - t0 if self.stop.is_set() else 0.0, *ends,
                        *(a.sent for a in self.answers)])  # fmt: skip
        return self.control_report(duration, selector)

    def control_report(self, duration: float, selector: TimedSelector | None) -> dict[str, Any]:
        """The run's result: what was asked, the control-loop figures, and the client's check."""
        c = self.config
        answers = [a for a in self.answers if a.error != INTERRUPTED]  # cut short, not failed
        sizes = {f.size for f in self.frames}
        doc: dict[str, Any] = {
            "date": dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
            "backend": "openvla",
            "endpoint_type": "openvla",
            "label": None,
            "model_id": c.model or None,
            "url": str(self.endpoint),
            "endpoint": self.path,
            "mode": "open" if c.open_loop else "closed",
            "num_prompts": c.num_prompts if c.duration is None else None,
            "requested_duration": c.duration,
            "frames": len(self.frames),
            "frame_source": str(c.image_dir) if c.image_dir is not None else "generated",
            "frame_size": sizes.pop() if len(sizes) == 1 else "mixed",
            "instruction": c.instruction,
            "unnorm_key": c.unnorm_key,
            "interrupted": self.stop.is_set(),
            "not_sent": c.num_prompts - len(self.answers) if c.duration is None else 0,
            "cut": len(self.answers) - len(answers),
        }
        doc |= summarize(answers, c.robots, c.target_hz, max(duration, 1e-9))
        doc["slo_ms"] = c.slo
        doc["meets_slo"] = meets(doc, c.slo)
        reasons = Counter(reason(a.error) for a in answers if a.error)
        doc["errors_by_reason"] = dict(reasons.most_common())
        doc |= self._self_check(selector)
        doc |= {
            "robot_ids": [a.robot for a in answers],
            "start_times": [a.sent for a in answers],
            "arrival_times": [a.arrived for a in answers],
            "latencies": [a.latency if a.ok else 0.0 for a in answers],
            "actions": [a.actions for a in answers],
            "deadline_missed": [a.ok and a.missed(self.period) for a in answers],
            "errors": [a.error or "" for a in answers],
        }
        return doc

    def _self_check(self, selector: TimedSelector | None) -> dict[str, Any]:
        """As the text benchmark's, plus how late the robots sent against their ticks."""
        lag = self.lag.samples
        busy = selector.busy if selector is not None else []
        busy_p99 = percentile(busy, 99) if busy else None
        # Kernel timestamps make each answer's end exact; read times are off by a loop turn.
        error_p99 = 0.0 if lag else busy_p99
        slip_p99 = percentile(self.slips, 99) if self.slips else 0.0
        late_reads = error_p99 is not None and error_p99 > CLIENT_LAG_LIMIT_S
        late_sends = slip_p99 > SLIP_LIMIT_SHARE * self.period
        warnings = list(self.warnings)
        if late_reads:
            assert error_p99 is not None
            warnings.append(f"client_limited: answers may be timed up to {error_p99 * 1000:.2f} "
                            "ms late (p99; limit 1 ms). Run fewer robots per labctl bench.")  # fmt: skip
        if late_sends:
            warnings.append(
                f"client_limited: the robots sent up to {slip_p99 * 1000:.1f} ms after their "
                f"ticks (p99; limit {SLIP_LIMIT_SHARE:.0%} of the {self.period * 1000:g} ms "
                "period): the client, not the server, shapes the achieved rate and jitter. Run "
                "fewer robots per labctl bench."
            )
        return {
            "client_limited": late_reads or late_sends,
            "client_check": {
                "limit_ms": CLIENT_LAG_LIMIT_S * 1000,
                "timestamps": "kernel" if lag else "read",
                "timestamp_error_p99_ms": _ms(error_p99),
                "read_lag_p99_ms": _ms(percentile(lag, 99) if lag else None),
                "coalesced_events": 0,
                "event_loop_busy_p99_ms": _ms(busy_p99),
                "send_slip_p99_ms": _ms(slip_p99),
                "send_slip_limit_ms": SLIP_LIMIT_SHARE * self.period * 1000,
            },
            "warnings": warnings,
        }
