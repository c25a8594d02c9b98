"""``labctl bench --backend openvla`` against an in-process fake OpenVLA server.

The fake takes ``POST /act`` (and the gateway's ``/vla/NAME/act``) as OpenVLA's
``deploy.py`` does, checks each body with :func:`labctl.vla.observation`, and answers a
7-vector (json-numpy), a K×D chunk (a plain list, as OFT's server may send it), OpenVLA's
HTTP 200 ``"error"``, or a gateway's HTTP error, after a delay chosen per request. It
notes when each request came and how many were in flight, so the tests check the robots'
timing from the server's side as well as from the report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
import io
import itertools
import json
from pathlib import Path
import statistics
import threading
import time
from typing import Any

from aiohttp import web
from click.testing import CliRunner
import json_numpy
import numpy as np
from PIL import Image
import pytest
from rich.console import Console

from labctl import vla
from labctl.bench import frames as frames_mod
from labctl.bench.control import Answer, headline, robots_per_gpu, summarize
from labctl.bench.frames import deployment, from_dir, route
from labctl.bench.http import Endpoint
from labctl.bench.progress import Progress
from labctl.bench.run import BenchConfig, run_sync
from labctl.cli.bench import _progress_view
from labctl.cli.main import cli
from labctl.errors import UsageError

#: The fake's answer to request i: ("vector" | "chunk" | "error" | "http", delay in seconds).
Script = Callable[[int], tuple[str, float]]


@dataclass
class Fake:
    """What the fake OpenVLA server was sent, and how it answers."""

    url: str = ""
    script: Script = lambda i: ("vector", 0.005)
    #: Answer one request at a time, as OpenVLA's server (no batching) does.
    serial: bool = False
    chunk: tuple[int, int] = (8, 7)
    observations: list[vla.Observation] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: asyncio.Lock | None = None

    async def act(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.perf_counter())
        self.paths.append(request.path)
        i = len(self.observations)
        self.observations.append(vla.observation(json.loads(await request.read())))
        kind, delay = self.script(i)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.serial:
                if self.lock is None:
                    self.lock = asyncio.Lock()
                async with self.lock:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(delay)
        finally:
            self.in_flight -= 1
        if kind == "error":  # OpenVLA's deploy.py: any exception is a 200 with "error"
            return web.json_response("error")
        if kind == "http":
            return web.json_response({"error": {"message": "deployment arm is not running"}},
                                     status=503)  # fmt: skip
        if kind == "chunk":
            return web.json_response(np.zeros(self.chunk).tolist())
        body = json_numpy.dumps(np.linspace(-1, 1, vla.ACTION_DIM, dtype=np.float32))
        return web.Response(text=body, content_type="application/json")


@pytest.fixture
def fake() -> Iterator[Fake]:
    """The fake on a loopback port, run by its own event loop in a thread."""
    server = Fake()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, web.AppRunner] = {}

    async def start() -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/act", server.act)
        app.router.add_post("/vla/{name}/act", server.act)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        started.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def config(url: str, **kw: Any) -> BenchConfig:
    base: dict[str, Any] = {"model": "", "backend": "openvla", "robots": 1, "target_hz": 10.0}
    return BenchConfig(url, **(base | kw))


def labctl(*args: str) -> Any:
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["bench", *args])


def by_robot(doc: dict[str, Any], robot: int) -> list[tuple[float, float | None, str]]:
    """One robot's requests in the order sent: (sent, arrived, error)."""
    rows = [(s, a, e) for r, s, a, e in zip(doc["robot_ids"], doc["start_times"],
            doc["arrival_times"], doc["errors"], strict=True) if r == robot]  # fmt: skip
    return sorted(rows, key=lambda row: row[0])


# -- the control loop -------------------------------------------------------------------


def test_a_closed_loop_on_a_fast_server_holds_the_target_rate_one_request_at_a_time(
    fake: Fake,
) -> None:
    doc = run_sync(config(fake.url, robots=2, target_hz=10.0, duration=1.0))
    assert doc["failed"] == 0 and doc["mode"] == "closed"
    assert doc["completed"] == 20  # ticks at 0, 0.1, …, 0.9 s and 0.05, 0.15, … 0.95 s
    assert doc["achieved_hz"] == pytest.approx(10.0, abs=0.5)
    assert doc["deadline_misses"] == 0 and doc["deadline_miss_ratio"] == 0.0
    assert doc["jitter_ms"] < 10.0
    assert doc["actions_per_chunk"] == 1 and doc["action_dim"] == 7
    for robot in (0, 1):
        rows = by_robot(doc, robot)
        assert len(rows) == 10
        sends = [s for s, _, _ in rows]
        # Each tick 1/R after the previous: the robots do not drift or bunch up.
        assert all(0.09 <= b - a <= 0.115 for a, b in itertools.pairwise(sends))
        # A closed loop: the next frame only once the last action is back.
        assert all(s >= a for (_, a, _), (s, _, _) in itertools.pairwise(rows) if a)
    # The robots are spread over the period, not sending together.
    first = sorted(by_robot(doc, r)[0][0] for r in (0, 1))
    assert first[1] - first[0] == pytest.approx(0.05, abs=0.02)
    assert fake.max_in_flight == 1


def test_a_closed_loop_on_a_slow_server_sends_at_once_and_misses_every_deadline(
    fake: Fake,
) -> None:
    fake.script = lambda i: ("vector", 0.12)  # longer than the 100 ms period
    doc = run_sync(config(fake.url, target_hz=10.0, num_prompts=6))
    assert doc["completed"] == 6 and doc["failed"] == 0
    rows = by_robot(doc, 0)
    for (_, arrived, _), (sent, _, _) in itertools.pairwise(rows):
        assert arrived is not None
        # The tick had passed: sent at once, not at the next tick of the grid (80 ms on).
        assert 0.0 <= sent - arrived < 0.04
    assert doc["deadline_misses"] == 6 and doc["deadline_miss_ratio"] == 1.0
    assert doc["action_latency_ms_p50"] >= 120.0
    assert doc["achieved_hz"] == pytest.approx(1 / 0.12, rel=0.15)  # the server sets the pace
    assert fake.max_in_flight == 1


def test_an_open_loop_sends_at_every_tick_whatever_is_outstanding(fake: Fake) -> None:
    fake.script = lambda i: ("vector", 0.25)
    doc = run_sync(config(fake.url, target_hz=10.0, num_prompts=8, open_loop=True))
    assert doc["completed"] == 8 and doc["mode"] == "open"
    sends = [s for s, _, _ in by_robot(doc, 0)]
    assert sends[-1] - sends[0] == pytest.approx(0.7, abs=0.03)  # 8 ticks, none waited for
    assert all(b - a <= 0.15 for a, b in itertools.pairwise(sends))
    gaps = [b - a for a, b in itertools.pairwise(fake.arrivals)]
    assert statistics.fmean(gaps) == pytest.approx(0.1, abs=0.02)  # the server saw the ticks
    assert fake.max_in_flight >= 2  # answers take 2.5 periods: requests overlap
    assert doc["achieved_hz"] == pytest.approx(10.0, rel=0.15)  # answers keep coming at R
    assert doc["deadline_misses"] == 8  # but each is 250 ms late for a 100 ms period


def test_deadline_misses_are_the_answers_slower_than_one_period(fake: Fake) -> None:
    fake.script = lambda i: ("vector", 0.14 if i % 4 == 3 else 0.005)
    doc = run_sync(config(fake.url, target_hz=10.0, num_prompts=8))
    assert doc["completed"] == 8
    assert doc["deadline_misses"] == 2 and doc["deadline_miss_ratio"] == 0.25
    assert doc["deadline_missed"] == [False, False, False, True] * 2
    assert doc["deadline_ms"] == 100.0
    assert doc["action_latency_ms_max"] >= 140.0 > doc["action_latency_ms_p50"]


def test_jitter_is_the_spread_of_the_intervals_between_actions(fake: Fake) -> None:
    steady = run_sync(config(fake.url, target_hz=10.0, num_prompts=10))
    fake.script = lambda i: ("vector", 0.005 if i % 2 else 0.045)  # 40 ms up and down
    shaky = run_sync(config(fake.url, target_hz=10.0, num_prompts=10))
    assert steady["jitter_ms"] < 15.0
    assert shaky["jitter_ms"] > steady["jitter_ms"] + 20.0
    assert shaky["jitter_ms"] == pytest.approx(40.0, abs=10.0)  # intervals of 60 and 140 ms
    assert shaky["deadline_misses"] == 0  # 45 ms is within the 100 ms period


def test_figures_from_known_answers() -> None:
    period = 0.1
    # Robot 0: answers at 0.05, 0.15, 0.30, 0.35 → intervals 100, 150, 50 ms.
    answers = [Answer(0, t, t, t + 0.05, 1, 7) for t in (0.0, 0.1, 0.25, 0.3)]
    answers[2].sent = 0.1  # sent late for its tick: arrived 0.2 after its tick's 0.25 + …
    answers.append(Answer(1, 0.05, 0.05, 0.2, 8, 7))  # 150 ms: a missed deadline, 8 actions
    answers.append(Answer(1, 0.2, 0.2, None, 0, 0, "connection error: reset"))
    doc = summarize(answers, robots=2, target_hz=1 / period, duration=0.4)
    assert doc["completed"] == 5 and doc["failed"] == 1
    r0, r1 = doc["per_robot"]
    assert r0["achieved_hz"] == pytest.approx(3 / 0.3)
    assert r0["jitter_ms"] == pytest.approx(statistics.pstdev([100.0, 150.0, 50.0]))
    assert r1["achieved_hz"] == pytest.approx(1 / 0.4)  # one answer: its count over the run
    assert r1["achieved_hz_per_action"] == pytest.approx(8 / 0.4)
    assert r1["jitter_ms"] is None
    assert doc["achieved_hz"] == pytest.approx((10.0 + 2.5) / 2)
    assert doc["jitter_ms"] == pytest.approx(r0["jitter_ms"])  # robots with two intervals
    assert doc["deadline_misses"] == 2  # 150 ms latency, and 200 ms latency (sent early)
    assert doc["deadline_miss_ratio"] == pytest.approx(2 / 5)
    assert doc["actions_per_chunk"] == pytest.approx(12 / 5)
    assert doc["actions_per_chunk_seen"] == [1, 8]
    assert Answer(0, 0.0, 0.01, 0.105).missed(period)  # in time after sending, not after its tick
    assert not Answer(0, 0.0, 0.0, 0.1).missed(period)


# -- chunks, failures -------------------------------------------------------------------


def test_a_chunk_is_k_actions_and_both_rates_are_reported(fake: Fake) -> None:
    fake.script = lambda i: ("chunk", 0.005)
    doc = run_sync(config(fake.url, robots=2, target_hz=10.0, duration=0.6))
    assert doc["failed"] == 0 and doc["completed"] == 12
    assert doc["actions_per_chunk"] == 8 and doc["action_dim"] == 7
    assert doc["total_actions"] == 8 * 12
    assert doc["achieved_hz"] == pytest.approx(10.0, rel=0.1)
    assert doc["achieved_hz_per_action"] == pytest.approx(8 * doc["achieved_hz"])
    assert doc["action_throughput"] == pytest.approx(8 * doc["request_throughput"])


def test_an_engine_error_and_a_gateway_error_are_failed_requests_with_reasons(
    fake: Fake,
) -> None:
    fake.script = lambda i: (("vector", "error", "http")[i % 3], 0.005)
    doc = run_sync(config(fake.url, target_hz=20.0, num_prompts=9))
    assert doc["completed"] == 3 and doc["failed"] == 6
    assert doc["errors_by_reason"] == {
        'the engine answered "error" (its log has the exception)': 3,
        "HTTP 503: deployment arm is not running": 3,
    }
    assert doc["action_latency_ms_p50"] > 0  # from the answers that were actions only
    assert doc["deadline_misses"] == 0 and doc["deadline_miss_ratio"] == 0.0
    assert not doc["meets_slo"]  # a run with failures does not count toward robots per GPU


def test_an_unreachable_server_fails_every_request_and_the_command_says_why(
    fake: Fake,
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = labctl("--backend", "openvla", "--base-url", f"http://127.0.0.1:{port}",
                    "--num-prompts", "3", "--target-hz", "50")  # fmt: skip
    assert result.exit_code == 8
    assert "all 3 requests failed: cannot connect to http://127.0.0.1:" in result.output
    assert "connection refused" in result.output


# -- what is sent -----------------------------------------------------------------------


def test_each_frames_body_is_built_once_and_sent_as_it_was_made(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[bytes] = []
    real = vla.request

    def counting(image: np.ndarray, instruction: str, unnorm_key: str | None = None) -> bytes:
        made.append(real(image, instruction, unnorm_key))
        return made[-1]

    monkeypatch.setattr(vla, "request", counting)
    doc = run_sync(config(fake.url, robots=3, target_hz=20.0, num_prompts=24,
                          instruction="stack the cups"))  # fmt: skip
    assert doc["completed"] == 24
    assert len(made) == frames_mod.GENERATED_FRAMES == 8  # once per frame, not per request
    sent = {o.image.tobytes() for o in fake.observations}
    assert sent == {f.image.tobytes() for f in frames_mod.generated()}
    assert all(o.image.shape == (256, 256, 3) for o in fake.observations)
    assert {(o.instruction, o.unnorm_key) for o in fake.observations} == {
        ("stack the cups", "bridge_orig")
    }


def test_frames_are_read_from_a_folder_as_rgb(fake: Fake, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    rgba = np.dstack([rgb, np.full((48, 64), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b.png")
    Image.fromarray(rgb[:, :, 0], "L").save(tmp_path / "c.png")
    smooth = np.dstack([np.tile(np.linspace(0, 250, 64, dtype=np.uint8), (48, 1))] * 3)
    Image.fromarray(smooth).save(tmp_path / "d.jpg", quality=95)
    (tmp_path / ".hidden").write_text("not looked at")
    frames = from_dir(tmp_path)
    assert [(f.name, f.image.shape, str(f.image.dtype)) for f in frames] == [
        (name, (48, 64, 3), "uint8") for name in ("a.png", "b.png", "c.png", "d.jpg")
    ]
    assert np.array_equal(frames[0].image, rgb) and np.array_equal(frames[1].image, rgb)
    assert np.array_equal(frames[2].image, np.dstack([rgb[:, :, 0]] * 3))
    assert np.abs(frames[3].image.astype(int) - smooth).mean() < 3  # JPEG is lossy

    doc = run_sync(config(fake.url, num_prompts=4, target_hz=50.0, image_dir=tmp_path))
    assert doc["completed"] == 4 and doc["frames"] == 4 and doc["frame_size"] == "64×48"
    assert doc["frame_source"] == str(tmp_path)
    assert [o.image.tobytes() for o in fake.observations] == [f.image.tobytes() for f in frames]


def test_a_file_that_is_not_an_image_stops_the_run_before_anything_is_sent(
    fake: Fake, tmp_path: Path
) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    (tmp_path / "ok.png").write_bytes(buf.getvalue())
    (tmp_path / "notes.txt").write_text("camera calibration\n")
    result = labctl("--backend", "openvla", "--base-url", fake.url, "--image-dir", str(tmp_path))
    assert result.exit_code == 2
    assert result.output == (
        f"labctl: error: --image-dir {tmp_path}: notes.txt is not an image Pillow can read; "
        "remove it from the folder (PNG and JPEG frames are read)\n"
    )
    assert fake.paths == []
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="holds no files"):
        from_dir(empty)
    with pytest.raises(UsageError, match="no such folder"):
        from_dir(tmp_path / "missing")


def test_warmup_requests_are_sent_first_and_not_measured(fake: Fake) -> None:
    doc = run_sync(config(fake.url, robots=2, num_prompts=4, warmup=3, target_hz=50.0))
    assert len(fake.observations) == 3 + 4
    assert doc["completed"] == 4 and len(doc["robot_ids"]) == 4


def test_unnorm_key_none_sends_none(fake: Fake) -> None:
    result = labctl("--backend", "openvla", "--base-url", fake.url, "--num-prompts", "1",
                    "--unnorm-key", "none", "--instruction", "open the drawer", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [(o.instruction, o.unnorm_key) for o in fake.observations] == [("open the drawer", None)]


# -- the URL ----------------------------------------------------------------------------


def test_a_server_url_posts_to_act_and_a_gateway_url_to_its_deployments_act(fake: Fake) -> None:
    assert route("http://h:8000") == (Endpoint("http", "h", 8000, ""), "/act")
    assert route("http://h:8000/act") == (Endpoint("http", "h", 8000, ""), "/act")
    assert route("http://h:8080/vla/arm/") == (Endpoint("http", "h", 8080, "/vla/arm"), "/act")
    assert route("https://lab/vla/arm/act") == (Endpoint("https", "lab", 443, "/vla/arm"), "/act")
    assert deployment("http://h:8080/vla/arm") == deployment("http://h/vla/arm/act") == "arm"
    assert deployment("http://h:8000") is None
    run_sync(config(fake.url, num_prompts=1))
    doc = run_sync(config(fake.url + "/vla/arm", num_prompts=1))
    run_sync(config(fake.url + "/vla/arm/act", num_prompts=1))
    assert fake.paths == ["/act", "/vla/arm/act", "/vla/arm/act"]
    assert doc["url"] == fake.url + "/vla/arm" and doc["endpoint"] == "/act"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:8000", "is not an http(s) URL"),
        ("ftp://h/act", "is not an http(s) URL"),
        ("http://h:8000/v1/chat/completions", "that is an OpenAI path"),
        ("http://h:8080/vla", "name the deployment, e.g. http://h:8080/vla/NAME"),
        ("http://h:8000/act?x=1", "drop the query string"),
    ],
)
def test_a_bad_url_is_a_one_line_error_naming_the_fix(url: str, message: str) -> None:
    result = labctl("--backend", "openvla", "--base-url", url)
    assert result.exit_code == 2
    assert result.output.startswith("labctl: error: --base-url ")
    assert message in result.output and result.output.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--robots", "0"), "--robots 0 must be at least 1"),
        (("--target-hz", "0"), "--target-hz 0 must be a positive number"),
        (("--duration", "-1"), "--duration -1 must be a positive number of seconds"),
        (("--duration", "2", "--num-prompts", "5"), "give --duration S or --num-prompts N"),
        (("--num-prompts", "1", "--robots", "2"), "--num-prompts 1 is fewer than --robots 2"),
        (("--request-rate", "5"), "--request-rate is not for robots"),
        (("--max-concurrency", "2"), "--max-concurrency is not for robots"),
        (("--audio-seconds", "2"), "--audio-seconds is not for robots"),
        (("--sweep", "rate=1,2"), "--sweep rate=… is for text and speech"),
        (("--sweep", "robots=1,2.5"), "'2.5' must be a positive whole number"),
        (("--slo-ms", "0"), "--slo-ms 0 must be a positive number"),
        (("--instruction", " "), "--instruction must say what the robot should do"),
    ],
)
def test_robot_options_are_checked_before_anything_is_sent(
    fake: Fake, args: tuple[str, ...], message: str
) -> None:
    result = labctl("--backend", "openvla", "--base-url", fake.url, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1
    assert fake.paths == []


def test_help_says_where_requests_go_and_the_robot_defaults() -> None:
    text = " ".join(labctl("--help").output.split())
    assert (
        "posts to URL/act" in text and "http://HOST:PORT/vla/NAME (posts to /vla/NAME/act)" in text
    )
    assert f"[default: {frames_mod.INSTRUCTION}]" in text
    assert f"[default: {frames_mod.UNNORM_KEY}]" in text


def test_robot_options_without_the_robot_backend_say_so() -> None:
    for args in (("--robots", "4"), ("--open-loop",), ("--target-hz", "5"), ("--duration", "3")):
        result = labctl("--base-url", "http://h:1", *args)
        assert result.exit_code == 2
        assert f"{args[0]} is for robots: add --backend openvla" in result.output
    result = labctl("--base-url", "http://h:1", "--sweep", "robots=1,2")
    assert result.exit_code == 2 and "add --backend openvla" in result.output


# -- the command ------------------------------------------------------------------------


REPORT_FIELDS = ("completed", "failed", "duration", "robots", "target_hz", "achieved_hz",
                 "achieved_hz_per_action", "action_latency_ms_p50", "action_latency_ms_p90",
                 "action_latency_ms_p99", "action_latency_ms_mean", "action_latency_ms_max",
                 "jitter_ms", "deadline_miss_ratio", "actions_per_chunk", "errors_by_reason",
                 "mode", "backend")  # fmt: skip


def test_json_has_the_control_loop_fields(fake: Fake, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    result = labctl("--backend", "openvla", "--base-url", fake.url, "--robots", "2",
                    "--target-hz", "20", "--duration", "0.5", "--json", "--json-out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # warnings, if any, go to stderr
    assert doc == json.loads(out.read_text())
    assert all(key in doc for key in REPORT_FIELDS), set(REPORT_FIELDS) - set(doc)
    assert doc["backend"] == "openvla" and doc["mode"] == "closed"
    assert doc["robots"] == 2 and doc["target_hz"] == 20.0 and doc["failed"] == 0
    assert doc["completed"] == 20 and doc["requested_duration"] == 0.5
    assert (
        doc["action_latency_ms_p50"] <= doc["action_latency_ms_p90"] <= doc["action_latency_ms_p99"]
    )
    assert doc["action_latency_ms_p99"] <= doc["action_latency_ms_max"]
    assert len(doc["per_robot"]) == 2
    assert "latencies" not in doc and "robot_ids" not in doc  # only with --save-detailed
    assert doc["client_check"]["timestamps"] in ("kernel", "read")


def test_the_summary_labels_rates_per_chunk_and_per_action(fake: Fake, tmp_path: Path) -> None:
    import matplotlib.image

    fake.script = lambda i: ("chunk", 0.005)
    png = tmp_path / "run.png"
    result = labctl("--backend", "openvla", "--base-url", fake.url + "/vla/arm", "--robots", "2",
                    "--target-hz", "10", "--duration", "0.5", "--open-loop", "--plot", str(png))  # fmt: skip
    assert result.exit_code == 0, result.output
    lines: list[str] = result.output.splitlines()

    def value(label: str) -> str:
        return next(line for line in lines if line.startswith(label))[len(label) :].strip()

    assert value("Backend:") == f"openvla, open loop, {fake.url}/vla/arm/act"
    assert value("Robots:") == "2"
    assert value("Actions per chunk:") == "8 (of 7 values)"
    per_chunk = float(value("Achieved rate per robot (Hz, chunks/s):"))
    per_action = float(value("Achieved rate per robot (Hz, actions/s):"))
    assert per_chunk == pytest.approx(10.0, rel=0.2) and per_action == pytest.approx(
        8 * per_chunk, rel=0.01
    )
    assert value("Deadline (ms, one period at target):") == "100.00"
    assert value("Deadline misses:") == "0 of 10 (0.0%)"
    assert "P99 action latency (ms):" in result.output and "Jitter (ms" in result.output
    assert matplotlib.image.imread(png)[..., :3].std() > 0.05


def test_a_robot_sweep_finds_the_robots_per_gpu_and_plots_it(fake: Fake, tmp_path: Path) -> None:
    import matplotlib.image

    fake.serial, fake.script = True, lambda i: ("vector", 0.015)  # one at a time, 15 ms each
    png, out = tmp_path / "sweep.png", tmp_path / "sweep.json"
    result = labctl("--backend", "openvla", "--base-url", fake.url, "--target-hz", "10",
                    "--duration", "1.5", "--sweep", "robots=2,4,12", "--plot", str(png),
                    "--json-out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["sweep"] == {"parameter": "robots", "values": [2, 4, 12]}
    assert [r["robots"] for r in doc["runs"]] == [2, 4, 12]
    # 4 robots × 10 Hz × 15 ms keep the server 60% busy; 12 ask for 180%: answers queue up.
    four, eight = doc["runs"][1], doc["runs"][2]
    assert four["action_latency_ms_p99"] < 100.0 <= eight["action_latency_ms_p99"]
    assert eight["achieved_hz"] < 9.0
    assert doc["slo_ms"] == 100.0 and doc["robots_per_gpu"] == 4
    assert doc["headline"] == "robots per GPU at 10 Hz with p99 under 100 ms: 4"
    assert doc["headline"] in result.stdout.splitlines()
    assert "robots=12: completed" in result.output
    image = matplotlib.image.imread(png)
    assert image.shape[1] >= 1500 and image[..., :3].std() > 0.05


def test_robots_per_gpu_counts_up_to_the_first_run_that_misses() -> None:
    def run(robots: int, p99: float, hz: float = 5.0, failed: int = 0) -> dict[str, Any]:
        return {"robots": robots, "completed": 10, "failed": failed, "target_hz": 5.0,
                "achieved_hz": hz, "action_latency_ms_p99": p99}  # fmt: skip

    runs = [run(1, 80), run(2, 120), run(4, 190), run(8, 420), run(16, 150)]
    assert robots_per_gpu(runs, 200.0) == 4  # 16 passing after 8 failed is not capacity
    assert robots_per_gpu(runs, 100.0) == 1
    assert robots_per_gpu([run(1, 80, failed=1)], 200.0) == 0
    assert robots_per_gpu([run(1, 80, hz=4.0)], 200.0) == 0  # under the target rate
    assert headline(runs, 200.0) == "robots per GPU at 5 Hz with p99 under 200 ms: 4"


def test_the_live_view_shows_robots_latency_and_misses() -> None:
    p = Progress(total=40, sent=12, completed=10, failed=1, robots=4, phase="running",
                 latencies=[0.1, 0.2, 0.3], misses=2)  # fmt: skip
    p.started = time.perf_counter() - 1.0
    console = Console(width=200, record=True)
    console.print(_progress_view(p, "robots=4"))
    text = console.export_text()
    for part in ("robots=4", "4 robots", "sent 12/40", "completed 10", "failed 1", "in flight 1",
                 "answers/s", "p50 latency 200.0 ms", "deadline misses 2"):  # fmt: skip
        assert part in text
