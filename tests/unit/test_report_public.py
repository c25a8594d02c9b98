"""A public report holds no secret it was given, wherever it was planted and however the page
encodes it, and keeps the values a report is for.

Each example plants one random value of every kind (tokens in every known shape, PEM
blocks, high-entropy strings, GPU UUIDs, serials, PCI bus ids, MACs, IPv4/IPv6 addresses
and subnets, hostnames, private URLs, ports, users' home paths, absolute paths, bare host
and user names said to be such in another source, and a shapeless password lab.toml holds
under a secret's name) into every source the report reads: lab.toml, a deploy's error and
its preflight step, an engine log line, a bench result, the doctor's evidence, a model's
path, a serving figure's and an alert's labels (each slot is checked to reach the report).
The whole report is then built, redacted and rendered, and each secret is looked for in the
HTML, the Markdown and the JSON, raw, URL-encoded, HTML-escaped and JSON-escaped, and in
every base64 blob the page embeds, decoded. Drawing the page's plots takes seconds, so the
page is checked for a few examples and the document it is drawn from for many.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import tomllib
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tests.reportdata import PLANS, Plant, sources
from tests.secretshapes import KINDS, PASSWORD, TAUGHT_BY, encodings, planted, secret_part

from labctl.report.build import build
from labctl.report.html import render_html
from labctl.report.markdown import render_markdown

#: The sources a secret is planted into (Plant's fields).
SLOTS = ("config", "error", "log", "bench", "doctor", "path", "label", "alert", "step")
#: The slot where what makes a bare name private is said (a URL, a home path); the other
#: slots hold the bare name alone.
TEACHER = "error"
#: Kept beside the secrets: each must come through.
KEPT = ("Qwen/Qwen3-8B", "meta-llama/Llama-3.1-8B-Instruct", "NVIDIA H100 80GB HBM3",
        "model-00001-of-00004.safetensors", "vllm.v1.engine.core", "Q4_K_M", "0.11.0")  # fmt: skip


def everything() -> st.SearchStrategy[dict[str, list[tuple[str, str]]]]:
    """For each slot, one value of every kind."""
    one_each = st.tuples(*(KINDS[k].map(lambda v, k=k: (k, v)) for k in sorted(KINDS)))
    return st.fixed_dictionaries({slot: one_each.map(list) for slot in SLOTS})


def _texts(plants: dict[str, list[tuple[str, str]]], password: str = "") -> dict[str, str]:
    """Each slot's text: each value as a source holds it, lab.toml's password said in passing,
    and the values that must be kept; the bare names of every slot are said to be a host's
    or a user's (a URL, a home path) in :data:`TEACHER` only."""
    texts = {}
    for slot, values in plants.items():
        said = [planted(k, v, taught=False) for k, v in values]
        if slot == TEACHER:
            said += [TAUGHT_BY[k](v) for vs in plants.values() for k, v in vs if k in TAUGHT_BY]
        if password:
            said.append(f"login with {password} ok")
        texts[slot] = " ; ".join(said) + " ; kept: " + " ".join(KEPT)
    return texts


def _needle(kind: str, value: str) -> str:
    """What must not appear: for a port, the port after a colon or the word port (a bare
    5-digit number can be any figure's digits)."""
    if kind == "port":
        return f"port {value}" if "port " in planted(kind, value) else f":{value}"
    return secret_part(kind, value)


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


def _pages(plants: dict[str, list[tuple[str, str]]], password: str, html: bool) -> dict[str, str]:
    plant = Plant(**_texts(plants, password), password=password)
    src, disk = sources(deployments=1, deploys=4, minutes=6, plant=plant)
    doc, scrubber = build(src, disk, PLANS, public=True, env={})
    assert scrubber is not None
    pages = {"md": render_markdown(doc), "json": json.dumps(doc, ensure_ascii=False)}
    if html:
        pages["html"] = render_html(doc)
    return pages


def _check(pages: dict[str, str], plants: dict[str, list[tuple[str, str]]], password: str) -> None:
    blobs = "\n".join(_base64_blobs(pages.get("html", "")))
    for slot, values in plants.items():
        for kind, value in [*values, ("password", password)]:
            needle = _needle(kind, value) if kind != "password" else value
            for name, page in pages.items():
                for form in encodings(needle):
                    assert form not in page, (
                        f"{kind} planted in {slot} survives in {name}: {form!r}"
                    )
            assert needle not in blobs, f"{kind} planted in {slot} survives base64-encoded"
    # what a report is for survives: model ids, GPU names, figures, file names
    for name, page in pages.items():
        for kept in (*KEPT, "Qwen/Qwen3-0.6B", "NVIDIA GeForce RTX 3090", "21.22 GiB"):
            if name == "md" and kept in KEPT and kept not in MODEL_IDS:
                continue  # the Markdown may cut a log line; the JSON and page keep all of it
            assert kept in page, f"{kept!r} lost from {name}"


#: Of :data:`KEPT`, the model ids: the Markdown keeps them too.
MODEL_IDS = ("Qwen/Qwen3-8B", "meta-llama/Llama-3.1-8B-Instruct")
_SETTINGS = settings(deadline=None, derandomize=True, phases=[Phase.generate],
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip


@settings(_SETTINGS, max_examples=4)
@given(everything(), PASSWORD)
def test_no_planted_secret_survives_in_any_encoding(
    plants: dict[str, list[tuple[str, str]]], password: str
) -> None:
    """The whole page, plots drawn (each example takes seconds: few examples)."""
    _check(_pages(plants, password, html=True), plants, password)


@settings(_SETTINGS, max_examples=60)
@given(everything(), PASSWORD)
def test_no_planted_secret_survives_in_the_document(
    plants: dict[str, list[tuple[str, str]]], password: str
) -> None:
    """The document the page is drawn from (report.json) and the Markdown: many examples."""
    _check(_pages(plants, password, html=False), plants, password)


def test_every_plant_slot_reaches_the_report() -> None:
    """A harmless marker planted in each slot comes through in every page of the report,
    private and public (a slot the report never shows would test nothing), and a bench's
    marker in each field of it that the report shows."""
    plant = Plant(**{slot: f"zzmark{slot}" for slot in SLOTS}, password="zzmarkpassword")
    src, disk = sources(deployments=1, deploys=4, minutes=6, plant=plant)
    config = tomllib.loads(src["lab"]["config_text"])  # planted as lab.toml, not as garbage
    assert config["lab"]["extra"] == {"note": "zzmarkconfig", "my_password": "zzmarkpassword"}
    for public in (False, True):
        doc, _ = build(src, disk, PLANS, public=public, env={})
        pages = {"md": render_markdown(doc), "json": json.dumps(doc)}
        if not public:  # the page is drawn from the same document
            pages["html"] = render_html(doc)
        for slot in SLOTS:
            for name, page in pages.items():
                assert f"zzmark{slot}" in page, f"what is planted in {slot} is not in {name}"
        bench = doc["bench"][0]
        assert all("zzmarkbench" in str(bench[f]) for f in ("model", "backend", "headline"))
        assert "zzmarkpassword" not in pages["json"]  # a secret by its key's name: never shown


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


def test_a_host_named_only_where_the_report_cuts_a_text_is_still_replaced() -> None:
    """The redactor learns hosts from the sources, not only from what the report keeps of
    them: a URL in the cut-off end of a deploy's error still makes its host private."""
    error = "engine exited; " + "stderr line; " * 100 + "peer http://dgx42:8000/v1 refused"
    src, disk = sources(deployments=1, deploys=4, minutes=3,
                        plant=Plant(error=error, log="then dgx42 went quiet"))  # fmt: skip
    doc, _ = build(src, disk, PLANS, public=True, env={})
    page = json.dumps(doc, ensure_ascii=False)
    assert "refused" not in page  # the URL is cut off
    assert re.search("(stderr line; )+[a-z ;]*…", page)
    assert "dgx42" not in page and "then host-" in page
