"""lab.toml's frozen dataclasses, and the validation of one table into one of them.

:meth:`DeploymentSpec.from_dict` is pure, so the journal and the admin API share it with
the file; the checks that look at this machine or across deployments are in
:mod:`labctl.config.load`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from labctl.config.values import (
    _ENV,
    _HEALTH,
    _NAME,
    DEFAULT_LISTEN,
    ENGINES,
    FAMILIES,
    MAX_GPUS,
    MAX_KEYS,
    RUNTIMES,
    SLEEP_ENGINES,
    WEEK,
    _check_placeholders,
    _count,
    _key,
    _kind,
    _model_id,
    _seconds,
    _secret,
    _show,
    _str_list,
    _text,
    _whole,
    check_flag,
    gpu_list,
)
from labctl.errors import ConfigError

#: vLLM (and twin) flags checked at load: whole numbers from 1 to the bound.
_VLLM_COUNTS = {
    "max_model_len": 2**31 - 1,
    "max_num_batched_tokens": 2**31 - 1,
    "max_num_seqs": 1_000_000,
    "tensor_parallel_size": MAX_GPUS,
    "pipeline_parallel_size": MAX_GPUS,
}


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment's settings: a revision, as stored in the journal (see :meth:`to_dict`)."""

    name: str
    engine: str
    model: str | None = None
    #: NVML indices (numbered in PCI bus order, as engines see them with the environment their
    #: adapters give them); -1 for a GPU named by UUID or bus id until the lab resolves it.
    gpus: tuple[int, ...] = (0,)
    port: int = 0
    served_model_name: str | None = None
    aliases: tuple[str, ...] = ()
    args: Mapping[str, Any] = field(default_factory=dict)
    command: tuple[str, ...] = ()
    health_path: str = "/health"
    env: Mapping[str, str] = field(default_factory=dict)
    binary: str | None = None
    #: Seconds to become ready; None: scaled to the model's weight bytes.
    startup_timeout: float | None = None
    #: Seconds without a log line during startup before the engine counts as stuck.
    stall_timeout: float = 300.0
    #: Seconds between SIGTERM and SIGKILL when stopping.
    stop_grace: float = 30.0
    #: Requests the gateway lets run at once (default: the engine's max_num_seqs, else 64).
    max_concurrency: int | None = None
    #: Requests that may wait for a slot before more are refused with 429.
    queue_size: int = 256
    #: The API families a ``command`` engine serves (names from :data:`FAMILIES`); empty:
    #: the engine's default. The journal form writes empty as None, as lab.toml leaves it out.
    serves: tuple[str, ...] = ()
    #: Speech: the real-time factor (audio seconds transcribed per wall second) below which
    #: the deployment counts as falling behind while requests queue (None: 1.0).
    rtfx_floor: float | None = None
    #: Actions (VLA): the rate its robots run at, in Hz (None: 5); an action slower than
    #: 1/control_hz misses its deadline.
    control_hz: float | None = None
    #: When a deploy replaces this revision, put it to sleep instead of stopping it (engines
    #: with a sleep mode): ``"auto"`` (level 1 when host RAM holds its weights, else 2), 1 or
    #: 2; None: stop it. A later deploy of the same settings wakes it (a warm swap).
    sleep: str | int | None = None
    #: The container image ``labctl export kubernetes`` runs it in (None: the engine's
    #: official image; ``command`` and ``openvla`` deployments have none and need one).
    image: str | None = None
    #: Run the engine in ``image`` through this container runtime (``podman`` or ``docker``)
    #: instead of as a host process (None: on the host).
    runtime: str | None = None
    #: ``gpus`` as lab.toml gives them where any is named by UUID or PCI bus id (empty: all
    #: are indices); the lab resolves them at start and at each deploy, and journals these.
    gpu_names: tuple[int | str, ...] = ()

    @property
    def served(self) -> str:
        """The model id clients ask for."""
        return (
            self.served_model_name
            or (self.model if self.engine in ("vllm", "sim") else None)
            or self.name
        )

    def to_dict(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["gpus"], doc["aliases"], doc["command"] = (
            list(self.gpu_names or self.gpus),
            list(self.aliases),
            list(self.command),
        )
        doc["args"], doc["env"] = dict(self.args), dict(self.env)
        doc["serves"] = list(self.serves) or None
        del doc["gpu_names"]  # written as gpus: a revision names its GPUs as lab.toml did
        return doc

    @classmethod
    def from_dict(cls, name: str, doc: object, where: str | None = None) -> DeploymentSpec:
        """Validate a deployment table (from lab.toml, the journal, or an admin API body).

        Pure: nothing here looks at the disk or PATH (see :func:`check_host`), nor at the
        other deployments (see :func:`check_lab`).

        Raises:
            ConfigError: naming the dotted key, the bad value and what is allowed.
        """
        if where is not None and not where.isprintable():  # a name from a URL, say
            where = repr(where)[1:-1]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(
                f"{where or 'deployments.' + _key(name)}: the name {_show(name)} must be 1 to 63 "
                "letters, digits, '.', '_' or '-', starting with a letter or digit (it names log "
                "files, systemd units and Kubernetes objects)"
            )
        at = where or f"deployments.{name}"
        if not isinstance(doc, Mapping):
            hint = "" if where else f", e.g. [deployments.{_key(name)}] on a line of its own"
            raise ConfigError(f"{at} = {_show(doc)}: give a table of settings{hint}")
        known = {f.name for f in fields(cls)} - {"name", "gpu_names"}
        for key in doc:
            if key not in known and key != "name":
                raise ConfigError(
                    f"{at}.{_key(key)} is not a setting; use one of {', '.join(sorted(known))}"
                )
        if doc.get("name", name) != name:  # the journal's form carries the name
            raise ConfigError(
                f"{at}.name = {_show(doc['name'])}: a deployment is named by its table; drop "
                "name, or rename the table"
            )
        engine = doc.get("engine")
        if engine not in ENGINES:
            raise ConfigError(f"{at}.engine = {_show(engine)}: use one of {', '.join(ENGINES)}")
        model = _text(doc, "model", at, "a Hugging Face id or a path", 4096)
        command = tuple(_str_list(doc, "command", at, 1024))
        if engine == "command":
            if not command:
                raise ConfigError(
                    f"{at}.command is required for engine 'command', e.g. "
                    '["my-server", "--port", "{port}"]'
                )
        elif not model:
            raise ConfigError(f"{at}.model is required for engine {engine!r}")
        for i, part in enumerate(command):
            _check_placeholders(part, f"{at}.command[{i}]")
        gpus, gpu_names = gpu_list(doc.get("gpus", [0]), at)
        port = doc.get("port", 0)
        if not _whole(port) or not 0 <= port <= 65535:
            raise ConfigError(f"{at}.port = {_show(port)}: use 1–65535, or 0 to pick a free port")
        args = doc.get("args", {})
        if not isinstance(args, Mapping) or len(args) > 256:
            raise ConfigError(
                f"{at}.args = {_show(args)}: give a table of at most 256 engine flags, e.g. "
                "{ max_model_len = 8192 }"
            )
        _check_args(args, f"{at}.args", engine, list(gpu_names or gpus))
        env = doc.get("env", {})
        if not isinstance(env, Mapping) or len(env) > 256:
            # Not shown: environment values are often credentials.
            what = f"{len(env)} variables" if isinstance(env, Mapping) else _kind(env)
            raise ConfigError(
                f"{at}.env is {what} (not shown); give a table of at most 256 strings, e.g. "
                '{ HF_HOME = "/data/hf" }'
            )
        for var, value in env.items():
            if not isinstance(var, str) or not _ENV.fullmatch(var):
                raise ConfigError(
                    f"{at}.env.{_key(var)} is not an environment variable name; use letters, "
                    "digits and '_', not starting with a digit"
                )
            if not isinstance(value, str) or "\0" in value or len(value) > 32768:
                # Values are not shown: they are often credentials.
                problem = (
                    "the value contains a NUL byte; remove it"
                    if isinstance(value, str) and "\0" in value
                    else "the value is longer than 32768 characters; shorten it"
                    if isinstance(value, str)
                    else f"the value is {_kind(value)} (not shown); give a string, e.g. \"1\""
                )  # fmt: skip
                raise ConfigError(f"{at}.env.{var}: {problem}")
        health = doc.get("health_path", "/health")
        if not isinstance(health, str) or not _HEALTH.fullmatch(health) or ".." in health:
            raise ConfigError(
                f"{at}.health_path = {_show(health)}: give a URL path such as /health (no spaces, "
                "control characters or '..')"
            )
        timeout = doc.get("startup_timeout")
        if timeout is not None:
            timeout = _seconds(doc, "startup_timeout", at, 0.0)
        limit = _count(doc, "max_concurrency", at, 1, 100_000)
        queue = _count(doc, "queue_size", at, 0, 1_000_000, 256) or 0
        aliases = _str_list(doc, "aliases", at, 64)
        if not all(_model_id(a) for a in aliases):
            raise ConfigError(
                f"{at}.aliases = {_show(aliases)}: give model ids without control characters, "
                "at most 256 characters each"
            )
        served = _text(doc, "served_model_name", at, "a model id", 256)
        image = _text(doc, "image", at, "a container image, e.g. ghcr.io/me/server:1.0", 512)
        if image is not None and any(c.isspace() for c in image):
            raise ConfigError(
                f"{at}.image = {_show(image)}: an image reference has no spaces; give e.g. "
                "ghcr.io/me/server:1.0"
            )
        runtime = doc.get("runtime")
        if runtime is not None and runtime not in RUNTIMES:
            raise ConfigError(f"{at}.runtime = {_show(runtime)}: use one of {', '.join(RUNTIMES)}, "
                              "or leave it out to run the engine on the host")  # fmt: skip
        if runtime is not None and image is None:
            raise ConfigError(f"{at}.runtime = {_show(runtime)} needs {at}.image, pinned by tag or "
                              "digest, e.g. vllm/vllm-openai:v0.11.0")  # fmt: skip
        tag = (image or "").rpartition("/")[2].partition("@")[0].rpartition(":")[2]
        if (
            runtime is not None
            and "@sha256:" not in (image or "")
            and (":" not in (image or "").rpartition("/")[2] or tag == "latest")
        ):
            raise ConfigError(f"{at}.image = {_show(image)}: pin it by tag or digest (a moving tag "
                              "changes what a rollback runs), e.g. vllm/vllm-openai:v0.11.0")  # fmt: skip
        floor = doc.get("rtfx_floor")
        if floor is not None and (
            isinstance(floor, bool) or not isinstance(floor, (int, float))
            or not 0 <= floor <= 10_000
        ):  # fmt: skip
            raise ConfigError(
                f"{at}.rtfx_floor = {_show(floor)}: give the real-time factor (audio seconds per "
                "wall second) below which queued speech falls behind, from 0 to 10000, e.g. 1.0"
            )
        hz = doc.get("control_hz")
        if hz is not None and (
            isinstance(hz, bool) or not isinstance(hz, (int, float)) or not 0.1 <= hz <= 1000
        ):
            raise ConfigError(
                f"{at}.control_hz = {_show(hz)}: give the robots' control rate in Hz, from 0.1 to "
                "1000, e.g. 5 (OpenVLA) or 25 (an action chunk per second)"
            )
        return cls(
            name=name, engine=engine, model=model, gpus=gpus, gpu_names=gpu_names, port=port,
            served_model_name=served, aliases=tuple(aliases), args=dict(args), command=command,
            health_path=health, env=dict(env),
            binary=_text(doc, "binary", at, "an executable's name or path", 4096),
            startup_timeout=timeout,
            stall_timeout=_seconds(doc, "stall_timeout", at, 300.0),
            stop_grace=_seconds(doc, "stop_grace", at, 30.0),
            max_concurrency=limit, queue_size=queue, serves=_serves(doc, at, engine),
            rtfx_floor=None if floor is None else float(floor),
            control_hz=None if hz is None else float(hz), sleep=_sleep(doc, at, engine),
            image=image, runtime=runtime,
        )  # fmt: skip


@dataclass(frozen=True)
class ApiKey:
    key: str
    #: Requests per minute this key may make (None: no limit).
    rate_per_minute: int | None = None
    #: Models (deployment names, served ids or aliases) it may use (empty: all).
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayConfig:
    keys: tuple[ApiKey, ...] = ()
    admin_token: str | None = None
    max_body_bytes: int = 32 * 2**20
    #: Seconds a request may wait for a slot before a 503.
    queue_timeout: float = 30.0
    #: Seconds a request may be held while its deployment is swapped.
    swap_timeout: float = 300.0
    #: Seconds the requests in flight get to finish before a swap stops their engine.
    drain_timeout: float = 60.0
    #: Seconds a client has to send a request's headers and body.
    read_timeout: float = 60.0
    #: Seconds an idle keep-alive connection is kept open.
    idle_timeout: float = 75.0
    #: The largest audio file a speech request may carry (vLLM's and OpenAI's 25 MB, or
    #: ``max_body_bytes`` where that is smaller).
    max_audio_bytes: int = 25 * 2**20


@dataclass(frozen=True)
class DashboardConfig:
    #: Seconds between the daemon's own evaluations of the panels and alert rules.
    interval: float = 5.0
    #: Seconds of history the daemon keeps for the page.
    history: float = 3600.0
    #: Multiplies every alert rule's ``for``: 0 fires on the first true evaluation.
    alert_for_scale: float = 1.0


@dataclass(frozen=True)
class ModelsConfig:
    """``[models]``: where the lab looks for model files besides the Hugging Face cache."""

    #: Loose GGUF files and model directories (or folders of them), ``~`` expanded.
    paths: tuple[str, ...] = ()
    #: The Hugging Face hub cache (None: huggingface_hub's own choice: ``HF_HUB_CACHE``,
    #: ``HF_HOME``/hub, ``~/.cache/huggingface/hub``).
    hf_cache: str | None = None
    #: Ollama's model store, read only (None: ``OLLAMA_MODELS``, else its default places).
    ollama: str | None = None
    #: Whether a deploy may pull a model missing from the cache (a deploy step with
    #: progress); otherwise preflight refuses it and names the ``labctl models pull`` to run.
    pull: bool = False


@dataclass(frozen=True)
class LabConfig:
    listen: str = DEFAULT_LISTEN
    gpu_backend: str = "auto"
    #: Simulated GPUs, e.g. ``1xrtx-3090`` (with ``gpu_backend = "sim"``).
    sim_gpus: str | None = None
    deployments: tuple[DeploymentSpec, ...] = ()
    source: str = "embedded default"
    gateway: GatewayConfig = GatewayConfig()
    dashboard: DashboardConfig = DashboardConfig()
    #: Host names the HTTP ``Host`` header may carry besides the listen address and
    #: loopback (lower case; ``*.lan`` matches any name under ``lan``).
    allowed_hosts: tuple[str, ...] = ()
    #: Whether admin API changes may bring in a ``command`` engine or change a ``binary``
    #: or ``command`` (lab.toml itself always may).
    api_commands: bool = False
    #: The model disk's read rate in MB/s, for engines' startup timeouts until a start has
    #: measured one (None: 250 MB/s).
    disk_read_mbps: float | None = None
    #: Flags for the container runtime: before its subcommand, and after ``run``.
    containers: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    models: ModelsConfig = ModelsConfig()
    #: The doctor's check codes whose failures do not refuse deploys (still reported): the
    #: way past a doctor that is wrong about this machine.
    doctor_ignore: tuple[str, ...] = ()

    def deployment(self, name: str) -> DeploymentSpec:
        for d in self.deployments:
            if d.name == name:
                return d
        names = ", ".join(d.name for d in self.deployments) or "none"
        raise ConfigError(f"no deployment named {name!r}; the lab has: {names}")


#: The embedded default: a simulated RTX 3090 and one twin of a model that fits it.
DEFAULT_MODEL = "Qwen/Qwen3-0.6B"


def default_config() -> LabConfig:
    chat = DeploymentSpec(
        name="chat", engine="sim", model=DEFAULT_MODEL, gpus=(0,),
        args={"max_model_len": 8192, "load_gbps": 8.0, "enforce_eager": True},
    )  # fmt: skip
    return LabConfig(gpu_backend="sim", sim_gpus="1xrtx-3090", deployments=(chat,))


def _models(doc: Mapping[str, Any]) -> ModelsConfig:
    known = {"paths", "hf_cache", "ollama", "pull"}
    for key in doc:
        if key not in known:
            raise ConfigError(
                f"models.{_key(key)} is not a setting; use one of {', '.join(sorted(known))}"
            )
    paths = _str_list(doc, "paths", "models", 256)
    places = {}
    for key in ("hf_cache", "ollama"):
        places[key] = _text(doc, key, "models", "a directory", 4096)
    pull = doc.get("pull", False)
    if not isinstance(pull, bool):
        raise ConfigError(f"models.pull = {_show(pull)}: give true or false")
    return ModelsConfig(tuple(paths), places["hf_cache"], places["ollama"], pull)


def _dashboard(doc: Mapping[str, Any]) -> DashboardConfig:
    known = {"interval", "history", "alert_for_scale"}
    for key in doc:
        if key not in known:
            raise ConfigError(
                f"dashboard.{_key(key)} is not a setting; use one of {', '.join(sorted(known))}"
            )
    interval = _seconds(doc, "interval", "dashboard", 5.0, low=0.25, high=3600.0)
    history = _seconds(doc, "history", "dashboard", 3600.0, high=WEEK)
    if history < interval:
        raise ConfigError(
            f"dashboard.history = {history:g} is shorter than dashboard.interval = {interval:g}; "
            "keep at least one interval"
        )
    if history / interval > 100_000:
        raise ConfigError(
            f"dashboard.history = {history:g} at dashboard.interval = {interval:g} keeps "
            f"{history / interval:.0f} points; keep at most 100000 (a longer interval or a "
            "shorter history)"
        )
    scale = doc.get("alert_for_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale <= 100:
        raise ConfigError(
            f"dashboard.alert_for_scale = {_show(scale)}: give a number of at least 0 and at most "
            "100 (1 keeps each rule's for:, 0 fires at once)"
        )
    return DashboardConfig(interval, history, float(scale))


def _gateway(doc: Mapping[str, Any]) -> GatewayConfig:
    known = {"keys", "admin_token", "max_body_bytes", "queue_timeout", "swap_timeout",
             "drain_timeout", "read_timeout", "idle_timeout", "max_audio_bytes"}  # fmt: skip
    for key in doc:
        if key not in known:
            raise ConfigError(
                f"gateway.{_key(key)} is not a setting; use one of {', '.join(sorted(known))}"
            )
    raw = doc.get("keys", [])
    if not isinstance(raw, list):  # not shown: it may hold a key
        raise ConfigError(
            f"gateway.keys is {_kind(raw)} (not shown); give a list: [[gateway.keys]] tables or "
            'inline tables such as [{ key = "…" }]'
        )
    if len(raw) > MAX_KEYS:
        raise ConfigError(f"gateway.keys: {len(raw)} keys; give at most {MAX_KEYS}")
    keys: list[ApiKey] = []
    seen: dict[str, int] = {}
    for i, k in enumerate(raw):
        at = f"gateway.keys[{i}]"
        if not isinstance(k, dict):
            raise ConfigError(
                f"{at} is {_kind(k)} (not shown); give a table such as "
                '{ key = "…", rate_per_minute = 600 }'
            )
        if not _secret(k.get("key"), 8):
            raise ConfigError(
                f"{at}.key: give a secret of at least 8 printable ASCII characters (no spaces)"
            )
        for name in k:
            if name not in ("key", "rate_per_minute", "models"):
                raise ConfigError(
                    f"{at}.{_key(name)} is not a setting; use key, rate_per_minute, models"
                )
        if k["key"] in seen:  # named by position: a key is never shown
            raise ConfigError(
                f"{at}.key repeats gateway.keys[{seen[k['key']]}].key; give each client its own "
                "key, or merge the two entries"
            )
        seen[k["key"]] = i
        rate = _count(k, "rate_per_minute", at, 1, 1_000_000)
        models = _str_list(k, "models", at, 256)
        if not all(_model_id(m) for m in models):
            raise ConfigError(
                f"{at}.models = {_show(models)}: give model ids without control characters"
            )
        keys.append(ApiKey(k["key"], rate, tuple(models)))
    token = doc.get("admin_token")
    if token is not None:
        if not _secret(token, 16):
            raise ConfigError(
                "gateway.admin_token: give a secret of at least 16 printable ASCII characters "
                "(no spaces), e.g. from `openssl rand -hex 16`"
            )
        if token in seen:
            raise ConfigError(
                f"gateway.admin_token repeats gateway.keys[{seen[token]}].key; the admin token "
                "must differ from every API key"
            )
    size = doc.get("max_body_bytes", 32 * 2**20)
    if not _whole(size) or not 1024 <= size <= 2**30:
        raise ConfigError(
            f"gateway.max_body_bytes = {_show(size)}: give a byte count from 1024 to "
            f"{2**30} (1 GiB)"
        )
    audio = doc.get("max_audio_bytes", min(25 * 2**20, size))  # no more than the body
    if not _whole(audio) or not 1024 <= audio <= size:
        raise ConfigError(
            f"gateway.max_audio_bytes = {_show(audio)}: give a byte count from 1024 to "
            f"gateway.max_body_bytes ({size}), e.g. 26214400 (25 MiB)"
        )
    return GatewayConfig(
        tuple(keys), token, size,
        _seconds(doc, "queue_timeout", "gateway", 30.0),
        _seconds(doc, "swap_timeout", "gateway", 300.0),
        _seconds(doc, "drain_timeout", "gateway", 60.0),
        _seconds(doc, "read_timeout", "gateway", 60.0),
        _seconds(doc, "idle_timeout", "gateway", 75.0),
        audio,
    )  # fmt: skip


def _sleep(doc: Mapping[str, Any], at: str, engine: str) -> str | int | None:
    """``sleep``: false (or absent), true or "auto", 1 or 2; only for engines with a sleep mode."""
    value = doc.get("sleep")
    if value is None or value is False:
        return None
    if value is True:
        value = "auto"
    if value not in ("auto", 1, 2) or isinstance(value, float):
        raise ConfigError(
            f'{at}.sleep = {_show(value)}: give "auto" (level 1 when host RAM holds the '
            "weights, else 2), 1 (weights kept in host RAM), 2 (weights dropped) or false"
        )
    if engine not in SLEEP_ENGINES:
        raise ConfigError(
            f"{at}.sleep: engine {engine!r} has no sleep mode ({' and '.join(SLEEP_ENGINES)} "
            "have); drop sleep"
        )
    return value


def _serves(doc: Mapping[str, Any], at: str, engine: str) -> tuple[str, ...]:
    """``serves``: for a ``command`` engine, the API families it serves, each once."""
    value = doc.get("serves")
    if value is None:
        return ()
    shown = f"{at}.serves = {_show(value)}"
    if engine != "command":
        raise ConfigError(
            f"{shown}: only engine 'command' takes serves (labctl knows what {engine!r} "
            "serves); drop it"
        )
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{shown}: give a non-empty list of API families from {', '.join(FAMILIES)}, e.g. "
            '["chat", "completions"]; leave it out for the engine\'s default'
        )
    for i, family in enumerate(value):
        if family not in FAMILIES:
            raise ConfigError(
                f"{shown}: {_show(family)} is not an API family; use {', '.join(FAMILIES)}"
            )
        if family in value[:i]:
            raise ConfigError(f"{shown}: {family!r} is listed twice; list each family once")
    return tuple(value)


def _check_args(args: Mapping[Any, Any], at: str, engine: str, gpus: list[int | str]) -> None:
    """Every flag's shape; for vLLM and the twin, the ranges of the flags labctl plans with."""
    seen: dict[str, str] = {}
    for name, value in args.items():
        check_flag(name, value, at)
        flag = name.replace("-", "_")
        if flag in seen:
            raise ConfigError(f"{at}.{name} repeats {at}.{seen[flag]}; give the flag once")
        seen[flag] = name
        if engine not in ("vllm", "sim") or value is None:
            continue
        if flag in _VLLM_COUNTS and (not _whole(value) or not 1 <= value <= _VLLM_COUNTS[flag]):
            raise ConfigError(
                f"{at}.{name} = {_show(value)}: give a whole number from 1 to {_VLLM_COUNTS[flag]}"
            )
        if flag == "gpu_memory_utilization" and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1
        ):
            raise ConfigError(
                f"{at}.{name} = {_show(value)}: give a fraction above 0 and at most 1, e.g. 0.9"
            )
    if engine in ("vllm", "sim") and "tensor_parallel_size" in seen:
        tp = args[seen["tensor_parallel_size"]] or 1
        pp = args.get(seen.get("pipeline_parallel_size", ""), 1) or 1
        if tp * pp != len(gpus):
            raise ConfigError(
                f"{at}.{seen['tensor_parallel_size']} = {tp} with {at.rsplit('.', 1)[0]}.gpus = "
                f"{gpus}: vLLM runs one worker per GPU (tensor_parallel_size × "
                f"pipeline_parallel_size = {tp * pp}); list {tp * pp} GPUs, or change the sizes"
            )
