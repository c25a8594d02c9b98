"""lab.toml validation and the engine adapters (argv, phases), without processes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
import socket
import sys

import pytest

from labctl.config import (
    ENGINES,
    DashboardConfig,
    DeploymentSpec,
    GatewayConfig,
    LabConfig,
    ModelsConfig,
    check_exposure,
    check_gpu_indices,
    check_host,
    default_config,
    is_loopback,
    load_config,
    parse_listen,
)
from labctl.engines import adapter, flags
from labctl.engines.base import missing
from labctl.errors import ConfigError, UsageError
from labctl.gpu.sim import parse_sim_gpus

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
            "lab.colour is not a setting; use one of allowed_hosts, api_commands, container_global_flags, container_run_flags, disk_read_mbps, doctor_ignore, gpu_backend, listen, sim_gpus",
        ),
        (
            '[lab]\ndoctor_ignore = "fabric-manager"\n',
            "lab.doctor_ignore = 'fabric-manager': give a list of the doctor's check codes",
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


def test_a_false_vllm_switch_turns_it_off_and_keeps_the_planners_off() -> None:
    """vLLM's switches are on/off pairs (``--no-enable-prefix-caching``): a deployment's
    ``false`` turns one off, where dropping the flag left vLLM's default (prefix caching on
    in V1), and the planner's ``--enforce-eager`` does not come back over it."""
    assert flags({"enable_prefix_caching": False}, negate=True) == ["--no-enable-prefix-caching"]
    assert flags({"enable_prefix_caching": False}) == []  # llama.cpp, whisper.cpp: no pairs
    settings = {"name": "chat", "model": "m",
                "args": {"enforce_eager": False, "enable_prefix_caching": False},
                "recommended_args": ["--max-model-len", "8192", "--enforce-eager"]}  # fmt: skip
    for engine in ("vllm", "sim"):
        argv = adapter(engine).launch(settings, "127.0.0.1", 9000, [0]).argv
        assert argv[argv.index("--served-model-name") + 2 :][:2] == [
            "--no-enforce-eager", "--no-enable-prefix-caching"]  # fmt: skip
        assert "--enforce-eager" not in argv and "--enable-prefix-caching" not in argv
    assert missing(["--enforce-eager", "--max-model-len", "8192"], ["--no-enforce-eager"]) == [
        "--max-model-len", "8192"]  # fmt: skip
    # the twin's own fault switches are bare flags: false leaves them out
    fault = {
        "name": "chat",
        "model": "m",
        "args": {"ignore_sigterm": False, "fail_completions": True},
    }
    argv = adapter("sim").launch(fault, "127.0.0.1", 9000, [0]).argv
    assert "--fail-completions" in argv and not any("sigterm" in a for a in argv)


def test_adapters_build_each_engines_command_line() -> None:
    vllm = adapter("vllm").launch({"name": "chat", "model": "Qwen/Qwen3-8B", "args": {"max_model_len": 4096}},
                                  "127.0.0.1", 9000, [0, 1])  # fmt: skip
    assert vllm.argv == ["vllm", "serve", "Qwen/Qwen3-8B", "--host", "127.0.0.1", "--port", "9000",
                         "--served-model-name", "Qwen/Qwen3-8B", "--max-model-len", "4096"]  # fmt: skip
    assert vllm.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,1",
                        "NVIDIA_VISIBLE_DEVICES": "0,1"}  # fmt: skip
    assert vllm.served_model == "Qwen/Qwen3-8B"
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
    assert (cmd.argv, cmd.health.path, cmd.served_model) == (["srv", "--port", "9003"], "/ok", None)
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


# -- regressions: each case was accepted (or crashed) before the checks that name it --------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"
SIM = '[deployments.chat]\nengine = "sim"\nmodel = "m"\n'
GW = '[gateway]\nadmin_token = "admin-token-0123456789"\nkeys = [{ key = "key-0123456789" }]\n'


def fake_dns(table: dict[str, list[str]]) -> Callable[..., list[tuple[object, ...]]]:
    """A getaddrinfo that answers from ``table`` (unit tests resolve no names)."""

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, 0)) for a in table[host]]  # fmt: skip

    return getaddrinfo


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
        ("::ffff:127.0.0.1", True), ("localhost", True), ("LOCALHOST", True),
        ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("::ffff:10.0.0.1", False),
        ("127.x.example", False), ("127.0.0.1.nip.example", False), ("", False),
        ("lo-only.example", True), ("mixed.example", False), ("a\x00b", False),
    ],
)  # fmt: skip
def test_is_loopback_checks_addresses_not_prefixes(
    monkeypatch: pytest.MonkeyPatch, host: str, loopback: bool
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({
        "127.0.0.1.nip.example": ["10.1.2.3"], "lo-only.example": ["127.0.0.1", "::1"],
        "mixed.example": ["127.0.0.1", "192.168.1.9"]}))  # fmt: skip
    assert is_loopback(host) is loopback


def test_check_exposure_needs_keys_and_a_token_beyond_loopback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({}))
    with pytest.raises(ConfigError) as err:
        check_exposure("127.x.example", GatewayConfig(), "--listen")
    assert str(err.value) == (
        "--listen: listening on 127.x.example (beyond loopback) needs API keys "
        "([[gateway.keys]]) and an admin token (gateway.admin_token); add both, or listen on "
        "127.0.0.1"
    )
    check_exposure("127.0.0.2", GatewayConfig(), "--listen")
    with pytest.raises(ConfigError, match=r"^lab.listen: listening on 0.0.0.0 \(beyond"):
        load_config(write(tmp_path, '[lab]\nlisten = "0.0.0.0:8080"\n' + SIM))
    with pytest.raises(ConfigError, match="beyond loopback"):  # a token alone is not enough
        load_config(write(tmp_path, '[lab]\nlisten = "0.0.0.0:8080"\n[gateway]\n'
                                    'admin_token = "admin-token-0123456789"\n'))  # fmt: skip
    config = load_config(write(tmp_path, '[lab]\nlisten = "[::]:8080"\n' + GW + SIM))
    assert config.listen == "[::]:8080"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[lab]\nsim_gpus = "h100-sx"\n', "lab.sim_gpus = 'h100-sx': unknown GPU 'h100-sx'"),
        (
            '[lab]\nsim_gpus = "100xl4"\n',
            "lab.sim_gpus = '100xl4': '100xl4' asks for 100 GPUs; use 1 to 64",
        ),
        (
            '[lab]\nsim_gpus = "64xl4,l4"\n',
            "lab.sim_gpus = '64xl4,l4': 65 GPUs in all; use 1 to 64",
        ),
        ('[lab]\nsim_gpus = " , "\n', "lab.sim_gpus = ' , ' is empty; name catalog GPUs"),
    ],
)
def test_load_config_reports_a_bad_sim_gpus_as_the_lab_sim_gpus_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert str(err.value).startswith(message) and err.value.exit_code == 3


def test_parse_sim_gpus_keeps_its_flag_name_and_usage_exit_code() -> None:
    with pytest.raises(UsageError, match=r"^--sim-gpus: 65 GPUs in all; use 1 to 64"):
        parse_sim_gpus("64xl4,l4")
    assert len(parse_sim_gpus("32xl4,32xh100-sxm")) == 64


def test_gpu_indices_must_name_the_labs_gpus_once(tmp_path: Path) -> None:
    two = '[lab]\nsim_gpus = "2xrtx-3090"\n'
    with pytest.raises(ConfigError, match=r"^deployments.chat.gpus = \[0, 2\]: GPU 2 is beyond "
                                          r"the lab's 2 GPUs; use indices 0 to 1"):  # fmt: skip
        load_config(write(tmp_path, two + SIM + "gpus = [0, 2]\n"))
    with pytest.raises(ConfigError, match=r"gpus = \[1, 1\]: GPU 1 is listed twice"):
        load_config(write(tmp_path, two + SIM + "gpus = [1, 1]\n"))
    with pytest.raises(ConfigError, match=r"gpus = \[64\]: give a list of GPU indices \(0 to 63\)"):
        load_config(write(tmp_path, SIM + "gpus = [64]\n"))
    config = load_config(write(tmp_path, two + SIM + "gpus = [1, 0]\n"))
    check_gpu_indices(config, 2)
    with pytest.raises(ConfigError, match="GPU 1 is beyond the lab's 1 GPU; use indices 0 to 0"):
        check_gpu_indices(config, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # 4: the lab's own port
        ('[lab]\nlisten = "127.0.0.1:9000"\n' + SIM + "port = 9000\n",
         "deployments.chat.port = 9000 is the lab's own port (lab.listen = '127.0.0.1:9000')"),
        # 5: bounds on every duration
        ("[dashboard]\ninterval = 1e-6\n", "dashboard.interval = 1e-06: give a positive number of seconds from 0.25 to 3600"),
        ("[dashboard]\nhistory = 1e300\n", "dashboard.history = 1e+300: give a positive number of seconds up to 604800"),
        ("[dashboard]\ninterval = 0.25\nhistory = 86400\n", "dashboard.history = 86400 at dashboard.interval = 0.25 keeps 345600 points; keep at most 100000"),
        ("[dashboard]\nalert_for_scale = 1e9\n", "dashboard.alert_for_scale = 1000000000.0: give a number of at least 0 and at most 100"),
        ("[dashboard]\nalert_for_scale = nan\n", "dashboard.alert_for_scale = nan"),
        ("[gateway]\nqueue_timeout = nan\n", "gateway.queue_timeout = nan: give a positive number of seconds up to 86400"),
        ("[gateway]\nswap_timeout = inf\n", "gateway.swap_timeout = inf: give a positive"),
        ("[gateway]\ndrain_timeout = 1e12\n", "gateway.drain_timeout = 1000000000000.0: give a positive"),
        ("[gateway]\nread_timeout = 0\n", "gateway.read_timeout = 0: give a positive"),
        ("[gateway]\nidle_timeout = -inf\n", "gateway.idle_timeout = -inf: give a positive"),
        (SIM + "startup_timeout = inf\n", "deployments.chat.startup_timeout = inf: give a positive"),
        (SIM + "stall_timeout = nan\n", "deployments.chat.stall_timeout = nan: give a positive"),
        (SIM + "stop_grace = 1e9\n", "deployments.chat.stop_grace = 1000000000.0: give a positive"),
        ("[gateway]\nmax_body_bytes = 99999999999999999999\n", "gateway.max_body_bytes = 99999999999999999999: give a byte count from 1024 to"),
        # 6: secrets that travel in an HTTP header
        ('[gateway]\nadmin_token = "x"\n', "gateway.admin_token: give a secret of at least 16 printable ASCII characters"),
        ('[gateway]\nadmin_token = "admin token with spaces"\n', "gateway.admin_token: give a secret of at least 16"),
        ('[gateway]\nkeys = [{ key = "sk-\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9" }]\n', "gateway.keys[0].key: give a secret of at least 8 printable ASCII"),
        ('[gateway]\nkeys = [{ key = "sk-0123\\n456789" }]\n', "gateway.keys[0].key: give a secret"),
        # 7: duplicate keys, named by index and never echoed
        ('[gateway]\nkeys = [{ key = "key-aaaaaaaa" }, { key = "key-bbbbbbbb" }, { key = "key-cccccccc" }, { key = "key-bbbbbbbb" }]\n',
         "gateway.keys[3].key repeats gateway.keys[1].key"),
        # 8: names that become file, unit and object names
        ("[deployments." + "a" * 64 + ']\nengine = "sim"\nmodel = "m"\n', "must be 1 to 63 letters, digits"),
        ('[deployments."-x"]\nengine = "sim"\nmodel = "m"\n', "the name '-x' must be"),
        # 9: one model id, one deployment
        (SIM + '[deployments.code]\nengine = "sim"\nmodel = "m2"\naliases = ["chat"]\n',
         "deployments.code.aliases = ['chat']: 'chat' is already the name of deployments.chat"),
        (SIM + 'aliases = ["fast"]\n[deployments.code]\nengine = "sim"\nmodel = "m2"\naliases = ["fast"]\n',
         "'fast' is already an alias of deployments.chat"),
        (SIM + '[deployments.code]\nengine = "sim"\nmodel = "m2"\naliases = ["m"]\n',
         "'m' is already the served model id of deployments.chat"),
        (SIM + 'aliases = ["fast"]\n[deployments.code]\nengine = "sim"\nmodel = "m2"\nserved_model_name = "fast"\n',
         "deployments.code.served_model_name = 'fast': 'fast' is already an alias of deployments.chat"),
        (SIM + '[deployments.code]\nengine = "sim"\nmodel = "m2"\nserved_model_name = "chat"\n',
         "'chat' is already the name of deployments.chat"),
        # 11: engine flags
        (SIM + "args = { max_model_len = 0 }\n", "deployments.chat.args.max_model_len = 0: give a whole number from 1 to"),
        (SIM + "args = { max_num_seqs = -1 }\n", "deployments.chat.args.max_num_seqs = -1: give a whole number"),
        (SIM + 'args = { max_num_batched_tokens = "8k" }\n', "args.max_num_batched_tokens = '8k': give a whole number"),
        (SIM + "args = { pipeline_parallel_size = 0 }\n", "args.pipeline_parallel_size = 0: give a whole number"),
        (SIM + "args = { tensor_parallel_size = true }\n", "args.tensor_parallel_size = True: give a whole number"),
        (SIM + "args = { gpu_memory_utilization = 1.5 }\n", "args.gpu_memory_utilization = 1.5: give a fraction above 0 and at most 1"),
        (SIM + "args = { gpu-memory-utilization = 0 }\n", "args.gpu-memory-utilization = 0: give a fraction"),
        (SIM + "args = { x = { y = 1 } }\n", "deployments.chat.args.x = {'y': 1}: engine flags take a string, number, boolean or list"),
        (SIM + "args = { x = [[1]] }\n", "deployments.chat.args.x = [[1]]: engine flags take"),
        (SIM + "args = { x = [{ y = 1 }] }\n", "deployments.chat.args.x = [{'y': 1}]: engine flags take"),
        (SIM + "args = { x = nan }\n", "deployments.chat.args.x = nan: give a finite number"),
        (SIM + "args = { x = [1.0, inf] }\n", "deployments.chat.args.x = [1.0, inf]: give finite numbers"),
        (SIM + 'args = { "x y" = 1 }\n', "deployments.chat.args.\"x y\" is not a flag name; use letters, digits, '_' and '-'"),
        (SIM + 'args = { "--x" = 1 }\n', "is not a flag name"),
        (SIM + 'args = { x = "a\\u0000b" }\n', "deployments.chat.args.x: the value contains a NUL byte"),
        (SIM + "gpus = [0]\nargs = { tensor_parallel_size = 2 }\n",
         "deployments.chat.args.tensor_parallel_size = 2 with deployments.chat.gpus = [0]: vLLM runs one worker per GPU"),
        # 12: command placeholders
        *[('[deployments.asr]\nengine = "command"\ncommand = ["srv", ' + repr(part).replace("'", '"') + "]\n",
           f"deployments.asr.command[1] = {part!r}: {problem}")
          for part, problem in [("{foo}", "unknown placeholder {foo}"), ("{", "a lone '{'"),
                                ("}", "a lone '}'"), ("{0}", "unknown placeholder {0}"),
                                ("{port!r}", "a conversion or format spec in {port!r}"),
                                ("{port:>5}", "a conversion or format spec in {port:>5}"),
                                ("{host.x}", "unknown placeholder {host.x}")]],
        # 13: env, health paths, model ids, counts
        (SIM + 'env = { "1X" = "a" }\n', "deployments.chat.env.1X is not an environment variable name"),
        (SIM + 'env = { "A=B" = "a" }\n', "deployments.chat.env.\"A=B\" is not an environment variable name"),
        (SIM + 'env = { HF_TOKEN = "secret\\u0000value" }\n', "deployments.chat.env.HF_TOKEN: the value contains a NUL byte"),
        (SIM + 'health_path = "/he alth"\n', "deployments.chat.health_path = '/he alth': give a URL path such as /health"),
        (SIM + 'health_path = "/../etc"\n', "deployments.chat.health_path = '/../etc': give a URL path"),
        (SIM + 'health_path = "/a\\tb"\n', "deployments.chat.health_path = '/a\\tb': give a URL path"),
        (SIM + 'served_model_name = "a\\u0007b"\n', "deployments.chat.served_model_name = 'a\\x07b': give a model id without control characters"),
        (SIM + 'aliases = ["ok", "b\\nc"]\n', "deployments.chat.aliases = ['ok', 'b\\nc']: give model ids without control characters"),
        ("".join(f'[deployments.d{i}]\nengine = "sim"\nmodel = "m"\n' for i in range(65)),
         "deployments: 65 deployments; a lab has at most 64"),
        ("[gateway]\nkeys = [" + ", ".join(f'{{ key = "key-{i:08d}" }}' for i in range(1001)) + "]\n",
         "gateway.keys: 1001 keys; give at most 1000"),
        # sections of the wrong type
        ('lab = "x"\n', "[lab] must be a table"),
        ("gateway = 1\n", "[gateway] must be a table"),
        ("[[dashboard]]\n", "[dashboard] must be a table"),
        # the new settings
        ('[lab]\nallowed_hosts = "gpu-box"\n', "lab.allowed_hosts = 'gpu-box': give a list of host names"),
        ('[lab]\nallowed_hosts = ["http://gpu-box"]\n', "lab.allowed_hosts[0] = 'http://gpu-box': give a host name such as gpu-box.lan or *.lan"),
        ('[lab]\nallowed_hosts = ["gpu-box:8080"]\n', "lab.allowed_hosts[0] = 'gpu-box:8080'"),
        ('[lab]\nallowed_hosts = ["a.*.lan"]\n', "lab.allowed_hosts[0] = 'a.*.lan'"),
        ('[lab]\nallowed_hosts = ["*"]\n', "lab.allowed_hosts[0] = '*'"),
        ('[lab]\napi_commands = "yes"\n', "lab.api_commands = 'yes': give true or false"),
    ],
)  # fmt: skip
def test_load_config_rejects_values_that_would_fail_later(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), check_host=False)
    text_of = str(err.value)
    assert message in text_of and "\n" not in text_of, text_of
    assert "bbbbbbbb" not in text_of and "secret" not in text_of.replace("give a secret", "")


def test_the_new_settings_have_defaults_and_are_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SIM))
    assert (config.allowed_hosts, config.api_commands) == ((), False)
    assert (config.gateway.read_timeout, config.gateway.idle_timeout) == (60.0, 75.0)
    config = load_config(write(tmp_path, '[lab]\nallowed_hosts = ["GPU-box.lan", "*.lab.example", '
                                         '"192.168.1.20", "[fe80::1]"]\napi_commands = true\n'
                                         "[gateway]\nread_timeout = 5\nidle_timeout = 1.5\n"))  # fmt: skip
    assert config.allowed_hosts == ("gpu-box.lan", "*.lab.example", "192.168.1.20", "[fe80::1]")
    assert config.api_commands is True
    assert (config.gateway.read_timeout, config.gateway.idle_timeout) == (5.0, 1.5)


def test_a_config_path_that_is_not_a_readable_utf8_file_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"is a directory; give the path of a lab.toml file"):
        load_config(tmp_path)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[lab]\nlisten = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xe9 at offset 19\)"):
        load_config(latin)
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nest too deeply"):
        load_config(deep)
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * 2**20 + "\n")
    with pytest.raises(ConfigError, match="is larger than 1 MiB"):
        load_config(big)
    ok = write(tmp_path, SIM)

    def denied(*args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(ConfigError, match=r"cannot be read \(Permission denied\)"):
        load_config(ok)


def test_check_host_finds_models_and_executables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf")
    exe = tmp_path / "llama-server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    plain = tmp_path / "plain"
    plain.write_text("")

    def spec(**doc: object) -> DeploymentSpec:
        return DeploymentSpec.from_dict("d", doc)

    check_host(spec(engine="llamacpp", model=str(gguf), binary=str(exe)), "deployments.d")
    check_host(spec(engine="sim", model="Qwen/Qwen3-0.6B"), "deployments.d")
    check_host(spec(engine="sim", model=str(tmp_path)), "deployments.d")
    check_host(spec(engine="command", command=[sys.executable, "{port}"]), "deployments.d")
    for bad, message in [
        (spec(engine="llamacpp", model="/models/nope.gguf", binary=str(exe)),
         "deployments.d.model = '/models/nope.gguf': no such GGUF file; give the path of a .gguf model"),
        (spec(engine="llamacpp", model=str(fake), binary=str(exe)), "not a GGUF file"),
        (spec(engine="llamacpp", model=str(tmp_path), binary=str(exe)), "no such GGUF file"),
        (spec(engine="sim", model="./no/such/dir"), "deployments.d.model = './no/such/dir': no such file or directory"),
        (spec(engine="vllm", model="~/no-such-model-here", binary=str(exe)), "no such file or directory"),
        (spec(engine="vllm", model="m", binary="no-such-vllm-binary"),
         "deployments.d.binary = 'no-such-vllm-binary': not found on PATH"),
        (spec(engine="llamacpp", model=str(gguf), binary=str(plain)), "is not an executable file"),
        (spec(engine="command", command=["no-such-server-binary", "{port}"]),
         "deployments.d.command[0] = 'no-such-server-binary': not found on PATH"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError) as err:
            check_host(bad, "deployments.d")
        assert message in str(err.value), str(err.value)
    monkeypatch.setenv("PATH", str(tmp_path))
    check_host(spec(engine="llamacpp", model=str(gguf)), "deployments.d")  # llama-server on PATH
    with pytest.raises(ConfigError, match=r"deployments.d.binary \(default 'vllm'\): not found"):
        check_host(spec(engine="vllm", model="m"), "deployments.d")


def test_load_config_checks_the_host_unless_told_not_to(tmp_path: Path) -> None:
    text = '[deployments.small]\nengine = "llamacpp"\nmodel = "/models/none.gguf"\n'
    with pytest.raises(ConfigError, match="deployments.small.model = '/models/none.gguf': no such"):
        load_config(write(tmp_path, text))
    assert load_config(write(tmp_path, text), check_host=False).deployments[0].name == "small"


def test_the_example_documents_every_key_and_loads() -> None:
    config = load_config(EXAMPLE, check_host=False)
    assert {d.engine for d in config.deployments} == set(ENGINES)  # every engine shown
    text = EXAMPLE.read_text()
    skip = {
        "name",
        "deployments",
        "source",
        "gateway",
        "dashboard",
        "models",
        "gpu_names",
        "containers",
    }  # containers: lab.container_global_flags and container_run_flags
    for f in [*fields(DeploymentSpec), *fields(DashboardConfig), *fields(GatewayConfig),
              *fields(LabConfig), *fields(ModelsConfig)]:  # fmt: skip
        if f.name not in skip:
            assert f"\n{f.name} =" in text or f"\n# {f.name} =" in text, f.name
    for key in ("rate_per_minute", "models", "container_global_flags", "container_run_flags"):
        assert f"{key} =" in text
    assert config.containers[0] == ("--runtime", "runc", "--cgroup-manager", "cgroupfs")


def test_flags_refuse_what_no_engine_cli_can_take() -> None:
    with pytest.raises(ConfigError, match=r"args.x = nan: give a finite number"):
        flags({"x": float("nan")})
    with pytest.raises(ConfigError, match=r'args."a b" is not a flag name'):
        flags({"a b": 1})
    with pytest.raises(ConfigError, match=r"args.x = \[True\]: engine flags take"):
        flags({"x": [True]})


def test_the_audio_limit_follows_a_smaller_body_limit(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text("[gateway]\nmax_body_bytes = 4096\n")
    assert load_config(path).gateway.max_audio_bytes == 4096
    path.write_text("[gateway]\n")
    assert load_config(path).gateway.max_audio_bytes == 25 * 2**20


def test_the_models_table_is_checked_key_by_key(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, '[models]\npaths = ["~/m"]\nhf_cache = "/hf"\npull = true\n'),
        check_host=False,
    )
    assert config.models == ModelsConfig(paths=("~/m",), hf_cache="/hf", pull=True)
    assert load_config(None).models == ModelsConfig()
    with pytest.raises(ConfigError, match=r"models.cache is not a setting; use one of hf_cache"):
        load_config(write(tmp_path, '[models]\ncache = "/x"\n'), check_host=False)
    with pytest.raises(ConfigError, match=r"models.pull = 'yes': give true or false"):
        load_config(write(tmp_path, '[models]\npull = "yes"\n'), check_host=False)
    with pytest.raises(ConfigError, match=r"models.paths = 3: give a list"):
        load_config(write(tmp_path, "[models]\npaths = 3\n"), check_host=False)
