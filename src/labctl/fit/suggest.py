"""What to change when a model does not fit: alternatives, each planned for real.

Single changes and combinations (weight format, KV cache dtype, GPU count,
context, batch limits, utilization) are planned with :func:`labctl.fit.plan.plan`
and ranked by how little they give up.
"""

from __future__ import annotations

from dataclasses import replace

from labctl.catalog.arch import ModelArch, QuantInfo
from labctl.errors import UsageError
from labctl.fit.plan import FitRequest, FitResult, Suggestion, WeightsMemo, plan

#: Smaller weight formats to try, from the current one.
_SMALLER: dict[str | None, tuple[str, ...]] = {
    None: ("fp8", "gptq"),
    "fp8": ("gptq",),
    "fp8-channel": ("gptq",),
    "fp8-block": ("gptq",),
    "int8": ("gptq",),
}
_FORMAT_LABEL = {"fp8": "FP8 weights", "gptq": "4-bit weights"}
#: How much each kind of change gives up; suggestions are ranked by the sum.
_COST = {"kv": 1.0, "util": 0.5, "seqs": 0.5, "context": 3.0, "fp8": 2.0, "gptq": 4.0, "gpus": 10.0}


def suggestions(
    arch: ModelArch,
    req: FitRequest,
    res: FitResult,
    limit: int = 5,
    weights_memo: WeightsMemo | None = None,
) -> list[Suggestion]:
    """Changes that make the model fit, ranked by how little they give up, each planned for real.

    Single changes and combinations (weight format × KV dtype × GPU count) are
    all planned; the ones that fit come first, cheapest first; when nothing
    fits, the ones that reach the longest context.
    """
    if res.fits and res.max_concurrency >= 1:
        return []
    wanted = res.max_model_len
    current = arch.quant.method if arch.quant else (req.quantization or None)
    formats: list[str | None] = [None, *_SMALLER.get(current, ())]
    kv_options = [False, True] if res.kv_cache_dtype in ("bfloat16", "float16") else [False]
    gpus = [req.tensor_parallel_size] + [
        tp
        for tp in (2, 4, 8)
        if tp > req.tensor_parallel_size
        and arch.num_attention_heads % tp == 0
        and (arch.num_kv_heads % tp == 0 or tp % max(arch.num_kv_heads, 1) == 0)
    ]
    candidates: list[tuple[float, str, dict[str, str], ModelArch, FitRequest]] = []
    for fmt in formats:
        for kv8 in kv_options:
            for tp in gpus:
                if fmt is None and not kv8 and tp == req.tensor_parallel_size:
                    continue
                labels: list[str] = []
                args: dict[str, str] = {}
                cost, r, a = 0.0, req, arch
                if fmt is not None:
                    labels.append(_FORMAT_LABEL[fmt])
                    cost += _COST[fmt]
                    if fmt == "fp8" and arch.quant is None:
                        args["--quantization"] = fmt  # vLLM quantizes at load time
                        r = replace(r, quantization=fmt)
                    else:
                        args["checkpoint"] = f"a {fmt.upper()} int4 checkpoint of the model"
                        a = replace(arch, quant=QuantInfo(fmt, group_size=128))
                        r = replace(r, quantization=None)
                if kv8:
                    labels.append("an fp8 KV cache")
                    args["--kv-cache-dtype"] = "fp8"
                    cost += _COST["kv"]
                    r = replace(r, kv_cache_dtype="fp8")
                if tp != req.tensor_parallel_size:
                    labels.append(f"{tp} GPUs")
                    args["--tensor-parallel-size"] = str(tp)
                    cost += _COST["gpus"] * (tp // req.tensor_parallel_size).bit_length()
                    r = replace(r, tensor_parallel_size=tp)
                candidates.append((cost, "use " + " and ".join(labels), args, a, r))
    if res.max_num_seqs > 64:
        candidates.append(
            (
                _COST["seqs"],
                "lower --max-num-seqs to 64",
                {"--max-num-seqs": "64"},
                arch,
                replace(req, max_num_seqs=64),
            )
        )
    if req.gpu_memory_utilization < 0.95:
        candidates.append(
            (
                _COST["util"],
                "raise --gpu-memory-utilization to 0.95",
                {"--gpu-memory-utilization": "0.95"},
                arch,
                replace(req, gpu_memory_utilization=0.95),
            )
        )
    # One weight plan per layout and format (every candidate architecture stays alive
    # in ``candidates`` while the memo is used).
    memo: WeightsMemo = {} if weights_memo is None else weights_memo
    planned: list[tuple[float, Suggestion]] = []
    if 0 < res.max_model_len_fit < wanted:
        n = res.max_model_len_fit
        n = n // 1024 * 1024 if n > 2048 else n
        alt = plan(arch, replace(req, max_model_len=n), suggest=False, weights_memo=memo)
        planned.append(
            (
                _COST["context"],
                _suggestion(f"lower the context to {n:,}", {"--max-model-len": str(n)}, alt),
            )
        )
    for cost, label, args, changed_arch, changed in candidates:
        try:
            alt = plan(changed_arch, changed, suggest=False, weights_memo=memo)
        except UsageError:
            continue
        planned.append((cost, _suggestion(label, args, alt)))
    fitting = sorted((p for p in planned if p[1].fits), key=lambda p: p[0])
    if fitting:
        return [s for _, s in fitting[:limit]]
    # Nothing fits at the requested context: show what reaches the longest one.
    partial = sorted(planned, key=lambda p: (-p[1].max_model_len_fit, p[0]))
    return [s for _, s in partial[:limit] if s.max_model_len_fit > 0]


def _suggestion(change: str, args: dict[str, str], alt: FitResult) -> Suggestion:
    return Suggestion(
        change,
        args,
        alt.fits,
        alt.max_model_len,
        alt.max_model_len_fit,
        alt.kv_cache_tokens,
        alt.max_concurrency,
    )
