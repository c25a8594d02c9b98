"""`labctl bench --backend openvla` against the OpenVLA twin (`labctl sim serve --model
openvla/openvla-7b`), a real server process on loopback speaking OpenVLA's ``/act``.

On an RTX 4090 the twin answers one action in about 200 ms, one request at a time as
OpenVLA's own server does: two robots at 2 Hz keep it 80% busy, well within their 500 ms
deadline, so they get the rate they ask for; its wrong-dataset answer is OpenVLA's HTTP 200
``"error"``, which the bench counts as a failure.
"""

from __future__ import annotations

from collections.abc import Callable
import json
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from labctl import vla
from tests.integration.conftest import Run
from tests.integration.lab import Lab, free_port

pytestmark = pytest.mark.integration

FIELDS = ("completed", "failed", "duration", "robots", "target_hz", "achieved_hz",
          "achieved_hz_per_action", "action_latency_ms_p50", "action_latency_ms_p90",
          "action_latency_ms_p99", "action_latency_ms_mean", "action_latency_ms_max",
          "jitter_ms", "deadline_miss_ratio", "actions_per_chunk", "errors_by_reason", "mode",
          "backend")  # fmt: skip


@pytest.fixture
def twin(lab: Lab) -> str:
    """The OpenVLA twin on a free port, as a user starts it; its URL once it serves."""
    port = free_port()
    proc = lab.start("sim", "serve", "--model", "openvla/openvla-7b", "--gpu", "rtx-4090",
                     "--port", str(port), "--load-gbps", "0", session=True)  # fmt: skip
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()  # printed once uvicorn listens
    if url != f"http://127.0.0.1:{port}":
        proc.wait(30)
        pytest.fail(f"the OpenVLA twin did not start: {proc.stderr.read() if proc.stderr else ''}")
    return url


def test_two_robots_at_2_hz_get_their_rate_from_the_twin(
    twin: str, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    out = tmp_path / "robots.json"
    run = labctl("bench", "--backend", "openvla", "--base-url", twin, "--robots", "2",
                 "--target-hz", "2", "--duration", "5", "--json-out", str(out), check=True)  # fmt: skip
    doc = json.loads(out.read_text())
    assert all(key in doc for key in FIELDS), set(FIELDS) - set(doc)
    assert doc["failed"] == 0 and doc["errors_by_reason"] == {}
    assert doc["robots"] == 2 and doc["target_hz"] == 2.0
    assert doc["backend"] == "openvla" and doc["mode"] == "closed" and doc["endpoint"] == "/act"
    assert doc["completed"] == 20  # each robot's ticks at 0, 0.5, … 4.5 s (+ 0.25 s for one)
    assert doc["achieved_hz"] == pytest.approx(2.0, abs=0.5)
    assert doc["actions_per_chunk"] == 1 and doc["action_dim"] == vla.ACTION_DIM
    assert doc["achieved_hz_per_action"] == pytest.approx(doc["achieved_hz"])
    # The twin's 4090 answers in ~200 ms (OpenVLA's ~5 Hz at batch 1), inside the 500 ms period.
    assert 100.0 < doc["action_latency_ms_p50"] < doc["deadline_ms"] == 500.0
    assert doc["deadline_miss_ratio"] == 0.0 and doc["meets_slo"]
    assert "Achieved rate per robot (Hz, chunks/s):" in run.out
    assert "Achieved rate per robot (Hz, actions/s):" in run.out


def test_frames_from_a_folder_and_the_engines_error_answer(
    twin: str, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        Image.fromarray(np.asarray(vla.frame(240, 320, seed=i))).save(frames / f"cam-{i}.png")
    run = labctl("bench", "--backend", "openvla", "--base-url", twin + "/act", "--image-dir",
                 str(frames), "--num-prompts", "3", "--target-hz", "4", "--json", check=True)  # fmt: skip
    doc = run.json()
    assert isinstance(doc, dict)
    assert doc["completed"] == 3 and doc["failed"] == 0
    assert doc["frames"] == 2 and doc["frame_size"] == "320×240"

    # openvla-7b holds many datasets' statistics: without a key its server answers "error".
    run = labctl("bench", "--backend", "openvla", "--base-url", twin, "--unnorm-key", "none",
                 "--num-prompts", "2", "--target-hz", "4", "--json")  # fmt: skip
    assert run.code == 8
    doc = run.json()
    assert isinstance(doc, dict)
    assert doc["completed"] == 0 and doc["failed"] == 2
    assert doc["errors_by_reason"] == {'the engine answered "error" (its log has the exception)': 2}
    assert 'all 2 requests failed: the engine answered "error"' in run.err
