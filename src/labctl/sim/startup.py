"""The twin's startup, as vLLM goes through it: load the weights (at a configurable disk
speed, shard by shard, with vLLM's progress lines), profile memory, size the KV cache,
capture graphs, each phase printing vLLM's log lines and taking its time times the twin's
time scale; and the twin's memory on the simulated GPU, taken as its own process's (or
through a worker that can be left orphaned).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
import math
import os
import sys
import time
from typing import Protocol

from labctl.errors import EngineError, GpuError
from labctl.sim.engine import Twin
from labctl.units import GiB

#: The twin's checkpoint comes in shards of at most 5 GB (the Hugging Face hub's default), and
#: in at least eight, so that even a small model's slow load shows its progress as it goes.
SHARD_BYTES = 5 * 10**9
MIN_SHARDS = 8
#: vLLM's speech endpoints warm up at startup: the first librosa calls ("can take ~7s") and
#: the multimodal input processor ("~2.5s"), as its own docstrings put them.
AUDIO_WARMUP_S = 7.0
PROCESSOR_WARMUP_S = 2.5


class GpuLedger(Protocol):
    """Where the twin takes its memory: the simulated GPUs' ledger (``labctl.gpu.sim``).

    Passed in from above so that the twin does not depend on the GPU layer.
    """

    def free_bytes(self, index: int) -> tuple[int, int] | None: ...

    def allocate(self, index: int, nbytes: int, pid: int | None = None, name: str = "") -> None: ...

    def release(self, pid: int | None = None) -> None: ...

    def set_activity(self, index: int, busy: float, pid: int | None = None) -> None: ...

    def hold_in_worker(
        self, index: int, nbytes: int, name: str = "worker", seconds: float | None = None
    ) -> int: ...


@dataclass(frozen=True)
class Faults:
    """Failure modes for tests of everything that supervises an engine."""

    fail_startup_after: float | None = None
    hang_startup: bool = False
    crash_after_requests: int | None = None
    ignore_sigterm: bool = False
    orphan_worker: bool = False
    #: Every Nth streamed response ends halfway with an error event, as vLLM sends one.
    error_mid_stream_every: int | None = None
    #: Every Nth streamed response carries one event that is not valid JSON.
    malformed_sse_every: int | None = None
    #: Healthy, lists its model, but every completion fails (a broken CUDA context).
    fail_completions: bool = False
    #: Sleeps, but every wake fails (the engine stays asleep), as a wake that finds no memory.
    fail_wake: bool = False


#: No faults: the default.
NO_FAULTS = Faults()


def log(message: str, level: str = "INFO") -> None:
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(f"{level} {stamp} [labctl twin pid={os.getpid()}] {message}", file=sys.stderr, flush=True)


def _shard_line(done: int, shards: int, elapsed: float, total: float) -> None:
    """vLLM's progress line for its weights, as tqdm writes it: what the lab reads to show how
    much is loaded (``VllmAdapter.progress``)."""
    if done == 0:
        timing = "00:00<?, ?it/s"
    else:
        per = elapsed / done
        timing = f"{_clock(elapsed)}<{_clock(total - elapsed)}, {per:5.2f}s/it"
    print(f"Loading safetensors checkpoint shards: {100 * done // shards:3d}% Completed | "
          f"{done}/{shards} [{timing}]", file=sys.stderr, flush=True)  # fmt: skip


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(max(seconds, 0.0)), 60)
    return f"{minutes:02d}:{secs:02d}"


async def start_engine(
    twin: Twin,
    machine: GpuLedger | None,
    gpu_index: int,
    time_scale: float,
    load_gbps: float,
    faults: Faults,
) -> int | None:
    """Go through vLLM's startup phases; returns the pid of an orphanable worker, if any.

    Raises:
        EngineError: the GPU lacks the memory, or a fault flag says fail (vLLM's words).
    """
    fit = twin.fit
    started = time.monotonic()

    async def phase(seconds: float) -> None:
        if faults.fail_startup_after is not None:
            left = faults.fail_startup_after - (time.monotonic() - started)
            if seconds * time_scale >= left:
                await asyncio.sleep(max(0.0, left))
                raise EngineError(
                    "RuntimeError: Engine core initialization failed. See root cause above. "
                    "Failed core proc(s): {'EngineCore_DP0': 1}"
                )
        await asyncio.sleep(seconds * time_scale)

    log(f"Starting to load model {twin.config.model}...")
    if twin.speech:
        log("Encoder-decoder models do not support chunked prefill nor prefix caching; "
             "disabling both.")  # fmt: skip
        log("Encoder-decoder models do not support FULL_AND_PIECEWISE. Overriding "
             "cudagraph_mode to FULL_DECODE_ONLY.")  # fmt: skip
    if faults.hang_startup:
        log("loading is stuck (--hang-startup)", "WARNING")
        await asyncio.Event().wait()
    budget = fit.budget_bytes
    worker = None
    if machine is not None:
        room = machine.free_bytes(gpu_index)
        if room is None:
            raise EngineError(f"RuntimeError: CUDA error: invalid device ordinal (GPU {gpu_index})")
        free, total = room
        if free < budget:
            raise EngineError(
                f"ValueError: Free memory on device cuda:{gpu_index} ({free / GiB:.2f}/"
                f"{total / GiB:.2f} GiB) on startup is less than desired GPU "
                f"memory utilization ({fit.gpu_memory_utilization}, {budget / GiB:.2f} GiB). "
                "Decrease GPU memory utilization or reduce GPU memory used by other processes."
            )
    load_s = fit.weights_bytes / (load_gbps * 1e9) if load_gbps > 0 else 0.0
    shards = max(math.ceil(fit.weights_bytes / SHARD_BYTES), MIN_SHARDS)
    _shard_line(0, shards, 0.0, load_s * time_scale)
    for done in range(1, shards + 1):
        await phase(load_s / shards)
        _shard_line(done, shards, load_s * time_scale * done / shards, load_s * time_scale)
    log(f"Loading weights took {load_s * time_scale:.2f} seconds")
    if machine is not None:
        try:
            if faults.orphan_worker:
                worker = machine.hold_in_worker(gpu_index, fit.weights_bytes, name="twin-worker")
            else:
                machine.allocate(gpu_index, fit.weights_bytes, name="twin")
        except GpuError as exc:
            raise EngineError(f"torch.OutOfMemoryError: {exc}") from exc
    log(
        f"Model loading took {fit.weights_bytes / GiB:.4f} GiB and {load_s * time_scale:.6f} seconds"
    )
    await phase(2.0)
    log(f"Memory profiling takes {2.0 * time_scale:.2f} seconds")
    log(f"Available KV cache memory: {fit.kv_cache_bytes / GiB:.2f} GiB")
    if machine is not None:
        rest = max(0, budget - fit.weights_bytes)
        try:
            if worker is not None:
                machine.allocate(gpu_index, rest, pid=worker, name="twin-worker")
            else:
                machine.allocate(gpu_index, rest, name="twin")
        except GpuError as exc:
            raise EngineError(f"torch.OutOfMemoryError: {exc}") from exc
    log(f"GPU KV cache size: {fit.kv_cache_tokens:,} tokens")
    # An encoder-decoder model's line reserves cross-attention for a whole batch budget of
    # encoder tokens, not one clip's: vLLM's figure, not the plan's real capacity.
    logged = fit.encoder_decoder.vllm_logged_concurrency if fit.encoder_decoder else None
    log(
        f"Maximum concurrency for {fit.max_model_len:,} tokens per request: "
        f"{fit.max_concurrency if logged is None else logged:.2f}x"
    )
    if fit.cuda_graph_bytes:
        await phase(5.0)
        log(
            f"Graph capturing finished in {5.0 * time_scale:.0f} secs, took "
            f"{fit.cuda_graph_bytes / GiB:.2f} GiB"
        )
    log(
        "init engine (profile, create kv cache, warmup model) took "
        f"{time.monotonic() - started:.2f} seconds"
    )
    if twin.speech:
        # The API server's speech endpoints warm librosa and the input processor up first.
        log("Warming up audio preprocessing libraries...")
        await phase(AUDIO_WARMUP_S)
        log(f"Audio preprocessing warmup completed in {AUDIO_WARMUP_S * time_scale:.2f}s")
        log("Warming up multimodal input processor...")
        await phase(PROCESSOR_WARMUP_S)
        log(f"Input processor warmup completed in {PROCESSOR_WARMUP_S * time_scale:.2f}s")
    return worker
