"""``labctl fit``'s plans for engines other than vLLM: OpenVLA's server (with robots per
GPU at a control rate), whisper.cpp and llama.cpp, and the GPU a plan is for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from rich.text import Text

from labctl.catalog.arch import ModelArch
from labctl.catalog.ggml import WhisperHparams, read_whisper_ggml
from labctl.catalog.gpus import GpuSpec
from labctl.cli.output import console, warn
from labctl.engines.openvla import oft
from labctl.fit.llamacpp import LlamaCppResult
from labctl.fit.openvla import OpenVlaPlan, plan_openvla
from labctl.fit.whispercpp import WhisperCppPlan, plan_hparams
from labctl.sim.vla import action_seconds, robots_at
from labctl.units import format_bytes


@dataclass(frozen=True)
class Target:
    """The GPU a plan is for."""

    label: str
    total_bytes: int
    nvml_total_bytes: int | None
    spec: GpuSpec | None
    free_bytes: int | None = None


@dataclass(frozen=True)
class Robots:
    """OpenVLA's speed on a catalog GPU (the twin's step model) and, given a control
    rate, how many robots one server keeps at it."""

    action_seconds: float | None
    control_hz: float | None
    by_memory: int | None
    by_step_model: int | None

    @property
    def rate_hz(self) -> float | None:
        return 1 / self.action_seconds if self.action_seconds else None

    @property
    def at_control_hz(self) -> int | None:
        """The smaller of the two bounds; None when either is unknown."""
        if self.control_hz is None or self.by_memory is None or self.by_step_model is None:
            return None
        return min(self.by_memory, self.by_step_model)

    def to_json(self) -> dict[str, object]:
        return {
            "action_seconds": self.action_seconds,
            "max_rate_hz": self.rate_hz,
            "control_hz": self.control_hz,
            "robots_at_control_hz": self.at_control_hz,
            "robots_by_step_model": self.by_step_model,
        }


def robots(plan: OpenVlaPlan, spec: GpuSpec | None, control_hz: float | None) -> Robots:
    """Latency at batch 1 and robots at ``control_hz`` from the step model (a catalog GPU
    only: a size alone says nothing of speed), bounded by the plan's memory."""
    if spec is None:
        return Robots(None, control_hz, plan.robots_by_memory, None)
    seconds = action_seconds(spec, 1, plan.weight_bits, plan.oft)
    steps = robots_at(spec, control_hz, plan.weight_bits, plan.oft) if control_hz else None
    return Robots(seconds, control_hz, plan.robots_by_memory, steps)


def render_openvla(target: Target, plan: OpenVlaPlan, speed: Robots, model: str) -> None:
    out = console()
    server = "OpenVLA-OFT's server" if plan.oft else "OpenVLA's server"
    out.print(Text(f"{plan.model} on {target.label} · {format_bytes(target.total_bytes)} · "
                   f"{server} (transformers, flash-attention 2, one request at a time)",
                   style="bold"))  # fmt: skip
    if plan.oft:
        request = (f"{plan.prefill_tokens:,} positions ({plan.images} images, proprio, "
                   f"{plan.action_tokens} action slots) in one forward")  # fmt: skip
    else:
        request = (f"{plan.prefill_tokens:,} positions of prefill, then {plan.decode_steps} "
                   f"decode steps for {plan.action_tokens} action tokens")  # fmt: skip
    out.print(f"  {plan.param_count / 1e9:.2f}B parameters, {plan.weight_format} weights; "
              f"a request: {request}")  # fmt: skip
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(justify="left")
    t.add_column(justify="right")
    t.add_column(justify="left", style="dim")
    for name, n, what in plan.rows():
        t.add_row(name, format_bytes(n), what)
    if speed.action_seconds is not None and speed.rate_hz is not None:
        what = "OFT: one image, an 8×7 chunk" if plan.oft else "7 action tokens"
        t.add_row("action latency", f"{speed.action_seconds * 1e3:.0f} ms",
                  f"batch 1, the twin's step model ({what})")  # fmt: skip
        t.add_row("achievable rate", f"{speed.rate_hz:.1f} Hz",
                  "one robot, its requests one after another")  # fmt: skip
    out.print(t)
    gpu_total = plan.gpu_total_bytes or 0
    if plan.fits:
        line = (f"fits: {format_bytes(gpu_total - plan.total_bytes)} to spare; a batching server "
                f"would hold {plan.robots_by_memory} requests at once")  # fmt: skip
    else:
        line = (f"does not fit: {format_bytes(plan.total_bytes)} needed, "
                f"{format_bytes(gpu_total)} on {target.label}")  # fmt: skip
    out.print(Text(line, style="bold " + ("green" if plan.fits else "red")))
    if speed.control_hz is not None:
        count = "unknown" if speed.at_control_hz is None else str(speed.at_control_hz)
        steps = "needs a catalog GPU" if speed.by_step_model is None else str(speed.by_step_model)
        out.print(f"robots at {speed.control_hz:g} Hz: {count} (memory allows {speed.by_memory}; "
                  f"the step model {steps})")  # fmt: skip
    if speed.action_seconds is None:
        out.print(Text("note: action latency needs a catalog GPU (--gpu); a memory size alone "
                       "does not say how fast it runs", style="yellow"))  # fmt: skip
    if speed.rate_hz is not None:
        out.print(Text(f"note: {server} runs one request at a time: without a batching server "
                       f"it is 1 robot at ≤ {speed.rate_hz:.1f} Hz", style="yellow"))  # fmt: skip
    if not plan.fits and plan.weight_bits > 4:
        out.print("to make it fit: load the weights in 4-bit (--quantization bnb-4bit), "
                  "or 8-bit (bnb-8bit)")  # fmt: skip
    out.print(_deploy_line(plan, model))


def _deploy_line(plan: OpenVlaPlan, model: str) -> str:
    """The server's command line for ``model`` as the plan loads it, or why there is none."""
    if plan.oft:
        flag = {16: "", 8: " --load_in_8bit True", 4: " --load_in_4bit True"}[plan.weight_bits]
        return f"python vla-scripts/deploy.py --pretrained_checkpoint {model}{flag}"
    if plan.weight_bits == 16:
        return f"python vla-scripts/deploy.py --openvla_path {model}"
    kwarg = "load_in_8bit" if plan.weight_bits == 8 else "load_in_4bit"
    return (f"OpenVLA's deploy.py loads bf16 only: pass {kwarg}=True to from_pretrained in a "
            "copy of it (OpenVLA-OFT's deploy.py takes it as a flag)")  # fmt: skip


def openvla_doc(plan: OpenVlaPlan, speed: Robots, spec: GpuSpec | None) -> dict[str, object]:
    return plan.to_json() | speed.to_json() | {"gpu_id": spec.id if spec else None}


def openvla_plan(
    arch: ModelArch, target: Target, bits: int, control_hz: float | None
) -> tuple[OpenVlaPlan, Robots]:
    """The memory plan of OpenVLA's server (OFT's for an OFT checkpoint) on ``target``,
    and its speed there."""
    p = plan_openvla(arch, target.total_bytes, bits, oft(arch.name))
    if target.free_bytes is not None and target.free_bytes < p.total_bytes:
        warn(f"only {format_bytes(target.free_bytes)} is free on {target.label}; "
             f"{p.model} needs {format_bytes(p.total_bytes)}")  # fmt: skip
    return p, robots(p, target.spec, control_hz)


def render_whispercpp(
    target: Target, plans: Sequence[tuple[str, WhisperCppPlan, WhisperHparams]]
) -> None:
    out = console()
    for title, p, _ in plans:
        out.print(Text(f"{p.model} · whisper.cpp · {title}", style="bold"))
        t = Table(show_header=False, box=None, pad_edge=False)
        t.add_column()
        t.add_column(justify="right")
        t.add_column(style="dim")
        for name, n, what in p.rows():
            # MB (10**6), the unit whisper.cpp's load log prints, so the two compare directly.
            t.add_row(name, f"{n / 1e6:,.2f} MB", what)
        out.print(t)
        where = "fits" if p.total <= target.total_bytes else "does not fit"
        out.print(
            f"{where} in {target.label}'s {format_bytes(target.total_bytes)} when built for the "
            f"GPU ({format_bytes(p.total)}); a CPU build holds it in host memory"
        )


def whispercpp_plans(paths: Sequence[str]) -> list[tuple[str, WhisperCppPlan, WhisperHparams]]:
    """Plans for whisper.cpp ggml files, each with a title naming its geometry."""
    out = []
    for text in paths:
        model = read_whisper_ggml(Path(text))
        hp = model.hparams
        title = (
            f"{hp.model_name}, {hp.n_audio_layer}+{hp.n_text_layer} layers of {hp.n_audio_state}, "
            f"{hp.n_mels} mel bands, ftype {hp.ftype}, flash attention"
        )
        out.append((title, plan_hparams(hp, model=Path(text).name), hp))
    return out


def render_llamacpp(target: Target, results: Sequence[LlamaCppResult]) -> None:
    out = console()
    for r in results:
        out.print(
            Text(
                f"{r.model} on {target.label} · {format_bytes(r.gpu_total_bytes)} · llama.cpp",
                style="bold",
            )
        )
        t = Table(show_header=False, box=None, pad_edge=False)
        t.add_column()
        t.add_column(justify="right")
        t.add_column(style="dim")
        t.add_row(
            "weights on GPU",
            format_bytes(r.weights_bytes),
            f"{r.n_gpu_layers}/{r.num_layers} layers offloaded",
        )
        t.add_row(
            "weights in host RAM",
            format_bytes(r.weights_host_bytes),
            "token embedding and layers not offloaded",
        )
        t.add_row(
            "KV cache",
            format_bytes(r.kv_cache_bytes),
            f"{r.kv_cache_tokens:,} cells of {r.kv_cache_dtype}",
        )
        t.add_row("KV per token", format_bytes(r.kv_bytes_per_token), "offloaded layers")
        t.add_row(
            "compute buffer", format_bytes(r.activation_peak_bytes), "one micro-batch of 512 tokens"
        )
        t.add_row("max context", f"{r.max_model_len_fit:,}", "with these layers offloaded")
        out.print(t)
        out.print(
            Text(
                ("fits" if r.fits else "does not fit: " + "; ".join(r.reasons)),
                style="bold " + ("green" if r.fits else "red"),
            )
        )
        for w in r.warnings:
            out.print(Text(f"note: {w}", style="yellow"))
        model = r.model_path or "MODEL.gguf"
        out.print(f"llama-server -m {model} {' '.join(r.recommended_args)}")
