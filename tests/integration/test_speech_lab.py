"""Speech in a lab: a chat twin, a Whisper twin and a real whisper-server behind one listener,
reached with the real ``openai`` client."""

from __future__ import annotations

from collections.abc import Callable
import io
import json
from pathlib import Path
import re
import urllib.request

import openai
import pytest

from labctl import audio
from tests.integration.conftest import Run
from tests.integration.lab import FAST_TWIN, Daemon, Lab, get, wait_for

pytestmark = pytest.mark.integration

SPEECH_TWIN = "{ time_scale = 0.05, load_gbps = 0, gpu_memory_utilization = 0.3 }"
CHAT_TWIN = FAST_TWIN.replace(" }", ", gpu_memory_utilization = 0.5 }")


def speech_lab(tmp_path: Path, whisper_server: Path) -> Path:
    from tests.tinywhisper import write_model

    model = write_model(tmp_path / "ggml-tiny-random.bin", seed=1)
    config = tmp_path / "lab.toml"
    config.write_text(
        '[lab]\ngpu_backend = "sim"\nsim_gpus = "1xrtx-3090"\n\n[dashboard]\ninterval = 0.5\n\n'
        '[deployments.chat]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\nstop_grace = 5\n'
        f"args = {CHAT_TWIN}\n\n"
        '[deployments.asr]\nengine = "sim"\nmodel = "openai/whisper-large-v3"\n'
        f'aliases = ["whisper-1"]\nstop_grace = 5\nargs = {SPEECH_TWIN}\n\n'
        f'[deployments.cpp]\nengine = "whispercpp"\nmodel = "{model}"\nbinary = "{whisper_server}"\n'
        "stop_grace = 5\nrtfx_floor = 0.5\nargs = { threads = 1 }\n"
    )
    return config


@pytest.fixture
def speech(lab: Lab, tmp_path: Path, whisper_server: Path) -> Daemon:
    d = lab.up("--config", str(speech_lab(tmp_path, whisper_server)))
    for name in ("chat", "asr", "cpp"):
        d.wait_state(name, "ready", timeout=60)
    return d


def client(d: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def wav(seconds: float, seed: int = 0) -> tuple[str, bytes, str]:
    return ("clip.wav", audio.clip(seconds, seed=seed), "audio/wav")


def series(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # openai: translations
def test_one_listener_serves_chat_and_speech_to_the_twin_and_to_whisper_server(
    speech: Daemon, lab: Lab, labctl: Callable[..., Run]
) -> None:
    c = client(speech)
    chat = c.chat.completions.create(model="chat", max_tokens=3,
                                     messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert chat.choices[0].message.content

    # whisper-server, through the gateway: the form's model is the deployment's name.
    text = c.audio.transcriptions.create(model="cpp", file=wav(3.0))
    assert text.text.strip(), "the random-weight model decodes tokens: non-empty text"
    translated = c.audio.translations.create(model="cpp", file=wav(2.0, seed=2))
    assert isinstance(translated.text, str)
    plain = c.audio.transcriptions.create(model="cpp", file=wav(2.0), response_format="text")
    assert isinstance(plain, str) and plain.strip()

    # The twin of Whisper large-v3, by its alias: vLLM's answer, usage in audio seconds.
    twin = c.audio.transcriptions.create(model="whisper-1", file=wav(4.0))
    assert twin.text and twin.usage is not None
    assert twin.usage.type == "duration" and twin.usage.seconds == 4
    verbose = c.audio.transcriptions.create(model="asr", file=wav(4.0),
                                            response_format="verbose_json")  # fmt: skip
    assert verbose.segments and float(verbose.duration) == pytest.approx(4.0)  # a string in vLLM

    # Streamed through the gateway event by event.
    with c.audio.transcriptions.with_streaming_response.create(
        model="asr", file=wav(6.0), stream=True
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert len(chunks) > 2 and all(ch["object"] == "transcription.chunk" for ch in chunks)
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])

    # A chat model does not serve speech, and the speech model does not chat.
    with pytest.raises(openai.BadRequestError, match="does not serve transcriptions"):
        c.audio.transcriptions.create(model="chat", file=wav(1.0))
    with pytest.raises(openai.BadRequestError, match="does not serve chat"):
        c.chat.completions.create(model="cpp", max_tokens=1,
                                  messages=[{"role": "user", "content": "hi"}])  # fmt: skip

    metrics = get(speech.url + "/metrics")
    assert series(metrics, "labctl_gateway_audio_seconds_total", model="cpp") == pytest.approx(7.0)
    assert series(metrics, "labctl_gateway_audio_seconds_total", model="asr") == pytest.approx(14.0)
    assert series(metrics, "labctl_gateway_realtime_factor", model="cpp") == pytest.approx(7 / 60)
    assert series(metrics, "labctl_gateway_rtfx_floor", model="cpp") == 0.5
    assert series(metrics, "labctl_gateway_rtfx_floor", model="asr") == 1.0
    assert 'labctl_gateway_rtfx_floor{model="chat"}' not in metrics
    assert series(metrics, "labctl_gateway_audio_request_duration_seconds_count", model="asr",
                  audio_length="<=5s") == 2  # fmt: skip
    assert series(metrics, "labctl_gateway_audio_request_duration_seconds_count", model="asr",
                  audio_length="<=10s") == 1  # fmt: skip

    def status() -> str | None:
        out = str(labctl("status", "--url", speech.url, home=lab.home, check=True).out)
        return out if re.search(r"cpp .*\n  speech: RTFx 0\.1\d× \(floor 0\.50×\)", out) else None

    shown = wait_for(status, 20, "the speech line in labctl status")
    assert "chat" in shown and not re.search(r"chat .*\n  speech", shown)


def raw_post(url: str, body: bytes, content_type: str) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, body, {"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def form(*parts: tuple[str, bytes, str | None]) -> tuple[bytes, str]:
    out = io.BytesIO()
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(b"--b0undary\r\nContent-Disposition: %s\r\n\r\n%s\r\n" % (disp.encode(), value))
    out.write(b"--b0undary--\r\n")
    return out.getvalue(), "multipart/form-data; boundary=b0undary"


@pytest.mark.parametrize("model", ["asr", "cpp"])
def test_bad_speech_requests_get_an_error_in_openais_envelope(speech: Daemon, model: str) -> None:
    url = speech.url + "/v1/audio/transcriptions"
    cases: dict[str, tuple[tuple[bytes, str], int, str]] = {
        "not audio": (
            form(
                ("model", model.encode(), None),
                ("file", b"this is a text file, not audio\n" * 20, "notes.wav"),
            ),
            400,
            "Invalid or unsupported audio file" if model == "asr" else "engine answered HTTP 400",
        ),
        "empty": (
            form(("model", model.encode(), None), ("file", b"", "empty.wav")),
            400,
            "the file is empty",
        ),
        "26 MiB": (
            form(("model", model.encode(), None), ("file", b"RIFF" + bytes(26 * 2**20), "big.wav")),
            400,
            "Maximum file size exceeded",
        ),
        "no file": (form(("model", model.encode(), None)), 400, "the form has no file field"),
    }
    for what, ((body, ctype), status, says) in cases.items():
        code, doc = raw_post(url, body, ctype)
        assert code == status, (what, code, doc)
        err = doc["error"]
        assert isinstance(err, dict) and re.search(re.escape(says), str(err["message"])), (
            what,
            doc,
        )
        assert {"message", "type", "param", "code"} <= set(err), (what, doc)  # OpenAI's envelope
        assert err["type"] in ("invalid_request_error", "BadRequestError"), (what, doc)  # vLLM's
    if model == "asr":  # vLLM refuses SubRip; whisper.cpp writes it
        with pytest.raises(openai.BadRequestError, match="only support response_format"):
            client(speech).audio.transcriptions.create(model=model, file=wav(1.0),
                                                       response_format="srt")  # fmt: skip
    else:
        srt = client(speech).audio.transcriptions.create(model=model, file=wav(1.0),
                                                         response_format="srt")  # fmt: skip
        assert "-->" in str(srt)


def test_fit_of_a_lab_toml_with_a_whispercpp_model_that_is_not_ggml_names_the_key(
    labctl: Callable[..., Run], tmp_path: Path, whisper_server: Path
) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"GGUF" + bytes(64))
    config = tmp_path / "lab.toml"
    config.write_text(
        '[lab]\ngpu_backend = "sim"\nsim_gpus = "1xrtx-3090"\n\n'
        f'[deployments.cpp]\nengine = "whispercpp"\nmodel = "{bogus}"\nbinary = "{whisper_server}"\n'
    )
    r = labctl("up", "--config", str(config))  # refused before anything starts
    assert r.code != 0 and "deployments.cpp.model" in r.err and "ggml" in r.err, r.err


def test_a_full_replace_deploy_of_whisper_server_under_bench_load_fails_no_request(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path, whisper_server: Path
) -> None:
    import subprocess
    import sys
    import time

    from tests.tinywhisper import write_model

    d = lab.up("--config", str(speech_lab(tmp_path, whisper_server)))
    old = d.wait_state("cpp", "ready", timeout=60)
    other = write_model(tmp_path / "ggml-tiny-other.bin", seed=7)
    out = tmp_path / "bench.json"
    bench = subprocess.Popen(
        [sys.executable, "-m", "labctl", "bench", "--backend", "openai-audio", "--base-url",
         d.url + "/v1/audio/transcriptions", "--model", "cpp", "--audio-seconds", "2",
         "--num-prompts", "40", "--max-concurrency", "2", "--request-rate", "8",
         "--json-out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(__import__("os").environ, LABCTL_HOME=str(lab.home)),
    )  # fmt: skip
    try:
        time.sleep(1.5)  # the load is running
        assert bench.poll() is None, bench.communicate()
        record = labctl("deploy", "cpp", "--set", f"model={other}", "--url", d.url, "--json",
                        home=lab.home, check=True).json()  # fmt: skip
        assert isinstance(record, dict) and record["outcome"] == "committed", record
        steps = [s["name"] for s in record["steps"]]
        assert steps[:4] == ["preflight", "drain", "stop", "verify_release"], steps
        _, err = bench.communicate(timeout=120)
    finally:
        bench.kill()
    assert bench.returncode == 0, err
    result = json.loads(out.read_text())
    assert result["failed"] == 0 and result["completed"] == 40, result.get("errors_by_reason")
    assert result["audio_seconds"] == pytest.approx(80.0) and result["rtfx"] > 0
    new = d.wait_state("cpp", "ready")
    assert new["revision"] == old["revision"] + 1 and new["model"] == str(other)


def test_the_openai_client_talks_to_whisper_server_directly(
    tmp_path: Path, whisper_server: Path
) -> None:
    import subprocess

    from tests.integration.lab import free_port
    from tests.tinywhisper import write_model

    model = write_model(tmp_path / "ggml-tiny-random.bin", seed=3)
    port = free_port()
    proc = subprocess.Popen(
        [str(whisper_server), "-m", str(model), "--port", str(port), "-t", "1", "-nf",
         "--inference-path", "/v1/audio/transcriptions"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(url + "/health"), 20, "whisper-server to listen")
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        assert c.audio.transcriptions.create(model="whisper-1", file=wav(2.0)).text.strip()
        with c.audio.transcriptions.with_streaming_response.create(
            model="whisper-1", file=wav(2.0), stream=True
        ) as resp:  # it does not stream: one JSON answer, which the gateway passes on as is
            assert resp.headers["content-type"].startswith("application/json")
            assert json.loads(resp.read())["text"].strip()
    finally:
        proc.terminate()
        proc.wait(10)
