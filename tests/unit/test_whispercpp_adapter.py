"""The whisper.cpp adapter, and what vLLM's adapter knows of Whisper."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.engines import Upstream, adapter
from labctl.errors import EngineError
from labctl.gpu.sample import DeviceSample

#: whisper-server 1.8.5's load, as it prints it (stderr).
LOAD_LOG = """\
whisper_init_from_file_with_params_no_state: loading model from 'ggml-tiny.bin'
whisper_model_load: loading model
whisper_model_load: n_vocab       = 51865
whisper_model_load:          CPU total size =    77.11 MB
whisper_model_load: model size    =    77.11 MB
whisper_init_state: kv self size  =    3.15 MB
whisper_init_state: kv cross size =    9.44 MB
whisper_init_state: compute buffer (conv)   =   13.21 MB
whisper_init_state: compute buffer (decode) =   95.91 MB
whisper server listening at http://127.0.0.1:8178
"""

SETTINGS = {"name": "asr", "model": "/models/ggml-large-v3.bin", "args": {"threads": 4}}


def test_whisper_server_is_started_on_the_openai_path_without_fallback() -> None:
    kind = adapter("whispercpp")
    launch = kind.launch(SETTINGS, "127.0.0.1", 8178, [1])
    assert launch.argv == ["whisper-server", "-m", "/models/ggml-large-v3.bin", "--host",
                           "127.0.0.1", "--port", "8178", "--inference-path",
                           "/v1/audio/transcriptions", "-nf", "--threads", "4"]  # fmt: skip
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "1" and launch.health.path == "/health"
    asked = kind.launch({**SETTINGS, "args": {"temperature_inc": 0.2}}, "h", 1, [0])
    assert "-nf" not in asked.argv  # the deployment chose its own fallback


def test_whisper_server_serves_speech_one_request_at_a_time() -> None:
    kind = adapter("whispercpp")
    assert kind.serves(SETTINGS) == {"transcriptions", "translations"}
    assert kind.default_concurrency(SETTINGS, None) == 1
    assert kind.smoke(SETTINGS, "asr") is None  # health is all: it has no text endpoint
    assert kind.upstream["translations"] == Upstream("/v1/audio/transcriptions",
                                                     (("translate", "true"),))  # fmt: skip
    assert kind.metrics == {}  # no /metrics: nothing is scraped


def test_whisper_server_phases_come_from_its_load_lines() -> None:
    kind = adapter("whispercpp")
    phases = [p for line in LOAD_LOG.splitlines() if (p := kind.phase(line))]
    assert phases == ["load_weights", "profile", "api_server"]


def test_a_missing_or_foreign_model_is_refused_with_the_reason(tmp_path: Path) -> None:
    kind = adapter("whispercpp")
    device = DeviceSample(0, "NVIDIA GeForce RTX 3090", "GPU-0", "0000:01:00.0")
    with pytest.raises(EngineError, match="no such file"):
        kind.estimate({**SETTINGS, "model": str(tmp_path / "none.bin")}, device)


@pytest.mark.parametrize("engine", ["vllm", "sim"])
def test_vllm_serves_a_whisper_model_as_speech_and_reads_its_warmup(engine: str) -> None:
    kind = adapter(engine)
    assert kind.serves({"model": "openai/whisper-large-v3"}) == {"transcriptions", "translations"}
    assert kind.serves({"model": "Qwen/Qwen3-8B"}) == {"chat", "completions", "embeddings"}
    assert kind.smoke({"model": "openai/whisper-large-v3"}, "asr") is None
    line = (
        "(APIServer pid=1) INFO 12-02 10:00:09 [speech_to_text.py:98] Audio preprocessing "
        "warmup completed in 6.91s"
    )
    assert kind.phase(line) == "audio_warmup"
