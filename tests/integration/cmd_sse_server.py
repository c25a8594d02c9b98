"""A small OpenAI-compatible chat server on Starlette and sse-starlette, for the gateway's tests.

sse-starlette ends every line of its events with CRLF (its default separator), as many
Python servers built on it do; labctl's relay must split those events as they come, time
their tokens, and drop the usage event it asked for on its own. Its JSON is written by
``json.dumps`` with the default separators (``"choices": []``, ``"usage": {``), not
vLLM's compact form.

A streamed chat completion is a role chunk, ``--chunks`` content chunks ``--delay``
seconds apart, a finish chunk, then (when ``stream_options.include_usage``) a usage chunk
with ``"choices": []``, then ``[DONE]``. ``/health`` answers 200, ``/v1/models`` lists
``--model``, and ``/v1/completions`` answers one word, not streamed (the lab's smoke test).

    python cmd_sse_server.py --host H --port P [--chunks N] [--delay S] [--model M]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
import json
import time
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
import uvicorn


def build(model: str, chunks: int, delay: float) -> Starlette:
    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": "test"}]})  # fmt: skip

    async def chat(request: Request) -> Response:
        body = await request.json()
        opts = body.get("stream_options") or {}
        usage = {"prompt_tokens": 3, "completion_tokens": chunks, "total_tokens": 3 + chunks}
        head = {"id": "chatcmpl-sse", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model", model)}  # fmt: skip
        if not body.get("stream"):
            text = " ".join(f"word{i}" for i in range(chunks))
            return JSONResponse({**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text},
                 "finish_reason": "stop"}], "usage": usage})  # fmt: skip

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return json.dumps({**head, "choices": [choice]})

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            for i in range(chunks):
                await asyncio.sleep(delay)
                yield chunk({"content": f" word{i}"})
            yield chunk({}, "stop")
            if opts.get("include_usage"):
                yield json.dumps({**head, "choices": [], "usage": usage})
            yield "[DONE]"

        return EventSourceResponse(events())  # lines end with CRLF

    async def completions(request: Request) -> Response:
        """Not streamed: what the lab's smoke test of a new revision asks for."""
        body = await request.json()
        return JSONResponse({"id": "cmpl-sse", "object": "text_completion", "created": 0,
                             "model": body.get("model", model), "choices": [
                                 {"index": 0, "text": " word0", "finish_reason": "length"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                       "total_tokens": 2}})  # fmt: skip

    return Starlette(routes=[
        Route("/health", health), Route("/v1/models", models),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="sse")
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.2)
    args = parser.parse_args()
    app = build(args.model, args.chunks, args.delay)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
