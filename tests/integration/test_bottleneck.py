"""The bottleneck answer, end to end: a lab driven into each class shows it on /api/status
and as ``labctl_deployment_bottleneck`` within two ticks."""

from __future__ import annotations

from collections.abc import Callable
import re
import subprocess
import time
from typing import Any

import pytest

from tests.integration.browser import browser
from tests.integration.lab import Daemon, Lab, get, lab_toml, wait_for
from tests.integration.site import shots

TICK = 0.5
DASH = f"[dashboard]\ninterval = {TICK}\n"
#: The daemon's GPU sampler reads the GPUs once a second.
GPU_SAMPLE = 1.0


def _metric(d: Daemon, cls: str) -> bool:
    text = get(d.url + "/metrics")
    return bool(re.search(
        rf'^labctl_deployment_bottleneck\{{(?=[^}}]*class="{cls}")(?=[^}}]*deployment="chat")'
        r"[^}]*\} 1\.0$", text, re.M))  # fmt: skip


def _see(d: Daemon, cls: str, timeout: float = 40.0) -> dict[str, Any]:
    """Wait for ``chat`` to be in ``cls`` on /api/status; then the metric within two ticks."""

    def now() -> dict[str, Any] | None:
        b = d.deployment("chat").get("bottleneck")
        return b if b and b["class"] == cls else None

    b: dict[str, Any] = wait_for(now, timeout, f"bottleneck {cls}")
    seen = time.monotonic()
    wait_for(lambda: _metric(d, cls), 2 * TICK + 1.0, f"the metric to say {cls}")
    assert time.monotonic() - seen <= 2 * TICK + 1.0
    assert b["evidence"]
    return b


def _bench(lab: Lab, d: Daemon, *shape: str) -> subprocess.Popen[str]:
    return lab.start("bench", "--base-url", d.url, "--model", "chat", "--no-record", *shape)


def _lab(lab: Lab, tmp_path: Any, args: str, extra: str = "") -> Daemon:
    path = lab_toml(tmp_path, args, extra=extra)
    path.write_text(path.read_text() + "\n" + DASH)
    d = lab.up("--config", str(path))
    return d


TWIN = "{ max_model_len = 8192, time_scale = 1, load_gbps = 0, enforce_eager = true }"


@pytest.mark.integration
def test_idle_decode_then_client(lab: Lab, labctl: Callable[..., Any], tmp_path: Any) -> None:
    d = _lab(lab, tmp_path, TWIN)
    d.wait_state("chat", "ready")
    _see(d, "idle")
    bench = _bench(lab, d, "--input-len", "16", "--output-len", "512", "--num-prompts", "48",
                   "--max-concurrency", "16")  # fmt: skip
    _see(d, "decode_bandwidth")

    def measured() -> dict[str, Any] | None:  # once the tokens' rate has two samples
        b = d.deployment("chat")["bottleneck"]
        return b if b["class"] == "decode_bandwidth" and b["roofline_fraction"] else None

    b = wait_for(measured, 10, "a roofline fraction")
    assert 0 < b["roofline_fraction"] < 2
    assert "of the bandwidth roofline" in b["evidence"]
    bench.wait(120)
    _see(d, "client")
    assert "bottleneck: client" in labctl("status", "--url", d.url, check=True).out
    doc = d.api("GET", "/api/status")
    chat = next(x for x in doc["deployments"] if x["name"] == "chat")
    assert {"decode_bandwidth", "client"} <= set(chat["bottleneck_history"])


#: Small KV room (12% of the card) with long outputs: the cache, not the GPU, limits.
SMALL_KV = ("{ max_model_len = 4096, time_scale = 1, load_gbps = 0, enforce_eager = true, "
            "gpu_memory_utilization = 0.12 }")  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "extra", "load", "cls", "words"),
    [
        (TWIN, "", ("4096", "1", "400", "8"), "prefill_compute", "compute roofline"),
        (TWIN, "max_concurrency = 1\n", ("16", "256", "40", "8"), "admission",
         "queued at the gateway"),
        (SMALL_KV, "", ("512", "1024", "64", "32"), "kv_capacity", "KV cache"),
    ],
    ids=["prefill", "admission", "kv_capacity"],
)  # fmt: skip
def test_a_load_puts_the_deployment_in_its_class(
    lab: Lab, tmp_path: Any, args: str, extra: str, load: tuple[str, ...], cls: str, words: str
) -> None:
    d = _lab(lab, tmp_path, args, extra=extra)
    d.wait_state("chat", "ready")
    inputs, outputs, prompts, concurrency = load
    bench = _bench(lab, d, "--input-len", inputs, "--output-len", outputs, "--num-prompts",
                   prompts, "--max-concurrency", concurrency)  # fmt: skip
    b = _see(d, cls)
    assert words in b["evidence"]
    # the engine's own gauges, scraped every 2 s, under the names the alert rules read
    wait_for(lambda: _engine_gauge(d, "requests_running") > 0, 6, "the engine's running gauge")
    if cls == "kv_capacity":
        wait_for(lambda: _engine_gauge(d, "kv_cache_usage_ratio") > 0.5, 6, "its KV gauge")
    bench.kill()


#: The twin at an eighth of real speed: its API server takes a chat in 8 × 14.4 ms, so about
#: 9 chats a second fill its one process.
SLOW_TWIN = "{ max_model_len = 8192, time_scale = 8, load_gbps = 0, enforce_eager = true }"


@pytest.mark.integration
def test_a_burst_of_chats_makes_the_api_server_the_limit(lab: Lab, tmp_path: Any) -> None:
    d = _lab(lab, tmp_path, SLOW_TWIN)
    d.wait_state("chat", "ready")
    # twice the chats it can take in, for long enough to fill the board's minute of rates
    bench = _bench(lab, d, "--endpoint", "chat", "--input-len", "16", "--output-len", "4",
                   "--num-prompts", "1800", "--request-rate", "18")  # fmt: skip
    b = _see(d, "api_server", timeout=100)
    assert b["evidence"].startswith("API server busy ") and "--api-server-count" in b["evidence"]
    assert b["roofline_fraction"] is None or b["roofline_fraction"] < 0.5  # the GPU idles
    # the engine's API server CPU, a counter under a labctl name, and its rate on the board
    assert _engine_gauge(d, "api_server_cpu_seconds_total") > 1.0
    (chat,) = (x for x in d.api("GET", "/api/status")["deployments"] if x["name"] == "chat")
    assert chat["bottleneck"]["class"] == "api_server"
    with browser() as browse:  # the card names it, and charts the API server's CPU
        page = browse.new_page(viewport={"width": 1280, "height": 800})
        page.goto(d.login_url())
        page.wait_for_selector('[data-deployment="chat"] [data-bottleneck="api_server"]')
        page.wait_for_selector('[data-deployment="chat"] [data-panel="dep_api"]')
        card = page.locator('[data-deployment="chat"]')
        assert "API server busy" in card.inner_text()
        shots(tmp_path)(card, "bottleneck-api-server.png")
    bench.kill()


def _engine_gauge(d: Daemon, name: str) -> float:
    m = re.search(rf'^labctl_engine_{name}\{{deployment="chat"\}} (\S+)$', get(d.url + "/metrics"),
                  re.M)  # fmt: skip
    return float(m.group(1)) if m else -1.0


@pytest.mark.integration
def test_slow_disk_start(lab: Lab, tmp_path: Any) -> None:
    args = "{ max_model_len = 4096, time_scale = 1, load_gbps = 0.15, enforce_eager = true }"
    d = _lab(lab, tmp_path, args)
    _see(d, "starting", timeout=15)

    def verdict() -> dict[str, Any] | None:
        # the prediction is journaled at the spawn: a tick of "starting" may come before it
        b = d.deployment("chat").get("bottleneck")
        return (
            b if b and b["class"] == "starting" and "disk not known" not in b["evidence"] else None
        )

    b: dict[str, Any] = wait_for(verdict, 15, "the start's disk verdict")
    assert "disk-bound" in b["evidence"] and "not disk-bound" not in b["evidence"]


@pytest.mark.integration
def test_a_throttled_gpu(lab: Lab, labctl: Callable[..., Any], tmp_path: Any) -> None:
    d = _lab(lab, tmp_path, TWIN)
    d.wait_state("chat", "ready")
    _see(d, "idle")
    throttle = lab.start("sim", "throttle", "0", "sw_thermal_slowdown,sw_power_cap")
    assert throttle.stdout is not None
    assert throttle.stdout.readline().startswith("READY "), throttle.stderr
    started = time.monotonic()
    b = _see(d, "throttled")
    assert time.monotonic() - started <= GPU_SAMPLE + 2 * TICK + 1.0  # a GPU read, two ticks
    assert "clocks held back: sw_power_cap, sw_thermal_slowdown" in b["evidence"]
    (g,) = d.api("GET", "/api/status")["gpus"]  # the clock event panel's latest values
    assert g["throttle_reasons"] == ["sw_power_cap", "sw_thermal_slowdown"]
    assert g["temperature_c"] == 88.0 and g["power_watts"] == 350
    out = labctl("status", "--url", d.url, check=True).out
    assert "throttled: sw_power_cap, sw_thermal_slowdown" in out
    assert "bottleneck: throttled" in out
    throttle.terminate()
    assert throttle.wait(10) != 0
    _see(d, "idle")
    assert "throttled: none" in labctl("status", "--url", d.url, check=True).out
