"""The report's pages: Markdown that a Markdown parser reads as the tables it meant and that
fits a GitHub issue, an HTML page that asks nothing of any server, and the sections'
figures from the lab's records."""

from __future__ import annotations

import re
from typing import Any

from markdown_it import MarkdownIt
import pytest
from tests.reportdata import PLANS, REV, Plant, sources

from labctl.report.build import build
from labctl.report.document import assemble, short_hashes
from labctl.report.html import render_html
from labctl.report.markdown import LIMIT, render_markdown
from labctl.report.view import sections


def _doc(public: bool = False, **kw: Any) -> dict[str, Any]:
    src, disk = sources(**kw)
    return build(src, disk, PLANS, public=public, env={})[0]


def _tables(md: str) -> list[list[list[str]]]:
    """Each table the parser found: its rows of cell texts (the header row first)."""
    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    tables: list[list[list[str]]] = []
    row: list[str] | None = None
    for t in tokens:
        if t.type == "table_open":
            tables.append([])
        elif t.type == "tr_open":
            row = []
        elif t.type == "inline" and row is not None:
            row.append(t.content)
        elif t.type == "tr_close" and row is not None:
            tables[-1].append(row)
            row = None
    return tables


def test_markdown_parses_into_the_tables_the_report_has() -> None:
    doc = _doc(deployments=2, deploys=8, minutes=30)
    md = render_markdown(doc)
    expected = [t for s in sections(doc) for t in s.tables if t.rows]
    found = _tables(md)
    assert len(found) == len(expected)
    for table, want in zip(found, expected, strict=True):
        assert len(table) == len(want.rows) + 1  # the header, then every row
        assert all(len(r) == len(want.columns) for r in table)
    assert "<details><summary>lab.toml</summary>" in md
    assert "| Qwen/Qwen3-0.6B |" in md or "Qwen/Qwen3-0.6B" in md


def test_a_pipe_or_line_break_in_a_log_cannot_break_a_table() -> None:
    doc = _doc(deployments=1, deploys=4, minutes=5,
               plant=Plant(error="a | b\nc", alert="x|y"))  # fmt: skip
    found = _tables(render_markdown(doc))
    for table in found:
        assert len({len(r) for r in table}) == 1


def test_ten_deployments_and_a_hundred_deploys_fit_a_github_issue() -> None:
    doc = _doc(deployments=10, deploys=100, minutes=7 * 24 * 60 // 20)
    md = render_markdown(doc)
    assert len(md) < LIMIT
    assert len(_tables(md)) >= 8
    # the long deploy table is folded, and says where the rest is if it was cut
    assert re.search(r"<details><summary>Deploys \(newest first\) \(\d+\)</summary>", md)


def test_markdown_shrinks_rather_than_passing_the_limit() -> None:
    doc = _doc(deployments=3, deploys=60, minutes=30)
    full = render_markdown(doc, limit=10**9)
    small = render_markdown(doc, limit=len(full) - 100)
    assert len(small) < len(full) - 100
    assert "more in report.json" in small


def test_html_asks_nothing_of_any_server() -> None:
    html = render_html(_doc(deployments=1, deploys=3, minutes=20))
    assert "default-src 'none'" in html
    for pattern in (r"<script", r"<link", r"<img", r"<iframe", r"\bsrc\s*=", r"url\((?!#)",
                    r"@import"):  # fmt: skip
        assert not re.search(pattern, html, re.I), pattern
    hrefs = re.findall(r'(?<![:\w])href="([^"]*)"', html)
    assert hrefs and all(h.startswith("#") for h in hrefs)
    assert html.count("<svg") >= 5  # deploy steps, a bench sweep's two, serving's


def test_sections_carry_the_records() -> None:
    src, disk = sources(deployments=2, deploys=8, minutes=60)
    doc = short_hashes(assemble(src, disk, PLANS, public=False))
    by = {x["deployment"]: x for x in doc["history"]["summary"]}
    assert by["chat"]["deploys"] == 4 and by["chat"]["rollbacks"] == 2
    assert by["dep1"]["restarts"] == 2
    assert by["chat"]["freed_bytes_median"] == 22_786_948_989
    assert 0.4 <= by["chat"]["release_s_median"] <= 1.4
    assert doc["fit"]["models"][0]["revision"] == REV[:12]
    assert doc["bench"][0]["parameter"] == "concurrency"
    assert [r["x"] for r in doc["bench"][0]["rows"]] == [1, 4, 16]
    serving = {s["deployment"]: s for s in doc["serving"]}
    assert serving["chat"]["minutes"] == 60
    assert serving["chat"]["summary"]["requests_queued"]["max"] == 0
    assert doc["alerts"][0]["duration_s"] == 300
    assert doc["gpus"][0]["driver"] == "550.54.15"


def test_public_gpus_keep_the_driver_major_only() -> None:
    doc = _doc(public=True, deployments=1, deploys=2, minutes=5)
    assert doc["gpus"][0]["driver"] == "550"
    assert "uuid" not in doc["gpus"][0] and "pci_bus_id" not in doc["gpus"][0]
    assert doc["gpus"][0]["name"] == "NVIDIA GeForce RTX 3090"


def test_private_report_keeps_hosts_but_not_credentials() -> None:
    secret = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
    doc = _doc(deployments=1, deploys=3, minutes=5, plant=Plant(log=f"key={secret}"))
    text = render_html(doc) + render_markdown(doc)
    assert "gpubox" in text and "10.20.30.41" in text
    assert secret not in text and "sk-proj-Ab3d" not in text


@pytest.mark.parametrize("minutes", [0, 1])
def test_an_empty_or_young_lab_still_reports(minutes: int) -> None:
    src, _ = sources(deployments=1, deploys=0, minutes=minutes)
    src["bench"] = []
    src["alerts"] = []
    src["doctor"] = None
    doc = build(src, None, [], public=True, env={})[0]
    html, md = render_html(doc), render_markdown(doc)
    assert "No bench run was recorded" in md and "The doctor had not run" in html
