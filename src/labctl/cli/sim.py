"""``labctl sim``: the simulated GPUs (and, later, the twin engine)."""

from __future__ import annotations

from collections.abc import Callable
import math
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from labctl.config import state_dir
from labctl.errors import UsageError
from labctl.units import parse_duration, parse_size

if TYPE_CHECKING:
    from labctl.gpu.sim import SimMachine

#: The twin's GPU where neither --gpu nor a simulated machine says (the embedded default's).
DEFAULT_GPU = "rtx-3090"


@click.group()
def sim() -> None:
    """Simulated GPUs and engines, for labs without a free GPU."""


@sim.command()
@click.option(
    "--gpu", "index", type=int, default=0, show_default=True, metavar="INDEX",
    help="the simulated GPU, by its index in `labctl gpus`",
)  # fmt: skip
@click.option("--memory", required=True, help="how much to hold, e.g. 8GiB or 512MiB")
@click.option("--worker", is_flag=True, help="hold the memory in a worker child, as engines do")
@click.option(
    "--orphan-worker",
    is_flag=True,
    help="like --worker, but the worker outlives this process when it is killed",
)
@click.option(
    "--for", "duration", metavar="DURATION", help="release after this long (default: until killed)"
)
def hold(index: int, memory: str, worker: bool, orphan_worker: bool, duration: str | None) -> None:
    """Hold memory on a simulated GPU until killed, as a loaded model does.

    Prints "READY <this pid> <holder pid>" once the memory is held. The memory is
    released when the holding process exits, however it exits.
    """
    from labctl.gpu.sim import SimMachine
    from labctl.gpu.sim import hold as hold_memory

    try:
        nbytes = parse_size(memory)
    except ValueError as exc:
        raise UsageError(f"--memory: {exc}") from exc
    seconds = _for(duration)

    def ready(holder: int) -> None:
        click.echo(f"READY {os.getpid()} {holder}")
        sys.stdout.flush()

    try:
        hold_memory(
            SimMachine(state_dir()),
            index,
            nbytes,
            worker=worker or orphan_worker,
            orphan=orphan_worker,
            seconds=seconds,
            on_ready=ready,
        )
    except KeyboardInterrupt:
        sys.exit(130)


@sim.command()
@click.argument("index", metavar="GPU", type=int)
@click.argument("reasons", metavar="REASON[,REASON…]")
@click.option(
    "--for", "duration", metavar="DURATION", help="end after this long (default: until killed)"
)
def throttle(index: int, reasons: str, duration: str | None) -> None:
    """Make a simulated GPU (GPU: its index in `labctl gpus`) report clock event reasons
    until killed, as a power cap or a hot card does: sw_power_cap, hw_slowdown,
    sw_thermal_slowdown, hw_thermal_slowdown, hw_power_brake_slowdown (or any other NVML
    reason name).

    Prints "READY <this pid>" once the GPU reports them. They end when this process
    exits, however it exits, or after --for.
    """
    from labctl.gpu.sim import SimMachine, clock_event_bits
    from labctl.gpu.sim import throttle as hold_reasons

    bits = clock_event_bits(reasons)
    seconds = _for(duration)

    def ready(pid: int) -> None:
        click.echo(f"READY {pid}")
        sys.stdout.flush()

    try:
        hold_reasons(SimMachine(state_dir()), index, bits, seconds=seconds, on_ready=ready)
    except KeyboardInterrupt:
        sys.exit(130)


def _for(duration: str | None) -> float | None:
    """``--for``: seconds, or None (until killed)."""
    if duration is None:
        return None
    try:
        return parse_duration(duration)
    except ValueError as exc:
        raise UsageError(f"--for: {exc}") from exc


def machine_gpu(machine: SimMachine, asked: str | None, index: int) -> str | None:
    """The catalog GPU a twin on simulated GPU ``index`` runs as: that GPU's. A home with no
    simulated machine yet gets one of ``asked`` (``index`` + 1 of them, so that ``index``
    exists), as the first engine on a fresh box finds the card that is there.

    Raises:
        UsageError: ``asked`` is not the GPU the machine has at ``index``.
        CatalogError: ``asked`` is no catalog GPU.
    """
    from labctl.catalog.gpus import gpu
    from labctl.gpu.sim import describe

    found = machine.configured()
    if found is None:
        spec = gpu(asked or DEFAULT_GPU)
        machine.configure([spec] * (index + 1))
        return spec.id
    devices = machine.devices()
    if index >= len(devices):
        return asked  # the twin fails as CUDA does: invalid device ordinal
    have = devices[index].spec.id
    if asked is None or gpu(asked).id == have:
        return have
    raise UsageError(
        f"--gpu {asked}: found {describe(found)} in {machine.dir}, and GPU {index} is {have}; pass "
        f"--gpu {have}, use a fresh LABCTL_HOME, or replace the simulated GPUs with "
        f"'labctl gpus --sim-gpus {gpu(asked).id}' while no process holds them"
    )


def engine_options(gpu_help: str) -> Callable[[Any], Any]:
    """The vLLM flags the twin honours, shared by ``sim run`` and ``sim serve``."""
    return lambda f: _engine_options(f, gpu_help)


def _engine_options(f: Any, gpu_help: str) -> Any:
    options = [
        click.option("--model", required=True, help="catalog id, HF model directory or .gguf"),
        click.option("--gpu", "gpu_id", metavar="GPU", help=gpu_help),
        click.option("--tensor-parallel-size", "-tp", type=int, default=1, show_default=True),
        click.option("--pipeline-parallel-size", "-pp", type=int, default=1, show_default=True),
        click.option("--max-model-len", type=int, help="default: the model's, capped to fit"),
        click.option("--max-num-seqs", type=int, help="default: vLLM's for the GPU"),
        click.option("--max-num-batched-tokens", type=int, help="default: vLLM's for the GPU"),
        click.option("--gpu-memory-utilization", type=float, default=0.9, show_default=True),
        click.option("--kv-cache-dtype", default="auto", show_default=True),
        click.option("--quantization", help="weight format, when the checkpoint does not say"),
        click.option(
            "--enforce-eager/--no-enforce-eager",
            default=False,
            help="no CUDA graphs (slower steps)",
        ),
        click.option(
            "--async-scheduling/--no-async-scheduling",
            default=None,
            help="schedule the next step while the GPU runs this one (default: the version's)",
        ),
        click.option(
            "--enable-prefix-caching/--no-enable-prefix-caching",
            default=None,
            help="reuse prompts' cached blocks (default: the version's, on for V1)",
        ),
        click.option("--served-model-name", help="the name clients use (default: --model)"),
        click.option(
            "--api-server-count",
            type=click.IntRange(1, 64),
            default=1,
            show_default=True,
            help="API server processes; requests are spread over them (intake and streaming)",
        ),
        click.option(
            "--vllm-version",
            metavar="X.Y.Z",
            help="the vLLM release to behave as: its defaults and overheads (default: latest)",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def engine_line(timing: Any) -> str:
    """``sim run``'s engine row: the vLLM release it behaves as, and how it schedules."""
    engine = "" if timing.v0 else " (V1 engine)"  # a V0 version names its engine already
    mode = "async scheduling" if timing.async_scheduling else "scheduling between steps"
    return f"vLLM {timing.version}{engine}, {mode}"


def api_server_line(count: int, busy: float) -> str:
    """``sim run``'s API server row: how busy its processes were, and whether that bound the
    run (as the bottleneck classifier's ``api_server`` class says it)."""
    from labctl.sim.bottleneck import API_SERVER_BUSY

    line = f"{count} process{'es' if count > 1 else ''}, busy {busy:.0%} of the run"
    if busy >= API_SERVER_BUSY:
        line += f": it sets the pace, not the GPU (try --api-server-count {count + 1})"
    return line


def twin_config(kw: dict[str, Any], default_gpu: str = DEFAULT_GPU) -> Any:
    from labctl.sim.engine import TwinConfig

    return TwinConfig(
        model=kw.pop("model"),
        gpu=kw.pop("gpu_id") or default_gpu,
        tensor_parallel_size=kw.pop("tensor_parallel_size"),
        pipeline_parallel_size=kw.pop("pipeline_parallel_size"),
        max_model_len=kw.pop("max_model_len"),
        max_num_seqs=kw.pop("max_num_seqs"),
        max_num_batched_tokens=kw.pop("max_num_batched_tokens"),
        gpu_memory_utilization=kw.pop("gpu_memory_utilization"),
        kv_cache_dtype=kw.pop("kv_cache_dtype"),
        quantization=kw.pop("quantization"),
        enforce_eager=kw.pop("enforce_eager"),
        async_scheduling=kw.pop("async_scheduling"),
        enable_prefix_caching=kw.pop("enable_prefix_caching"),
        served_model_name=kw.pop("served_model_name"),
        api_server_count=kw.pop("api_server_count"),
        **({"vllm_version": v} if (v := kw.pop("vllm_version")) else {}),
    )


@sim.command()
@engine_options(f"catalog GPU id to simulate, e.g. h100-sxm (default: {DEFAULT_GPU})")
@click.option("--num-prompts", type=int, default=1000, show_default=True)
@click.option(
    "--request-rate", type=float, default=math.inf, help="requests/s (default: all at once)"
)
@click.option("--burstiness", type=float, default=1.0, show_default=True, help="1 is Poisson")
@click.option("--max-concurrency", type=int, help="requests in flight at most")
@click.option("--input-len", type=int, default=1024, show_default=True)
@click.option("--output-len", type=int, default=128, show_default=True)
@click.option("--range-ratio", type=float, default=0.0, show_default=True)
@click.option(
    "--dataset", help="'sharegpt' (built-in lengths), a ShareGPT JSON or a JSONL of prompts"
)
@click.option(
    "--audio-seconds", type=float, metavar="S",
    help="speech: clips of S seconds (spread by --range-ratio), for a Whisper model",
)  # fmt: skip
@click.option(
    "--audio-files", "audio_files", multiple=True, metavar="PATH",
    help="speech: audio files or directories of them (the files may follow the flag)",
)  # fmt: skip
@click.argument("more_audio_files", nargs=-1, metavar="[FILES]...")
@click.option("--endpoint", type=click.Choice(["completions", "chat"]), default="completions",
              show_default=True, help="text requests as completions or as chats (chat template)")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--timeline-interval", default="1s", show_default=True, help="KV/queue sampling")
@click.option(
    "--explain", is_flag=True,
    help="the bottleneck over the run: each interval classified as the lab's dashboard does",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def run(**kw: Any) -> None:
    """What-if: replay a workload through the twin as a discrete-event simulation.

    Prints `vllm bench serve`'s fields for the run (TTFT, TPOT, ITL, E2EL,
    throughputs) plus KV cache usage, queue length and preemptions over time.
    A speech model (Whisper) takes audio instead of prompts: --audio-seconds or
    --audio-files, and the run reports rtfx and audio_seconds. --explain adds what
    limited the run over time: spans of one bottleneck class, per --timeline-interval.
    """
    from pathlib import Path

    from labctl.cli.output import console, emit_json
    from labctl.sim.engine import build_twin
    from labctl.sim.explain import explain, time_per_class
    from labctl.sim.offline import simulate
    from labctl.sim.workload import (
        arrival_times,
        audio_files,
        audio_lengths,
        from_file,
        sharegpt_like,
        synthetic,
    )

    as_json, explaining = kw.pop("as_json"), kw.pop("explain")
    n, seed = kw.pop("num_prompts"), kw.pop("seed")
    if n < 1:
        raise UsageError(f"--num-prompts {n} must be at least 1")
    conc = kw.pop("max_concurrency")
    if conc is not None and conc < 1:
        raise UsageError(f"--max-concurrency {conc} must be at least 1")
    try:
        interval = parse_duration(kw.pop("timeline_interval"))
    except ValueError as exc:
        raise UsageError(f"--timeline-interval: {exc}") from exc
    dataset = kw.pop("dataset")
    input_len, output_len, ratio = kw.pop("input_len"), kw.pop("output_len"), kw.pop("range_ratio")
    seconds = kw.pop("audio_seconds")
    flagged, extra = kw.pop("audio_files"), kw.pop("more_audio_files")
    if extra and not flagged:
        raise UsageError(f"unexpected argument {extra[0]!r}: audio files follow --audio-files")
    files = [Path(f) for f in (*flagged, *extra)]
    if sum(map(bool, (dataset, seconds is not None, files))) > 1:
        raise UsageError("give one workload: --dataset, --audio-seconds or --audio-files")
    if seconds is not None:
        items = audio_lengths(n, seconds, ratio, seed)
    elif files:
        items = audio_files(files, n, seed)
    elif dataset == "sharegpt":
        items = sharegpt_like(n, seed)
    elif dataset:
        items = from_file(Path(dataset), n, seed=seed)
    else:
        items = synthetic(n, input_len, output_len, ratio, seed)
    send = arrival_times(n, kw.pop("request_rate"), kw.pop("burstiness"), seed)
    chat = kw.pop("endpoint") == "chat"
    twin = build_twin(twin_config(kw))
    summary, timeline = simulate(twin, items, send, conc, interval=max(interval, 1e-3), chat=chat)
    spans = explain(timeline, twin.perf, twin.fit.kv_cache_tokens) if explaining else None
    if as_json:
        extra = {} if spans is None else {"explain": [s.to_json() for s in spans]}
        emit_json(
            summary
            | {"model": twin.model_name, "gpu": twin.gpu.id, "timeline": timeline.to_json()}
            | extra
        )
        return
    out = console()
    tp = twin.fit.tensor_parallel_size
    out.print(
        f"{twin.model_name} on {twin.gpu.id}{f' × {tp}' if tp > 1 else ''}"
        f" (simulated): {summary['completed']} completed, {summary['failed']} failed "
        f"in {summary['duration']:.1f} s simulated"
    )
    rows = [
        ("request throughput", f"{summary['request_throughput']:.2f} req/s"),
        ("output throughput", f"{summary['output_throughput']:.1f} tok/s"),
        ("TTFT median / p99", f"{summary['median_ttft_ms']:.1f} / {summary['p99_ttft_ms']:.1f} ms"),
        ("TPOT median / p99", f"{summary['median_tpot_ms']:.2f} / {summary['p99_tpot_ms']:.2f} ms"),
        ("ITL median / p99", f"{summary['median_itl_ms']:.2f} / {summary['p99_itl_ms']:.2f} ms"),
        ("E2EL median / p99", f"{summary['median_e2el_ms']:.0f} / {summary['p99_e2el_ms']:.0f} ms"),
        (
            "KV cache",
            f"{twin.fit.kv_cache_tokens:,} tokens, peak usage {summary['peak_kv_cache_usage']:.0%}",
        ),
        ("queue", f"peak {summary['peak_num_requests_waiting']} waiting"),
        ("preemptions", str(summary["num_preemptions"])),
        ("engine", engine_line(twin.timing)),
        ("API server", api_server_line(summary["api_server_count"], summary["api_server_busy"])),
    ]
    if "rtfx" in summary:  # speech: audio instead of prompts (and no streamed tokens)
        rows.pop()
        rows[1:2] = [
            ("audio", f"{summary['audio_seconds']:.1f} s, RTFx {summary['rtfx']:.1f}"),
            ("output throughput", f"{summary['output_throughput']:.1f} tok/s"),
        ]
    for name, value in rows:
        out.print(f"  {name:<20}{value}")
    if spans is None:
        return
    out.print("bottleneck over the run:", highlight=False)
    width = max(len(f"{s.end:.1f}") for s in spans) if spans else 1
    for s in spans:
        out.print(f"  {s.start:>{width}.1f}–{s.end:>{width}.1f} s  {s.cls:<16} {s.evidence}",
                  highlight=False, markup=False)  # fmt: skip
    took = time_per_class(spans)
    total = sum(took.values()) or 1.0
    out.print("  time per class: " + ", ".join(f"{c} {t:.1f} s ({t / total:.0%})"
                                               for c, t in took.items()), highlight=False)  # fmt: skip


@sim.command()
@engine_options(
    "catalog GPU id, e.g. h100-sxm: the simulated GPU it runs on must be one (a fresh "
    f"$LABCTL_HOME gets it; default: the GPU there, or {DEFAULT_GPU})"
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True, help="0 picks a free port")
@click.option(
    "--time-scale", type=float, default=1.0, show_default=True,
    help="multiplies simulated time (startup and steps); 0 runs as fast as it can",
)  # fmt: skip
@click.option(
    "--load-gbps", type=float, default=2.0, show_default=True, help="disk speed for weights"
)
@click.option("--no-gpu-ledger", is_flag=True, help="do not take memory on the simulated GPU")
@click.option(
    "--enable-sleep-mode", is_flag=True,
    help="vLLM's sleep mode: /sleep, /wake_up, /is_sleeping (with VLLM_SERVER_DEV_MODE=1)",
)  # fmt: skip
@click.option("--fail-startup-after", type=float, metavar="S", help="fault: fail S s into startup")
@click.option("--hang-startup", is_flag=True, help="fault: never finish starting")
@click.option("--crash-after-requests", type=int, metavar="N", help="fault: die after N requests")
@click.option("--ignore-sigterm", is_flag=True, help="fault: ignore SIGTERM (needs SIGKILL)")
@click.option(
    "--orphan-worker", is_flag=True, help="fault: a worker holds the memory and outlives a kill"
)
@click.option("--error-mid-stream-every", type=int, metavar="N",
              help="fault: every Nth stream ends halfway with an error event")  # fmt: skip
@click.option("--malformed-sse-every", type=int, metavar="N",
              help="fault: every Nth stream carries an event that is not JSON")  # fmt: skip
@click.option("--fail-completions", is_flag=True,
              help="fault: healthy, but every completion answers 500")  # fmt: skip
@click.option("--fail-wake", is_flag=True, help="fault: sleeps, but every wake answers 500")
@click.option(
    "--max-batch", type=int, metavar="N",
    help="OpenVLA: requests one forward serves together (default 1, as OpenVLA's server)",
)  # fmt: skip
@click.option("--load-in-8bit", is_flag=True, help="OpenVLA: 8-bit weights (bitsandbytes)")
@click.option("--load-in-4bit", is_flag=True, help="OpenVLA: 4-bit weights (bitsandbytes)")
@click.option("--oft", is_flag=True, help="OpenVLA: serve as OpenVLA-OFT (8×7 action chunks)")
def serve(**kw: Any) -> None:
    """The twin as a live vLLM-compatible server (OpenAI API, /health, /metrics).

    Prints vLLM's startup log lines on stderr and the URL on stdout once it listens. It
    takes its memory on the simulated GPU that CUDA_VISIBLE_DEVICES names (0 by default).

    With --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1 in its environment it sleeps and
    wakes as vLLM does: POST /sleep?level=1|2, POST /wake_up, GET /is_sleeping.

    An OpenVLA model (openvla/openvla-7b; moojink/openvla-7b-oft-… or --oft for
    OpenVLA-OFT) is served as OpenVLA's own server serves it instead: POST /act (and
    /metrics), Hugging Face's and uvicorn's log lines.
    """
    from labctl.gpu.sim import SimMachine
    from labctl.sim.act import openvla_kind
    from labctl.sim.engine import build_twin
    from labctl.sim.server import Faults
    from labctl.sim.server import run as run_server

    vla = {k: kw.pop(k) for k in ("max_batch", "load_in_8bit", "load_in_4bit", "oft")}
    oft = openvla_kind(kw["model"], vla["oft"])
    if oft is None and (given := [k for k, v in vla.items() if v not in (None, False)]):
        flag = "--" + given[0].replace("_", "-")
        raise UsageError(f"{flag} is for an OpenVLA model (e.g. openvla/openvla-7b), not "
                         f"{kw['model']}; leave it out")  # fmt: skip
    host, port = kw.pop("host"), kw.pop("port")
    scale, load = kw.pop("time_scale"), kw.pop("load_gbps")
    if scale < 0:
        raise UsageError(f"--time-scale {scale} must be 0 or more; 1 is real time")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} must be 0 to 65535")
    faults = Faults(
        fail_startup_after=kw.pop("fail_startup_after"),
        hang_startup=kw.pop("hang_startup"),
        crash_after_requests=kw.pop("crash_after_requests"),
        ignore_sigterm=kw.pop("ignore_sigterm"),
        orphan_worker=kw.pop("orphan_worker"),
        error_mid_stream_every=kw.pop("error_mid_stream_every"),
        malformed_sse_every=kw.pop("malformed_sse_every"),
        fail_completions=kw.pop("fail_completions"),
        fail_wake=kw.pop("fail_wake"),
    )
    sleep_mode = kw.pop("enable_sleep_mode")
    for flag in ("error_mid_stream_every", "malformed_sse_every"):
        if (value := getattr(faults, flag)) is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {value} must be at least 1")
    home = None if kw.pop("no_gpu_ledger") else state_dir()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    if not visible.isdigit():
        raise UsageError(f"CUDA_VISIBLE_DEVICES={visible!r}: name a simulated GPU index, e.g. 0")
    index = int(visible)
    if home is not None:
        kw["gpu_id"] = machine_gpu(SimMachine(home), kw["gpu_id"], index)
    if oft is not None:
        if sleep_mode or faults.fail_wake:
            raise UsageError("--enable-sleep-mode and --fail-wake are vLLM's sleep mode; OpenVLA's "
                             "server has none: leave them out")  # fmt: skip
        serving = _vla_serving(kw, vla, oft, faults)

        def announce(url: str) -> None:
            click.echo(url)
            sys.stdout.flush()

        from labctl.sim.act import run as run_act

        machine = SimMachine(home) if home is not None else None
        run_act(serving, host, port, scale, load, faults, machine, index, announce)
        return
    twin = build_twin(twin_config(kw))

    def listening(url: str) -> None:
        click.echo(url)
        sys.stdout.flush()

    ledger = SimMachine(home) if home is not None else None
    run_server(twin, host, port, scale, load, faults, ledger, index, listening, sleep_mode)


#: vLLM flags and their defaults: an OpenVLA twin takes none of them but the GPU and name.
_VLLM_DEFAULTS = {"tensor_parallel_size": 1, "pipeline_parallel_size": 1, "max_model_len": None,
                  "max_num_seqs": None, "max_num_batched_tokens": None,
                  "gpu_memory_utilization": 0.9, "kv_cache_dtype": "auto", "quantization": None,
                  "enable_prefix_caching": None, "vllm_version": None}  # fmt: skip


def _vla_serving(kw: dict[str, Any], vla: dict[str, Any], oft: bool, faults: Any) -> Any:
    """What an OpenVLA twin serves, from the flags.

    Raises:
        UsageError: a vLLM flag or fault that OpenVLA's server has no use for, both weight
            formats, or a batch below 1.
    """
    from labctl.catalog.gpus import gpu
    from labctl.sim.act import VlaServing, checkpoint_stats

    for name, default in _VLLM_DEFAULTS.items():
        if kw.get(name) != default:
            raise UsageError(f"--{name.replace('_', '-')} is a vLLM flag; OpenVLA's server "
                             "(Hugging Face transformers) has no such setting: leave it out")  # fmt: skip
    for name in ("error_mid_stream_every", "malformed_sse_every"):
        if getattr(faults, name) is not None:
            raise UsageError(f"--{name.replace('_', '-')}: OpenVLA's server does not stream")
    if vla["load_in_8bit"] and vla["load_in_4bit"]:
        raise UsageError("--load-in-8bit and --load-in-4bit: choose one weight format")
    batch = 1 if vla["max_batch"] is None else vla["max_batch"]
    if batch < 1:
        raise UsageError(f"--max-batch {batch} must be at least 1 (1 is OpenVLA's own server)")
    model = kw["model"]
    return VlaServing(
        model=model,
        served_name=kw.get("served_model_name") or model,
        gpu=gpu(kw.get("gpu_id") or DEFAULT_GPU),
        weight_bits=4 if vla["load_in_4bit"] else 8 if vla["load_in_8bit"] else 16,
        oft=oft,
        max_batch=batch,
        stats=checkpoint_stats(model, oft),
    )
