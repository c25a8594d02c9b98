"""``labctl bench --backend openai-audio`` against an in-process fake transcription server.

The fake speaks vLLM's speech-to-text protocol (a multipart form in; ``transcription.chunk``
events with a final usage chunk and ``[DONE]`` out) or, like whisper-server, answers the
form with one JSON document. It records what it was sent, so the tests check the form
fields themselves, and times its chunks, so they check TTFT and ITL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
import json
from pathlib import Path
import threading
from typing import Any

from aiohttp import web
from click.testing import CliRunner
import pytest
import soundfile

from labctl import audio
from labctl.bench.audio import by_bucket, estimate_tokens, from_dir, generated, parse_seconds, route
from labctl.bench.http import Endpoint
from labctl.bench.run import BenchConfig, run_sync
from labctl.cli.main import cli
from labctl.errors import UsageError

FIRST_S = 0.05  # the fake's delay before its first chunk
GAP_S = 0.02  # and between chunks
WORDS = ["hello", " there", " world"]


@dataclass
class Fake:
    """What the fake transcription server was sent, and how it answers."""

    url: str = ""
    #: "sse" (vLLM), or "json" (whisper-server: one document whatever ``stream`` says).
    mode: str = "sse"
    #: Clips (by file name) answered with HTTP 500.
    fail: set[str] = field(default_factory=set)
    forms: list[dict[str, Any]] = field(default_factory=list)
    hits: list[str] = field(default_factory=list)

    async def transcribe(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(f"{request.method} {request.path}")
        post = await request.post()
        upload = post["file"]
        assert isinstance(upload, web.FileField)
        sent: dict[str, Any] = {k: v for k, v in post.items() if k != "file"}
        sent["file"] = (upload.filename, upload.content_type, upload.file.read())
        self.forms.append(sent)
        if upload.filename in self.fail:
            return web.json_response({"error": {"message": "engine fell over"}}, status=500)
        if self.mode == "json":
            await asyncio.sleep(FIRST_S)
            return web.json_response({"text": "".join(WORDS)})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(FIRST_S)
        for i, word in enumerate(WORDS):
            if i:
                await asyncio.sleep(GAP_S)
            chunk = {"object": "transcription.chunk", "choices": [{"delta": {"content": word}}],
                     "usage": {"prompt_tokens": 204, "completion_tokens": i + 1}}  # fmt: skip
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        final = {"object": "transcription.chunk", "choices": [],
                 "usage": {"prompt_tokens": 204, "completion_tokens": 7, "total_tokens": 211}}  # fmt: skip
        await resp.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
        return resp

    async def models(self, request: web.Request) -> web.Response:
        self.hits.append(f"{request.method} {request.path}")
        return web.json_response({"data": [{"id": "whisper-large-v3"}]})


@pytest.fixture
def fake() -> Iterator[Fake]:
    """The fake on a loopback port, run by its own event loop in a thread."""
    server = Fake()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, web.AppRunner] = {}

    async def start() -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/audio/transcriptions", server.transcribe)
        app.router.add_post("/v1/audio/translations", server.transcribe)
        app.router.add_get("/v1/models", server.models)
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
    base: dict[str, Any] = {"model": "whisper-large-v3", "num_prompts": 4, "max_concurrency": 1,
                            "output_len": 64, "backend": "openai-audio", "audio_seconds": (2.0,)}  # fmt: skip
    return BenchConfig(url, **(base | kw))


def labctl(*args: str) -> Any:
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["bench", *args])


# -- what is sent ---------------------------------------------------------------------


def test_each_request_sends_vllms_form_fields_and_the_clip_as_a_wav(fake: Fake) -> None:
    doc = run_sync(config(fake.url + "/v1/audio/transcriptions", output_len=77))
    assert doc["completed"] == 4 and doc["failed"] == 0
    assert len(fake.forms) == 4
    clip = generated([2.0])[0]  # the same seed: the same bytes
    for form in fake.forms:
        assert form["file"] == (clip.name, "audio/wav", clip.wav)
        assert {k: v for k, v in form.items() if k != "file"} == {
            "model": "whisper-large-v3",
            "max_completion_tokens": "77",
            "stream": "true",
            "language": "en",
            "stream_include_usage": "true",
            "stream_continuous_usage_stats": "true",
        }
    assert doc["backend"] == doc["endpoint_type"] == "openai-audio"
    assert doc["endpoint"] == "/v1/audio/transcriptions"


def test_translations_and_a_bare_server_url_route_where_they_say(fake: Fake) -> None:
    run_sync(config(fake.url + "/v1/audio/translations", num_prompts=1))
    run_sync(config(fake.url, num_prompts=1))  # a server URL: transcriptions
    assert [h for h in fake.hits if h.startswith("POST")] == [
        "POST /v1/audio/translations",
        "POST /v1/audio/transcriptions",
    ]


def test_clips_are_cycled_and_every_clip_is_sent_as_the_same_bytes(fake: Fake) -> None:
    run_sync(config(fake.url, num_prompts=5, audio_seconds=(1.0, 3.0)))
    names = [f["file"][0] for f in fake.forms]
    assert names == ["clip-000-1s.wav", "clip-001-3s.wav"] * 2 + ["clip-000-1s.wav"]
    assert fake.forms[0]["file"][2] == fake.forms[2]["file"][2] != fake.forms[1]["file"][2]


# -- what is measured -----------------------------------------------------------------


def test_ttft_itl_and_usage_come_from_the_transcription_stream(fake: Fake) -> None:
    doc = run_sync(config(fake.url, num_prompts=3))
    assert doc["completed"] == 3
    for ttft, itls, latency in zip(doc["ttfts"], doc["itls"], doc["latencies"], strict=True):
        assert FIRST_S <= ttft < FIRST_S + 1.0
        assert len(itls) == len(WORDS) - 1  # one sample per later chunk with choices
        assert all(GAP_S * 0.9 <= g < GAP_S + 1.0 for g in itls)
        assert latency == pytest.approx(ttft + sum(itls))  # the usage chunk does not end it
    assert doc["output_lens"] == [7, 7, 7]  # the final usage chunk, not the 3 chunks
    assert doc["input_lens"] == [204, 204, 204]  # as the server counted the audio prompt
    assert doc["generated_texts"] == ["hello there world"] * 3
    assert doc["total_chunks"] == 9 and doc["non_streamed_responses"] == 0
    assert doc["prompt_len_error_mean"] is None  # there is no requested prompt length to check
    assert not any("JSON document" in w for w in doc["warnings"])


def test_a_plain_json_answer_is_measured_whole_and_said_so(fake: Fake) -> None:
    fake.mode = "json"
    doc = run_sync(config(fake.url, num_prompts=3))
    assert doc["completed"] == 3 and doc["failed"] == 0
    assert doc["ttfts"] == doc["latencies"]  # TTFT is the whole answer's time
    assert all(t >= FIRST_S for t in doc["ttfts"])
    assert doc["itls"] == [[], [], []] and doc["mean_tpot_ms"] == 0.0
    assert doc["output_lens"] == [estimate_tokens("hello there world")] * 3 == [4] * 3
    assert doc["non_streamed_responses"] == 3 and doc["total_chunks"] == 0
    assert any(w.startswith("3 of 3 answers were one JSON document") for w in doc["warnings"])
    assert any("estimated from their text" in w for w in doc["warnings"])


def test_rtfx_is_the_audio_that_completed_over_the_benchmark_duration(fake: Fake) -> None:
    fake.fail = {"clip-001-6s.wav"}
    doc = run_sync(config(fake.url, num_prompts=6, audio_seconds=(2.0, 6.0, 40.0)))
    assert doc["completed"] == 4 and doc["failed"] == 2
    assert doc["errors_by_reason"] == {"HTTP 500: engine fell over": 2}
    assert doc["audio_seconds"] == pytest.approx(2 * 2.0 + 2 * 40.0)  # the 6 s clips failed
    assert doc["rtfx"] == pytest.approx(doc["audio_seconds"] / doc["duration"])
    assert doc["audio_clips"] == 3 and doc["audio_source"] == "generated"
    rows = doc["e2el_by_audio_bucket"]
    assert list(rows) == ["<=5s", "<=10s", "<=60s"]
    assert rows["<=10s"] == {"completed": 0, "failed": 2, "audio_seconds": 0.0,
                             "mean_e2el_ms": 0.0, "median_e2el_ms": 0.0, "p95_e2el_ms": 0.0}  # fmt: skip
    assert rows["<=5s"]["completed"] == 2 and rows["<=60s"]["audio_seconds"] == 80.0
    assert rows["<=5s"]["mean_e2el_ms"] >= (FIRST_S + 2 * GAP_S) * 1000


def test_buckets_group_by_length_in_order_with_mean_median_p95() -> None:
    rows = by_bucket([70.0, 1.0, 3.0, 4.9, 5.0, 8.0, 29.0],
                     [0.9, 0.1, 0.2, 0.3, None, 0.5, 0.6])  # fmt: skip
    assert list(rows) == ["<=5s", "<=10s", "<=30s", ">60s"]
    five = rows["<=5s"]
    assert (five["completed"], five["failed"]) == (3, 1)
    assert five["audio_seconds"] == pytest.approx(8.9)
    assert five["mean_e2el_ms"] == pytest.approx(200.0)
    assert five["median_e2el_ms"] == pytest.approx(200.0)
    assert five["p95_e2el_ms"] == pytest.approx(290.0)  # between 200 and 300, linearly
    assert rows[">60s"]["median_e2el_ms"] == pytest.approx(900.0)


# -- the clips and the URL --------------------------------------------------------------


def test_a_folder_of_audio_is_read_with_its_lengths_and_non_wav_sent_as_wav(tmp_path: Path) -> None:
    (tmp_path / "b.wav").write_bytes(audio.clip(3.0, seed=1))
    soundfile.write(tmp_path / "a.flac", audio.decode(audio.clip(1.5)), 16000, format="FLAC")
    (tmp_path / ".hidden").write_text("not looked at")
    (tmp_path / "sub").mkdir()
    clips = from_dir(tmp_path)
    assert [(c.name, c.seconds, c.bucket) for c in clips] == [("a.flac", 1.5, "<=5s"),
                                                             ("b.wav", 3.0, "<=5s")]  # fmt: skip
    assert audio.probe(clips[0].wav).format == "WAV"
    assert clips[1].wav == (tmp_path / "b.wav").read_bytes()


def test_a_file_that_is_not_audio_stops_the_run_before_anything_is_sent(
    fake: Fake, tmp_path: Path
) -> None:
    (tmp_path / "ok.wav").write_bytes(audio.clip(1.0))
    (tmp_path / "notes.txt").write_text("speaker list\n")
    result = labctl("--backend", "openai-audio", "--base-url", fake.url,
                    "--audio-dir", str(tmp_path), "--num-prompts", "3")  # fmt: skip
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"labctl: error: --audio-dir {tmp_path}: notes.txt is not usable "
                               "audio (not an audio file libsndfile can read")  # fmt: skip
    assert lines[0].endswith("remove it from the folder")
    assert fake.hits == []  # not even the model lookup
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="holds no files"):
        from_dir(empty)
    with pytest.raises(UsageError, match="no such folder"):
        from_dir(tmp_path / "missing")


def test_clip_lengths_parse_as_one_a_list_or_a_seeded_range() -> None:
    assert parse_seconds("4.7", 10) == (4.7,)
    assert parse_seconds("2, 5,12", 10) == (2.0, 5.0, 12.0)
    spread = parse_seconds("1-30", 100, seed=3)
    assert len(spread) == 32 and all(1 <= s <= 30 for s in spread)
    assert spread == parse_seconds("1-30", 100, seed=3) != parse_seconds("1-30", 100, seed=4)
    assert len(parse_seconds("1-30", 5)) == 5
    for bad, message in (("abc", "is not a number"), ("0", "above 0"), ("5-2", "low end"),
                         ("2,inf", "above 0"), ("4000", "at most 3600")):  # fmt: skip
        with pytest.raises(UsageError, match=message):
            parse_seconds(bad, 10)


def test_a_url_that_is_not_a_speech_route_is_a_one_line_error_naming_the_fix() -> None:
    assert route("http://h:8000/v1/audio/transcriptions") == (
        Endpoint("http", "h", 8000, ""), "/v1/audio/transcriptions")  # fmt: skip
    assert route("http://h/lab/v1/audio/translations/") == (
        Endpoint("http", "h", 80, "/lab"), "/v1/audio/translations")  # fmt: skip
    assert route("http://h:9/v1") == (Endpoint("http", "h", 9, ""), "/v1/audio/transcriptions")
    result = labctl("--backend", "openai-audio", "--base-url", "http://h:8000/v1/completions",
                    "--audio-seconds", "2")  # fmt: skip
    assert result.exit_code == 2
    assert result.output == (
        "labctl: error: --base-url 'http://h:8000/v1/completions': --backend openai-audio posts "
        "to /v1/audio/transcriptions or /v1/audio/translations; give a URL whose path ends in one "
        "of them, e.g. http://127.0.0.1:8000/v1/audio/transcriptions\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "needs its clips: give --audio-dir DIR"),
        (("--audio-seconds", "2", "--audio-dir", "."), "not both"),
        (("--audio-seconds", "2", "--endpoint", "chat"), "--endpoint is for text"),
        (("--audio-seconds", "x"), "'x' is not a number"),
    ],
)
def test_speech_options_are_checked_before_anything_is_sent(
    fake: Fake, args: tuple[str, ...], message: str
) -> None:
    result = labctl("--backend", "openai-audio", "--base-url", fake.url, *args)
    assert result.exit_code == 2 and message in result.output
    assert fake.hits == []


def test_audio_options_without_the_speech_backend_say_so() -> None:
    result = labctl("--audio-seconds", "2", "--base-url", "http://h:1")
    assert result.exit_code == 2
    assert "--audio-seconds is for speech: add --backend openai-audio" in result.output


# -- the command ------------------------------------------------------------------------


def test_the_summary_prints_rtfx_audio_and_latency_by_length(fake: Fake, tmp_path: Path) -> None:
    import matplotlib.image

    png = tmp_path / "run.png"
    result = labctl("--backend", "openai-audio", "--base-url", fake.url, "--audio-seconds", "2,7",
                    "--num-prompts", "4", "--max-concurrency", "2", "--plot", str(png))  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.output
    rtfx = next(
        line for line in out.splitlines() if line.startswith("RTFx (Inverse Real-Time Factor):")
    )
    assert float(rtfx.split()[-1]) > 0
    assert "Total audio (s):                         18.00" in out
    assert "Streamed answers:                        4 of 4" in out
    assert "E2EL by Audio Length" in out
    assert any(line.startswith("<=5s") and line.split()[1] == "2" for line in out.splitlines())
    assert any(line.startswith("<=10s") and line.split()[1] == "2" for line in out.splitlines())
    assert "GET /v1/models" in fake.hits  # the model came from the server
    assert matplotlib.image.imread(png)[..., :3].std() > 0.05  # a single run plots too


def test_a_speech_sweep_saves_its_runs_and_plots_rtfx(fake: Fake, tmp_path: Path) -> None:
    import matplotlib.image

    png, out = tmp_path / "sweep.png", tmp_path / "sweep.json"
    result = labctl("--backend", "openai-audio", "--base-url", fake.url, "--model", "w",
                    "--audio-seconds", "3,12", "--num-prompts", "4", "--warmup", "2",
                    "--sweep", "concurrency=1,2", "--plot", str(png), "--json-out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "RTFx" in result.output  # each point's line
    doc = json.loads(out.read_text())
    assert [r["max_concurrency"] for r in doc["runs"]] == [1, 2]
    for run in doc["runs"]:
        assert run["completed"] == 4 and run["audio_seconds"] == pytest.approx(30.0)
        assert run["rtfx"] > 0 and set(run["e2el_by_audio_bucket"]) == {"<=5s", "<=30s"}
    assert len(fake.forms) == 2 * (2 + 4)  # the warm-up requests are sent, not measured
    image = matplotlib.image.imread(png)
    assert image.shape[1] >= 2000  # four columns: RTFx and latency by length added
    assert image[..., :3].std() > 0.05
