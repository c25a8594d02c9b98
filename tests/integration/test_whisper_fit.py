"""The whisper.cpp plan against what a real whisper-server allocates, and the random-weight
test models against the real server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import json
from pathlib import Path
import re
import subprocess
import threading
import time
from typing import Any
import urllib.request
import uuid

import pytest

from labctl.audio import clip
from labctl.fit.whispercpp import WhisperCppPlan, plan_file
from tests.integration.conftest import Run
from tests.integration.lab import free_port, wait_for
from tests.tinywhisper import tests_model_source, write_model

pytestmark = pytest.mark.integration

#: The lines whisper.cpp prints at load, by plan field.
LOG_LINES = {
    "kv_self": "kv self size",
    "kv_cross": "kv cross size",
    "kv_pad": "kv pad  size",
    "compute_conv": "compute buffer (conv)",
    "compute_encode": "compute buffer (encode)",
    "compute_cross": "compute buffer (cross)",
    "compute_decode": "compute buffer (decode)",
    "weights": "CPU total size",
}
#: Geometries besides the default test model: a v3-like front end (128 mel bands,
#: 51,866 tokens) with more layers and heads, and shorter contexts with a wider state.
GEOMETRIES: dict[str, dict[str, Any]] = {
    "tiny-random": {},
    "v3-front-end": {"n_audio_state": 128, "n_audio_head": 4, "n_audio_layer": 2,
                     "n_text_layer": 2, "n_text_head": 8, "n_mels": 128, "n_vocab": 51866},
    "short-context": {"n_audio_state": 256, "n_audio_head": 8, "n_text_head": 4,
                      "n_audio_ctx": 750, "n_text_ctx": 300},
}  # fmt: skip


class Server:
    """A whisper-server process and the load log it printed (stderr)."""

    def __init__(self, binary: Path, model: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [str(binary), "-nf", "-t", "1", "--port", str(self.port), "-m", str(model),
             "--inference-path", "/v1/audio/transcriptions", *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def logged(self) -> dict[str, float]:
        """The MB figures of the load log, by plan field (once the decoder's is printed)."""
        wait_for(
            lambda: (
                any("compute buffer (decode)" in line for line in self.lines)
                or self.proc.poll() is not None
            ),
            what="whisper-server's load log",
        )
        out: dict[str, float] = {}
        for field, label in LOG_LINES.items():
            for line in self.lines:
                m = re.search(re.escape(label) + r"\s*=\s*([0-9.]+) MB", line)
                if m:
                    out[field] = float(m.group(1))
        assert len(out) == len(LOG_LINES), "\n".join(self.lines[-20:])
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def serve(whisper_server: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(model: Path, *flags: str) -> Server:
        server = Server(whisper_server, model, *flags)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def close_to_log(plan: WhisperCppPlan, logged: dict[str, float]) -> list[str]:
    """Figures that differ from the log by more than 2%, beyond the log's 0.01 MB rounding."""
    misses = []
    for field, printed in logged.items():
        planned = getattr(plan, field) / 1e6
        if abs(planned - printed) > max(0.02 * printed, 0.005 + 1e-9):
            misses.append(f"{field}: planned {planned:.3f} MB, whisper-server printed {printed} MB")
    return misses


@pytest.mark.parametrize("name", GEOMETRIES)
def test_plan_matches_what_whisper_server_allocates(
    name: str, tmp_path: Path, serve: Callable[..., Server]
) -> None:
    model = write_model(tmp_path / f"{name}.bin", **GEOMETRIES[name])
    logged = serve(model).logged()
    assert not close_to_log(plan_file(model), logged)


def test_plan_matches_without_flash_attention(tmp_path: Path, serve: Callable[..., Server]) -> None:
    model = write_model(tmp_path / "m.bin", n_audio_state=128, n_audio_head=8)
    logged = serve(model, "-nfa").logged()
    plan = plan_file(model, flash_attn=False)
    assert not close_to_log(plan, logged)
    # The attention scores of every head (1,500² f32 each) are what the flag costs.
    assert plan.compute_encode > plan_file(model).compute_encode + 8 * 1500 * 1500 * 4 * 0.9


def test_plan_matches_the_released_tiny_geometry(serve: Callable[..., Server]) -> None:
    # whisper.cpp's own test model: tiny's real header, no tensors; the server still
    # allocates every buffer at the released sizes.
    source = tests_model_source()
    assert not close_to_log(plan_file(source), serve(source).logged())


def test_labctl_fit_plans_a_ggml_file(
    tmp_path: Path, labctl: Callable[..., Run], serve: Callable[..., Server]
) -> None:
    model = write_model(tmp_path / "m.bin")
    doc = labctl("fit", str(model), "--json", check=True).json()
    assert isinstance(doc, dict)
    logged = serve(model).logged()
    assert doc["engine"] == "whispercpp" and doc["hparams"]["n_audio_state"] == 64
    assert abs(doc["compute_decode_bytes"] / 1e6 - logged["compute_decode"]) <= 0.005 + 1e-9
    assert abs(doc["kv_cross_bytes"] / 1e6 - logged["kv_cross"]) <= 0.005 + 1e-9
    text = labctl("fit", str(model), check=True).out
    assert "compute (decode)" in text and f"{logged['compute_decode']:.2f} MB" in text


def transcribe(url: str, wav: bytes) -> tuple[dict[str, object], float]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="clip.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + wav
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        f"{url}/v1/audio/transcriptions",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    started = time.monotonic()
    with urllib.request.urlopen(req, timeout=30) as r:
        doc = json.loads(r.read())
    return doc, time.monotonic() - started


def test_random_weight_model_transcribes_to_text_quickly(
    tmp_path: Path, serve: Callable[..., Server]
) -> None:
    server = serve(write_model(tmp_path / "m.bin", seed=3))

    def healthy() -> bool:
        with contextlib.closing(urllib.request.urlopen(f"{server.url}/health", timeout=2)) as r:
            return bool(r.status == 200)

    wait_for(healthy, what="whisper-server /health")
    doc, seconds = transcribe(server.url, clip(3))
    assert isinstance(doc["text"], str) and doc["text"].strip(), doc
    assert seconds < 2.0
