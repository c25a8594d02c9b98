"""OpenVLA's own server (``vla-scripts/deploy.py``) and OpenVLA-OFT's: robot actions.

``python vla-scripts/deploy.py --openvla_path MODEL --host H --port P`` (OFT's takes
``--pretrained_checkpoint``) serves ``POST /act``: a json-numpy camera frame and an
instruction in, an action out (7 floats; a K×D chunk for OFT). It has no health endpoint
and answers every error with HTTP 200 and the JSON string ``"error"``, so the lab's
readiness check is a real ``/act`` request whose answer must parse as an action. It loads
with Hugging Face's "Loading checkpoint shards: N%" and starts uvicorn ("Uvicorn running on
http://…"). It serves one request at a time. Flags keep draccus's underscores
(``--openvla_path``, not ``--openvla-path``).

``binary`` is the deploy script (run with ``python``, the interpreter first on PATH in
the engine's environment: give ``env = { PATH = "/opt/openvla/bin:…" }`` for a conda or
venv) or an executable wrapper that takes the same flags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import re
from typing import Any

from labctl import vla
from labctl.cache.resolve import resolve_model
from labctl.config import check_flag
from labctl.engines.base import Adapter, Estimate, Health, Launch, gpu_env
from labctl.errors import ConfigError, EngineError, LabError
from labctl.fit.openvla import plan_openvla
from labctl.gpu.sample import DeviceSample
from labctl.units import GiB

#: The readiness check: one real action for a small frame (the answer must be an action).
PROBE = vla.request(vla.frame(64, 64), "pick up the object")
_SHARDS = re.compile(r"Loading checkpoint shards:\s+(\d{1,3})%")


def _is_action(body: bytes) -> bool:
    try:
        vla.action(body)
    except vla.VlaError:
        return False
    return True


def probe_health(keys: Sequence[str]) -> Health:
    """``/act`` with a real frame (and the first dataset's ``unnorm_key`` where the
    checkpoint has several), ready when it answers an action."""
    payload = vla.request(vla.frame(64, 64), "pick up the object", keys[0]) if keys else PROBE
    return Health("/act", 200, _is_action, payload, timeout=30.0)


class OpenVlaAdapter(Adapter):
    name = "openvla"
    families = ("actions",)
    phase_lines = (
        (re.compile(r"Loading checkpoint shards:\s+100%"), "load_weights"),
        (re.compile(r"Uvicorn running on http|Application startup complete"), "api_server"),
    )
    health = probe_health(())

    def launch(
        self, settings: Mapping[str, Any], host: str, port: int, gpus: Sequence[int]
    ) -> Launch:
        script = settings.get("binary") or "vla-scripts/deploy.py"
        model = str(settings["model"])
        flag = "--pretrained_checkpoint" if oft(model) else "--openvla_path"
        head = ["python", script] if script.endswith(".py") else [script]
        argv = [*head, flag, model, "--host", host, "--port", str(port),
                *_underscored(settings.get("args", {}))]  # fmt: skip
        return Launch(argv, gpu_env(gpus), self.health_of(settings), None)

    def health_of(self, settings: Mapping[str, Any]) -> Health:
        return probe_health(self.unnorm_keys(settings))

    def progress(self, line: str) -> float | None:
        m = _SHARDS.search(line)
        return min(int(m.group(1)), 100) / 100 if m else None

    def default_concurrency(self, settings: Mapping[str, Any], planned: int | None) -> int:
        return 1  # one request at a time: a second would wait inside the server

    def unnorm_keys(self, settings: Mapping[str, Any]) -> tuple[str, ...]:
        """The datasets in a local checkpoint's ``dataset_statistics.json`` (deploy.py
        loads it into ``norm_stats``), or its config.json's ``norm_stats``."""
        return checkpoint_keys(str(settings.get("model") or ""))

    def estimate(self, settings: Mapping[str, Any], device: DeviceSample) -> Estimate:
        name, model = settings["name"], str(settings.get("model") or "")
        bits = weight_bits(settings.get("args", {}))
        try:
            plan = plan_openvla(resolve_model(model), device.memory_total_bytes, bits, oft(model))
        except LabError as exc:
            return Estimate(0, f"no plan ({exc}); the engine's own check decides")
        if not plan.fits:
            raise EngineError(f"{name}: {model} does not fit on GPU {device.index} "
                              f"({device.name}): {plan.summary()}")  # fmt: skip
        return Estimate(plan.total_bytes, f"{plan.total_bytes / GiB:.2f} GiB ({plan.summary()})",
                        max_num_seqs=1, weight_bytes=plan.weights_bytes)  # fmt: skip


def oft(model: str) -> bool:
    """Whether ``model`` is an OpenVLA-OFT checkpoint (its server takes
    ``--pretrained_checkpoint`` and answers action chunks)."""
    return "oft" in model.rsplit("/", 1)[-1].lower()


def weight_bits(args: Mapping[str, Any]) -> int:
    """The weights' bits as the server loads them (``load_in_8bit`` / ``load_in_4bit``)."""
    return 4 if args.get("load_in_4bit") else 8 if args.get("load_in_8bit") else 16


def checkpoint_keys(model: str) -> tuple[str, ...]:
    return tuple(sorted(vla.checkpoint_statistics(model)))


def _underscored(args: Mapping[str, Any]) -> list[str]:
    """draccus flags: ``{"load_in_4bit": true}`` → ``--load_in_4bit True``.

    Raises:
        ConfigError: a name that is not a flag's, or a value that is not a string, finite
            number or boolean (lists: draccus takes them as one JSON-ish string; give that).
    """
    out: list[str] = []
    for name, value in args.items():
        check_flag(name, value, "args")
        if isinstance(value, list):
            raise ConfigError(f"args.{name}: OpenVLA's server takes a list as one string, "
                              f'e.g. "[1, 2]"; give it so')  # fmt: skip
        if value is not None:
            out += [f"--{name}", str(value)]
    return out
