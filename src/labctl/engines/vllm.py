"""vLLM (``vllm serve``): its flags, log phases, metric names, and the planner's estimate.

A Whisper model (``WhisperForConditionalGeneration``) serves speech, not text:
``/v1/audio/transcriptions`` and ``/v1/audio/translations``, health on ``/health`` as for
any vLLM. Its startup differs in lines, not in phases: "Encoder-decoder models do not
support FULL_AND_PIECEWISE. Overriding cudagraph_mode to FULL_DECODE_ONLY." (the encoder
runs eager, decode steps replay graphs), then, in the API server, "Warming up audio
preprocessing libraries..." and "Audio preprocessing warmup completed in N s" (the first
librosa call; about 7 s), which ends the ``audio_warmup`` phase.

A deployment with ``sleep`` runs with ``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1``:
vLLM serves ``/sleep``, ``/wake_up`` and ``/is_sleeping`` only in its development mode
(``vllm/entrypoints/serve/sleep/api_router.py``), and does not ask for its API key there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import contextlib
from functools import lru_cache
import re
from types import MappingProxyType
from typing import Any

from labctl.cache.location import hub_cache_dir
from labctl.cache.repoid import parse_ref
from labctl.cache.resolve import resolve_model
from labctl.catalog.gpus import gpu as catalog_gpu
from labctl.engines.base import Adapter, Estimate, Launch, flags, gpu_env, missing
from labctl.errors import CatalogError, EngineError, LabError, ModelFormatError
from labctl.fit.plan import FitRequest, plan
from labctl.fit.sleep import asleep_bytes
from labctl.gpu.sample import DeviceSample
from labctl.units import GiB

#: vLLM flags the planner reads from a deployment's ``args``.
FIT_FLAGS = ("tensor_parallel_size", "pipeline_parallel_size", "max_model_len", "max_num_seqs",
             "max_num_batched_tokens", "gpu_memory_utilization", "kv_cache_dtype",
             "quantization", "enforce_eager", "enable_prefix_caching")  # fmt: skip
#: "Loading safetensors checkpoint shards:  50% Completed | 2/4 [00:03<00:03, …]"
_SHARDS = re.compile(r"checkpoint shards:\s+(\d{1,3})% Completed")


class VllmAdapter(Adapter):
    name = "vllm"
    key_env = "VLLM_API_KEY"
    sleeps = True
    families = ("chat", "completions", "embeddings")
    phase_lines: tuple[tuple[re.Pattern[str], str], ...] = (
        (re.compile(r"Model loading took "), "load_weights"),
        (re.compile(r"GPU KV cache size: "), "profile"),
        (re.compile(r"Graph capturing finished"), "cuda_graphs"),
        (re.compile(r"Audio preprocessing warmup completed"), "audio_warmup"),
        (re.compile(r"Application startup complete"), "api_server"),
    )
    metrics = MappingProxyType(
        {
            "vllm:num_requests_running": "labctl_engine_requests_running",
            "vllm:num_requests_waiting": "labctl_engine_requests_waiting",
            "vllm:kv_cache_usage_perc": "labctl_engine_kv_cache_usage_ratio",
            # the API server process's (one process: with more, vLLM's page has none)
            "process_cpu_seconds_total": "labctl_engine_api_server_cpu_seconds_total",
        }
    )

    def launch(
        self, settings: Mapping[str, Any], host: str, port: int, gpus: Sequence[int]
    ) -> Launch:
        served = settings.get("served_model_name") or settings["model"]
        own = flags(settings.get("args", {}), negate=True)
        argv = [settings.get("binary") or "vllm", "serve", settings["model"], "--host", host,
                "--port", str(port), "--served-model-name", served, *own,
                *missing(settings.get("recommended_args", []), own),
                *sleep_flags(settings, own)]  # fmt: skip
        env = gpu_env(gpus) | sleep_env(settings) | hub_env(settings)
        return Launch(argv, env, self.health, served)

    def serves(self, settings: Mapping[str, Any]) -> frozenset[str]:
        if settings.get("serves"):
            return frozenset(settings["serves"])
        kind = model_kind(str(settings.get("model") or ""))
        return frozenset(SPEECH if kind == "whisper" else ("actions",) if kind == "openvla"
                         else self.families)  # fmt: skip

    def progress(self, line: str) -> float | None:
        m = _SHARDS.search(line)
        return min(int(m.group(1)), 100) / 100 if m else None

    def estimate(self, settings: Mapping[str, Any], device: DeviceSample) -> Estimate:
        return planned(settings, device, required=False)


#: What a Whisper model serves in vLLM.
SPEECH = ("transcriptions", "translations")


def sleep_flags(settings: Mapping[str, Any], own: Sequence[str]) -> list[str]:
    """``--enable-sleep-mode`` for a deployment with ``sleep`` (unless its args give it)."""
    flag = "--enable-sleep-mode"
    return [flag] if settings.get("sleep") and flag not in own else []


def hub_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """``HF_HUB_OFFLINE=1`` and the lab's hub cache once the model's snapshot is whole there
    (vLLM then never waits on the hub); nothing for a local path or a missing snapshot."""
    model, revision = str(settings["model"]), settings.get("args", {}).get("revision")
    if parse_ref(model) is None:
        return {}
    from labctl.cache.pull import offline_env  # huggingface_hub: imported when it is needed

    return offline_env(model, str(revision) if revision else None, hub_cache_dir())


def sleep_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """vLLM's development mode, which serves the sleep endpoints, for a deployment with sleep."""
    return {"VLLM_SERVER_DEV_MODE": "1"} if settings.get("sleep") else {}


@lru_cache(maxsize=256)
def model_kind(model: str) -> str:
    """``whisper`` (speech to text), ``openvla`` (robot actions) or ``text``: by the name
    and the architecture where the catalog can read it (OpenVLA's reads as its backbone)."""
    kind = model.rsplit("/", 1)[-1].lower()
    with contextlib.suppress(LabError):  # not in the catalog or the cache: the name alone
        kind += " " + resolve_model(model, hub=False).model_type
    for known, names in (("whisper", ("whisper",)), ("openvla", ("openvla", "prismatic"))):
        if any(n in kind for n in names):
            return known
    return "text"


def is_speech(model: str) -> bool:
    """Whether vLLM (or the twin) serves ``model`` as speech to text."""
    return model_kind(model) == "whisper"


def planned(settings: Mapping[str, Any], device: DeviceSample, required: bool) -> Estimate:
    """The planner's (``labctl fit``) budget per GPU for a vLLM-style revision.

    Raises:
        EngineError: it does not fit (the planner's reasons), its model files are hostile or
            broken, or (``required``) the planner cannot size it.
    """
    name, model = settings["name"], str(settings["model"])
    try:
        revision = settings.get("args", {}).get("revision")
        arch = resolve_model(model, revision=str(revision) if revision else None)
        gpu_spec = catalog_gpu(device.catalog_id) if device.catalog_id else None
    except ModelFormatError as exc:  # the files are there and hostile or broken
        raise EngineError(f"{name}: {exc}") from exc
    except CatalogError as exc:
        if required:
            raise EngineError(f"{name}: {exc}") from exc
        return Estimate(0, f"no plan ({exc}); the engine's own check decides")
    args = {k.replace("-", "_"): v for k, v in settings.get("args", {}).items()}
    fields = {k: args[k] for k in FIT_FLAGS if k in args}
    fields.setdefault("tensor_parallel_size", len(settings.get("gpus") or (0,)))
    if gpu_spec is None and device.memory_total_bytes:
        fields["gpu_total_bytes"] = device.memory_total_bytes
    try:
        res = plan(arch, FitRequest.on_gpu(gpu_spec, **fields), suggest=False)
    except (LabError, TypeError, ValueError) as exc:
        raise EngineError(f"{name}: the planner cannot check these settings: {exc}") from exc
    if not res.fits:
        raise EngineError(
            f"{name}: {model} does not fit on GPU {device.index} ({device.name}): "
            + "; ".join(res.reasons)
        )
    return Estimate(
        res.budget_bytes,
        f"{res.budget_bytes / GiB:.2f} GiB per GPU (weights {res.weights_bytes / GiB:.2f} GiB, "
        f"KV cache {res.kv_cache_bytes / GiB:.2f} GiB for {res.kv_cache_tokens:,} tokens)",
        tuple(res.recommended_args),
        res.max_num_seqs,
        res.weights_bytes,
        asleep_bytes(res),
    )
