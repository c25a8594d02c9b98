"""llama.cpp's ``llama-server``: its flags, log phases, metrics, slots and GGUF size."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import re
from types import MappingProxyType
from typing import Any

from labctl.engines.base import Adapter, Estimate, Launch, flags, gpu_env, model_file
from labctl.gpu.sample import DeviceSample
from labctl.units import GiB


class LlamaCppAdapter(Adapter):
    name = "llamacpp"
    key_env = "LLAMA_API_KEY"
    families = ("chat", "completions", "embeddings")
    phase_lines = (
        (re.compile(r": model loaded"), "load_weights"),
        (re.compile(r": (server is )?listening on http"), "api_server"),
    )
    metrics = MappingProxyType(
        {
            "llamacpp:requests_processing": "labctl_engine_requests_running",
            "llamacpp:requests_deferred": "labctl_engine_requests_waiting",
        }
    )

    def launch(
        self, settings: Mapping[str, Any], host: str, port: int, gpus: Sequence[int]
    ) -> Launch:
        served = settings.get("served_model_name") or settings["name"]
        argv = [settings.get("binary") or "llama-server", "-m", settings["model"], "--host", host,
                "--port", str(port), "--metrics", "--alias", served,
                *flags(settings.get("args", {}))]  # fmt: skip
        return Launch(argv, gpu_env(gpus), self.health, served)

    def default_concurrency(self, settings: Mapping[str, Any], planned: int | None) -> int:
        """llama-server's slots (``--parallel``/``-np``; 4 where not set)."""
        args = settings.get("args", {})
        slots = args.get("parallel") or args.get("np")
        return int(slots) if isinstance(slots, int) and slots > 0 else 4

    def estimate(self, settings: Mapping[str, Any], device: DeviceSample) -> Estimate:
        path = model_file(settings, "a .gguf model")
        if path is None:
            return super().estimate(settings, device)
        size = path.stat().st_size
        return Estimate(size, f"{size / GiB:.2f} GiB of GGUF weights (KV cache not counted)",
                        weight_bytes=size)  # fmt: skip
