"""``labctl fit``: the memory plan for one or more models on a GPU."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from labctl.cache.resolve import resolve_model
from labctl.catalog.arch import ModelArch
from labctl.catalog.ggml import is_whisper_ggml
from labctl.catalog.gpus import gpu, match_nvml_name
from labctl.cli.fitengines import (
    Target,
    openvla_doc,
    openvla_plan,
    render_llamacpp,
    render_openvla,
    render_whispercpp,
    robots,
    whispercpp_plans,
)
from labctl.cli.output import console, emit_json, warn
from labctl.errors import GpuUnavailable, UsageError
from labctl.fit.encdec import EncoderDecoderPlan
from labctl.fit.llamacpp import CACHE_TYPES, LlamaCppRequest, plan_llamacpp
from labctl.fit.openvla import WEIGHT_FORMATS, OpenVlaPlan, is_openvla, weight_bits
from labctl.fit.plan import DTYPES, KV_DTYPES, FitRequest, FitResult, plan
from labctl.fit.vllm import LATEST
from labctl.units import GiB, format_bytes, parse_size

#: The GPU `labctl fit` plans for when none is named and none is found.
DEFAULT_GPU = "rtx-3090"
#: Seconds of audio one Whisper encoder pass covers (its 1,500 positions).
CHUNK_SECONDS = 30
#: Flags that size vLLM or llama.cpp and mean nothing to OpenVLA's server, with their defaults.
_ENGINE_FLAGS = {
    "tensor_parallel_size": 1,
    "pipeline_parallel_size": 1,
    "max_model_len": None,
    "gpu_memory_utilization": 0.9,
    "kv_cache_dtype": "auto",
    "dtype": "auto",
    "block_size": None,
    "max_num_seqs": None,
    "max_num_batched_tokens": None,
    "kv_cache_memory_bytes": None,
    "enable_prefix_caching": None,
    "speculative_tokens": 0,
    "enforce_eager": False,
    "n_gpu_layers": None,
}


def _size(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from exc


def resolve_target(gpu_id: str | None, gpu_memory_gib: float | None) -> Target:
    """The GPU named by flags, else the first real GPU, else the embedded default."""
    if gpu_id and gpu_memory_gib is not None:
        raise UsageError("pass either --gpu or --gpu-memory-gib, not both")
    if gpu_memory_gib is not None:
        if not gpu_memory_gib > 0:
            raise UsageError(
                f"--gpu-memory-gib {gpu_memory_gib} must be a positive number of GiB, e.g. 24"
            )
        total = int(gpu_memory_gib * GiB)
        return Target(f"{gpu_memory_gib:g} GiB GPU", total, total, None)
    if gpu_id:
        spec = gpu(gpu_id)
        return Target(spec.id, spec.cuda_total_bytes, spec.nvml_total_bytes, spec)
    try:
        from labctl.gpu.nvml import read_devices

        devices = read_devices()
    except GpuUnavailable:
        devices = []
    for d in devices:
        found = match_nvml_name(d.name, d.memory_total_bytes)
        cuda_total = d.cuda_total_bytes or (found.cuda_total_bytes if found else None)
        if cuda_total:
            return Target(
                f"GPU {d.index}: {d.name}",
                cuda_total,
                d.memory_total_bytes,
                found,
                d.memory_free_bytes,
            )
    default = gpu(DEFAULT_GPU)
    return Target(
        f"{default.id} (default)", default.cuda_total_bytes, default.nvml_total_bytes, default
    )


def _result_line(r: FitResult) -> str:
    if r.fits and r.encoder_decoder is not None:
        return (
            f"fits: {r.max_concurrency:g} requests of one {CHUNK_SECONDS} s chunk at once, "
            f"{r.encoder_decoder.clips_per_step} new encode(s) per step"
        )
    if r.fits:
        return (
            f"fits: {r.kv_cache_tokens:,} tokens of KV cache, {r.max_concurrency:g} requests of "
            f"{r.max_model_len:,} tokens at once"
        )
    return "does not fit: " + "; ".join(r.reasons)


def render_one(arch: ModelArch, target: Target, r: FitResult) -> None:
    out = console()
    title = (
        f"{r.model} on {target.label} · {format_bytes(r.gpu_total_bytes)} per GPU"
        f"{' × ' + str(r.tensor_parallel_size * r.pipeline_parallel_size) if r.tensor_parallel_size * r.pipeline_parallel_size > 1 else ''}"
        f" · vLLM {r.vllm_version}"
    )
    out.print(Text(title, style="bold"))
    out.print(
        f"  {r.weight_format} weights ({arch.param_count / 1e9:.2f}B parameters), {r.dtype} activations, "
        f"{r.kv_cache_dtype} KV cache, max_num_seqs {r.max_num_seqs}, max_num_batched_tokens {r.max_num_batched_tokens:,}"
    )
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(justify="left")
    t.add_column(justify="right")
    t.add_column(justify="left", style="dim")
    t.add_row(
        "budget",
        format_bytes(r.budget_bytes),
        f"{r.gpu_memory_utilization:g} × {format_bytes(r.gpu_total_bytes)}",
    )
    t.add_row(
        "weights",
        format_bytes(r.model_load_bytes),
        "encoder and decoder parameters per GPU"
        if r.encoder_decoder is not None
        else "parameters per GPU plus rotary tables",
    )
    t.add_row(
        "activation peak",
        format_bytes(r.activation_peak_bytes),
        "profile run: forward pass and sampler",
    )
    t.add_row("non-torch", format_bytes(r.non_torch_bytes), "cuBLAS and communication buffers")
    if r.cuda_graphs_in_budget:
        t.add_row(
            "CUDA graphs",
            format_bytes(r.cuda_graph_bytes),
            "estimated and reserved before the KV cache",
        )
    t.add_row(
        "KV cache",
        format_bytes(r.kv_cache_bytes),
        f"{r.num_gpu_blocks:,} blocks of {r.block_size} tokens, {r.kv_groups} group(s)",
    )
    if r.encoder_decoder is not None:
        _encoder_decoder_rows(t, r, r.encoder_decoder)
    else:
        _kv_rows(t, r)
    if not r.cuda_graphs_in_budget:
        t.add_row(
            "CUDA graphs", format_bytes(r.cuda_graph_bytes), "captured after, from the headroom"
        )
    out.print(t)
    style = "green" if r.fits else "red"
    out.print(Text(_result_line(r), style=f"bold {style}"))
    for w in r.warnings:
        out.print(Text(f"note: {w}", style="yellow"))
    for note in arch.notes:
        out.print(Text(f"note: {note}", style="dim"))
    if r.suggestions:
        out.print("to make it fit (each planned with the change):")
        for s in r.suggestions:
            mark = "✓" if s.fits else "✗"
            out.print(
                f"  {mark} {s.change}: max context {s.max_model_len_fit:,}, {s.kv_cache_tokens:,} KV tokens, "
                f"{s.max_concurrency:g}x at {s.max_model_len:,}  [{_args(s.args)}]"
            )
    out.print(f"vllm serve {r.model} {' '.join(r.recommended_args)}")


def _encoder_decoder_rows(t: Table, r: FitResult, e: EncoderDecoderPlan) -> None:
    """Rows of an encoder-decoder (Whisper) plan: a request's two caches, encoder
    admission and concurrency in requests of one chunk."""
    t.add_row(
        "KV per position",
        format_bytes(e.kv_self_bytes_per_position),
        "decoder self-attention (cross-attention alike)"
        if e.kv_self_bytes_per_position == e.kv_cross_bytes_per_position
        else f"decoder self-attention; cross-attention {format_bytes(e.kv_cross_bytes_per_position)}",
    )
    t.add_row(
        "KV self / request",
        format_bytes(e.kv_self_bytes_per_request),
        f"{r.max_model_len:,} decoder positions ({e.kv_self_bytes_per_request / 1e6:.1f} MB), "
        f"{e.kv_self_blocks_per_request} blocks of {r.block_size}",
    )
    t.add_row(
        "KV cross / request",
        format_bytes(e.kv_cross_bytes_per_request),
        f"{e.encoder_positions:,} encoder positions per {CHUNK_SECONDS} s chunk "
        f"({e.kv_cross_bytes_per_request / 1e6:.1f} MB), {e.kv_cross_blocks_per_request} blocks "
        f"of {r.block_size}",
    )
    t.add_row("KV tokens", f"{r.kv_cache_tokens:,}", "as vLLM reports 'GPU KV cache size'")
    t.add_row(
        "clips per step",
        f"{e.clips_per_step}",
        f"encoder budget max({r.max_num_batched_tokens:,}, {e.encoder_positions:,}) ÷ "
        f"{e.encoder_positions:,} positions",
    )
    t.add_row("max_num_seqs", f"{e.max_num_seqs:,}", "requests the scheduler runs at once")
    t.add_row(
        "max concurrency",
        f"{r.max_concurrency:g}x",
        f"requests of one {CHUNK_SECONDS} s chunk: KV for {e.kv_concurrency:g}, capped by max_num_seqs",
    )
    t.add_row(
        "vLLM's log line",
        f"{e.vllm_logged_concurrency:g}x",
        f"'Maximum concurrency': cross KV reserved for {r.max_num_batched_tokens:,} encoder tokens",
    )


def _kv_rows(t: Table, r: FitResult) -> None:
    """Rows of a decoder-only plan: KV per token and request, concurrency, context."""
    t.add_row(
        "KV per token", format_bytes(r.kv_bytes_per_token), "per GPU, layers that keep every token"
    )
    if r.kv_window_bytes_per_token:
        t.add_row(
            "  + windowed",
            format_bytes(r.kv_window_bytes_per_token),
            "per token until the sliding window is full",
        )
    if r.kv_state_bytes_per_sequence:
        t.add_row(
            "state per sequence",
            format_bytes(r.kv_state_bytes_per_sequence),
            "linear-attention layers, fixed size",
        )
    t.add_row(
        "KV per request", format_bytes(r.kv_bytes_per_sequence), f"at {r.max_model_len:,} tokens"
    )
    t.add_row("KV tokens", f"{r.kv_cache_tokens:,}", "as vLLM reports 'GPU KV cache size'")
    t.add_row(
        "max concurrency", f"{r.max_concurrency:g}x", f"requests of {r.max_model_len:,} tokens"
    )
    t.add_row("max context", f"{r.max_model_len_fit:,}", "longest single request that fits")


def _args(args: dict[str, str]) -> str:
    return " ".join(v if k == "checkpoint" else f"{k} {v}" for k, v in args.items())


def render_many(
    target: Target, results: Sequence[tuple[ModelArch, FitResult | OpenVlaPlan]]
) -> None:
    out = console()
    vllm = [r for _, r in results if isinstance(r, FitResult)]
    head = f"{target.label} · {format_bytes(target.total_bytes)}"
    if vllm:
        head += f" · vLLM {vllm[0].vllm_version} · gpu_memory_utilization {vllm[0].gpu_memory_utilization:g}"
    out.print(Text(head, style="bold"))
    t = Table(show_lines=False)
    for col, just in (
        ("model", "left"),
        ("format", "left"),
        ("weights", "right"),
        ("KV/token", "right"),
        ("KV cache", "right"),
        ("KV tokens", "right"),
        ("context", "right"),
        ("max context", "right"),
        ("concurrency", "right"),
        ("fits", "center"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for _, r in results:
        fits = Text("yes", style="green") if r.fits else Text("no", style="red")
        if isinstance(r, OpenVlaPlan):
            # One request at a time: its KV is the cache, its positions the context.
            kv = r.kv_bytes_per_request
            t.add_row(r.model, r.format_name, format_bytes(r.weights_bytes, 1),
                      format_bytes(r.kv_bytes_per_token, 0), format_bytes(kv, 1 if kv >= GiB else 0),
                      f"{r.kv_positions:,}", f"{r.kv_positions:,}", "—", "1x", fits)  # fmt: skip
            continue
        t.add_row(
            r.model,
            r.weight_format,
            format_bytes(r.model_load_bytes, 1),
            format_bytes(r.kv_bytes_per_token, 0),
            format_bytes(max(r.kv_cache_bytes, 0), 1),
            f"{r.kv_cache_tokens:,}",
            f"{r.max_model_len:,}",
            f"{r.max_model_len_fit:,}",
            f"{r.max_concurrency:g}x",
            fits,
        )
    out.print(t)
    for _, r in results:
        if isinstance(r, OpenVlaPlan):
            out.print(
                f"  {r.model}: OpenVLA's own server, one request at a time: "
                f"{format_bytes(r.total_bytes)} in all"
            )
        elif not r.fits and r.suggestions:
            best = r.suggestions[0]
            out.print(
                f"  {r.model}: {best.change} → max context {best.max_model_len_fit:,}"
                f"{'' if best.fits else ' (still short)'}"
            )


@click.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option(
    "--gpu",
    "gpu_id",
    metavar="ID",
    help="GPU from the catalog (see 'labctl gpus'); default: the first real GPU, else rtx-3090",
)
@click.option(
    "--gpu-memory-gib",
    type=float,
    metavar="G",
    help="plan for a GPU with this much memory (GiB, as CUDA reports it)",
)
@click.option("-tp", "--tensor-parallel-size", type=int, default=1, show_default=True)
@click.option("-pp", "--pipeline-parallel-size", type=int, default=1, show_default=True)
@click.option("--max-model-len", type=int, metavar="N", help="context length; default: the model's")
@click.option("--gpu-memory-utilization", type=float, default=0.9, show_default=True)
@click.option(
    "--kv-cache-dtype",
    default="auto",
    show_default=True,
    help=f"vLLM: {', '.join(KV_DTYPES)}; llama.cpp: {', '.join(CACHE_TYPES)}",
)
@click.option(
    "--quantization",
    "-q",
    metavar="FORMAT",
    help="runtime weight format, e.g. fp8 (vLLM's --quantization); OpenVLA: bf16, bnb-8bit "
    "or bnb-4bit (load_in_8bit / load_in_4bit)",
)
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True)
@click.option("--block-size", type=int, metavar="N")
@click.option("--max-num-seqs", type=int, metavar="N")
@click.option("--max-num-batched-tokens", type=int, metavar="N")
@click.option(
    "--kv-cache-memory-bytes",
    metavar="SIZE",
    help="give the KV cache exactly this much (e.g. 8GiB), as vLLM's flag",
)
@click.option("--enable-prefix-caching/--no-enable-prefix-caching", default=None)
@click.option(
    "--speculative-tokens", type=int, default=0, metavar="N", help="MTP speculative tokens per step"
)
@click.option("--enforce-eager", is_flag=True, help="no CUDA graphs")
@click.option("--vllm-version", default=LATEST, show_default=True, metavar="X.Y.Z")
@click.option(
    "--engine",
    type=click.Choice(["vllm", "llamacpp", "openvla"]),
    help="default: openvla for OpenVLA models (vLLM does not serve them), else vllm",
)
@click.option(
    "--control-hz",
    type=float,
    metavar="R",
    help="OpenVLA: how many robots at R Hz one GPU keeps (memory and the step model)",
)
@click.option(
    "--n-gpu-layers",
    "-ngl",
    type=int,
    metavar="N",
    help="llama.cpp: layers offloaded to the GPU (default all)",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def fit(
    models: tuple[str, ...],
    gpu_id: str | None,
    gpu_memory_gib: float | None,
    tensor_parallel_size: int,
    pipeline_parallel_size: int,
    max_model_len: int | None,
    gpu_memory_utilization: float,
    kv_cache_dtype: str,
    quantization: str | None,
    dtype: str,
    block_size: int | None,
    max_num_seqs: int | None,
    max_num_batched_tokens: int | None,
    kv_cache_memory_bytes: str | None,
    enable_prefix_caching: bool | None,
    speculative_tokens: int,
    enforce_eager: bool,
    vllm_version: str,
    engine: str | None,
    control_hz: float | None,
    n_gpu_layers: int | None,
    as_json: bool,
) -> None:
    """Does MODEL fit, at what context length and concurrency, and if not, what to change.

    MODEL is a catalog id (see 'labctl models --catalog'), a quantized repo id such as
    RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic, a Hugging Face model
    directory, a .gguf file, a whisper.cpp ggml file (planned as
    whisper.cpp allocates it), or any other Hugging Face repo id (owner/name, or
    owner/name:Q4_K_M for a GGUF repo): read from the hub cache, else its config and
    weight headers from the hub (HF_ENDPOINT, HF_TOKEN), and offline once seen.
    Several models print one comparison table.
    """
    target = resolve_target(gpu_id, gpu_memory_gib)
    ggml = [m for m in models if is_whisper_ggml(Path(m))]
    if ggml:
        if len(ggml) < len(models):
            raise UsageError(
                "whisper.cpp ggml files and other models are planned for different engines; "
                "run labctl fit once for the ggml files and once for the rest"
            )
        plans = whispercpp_plans(ggml)
        if as_json:
            docs: list[dict[str, object]] = [
                p.to_json() | {"hparams": asdict(hp)} for _, p, hp in plans
            ]
            emit_json(docs[0] if len(docs) == 1 else {"results": docs})
        else:
            render_whispercpp(target, plans)
        return
    archs = [resolve_model(m) for m in models]
    vla = [is_openvla(a) for a in archs]
    flags = {
        "tensor_parallel_size": tensor_parallel_size,
        "pipeline_parallel_size": pipeline_parallel_size,
        "max_model_len": max_model_len,
        "gpu_memory_utilization": gpu_memory_utilization,
        "kv_cache_dtype": kv_cache_dtype,
        "dtype": dtype,
        "block_size": block_size,
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens,
        "kv_cache_memory_bytes": kv_cache_memory_bytes,
        "enable_prefix_caching": enable_prefix_caching,
        "speculative_tokens": speculative_tokens,
        "enforce_eager": enforce_eager,
        "n_gpu_layers": n_gpu_layers,
    }
    if control_hz is not None and (not control_hz > 0 or control_hz == float("inf")):
        raise UsageError(f"--control-hz {control_hz:g} must be a rate above 0 Hz, e.g. 5")
    if engine == "openvla" and not all(vla):
        other = next(a for a, v in zip(archs, vla, strict=True) if not v)
        raise UsageError(
            f"--engine openvla plans OpenVLA models; {other.name} is a {other.model_type} model "
            "(drop --engine, or plan it on its own)"
        )
    if control_hz is not None and (engine in ("vllm", "llamacpp") or not all(vla)):
        raise UsageError(
            "--control-hz plans robots for OpenVLA models on OpenVLA's server; drop it, or "
            "name only OpenVLA models"
        )
    if engine == "vllm" and any(vla):
        names = ", ".join(a.name for a, v in zip(archs, vla, strict=True) if v)
        warn(f"vLLM does not serve OpenVLA ({names}): this plans it as if it did; drop "
             "--engine to plan it as OpenVLA's own server runs it")  # fmt: skip
    if engine == "openvla" or (engine is None and all(vla)):
        ignored = [f"--{k.replace('_', '-')}" for k, default in _ENGINE_FLAGS.items()
                   if flags[k] != default]  # fmt: skip
        if ignored:
            warn(f"{', '.join(ignored)}: vLLM and llama.cpp settings, ignored for OpenVLA's "
                 "server (one GPU, bf16 or bitsandbytes weights, one request at a time)")  # fmt: skip
        vla_plans = [openvla_plan(a, target, weight_bits(quantization), control_hz) for a in archs]
        if as_json:
            docs = [openvla_doc(p, speed, target.spec) for p, speed in vla_plans]
            emit_json(docs[0] if len(docs) == 1 else {"results": docs})
        elif len(vla_plans) == 1:
            render_openvla(target, *vla_plans[0], models[0])
        else:
            render_many(target, [(a, p) for a, (p, _) in zip(archs, vla_plans, strict=True)])
        return
    if engine == "llamacpp":
        results_l = []
        for arch in archs:
            results_l.append(
                plan_llamacpp(
                    arch,
                    LlamaCppRequest(
                        gpu_total_bytes=target.total_bytes,
                        gpu_name=target.label,
                        n_ctx=max_model_len,
                        n_gpu_layers=n_gpu_layers,
                        cache_type=kv_cache_dtype,
                        n_parallel=max_num_seqs or 1,
                        quantization=quantization,
                    ),
                )
            )
        if as_json:
            docs = [r.to_json() for r in results_l]
            emit_json(docs[0] if len(docs) == 1 else {"results": docs})
        else:
            render_llamacpp(target, results_l)
        return
    spec = target.spec
    base = FitRequest.on_gpu(
        spec,
        **({} if spec else {"gpu_name": target.label}),
        gpu_total_bytes=target.total_bytes,
        gpu_nvml_total_bytes=target.nvml_total_bytes,
        tensor_parallel_size=tensor_parallel_size,
        pipeline_parallel_size=pipeline_parallel_size,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        kv_cache_dtype=kv_cache_dtype,
        quantization=quantization,
        dtype=dtype,
        block_size=block_size,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        kv_cache_memory_bytes=_size(kv_cache_memory_bytes, "--kv-cache-memory-bytes"),
        vllm_version=vllm_version,
        enable_prefix_caching=enable_prefix_caching,
        enforce_eager=enforce_eager,
        speculative_tokens=speculative_tokens,
    )
    # Beside vLLM's models, OpenVLA's go to its own server unless --engine vllm says otherwise;
    # --quantization applies to them when it names a format their loader has.
    own = engine is None
    bits = WEIGHT_FORMATS.get((quantization or "bf16").strip().lower(), 16)
    mixed: list[tuple[ModelArch, FitResult | OpenVlaPlan]] = [
        (a, openvla_plan(a, target, bits, None)[0] if v and own else plan(a, base))
        for a, v in zip(archs, vla, strict=True)
    ]
    results = [(a, r) for a, r in mixed if isinstance(r, FitResult)]
    if (
        target.free_bytes is not None
        and target.free_bytes < base.gpu_total_bytes * gpu_memory_utilization
    ):
        msg = (
            f"only {format_bytes(target.free_bytes)} is free on {target.label}; vLLM refuses to start when free "
            f"memory is below {gpu_memory_utilization:g} × total"
        )
        for _, r in results:
            r.warnings.append(msg)
    if as_json:
        docs = []
        for arch, m in mixed:
            if isinstance(m, OpenVlaPlan):
                docs.append(openvla_doc(m, robots(m, None, None), spec))
                continue
            doc = m.to_json()
            doc["gpu_id"] = spec.id if spec else None
            doc["param_count"] = arch.param_count
            doc["notes"] = list(arch.notes)
            docs.append(doc)
        emit_json(docs[0] if len(docs) == 1 else {"results": docs})
        return
    if target.spec is None and gpu_memory_gib is None:
        warn(f"no GPU found; planning for {target.label}")
    if len(mixed) == 1 and results:
        render_one(results[0][0], target, results[0][1])
    else:
        render_many(target, mixed)
