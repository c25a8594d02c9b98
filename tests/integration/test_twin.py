"""The twin as a user runs it: `labctl sim serve` with the openai client, Prometheus, the GPU ledger."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import openai
import pytest

from labctl.gpu.sim import SimBackend, SimMachine
from labctl.units import GiB
from tests.integration.lab import Lab, free_port, get, wait_for

pytestmark = pytest.mark.integration

SMALL = "Qwen/Qwen3-0.6B"


def test_twin_serves_the_openai_client_streaming_and_not(lab: Lab) -> None:
    twin = lab.twin("--model", SMALL, "--time-scale", "0", "--served-model-name", "small")
    client = openai.OpenAI(base_url=twin.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["small"]

    chat = client.chat.completions.create(
        model="small", messages=[{"role": "user", "content": "one two three"}], max_tokens=7
    )
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 7
    assert chat.usage.prompt_tokens == 1 + 3 + 4  # words plus the chat template's tokens
    assert len(chat.choices[0].message.content.split()) == 7

    pieces, usage = [], None
    for chunk in client.chat.completions.create(
        model="small",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
    assert usage is not None and usage.completion_tokens == 5
    assert "".join(pieces) == "the lab runs on the"

    text = client.completions.create(model="small", prompt="a b c d", max_tokens=12, stop=[" on"])
    assert text.choices[0].finish_reason == "stop" and text.choices[0].text == "the lab runs"

    async def stream_completion() -> str:
        aclient = openai.AsyncOpenAI(base_url=twin.url + "/v1", api_key="unused")
        out = []
        async for chunk in await aclient.completions.create(
            model="small", prompt="x", max_tokens=4, stream=True
        ):
            out.append(chunk.choices[0].text if chunk.choices else "")
        await aclient.close()
        return "".join(out)

    assert asyncio.run(stream_completion()) == "the lab runs on"

    with pytest.raises(openai.BadRequestError, match="maximum context length is 40960"):
        client.completions.create(model="small", prompt="a", max_tokens=50_000)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="other", prompt="a", max_tokens=1)


def test_twin_metrics_have_vllm_names_in_a_real_prometheus(lab: Lab, tmp_path: Path) -> None:
    twin = lab.twin("--model", SMALL, "--time-scale", "0")
    client = openai.OpenAI(base_url=twin.url + "/v1", api_key="unused")
    for _ in range(3):
        client.completions.create(model=SMALL, prompt="a b c", max_tokens=4)
    query = lab.prometheus(twin.url, tmp_path)

    wait_for(lambda: query("vllm:generation_tokens_total"), timeout=30, what="a scrape")
    (gen,) = query("vllm:generation_tokens_total")
    assert gen["metric"]["model_name"] == SMALL and gen["metric"]["engine"] == "0"
    assert float(gen["value"][1]) == 12
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:num_preemptions_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:request_queue_time_seconds_count",
        'vllm:request_success_total{finished_reason="length"}',
    ):
        assert query(name), f"{name} is not in the scrape"
    assert float(query("vllm:e2e_request_latency_seconds_count")[0]["value"][1]) == 3


def measure(
    url: str, model: str, n: int, concurrency: int, prompt_words: int, out: int
) -> tuple[float, float]:
    """Median TTFT and TPOT (s) as a streaming client sees them."""

    async def go() -> tuple[list[float], list[float]]:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        slots = asyncio.Semaphore(concurrency)
        ttfts, tpots = [], []

        async def one(i: int) -> None:
            # Prompts of their own, like the simulation's: the twin caches shared prefixes.
            prompt = " ".join(f"w{i}.{j}" for j in range(prompt_words))
            async with slots:
                t0 = time.perf_counter()
                first = last = None
                count = 0
                async for chunk in await client.completions.create(
                    model=model, prompt=prompt, max_tokens=out, stream=True
                ):
                    if chunk.choices and chunk.choices[0].text:
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        count += 1
                assert first is not None and last is not None and count == out
                ttfts.append(first - t0)
                tpots.append((last - first) / (out - 1))

        await asyncio.gather(*(one(i) for i in range(n)))
        await client.close()
        return ttfts, tpots

    ttfts, tpots = asyncio.run(go())
    return statistics.median(ttfts), statistics.median(tpots)


def test_twin_live_latency_matches_the_offline_simulation(lab: Lab) -> None:
    model, gpu = "meta-llama/Llama-3.1-8B-Instruct", "rtx-4090"
    flags = ["--gpu", gpu, "--max-model-len", "4096"]
    twin = lab.twin("--model", model, *flags, "--load-gbps", "0", "--no-gpu-ledger")
    # One request at a time: with several, the live requests reach the engine a little
    # apart and batch differently from the simulation's, which moves a 12-sample median.
    ttft, tpot = measure(twin.url, model, n=8, concurrency=1, prompt_words=512, out=32)
    proc = subprocess.run(
        [sys.executable, "-m", "labctl", "sim", "run", "--model", model, *flags,
         "--num-prompts", "8", "--max-concurrency", "1", "--input-len", "512",
         "--output-len", "32", "--json"],
        capture_output=True, text=True, check=True, env=lab.env,
    )  # fmt: skip
    sim = json.loads(proc.stdout)
    assert ttft * 1000 == pytest.approx(sim["median_ttft_ms"], rel=0.10)
    assert tpot * 1000 == pytest.approx(sim["median_tpot_ms"], rel=0.10)


def test_twin_memory_is_its_process_and_a_kill_releases_it(lab: Lab) -> None:
    twin = lab.twin("--model", SMALL, "--time-scale", "0")
    backend = SimBackend(SimMachine(lab.home))
    (dev,) = backend.read().devices
    (proc,) = dev.processes
    assert proc.pid == twin.proc.pid
    assert proc.used_bytes is not None and proc.used_bytes > 15 * GiB  # 0.9 × the 3090
    gpus = json.loads(
        subprocess.run(
            [sys.executable, "-m", "labctl", "gpus", "--json", "--gpu-backend", "sim"],
            capture_output=True, text=True, check=True, env=lab.env,
        ).stdout
    )  # fmt: skip
    assert gpus["devices"][0]["processes"][0]["pid"] == twin.proc.pid
    twin.proc.kill()
    twin.proc.wait()
    assert backend.read().devices[0].memory_used_bytes == 0


def test_twin_orphan_worker_keeps_the_memory_unaccounted(lab: Lab) -> None:
    twin = lab.twin("--model", SMALL, "--time-scale", "0", "--orphan-worker")
    (lab.home / "owners.json").write_text(json.dumps({"pids": {str(twin.proc.pid): "chat"}}))
    backend = SimBackend(SimMachine(lab.home))
    from labctl.telemetry.attribution import attribute

    (proc,) = backend.read().devices[0].processes
    assert proc.pid != twin.proc.pid
    lab.stray.append(proc.pid)
    before = attribute(backend.read(), {twin.proc.pid: "chat"})[0]
    assert before.by_deployment == {"chat": proc.used_bytes}
    twin.proc.kill()
    twin.proc.wait()
    after = attribute(backend.read(), {twin.proc.pid: "chat"})[0]
    assert after.unaccounted_bytes == proc.used_bytes and not after.by_deployment
    os.kill(proc.pid, signal.SIGKILL)
    wait_for(lambda: backend.read().devices[0].memory_used_bytes == 0, what="the orphan's release")


def run_twin(lab: Lab, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "labctl", "sim", "serve", "--port", "0", *args],
        capture_output=True, text=True, env=lab.env, timeout=timeout, check=False,
    )  # fmt: skip


def test_twin_that_does_not_fit_exits_with_vllms_message(lab: Lab) -> None:
    r = run_twin(lab, "--model", "Qwen/Qwen3-8B", "--gpu", "rtx-3090")
    assert r.returncode != 0 and r.stdout == ""
    assert "To serve at least one request with the models's max seq len (40960)" in r.stderr
    assert "estimated maximum model length is" in r.stderr


def test_twin_without_free_memory_fails_like_vllm(lab: Lab) -> None:
    first = lab.twin("--model", SMALL, "--time-scale", "0")
    assert first.url
    r = run_twin(lab, "--model", SMALL, "--time-scale", "0")
    assert r.returncode != 0
    assert (
        "Free memory on device cuda:0" in r.stderr and "Decrease GPU memory utilization" in r.stderr
    )


def test_twin_fault_fail_startup_after(lab: Lab) -> None:
    t0 = time.monotonic()
    r = run_twin(lab, "--model", SMALL, "--fail-startup-after", "0.5", "--load-gbps", "0.5")
    assert r.returncode != 0 and 0.4 < time.monotonic() - t0 < 30
    assert "Engine core initialization failed" in r.stderr
    assert SimBackend(SimMachine(lab.home)).read().devices[0].memory_used_bytes == 0


def test_twin_fault_hang_startup_never_listens(lab: Lab) -> None:
    port = free_port()
    twin = lab.twin(
        "--model", SMALL, "--hang-startup", "--time-scale", "0", "--port", str(port), wait=False
    )
    with pytest.raises(subprocess.TimeoutExpired):
        twin.proc.wait(2)
    with pytest.raises(urllib.error.URLError, match="refused"):  # still starting: nothing listens
        get(f"http://127.0.0.1:{port}/health")
    twin.proc.kill()
    _, err = twin.proc.communicate(timeout=10)
    assert "Starting to load model" in err and "Application startup complete" not in err


def test_twin_fault_crash_after_requests(lab: Lab) -> None:
    twin = lab.twin("--model", SMALL, "--time-scale", "0", "--crash-after-requests", "2")
    client = openai.OpenAI(base_url=twin.url + "/v1", api_key="unused", max_retries=0)
    client.completions.create(model=SMALL, prompt="a", max_tokens=2)
    with pytest.raises(openai.APIConnectionError):  # the second finishes, then the engine dies
        client.completions.create(model=SMALL, prompt="a", max_tokens=2)
    assert twin.proc.wait(10) != 0


def test_twin_fault_ignore_sigterm_needs_sigkill(lab: Lab) -> None:
    polite = lab.twin("--model", SMALL, "--time-scale", "0")
    polite.proc.send_signal(signal.SIGTERM)
    assert polite.proc.wait(10) == 0
    stubborn = lab.twin("--model", SMALL, "--time-scale", "0", "--ignore-sigterm")
    stubborn.proc.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        stubborn.proc.wait(1.5)
    assert get(stubborn.url + "/health") == ""
    stubborn.proc.kill()
    assert stubborn.proc.wait(10) == -signal.SIGKILL


def test_twin_prefix_caching_reuses_a_shared_prompt(lab: Lab) -> None:
    twin = lab.twin("--model", SMALL, "--time-scale", "0", "--enable-prefix-caching")
    client = openai.OpenAI(base_url=twin.url + "/v1", api_key="unused")
    shared = "word " * 200
    client.completions.create(model=SMALL, prompt=shared + "first", max_tokens=2)
    client.completions.create(model=SMALL, prompt=shared + "second", max_tokens=2)
    metrics = get(twin.url + "/metrics")
    hits = next(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("vllm:prefix_cache_hits_total{")
    )
    assert hits == 192  # 12 full blocks of 16 tokens shared by the two prompts
