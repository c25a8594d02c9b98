"""Hostile HTTP against a running lab: generated bodies for /v1/* and /api/*.

Whatever arrives, the lab answers with a status below 500 and a one-line error in the API's
envelope, quickly, without a traceback in its log or memory that grows with the abuse, and
still answers /healthz afterwards. Slow and idle connections are cut by the read and idle
timeouts.
"""

from __future__ import annotations

from collections.abc import Iterator
import json
import math
from pathlib import Path
import socket
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest

from tests.hostile_models import config_dir, deep_json
from tests.integration.lab import Daemon, Lab, get, raw

LAB = """[lab]
gpu_backend = "sim"
sim_gpus = "1xrtx-3090"

[gateway]
read_timeout = 2.0
idle_timeout = 3.0

[deployments.chat]
engine = "sim"
model = "Qwen/Qwen3-0.6B"
served_model_name = "chat"
stop_grace = 5
args = { max_model_len = 2048, time_scale = 0, load_gbps = 0 }
"""

#: Slowest acceptable answer to any one request (the twin runs at time scale 0).
SLOW_S = 5.0

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
deep = st.integers(min_value=60, max_value=200_000).map(lambda n: "[" * n + "]" * n)
raw_bytes = st.binary(max_size=300)
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", 7]),
                           "content": st.one_of(st.text(max_size=30), json_values)}),
    max_size=3,
)  # fmt: skip
completion_body = st.fixed_dictionaries(
    {"model": st.sampled_from(["chat", "Qwen/Qwen3-0.6B", "nope", "", 5, None])},
    optional={
        "prompt": st.one_of(st.text(max_size=30), json_values),
        "messages": messages,
        "max_tokens": st.one_of(st.integers(min_value=-5, max_value=40), st.integers(), scalars),
        "stream": st.one_of(st.booleans(), scalars),
        "stream_options": st.one_of(json_values, st.just({"include_usage": True})),
        "temperature": scalars,
        "n": st.one_of(st.integers(min_value=-2, max_value=3), scalars),
        "stop": json_values,
        "priority": scalars,
        "ignore_eos": st.booleans(),
    },
)
V1_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Lab]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    lab = Lab(tmp / "home")
    config = tmp / "lab.toml"
    config.write_text(LAB)
    try:
        d = lab.up("--config", str(config))
        d.wait_state("chat", "ready", timeout=30)
        yield d, lab
    finally:
        lab.stop()


def request(
    d: Daemon, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, bytes, float]:
    """:func:`raw`, timed."""
    t = time.monotonic()
    status, _, data = raw(d, method, path, body, headers)
    return status, data, time.monotonic() - t


def check(status: int, data: bytes, took: float, path: str) -> None:
    assert status < 500, (status, data[:300])
    assert took < SLOW_S, (path, took)
    if status >= 400:
        doc = json.loads(data)
        message = doc["error"]["message"]
        assert isinstance(message, str) and message and "\n" not in message, doc
        if path.startswith("/v1/"):
            assert set(doc["error"]) == {"message", "type", "param", "code"}, doc


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                HealthCheck.function_scoped_fixture])  # fmt: skip


@FUZZ
@given(
    path=st.sampled_from(V1_PATHS),
    body=st.one_of(
        completion_body.map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        deep.map(str.encode),
        raw_bytes,
        st.just(b'{"model": "chat", "prompt": "x", "max_tokens": NaN}'),
        st.just(b'{"model": "chat", "prompt": "x", "max_tokens": Infinity}'),
    ),
    ctype=st.sampled_from(["application/json", "text/plain", "", "multipart/form-data"]),
)
def test_gateway_answers_any_body_without_a_500(
    daemon: tuple[Daemon, Lab], path: str, body: bytes, ctype: str
) -> None:
    d, _ = daemon
    headers = {"Content-Type": ctype} if ctype else {}
    status, data, took = request(d, "POST", path, body, headers)
    check(status, data, took, path)


def _would_act(endpoint: str, body: bytes) -> bool:
    """Whether this body would start a real deploy or rollback (a JSON object, or nothing)."""
    try:
        doc = json.loads(body) if body.strip() else {}
    except (ValueError, RecursionError):
        return False
    if not isinstance(doc, dict):
        return False
    return endpoint == "rollback" or (endpoint == "deploy" and doc.get("dry_run") is not True)


def _dry(doc: dict[str, Any]) -> dict[str, Any]:
    """Never a real deploy: dry_run is true unless it is something no deploy accepts."""
    if isinstance(doc.get("dry_run", False), bool):
        doc["dry_run"] = True
    return doc


settings_tables = st.dictionaries(
    st.sampled_from(["max_model_len", "gpus", "port", "engine", "args.x", "env.A",
                     "gpu_memory_utilization", "name", "", "args", "env", "aliases",
                     "stop_grace", "queue_size", "command", "binary", "env.LD_PRELOAD"]),
    json_values, max_size=3,
)  # fmt: skip
deploy_body = st.one_of(
    st.fixed_dictionaries({}, optional={
        "model": st.one_of(st.sampled_from(["Qwen/Qwen3-0.6B", "Qwen/Qwen3-8B", "nope", ""]),
                           scalars),
        "set": st.one_of(settings_tables, json_values),
        "dry_run": scalars,
    }),
    st.dictionaries(st.sampled_from(["model", "set", "dry_run", "extra"]), json_values, max_size=3),
).map(_dry)  # fmt: skip


@FUZZ
@given(
    endpoint=st.sampled_from(["deploy", "rollback", "cancel", "nope"]),
    body=st.one_of(
        deploy_body.map(lambda d: json.dumps(d).encode()), deep.map(str.encode), raw_bytes
    ),
    name=st.sampled_from(["chat", "missing", "..", "a" * 300]),
)
def test_admin_api_answers_any_body_without_a_500(
    daemon: tuple[Daemon, Lab], endpoint: str, body: bytes, name: str
) -> None:
    d, _ = daemon
    assert d.token
    if name == "chat" and _would_act(endpoint, body):
        return  # a real deploy or rollback: not what this test is about
    path = f"/api/deployments/{name}/{endpoint}"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {d.token}"}
    status, data, took = request(d, "POST", path, body, headers)
    if endpoint == "deploy" and name == "chat" and status == 200:
        assert json.loads(data).get("dry_run") is True, data  # nothing but dry runs
    check(status, data, took, path)


def test_the_bodies_that_once_answered_500_get_a_400(daemon: tuple[Daemon, Lab]) -> None:
    d, _ = daemon
    admin = {"Content-Type": "application/json", "Authorization": f"Bearer {d.token}"}
    deep = b"[" * 100_000 + b"]" * 100_000
    for path, body, headers in (
        ("/v1/chat/completions", deep, {"Content-Type": "application/json"}),
        ("/v1/completions", b'{"model": "chat", "prompt": "x", "max_tokens": NaN}',
         {"Content-Type": "application/json"}),
        ("/api/deployments/chat/deploy", deep, admin),
        ("/api/deployments/chat/deploy", b'{"set": "x"}', admin),
        ("/api/deployments/chat/deploy", b'{"set": {"gpus": "0"}, "dry_run": true}', admin),
        ("/api/deployments/chat/deploy", b'{"dry_run": "yes"}', admin),
        # 3 million elements: refused before any is built (memory), not parsed into objects
        ("/v1/completions", b"[" + b"0," * 3_000_000 + b"0]", {"Content-Type": "application/json"}),
        # a form of a million model names: once a quadratic scan that held the loop for hours
        ("/v1/audio/transcriptions", b'name="model"\r\n' * 80_000,
         {"Content-Type": "multipart/form-data; boundary=x"}),
    ):  # fmt: skip
        status, data, took = request(d, "POST", path, body, headers)
        assert status == 400, (path, body[:40], status, data[:200])
        check(status, data, took, path)


def test_v1_404_and_405_use_openais_envelope(daemon: tuple[Daemon, Lab]) -> None:
    d, _ = daemon
    for method, path, status in (("GET", "/v1/nope", 404), ("DELETE", "/v1/models", 405),
                                 ("GET", "/v1/chat/completions", 405)):  # fmt: skip
        code, data, _ = request(d, method, path, None, {})
        assert code == status
        error = json.loads(data)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]


def _stalled(d: Daemon, payload: bytes) -> tuple[bytes, float]:
    host, port = d.url.removeprefix("http://").rsplit(":", 1)
    t = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(payload)
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except OSError:
            pass
    return data, time.monotonic() - t


def test_a_body_sent_byte_by_byte_or_an_idle_connection_is_cut(daemon: tuple[Daemon, Lab]) -> None:
    d, _ = daemon
    host = d.url.removeprefix("http://")
    # Announces 100 bytes, sends 1: the read timeout (2 s here) answers 408 and closes.
    data, took = _stalled(d, f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\n"
                          "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())  # fmt: skip
    assert data.startswith(b"HTTP/1.1 408") and took < 10, (data[:200], took)
    # Connects and says nothing: closed after the idle timeout (3 s here).
    data, took = _stalled(d, b"")
    assert took < 10, took
    # Headers that never end are cut too.
    data, took = _stalled(d, f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
    assert took < 10, took


CONFIG_KEYS = ["num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size",
               "intermediate_size", "vocab_size", "head_dim", "max_position_embeddings",
               "torch_dtype", "tie_word_embeddings", "rope_scaling", "quantization_config"]  # fmt: skip
config_values = st.one_of(
    st.sampled_from([0, -1, 1, 10**6, 10**9, 2**63, math.nan, math.inf, 1.5, "8", None, [], {}]),
    st.integers(min_value=-(2**40), max_value=2**40),
    json_values,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    overrides=st.dictionaries(st.sampled_from(CONFIG_KEYS), config_values, min_size=1, max_size=3),
    wrap=st.sampled_from(["none", "deep", "nan-text"]),
)
def test_a_hostile_config_json_gets_a_one_line_refusal_from_the_daemon(
    daemon: tuple[Daemon, Lab], tmp_path_factory: pytest.TempPathFactory,
    overrides: dict[str, Any], wrap: str,
) -> None:  # fmt: skip
    d, _ = daemon
    model = config_dir(tmp_path_factory.mktemp("model"), **overrides)
    text = (model / "config.json").read_text()
    if wrap == "deep":
        (model / "config.json").write_text(text[:-1] + ', "x": ' + deep_json(5000) + "}")
    elif wrap == "nan-text":
        (model / "config.json").write_text(text[:-1] + ', "y": NaN}')
    body = json.dumps({"model": str(model), "dry_run": True}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {d.token}"}
    status, data, took = request(d, "POST", "/api/deployments/chat/deploy", body, headers)
    check(status, data, took, "/api/deployments/chat/deploy")
    assert get(d.url + "/healthz") == "ok\n"


def test_the_lab_is_whole_after_the_fuzzing(daemon: tuple[Daemon, Lab]) -> None:
    d, _ = daemon
    before = rss(d.proc.pid)
    for _ in range(200):  # the same abuse again: memory must not grow with it
        request(d, "POST", "/v1/completions", b"[" * 100_000 + b"]" * 100_000,
                {"Content-Type": "application/json"})  # fmt: skip
    assert rss(d.proc.pid) - before < 100 * 2**20
    assert get(d.url + "/healthz") == "ok\n"
    assert d.deployment("chat")["state"] == "ready"
    body = json.dumps({"model": "chat", "prompt": "hi", "max_tokens": 2}).encode()
    status, data, _ = request(d, "POST", "/v1/completions", body,
                              {"Content-Type": "application/json"})  # fmt: skip
    assert status == 200 and json.loads(data)["choices"], data
    d.proc.terminate()
    d.proc.wait(30)
    err = d.errors()
    assert "Traceback" not in err, err[-3000:]
    assert "Traceback" not in d.output()
