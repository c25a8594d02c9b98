"""Compare the planner with what vLLM printed at startup.

A *startup record* is one vLLM start as its log reports it: the model, GPU,
version and flags, and the figures vLLM printed ("Model loading took",
"Available KV cache memory", "GPU KV cache size", ...). Records use the field
names of ``shared/data/fit/vllm-startup-logs.jsonl``. This module turns a
record into a plan request and scores the plan against the logged figures,
three ways:

* ``tokens``: KV tokens (or blocks) given vLLM's own KV memory, which isolates
  the page, group and block accounting;
* ``weights``: the model memory vLLM reported after loading;
* ``kv``: the KV memory predicted from the GPU's total, the utilization, the
  parallel layout, the context length and the version.

The same functions back ``benchmarks/fit_accuracy.py`` and the accuracy test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
import re
from typing import Any

from labctl.catalog.arch import ModelArch
from labctl.catalog.gpus import GpuSpec, gpu
from labctl.catalog.models import resolve
from labctl.errors import LabError
from labctl.fit.plan import FitRequest, FitResult, plan
from labctl.units import GiB

#: Nightly builds named only by date, mapped to the release they preceded.
_NIGHTLY_BY_MONTH = {"2026-05": "0.21.0", "2026-06": "0.22.0", "2026-07": "0.23.0"}
_MONTHS = {
    m: f"{i:02d}"
    for i, m in enumerate(
        (
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ),
        1,
    )
}

#: Words in a record's GPU description, mapped to catalog ids (most specific first).
_GPU_WORDS: tuple[tuple[str, str | None], ...] = (
    ("GH200", None),  # Grace Hopper: not in the catalog
    ("A100 40GB", "a100-40gb"),
    ("A10040GB", "a100-40gb"),
    ("A100", "a100-80gb"),
    ("H100", "h100-sxm"),
    ("H200", "h200"),
    ("B200", "b200"),
    ("RTX 3090", "rtx-3090"),
    ("RTX 4090", "rtx-4090"),
    ("RTX 5090", "rtx-5090"),
    ("RTX PRO 6000", "rtx-pro-6000"),
    ("GB10", "gb10"),
    ("T4", "t4"),
    ("L40S", "l40s"),
    ("48GB", "l40s"),
    ("22.0", "a10"),
    ("L4", "l4"),
)

#: Phrases in a record's quantization field, mapped to the name token of a checkpoint.
_QUANT_TOKENS = (
    ("auto_round", "int4-AutoRound"),
    ("autoround", "int4-AutoRound"),
    ("nvfp4", "NVFP4"),
    ("awq", "AWQ"),
    ("gptq", "GPTQ"),
    ("w4a16", "w4a16"),
    ("bitsandbytes", "bnb-4bit"),
)


@dataclass(frozen=True)
class Setup:
    """A record turned into something the planner can run."""

    model: str
    arch: ModelArch
    gpu: GpuSpec | None
    request: FitRequest
    #: Why the record's KV memory cannot be predicted (missing facts), or "".
    kv_unknown: str


def parse_version(text: str) -> tuple[str, bool | None]:
    """A record's version text as (version, v0 engine or None)."""
    v0: bool | None = (
        True if re.search(r"\bV0\b", text) else (False if re.search(r"\bV1\b", text) else None)
    )
    numbers = re.findall(r"\d+\.\d+(?:\.\d+)?", text.split("(vs")[0])
    if "nightly" in text and numbers:
        return max(numbers, key=lambda n: tuple(int(x) for x in n.split("."))), v0
    if numbers:
        return numbers[0], v0
    m = re.search(r"(\d{4})-(\d{2})", text) or re.search(r"\((\w+) (\d{4})\)", text)
    if m:
        year, month = (
            (m.group(1), m.group(2))
            if m.group(1).isdigit()
            else (m.group(2), _MONTHS.get(m.group(1), "01"))
        )
        return _NIGHTLY_BY_MONTH.get(f"{year}-{month}", "0.24.0"), v0
    raise ValueError(f"no version in {text!r}")


def _gpu(record: Mapping[str, Any]) -> GpuSpec | None:
    text = str(record.get("gpu") or "")
    for word, gpu_id in _GPU_WORDS:
        if word in text:
            return gpu(gpu_id) if gpu_id else None
    return None


def model_text(record: Mapping[str, Any]) -> tuple[str, str | None]:
    """The MODEL a user would type for this record, and a runtime --quantization."""
    raw = str(record.get("model") or "")
    name = raw.split(" (", 1)[0].strip()
    quant = str(record.get("quantization") or "").lower()
    if "runtime" in quant and "fp8" in quant:
        return name, "fp8"
    lowered = name.lower()
    for phrase, token in _QUANT_TOKENS:
        if phrase in quant and token.lower().split("-")[-1] not in lowered:
            return f"{name}-{token}", None
    return name, None


def _notes_int(notes: str, *names: str) -> int | None:
    for name in names:
        m = re.search(rf"{name}[\s=:]+(\d+)", notes)
        if m:
            return int(m.group(1))
    return None


def setup(record: Mapping[str, Any]) -> Setup:
    """Build the plan request a record describes.

    Raises:
        LabError: the model cannot be resolved.
        ValueError: the record has no usable version.
    """
    name, runtime_quant = model_text(record)
    if not name:
        raise ValueError("the record names no model")
    raw = str(record.get("model") or "").split(" (", 1)[0].strip()
    try:
        plain = resolve(raw)
    except LabError:
        plain = None
    if plain is not None and (plain.quant is not None or name == raw):
        name, arch = raw, plain  # the repo name already says the format, or needs no suffix
    else:
        arch = resolve(name)
    spec = _gpu(record)
    version, v0 = parse_version(str(record.get("vllm_version") or ""))
    notes = str(record.get("notes") or "")
    logged_total = record.get("total_gpu_gib")
    total = int(logged_total * GiB) if logged_total else (spec.cuda_total_bytes if spec else 0)
    util = record.get("gpu_memory_utilization")
    kv_dtype = str(record.get("kv_cache_dtype") or "auto").split(" ")[0]
    dtype = str(record.get("dtype") or "auto")
    kv_unknown = ""
    if not total:
        kv_unknown = "GPU total memory not known"
    elif util is None:
        kv_unknown = "gpu_memory_utilization not recorded"
    spec_tokens = _notes_int(notes, r"MTP speculative decoding \(")
    unknown_gpu = {
        "gpu_name": str(record.get("gpu") or "GPU"),
        "gpu_compute_capability": (9, 0),
        "gpu_sm_count": 132,
    }
    request = FitRequest.on_gpu(
        spec,
        **({} if spec else unknown_gpu),
        gpu_total_bytes=total or 80 * GiB,
        tensor_parallel_size=int(record.get("tensor_parallel_size") or 1),
        pipeline_parallel_size=int(record.get("pipeline_parallel_size") or 1),
        max_model_len=record.get("max_model_len"),
        gpu_memory_utilization=float(util) if util else 0.9,
        kv_cache_dtype=kv_dtype if kv_dtype in ("fp8", "fp8_e5m2", "fp8_e4m3") else "auto",
        quantization=runtime_quant,
        dtype=dtype if dtype in ("bfloat16", "float16", "float32") else "auto",
        block_size=record.get("block_size"),
        max_num_seqs=_notes_int(notes, "max_num_seqs", "--max-num-seqs"),
        max_num_batched_tokens=_notes_int(
            notes, "max_num_batched_tokens", "--max-num-batched-tokens"
        ),
        vllm_version=version,
        v0_engine=v0,
        enable_prefix_caching=True
        if "prefix caching on" in notes or "--enable-prefix-caching" in notes
        else None,
        enforce_eager="--enforce-eager" in notes,
        speculative_tokens=spec_tokens or 0,
    )
    return Setup(name, arch, spec, request, kv_unknown)


def known_caveat(record: Mapping[str, Any], check: str = "kv") -> str:
    """A reason, read from the record, why the planner may not match it on ``check``."""
    notes = (
        str(record.get("notes") or "")
        + " "
        + str(record.get("source") or "")
        + " "
        + str(record.get("model"))
    )
    if check == "weights" and "unsloth-bnb" in notes:
        return "Unsloth dynamic 4-bit checkpoints keep some layers in 16 bits"
    checks = (
        ("DFlash", "an external DFlash drafter's layers share the KV pool (not modelled)"),
        (
            "club-3090",
            "club-3090 runs patched vLLM builds with speculative decoding the record does not list",
        ),
        ("drafter", "a draft model shares the KV pool (not modelled)"),
        ("LMCache", "the LMCache connector changes memory accounting"),
        ("LoRA", "LoRA adapters reserve memory the plan does not include"),
        ("lora", "LoRA adapters reserve memory the plan does not include"),
        ("diff-nodes", "tensor parallelism across nodes allocates extra NCCL buffers"),
        ("across 2 nodes", "tensor parallelism across nodes allocates extra NCCL buffers"),
        ("Unsloth", "Unsloth patches vLLM's memory profiling"),
        ("unsloth", "Unsloth patches vLLM's memory profiling"),
        ("dummy", "V0 profiles maximum-size multimodal inputs (cross-attention images)"),
        (
            "PR #10511 branch",
            "development build of the profiling rewrite (non-torch includes NCCL init)",
        ),
        ("tokenizer-mode", "Mistral-format loading changes the profile run"),
    )
    for needle, reason in checks:
        if needle in notes:
            return reason
    return _inconsistent(record)


def _inconsistent(record: Mapping[str, Any]) -> str:
    """Flag records whose own figures do not add up to their utilization."""
    parts = [
        record.get(k)
        for k in ("weights_gib", "activation_peak_gib", "non_torch_gib", "kv_cache_gib")
    ]
    total, util = record.get("total_gpu_gib"), record.get("gpu_memory_utilization")
    if all(isinstance(p, int | float) for p in parts) and total and util:
        implied = sum(parts) / total  # type: ignore[arg-type]
        if abs(implied - util) > 0.01:
            return f"the record's figures imply --gpu-memory-utilization {implied:.2f}, not {util}"
    if "GB10" in str(record.get("gpu")):
        return "unified memory: CUDA's total is the host RAM, which depends on the OS image"
    kv = record.get("kv_cache_gib")
    if isinstance(kv, int | float) and 0 < kv < 2.5:
        return (
            f"only {kv} GiB of KV is left: a 1 GiB difference in weights or activation "
            f"(e.g. a different MXFP4 or sampler kernel) is a {1 / kv:.0%} error here"
        )
    return ""


@dataclass(frozen=True)
class Score:
    """One comparison of a prediction with a logged figure."""

    row: int
    model: str
    gpu: str
    version: str
    check: str
    logged: float
    predicted: float
    caveat: str

    @property
    def error(self) -> float:
        """Relative error (predicted − logged) / logged."""
        return (self.predicted - self.logged) / self.logged if self.logged else float("inf")


def score_record(index: int, record: Mapping[str, Any]) -> tuple[list[Score], str]:
    """Every comparison a record supports, or the reason it supports none."""
    try:
        s = setup(record)
    except (LabError, ValueError) as exc:
        return [], f"not usable: {exc}"
    out: list[Score] = []
    label = s.gpu.id if s.gpu else str(record.get("gpu") or "?")
    version = str(s.request.vllm_version) + (" V0" if s.request.v0_engine else "")

    def add(check: str, logged: float, predicted: float) -> None:
        caveat = known_caveat(record, check)
        out.append(Score(index, s.model, label, version, check, logged, predicted, caveat))

    kv_gib = record.get("kv_cache_gib")
    tokens = record.get("kv_cache_tokens")
    blocks = record.get("gpu_blocks")
    if kv_gib and kv_gib > 0 and (tokens or blocks):
        res: FitResult = plan(
            s.arch, replace(s.request, kv_cache_memory_bytes=int(kv_gib * GiB)), suggest=False
        )
        if tokens:
            add("tokens", float(tokens), float(res.kv_cache_tokens))
        else:
            add("tokens", float(blocks or 0), float(res.num_gpu_blocks))
    weights = record.get("weights_gib")
    wants_kv = bool(kv_gib and kv_gib > 0 and not s.kv_unknown)
    if (weights and s.gpu is not None) or wants_kv:
        res = plan(s.arch, s.request, suggest=False)
    if weights and s.gpu is not None:
        add("weights", float(weights), res.model_load_bytes / GiB)
    if wants_kv:
        assert kv_gib is not None
        add("kv", float(kv_gib), res.kv_cache_bytes / GiB)
        true_weights = float(weights) if weights else res.model_load_bytes / GiB
        rule = s.request.gpu_total_bytes * s.request.gpu_memory_utilization / GiB - (
            1.2 * true_weights + 2.0
        )
        add("kv-gpustack", float(kv_gib), rule)
    if not out:
        return out, "not usable: " + (s.kv_unknown or "no logged figure to compare")
    return out, ""
