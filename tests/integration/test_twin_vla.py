"""The twin of OpenVLA as a robot's client uses it: `labctl sim serve --model openvla/openvla-7b`
with OpenVLA's README client (``requests`` + ``json_numpy``), the double-encoded form, bad
input, OpenVLA-OFT's chunks, batching, its log lines and its memory on the simulated GPU."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
import json
import signal
import time
from typing import Any

import json_numpy
import numpy as np
import pytest
import requests

from labctl import vla
from labctl.catalog.gpus import gpu as catalog_gpu
from labctl.gpu.sim import SimBackend, SimMachine
from labctl.sim import vla as step
from labctl.units import MiB
from tests.integration.lab import Lab, Twin

pytestmark = pytest.mark.integration

OPENVLA = "openvla/openvla-7b"
OFT = "moojink/openvla-7b-oft-finetuned-libero-spatial"


@pytest.fixture
def patched() -> Iterator[None]:
    """``json_numpy.patch()`` as OpenVLA's README has the client do, undone afterwards (it
    replaces the ``json`` module's functions for the whole process)."""
    saved = json.dumps, json.loads, json.dump, json.load
    json_numpy.patch()
    try:
        yield
    finally:
        json.dumps, json.loads, json.dump, json.load = saved


@pytest.fixture
def twin(lab: Lab) -> Twin:
    return lab.twin("--model", OPENVLA, "--time-scale", "0", "--no-gpu-ledger")


def act(twin: Twin, **payload: Any) -> Any:
    return requests.post(twin.url + "/act", json=payload, timeout=30).json()


def stderr_after_stop(twin: Twin) -> str:
    twin.proc.send_signal(signal.SIGTERM)
    twin.proc.wait(30)
    assert twin.proc.stderr is not None
    return str(twin.proc.stderr.read())


def test_readme_client_gets_seven_floats(twin: Twin, patched: None) -> None:
    image = np.zeros((256, 256, 3), dtype=np.uint8)
    action = act(twin, image=image, instruction="pick up the remote", unnorm_key="bridge_orig")
    assert isinstance(action, np.ndarray) and action.shape == (7,) and action.dtype == np.float64
    again = act(twin, image=image, instruction="pick up the remote", unnorm_key="bridge_orig")
    assert np.array_equal(action, again)  # the same frame and instruction: the same action
    other = act(twin, image=image, instruction="pick up the remote",
                unnorm_key="fractal20220817_data")  # fmt: skip
    assert not np.array_equal(action, other)


def test_double_encoded_request_gets_a_double_encoded_answer(twin: Twin) -> None:
    inner = json_numpy.dumps({"image": vla.frame(), "instruction": "close the drawer",
                              "unnorm_key": "bridge_orig"})  # fmt: skip
    resp = requests.post(twin.url + "/act", json={"encoded": inner}, timeout=30)
    assert resp.status_code == 200
    text = resp.json()  # a JSON string holding json-numpy text, as deploy.py answers it
    assert isinstance(text, str)
    assert json_numpy.loads(text).shape == (7,)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ({"instruction": "wave", "unnorm_key": "bridge_orig"}, 'has no "image"'),
        ({"image": np.zeros((64, 64), np.uint8), "instruction": "wave",
          "unnorm_key": "bridge_orig"}, "H×W×3 uint8"),
        ({"image": np.zeros((64, 64, 3), np.float32), "instruction": "wave",
          "unnorm_key": "bridge_orig"}, "H×W×3 uint8"),
        ({"image": np.zeros((64, 64, 3), np.uint8), "unnorm_key": "bridge_orig"},
         'needs an "instruction"'),
        ({"image": np.zeros((64, 64, 3), np.uint8), "instruction": "wave"},
         "trained on more than one dataset, please pass a `unnorm_key`"),
        ({"image": np.zeros((64, 64, 3), np.uint8), "instruction": "wave",
          "unnorm_key": "libero_spatial_no_noops"}, "not in the set of available dataset"),
    ],
    ids=["no image", "2-D image", "float image", "no instruction", "no unnorm_key", "unknown key"],
)  # fmt: skip
def test_bad_input_is_200_error_and_logged(
    twin: Twin, patched: None, payload: dict[str, Any], why: str
) -> None:
    resp = requests.post(twin.url + "/act", json=payload, timeout=30)
    assert (resp.status_code, resp.text) == (200, '"error"')
    with pytest.raises(vla.VlaError, match='answered "error"'):
        vla.action(resp.content)
    log = stderr_after_stop(twin)
    assert why in log and "Your request threw an error; make sure your request complies" in log


def test_what_fastapi_refuses_and_what_openvla_lacks(twin: Twin) -> None:
    resp = requests.post(twin.url + "/act", data=b"{not json", timeout=30)
    assert resp.status_code == 422 and resp.json()["detail"][0]["type"] == "json_invalid"
    resp = requests.post(twin.url + "/act", data=b"[1, 2]", timeout=30)
    assert resp.status_code == 422 and resp.json()["detail"][0]["type"] == "dict_type"
    # OpenVLA's server has no health endpoint: readiness is a real /act
    resp = requests.get(twin.url + "/health", timeout=30)
    assert (resp.status_code, resp.json()) == (404, {"detail": "Not Found"})
    # a body up to 64 MiB is read (here a 3840×2160 frame, 33 MB of base64); more is 413
    big = vla.request(vla.frame(2160, 3840), "stack the blocks", "bridge_orig")
    ok = requests.post(twin.url + "/act", data=big, timeout=60)
    assert ok.status_code == 200 and vla.action(ok.content).shape == (7,)
    huge = b'{"pad": "' + b"x" * (64 * 2**20) + b'"}'
    assert requests.post(twin.url + "/act", data=huge, timeout=60).status_code == 413


def test_metrics_count_the_actions_with_vllm_names(twin: Twin) -> None:
    body = vla.request(vla.frame(480, 640), "push the button", "bridge_orig")
    for _ in range(3):
        answer = requests.post(twin.url + "/act", data=body, timeout=30)
        assert vla.action(answer.content).shape == (7,)  # labctl's reader takes the answer
    text = requests.get(twin.url + "/metrics", timeout=30).text
    labels = f'engine="0",model_name="{OPENVLA}"'
    assert f"vllm:e2e_request_latency_seconds_count{{{labels}}} 3.0" in text
    assert f"vllm:num_requests_running{{{labels}}} 0.0" in text
    assert f"vllm:num_requests_waiting{{{labels}}} 0.0" in text
    assert f"vllm:generation_tokens_total{{{labels}}} 21.0" in text  # 7 tokens an action


def test_startup_prints_hugging_face_and_uvicorn_lines(lab: Lab) -> None:
    twin = lab.twin("--model", OPENVLA, "--time-scale", "0.05", "--no-gpu-ledger")
    log = stderr_after_stop(twin)
    lines = log.splitlines()
    shards = [ln for ln in lines if ln.startswith("Loading checkpoint shards:")]
    assert shards[0].startswith("Loading checkpoint shards:   0%") and "3/3" in shards[-1]
    assert "100%" in shards[-1]
    assert "INFO:     Application startup complete." in lines
    assert f"INFO:     Uvicorn running on {twin.url} (Press CTRL+C to quit)" in lines
    assert lines.index("INFO:     Application startup complete.") > lines.index(shards[-1])


def test_oft_answers_an_8_by_7_chunk(lab: Lab, patched: None) -> None:
    twin = lab.twin("--model", OFT, "--time-scale", "0", "--no-gpu-ledger")
    chunk = act(twin, image=vla.frame(), instruction="put the bowl on the plate")
    assert isinstance(chunk, np.ndarray) and chunk.shape == (8, 7)
    # one dataset's statistics: no key is needed, a foreign one fails
    assert act(twin, image=vla.frame(), instruction="x", unnorm_key="bridge_orig") == "error"
    text = requests.get(twin.url + "/metrics", timeout=30).text
    assert 'vllm:generation_tokens_total{engine="0",model_name="' + OFT + '"} 0.0' in text


def closed_loop_seconds(twin: Twin, robots: int, rounds: int) -> float:
    """Wall time for ``robots`` clients each sending ``rounds`` actions back to back."""
    body = vla.request(vla.frame(), "pick up the cup", "bridge_orig")

    def robot(_: int) -> None:
        with requests.Session() as s:
            for _ in range(rounds):
                r = s.post(twin.url + "/act", data=body, timeout=60)
                assert vla.action(r.content).shape == (7,)

    started = time.monotonic()
    with ThreadPoolExecutor(robots) as pool:
        list(pool.map(robot, range(robots)))
    return time.monotonic() - started


def test_requests_that_arrive_together_share_a_forward(lab: Lab) -> None:
    gpu = catalog_gpu("rtx-4090")
    fast = ("--gpu", "rtx-4090", "--no-gpu-ledger", "--load-gbps", "0")
    serial = lab.twin("--model", OPENVLA, *fast)
    one_by_one = closed_loop_seconds(serial, robots=4, rounds=3)
    # OpenVLA's own server runs one request at a time: 12 forwards of one
    assert one_by_one == pytest.approx(12 * step.action_seconds(gpu), rel=0.3)
    batching = lab.twin("--model", OPENVLA, *fast, "--max-batch", "4")
    together = closed_loop_seconds(batching, robots=4, rounds=3)
    assert together < 0.75 * one_by_one
    assert together >= 3 * step.action_seconds(gpu, 1) * 0.9  # at least three forwards


def test_the_weights_are_held_on_the_simulated_gpu(lab: Lab) -> None:
    twin = lab.twin("--model", OPENVLA, "--gpu", "rtx-4090", "--time-scale", "0")
    (dev,) = SimBackend(SimMachine(lab.home)).read().devices
    (proc,) = dev.processes
    assert proc.pid == twin.proc.pid
    # nvidia-smi showed 15,296 MiB while OpenVLA served on an RTX 4090 (openvla#66)
    assert proc.used_bytes == pytest.approx(15296 * MiB, rel=0.03)
    stderr_after_stop(twin)
    assert SimBackend(SimMachine(lab.home)).read().devices[0].memory_used_bytes == 0


def test_4_bit_weights_hold_less(lab: Lab) -> None:
    twin = lab.twin("--model", OPENVLA, "--gpu", "rtx-4090", "--time-scale", "0",
                    "--load-in-4bit")  # fmt: skip
    (proc,) = SimBackend(SimMachine(lab.home)).read().devices[0].processes
    assert proc.used_bytes == step.memory_bytes(0, weight_bits=4) < 0.5 * step.memory_bytes(0)
    body = vla.request(vla.frame(), "pick up the cup", "bridge_orig")
    assert vla.action(requests.post(twin.url + "/act", data=body, timeout=30).content).shape == (7,)


def test_flags_that_do_not_apply_are_refused(lab: Lab) -> None:
    proc = lab.start("sim", "serve", "--model", "Qwen/Qwen3-0.6B", "--max-batch", "4")
    assert proc.wait(60) == 2
    assert proc.stderr is not None and "--max-batch is for an OpenVLA model" in proc.stderr.read()
    proc = lab.start("sim", "serve", "--model", OPENVLA, "--max-model-len", "4096")
    assert proc.wait(60) == 2
    assert proc.stderr is not None and "--max-model-len is a vLLM flag" in proc.stderr.read()
