"""Robot actions in a lab: a chat twin and an OpenVLA twin behind one listener, reached the
way OpenVLA's README reaches its server (``requests`` + ``json_numpy``)."""

from __future__ import annotations

from collections.abc import Callable
import json
import os
from pathlib import Path
import subprocess
import sys
import time

import json_numpy
import numpy as np
import openai
import pytest
import requests

from labctl import vla
from tests.integration.conftest import Run
from tests.integration.lab import FAST_TWIN, Daemon, Lab, get, wait_for

pytestmark = pytest.mark.integration

VLA_TWIN = "{ load_gbps = 0 }"
CHAT_TWIN = FAST_TWIN.replace(" }", ", gpu_memory_utilization = 0.2 }")


def vla_lab(tmp_path: Path) -> Path:
    config = tmp_path / "lab.toml"
    config.write_text(
        '[lab]\ngpu_backend = "sim"\nsim_gpus = "1xrtx-4090"\n\n[dashboard]\ninterval = 0.5\n\n'
        '[deployments.chat]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\nstop_grace = 5\n'
        f"args = {CHAT_TWIN}\n\n"
        '[deployments.robot]\nengine = "sim"\nmodel = "openvla/openvla-7b"\n'
        f'aliases = ["arm-1"]\nstop_grace = 5\ncontrol_hz = 2.0\nargs = {VLA_TWIN}\n'
    )
    return config


@pytest.fixture
def robot_lab(lab: Lab, tmp_path: Path) -> Daemon:
    d = lab.up("--config", str(vla_lab(tmp_path)))
    for name in ("chat", "robot"):
        d.wait_state(name, "ready", timeout=90)
    return d


def act(url: str, **extra: object) -> requests.Response:
    json_numpy.patch()  # as OpenVLA's README client does: numpy arrays in json=
    image = np.asarray(vla.frame(224, 224, seed=1))
    body = {"image": image, "instruction": "pick up the remote", **extra}
    return requests.post(url, json=body, timeout=60)


def series(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_one_listener_serves_chat_and_robot_actions(
    robot_lab: Daemon, lab: Lab, labctl: Callable[..., Run]
) -> None:
    d = robot_lab
    c = openai.OpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0)
    assert c.chat.completions.create(model="chat", max_tokens=2,
                                     messages=[{"role": "user", "content": "hi"}]).choices  # fmt: skip
    for name in ("robot", "arm-1"):
        r = act(f"{d.url}/vla/{name}/act", unnorm_key="bridge_orig")
        assert r.status_code == 200, r.text
        action = np.asarray(r.json(), dtype=float)
        assert action.shape == (vla.ACTION_DIM,) and np.isfinite(action).all()
    # The double-encoded form, for clients without json-numpy.
    raw = vla.request(vla.frame(), "open the drawer", "bridge_orig").decode()
    r = requests.post(f"{d.url}/vla/robot/act", json={"encoded": raw}, timeout=60)
    assert r.status_code == 200 and vla.action(r.content).shape == (vla.ACTION_DIM,)  # encoded too

    metrics = get(d.url + "/metrics")
    assert series(metrics, "labctl_vla_actions_total", model="robot") == 3
    assert series(metrics, "labctl_vla_action_latency_seconds_count", model="robot") == 3
    assert series(metrics, "labctl_vla_control_hz", model="robot") == 2.0
    assert 'labctl_vla_control_hz{model="chat"}' not in metrics


def test_bad_robot_requests_get_a_clear_error_through_the_gateway(robot_lab: Daemon) -> None:
    url = f"{robot_lab.url}/vla/robot/act"
    json_numpy.patch()
    no_key = {"unnorm_key": "bridge_orig"}

    def post(image: object, **extra: object) -> requests.Response:
        body = (
            {"instruction": "x", **extra}
            if image is None
            else {"image": image, "instruction": "x", **extra}
        )
        return requests.post(url, json=body, timeout=60)

    cases = {
        "no image": (post(None, **no_key), 400, 'no "image"'),
        "2-D image": (post(np.zeros((8, 8), np.uint8), **no_key), 400, "H×W×3 uint8"),
        "float image": (post(np.zeros((8, 8, 3), np.float32), **no_key), 400, "H×W×3 uint8"),
        "50 MB image": (post(np.zeros((4096, 4096, 3), np.uint8)), 413, "gateway.max_body_bytes"),
        "no unnorm_key": (act(url), 400, "unnorm_key is required"),
        "unknown unnorm_key": (act(url, unnorm_key="kitchen"), 400, "not one of robot's datasets"),
        "unknown deployment": (act(f"{robot_lab.url}/vla/nobody/act"), 404, "does not exist"),
        "chat is not a robot": (
            act(f"{robot_lab.url}/vla/chat/act"),
            400,
            "does not serve actions",
        ),
    }
    for what, (resp, status, says) in cases.items():
        assert resp.status_code == status, (what, resp.status_code, resp.text[:300])
        err = resp.json()["error"]
        assert says in err["message"], (what, err)
        assert {"message", "type", "param", "code"} <= set(err), (what, err)


def test_a_full_replace_of_the_robot_deployment_under_four_robots_loses_no_request(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    d = lab.up("--config", str(vla_lab(tmp_path)))
    old = d.wait_state("robot", "ready", timeout=90)
    out = tmp_path / "bench.json"
    bench = subprocess.Popen(
        [sys.executable, "-m", "labctl", "bench", "--backend", "openvla", "--base-url",
         f"{d.url}/vla/robot", "--robots", "4", "--target-hz", "5", "--unnorm-key", "bridge_orig",
         "--duration", "20", "--json-out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, LABCTL_HOME=str(lab.home)),
    )  # fmt: skip
    try:
        time.sleep(3)
        assert bench.poll() is None, bench.communicate()
        record = labctl("deploy", "robot", "--set", "args.max_batch=4", "--url", d.url, "--json",
                        home=lab.home, check=True).json()  # fmt: skip
        assert isinstance(record, dict) and record["outcome"] == "committed", record
        _, err = bench.communicate(timeout=120)
    finally:
        bench.kill()
    assert bench.returncode == 0, err
    result = json.loads(out.read_text())
    assert result["failed"] == 0, result.get("errors_by_reason")
    assert result["robots"] == 4 and result["completed"] > 20
    assert result["deadline_miss_ratio"] > 0  # the swap held them: late, not lost
    new = wait_for(lambda: (r := d.wait_state("robot", "ready"))["revision"] > old["revision"]
                   and r, 30, "the new revision")  # fmt: skip
    assert new["revision"] == old["revision"] + 1
