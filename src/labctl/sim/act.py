"""``labctl sim serve`` for OpenVLA: the twin as OpenVLA's own server (``deploy.py``).

It speaks OpenVLA's protocol: ``POST /act`` takes a json-numpy camera frame, an instruction
and, where the checkpoint holds several datasets' statistics, an ``unnorm_key`` (plainly or
double-encoded as ``{"encoded": "<json>"}``), and answers the action as a json-numpy array:
7 floats (OpenVLA), or an 8×7 chunk (OpenVLA-OFT for LIBERO). An encoded request gets its
answer encoded the same way: a JSON string holding the json-numpy text. Every error in the
handler is answered as OpenVLA answers it, HTTP 200 with the JSON string ``"error"``, after
logging the exception and OpenVLA's warning; FastAPI's own refusals (a body that is not a
JSON object) are its 422s. Like OpenVLA it has no health endpoint: readiness is a real
``/act`` whose answer parses as an action. It keeps ``/metrics`` with vLLM's names for what
it does (requests running and waiting, request latency, queue time).

Actions are deterministic: the bins come from a hash of the frame, the instruction and the
dataset, and are unnormalised with that dataset's statistics as ``predict_action`` does
(``0.5 × (a + 1) × (q99 − q01) + q01``, the gripper left normalised). The statistics are
nominal (each dataset's bounds, not the published checkpoint's figures) unless the model is
a local checkpoint, whose ``dataset_statistics.json`` (or ``config.json``'s ``norm_stats``)
is read as ``deploy.py`` reads it.

Requests waiting when a forward starts run in it together, up to ``max_batch``; a forward
takes :func:`labctl.sim.vla.action_seconds` for its batch. OpenVLA's server does not batch
(``predict_action`` handles one request; ``generate`` refuses batches), so ``max_batch``
defaults to 1, which mirrors it; larger values model a batching server, as the planner's
``robots_at`` assumes.

Startup prints what loading with Hugging Face and serving with uvicorn print: "Loading
checkpoint shards: N%" (at the disk speed given), then uvicorn's "Application startup
complete." and "Uvicorn running on http://…", and it takes its weights and CUDA context on
the simulated GPU as its own process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
import contextlib
from dataclasses import dataclass, field
import hashlib
import json
import math
import os
import signal
import sys
import time
from typing import Any

from aiohttp import web
import json_numpy
import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from labctl import vla
from labctl.catalog.gpus import GpuSpec
from labctl.errors import EngineError, GpuError
from labctl.sim.startup import Faults, GpuLedger
from labctl.sim.vla import OFT, OFT_CHUNK, OPENVLA, action_seconds, memory_bytes, weight_bytes

#: Bodies up to this size are read (a 4K frame in base64 is about 33 MB); larger ones get 413.
MAX_BODY = 64 * 2**20
#: OpenVLA's ``llm_max_length``, and the prompt's positions besides the instruction's words
#: (256 patches, BOS, the template and token 29871).
LLM_MAX_LENGTH = 2048
PROMPT_TOKENS = 270
#: The checkpoint's shard size: openvla-7b's 15 GB come in 3 safetensors shards.
SHARD_BYTES = 7 * 10**9
#: Request latency buckets (seconds): actions take tens to hundreds of milliseconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
                   5.0, 10.0, 30.0, 60.0)  # fmt: skip
#: OpenVLA's warning after every failed request (``deploy.py``, its wording).
WARNING = (
    "Your request threw an error; make sure your request complies with the expected format:\n"
    "{'image': np.ndarray, 'instruction': str}\n"
    "You can optionally an `unnorm_key: str` to specific the dataset statistics you want to "
    "use for de-normalizing the output actions."
)
#: OpenVLA-7B's training mixture (Open X-Embodiment), each dataset's action statistics kept in
#: the checkpoint.
OPENVLA_DATASETS = (
    "austin_buds_dataset_converted_externally_to_rlds",
    "austin_sailor_dataset_converted_externally_to_rlds",
    "austin_sirius_dataset_converted_externally_to_rlds", "berkeley_autolab_ur5",
    "berkeley_cable_routing", "berkeley_fanuc_manipulation", "bridge_orig", "cmu_stretch",
    "dlr_edan_shared_control_converted_externally_to_rlds", "dobbe", "fmb_dataset",
    "fractal20220817_data", "furniture_bench_dataset_converted_externally_to_rlds",
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds", "jaco_play", "kuka",
    "nyu_franka_play_dataset_converted_externally_to_rlds", "roboturk",
    "stanford_hydra_dataset_converted_externally_to_rlds", "taco_play", "toto",
    "ucsd_kitchen_dataset_converted_externally_to_rlds", "utaustin_mutex", "viola",
)  # fmt: skip
#: An OFT LIBERO checkpoint holds the statistics of the one suite it was fine-tuned on.
OFT_DATASETS = {"spatial": "libero_spatial_no_noops", "object": "libero_object_no_noops",
                "goal": "libero_goal_no_noops", "10": "libero_10_no_noops"}  # fmt: skip


@dataclass(frozen=True)
class Stats:
    """One dataset's action bounds (1st and 99th percentiles) and which dims they scale."""

    q01: tuple[float, ...]
    q99: tuple[float, ...]
    mask: tuple[bool, ...]


def _nominal(seed: str) -> Stats:
    """End-effector deltas of a few centimetres and tenths of a radian, and a gripper."""
    h = hashlib.blake2b(seed.encode(), digest_size=6).digest()
    pos, rot = 0.01 + h[0] / 255 * 0.04, 0.05 + h[1] / 255 * 0.2
    low = (-pos, -pos, -pos, -rot, -rot, -rot, 0.0)
    return Stats(low, (*(-x for x in low[:6]), 1.0), (*(True,) * 6, False))


def checkpoint_stats(model: str, oft: bool) -> dict[str, Stats]:
    """The datasets a checkpoint can unnormalise for: a local checkpoint's own statistics,
    else OpenVLA-7B's mixture (or an OFT LIBERO suite's) with nominal bounds."""
    if stats := _read_stats(vla.checkpoint_statistics(model)):
        return stats
    if oft:
        suite = model.rsplit("libero-", 1)[-1] if "libero-" in model else "spatial"
        key = OFT_DATASETS.get(suite, "libero_spatial_no_noops")
        return {key: _nominal(key)}
    return {key: _nominal(key) for key in OPENVLA_DATASETS}


def _read_stats(doc: Mapping[str, Any]) -> dict[str, Stats]:
    out: dict[str, Stats] = {}
    for key, entry in doc.items():
        action = entry.get("action") if isinstance(entry, dict) else None
        if not isinstance(action, dict):
            continue
        q01, q99 = action.get("q01"), action.get("q99")
        if not (isinstance(q01, list) and isinstance(q99, list) and len(q01) == len(q99) > 0):
            continue
        mask = action.get("mask", [True] * len(q01))
        try:
            out[str(key)] = Stats(tuple(map(float, q01)), tuple(map(float, q99)),
                                  tuple(bool(m) for m in mask))  # fmt: skip
        except (TypeError, ValueError):
            continue
    return out


def check_unnorm_key(stats: Mapping[str, Stats], key: str | None) -> str:
    """``_check_unnorm_key`` of OpenVLA's model: a key is needed when there are several.

    Raises:
        AssertionError: no key where several datasets are held, or one not held (its words).
    """
    keys = f"dict_keys({list(stats)!r})"
    if key is None:
        if len(stats) != 1:
            raise AssertionError(
                "Your model was trained on more than one dataset, please pass a `unnorm_key` "
                "from the following options to choose the statistics used for un-normalizing "
                f"actions: {keys}"
            )
        key = next(iter(stats))
    if key not in stats:
        raise AssertionError(
            "The `unnorm_key` you chose is not in the set of available dataset statistics, "
            f"please choose from: {keys}"
        )
    return key


@dataclass(frozen=True)
class VlaServing:
    """What the twin serves: the model, where, how its weights are loaded, how it batches."""

    model: str
    served_name: str
    gpu: GpuSpec
    weight_bits: int = 16
    oft: bool = False
    max_batch: int = 1
    stats: Mapping[str, Stats] = field(default_factory=dict)

    def seconds(self, batch: int) -> float:
        return action_seconds(self.gpu, batch, self.weight_bits, self.oft)

    def action(self, obs: vla.Observation, key: str) -> np.ndarray:
        """The answer to one observation: 7 unnormalised values, or OFT's chunk."""
        digest = hashlib.blake2b(digest_size=8)
        digest.update(repr(obs.image.shape).encode())
        digest.update(np.ascontiguousarray(obs.image[::16, ::16]).tobytes())
        digest.update(f"{obs.instruction}\0{key}".encode())
        rng = np.random.default_rng(int.from_bytes(digest.digest(), "little"))
        s = self.stats[key]
        dims = len(s.q01)
        if self.oft:  # continuous L1-regression outputs in [-1, 1]
            normalized = rng.uniform(-1.0, 1.0, (OFT_CHUNK[0], dims))
        else:  # one of 255 bin centres of linspace(-1, 1, 256) per token
            bins = np.linspace(-1.0, 1.0, 256)
            centers = (bins[:-1] + bins[1:]) / 2.0
            normalized = centers[rng.integers(0, 255, dims)]
        low, high = np.array(s.q01), np.array(s.q99)
        mask = np.array(s.mask[:dims] + (True,) * (dims - len(s.mask)))
        out: np.ndarray = np.where(mask, 0.5 * (normalized + 1) * (high - low) + low, normalized)
        return out


class Metrics:
    """vLLM's names for what the twin does, labelled as vLLM labels them."""

    def __init__(self, model_name: str) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        names, labels = ["model_name", "engine"], {"model_name": model_name, "engine": "0"}
        self.running = Gauge("vllm:num_requests_running", "Number of requests in model "
                             "execution batches.", names, registry=r).labels(**labels)  # fmt: skip
        self.waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be "
                             "processed.", names, registry=r).labels(**labels)  # fmt: skip
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request "
                             "latency in seconds.", names, buckets=LATENCY_BUCKETS,
                             registry=r).labels(**labels)  # fmt: skip
        self.queue = Histogram("vllm:request_queue_time_seconds", "Histogram of time spent in "
                               "WAITING phase for request.", names, buckets=LATENCY_BUCKETS,
                               registry=r).labels(**labels)  # fmt: skip
        self.prompt = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                              names, registry=r).labels(**labels)  # fmt: skip
        self.generated = Counter("vllm:generation_tokens", "Number of generation tokens "
                                 "processed.", names, registry=r).labels(**labels)  # fmt: skip
        self.success = Counter("vllm:request_success", "Count of successfully processed "
                               "requests.", [*names, "finished_reason"],
                               registry=r).labels(**labels, finished_reason="stop")  # fmt: skip


@dataclass
class _Job:
    arrival: float
    done: asyncio.Future[None]


class Batcher:
    """The GPU: forwards one after another, each over the requests waiting when it starts."""

    def __init__(self, serving: VlaServing, time_scale: float, metrics: Metrics) -> None:
        self.serving, self.time_scale, self.metrics = serving, time_scale, metrics
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.on_busy: Callable[[bool], None] = lambda busy: None

    async def act(self) -> None:
        """Wait for this request's turn in a forward and for the forward to end."""
        job = _Job(time.monotonic(), asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        self.metrics.waiting.set(self.queue.qsize())
        await asyncio.shield(job.done)  # a client that goes away leaves its batch running

    async def run(self) -> None:
        s, m = self.serving, self.metrics
        setup = OFT if s.oft else OPENVLA
        while True:
            batch = [await self.queue.get()]
            while len(batch) < s.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            start = time.monotonic()
            m.waiting.set(self.queue.qsize())
            m.running.set(len(batch))
            self.on_busy(True)
            await asyncio.sleep(s.seconds(len(batch)) * self.time_scale)
            now = time.monotonic()
            m.running.set(0)
            if self.queue.empty():
                self.on_busy(False)
            for job in batch:
                m.queue.observe(start - job.arrival)
                m.e2e.observe(now - job.arrival)
                m.prompt.inc(setup.prefill_tokens)
                m.generated.inc(0 if s.oft else setup.decode_steps + 1)
                m.success.inc()
                if not job.done.done():
                    job.done.set_result(None)


def _uvicorn(message: str) -> None:
    print(f"INFO:     {message}", file=sys.stderr, flush=True)


def _unprocessable(kind: str, msg: str, value: Any, ctx: dict[str, str] | None = None) -> web.Response:  # fmt: skip
    """FastAPI's 422 for a body its ``Dict[str, Any]`` parameter refuses."""
    error: dict[str, Any] = {"type": kind, "loc": ["body"] if kind != "json_invalid"
                             else ["body", 0], "msg": msg, "input": value}  # fmt: skip
    if ctx:
        error["ctx"] = ctx
    return web.json_response({"detail": [error]}, status=422)


class ActServer:
    """OpenVLA's HTTP side: ``POST /act`` and (the twin's own) ``/metrics``."""

    def __init__(self, serving: VlaServing, batcher: Batcher, faults: Faults | None = None) -> None:
        self.serving, self.batcher, self.faults = serving, batcher, faults or Faults()
        self.answered = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._fastapi])
        app.router.add_post("/act", self.act)
        app.router.add_get("/metrics", self.metrics)
        return app

    @web.middleware
    async def _fastapi(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Starlette's answers for unknown paths and methods, and uvicorn's access log."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"
        try:
            resp: web.StreamResponse = await handler(request)
        except web.HTTPNotFound:
            resp = web.json_response({"detail": "Not Found"}, status=404)
        except web.HTTPMethodNotAllowed:
            resp = web.json_response({"detail": "Method Not Allowed"}, status=405)
        except web.HTTPException as exc:  # 413 for a body over MAX_BODY
            _uvicorn(f'{where} - "{request.method} {request.path_qs} HTTP/'
                     f'{request.version.major}.{request.version.minor}" {exc.status} {exc.reason}')  # fmt: skip
            raise
        _uvicorn(f'{where} - "{request.method} {request.path_qs} HTTP/'
                 f'{request.version.major}.{request.version.minor}" {resp.status} {resp.reason}')  # fmt: skip
        return resp

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.batcher.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def act(self, request: web.Request) -> web.Response:
        raw = await request.read()  # beyond MAX_BODY aiohttp answers 413
        if not raw.strip():
            return _unprocessable("missing", "Field required", None)
        try:
            doc = await asyncio.to_thread(json.loads, raw) if len(raw) > 2**20 else json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            return _unprocessable("json_invalid", "JSON decode error", {}, {"error": reason})
        if not isinstance(doc, dict):
            return _unprocessable("dict_type", "Input should be a valid dictionary", doc)
        encoded = "encoded" in doc
        try:
            obs = vla.observation(doc)
            key = check_unnorm_key(self.serving.stats, obs.unnorm_key)
            words = len(obs.instruction.split())
            if PROMPT_TOKENS + round(words * 1.3) > LLM_MAX_LENGTH:  # as generate() refuses it
                raise ValueError(f"Input length of input_ids is {PROMPT_TOKENS + round(words * 1.3)}"
                                 f", but `max_length` is set to {LLM_MAX_LENGTH}")  # fmt: skip
            if self.faults.fail_completions:
                raise RuntimeError("CUDA error: an illegal memory access was encountered "
                                   "(--fail-completions)")  # fmt: skip
        except (ValueError, AssertionError, RuntimeError) as exc:
            print(f"Traceback (most recent call last):\n  predict_action (labctl twin)\n"
                  f"{type(exc).__name__}: {exc}\n{WARNING}", file=sys.stderr, flush=True)  # fmt: skip
            return web.json_response("error")
        await self.batcher.act()
        action = self.serving.action(obs, key)
        self.answered += 1
        limit = self.faults.crash_after_requests
        if limit is not None and self.answered >= limit:
            print(f"RuntimeError: CUDA error: unspecified launch failure "
                  f"(--crash-after-requests {limit})", file=sys.stderr, flush=True)  # fmt: skip
            os._exit(70)
        text = str(json_numpy.dumps(action))
        body = json.dumps(text) if encoded else text  # deploy.py answers in the request's form
        return web.Response(body=body.encode(), content_type="application/json")


async def start(
    serving: VlaServing,
    machine: GpuLedger | None,
    gpu_index: int,
    time_scale: float,
    load_gbps: float,
    faults: Faults,
) -> None:
    """Load as Hugging Face does, and take the memory on the simulated GPU.

    Raises:
        EngineError: the GPU lacks the memory, or a fault flag says fail.
    """
    started = time.monotonic()

    async def wait(seconds: float) -> None:
        if faults.fail_startup_after is not None:
            left = faults.fail_startup_after - (time.monotonic() - started)
            if seconds * time_scale >= left:
                await asyncio.sleep(max(0.0, left))
                raise EngineError("RuntimeError: CUDA error: an illegal memory access was "
                                  "encountered (--fail-startup-after)")  # fmt: skip
        await asyncio.sleep(seconds * time_scale)

    if faults.hang_startup:
        print("loading is stuck (--hang-startup)", file=sys.stderr, flush=True)
        await asyncio.Event().wait()
    need = memory_bytes(0, serving.weight_bits, serving.oft)
    stored = weight_bytes(16, serving.oft)  # the checkpoint is bf16 whatever the load format
    shards = max(1, math.ceil(stored / SHARD_BYTES))
    load_s = stored / (load_gbps * 1e9) if load_gbps > 0 else 0.0
    for done in range(shards + 1):
        if done:
            await wait(load_s / shards)
        _shards(done, shards, load_s * time_scale * done / shards, load_s * time_scale)
    if machine is None and need > serving.gpu.cuda_total_bytes:
        raise EngineError(
            f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
            f"{need / 2**20:,.0f} MiB. GPU 0 has a total capacity of "
            f"{serving.gpu.cuda_total_bytes / 2**30:.2f} GiB"
        )
    if machine is not None:
        try:
            if faults.orphan_worker:
                machine.hold_in_worker(gpu_index, need, name="twin-worker")
            else:
                machine.allocate(gpu_index, need, name="twin")
        except GpuError as exc:
            raise EngineError(f"torch.OutOfMemoryError: {exc}") from exc


def _shards(done: int, shards: int, elapsed: float, total: float) -> None:
    """tqdm's line for Hugging Face's shards (the lab reads the percentage)."""
    bar = "█" * (10 * done // shards)
    rate = f"{elapsed / done:5.2f}s/it" if done else "?it/s"
    clock = "00:00<?" if not done else f"{_clock(elapsed)}<{_clock(total - elapsed)}"
    print(f"Loading checkpoint shards: {100 * done // shards:3d}%|{bar:<10}| {done}/{shards} "
          f"[{clock}, {rate}]", file=sys.stderr, flush=True)  # fmt: skip


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(max(seconds, 0.0)), 60)
    return f"{minutes:02d}:{secs:02d}"


async def serve(
    serving: VlaServing,
    host: str,
    port: int,
    time_scale: float = 1.0,
    load_gbps: float = 2.0,
    faults: Faults | None = None,
    machine: GpuLedger | None = None,
    gpu_index: int = 0,
    on_listening: Callable[[str], None] = lambda url: None,
) -> None:
    """Load, serve ``/act`` until SIGTERM or SIGINT, then shut down and release the memory."""
    faults = faults or Faults()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if faults.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loading = asyncio.create_task(start(serving, machine, gpu_index, time_scale, load_gbps,
                                        faults))  # fmt: skip
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({loading, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not loading.done():  # SIGTERM while loading: stop there
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            if machine is not None:
                machine.release()
            return
        stopped.cancel()
        loading.result()
    except BaseException:
        stopped.cancel()
        if machine is not None:
            machine.release()
        raise
    metrics = Metrics(serving.served_name)
    batcher = Batcher(serving, time_scale, metrics)
    if machine is not None:
        ledger = machine

        def busy(on: bool) -> None:
            with contextlib.suppress(GpuError):
                ledger.set_activity(gpu_index, 1.0 if on else 0.0)

        batcher.on_busy = busy
    runner = web.AppRunner(ActServer(serving, batcher, faults).app(), access_log=None,
                           handle_signals=False)  # fmt: skip
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    _uvicorn(f"Started server process [{os.getpid()}]")
    _uvicorn("Waiting for application startup.")
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if machine is not None:
            machine.release()
        raise EngineError(f"[Errno {exc.errno}] error while attempting to bind on address "
                          f"({host!r}, {port}): {exc.strerror}") from exc  # fmt: skip
    _uvicorn("Application startup complete.")
    bound = runner.addresses[0][1] if runner.addresses else port
    url = f"http://{host}:{bound}"
    _uvicorn(f"Uvicorn running on {url} (Press CTRL+C to quit)")
    on_listening(url)
    task = asyncio.create_task(batcher.run())
    try:
        await stop.wait()
        _uvicorn("Shutting down")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()
        _uvicorn(f"Finished server process [{os.getpid()}]")
        if machine is not None:
            machine.release()


def run(serving: VlaServing, host: str, port: int, time_scale: float, load_gbps: float,
        faults: Faults, machine: GpuLedger | None, gpu_index: int,
        on_listening: Callable[[str], None]) -> None:  # fmt: skip
    asyncio.run(serve(serving, host, port, time_scale, load_gbps, faults, machine, gpu_index,
                      on_listening))  # fmt: skip


def openvla_kind(model: str, oft: bool = False) -> bool | None:
    """Whether ``model`` is served as OpenVLA-OFT (True) or OpenVLA (False); None when it is
    no OpenVLA model. OFT checkpoints (``moojink/openvla-7b-oft-finetuned-libero-spatial``)
    are OpenVLA-7B fine-tuned; ``oft`` serves any OpenVLA model as OFT."""
    from labctl.cache.resolve import resolve_model
    from labctl.errors import CatalogError

    if model.rstrip("/").rsplit("/", 1)[-1].lower().startswith("openvla-7b-oft"):
        return True
    try:
        arch = resolve_model(model, hub=False)  # adapters ask it on the event loop
    except CatalogError:
        return None
    if not any(w.name.startswith("vision_backbone.") for w in arch.weights):
        return None
    return oft
