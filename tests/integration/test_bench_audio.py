"""`labctl bench --backend openai-audio` against a real whisper.cpp whisper-server.

whisper-server takes the OpenAI form on ``--inference-path /v1/audio/transcriptions`` but
does not stream: it answers ``{"text": …}`` even when the form says ``stream=true``. The
bench measures that answer whole and says so. The model is a tiny random-weight one
(``tests/tinywhisper.py``), so the text is garbage but not empty, and each request takes
well under a second on one thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import json
from pathlib import Path
import subprocess
import urllib.request

import pytest

from tests.integration.conftest import Run
from tests.integration.lab import free_port, wait_for
from tests.tinywhisper import write_model


@pytest.fixture
def whisper_url(whisper_server: Path, tmp_path: Path) -> Iterator[str]:
    """A whisper-server serving a tiny random model on /v1/audio/transcriptions, one thread."""
    model = write_model(tmp_path / "ggml-tiny-random.bin")
    port = free_port()
    log = (tmp_path / "whisper-server.log").open("w")
    proc = subprocess.Popen(
        [str(whisper_server), "--inference-path", "/v1/audio/transcriptions", "-nf", "-t", "1",
         "--host", "127.0.0.1", "--port", str(port), "-m", str(model)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (tmp_path / "whisper-server.log").read_text()[-2000:]
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return bool(r.status == 200)

    try:
        wait_for(healthy, timeout=30, what="whisper-server /health")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_whisper_server_is_measured_with_rtfx_and_audio_seconds(
    whisper_url: str, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    out = tmp_path / "speech.json"
    run = labctl("bench", "--backend", "openai-audio",
                 "--base-url", whisper_url + "/v1/audio/transcriptions", "--model", "whisper-1",
                 "--audio-seconds", "2", "--num-prompts", "6", "--max-concurrency", "1",
                 "--output-len", "32", "--json-out", str(out), check=True)  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["failed"] == 0 and doc["completed"] == 6
    assert doc["backend"] == "openai-audio" and doc["endpoint"] == "/v1/audio/transcriptions"
    assert doc["audio_seconds"] == pytest.approx(12.0)
    assert doc["rtfx"] > 0
    assert doc["rtfx"] == pytest.approx(doc["audio_seconds"] / doc["duration"])
    assert doc["non_streamed_responses"] == 6  # whisper-server answers with one JSON document
    assert doc["median_ttft_ms"] == pytest.approx(doc["median_e2el_ms"])
    assert doc["total_output_tokens"] > 0  # counted from the (random) model's text
    assert doc["e2el_by_audio_bucket"]["<=5s"]["completed"] == 6
    assert "RTFx (Inverse Real-Time Factor):" in run.out
    assert "Total audio (s):                         12.00" in run.out
    assert "6 of 6 answers were one JSON document, not an event stream" in run.err


def test_a_url_whisper_server_does_not_serve_fails_each_request_with_its_reason(
    whisper_url: str, labctl: Callable[..., Run]
) -> None:
    run = labctl("bench", "--backend", "openai-audio",
                 "--base-url", whisper_url + "/v1/audio/translations", "--model", "whisper-1",
                 "--audio-seconds", "1", "--num-prompts", "2", "--json")  # fmt: skip
    assert run.code == 8
    doc = run.json()
    assert isinstance(doc, dict)
    assert doc["failed"] == 2 and doc["audio_seconds"] == 0.0 and doc["rtfx"] == 0.0
    assert list(doc["errors_by_reason"]) == ["HTTP 404: 'File Not Found (/v1/audio/translations)'"]
