"""Sleep mode: what a sleeping engine keeps (one figure for preflight and the twin), which level
the host affords, the ``sleep`` key, the adapters' flags, the twin's endpoints, the owner's
sleeping state and preflight's count of sleeping revisions."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
import pytest

from labctl.catalog.gpus import gpu
from labctl.config import DeploymentSpec
from labctl.config.values import SLEEP_ENGINES
from labctl.deploy.owner import ALLOWED, EngineOwner, State
from labctl.deploy.preflight import Planner
from labctl.engines import adapter, adapters
from labctl.errors import ConfigError, DeployError, GpuError
from labctl.fit.sleep import asleep_bytes, choose_level, host_bytes
from labctl.gpu.sim import SimBackend, SimMachine
from labctl.sim.engine import TwinConfig, build_twin
from labctl.sim.live import LiveEngine
from labctl.sim.sleep import SleepMode, host_link_gbps
from labctl.sim.startup import NO_FAULTS, Faults
from labctl.units import GiB


def spec(**kw: Any) -> DeploymentSpec:
    doc = {"engine": "sim", "model": "Qwen/Qwen3-0.6B"} | kw
    return DeploymentSpec.from_dict("chat", doc)


# -- the level and the holdings -------------------------------------------------------------


def test_auto_takes_level_1_only_when_the_weights_fit_in_host_ram_with_a_margin() -> None:
    total = 64 * GiB
    margin = int(0.1 * total)  # above the 2 GiB floor on a 64 GiB host
    weights = 16 * GiB
    assert choose_level("auto", weights, weights + margin, total) == 1
    assert choose_level("auto", weights, weights + margin - 1, total) == 2
    # a small host keeps the 2 GiB floor
    assert choose_level("auto", GiB, 3 * GiB, 8 * GiB) == 1
    assert choose_level("auto", GiB, 3 * GiB - 1, 8 * GiB) == 2
    # a level given is taken as it is, whatever the host has
    assert choose_level(1, weights, 0, total) == 1
    assert choose_level(2, weights, total, total) == 2
    assert (host_bytes(weights, 1), host_bytes(weights, 2)) == (weights, 0)


@pytest.mark.parametrize("eager", [True, False])
def test_a_sleeping_engine_keeps_what_its_allocator_never_held(eager: bool) -> None:
    twin = build_twin(TwinConfig("Qwen/Qwen3-8B", "rtx-3090", max_model_len=4096,
                                 enforce_eager=eager))  # fmt: skip
    fit = twin.fit
    kept = asleep_bytes(fit)
    assert kept == fit.non_torch_bytes + fit.cuda_graph_bytes
    assert (fit.cuda_graph_bytes == 0) is eager
    assert fit.weights_bytes + fit.kv_cache_bytes + kept <= fit.budget_bytes
    # preflight (the adapter's estimate) and the twin size it with the one function
    settings = spec(model="Qwen/Qwen3-8B", args={"max_model_len": 4096, "enforce_eager": eager})
    estimate = adapter("sim").estimate(settings.to_dict(), _device("rtx-3090"))
    sleep = SleepMode(twin, _engine(twin), enabled=True, faults=Faults())
    assert estimate.asleep_bytes == sleep.kept == kept


def _device(gpu_id: str) -> Any:
    from labctl.gpu.sample import DeviceSample

    g = gpu(gpu_id)
    fields: dict[str, Any] = dict.fromkeys(DeviceSample.__dataclass_fields__)
    fields |= {"index": 0, "name": g.name, "uuid": "GPU-0", "pci_bus_id": "0",
               "memory_total_bytes": g.cuda_total_bytes, "processes": (), "catalog_id": g.id}  # fmt: skip
    return DeviceSample(**fields)


def _engine(twin: Any) -> LiveEngine:
    async def make() -> LiveEngine:
        return LiveEngine(twin, 0.0)

    return asyncio.run(make())


def test_the_host_link_follows_the_cards_pcie_generation() -> None:
    assert host_link_gbps(gpu("rtx-3090")) == 25.0  # PCIe 4.0 x16
    assert host_link_gbps(gpu("h100-sxm")) == 50.0  # PCIe 5.0 x16


# -- the sleep key and the adapters -----------------------------------------------------------


def test_the_sleep_key_takes_auto_a_level_or_false_for_engines_that_sleep() -> None:
    assert spec(sleep="auto").sleep == "auto"
    assert spec(sleep=True).sleep == "auto"
    assert (spec(sleep=1).sleep, spec(sleep=2).sleep, spec(sleep=False).sleep) == (1, 2, None)
    assert spec().sleep is None
    assert DeploymentSpec.from_dict("chat", spec(sleep=2).to_dict()).sleep == 2  # the journal
    with pytest.raises(ConfigError, match=r'deployments.chat.sleep = 3: give "auto"'):
        spec(sleep=3)
    with pytest.raises(ConfigError, match=r"deployments.chat.sleep = 1.0: give"):
        spec(sleep=1.0)
    with pytest.raises(ConfigError, match=r"deployments.chat.sleep: engine 'llamacpp' has no "
                       r"sleep mode \(vllm and sim have\); drop sleep"):  # fmt: skip
        DeploymentSpec.from_dict("chat", {"engine": "llamacpp", "model": "m.gguf", "sleep": 1})


def test_engines_that_sleep_start_with_sleep_mode_and_vllms_development_endpoints() -> None:
    assert {name for name, a in adapters().items() if a.sleeps} == set(SLEEP_ENGINES)
    for engine in SLEEP_ENGINES:
        on = adapter(engine).launch(spec(engine=engine, sleep="auto").to_dict(), "h", 1, [0])
        off = adapter(engine).launch(spec(engine=engine).to_dict(), "h", 1, [0])
        assert on.argv.count("--enable-sleep-mode") == 1 and on.env["VLLM_SERVER_DEV_MODE"] == "1"
        assert "--enable-sleep-mode" not in off.argv and "VLLM_SERVER_DEV_MODE" not in off.env
    given = spec(sleep=1, args={"enable_sleep_mode": True}).to_dict()
    assert adapter("sim").launch(given, "h", 1, [0]).argv.count("--enable-sleep-mode") == 1


# -- the twin's endpoints ---------------------------------------------------------------------


class Ledger:
    """A simulated GPU of ``total`` bytes, held per pid (None: this process)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held: dict[int | None, int] = {}

    def free_bytes(self, index: int) -> tuple[int, int] | None:
        return self.total - sum(self.held.values()), self.total

    def allocate(self, index: int, nbytes: int, pid: int | None = None, name: str = "") -> None:
        free = self.total - sum(self.held.values())
        if nbytes > free:
            raise GpuError(f"CUDA out of memory: tried to allocate {nbytes} with {free} free")
        self.held[pid] = self.held.get(pid, 0) + nbytes

    def release(self, pid: int | None = None) -> None:
        self.held.pop(pid, None)

    def set_activity(self, index: int, busy: float, pid: int | None = None) -> None:
        return None

    def hold_in_worker(self, index: int, nbytes: int, name: str = "w",
                       seconds: float | None = None) -> int:  # fmt: skip
        raise NotImplementedError


def _call(handler: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        req = make_mocked_request(method, path)
        if body is not None:
            payload = json.dumps(body).encode()

            async def read_json() -> Any:
                return json.loads(payload)

            req.json = read_json  # type: ignore[method-assign,assignment]
        resp = await handler(req)
        text = resp.body.decode() if isinstance(resp.body, bytes) else ""
        return resp.status, json.loads(text) if text else None

    return asyncio.run(go())


def _twin_asleep_and_awake(faults: Faults = NO_FAULTS) -> tuple[SleepMode, Ledger]:
    twin = build_twin(TwinConfig("Qwen/Qwen3-0.6B", "rtx-3090", max_model_len=4096))
    ledger = Ledger(twin.gpu.cuda_total_bytes)
    ledger.allocate(0, twin.fit.budget_bytes)  # as its startup took it
    sleep = SleepMode(twin, _engine(twin), enabled=True, faults=faults, machine=ledger,
                      time_scale=0.0)  # fmt: skip
    return sleep, ledger


def test_the_twin_sleeps_to_what_preflight_expects_and_wakes_to_its_budget() -> None:
    sleep, ledger = _twin_asleep_and_awake()
    budget = sleep.twin.fit.budget_bytes
    assert _call(sleep.sleep, "POST", "/sleep?level=1")[0] == 200
    assert _call(sleep.is_sleeping, "GET", "/is_sleeping") == (200, {"is_sleeping": True})
    assert sum(ledger.held.values()) == sleep.kept == asleep_bytes(sleep.twin.fit)
    assert sleep.host_bytes == sleep.twin.fit.weights_bytes  # level 1: weights in host RAM

    async def inference(request: web.Request) -> web.Response:
        return web.Response(text="ran")

    async def guarded(path: str) -> int:
        return (await sleep.guard(make_mocked_request("POST", path), inference)).status

    assert asyncio.run(guarded("/v1/completions")) == 503  # vLLM's protected endpoints
    assert asyncio.run(guarded("/v1/models")) == 200  # answers asleep
    assert _call(sleep.wake_up, "POST", "/wake_up")[0] == 200
    assert sum(ledger.held.values()) == budget and not sleep.asleep and sleep.host_bytes == 0
    assert asyncio.run(guarded("/v1/completions")) == 200


def test_a_level_2_wake_needs_the_weights_read_again_before_it_serves() -> None:
    sleep, ledger = _twin_asleep_and_awake()
    assert _call(sleep.sleep, "POST", "/sleep?level=2")[0] == 200
    assert sleep.host_bytes == 0
    assert _call(sleep.collective_rpc, "POST", "/collective_rpc",
                 {"method": "reload_weights"})[0] == 500  # fmt: skip  # weights still asleep
    assert _call(sleep.wake_up, "POST", "/wake_up?tags=weights")[0] == 200
    assert _call(sleep.is_sleeping, "GET", "/is_sleeping")[1] == {"is_sleeping": True}
    assert _call(sleep.wake_up, "POST", "/wake_up?tags=kv_cache")[0] == 200
    assert not sleep.asleep and sleep.stale_weights

    async def inference(request: web.Request) -> web.Response:
        return web.Response(text="ran")

    req = make_mocked_request("POST", "/v1/chat/completions")
    assert asyncio.run(sleep.guard(req, inference)).status == 500
    assert _call(sleep.collective_rpc, "POST", "/collective_rpc",
                 {"method": "reload_weights"}) == (200, {"results": ["None"]})  # fmt: skip
    assert not sleep.stale_weights and sum(ledger.held.values()) == sleep.twin.fit.budget_bytes


def test_a_wake_that_fails_or_finds_no_room_leaves_the_twin_asleep() -> None:
    sleep, ledger = _twin_asleep_and_awake(Faults(fail_wake=True))
    assert _call(sleep.sleep, "POST", "/sleep?level=1")[0] == 200
    status, doc = _call(sleep.wake_up, "POST", "/wake_up")
    assert status == 500 and "--fail-wake" in doc["error"]["message"] and sleep.asleep
    sleep, ledger = _twin_asleep_and_awake()
    assert _call(sleep.sleep, "POST", "/sleep?level=1")[0] == 200
    ledger.allocate(0, ledger.total - sum(ledger.held.values()), pid=os.getpid())  # all taken
    status, doc = _call(sleep.wake_up, "POST", "/wake_up")
    assert status == 500 and "OutOfMemoryError" in doc["error"]["message"]
    assert sleep.asleep and ledger.held[None] == sleep.kept


def test_the_twin_refuses_to_sleep_without_sleep_mode_and_at_other_levels() -> None:
    twin = build_twin(TwinConfig("Qwen/Qwen3-0.6B", "rtx-3090", max_model_len=4096))
    off = SleepMode(twin, _engine(twin), enabled=False, faults=Faults())
    status, doc = _call(off.sleep, "POST", "/sleep?level=1")
    assert status == 500 and "--enable-sleep-mode" in doc["error"]["message"] and not off.asleep
    on = SleepMode(twin, _engine(twin), enabled=True, faults=Faults())
    assert _call(on.sleep, "POST", "/sleep?level=3")[0] == 400 and not on.asleep


# -- the owner ------------------------------------------------------------------------------


class FakeProcess:
    def __init__(self) -> None:
        self.returncode: int | None = None
        self.exited = asyncio.Event()

    async def wait(self, limit: float | None = None, poll: float = 0.01) -> int | None:
        await self.exited.wait()
        return self.returncode


class FakeEngine:
    def __init__(self) -> None:
        self.process = FakeProcess()


def test_an_owner_sleeps_from_draining_and_wakes_through_starting() -> None:
    async def go() -> tuple[list[State], list[EngineOwner], State]:
        seen: list[State] = []
        exits: list[EngineOwner] = []
        o = EngineOwner("chat", 1, lambda owner, s, e: seen.append(s), exits.append)
        engine: Any = FakeEngine()

        async def spawn() -> Any:
            return engine

        async def nothing(e: Any) -> None:
            return None

        await o.start(spawn)
        await o.drain(lambda: asyncio.sleep(0))
        await o.sleep(nothing)
        await o.wake(nothing)
        await o.drain(lambda: asyncio.sleep(0))
        await o.sleep(nothing)
        engine.process.returncode = -9  # killed asleep: failed, and nothing to restart
        engine.process.exited.set()
        for _ in range(100):
            if o.state == State.FAILED:
                break
            await asyncio.sleep(0.01)
        await o.close()
        return seen, exits, o.state

    seen, exits, last = asyncio.run(go())
    assert seen == [State.STARTING, State.READY, State.DRAINING, State.SLEEPING, State.STARTING,
                    State.READY, State.DRAINING, State.SLEEPING, State.FAILED]  # fmt: skip
    assert exits == [] and last == State.FAILED
    assert ALLOWED[State.SLEEPING] == {State.STARTING, State.STOPPING, State.FAILED}
    assert State.SLEEPING not in ALLOWED[State.READY]  # only a drained engine sleeps


# -- preflight ------------------------------------------------------------------------------


def test_preflight_counts_sleeping_revisions_as_room_and_a_woken_ones_memory_as_its_own(
    tmp_path: Path,
) -> None:
    machine = SimMachine(tmp_path)
    allocatable = machine.devices()[0].allocatable_bytes
    machine.allocate(0, 20 * GiB, name="asleep")  # this process plays a sleeping revision
    me = {os.getpid()}
    planner = Planner(SimBackend(machine), dict)
    chat = spec()
    need = adapter("sim").estimate(chat.to_dict(), _device("rtx-3090"))
    assert need.bytes_per_gpu > allocatable - 20 * GiB

    async def check(asleep: set[int], own: set[int]) -> Any:
        return await planner.check_room(chat, set(), need, asleep, own)

    try:
        with pytest.raises(DeployError, match=r"GPU 0 has 3.58 GiB free; pid \d+ "):
            asyncio.run(check(set(), set()))
        assert asyncio.run(check(me, set())) is need  # stopped to make room if it must be
        assert asyncio.run(check(set(), me)) is need  # woken: its 20 GiB are its own already
    finally:
        machine.release()
