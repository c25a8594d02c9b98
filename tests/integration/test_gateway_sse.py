"""The gateway in front of a real sse-starlette server (CRLF line endings), with the openai client.

The lab runs ``cmd_sse_server.py`` as a ``command`` deployment. Its events end their lines
with CRLF: the gateway must relay them one by one as they come (not all at the end), time
the first token, and drop the usage event it asked for when the client did not.
"""

from __future__ import annotations

import itertools
from pathlib import Path
import sys
import time

import openai
import pytest

from tests.integration.lab import Daemon, Lab, get

SERVER = Path(__file__).with_name("cmd_sse_server.py")
CHUNKS, DELAY = 5, 0.25


def lab_toml(tmp_path: Path) -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(
        '[lab]\ngpu_backend = "sim"\nsim_gpus = "1xrtx-3090"\n\n'
        '[deployments.sse]\nengine = "command"\n'
        f'command = ["{sys.executable}", "{SERVER}", "--host", "{{host}}", "--port", "{{port}}", '
        f'"--chunks", "{CHUNKS}", "--delay", "{DELAY}"]\n'
        "stop_grace = 5\nstartup_timeout = 60\n"
    )
    return path


def ttft_count(d: Daemon) -> float:
    for line in get(d.url + "/metrics").splitlines():
        if line.startswith('labctl_gateway_time_to_first_token_seconds_count{model="sse"}'):
            return float(line.split()[-1])
    return 0.0


def test_gateway_relays_sse_starlette_events_as_they_come(lab: Lab, tmp_path: Path) -> None:
    pytest.importorskip("sse_starlette")
    d = lab.up("--config", str(lab_toml(tmp_path)))
    d.wait_state("sse", "ready", timeout=60)
    client = openai.OpenAI(base_url=d.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": "hi"}]

    # the client did not ask for usage: the gateway asked on its own, and keeps it to itself
    before = ttft_count(d)
    times, chunks = [], []
    for c in client.chat.completions.create(model="sse", messages=messages, stream=True):
        times.append(time.monotonic())
        chunks.append(c)
    assert len(chunks) == CHUNKS + 2  # the role chunk, the content chunks, the finish chunk
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    # one by one, as the server sent them DELAY apart: not all at once at the end
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[-1] - times[0] >= DELAY * CHUNKS * 0.8, gaps
    assert sum(1 for g in gaps if g >= DELAY * 0.5) >= CHUNKS - 1, gaps
    assert ttft_count(d) == before + 1  # the first token was seen (and timed)

    # the client asked: it gets the usage event, last, with no choices
    chunks = list(client.chat.completions.create(
        model="sse", messages=messages, stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == CHUNKS
    assert not chunks[-1].choices and all(c.choices for c in chunks[:-1])
    assert ttft_count(d) == before + 2
    metrics = get(d.url + "/metrics")
    assert 'labctl_gateway_tokens_total{kind="completion",model="sse"} 10.0' in metrics
