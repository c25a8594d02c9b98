"""Where labctl keeps its state, and the lab's configuration (``lab.toml``).

``$LABCTL_HOME`` (default ``~/.local/state/labctl``) holds the deployment
journal, engine logs, the simulated-GPU ledger and the table of which process
belongs to which deployment.

``lab.toml`` is read whole and validated before anything starts; every error
names the dotted key, the bad value and what is allowed. Without a file the
lab runs its embedded default: a simulated RTX 3090 serving one twin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
import os
from pathlib import Path
import re
import tomllib
from typing import Any

from labctl.errors import ConfigError


def state_dir() -> Path:
    """``$LABCTL_HOME``, or ``$XDG_STATE_HOME/labctl``, or ``~/.local/state/labctl``."""
    if os.environ.get("LABCTL_HOME"):
        return Path(os.environ["LABCTL_HOME"]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "labctl"


# -- lab.toml -------------------------------------------------------------------------

ENGINES = ("vllm", "llamacpp", "sim", "command")
GPU_BACKENDS = ("auto", "nvml", "sim")
DEFAULT_LISTEN = "127.0.0.1:8080"


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment's settings: a revision, as stored in the journal (see :meth:`to_dict`)."""

    name: str
    engine: str
    model: str | None = None
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
            list(self.gpus),
            list(self.aliases),
            list(self.command),
        )
        doc["args"], doc["env"] = dict(self.args), dict(self.env)
        return doc

    @classmethod
    def from_dict(
        cls, name: str, doc: Mapping[str, Any], where: str | None = None
    ) -> DeploymentSpec:
        """Validate a deployment table.

        Raises:
            ConfigError: naming the dotted key, the bad value and what is allowed.
        """
        at = where or f"deployments.{name}"
        known = {f.name for f in fields(cls)} - {"name"}
        for key in doc:
            if key not in known and key != "name":
                raise ConfigError(
                    f"{at}.{key} is not a setting; use one of {', '.join(sorted(known))}"
                )
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{at}: the name {name!r} must be letters, digits, '.', '_' or '-'")
        engine = doc.get("engine")
        if engine not in ENGINES:
            raise ConfigError(f"{at}.engine = {engine!r}: use one of {', '.join(ENGINES)}")
        model = _opt_str(doc, "model", at)
        command = tuple(_str_list(doc, "command", at))
        if engine == "command":
            if not command:
                raise ConfigError(
                    f'{at}.command is required for engine \'command\', e.g. ["my-server", "--port", "{{port}}"]'
                )
        elif not model:
            raise ConfigError(f"{at}.model is required for engine {engine!r}")
            raise ConfigError(
                f"{at}.model = {model!r}: no such GGUF file; give the path of a .gguf model"
            )
        gpus = doc.get("gpus", [0])
        if (
            not isinstance(gpus, list)
            or not gpus
            or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus)
        ):
            raise ConfigError(
                f"{at}.gpus = {gpus!r}: give a list of GPU indices, e.g. [0] or [0, 1]"
            )
        port = doc.get("port", 0)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError(f"{at}.port = {port!r}: use 1–65535, or 0 to pick a free port")
        args = doc.get("args", {})
        if not isinstance(args, Mapping):
            raise ConfigError(
                f"{at}.args = {args!r}: give a table of engine flags, e.g. {{ max_model_len = 8192 }}"
            )
        env = doc.get("env", {})
        if not isinstance(env, Mapping) or not all(isinstance(v, str) for v in env.values()):
            raise ConfigError(f"{at}.env = {env!r}: give a table of strings")
        health = doc.get("health_path", "/health")
        if not isinstance(health, str) or not health.startswith("/"):
            raise ConfigError(f"{at}.health_path = {health!r}: give a path such as /health")
        timeout = doc.get("startup_timeout")
        if timeout is not None:
            timeout = _positive(doc, "startup_timeout", at)
        limit = doc.get("max_concurrency")
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise ConfigError(
                f"{at}.max_concurrency = {limit!r}: give a whole number of at least 1"
            )
        queue = doc.get("queue_size", 256)
        if not isinstance(queue, int) or isinstance(queue, bool) or queue < 0:
            raise ConfigError(f"{at}.queue_size = {queue!r}: give a whole number, 0 or more")
        return cls(
            name=name, engine=engine, model=model, gpus=tuple(gpus), port=port,
            served_model_name=_opt_str(doc, "served_model_name", at),
            aliases=tuple(_str_list(doc, "aliases", at)), args=dict(args), command=command,
            health_path=health, env=dict(env), binary=_opt_str(doc, "binary", at),
            startup_timeout=timeout,
            stall_timeout=_positive(doc, "stall_timeout", at, 300.0),
            stop_grace=_positive(doc, "stop_grace", at, 30.0),
            max_concurrency=limit, queue_size=queue,
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


@dataclass(frozen=True)
class DashboardConfig:
    #: Seconds between the daemon's own evaluations of the panels and alert rules.
    interval: float = 5.0
    #: Seconds of history the daemon keeps for the page.
    history: float = 3600.0
    #: Multiplies every alert rule's ``for``: 0 fires on the first true evaluation.
    alert_for_scale: float = 1.0


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


def parse_listen(value: object, key: str = "lab.listen") -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) → (host, port).

    Raises:
        ConfigError: not HOST:PORT with a port in 0–65535.
    """
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        if sep and host and port.isdigit() and int(port) <= 65535:
            return host, int(port)
    raise ConfigError(f"{key} = {value!r}: use HOST:PORT, e.g. 127.0.0.1:8080")


def load_config(path: Path | None) -> LabConfig:
    """Read and validate ``lab.toml`` completely; ``None`` gives the embedded default.

    Raises:
        ConfigError: the file is missing, not TOML, or any key is wrong.
    """
    if path is None:
        return default_config()
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    for key in doc:
        if key not in ("lab", "gateway", "dashboard", "deployments"):
            raise ConfigError(
                f"{path}: [{key}] is not a section; use [lab], [gateway], [dashboard] and "
                "[deployments.NAME]"
            )
    lab = doc.get("lab", {})
    known = {"listen", "gpu_backend", "sim_gpus"}
    for key in lab:
        if key not in known:
            raise ConfigError(f"lab.{key} is not a setting; use one of {', '.join(sorted(known))}")
    listen = lab.get("listen", DEFAULT_LISTEN)
    parse_listen(listen)
    backend = lab.get("gpu_backend", "sim" if lab.get("sim_gpus") else "auto")
    if backend not in GPU_BACKENDS:
        raise ConfigError(f"lab.gpu_backend = {backend!r}: use one of {', '.join(GPU_BACKENDS)}")
    sim_gpus = lab.get("sim_gpus")
    if sim_gpus is not None and not isinstance(sim_gpus, str):
        raise ConfigError(f"lab.sim_gpus = {sim_gpus!r}: give a string such as '1xrtx-3090'")
    deployments = doc.get("deployments", {})
    if not isinstance(deployments, dict):
        raise ConfigError("deployments must be tables: [deployments.NAME]")
    specs = []
    for name, table in deployments.items():
        if not isinstance(table, dict):
            raise ConfigError(f"deployments.{name} must be a table: [deployments.{name}]")
        specs.append(DeploymentSpec.from_dict(name, table))
    ports = [d.port for d in specs if d.port]
    if len(ports) != len(set(ports)):
        raise ConfigError(f"two deployments use the same port ({ports}); give each its own or 0")
    return LabConfig(
        listen, backend, sim_gpus, tuple(specs), str(path), _gateway(doc.get("gateway", {})),
        _dashboard(doc.get("dashboard", {})),
    )  # fmt: skip


def _dashboard(doc: Mapping[str, Any]) -> DashboardConfig:
    known = {"interval", "history", "alert_for_scale"}
    for key in doc:
        if key not in known:
            raise ConfigError(
                f"dashboard.{key} is not a setting; use one of {', '.join(sorted(known))}"
            )
    interval = _positive(doc, "interval", "dashboard", 5.0)
    history = _positive(doc, "history", "dashboard", 3600.0)
    if history < interval:
        raise ConfigError(
            f"dashboard.history = {history:g} is shorter than dashboard.interval = {interval:g}; "
            "keep at least one interval"
        )
    scale = doc.get("alert_for_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
        raise ConfigError(
            f"dashboard.alert_for_scale = {scale!r}: give a number of at least 0 (1 keeps each "
            "rule's for:, 0 fires at once)"
        )
    return DashboardConfig(interval, history, float(scale))


def _gateway(doc: Mapping[str, Any]) -> GatewayConfig:
    known = {
        "keys",
        "admin_token",
        "max_body_bytes",
        "queue_timeout",
        "swap_timeout",
        "drain_timeout",
    }
    for key in doc:
        if key not in known:
            raise ConfigError(
                f"gateway.{key} is not a setting; use one of {', '.join(sorted(known))}"
            )
    keys = []
    raw = doc.get("keys", [])
    if not isinstance(raw, list):
        raise ConfigError("gateway.keys must be a list: [[gateway.keys]] tables or inline tables")
    for i, k in enumerate(raw):
        at = f"gateway.keys[{i}]"
        if not isinstance(k, dict) or not isinstance(k.get("key"), str) or len(k["key"]) < 8:
            raise ConfigError(f"{at}.key: give a secret of at least 8 characters")
        for name in k:
            if name not in ("key", "rate_per_minute", "models"):
                raise ConfigError(f"{at}.{name} is not a setting; use key, rate_per_minute, models")
        rate = k.get("rate_per_minute")
        if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate < 1):
            raise ConfigError(f"{at}.rate_per_minute = {rate!r}: give a whole number of at least 1")
        keys.append(ApiKey(k["key"], rate, tuple(_str_list(k, "models", at))))
    token = _opt_str(doc, "admin_token", "gateway")
    size = doc.get("max_body_bytes", 32 * 2**20)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1024:
        raise ConfigError(f"gateway.max_body_bytes = {size!r}: give a byte count of at least 1024")
    return GatewayConfig(
        tuple(keys), token, size,
        _positive(doc, "queue_timeout", "gateway", 30.0),
        _positive(doc, "swap_timeout", "gateway", 300.0),
        _positive(doc, "drain_timeout", "gateway", 60.0),
    )  # fmt: skip


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _opt_str(doc: Mapping[str, Any], key: str, at: str) -> str | None:
    value = doc.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{at}.{key} = {value!r}: give a non-empty string")
    return value


def _str_list(doc: Mapping[str, Any], key: str, at: str) -> list[str]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{at}.{key} = {value!r}: give a list of strings")
    return value


def _positive(doc: Mapping[str, Any], key: str, at: str, default: float = 0.0) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{at}.{key} = {value!r}: give a positive number of seconds")
    return float(value)
