"""vLLM's sleep mode in the twin: ``--enable-sleep-mode`` and its development endpoints.

As vLLM does, the twin serves these only with ``VLLM_SERVER_DEV_MODE=1`` in its
environment: ``POST /sleep?level=1|2``, ``POST /wake_up`` (all of it, or one part with
``?tags=weights`` / ``?tags=kv_cache``), ``GET /is_sleeping`` (``{"is_sleeping": …}``) and
``POST /collective_rpc`` with ``{"method": "reload_weights"}``. Without
``--enable-sleep-mode`` a sleep fails as vLLM's does.

Asleep, the twin keeps on the simulated GPU only what vLLM's sleep-mode allocator never held
(:func:`labctl.fit.sleep.asleep_bytes`, the figure preflight uses too) and answers inference
with 503 while ``/health`` and ``/v1/models`` go on answering. Level 1 copies the weights to
host RAM at the host link's rate and a wake copies them back at it; level 2 drops them, so a
wake retakes the memory and ``reload_weights`` reads the weights from disk again at the
twin's load rate. No profile, no graph capture: that is what makes a wake fast. After a
level-2 wake without the reload, vLLM would answer with garbage; the twin refuses with 500,
so a client that forgets the reload finds out. Every time is the twin's time scale times the
simulated one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from aiohttp import web

from labctl.catalog.gpus import GpuSpec
from labctl.errors import GpuError
from labctl.fit.sleep import asleep_bytes, host_bytes
from labctl.sim.engine import Twin
from labctl.sim.envelope import error_response
from labctl.sim.live import LiveEngine
from labctl.sim.startup import Faults, GpuLedger, log
from labctl.units import GiB

#: Paths that need the weights: 503 while asleep (vLLM's protected endpoints).
PROTECTED = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/embeddings",
                       "/v1/audio/transcriptions", "/v1/audio/translations"})  # fmt: skip
TAGS = ("weights", "kv_cache")


def host_link_gbps(spec: GpuSpec) -> float:
    """GB/s between pinned host RAM and the GPU, the rate a level-1 sleep and wake copy at.

    There is no PCIe figure in the GPU catalog, so it follows the card's generation: what
    pinned copies reach on PCIe 4.0 x16 (about 25 of its 32 GB/s: Ampere and Ada, the RTX
    3090 among them) and PCIe 5.0 x16 (about 50 of 64: Hopper, Blackwell); a unified-memory
    GB10 copies within its own memory, at its bandwidth.
    """
    if spec.unified_memory:
        return spec.bandwidth_gbs
    return 50.0 if spec.compute_capability >= (9, 0) else 25.0


def dev_mode() -> bool:
    """vLLM's ``VLLM_SERVER_DEV_MODE``, read as vLLM reads it (an integer, 0 when unset)."""
    try:
        return bool(int(os.environ.get("VLLM_SERVER_DEV_MODE", "0")))
    except ValueError:
        return False


class SleepMode:
    """The twin's sleep state and its endpoints.

    Args:
        holders: the pids that hold the weights and the rest of its memory (None: this
            process), as its startup took them.
    """

    def __init__(
        self, twin: Twin, engine: LiveEngine, *, enabled: bool, faults: Faults,
        machine: GpuLedger | None = None, gpu_index: int = 0,
        holders: tuple[int | None, int | None] = (None, None), time_scale: float = 1.0,
        load_gbps: float = 2.0,
    ) -> None:  # fmt: skip
        self.twin, self.engine, self.enabled, self.faults = twin, engine, enabled, faults
        self.machine, self.gpu_index, self.holders = machine, gpu_index, holders
        self.time_scale, self.load_gbps = time_scale, load_gbps
        #: The parts that are asleep (``weights``, ``kv_cache``); empty: awake.
        self.asleep: set[str] = set()
        self.level = 0
        #: Weights woken at level 2 but not read again yet (``reload_weights``).
        self.stale_weights = False
        #: Host RAM its offloaded weights take (level 1).
        self.host_bytes = 0
        self._busy = asyncio.Lock()
        fit = twin.fit
        self.weights = fit.weights_bytes
        self.kept = asleep_bytes(fit)
        self.kv = max(0, fit.budget_bytes - fit.weights_bytes - self.kept)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/sleep", self.sleep)
        app.router.add_post("/wake_up", self.wake_up)
        app.router.add_get("/is_sleeping", self.is_sleeping)
        app.router.add_post("/collective_rpc", self.collective_rpc)

    @web.middleware
    async def guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Inference needs the weights: 503 asleep, 500 while level-2 weights wait for their
        reload."""
        if request.path in PROTECTED:
            if self.asleep:
                return error_response(503, "The model is sleeping; POST /wake_up wakes it")
            if self.stale_weights:
                return error_response(500, "the weights were dropped by a level-2 sleep and "
                                      "not read again; POST /collective_rpc "
                                      '{"method": "reload_weights"}')  # fmt: skip
        result: web.StreamResponse = await handler(request)
        return result

    # -- endpoints ----------------------------------------------------------------------

    async def is_sleeping(self, request: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": bool(self.asleep)})

    async def sleep(self, request: web.Request) -> web.Response:
        if not self.enabled:
            return error_response(500, "AssertionError: Sleep mode is not enabled in the model "
                                  "config (start the engine with --enable-sleep-mode)")  # fmt: skip
        text = request.query.get("level", "1")
        if text not in ("1", "2"):
            return error_response(400, f"level={text[:20]!r}: sleep levels are 1 and 2", "level")
        level = int(text)
        async with self._busy:
            if self.asleep:
                return web.Response(status=200)
            await self._idle()
            before = self._free()
            if level == 1:  # the weights go to host RAM first, over the host link
                await self._take(self.weights / (host_link_gbps(self.twin.gpu) * 1e9))
            self._hold(self.kept)
            self.asleep, self.level = set(TAGS), level
            self.host_bytes = host_bytes(self.weights, level)
            after = self._free()
        if before is not None and after is not None:
            used = after[1] - after[0]
            log(f"Sleep mode freed {(after[0] - before[0]) / GiB:.2f} GiB memory, "
                f"{used / GiB:.2f} GiB memory is still in use.")  # fmt: skip
        return web.Response(status=200)

    async def wake_up(self, request: web.Request) -> web.Response:
        tags = request.query.getall("tags", []) or list(TAGS)
        if unknown := [t for t in tags if t not in TAGS]:
            return error_response(400, f"tags={unknown[0][:40]!r}: use weights or kv_cache")
        log(f"wake up the engine with tags: {tags if request.query.getall('tags', []) else None}")
        started = time.monotonic()
        async with self._busy:
            if self.faults.fail_wake and self.asleep:
                return error_response(500, "RuntimeError: CUDA error: out of memory (--fail-wake)")
            for tag in TAGS:
                if tag not in tags or tag not in self.asleep:
                    continue
                try:
                    if tag == "weights":
                        await self._wake_weights()
                    else:
                        self._allocate(self.kv, self.holders[1])
                except GpuError as exc:
                    return error_response(500, f"torch.OutOfMemoryError: {exc}")
                self.asleep.discard(tag)
            if not self.asleep:
                self.level, self.host_bytes = 0, 0
        log(f"It took {time.monotonic() - started:.6f} seconds to wake up tags {tags}.")
        return web.Response(status=200)

    async def collective_rpc(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return error_response(400, "JSON decode error")
        method = body.get("method") if isinstance(body, dict) else None
        if method != "reload_weights":
            return error_response(400, f"method {str(method)[:60]!r}: the twin's workers take "
                                  "reload_weights only")  # fmt: skip
        async with self._busy:
            if "weights" in self.asleep:
                return error_response(500, "RuntimeError: the weights are asleep; POST "
                                      "/wake_up?tags=weights first")  # fmt: skip
            if self.load_gbps > 0:
                await self._take(self.weights / (self.load_gbps * 1e9))
            self.stale_weights = False
        return web.json_response({"results": ["None"]})

    # -- memory ---------------------------------------------------------------------------

    async def _wake_weights(self) -> None:
        """Retake the weights' memory; level 1 copies them back over the host link."""
        self._allocate(self.weights, self.holders[0])
        if self.level == 1:
            await self._take(self.weights / (host_link_gbps(self.twin.gpu) * 1e9))
        else:
            self.stale_weights = True

    async def _idle(self) -> None:
        """Requests in flight finish first (vLLM's ``mode=wait``), for a minute at most."""
        for _ in range(6000):
            if self.engine.sched.idle:
                return
            await asyncio.sleep(0.01)

    async def _take(self, seconds: float) -> None:
        await asyncio.sleep(seconds * self.time_scale)

    def _free(self) -> tuple[int, int] | None:
        return None if self.machine is None else self.machine.free_bytes(self.gpu_index)

    def _hold(self, nbytes: int) -> None:
        """Give everything back but ``nbytes``, kept by the process that holds the rest."""
        if self.machine is None:
            return
        weights, rest = self.holders
        for pid in {weights, rest}:
            self.machine.release(pid)
        if nbytes > 0:
            with contextlib.suppress(GpuError):  # someone took it meanwhile: it holds less
                self.machine.allocate(self.gpu_index, nbytes, pid=rest, name="twin")

    def _allocate(self, nbytes: int, pid: int | None) -> None:
        if self.machine is not None and nbytes > 0:
            self.machine.allocate(self.gpu_index, nbytes, pid=pid, name="twin")
