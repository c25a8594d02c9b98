"""One adapter per engine: its command line, how to tell it is ready, its startup phases.

An adapter is pure: it turns a deployment's settings into argv and environment,
names the health path, and reads the engine's log lines into startup phases.
Running the process is the runtime's job; probing it is the controller's.

Phases are named by the step that ends at the log line, so that
``labctl_engine_startup_seconds{phase}`` is the time from the previous phase
(or the spawn) to that line:

- ``load_weights``: vLLM "Model loading took …"; llama.cpp "llama_server: model loaded";
- ``profile``: vLLM "GPU KV cache size: …" (memory profiling and KV allocation);
- ``cuda_graphs``: vLLM "Graph capturing finished …";
- ``api_server``: vLLM "Application startup complete."; llama.cpp "listening on http://…".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import re
import sys
from typing import Any, Protocol

from labctl.config import check_flag
from labctl.errors import ConfigError

PHASES = ("load_weights", "profile", "cuda_graphs", "api_server")

_VLLM_PHASES = (
    (re.compile(r"Model loading took "), "load_weights"),
    (re.compile(r"GPU KV cache size: "), "profile"),
    (re.compile(r"Graph capturing finished"), "cuda_graphs"),
    (re.compile(r"Application startup complete"), "api_server"),
)
_LLAMACPP_PHASES = (
    (re.compile(r": model loaded"), "load_weights"),
    (re.compile(r": (server is )?listening on http"), "api_server"),
)


@dataclass(frozen=True)
class Launch:
    """How to run one engine process and see that it serves."""

    argv: list[str]
    env: dict[str, str]
    health_path: str
    #: The model id ``/v1/models`` must list before the engine counts as ready (None: any).
    served_model: str | None


class Adapter(Protocol):
    name: str
    #: The environment variable through which the engine takes an API key for its /v1 (None:
    #: it takes none). The lab gives each engine a key of its own that only the gateway and
    #: the lab's probes send, so nothing reaches an engine's port around the gateway.
    key_env: str | None

    def launch(
        self, settings: Mapping[str, Any], host: str, port: int, gpus: Sequence[int]
    ) -> Launch: ...

    def phase(self, line: str) -> str | None: ...


def flags(args: Mapping[str, Any], key: str = "args") -> list[str]:
    """``{"max_model_len": 8192, "enforce_eager": true}`` → ``--max-model-len 8192 --enforce-eager``.

    Raises:
        ConfigError: a name that is not a flag's, or a value that is not a string, finite
            number, boolean or list of strings and numbers (:func:`labctl.config.check_flag`).
    """
    out: list[str] = []
    for name, value in args.items():
        check_flag(name, value, key)
        flag = "--" + name.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            out += [flag, *(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def _missing(recommended: Sequence[str], own: Sequence[str]) -> list[str]:
    """The planner's ``--flag value`` pairs for flags the deployment does not set itself."""
    out: list[str] = []
    i = 0
    while i < len(recommended):
        flag = recommended[i]
        value = (
            []
            if i + 1 >= len(recommended) or recommended[i + 1].startswith("--")
            else [recommended[i + 1]]
        )
        if flag not in own:
            out += [flag, *value]
        i += 1 + len(value)
    return out


def _gpu_env(gpus: Sequence[int]) -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}


def _match(line: str, table: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, phase in table:
        if pattern.search(line):
            return phase
    return None


class VllmAdapter:
    name = "vllm"
    key_env: str | None = "VLLM_API_KEY"

    def launch(
        self, settings: Mapping[str, Any], host: str, port: int, gpus: Sequence[int]
    ) -> Launch:
        served = settings.get("served_model_name") or settings["model"]
        own = flags(settings.get("args", {}))
        argv = [settings.get("binary") or "vllm", "serve", settings["model"], "--host", host,
                "--port", str(port), "--served-model-name", served, *own,
                *_missing(settings.get("recommended_args", []), own)]  # fmt: skip
        return Launch(argv, _gpu_env(gpus), "/health", served)

    def phase(self, line: str) -> str | None:
        return _match(line, _VLLM_PHASES)


class SimAdapter(VllmAdapter):
    """The twin (`labctl sim serve`): vLLM's flags, log lines and metrics on a simulated GPU."""

    name = "sim"

    def launch(
        self, settings: Mapping[str, Any], host: str, port: int, gpus: Sequence[int]
    ) -> Launch:
        served = settings.get("served_model_name") or settings["model"]
        argv = [sys.executable, "-m", "labctl", "sim", "serve", "--model", settings["model"],
                "--host", host, "--port", str(port), "--served-model-name", served,
                *flags(settings.get("args", {}))]  # fmt: skip
        return Launch(argv, _gpu_env(gpus), "/health", served)


class LlamaCppAdapter:
    name = "llamacpp"
    key_env: str | None = "LLAMA_API_KEY"

    def launch(
        self, settings: Mapping[str, Any], host: str, port: int, gpus: Sequence[int]
    ) -> Launch:
        served = settings.get("served_model_name") or settings["name"]
        argv = [settings.get("binary") or "llama-server", "-m", settings["model"], "--host", host,
                "--port", str(port), "--metrics", "--alias", served,
                *flags(settings.get("args", {}))]  # fmt: skip
        return Launch(argv, _gpu_env(gpus), "/health", served)

    def phase(self, line: str) -> str | None:
        return _match(line, _LLAMACPP_PHASES)


class CommandAdapter:
    """Any OpenAI-compatible server: ``command`` with ``{host}``, ``{port}``, ``{model}``, ``{name}``."""

    name = "command"
    key_env: str | None = None

    def launch(
        self, settings: Mapping[str, Any], host: str, port: int, gpus: Sequence[int]
    ) -> Launch:
        values = {"host": host, "port": str(port), "model": settings.get("model") or "",
                  "name": settings["name"]}  # fmt: skip
        try:
            argv = [part.format(**values) for part in settings["command"]]
        except (KeyError, IndexError, AttributeError, ValueError) as exc:
            # lab.toml and the API check placeholders at load; this guards other callers.
            raise ConfigError(
                f"deployments.{settings['name']}.command uses an unknown placeholder {exc}; "
                "use {host}, {port}, {model} or {name}"
            ) from exc
        served = settings.get("served_model_name")
        return Launch(argv, _gpu_env(gpus), settings.get("health_path") or "/health", served)

    def phase(self, line: str) -> str | None:
        return _match(line, _VLLM_PHASES) or _match(line, _LLAMACPP_PHASES)


ADAPTERS: dict[str, Adapter] = {
    a.name: a for a in (VllmAdapter(), SimAdapter(), LlamaCppAdapter(), CommandAdapter())
}


def adapter(engine: str) -> Adapter:
    """Raises:
    ConfigError: an engine labctl has no adapter for.
    """
    try:
        return ADAPTERS[engine]
    except KeyError:
        raise ConfigError(
            f"engine {engine!r} is unknown; use one of {', '.join(sorted(ADAPTERS))}"
        ) from None
