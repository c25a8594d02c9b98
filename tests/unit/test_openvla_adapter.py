"""The OpenVLA adapter: its server's command line, its readiness (a real action), and the
gateway's checks of what robots send."""

from __future__ import annotations

import json
from pathlib import Path

import json_numpy
import numpy as np
import pytest

from labctl import vla
from labctl.engines import Route, adapter
from labctl.errors import ConfigError

SETTINGS = {"name": "robot", "model": "openvla/openvla-7b", "binary": "/opt/vla/deploy.py",
            "args": {"load_in_4bit": True}}  # fmt: skip


def test_deploy_py_is_started_with_draccus_flags() -> None:
    kind = adapter("openvla")
    launch = kind.launch(SETTINGS, "127.0.0.1", 8000, [0])
    assert launch.argv == ["python", "/opt/vla/deploy.py", "--openvla_path", "openvla/openvla-7b",
                           "--host", "127.0.0.1", "--port", "8000", "--load_in_4bit", "True"]  # fmt: skip
    oft = kind.launch({**SETTINGS, "model": "moojink/openvla-7b-oft-finetuned-libero-spatial",
                       "binary": "serve-oft", "args": {}}, "h", 1, [0])  # fmt: skip
    assert oft.argv[:3] == ["serve-oft", "--pretrained_checkpoint",
                            "moojink/openvla-7b-oft-finetuned-libero-spatial"]  # fmt: skip
    with pytest.raises(ConfigError, match="as one string"):
        kind.launch({**SETTINGS, "args": {"center_crop": [1, 2]}}, "h", 1, [0])


def test_readiness_is_a_real_action_and_error_with_200_is_not_ready() -> None:
    kind = adapter("openvla")
    health = kind.health_of(SETTINGS)
    assert health.path == "/act" and health.payload is not None
    assert vla.observation(json.loads(health.payload)).image.shape == (64, 64, 3)
    assert health.ok(200, json_numpy.dumps(np.zeros(7)).encode())
    assert not health.ok(200, b'"error"')  # OpenVLA's server answers its exceptions so
    assert not health.ok(500, json_numpy.dumps(np.zeros(7)).encode())
    assert kind.default_concurrency(SETTINGS, None) == 1
    assert kind.serves(SETTINGS) == {"actions"}


def test_the_checkpoints_datasets_come_from_its_statistics(tmp_path: Path) -> None:
    (tmp_path / "dataset_statistics.json").write_text(
        json.dumps({"bridge_orig": {"action": {}}, "fractal20220817_data": {"action": {}}})
    )
    kind = adapter("openvla")
    settings = {**SETTINGS, "model": str(tmp_path)}
    assert kind.unnorm_keys(settings) == ("bridge_orig", "fractal20220817_data")
    probe = kind.health_of(settings).payload
    assert probe is not None and json.loads(probe)["unnorm_key"] == "bridge_orig"
    assert kind.unnorm_keys(SETTINGS) == ()  # a hub id: not known until it loads


@pytest.mark.parametrize("engine", ["vllm", "sim"])
def test_an_openvla_model_on_the_vllm_adapters_serves_actions(engine: str) -> None:
    assert adapter(engine).serves({"model": "openvla/openvla-7b"}) == {"actions"}


def test_route_knows_control_rate_and_datasets() -> None:
    route = Route("robot", "robot", (), None, 1, 8, control_hz=5.0, unnorm_keys=("a", "b"))
    assert route.control_hz == 5.0 and route.unnorm_keys == ("a", "b")


def test_the_twin_of_openvla_is_ready_on_an_action_and_batches_as_told() -> None:
    kind = adapter("sim")
    settings = {"name": "robot", "model": "openvla/openvla-7b", "args": {"max_batch": 4}}
    launch = kind.launch(settings, "127.0.0.1", 8000, [0])
    assert launch.served_model is None and launch.health.path == "/act"
    assert "bridge_orig" in kind.unnorm_keys(settings)
    probe = launch.health.payload
    assert probe is not None and json.loads(probe)["unnorm_key"] in kind.unnorm_keys(settings)
    assert kind.default_concurrency(settings, None) == 4
    assert kind.default_concurrency({**settings, "args": {}}, None) == 1
    assert kind.phase("Loading checkpoint shards: 100%|██████████| 3/3") == "load_weights"
    chat = {"name": "chat", "model": "Qwen/Qwen3-0.6B"}
    assert kind.launch(chat, "h", 1, [0]).health.path == "/health" and not kind.unnorm_keys(chat)
