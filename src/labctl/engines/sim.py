"""The twin (``labctl sim serve``): vLLM's flags, log lines and metrics on a simulated GPU.

For an OpenVLA model it is OpenVLA's server instead (``POST /act``, no health endpoint,
errors as HTTP 200 ``"error"``): ready when a real action comes back, one request at a
time unless ``args.max_batch`` lets it batch, sized by the twin's own step model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import sys
from typing import Any

from labctl.engines.base import Estimate, Health, Launch, flags, gpu_env
from labctl.engines.openvla import OpenVlaAdapter, probe_health, weight_bits
from labctl.engines.vllm import VllmAdapter, model_kind, planned, sleep_env, sleep_flags
from labctl.gpu.sample import DeviceSample
from labctl.sim.act import checkpoint_stats, openvla_kind
from labctl.sim.vla import memory_bytes
from labctl.units import GiB

#: The twin's switches that come in on/off pairs as vLLM's do (``--no-enforce-eager``); its
#: own fault switches (``--ignore-sigterm``, …) are bare flags, which ``false`` leaves out.
PAIRED = frozenset({"enforce_eager", "enable_prefix_caching", "async_scheduling"})


class SimAdapter(VllmAdapter):
    name = "sim"
    phase_lines = VllmAdapter.phase_lines + OpenVlaAdapter.phase_lines

    def launch(
        self, settings: Mapping[str, Any], host: str, port: int, gpus: Sequence[int]
    ) -> Launch:
        served = settings.get("served_model_name") or settings["model"]
        own = flags(settings.get("args", {}), negate=PAIRED)
        argv = [sys.executable, "-m", "labctl", "sim", "serve", "--model", settings["model"],
                "--host", host, "--port", str(port), "--served-model-name", served, *own,
                *sleep_flags(settings, own)]  # fmt: skip
        vla = _vla(settings)
        env = gpu_env(gpus) | sleep_env(settings)
        return Launch(argv, env, self.health_of(settings), None if vla else served)

    def health_of(self, settings: Mapping[str, Any]) -> Health:
        return probe_health(self.unnorm_keys(settings)) if _vla(settings) else self.health

    def progress(self, line: str) -> float | None:
        return super().progress(line) or OpenVlaAdapter().progress(line)

    def unnorm_keys(self, settings: Mapping[str, Any]) -> tuple[str, ...]:
        if not _vla(settings):
            return ()
        model = str(settings["model"])
        return tuple(sorted(checkpoint_stats(model, bool(openvla_kind(model, _oft(settings))))))

    def default_concurrency(self, settings: Mapping[str, Any], planned: int | None) -> int:
        if _vla(settings):
            batch = settings.get("args", {}).get("max_batch")
            return batch if isinstance(batch, int) and batch > 0 else 1
        return super().default_concurrency(settings, planned)

    def estimate(self, settings: Mapping[str, Any], device: DeviceSample) -> Estimate:
        if _vla(settings):
            args = settings.get("args", {})
            oft = bool(openvla_kind(str(settings["model"]), _oft(settings)))
            need = memory_bytes(0, weight_bits(args), oft)
            return Estimate(need, f"{need / GiB:.2f} GiB (OpenVLA's server, the twin's model)",
                            max_num_seqs=1, weight_bytes=need)  # fmt: skip
        return planned(settings, device, required=True)  # the twin sizes itself the same way


def _vla(settings: Mapping[str, Any]) -> bool:
    return model_kind(str(settings.get("model") or "")) == "openvla"


def _oft(settings: Mapping[str, Any]) -> bool:
    return bool(settings.get("args", {}).get("oft"))
