"""A new engine kind and API family reach the gateway through the registry alone.

The test registers a throwaway family (``rerank``) and an adapter serving it, builds a real
:class:`~labctl.gateway.proxy.Gateway` on an aiohttp app, and routes requests to a tiny
upstream on loopback: the family's path exists without any gateway edit, a model that does
not serve the family gets 400, an unknown one 404. Also here: the body the engine gets
differs from the client's only in ``model``, ``priority`` and ``stream_options``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
import json
from typing import Any

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
import pytest

from labctl import engines
from labctl.config import GatewayConfig
from labctl.engines import Adapter, Family, Route
from labctl.gateway.body import for_engine
from labctl.gateway.proxy import Gateway

RERANK = Family("rerank", ("/v1/rerank",))


class RerankAdapter(Adapter):
    name = "test-rerank"
    families = ("rerank",)


@pytest.fixture
def rerank() -> Iterator[Family]:
    engines.register_family(RERANK)
    engines.register(RerankAdapter())
    try:
        yield RERANK
    finally:
        engines.unregister(RerankAdapter.name, [RERANK.name])


def test_engine_registry_unregister_takes_the_family_away(rerank: Family) -> None:
    assert rerank in engines.families() and "test-rerank" in engines.adapters()
    with pytest.raises(ValueError, match="still served by test-rerank"):
        engines.unregister("nothing", ["rerank"])
    engines.unregister("test-rerank", ["rerank"])
    assert rerank not in engines.families() and "test-rerank" not in engines.adapters()
    engines.register_family(rerank)  # the fixture takes it away again
    engines.register(RerankAdapter())


def test_engine_registry_a_new_family_is_routed_to_its_engine(rerank: Family) -> None:
    seen: list[tuple[str, dict[str, Any], str | None]] = []

    async def upstream_rerank(request: web.Request) -> web.Response:
        seen.append((request.path, await request.json(), request.headers.get("Authorization")))
        return web.json_response({"results": [{"index": 1, "relevance_score": 0.9}],
                                  "usage": {"prompt_tokens": 7}})  # fmt: skip

    async def go() -> None:
        up_app = web.Application()
        up_app.router.add_post("/v1/rerank", upstream_rerank)
        gateway = Gateway(GatewayConfig(), registry)
        app = web.Application()
        gateway.add_routes(app.router)  # rerank's path is among them: nothing else to do
        async with TestServer(up_app) as upstream, TestServer(app) as server:
            url = str(upstream.make_url("")).rstrip("/")
            gateway.publish(Route("rr", "bge-reranker", ("rerank-alias",), url, 2, 4,
                                  key="engine-key", families=frozenset({"rerank"})))  # fmt: skip
            gateway.publish(Route("chat", "qwen", (), url, 2, 4,
                                  families=frozenset({"chat", "completions"})))  # fmt: skip
            async with ClientSession() as client:

                async def post(body: dict[str, Any]) -> tuple[int, Any]:
                    async with client.post(server.make_url("/v1/rerank"), json=body) as r:
                        return r.status, await r.json()

                body = {"model": "rerank-alias", "query": "q", "documents": ["a", "b"],
                        "priority": 1}  # fmt: skip
                status, doc = await post(body)
                assert status == 200 and doc["results"][0]["index"] == 1
                status, doc = await post({"model": "chat", "query": "q"})
                assert status == 400 and doc["error"]["code"] == "model_not_supported"
                assert "serves: chat, completions" in doc["error"]["message"]
                status, doc = await post({"model": "nope", "query": "q"})
                assert status == 404 and doc["error"]["code"] == "model_not_found"
        await gateway.close()

    registry = CollectorRegistry()
    asyncio.run(go())
    tokens = {"model": "rr", "kind": "prompt"}
    assert registry.get_sample_value("labctl_gateway_tokens_total", tokens) == 7
    # it reached the engine once, under its served name, with the engine's key, and without
    # the gateway's own field
    assert seen == [("/v1/rerank", {"model": "bge-reranker", "query": "q",
                                    "documents": ["a", "b"]}, "Bearer engine-key")]  # fmt: skip


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                         st.floats(allow_nan=False, allow_infinity=False))  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["chat", "served", "a\"b", "model", "é"])},
    optional={"stream": st.booleans(), "priority": st.integers(-3, 3),
              "stream_options": st.one_of(st.none(), st.fixed_dictionaries(
                  {}, optional={"include_usage": st.booleans(), "x": json_scalars})),
              "messages": json_values, "model_note": st.just("model"),
              "tools": st.just([{"model": "nested"}])},
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(bodies, st.sampled_from([None, 2]), st.sampled_from(["served", "other/model"]))
def test_gateway_body_for_engine_changes_only_model_priority_and_usage(
    doc: dict[str, Any], indent: int | None, served: str
) -> None:
    raw = json.dumps(doc, indent=indent).encode()
    body, stream, asked = for_engine(raw, json.loads(raw), served)
    expected = {k: v for k, v in doc.items() if k != "priority"} | {"model": served}
    if stream and not asked:
        given = doc.get("stream_options")
        expected["stream_options"] = {**(given if isinstance(given, dict) else {}),
                                      "include_usage": True}  # fmt: skip
    assert json.loads(body) == expected
    assert stream == bool(doc.get("stream"))
    assert (body is raw) == (expected == doc)  # nothing to change: the client's bytes as they are


def test_the_smoke_test_asks_what_the_engine_serves() -> None:
    from labctl.engines import adapter

    vllm, command = adapter("vllm"), adapter("command")
    assert vllm.smoke({}, "m") == (
        "/v1/completions", {"model": "m", "prompt": "Hello", "max_tokens": 1}
    )  # fmt: skip
    chat = command.smoke({"serves": ["chat"]}, "m")
    assert chat is not None and chat[0] == "/v1/chat/completions"
    assert chat[1]["messages"][0]["content"] == "Hello"
    assert command.smoke({"serves": ["transcriptions"]}, "m") is None  # health is all there is


def test_lab_toml_knows_every_built_in_family() -> None:
    from labctl.config import FAMILIES
    from labctl.engines import families

    assert set(FAMILIES) == {f.name for f in families()}
