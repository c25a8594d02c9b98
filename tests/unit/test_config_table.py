"""Every bad lab.toml value names its dotted key and shows the value, on one line.

A table of lab.toml files, each wrong in one place: the error names the key (``lab.*``,
``gateway.*``, ``gateway.keys[N].*``, ``dashboard.*``, ``deployments.NAME.*``), shows the
bad value as the file gave it, and is one line. Secrets (API keys, the admin token,
environment values) are the exception: they are named, never shown.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.config import FAMILIES, DeploymentSpec, load_config
from labctl.errors import ConfigError

SIM = '[deployments.chat]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\n'
VLLM = '[deployments.chat]\nengine = "vllm"\nmodel = "Qwen/Qwen3-8B"\n'
CMD = '[deployments.asr]\nengine = "command"\ncommand = ["srv", "--port", "{port}"]\n'
KEY = '{ key = "sk-0123456789"'

#: (lab.toml, the dotted key the message names, the bad value as the message shows it)
BAD: list[tuple[str, str, str]] = [
    # lab.*
    ('[lab]\nlisten = "localhost"\n', "lab.listen", "'localhost'"),
    ('[lab]\nlisten = "0.0.0.0:8080"\n', "lab.listen", "0.0.0.0"),
    ('[lab]\ngpu_backend = "cuda"\n', "lab.gpu_backend", "'cuda'"),
    ('[lab]\nsim_gpus = "2xrtx-3090,a100"\n', "lab.sim_gpus", "'2xrtx-3090,a100'"),
    ('[lab]\nsim_gpus = "0xl4"\n', "lab.sim_gpus", "'0xl4'"),
    ('[lab]\nsim_gpus = "40xl4,40xl4"\n', "lab.sim_gpus", "80 GPUs"),
    ('[lab]\nsim_gpus = ""\n', "lab.sim_gpus", "''"),
    ("[lab]\nsim_gpus = 2\n", "lab.sim_gpus", "= 2"),
    ('[lab]\ngpu_backend = "nvml"\nsim_gpus = "1xl4"\n', "lab.sim_gpus", "'1xl4'"),
    ('[lab]\nsim_gpus = "2xrtx-3090"\n' + SIM + "gpus = [0, 2]\n", "deployments.chat.gpus",
     "[0, 2]"),
    ('[lab]\nallowed_hosts = ["https://gpu-box"]\n', "lab.allowed_hosts[0]", "'https://gpu-box'"),
    ("[lab]\napi_commands = 1\n", "lab.api_commands", "= 1"),
    ('[lab]\ncolour = "blue"\n', "lab.colour", "colour"),
    ('[lab]\ncontainer_run_flags = "--ulimit"\n', "lab.container_run_flags", "'--ulimit'"),
    ("[lab]\ncontainer_global_flags = [1]\n", "lab.container_global_flags", "[1]"),
    (VLLM + 'runtime = "lxc"\nimage = "vllm/vllm-openai:v0.11.0"\n', "deployments.chat.runtime",
     "'lxc'"),
    (VLLM + 'runtime = "podman"\n', "deployments.chat.runtime", "'podman'"),
    (VLLM + 'runtime = "docker"\nimage = "vllm/vllm-openai"\n', "deployments.chat.image",
     "'vllm/vllm-openai'"),
    (VLLM + 'runtime = "docker"\nimage = "vllm/vllm-openai:latest"\n', "deployments.chat.image",
     "'vllm/vllm-openai:latest'"),
    (VLLM + 'runtime = "docker"\nimage = "localhost:5000/vllm"\n', "deployments.chat.image",
     "'localhost:5000/vllm'"),
    ('lab = "x"\n', "lab", "'x'"),
    ("[[dashboard]]\n", "dashboard", "[{}]"),
    # gateway.* and gateway.keys[*].*
    ("[gateway]\nmax_body_bytes = 512\n", "gateway.max_body_bytes", "= 512"),
    ("[gateway]\nqueue_timeout = -1\n", "gateway.queue_timeout", "= -1"),
    ('[gateway]\nswap_timeout = "5m"\n', "gateway.swap_timeout", "'5m'"),
    ("[gateway]\ndrain_timeout = 86401\n", "gateway.drain_timeout", "= 86401"),
    ("[gateway]\nread_timeout = false\n", "gateway.read_timeout", "= False"),
    ("[gateway]\nidle_timeout = 0\n", "gateway.idle_timeout", "= 0"),
    (f"[gateway]\nkeys = [{KEY}, rate_per_minute = 0 }}]\n", "gateway.keys[0].rate_per_minute",
     "= 0"),
    (f'[gateway]\nkeys = [{KEY}, models = "chat" }}]\n', "gateway.keys[0].models", "'chat'"),
    (f'[gateway]\nkeys = [{KEY}, models = ["a\\u0007b"] }}]\n', "gateway.keys[0].models",
     "['a\\x07b']"),
    (f'[gateway]\nkeys = [{KEY}, modles = ["chat"] }}]\n', "gateway.keys[0].modles", "modles"),
    ("[gateway]\nretries = 3\n", "gateway.retries", "retries"),
    ("[gateway]\nmax_audio_bytes = 10\n", "gateway.max_audio_bytes", "= 10"),
    ("[gateway]\nmax_body_bytes = 2048\nmax_audio_bytes = 4096\n", "gateway.max_audio_bytes",
     "= 4096"),
    (SIM + "rtfx_floor = -1\n", "deployments.chat.rtfx_floor", "= -1"),
    (SIM + 'rtfx_floor = "fast"\n', "deployments.chat.rtfx_floor", "'fast'"),
    (SIM + "control_hz = 0\n", "deployments.chat.control_hz", "= 0"),
    (SIM + "control_hz = true\n", "deployments.chat.control_hz", "= True"),
    # dashboard.*
    ("[dashboard]\ninterval = 0.1\n", "dashboard.interval", "= 0.1"),
    ("[dashboard]\ninterval = 60\nhistory = 30\n", "dashboard.history", "= 30"),
    ("[dashboard]\nhistory = 604801\n", "dashboard.history", "= 604801"),
    ("[dashboard]\nalert_for_scale = -1\n", "dashboard.alert_for_scale", "= -1"),
    ("[dashboard]\nrefresh = 5\n", "dashboard.refresh", "refresh"),
    # deployments.NAME.*
    ("deployments = 1\n", "deployments", "= 1"),
    ("[deployments]\nchat = 1\n", "deployments.chat", "= 1"),
    ('[[deployments.chat]]\nengine = "sim"\n', "deployments.chat", "[{'engine': 'sim'}]"),
    ('[deployments.chat]\nengine = "tgi"\nmodel = "m"\n', "deployments.chat.engine", "'tgi'"),
    ('[deployments.chat]\nengine = "sim"\nmodel = 42\n', "deployments.chat.model", "= 42"),
    (SIM + 'name = "other"\n', "deployments.chat.name", "'other'"),
    (SIM + "modle = 1\n", "deployments.chat.modle", "modle"),
    (SIM + 'gpus = "0"\n', "deployments.chat.gpus", "'0'"),
    (SIM + "gpus = [0, 0]\n", "deployments.chat.gpus", "[0, 0]"),
    (SIM + "port = -1\n", "deployments.chat.port", "= -1"),
    ('[lab]\nlisten = "127.0.0.1:9000"\n' + SIM + "port = 9000\n", "deployments.chat.port",
     "= 9000"),
    (SIM + 'args = "--max-model-len 8192"\n', "deployments.chat.args", "'--max-model-len 8192'"),
    (SIM + "args = { max_model_len = 0 }\n", "deployments.chat.args.max_model_len", "= 0"),
    (SIM + "args = { gpu_memory_utilization = 0.0 }\n",
     "deployments.chat.args.gpu_memory_utilization", "= 0.0"),
    (SIM + "args = { x = 1180591620717411303424 }\n", "deployments.chat.args.x",
     "= 1180591620717411303424"),
    (SIM + "args = { max_model_len = 4096, max-model-len = 8192 }\n",
     "deployments.chat.args.max-model-len", "deployments.chat.args.max_model_len"),
    (SIM + "args = { tensor_parallel_size = 2 }\n", "deployments.chat.args.tensor_parallel_size",
     "= 2"),
    (SIM + 'env = { "MY-VAR" = "x" }\n', "deployments.chat.env.MY-VAR", "MY-VAR"),
    (SIM + 'served_model_name = ""\n', "deployments.chat.served_model_name", "''"),
    (SIM + 'aliases = "fast"\n', "deployments.chat.aliases", "'fast'"),
    (SIM + 'health_path = "health"\n', "deployments.chat.health_path", "'health'"),
    (SIM + 'binary = "-vllm"\n', "deployments.chat.binary", "'-vllm'"),
    (SIM + "startup_timeout = 0\n", "deployments.chat.startup_timeout", "= 0"),
    (SIM + "stall_timeout = 1e6\n", "deployments.chat.stall_timeout", "= 1000000.0"),
    (SIM + "stop_grace = true\n", "deployments.chat.stop_grace", "= True"),
    (SIM + "max_concurrency = -3\n", "deployments.chat.max_concurrency", "= -3"),
    (SIM + "queue_size = 1.5\n", "deployments.chat.queue_size", "= 1.5"),
    (SIM + "port = 9000\n" + SIM.replace("chat", "code") + "port = 9000\n",
     "deployments.code.port", "= 9000"),
    (SIM + SIM.replace("[deployments.chat]", "[deployments.code]") + 'aliases = ["chat"]\n',
     "deployments.code.aliases", "['chat']"),
    ('[deployments.asr]\nengine = "command"\ncommand = "srv --port {port}"\n',
     "deployments.asr.command", "'srv --port {port}'"),
    ('[deployments.asr]\nengine = "command"\ncommand = ["srv", "{prot}"]\n',
     "deployments.asr.command[1]", "'{prot}'"),
    ('[deployments.asr]\nengine = "command"\n', "deployments.asr.command", "command"),
    # serves: command engines only, a non-empty list of known API families, each once
    (VLLM + 'serves = ["chat"]\n', "deployments.chat.serves", "['chat']"),
    (CMD + "serves = []\n", "deployments.asr.serves", "[]"),
    (CMD + 'serves = "chat"\n', "deployments.asr.serves", "'chat'"),
    (CMD + "serves = [1]\n", "deployments.asr.serves", "[1]"),
    (CMD + 'serves = ["chat", "speech"]\n', "deployments.asr.serves", "'speech'"),
    (CMD + 'serves = ["chat", "chat"]\n', "deployments.asr.serves", "['chat', 'chat']"),
]  # fmt: skip

#: Secrets: the message names the key and leaves the value out.
SECRET: list[tuple[str, str, str]] = [
    ('[gateway]\nadmin_token = "short-token"\n', "gateway.admin_token", "short-token"),
    ('[gateway]\nkeys = "sk-team-secret-1"\n', "gateway.keys", "sk-team-secret-1"),
    ('[gateway]\nkeys = ["sk-team-secret-1"]\n', "gateway.keys[0]", "sk-team-secret-1"),
    ('[gateway]\nkeys = [{ key = "sk 1" }]\n', "gateway.keys[0].key", "sk 1"),
    ('gateway = "sk-team-secret-1"\n', "gateway", "sk-team-secret-1"),
    ('[gateway]\nadmin_token = "sk-0123456789abcdef"\nkeys = [{ key = "sk-0123456789abcdef" }]\n',
     "gateway.admin_token repeats gateway.keys[0].key", "sk-0123456789abcdef"),
    (SIM + 'env = "HF_TOKEN=hf_secret_1"\n', "deployments.chat.env", "hf_secret_1"),
    (SIM + "env = { HF_TOKEN = 123456789 }\n", "deployments.chat.env.HF_TOKEN", "123456789"),
    (SIM + 'env = { HF_TOKEN = "hf_\\u0000secret" }\n', "deployments.chat.env.HF_TOKEN",
     "secret"),
]  # fmt: skip


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, check_host: bool = False) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), check_host=check_host)
    message = str(err.value)
    assert "\n" not in message and "\r" not in message, message
    return message


def test_config_table_has_many_distinct_bad_files_over_every_section() -> None:
    texts = [text for text, _, _ in BAD]
    assert len(set(texts)) == len(texts) >= 25
    keys = {key.split(".")[0].split("[")[0] for _, key, _ in BAD}
    assert keys == {"lab", "gateway", "dashboard", "deployments"}
    named = {part.split("[")[0] for _, key, _ in BAD for part in key.split(".")}
    for setting in ("engine", "gpus", "port", "args", "env", "command", "served_model_name",
                    "aliases", "startup_timeout", "stall_timeout", "stop_grace",
                    "max_concurrency", "queue_size", "health_path", "binary", "model",
                    "serves", "rate_per_minute", "models", "sim_gpus"):  # fmt: skip
        assert setting in named, setting


@pytest.mark.parametrize(("text", "key", "value"), BAD, ids=[f"{i}:{k}" for i, (_, k, _) in
                                                              enumerate(BAD)])  # fmt: skip
def test_config_table_names_the_dotted_key_and_the_bad_value(
    tmp_path: Path, text: str, key: str, value: str
) -> None:
    message = error_of(tmp_path, text)
    assert key in message and value in message, message
    # The key leads, or follows the file it is in (an unknown [section]).
    assert message.split(" ")[0].rstrip(":").startswith(key.split("[")[0]), message


@pytest.mark.parametrize(("text", "key", "secret"), SECRET, ids=[k for _, k, _ in SECRET])
def test_config_table_names_a_secret_without_showing_it(
    tmp_path: Path, text: str, key: str, secret: str
) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(key) and secret not in message, message


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ('[deployments.small]\nengine = "llamacpp"\nmodel = "/no/such/model.gguf"\n',
         "deployments.small.model", "'/no/such/model.gguf'"),
        (VLLM + 'binary = "no-such-vllm-binary"\n', "deployments.chat.binary",
         "'no-such-vllm-binary'"),
        ('[deployments.asr]\nengine = "command"\ncommand = ["no-such-server-binary"]\n',
         "deployments.asr.command[0]", "'no-such-server-binary'"),
        (SIM.replace("Qwen/Qwen3-0.6B", "./no/such/dir"), "deployments.chat.model",
         "'./no/such/dir'"),
    ],
)  # fmt: skip
def test_config_table_host_checks_name_the_key_and_the_value(
    tmp_path: Path, text: str, key: str, value: str
) -> None:
    message = error_of(tmp_path, text, check_host=True)
    assert message.startswith(key) and value in message, message


def test_config_serves_is_kept_round_trips_and_defaults_to_the_engines(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CMD + 'serves = ["transcriptions", "translations"]\n'),
                         check_host=False)  # fmt: skip
    (asr,) = config.deployments
    assert asr.serves == ("transcriptions", "translations")
    doc = asr.to_dict()
    assert doc["serves"] == ["transcriptions", "translations"]
    assert DeploymentSpec.from_dict("asr", doc) == asr
    plain = load_config(write(tmp_path, CMD), check_host=False).deployments[0]
    assert plain.serves == () and plain.to_dict()["serves"] is None and plain != asr
    assert DeploymentSpec.from_dict("asr", plain.to_dict()) == plain
    assert set(FAMILIES) == {"chat", "completions", "embeddings", "transcriptions",
                             "translations", "actions"}  # fmt: skip


def test_config_from_dict_names_a_body_that_is_not_a_table() -> None:
    with pytest.raises(ConfigError, match=r"^deploy chat = \[1\]: give a table of settings$"):
        DeploymentSpec.from_dict("chat", [1], where="deploy chat")


def test_config_a_path_that_cannot_be_looked_at_is_named(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 300) / "lab.toml"
    with pytest.raises(ConfigError, match=r"^--config .*: cannot be read \(File name too long\)$"):
        load_config(path)


def test_disk_read_rate_is_checked_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    for bad in ("0", "true", '"fast"', "1e9"):
        path.write_text(f"[lab]\ndisk_read_mbps = {bad}\n")
        with pytest.raises(ConfigError, match=r"lab\.disk_read_mbps = .*MB/s"):
            load_config(path, check_host=False)
    path.write_text("[lab]\ndisk_read_mbps = 2000\n")
    assert load_config(path, check_host=False).disk_read_mbps == 2000.0


def test_container_settings_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text('[lab]\ncontainer_global_flags = ["--runtime", "runc"]\n'
                    'container_run_flags = ["--ulimit", "nofile=16384:16384"]\n' + VLLM
                    + 'runtime = "podman"\nimage = "vllm/vllm-openai:v0.11.0"\n')  # fmt: skip
    config = load_config(path, check_host=True)  # the image holds vllm: PATH is not asked
    assert config.containers == (("--runtime", "runc"), ("--ulimit", "nofile=16384:16384"))
    (spec,) = config.deployments
    assert (spec.runtime, spec.image) == ("podman", "vllm/vllm-openai:v0.11.0")
    assert DeploymentSpec.from_dict("chat", spec.to_dict()) == spec  # journaled and restored
    for pinned in ("localhost:5000/vllm:v1", "vllm/vllm-openai@sha256:" + "a" * 64):
        doc = spec.to_dict() | {"image": pinned}
        assert DeploymentSpec.from_dict("chat", doc).image == pinned
