"""What a deploy through the admin API may change: nothing that runs or loads code, unless
lab.toml says so (``lab.api_commands``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from labctl.config import DeploymentSpec, LabConfig
from labctl.deploy.requests import RequestRefused, check_restore, requested_spec

VLLM = DeploymentSpec.from_dict("chat", {"engine": "vllm", "model": "Qwen/Qwen3-0.6B"})
SIM = DeploymentSpec.from_dict("chat", {"engine": "sim", "model": "Qwen/Qwen3-0.6B"})
COMMAND = DeploymentSpec.from_dict(
    "chat", {"engine": "command", "model": "m", "command": ["sh", "-c", "serve {model} {port}"]}
)
LAB = LabConfig(gpu_backend="sim", sim_gpus="1xrtx-3090")


def refused(current: DeploymentSpec, body: dict[str, Any], config: LabConfig = LAB) -> str:
    with pytest.raises(RequestRefused) as err:
        requested_spec(current, body, config, [])
    assert err.value.status == 403, err.value
    return str(err.value)


@pytest.mark.parametrize(
    "change",
    [
        {"env.OPENSSL_CONF": "/tmp/evil/openssl.cnf"},
        {"env.LD_PRELOAD": "/tmp/evil.so"},
        {"env.BASH_ENV": "/tmp/x"},
        {"env.GCONV_PATH": "/tmp/x"},
        {"env.HF_HOME": "/tmp/x"},
    ],
)
def test_requested_spec_refuses_any_env_change(change: dict[str, Any]) -> None:
    assert "env." in refused(SIM, {"set": change})


@pytest.mark.parametrize(
    "change",
    [
        {"args.trust_remote_code": True},
        {"args.trust-remote-code": True},
        {"args.trust_remote": True},  # a prefix vLLM's parser would take
        {"args.config": "/tmp/x.yaml"},
        {"args.middleware": "evil.mod"},
        {"args.tool_parser_plugin": "/tmp/x.py"},
        {"args.allowed_local_media_path": "/"},
    ],
)
def test_requested_spec_allows_vllm_only_capacity_flags(change: dict[str, Any]) -> None:
    assert "args." in refused(VLLM, {"set": change})


def test_requested_spec_refuses_flags_smuggled_in_values() -> None:
    for spec in (VLLM, SIM):
        why = refused(spec, {"set": {"args.served_model_name": ["x", "--no-gpu-ledger"]}})
        assert "a flag, not a value" in why


def test_requested_spec_lets_capacity_through_to_the_host_checks() -> None:
    with pytest.raises(RequestRefused) as err:  # vllm is not installed here: the next check
        requested_spec(VLLM, {"set": {"max_model_len": 4096, "args.n": 1}}, LAB, [])
    assert err.value.status == 403 and "args.n" in str(err.value)
    with pytest.raises(RequestRefused) as err:
        requested_spec(VLLM, {"set": {"max_model_len": 4096}}, LAB, [])
    assert err.value.status == 400 and "vllm" in str(err.value)
    assert requested_spec(SIM, {"set": {"max_model_len": 4096}}, LAB, []).args["max_model_len"]


def test_requested_spec_refuses_a_new_model_for_a_command_engine() -> None:
    assert "command line" in refused(COMMAND, {"model": "m$(id>/tmp/x/INJ)"})


def test_lab_toml_may_allow_all_of_it() -> None:
    allowed = dataclasses.replace(LAB, api_commands=True)
    spec = requested_spec(SIM, {"set": {"env.OPENSSL_CONF": "/x"}}, allowed, [])
    assert spec.env["OPENSSL_CONF"] == "/x"


def test_check_restore_refuses_rolling_back_to_a_command_lab_toml_no_longer_names() -> None:
    with pytest.raises(RequestRefused) as err:
        check_restore(SIM, COMMAND, LAB, [])
    assert err.value.status == 403 and "rolling back" in str(err.value)
    check_restore(SIM, dataclasses.replace(SIM, args={"max_model_len": 2048}), LAB, [])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"runtime": "podman", "image": "evil/vllm:v1"}, "changing image"),
        ({"image": "evil/vllm:v1"}, "changing image"),
    ],
)
def test_requested_spec_refuses_a_container_image_the_file_did_not_name(
    change: dict[str, Any], named: str
) -> None:
    """An image is code the lab would run: only lab.toml (or lab.api_commands) may pick one."""
    assert named in refused(VLLM, {"set": change})
    if "runtime" in change:  # (on the host, the lab would look for vllm on PATH first)
        allowed = dataclasses.replace(LAB, api_commands=True)
        assert requested_spec(VLLM, {"set": change}, allowed, []).image == "evil/vllm:v1"
