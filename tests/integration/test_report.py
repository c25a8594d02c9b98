"""`labctl report` against a real lab: a deploy, a rollback and a bench sweep later, the public
report holds them and none of the lab's private values, renders in Chromium with every
plot drawn and no request leaving the page; the operator's report keeps what the public one
hides."""

from __future__ import annotations

from collections.abc import Callable
import json
import os
from pathlib import Path
import socket
import stat
import time
from typing import Any
from urllib.parse import urlsplit

from markdown_it import MarkdownIt

from tests.integration.browser import browser
from tests.integration.conftest import Run
from tests.integration.lab import Lab, lab_toml, wait_for

DASHBOARD = "\n[dashboard]\ninterval = 0.5\nalert_for_scale = 0\n"
HF_TOKEN = "hf_" + "Q7rTz2LmW9xKp4VbN8cYd3FgH6jS1aE5uZ"
#: Where the screenshot goes when asked (the one in docs/ is made this way).
SHOT_ENV = "LABCTL_REPORT_SCREENSHOT"


def screenshot(html: Path, shot: Path) -> dict[str, Any]:
    """Open the page in headless Chromium: every request it makes, each plot's size and
    visibility, and a full-page screenshot."""
    with browser() as b:
        page = b.new_page(viewport={"width": 1280, "height": 900})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(html.as_uri())
        plots = page.evaluate("""() => Array.from(document.querySelectorAll('figure svg'))
            .map(s => { const r = s.getBoundingClientRect(); const st = getComputedStyle(s);
                        return {w: r.width, h: r.height, shown: st.visibility === 'visible'
                                && st.display !== 'none', paths: s.querySelectorAll('path').length}; })""")
        page.screenshot(path=str(shot), full_page=True)
    return {"requests": requests, "plots": plots}


def test_public_report_of_a_lab_after_a_deploy_a_rollback_and_a_bench(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    config = lab_toml(tmp_path, lab=DASHBOARD, extra=f'env = {{ HF_TOKEN = "{HF_TOKEN}" }}\n')
    d = lab.up("--config", str(config))
    d.wait_state("chat", "ready")
    d.api("POST", "/api/deployments/chat/deploy", {"set": {"max_model_len": 2048}})
    d.api("POST", "/api/deployments/chat/rollback", {})
    assert d.wait_state("chat", "ready")["revision"] == 1
    shape = ("--model", "chat", "--input-len", "32", "--output-len", "8")
    # a request first: a counter's first sample is its start, so later traffic shows as a rate
    labctl("bench", "--base-url", d.url, *shape, "--num-prompts", "1", "--no-record", check=True)
    time.sleep(1.5)
    labctl("bench", "--base-url", d.url, "--model", "chat", "--num-prompts", "12",
           "--input-len", "32", "--output-len", "8", "--sweep", "concurrency=1,4", check=True)  # fmt: skip
    wait_for(lambda: any(s["figures"].get("tokens_completion", 0) > 0
                         for s in d.api("GET", "/api/report?since=3600")["serving"]),
             30, "a serving rollup with traffic")  # fmt: skip

    out = tmp_path / "public"
    run = labctl("report", "--public", "--since", "1h", "--out", str(out), "--url", d.url,
                 "--json", check=True)  # fmt: skip
    written = run.json()
    assert isinstance(written, dict) and written["public"] is True
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    doc = json.loads((out / "report.json").read_text())
    texts = {"html": html, "md": md, "json": json.dumps(doc)}

    # the records are there
    kinds = [(x["kind"], x["outcome"]) for x in doc["history"]["deploys"]]
    assert ("rollback", "committed") in kinds and ("deploy", "committed") in kinds
    assert doc["bench"][0]["parameter"] == "concurrency" and len(doc["bench"][0]["rows"]) == 2
    assert doc["serving"] and doc["deployments"][0]["model"] == "Qwen/Qwen3-0.6B"
    for text in texts.values():
        assert "Qwen/Qwen3-0.6B" in text and "NVIDIA GeForce RTX 3090" in text
    assert written["markdown_chars"] == len(md) < 60_000
    assert MarkdownIt("commonmark").enable("table").parse(md)

    # and nothing private: the token, the lab's and engines' ports, the home, this machine's name
    port = str(urlsplit(d.url).port)
    engine = urlsplit(d.deployment("chat")["url"])
    host = socket.gethostname()
    for where, text in texts.items():
        assert HF_TOKEN not in text, where
        assert f":{port}" not in text and f":{engine.port}" not in text, where
        assert str(lab.home) not in text and str(tmp_path) not in text, where
        if len(host) >= 3:
            assert host not in text, where
    private_map = out / "PRIVATE-redaction-map.json"
    assert stat.S_IMODE(private_map.stat().st_mode) == 0o600
    mapping = json.loads(private_map.read_text())
    originals = {k for cat in mapping.values() for k in cat}
    assert port in originals or f"127.0.0.1:{port}" in str(mapping)
    assert "redacted" in md

    # the page renders offline: every plot drawn, nothing fetched but the file itself
    shot = Path(os.environ.get(SHOT_ENV) or tmp_path / "report.png")
    seen = screenshot(out / "report.html", shot)
    assert seen["requests"] == [(out / "report.html").as_uri()]
    assert len(seen["plots"]) >= 4  # deploy steps, the sweep's two, serving over time
    for p in seen["plots"]:
        assert p["w"] > 300 and p["h"] > 100 and p["shown"] and p["paths"] > 5
    assert shot.stat().st_size > 50_000

    # the operator's report keeps what the public one hides (but never a credential)
    mine = tmp_path / "private"
    labctl("report", "--since", "1h", "--out", str(mine), "--url", d.url, check=True)
    text = (mine / "report.md").read_text()
    assert str(lab.home) in (mine / "report.json").read_text() and HF_TOKEN not in text
    assert stat.S_IMODE((mine / "report.html").stat().st_mode) == 0o600
    assert not (mine / "PRIVATE-redaction-map.json").exists()


def test_report_refuses_bad_input_in_one_line(labctl: Callable[..., Run], tmp_path: Path) -> None:
    r = labctl("report", "--since", "soon")
    assert r.code == 2 and "--since 'soon'" in r.err and len(r.err.strip().splitlines()) == 1
    (tmp_path / "f").write_text("x")
    r = labctl("report", "--out", str(tmp_path / "f"))
    assert r.code == 2 and "it is a file" in r.err
    r = labctl("report", "--url", "http://127.0.0.1:9")
    assert r.code != 0 and "no lab answers" in r.err
