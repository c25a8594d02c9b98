"""Any OpenAI-compatible server: ``command`` with ``{host}``, ``{port}``, ``{model}``, ``{name}``.

It serves what the deployment says (``serves``; chat and completions by default), answers
health where ``health_path`` says, and is not sized: its own check decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from labctl.engines.base import Adapter, Health, Launch, gpu_env
from labctl.engines.llamacpp import LlamaCppAdapter
from labctl.engines.vllm import VllmAdapter
from labctl.errors import ConfigError


class CommandAdapter(Adapter):
    name = "command"
    phase_lines = VllmAdapter.phase_lines + LlamaCppAdapter.phase_lines
    metrics = MappingProxyType({**VllmAdapter.metrics, **LlamaCppAdapter.metrics})

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
        return Launch(argv, gpu_env(gpus), self.health_of(settings),
                      settings.get("served_model_name"))  # fmt: skip

    def health_of(self, settings: Mapping[str, Any]) -> Health:
        return Health(settings.get("health_path") or "/health")
