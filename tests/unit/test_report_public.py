"""A public report holds no secret it was given, wherever it was planted and however the page
encodes it, and keeps the values a report is for.

Each example plants one random value of every kind (tokens in every known shape, PEM
blocks, high-entropy strings, GPU UUIDs, serials, PCI bus ids, MACs, IPv4/IPv6 addresses
and subnets, hostnames, ports, users' home paths, absolute paths) into every source the
report reads: lab.toml, a deploy's error and its preflight step, an engine log line, a bench
result, the doctor's evidence, a model's path, a serving figure's and an alert's labels.
The whole report is then built, redacted and rendered, and each secret is looked for in the
HTML, the Markdown and the JSON, raw, URL-encoded, HTML-escaped and JSON-escaped, and in
every base64 blob the page embeds, decoded.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tests.reportdata import PLANS, Plant, sources
from tests.secretshapes import KINDS, encodings, planted, secret_part

from labctl.report.build import build
from labctl.report.html import render_html
from labctl.report.markdown import render_markdown

#: The sources a secret is planted into (Plant's fields).
SLOTS = ("config", "error", "log", "bench", "doctor", "path", "label", "alert", "step")
#: Kept beside the secrets: each must come through.
KEPT = ("Qwen/Qwen3-8B", "meta-llama/Llama-3.1-8B-Instruct", "NVIDIA H100 80GB HBM3",
        "model-00001-of-00004.safetensors", "vllm.v1.engine.core", "Q4_K_M", "0.11.0")  # fmt: skip


def everything() -> st.SearchStrategy[dict[str, list[tuple[str, str]]]]:
    """For each slot, one value of every kind."""
    one_each = st.tuples(*(KINDS[k].map(lambda v, k=k: (k, v)) for k in sorted(KINDS)))
    return st.fixed_dictionaries({slot: one_each.map(list) for slot in SLOTS})


def _text(values: list[tuple[str, str]]) -> str:
    return " ; ".join(planted(k, v) for k, v in values) + " ; kept: " + " ".join(KEPT)


def _needle(kind: str, value: str) -> str:
    """What must not appear: for a port, the port after a colon (a bare 5-digit number can
    be any figure's digits)."""
    return f":{value}" if kind == "port" else secret_part(kind, value)


def _base64_blobs(page: str) -> list[str]:
    """Every base64 run of the page that decodes, decoded (data: URIs and any other)."""
    out = []
    for m in re.finditer(r"[A-Za-z0-9+/]{24,}={0,2}", page):
        try:
            out.append(base64.b64decode(m.group(0) + "=" * (-len(m.group(0)) % 4)).decode(
                "utf-8", "replace"))  # fmt: skip
        except (binascii.Error, ValueError):
            continue
    return out


@settings(max_examples=6, deadline=None, derandomize=True, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(everything())
def test_no_planted_secret_survives_in_any_encoding(
    plants: dict[str, list[tuple[str, str]]],
) -> None:
    plant = Plant(**{slot: _text(values) for slot, values in plants.items()})
    src, disk = sources(deployments=1, deploys=4, minutes=6, plant=plant)
    doc, scrubber = build(src, disk, PLANS, public=True, env={})
    assert scrubber is not None
    pages = {"html": render_html(doc), "md": render_markdown(doc),
             "json": json.dumps(doc, ensure_ascii=False)}  # fmt: skip
    blobs = "\n".join(_base64_blobs(pages["html"]))
    for slot, values in plants.items():
        for kind, value in values:
            needle = _needle(kind, value)
            for name, page in pages.items():
                for form in encodings(needle):
                    assert form not in page, (
                        f"{kind} planted in {slot} survives in {name}: {form!r}"
                    )
            assert needle not in blobs, f"{kind} planted in {slot} survives base64-encoded"
    # what a report is for survives: model ids, GPU names, figures, file names
    for name, page in pages.items():
        for kept in (*KEPT, "Qwen/Qwen3-0.6B", "NVIDIA GeForce RTX 3090", "21.22 GiB"):
            if name == "md" and kept in KEPT:
                continue  # the Markdown may cut a log line; the JSON and page keep all of it
            assert kept in page, f"{kept!r} lost from {name}"
    assert all(k in pages["json"] for k in KEPT)


def test_the_private_map_holds_what_was_replaced(tmp_path: Any) -> None:
    src, disk = sources(deployments=1, deploys=2, minutes=3,
                        plant=Plant(log="from 10.1.2.3 on gpubox.lan"))  # fmt: skip
    doc, scrubber = build(src, disk, PLANS, public=True, env={"HF_TOKEN": "hf_" + "x" * 34})
    assert scrubber is not None
    path = tmp_path / "map.json"
    scrubber.write_map(path)
    mapping = json.loads(path.read_text())
    originals = {o for cat in mapping.values() for o in cat}
    replacements = {r for cat in mapping.values() for r in cat.values()}
    assert {"10.1.2.3", "gpubox.lan", "gpubox", "8080"} <= originals
    page = render_html(doc) + render_markdown(doc) + json.dumps(doc)
    for original in originals - {"8080", "5000"}:  # a port is gone after a colon only
        assert original not in page
    assert ":8080" not in page and "alice" not in page
    assert any(r in page for r in replacements)
    assert doc["redaction"]["counts"] and "redacted" in doc["redaction"]["summary"]
    # consistent: the same address has the same placeholder everywhere it appears
    address = mapping_of(mapping, "10.20.30.41")
    assert address and page.count(address) >= 2


def mapping_of(mapping: dict[str, dict[str, str]], original: str) -> str | None:
    for cat in mapping.values():
        if original in cat:
            return cat[original]
    return None


def test_a_model_given_as_a_path_is_redacted_like_any_path() -> None:
    src, disk = sources(deployments=1, deploys=2, minutes=3)
    src["deployments"][0]["model"] = "/home/alice/models/secret-project-70b.gguf"
    doc, _ = build(src, disk, PLANS, public=True, env={})
    page = render_html(doc) + render_markdown(doc) + json.dumps(doc)
    assert "alice" not in page and "/home/alice" not in page
    assert "secret-project-70b.gguf" in page  # the file's name is what it is
