"""The twin (``labctl sim serve``): vLLM's flags, log lines and metrics on a simulated GPU."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import sys
from typing import Any

from labctl.engines.base import Estimate, Launch, flags, gpu_env
from labctl.engines.vllm import VllmAdapter, planned
from labctl.gpu.sample import DeviceSample


class SimAdapter(VllmAdapter):
    name = "sim"

    def launch(
        self, settings: Mapping[str, Any], host: str, port: int, gpus: Sequence[int]
    ) -> Launch:
        served = settings.get("served_model_name") or settings["model"]
        argv = [sys.executable, "-m", "labctl", "sim", "serve", "--model", settings["model"],
                "--host", host, "--port", str(port), "--served-model-name", served,
                *flags(settings.get("args", {}))]  # fmt: skip
        return Launch(argv, gpu_env(gpus), self.health, served)

    def estimate(self, settings: Mapping[str, Any], device: DeviceSample) -> Estimate:
        return planned(settings, device, required=True)  # the twin sizes itself the same way
