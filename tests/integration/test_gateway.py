"""The gateway on the daemon's listener: the openai client, swaps, overload, keys."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import concurrent.futures
import json
from pathlib import Path
import time
import urllib.error
import urllib.request

import openai
import pytest

from tests.integration.conftest import Run
from tests.integration.lab import Daemon, Lab, free_port, get
from tests.integration.test_lab import llama_server_binary

FAST = "{ max_model_len = 4096, time_scale = 0.05, load_gbps = 0 }"


def config(tmp_path: Path, body: str, gateway: str = "") -> Path:
    path = tmp_path / "lab.toml"
    path.write_text('[lab]\ngpu_backend = "sim"\nsim_gpus = "1xrtx-3090"\n\n' + gateway + body)
    return path


TWIN = ('[deployments.chat]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\naliases = ["fast"]\n'
        f"stop_grace = 5\nargs = {FAST}\n")  # fmt: skip


def post(
    url: str, body: object, key: str | None = None, raw: bytes | None = None
) -> tuple[int, dict[str, object], dict[str, str]]:
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)


def check_openai_client(d: Daemon, model: str) -> None:
    client = openai.OpenAI(base_url=d.url + "/v1", api_key="unused")
    names = {m.id for m in client.models.list()}
    assert model in names
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4, extra_body={"ignore_eos": True})  # fmt: skip
    assert reply.choices and reply.usage is not None and reply.usage.completion_tokens == 4
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
        extra_body={"ignore_eos": True}))  # fmt: skip
    assert chunks and all(c.choices for c in chunks)  # the usage event the gateway added is gone
    chunks = list(client.completions.create(
        model=model, prompt="hello", max_tokens=3, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True}))  # fmt: skip
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3

    async def go() -> None:
        aclient = openai.AsyncOpenAI(base_url=d.url + "/v1", api_key="unused")
        r = await aclient.completions.create(model=model, prompt="hello", max_tokens=2,
                                             extra_body={"ignore_eos": True})  # fmt: skip
        assert r.choices and r.usage is not None and r.usage.completion_tokens == 2
        stream = await aclient.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], max_tokens=3, stream=True,
            extra_body={"ignore_eos": True})  # fmt: skip
        got = [c async for c in stream]
        assert got
        await aclient.close()

    asyncio.run(go())


def test_the_openai_client_works_through_the_gateway_with_aliases(lab: Lab, tmp_path: Path) -> None:
    d = lab.up("--config", str(config(tmp_path, TWIN)))
    d.wait_state("chat", "ready")
    for name in ("chat", "fast", "Qwen/Qwen3-0.6B"):
        check_openai_client(d, name)
    metrics = get(d.url + "/metrics")
    assert 'labctl_gateway_requests_total{code="200",model="chat"}' in metrics
    assert 'labctl_gateway_tokens_total{kind="completion",model="chat"}' in metrics
    assert "labctl_gateway_time_to_first_token_seconds_bucket" in metrics
    status, body, _ = post(d.url + "/v1/chat/completions", {"model": "nope", "messages": []})
    assert status == 404 and body["error"]["code"] == "model_not_found"  # type: ignore[index]


def test_the_openai_client_works_through_the_gateway_to_llama_server(
    lab: Lab, tmp_path: Path
) -> None:
    from tests.tinygguf import write_tiny_llama

    binary = llama_server_binary()
    model = write_tiny_llama(tmp_path / "tiny.gguf", seed=3)
    body = (f'[deployments.small]\nengine = "llamacpp"\nmodel = "{model}"\nbinary = "{binary}"\n'
            'aliases = ["tiny"]\nstop_grace = 5\nargs = { ctx_size = 512, threads = 1, parallel = 2 }\n')  # fmt: skip
    d = lab.up("--config", str(config(tmp_path, body)))
    d.wait_state("small", "ready")
    check_openai_client(d, "tiny")


def test_a_swap_under_steady_load_loses_nothing_and_holds_requests(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    d = lab.up("--config", str(config(tmp_path, TWIN)))
    d.wait_state("chat", "ready")
    out = tmp_path / "bench.json"
    bench = lab.start("bench", "--base-url", d.url, "--model", "chat", "--request-rate", "20",
                      "--num-prompts", "120", "--input-len", "16", "--output-len", "16",
                      "--json-out", str(out))  # fmt: skip
    time.sleep(2.0)
    labctl("deploy", "chat", "--model", "Qwen/Qwen3-8B", "--set", "max_model_len=4096",
           "--url", d.url, home=lab.home, check=True)  # fmt: skip
    assert d.deployment("chat")["model"] == "Qwen/Qwen3-8B"
    assert bench.wait(120) == 0
    doc = json.loads(out.read_text())
    assert doc["completed"] == 120 and doc["failed"] == 0
    metrics = get(d.url + "/metrics")
    held = [line for line in metrics.splitlines()
            if line.startswith('labctl_gateway_queue_wait_seconds_bucket{le="0.1",model="chat"}')]  # fmt: skip
    total = [line for line in metrics.splitlines()
             if line.startswith('labctl_gateway_queue_wait_seconds_count{model="chat"}')]  # fmt: skip
    assert (
        held and total and float(held[0].split()[-1]) < float(total[0].split()[-1])
    )  # some waited


def test_overload_gives_429_and_queue_timeouts_503_with_retry_after(
    lab: Lab, tmp_path: Path
) -> None:
    body = ('[deployments.chat]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\nmax_concurrency = 1\n'
            'queue_size = 1\nstop_grace = 5\nargs = { max_model_len = 4096, time_scale = 1, load_gbps = 0, enforce_eager = true }\n')  # fmt: skip
    d = lab.up("--config", str(config(tmp_path, body, "[gateway]\nqueue_timeout = 1\n\n")))
    d.wait_state("chat", "ready", timeout=30)
    url = d.url + "/v1/completions"
    long = {"model": "chat", "prompt": "x", "max_tokens": 300, "ignore_eos": True}  # ~3 s

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = pool.submit(post, url, long)
        time.sleep(0.3)
        second = pool.submit(post, url, long)
        time.sleep(0.3)
        third = post(url, long)
        results = [first.result(), second.result(), third]
    codes = sorted(r[0] for r in results)
    assert codes == [200, 429, 503]
    for status, doc, headers in results:
        if status != 200:
            assert int(headers["Retry-After"]) >= 1 and doc["error"]["message"]  # type: ignore[index]
    metrics = get(d.url + "/metrics")
    for code in ("200", "429", "503"):
        assert f'labctl_gateway_requests_total{{code="{code}",model="chat"}} 1.0' in metrics


def test_keys_models_body_limit_and_the_admin_token(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    gateway = ('[gateway]\nadmin_token = "admin-secret-0001"\nmax_body_bytes = 4096\n'
               'keys = [{ key = "key-for-chat", models = ["chat"] },\n'
               '        { key = "key-for-other", models = ["other"] },\n'
               '        { key = "key-two-a-minute", rate_per_minute = 2 }]\n\n')  # fmt: skip
    d = lab.up("--config", str(config(tmp_path, TWIN, gateway)))
    d.token = "admin-secret-0001"
    d.wait_state("chat", "ready")
    url = d.url + "/v1/completions"
    ok = {"model": "chat", "prompt": "x", "max_tokens": 1}
    status, doc, _ = post(url, ok)
    assert status == 401 and doc["error"]["code"] == "invalid_api_key"  # type: ignore[index]
    assert post(url, ok, "wrong-key-xyz")[0] == 401
    assert post(url, ok, "key-for-chat")[0] == 200
    status, doc, _ = post(url, ok, "key-for-other")
    assert status == 403 and doc["error"]["type"] == "permission_error"  # type: ignore[index]
    assert [post(url, ok, "key-two-a-minute")[0] for _ in range(3)] == [200, 200, 429]
    status, doc, _ = post(
        url, None, "key-for-chat", raw=b'{"model": "chat", "prompt": "' + b"x" * 8000 + b'"}'
    )
    assert status == 413 and doc["error"]["code"] == "request_too_large"  # type: ignore[index]
    for key, code in ((None, 401), ("key-for-chat", 403)):
        req = urllib.request.Request(d.url + "/api/status",
                                     headers={"Authorization": f"Bearer {key}"} if key else {})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        err.value.close()
        assert err.value.code == code
    run = labctl("status", "--url", d.url, home=lab.home)
    assert run.code == 2 and "LABCTL_TOKEN" in run.err
    port = free_port()
    run = labctl("up", "--listen", f"0.0.0.0:{port}", home=tmp_path / "open")
    assert run.code == 3 and "beyond loopback) needs API keys" in run.err


def test_a_client_that_goes_away_is_cancelled_upstream(lab: Lab, tmp_path: Path) -> None:
    import socket

    body = ('[deployments.chat]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\nstop_grace = 5\n'
            'args = { max_model_len = 4096, time_scale = 1, load_gbps = 0, enforce_eager = true }\n')  # fmt: skip
    d = lab.up("--config", str(config(tmp_path, body)))
    engine = d.wait_state("chat", "ready", timeout=30)["url"]
    payload = json.dumps({"model": "chat", "prompt": "x", "max_tokens": 3000, "stream": True,
                          "ignore_eos": True}).encode()  # fmt: skip
    host, port = d.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)  # fmt: skip
        assert b"200 OK" in s.recv(4096)
        time.sleep(0.5)

    def running() -> float:
        text = get(engine + "/metrics")
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("vllm:num_requests_running"))  # fmt: skip

    from tests.integration.lab import wait_for

    wait_for(lambda: running() == 0, 10, "the engine to drop the abandoned request")
    metrics = get(d.url + "/metrics")
    assert 'labctl_gateway_in_flight{model="chat"} 0.0' in metrics


def test_a_non_streaming_client_that_goes_away_is_cancelled_upstream(
    lab: Lab, tmp_path: Path
) -> None:
    import socket

    from tests.integration.lab import wait_for

    body = ('[deployments.chat]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\nstop_grace = 5\n'
            'args = { max_model_len = 4096, time_scale = 1, load_gbps = 0, enforce_eager = true }\n')  # fmt: skip
    d = lab.up("--config", str(config(tmp_path, body)))
    engine = d.wait_state("chat", "ready", timeout=30)["url"]

    def running() -> float:
        text = get(engine + "/metrics")
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("vllm:num_requests_running"))  # fmt: skip

    payload = json.dumps({"model": "chat", "prompt": "x", "max_tokens": 3000,
                          "ignore_eos": True}).encode()  # fmt: skip
    host, port = d.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\n"
                  + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)  # fmt: skip
        wait_for(lambda: running() == 1, 10, "the engine to run the request")
    wait_for(lambda: running() == 0, 10, "the engine to drop the abandoned request")
    assert 'labctl_gateway_in_flight{model="chat"} 0.0' in get(d.url + "/metrics")
