"""labctl bench without a server: HTTP/SSE framing, vLLM's field definitions, option parsing."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from labctl.bench.http import Endpoint, LagRecorder, _Parser
from labctl.bench.run import BenchConfig, _p99_with_zeros, _Stream, reason
from labctl.cli.bench import parse_goodput, parse_sweep
from labctl.errors import UsageError
from labctl.sim.report import Outcome, peaks, summarize

FIXTURE = Path(__file__).parent.parent / "fixtures" / "vllm_bench_serve.json"


class Sink:
    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.done: tuple[int, bytes, str | None] | None = None

    def on_event(self, data: bytes, t: float) -> None:
        self.events.append(data)

    def on_done(self, status: int, body: bytes, error: str | None) -> None:
        self.done = (status, body, error)


def chunked(payload: bytes, sizes: list[int]) -> bytes:
    out, i = b"", 0
    for n in sizes:
        if i >= len(payload):
            break
        piece = payload[i : i + n]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        i += n
    if i < len(payload):
        out += f"{len(payload) - i:x}\r\n".encode() + payload[i:] + b"\r\n"
    return out + b"0\r\n\r\n"


EVENTS = [b'{"choices":[{"text":" a"}]}', b'{"choices":[{"text":" b"}]}', b"[DONE]"]
SSE = b"".join(b"data: " + e + b"\n\n" for e in EVENTS)
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
def test_events_survive_any_chunking_and_any_read_boundaries(
    sizes: list[int], cuts: list[int]
) -> None:
    wire = HEAD + chunked(SSE, sizes)
    sink = Sink()
    parser = _Parser(sink)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    for a, b in itertools.pairwise(points):
        parser.feed(wire[a:b], 0.0)
    assert sink.events == EVENTS
    assert sink.done == (200, b"", None)
    assert parser.buf == b""


def test_crlf_events_and_multiline_data_are_joined() -> None:
    sink = Sink()
    body = b'data: {"a":\r\ndata: 1}\r\n\r\n: comment\r\n\r\ndata: [DONE]\r\n\r\n'
    _Parser(sink).feed(HEAD + chunked(body, [1000]), 0.0)
    assert sink.events == [b'{"a":\n1}', b"[DONE]"]


def test_an_error_body_is_kept_and_a_bad_chunk_size_fails() -> None:
    sink = Sink()
    body = b'{"error":{"message":"The model `x` does not exist."}}'
    head = f"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    _Parser(sink).feed(head.encode() + body, 0.0)
    assert sink.done == (404, body, None)
    bad = Sink()
    _Parser(bad).feed(HEAD + b"zz\r\n", 0.0)
    assert bad.done is not None and bad.done[2] == "malformed chunked encoding from the server"


def test_a_close_before_the_last_chunk_is_an_error() -> None:
    sink = Sink()
    parser = _Parser(sink)
    parser.feed(HEAD + b"5\r\nhello\r\n", 0.0)
    parser.eof()
    assert sink.done is not None and "closed the connection" in str(sink.done[2])


def stream_of(events: list[tuple[bytes, float]]) -> _Stream:
    async def go() -> _Stream:
        s = _Stream(LagRecorder())
        for data, t in events:
            s.on_event(data, t)
        return s

    return asyncio.run(go())


def test_stream_timing_follows_vllm_role_chunk_counts_and_usage_does_not_move_the_end() -> None:
    s = stream_of([
        (b'{"choices":[{"delta":{"role":"assistant","content":""}}]}', 1.0),
        (b'{"choices":[{"delta":{"content":"hi"}}]}', 1.5),
        (b'{"choices":[{"delta":{"content":" there"}}]}', 1.75),
        (b'{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}}', 3.0),
        (b"[DONE]", 3.0),
    ])  # fmt: skip
    assert s.first == 1.0  # vLLM's chat path: the role-only first message is the first token
    assert s.itl == [0.5, 0.25]
    assert s.last == 1.75  # the usage-only message does not end the request
    assert s.usage == {"prompt_tokens": 9, "completion_tokens": 2}
    assert s.done and s.error is None and "".join(s.texts) == "hi there"


def test_stream_errors_are_named() -> None:
    bad = stream_of([(b'{"choices":[{"text":"a"}]}', 1.0), (b'{"choices": [', 1.1)])
    assert bad.error is not None and bad.error.startswith("malformed SSE from the server: ")
    assert reason(bad.error) == "malformed SSE from the server"
    mid = stream_of([(b'{"error":{"message":"boom","code":500}}', 1.0)])
    assert mid.error == "server error mid-stream: boom"


def test_summary_uses_vllm_definitions() -> None:
    outcomes = [
        Outcome(100, 5, ttft=0.1, e2el=0.5, itl=[0.1, 0.1, 0.1, 0.1], start=0.0, queue_time=0.2),
        Outcome(100, 3, ttft=0.2, e2el=0.4, itl=[0.2], start=0.5),  # a 2-token chunk: 2 ITLs
        Outcome(100, 0, None, None, [], success=False, error="HTTP 500: x"),
    ]
    doc = summarize(outcomes, 2.0, goodput={"ttft": 150}, client_queue=True)
    assert doc["completed"] == 2 and doc["failed"] == 1
    assert doc["median_tpot_ms"] == pytest.approx((100 + 100) / 2)  # (e2el−ttft)/(n−1)
    assert doc["mean_itl_ms"] == pytest.approx(120.0)  # one sample per message
    assert doc["request_goodput"] == pytest.approx(0.5)
    assert doc["max_concurrent_requests"] == 1  # [0, 0.5) and [0.5, 0.9) do not overlap
    assert doc["mean_client_queue_time_ms"] == pytest.approx(100.0)
    assert summarize(outcomes, 2.0)["request_goodput"] is None


def test_peak_output_rate_counts_messages_per_second_bucket() -> None:
    o = Outcome(1, 4, ttft=0.5, e2el=1.7, itl=[0.4, 0.4, 0.4], start=0.0)
    assert peaks([o]) == (2.0, 1)  # messages at 0.5, 0.9 in second 0; at 1.3, 1.7 in second 1


def test_timestamp_error_p99_counts_exact_events() -> None:
    assert _p99_with_zeros([], 1000) == 0.0
    assert _p99_with_zeros([0.005] * 5, 1000) == 0.0  # 0.5% of events: below the p99
    assert _p99_with_zeros([0.005] * 50, 1000) == pytest.approx(0.005)


def test_result_carries_every_field_of_vllm_bench_serve_with_its_type() -> None:
    """A script written for `vllm bench serve` output reads ours unchanged."""
    from labctl.bench.run import Runner, _Result

    cfg = BenchConfig("http://127.0.0.1:1", "m", num_prompts=2, max_concurrency=64)

    async def build() -> dict[str, object]:
        r = Runner(cfg)
        done = [
            _Result(Outcome(10, 3, 0.1, 0.3, [0.1, 0.1], start=0.0), "abc", True, 3, 10),
            _Result(Outcome(10, 3, 0.1, 0.3, [0.1, 0.1], start=0.1), "abc", True, 3, 10),
        ]
        return r.report(done, 1.0, [0.0, 0.0], None)

    ours = json.loads(json.dumps(asyncio.run(build())))
    theirs = json.loads(FIXTURE.read_text())
    for key, value in theirs.items():
        assert key in ours, key
        if value is None or ours[key] is None:
            continue
        assert isinstance(ours[key], type(value)) or (
            isinstance(value, float) and isinstance(ours[key], int)
        ), (key, ours[key], value)
    assert ours["request_rate"] == "inf"  # vLLM writes the string for an unlimited rate


def test_options_are_checked_with_clear_messages() -> None:
    assert parse_goodput(("ttft:300 tpot:50", "e2el:9000")) == {
        "ttft": 300,
        "tpot": 50,
        "e2el": 9000,
    }
    with pytest.raises(UsageError, match="KEY:MS"):
        parse_goodput(("itl:5",))
    with pytest.raises(UsageError, match="positive"):
        parse_goodput(("ttft:-1",))
    assert parse_sweep("rate=1,2.5,inf") == ("rate", [1.0, 2.5, float("inf")])
    assert parse_sweep("concurrency=1,8") == ("concurrency", [1.0, 8.0])
    with pytest.raises(UsageError, match="whole number"):
        parse_sweep("concurrency=1.5")
    with pytest.raises(UsageError, match="rate=V1"):
        parse_sweep("qps=1")
    with pytest.raises(UsageError, match="not an http"):
        BenchConfig("localhost:8000", "m").validate()
    with pytest.raises(UsageError, match="--num-prompts"):
        BenchConfig("http://h", "m", num_prompts=0).validate()
    assert Endpoint.parse("http://h:9/v1/") == Endpoint("http", "h", 9, "")


def test_https_streams_through_the_same_parser(tmp_path: Path) -> None:
    """TLS goes through asyncio's streams (no kernel timestamps), with the same framing."""
    import shutil
    import ssl
    import subprocess

    from aiohttp import web

    from labctl.bench.http import Client

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in EVENTS:
            await resp.write(b"data: " + event + b"\n\n")
        return resp

    async def go() -> _Stream:
        app = web.Application()
        app.router.add_post("/v1/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        port = runner.addresses[0][1]
        client_ctx = ssl.create_default_context(cafile=str(cert))
        client = Client(Endpoint.parse(f"https://127.0.0.1:{port}"), ssl_context=client_ctx)
        stream = _Stream(LagRecorder())
        conn = await client.request("POST", "/v1/completions", b"{}", stream)
        status, _, error = await asyncio.wait_for(stream.future, 10)
        assert (status, error) == (200, None)
        client.release(conn)
        client.close()
        await runner.cleanup()
        return stream

    stream = asyncio.run(go())
    assert stream.done and "".join(stream.texts) == " a b" and len(stream.itl) == 1
