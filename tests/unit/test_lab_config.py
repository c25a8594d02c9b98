"""lab.toml validation and the engine adapters (argv, phases), without processes."""

from __future__ import annotations

from pathlib import Path
import sys

import pytest

from labctl.config import DeploymentSpec, default_config, load_config, parse_listen
from labctl.engines.adapter import adapter, flags
from labctl.errors import ConfigError

# Lines as vLLM V1 prints them (model loading, KV cache, graphs, API server) and llama-server's.
VLLM_LOG = [
    "INFO 08-21 10:02:11 [gpu_model_runner.py:1953] Model loading took 15.1749 GiB and 59.268527 seconds",
    "INFO 08-21 10:02:20 [kv_cache_utils.py:849] GPU KV cache size: 148,096 tokens",
    "INFO 08-21 10:03:41 [gpu_model_runner.py:2708] Graph capturing finished in 81 secs, took 0.74 GiB",
    "INFO:     Application startup complete.",
]
LLAMACPP_LOG = [
    "0.00.016.420 I srv  llama_server: model loaded",
    "0.00.016.462 I srv  llama_server: listening on http://127.0.0.1:8150",
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(text)
    return path


def test_the_embedded_default_is_one_twin_on_a_simulated_3090() -> None:
    config = default_config()
    (chat,) = config.deployments
    assert (config.gpu_backend, config.sim_gpus, config.listen) == (
        "sim",
        "1xrtx-3090",
        "127.0.0.1:8080",
    )
    assert (chat.name, chat.engine, chat.model, chat.served) == (
        "chat",
        "sim",
        "Qwen/Qwen3-0.6B",
        "Qwen/Qwen3-0.6B",
    )
    assert load_config(None) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[lab]\nlisten = "8080"\n', "lab.listen = '8080': use HOST:PORT"),
        ('[lab]\ngpu_backend = "rocm"\n', "lab.gpu_backend = 'rocm': use one of auto, nvml, sim"),
        (
            '[lab]\ncolour = "blue"\n',
            "lab.colour is not a setting; use one of gpu_backend, listen, sim_gpus",
        ),
        ("[routes]\n", "[routes] is not a section"),
        (
            '[deployments.chat]\nengine = "sim"\n',
            "deployments.chat.model is required for engine 'sim'",
        ),
        ('[deployments.chat]\nengine = "command"\n', "deployments.chat.command is required"),
        (
            '[deployments.chat]\nengine = "sim"\nmodel = "m"\nport = 70000\n',
            "deployments.chat.port = 70000",
        ),
        (
            '[deployments.chat]\nengine = "sim"\nmodel = "m"\nstop_grace = 0\n',
            "deployments.chat.stop_grace = 0: give a positive",
        ),
        (
            '[deployments.chat]\nengine = "sim"\nmodel = "m"\nargs = 3\n',
            "deployments.chat.args = 3",
        ),
        (
            '[deployments.chat]\nengine = "sim"\nmodel = "m"\nmodle = "x"\n',
            "deployments.chat.modle is not a setting",
        ),
        ('[deployments."bad name"]\nengine = "sim"\nmodel = "m"\n', "the name 'bad name' must be"),
        ("[lab\n", "is not valid TOML"),
        (
            '[deployments.a]\nengine = "sim"\nmodel = "m"\nport = 9000\n[deployments.b]\nengine = "sim"\nmodel = "m"\nport = 9000\n',
            "two deployments use the same port",
        ),
    ],
)
def test_bad_lab_toml_names_the_key_the_value_and_the_fix(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        load_config(write(tmp_path, text))
    assert message in str(err.value)


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")
    assert parse_listen("[::1]:9000") == ("::1", 9000)


def test_specs_round_trip_through_the_journal_form() -> None:
    spec = DeploymentSpec.from_dict("chat", {"engine": "vllm", "model": "m", "gpus": [0, 1],
                                             "args": {"max_model_len": 4096}})  # fmt: skip
    assert (
        DeploymentSpec.from_dict("chat", {k: v for k, v in spec.to_dict().items() if k != "name"})
        == spec
    )


def test_flags_follow_the_engines_cli_conventions() -> None:
    assert flags({"max_model_len": 8192, "enforce_eager": True, "quantization": None,
                  "disable_log_stats": False, "lora_modules": ["a=/x", "b=/y"]}) == [
        "--max-model-len", "8192", "--enforce-eager", "--lora-modules", "a=/x", "b=/y"]  # fmt: skip
    with pytest.raises(ConfigError, match="args.bad"):
        flags({"bad": {"nested": 1}})


def test_adapters_build_each_engines_command_line() -> None:
    vllm = adapter("vllm").launch({"name": "chat", "model": "Qwen/Qwen3-8B", "args": {"max_model_len": 4096}},
                                  "127.0.0.1", 9000, [0, 1])  # fmt: skip
    assert vllm.argv == ["vllm", "serve", "Qwen/Qwen3-8B", "--host", "127.0.0.1", "--port", "9000",
                         "--served-model-name", "Qwen/Qwen3-8B", "--max-model-len", "4096"]  # fmt: skip
    assert vllm.env == {"CUDA_VISIBLE_DEVICES": "0,1"} and vllm.served_model == "Qwen/Qwen3-8B"
    planned = adapter("vllm").launch(
        {"name": "chat", "model": "m", "args": {"max_model_len": 4096},
         "recommended_args": ["--max-model-len", "8192", "--gpu-memory-utilization", "0.9",
                              "--enforce-eager"]},
        "127.0.0.1", 9000, [0],
    )  # fmt: skip
    assert planned.argv[-5:] == [
        "--max-model-len",
        "4096",
        "--gpu-memory-utilization",
        "0.9",
        "--enforce-eager",
    ]  # the user's length wins; the rest is added
    twin = adapter("sim").launch({"name": "chat", "model": "m"}, "127.0.0.1", 9001, [0])
    assert twin.argv[:5] == [sys.executable, "-m", "labctl", "sim", "serve"]
    llama = adapter("llamacpp").launch({"name": "small", "model": "/m.gguf", "binary": "/opt/llama-server",
                                        "args": {"ctx_size": 512}}, "127.0.0.1", 9002, [0])  # fmt: skip
    assert llama.argv == ["/opt/llama-server", "-m", "/m.gguf", "--host", "127.0.0.1", "--port", "9002",
                          "--metrics", "--alias", "small", "--ctx-size", "512"]  # fmt: skip
    cmd = adapter("command").launch({"name": "asr", "command": ["srv", "--port", "{port}"],
                                     "health_path": "/ok"}, "127.0.0.1", 9003, [1])  # fmt: skip
    assert (cmd.argv, cmd.health_path, cmd.served_model) == (["srv", "--port", "9003"], "/ok", None)
    with pytest.raises(ConfigError, match="unknown placeholder"):
        adapter("command").launch({"name": "asr", "command": ["srv", "{gpu}"]}, "h", 1, [0])
    with pytest.raises(ConfigError, match="engine 'tgi' is unknown"):
        adapter("tgi")


def test_startup_phases_come_from_the_engines_real_log_lines() -> None:
    vllm = adapter("vllm")
    assert [vllm.phase(line) for line in VLLM_LOG] == [
        "load_weights",
        "profile",
        "cuda_graphs",
        "api_server",
    ]
    assert vllm.phase("INFO Loading safetensors checkpoint shards: 50% Completed") is None
    llama = adapter("llamacpp")
    assert [llama.phase(line) for line in LLAMACPP_LOG] == ["load_weights", "api_server"]
