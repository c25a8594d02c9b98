"""The built-in dashboard in a real browser: live panels under load, a deploy from the page,
screenshots at desktop and phone widths."""

from __future__ import annotations

import os
from pathlib import Path
import re
import time
from typing import Any
import urllib.error
import urllib.request

from tests.integration.browser import browser
from tests.integration.lab import Lab, get

TOKEN = "admin-token-for-the-test"
TWIN = "{ max_model_len = 4096, time_scale = 0.05, load_gbps = 0, gpu_memory_utilization = 0.6 }"
LAB = f"""
[lab]
gpu_backend = "sim"
sim_gpus = "2xrtx-3090"

[gateway]
admin_token = "{TOKEN}"

[dashboard]
interval = 1.0

"""
LAB += "".join(
    f'\n[deployments.{name}]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\ngpus = [{gpu}]\n'
    f"stop_grace = 5\nargs = {TWIN}\n"
    for name, gpu in (("chat", 0), ("code", 1))
)  # one twin on each GPU
GPU_PANELS = {"gpu_memory", "gpu_processes", "gpu_util", "gpu_power", "gpu_temp", "gpu_throttle"}
DEPLOYMENT_PANELS = {"dep_state", "dep_bottleneck", "dep_requests", "dep_kv", "dep_tokens", "dep_api",
                     "dep_ttft", "dep_itl", "dep_e2e", "dep_queue_wait"}  # fmt: skip
DEPLOY_PANELS = {"deploys", "deploy_p90", "memory_release", "restarts", "timeline"}
#: Shows a value once an engine has been stopped (the first deploy after the start).
AFTER_A_STOP = frozenset({"memory_release"})

#: Every panel on the page, and whether it shows a value (JS, run in the page).
PANELS_JS = """() => [...document.querySelectorAll('[data-panel]')].map(el => ({
  panel: el.dataset.panel, live: el.dataset.live === '1',
  card: (el.closest('[data-gpu]') || {dataset: {}}).dataset.gpu ??
        (el.closest('[data-deployment]') || {dataset: {}}).dataset.deployment ?? ''
}))"""


def _shots() -> Path | None:
    """Where to copy the screenshots for the README (LABCTL_SCREENSHOTS), if anywhere."""
    where = os.environ.get("LABCTL_SCREENSHOTS")
    return Path(where) if where else None


def _set_token(page: Any, token: str) -> None:
    box = page.locator("#token")
    box.fill(token)
    box.dispatch_event("change")


def _wait_all_live(
    page: Any, timeout: float = 40.0, but: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Every panel (``but`` those) on every GPU and deployment card with a value."""
    deadline = time.monotonic() + timeout
    panels: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        panels = page.evaluate(PANELS_JS)
        gpus = {p["card"] for p in panels if p["panel"] in GPU_PANELS}
        deps = {p["card"] for p in panels if p["panel"] in DEPLOYMENT_PANELS}
        live = all(p["live"] for p in panels if p["panel"] not in but)
        if gpus == {"0", "1"} and deps == {"chat", "code"} and live:
            return panels
        time.sleep(0.5)
    dead = sorted({(p["card"], p["panel"]) for p in panels if not p["live"]})
    raise AssertionError(f"panels without a live value after {timeout:g} s: {dead}")


def test_the_dashboard_shows_every_panel_live_under_load_and_deploys_from_the_page(
    lab: Lab, tmp_path: Path
) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(LAB)
    d = lab.up("--config", str(config))
    d.token = TOKEN
    d.wait_state("chat", "ready")
    d.wait_state("code", "ready")
    for model in ("chat", "code"):
        lab.start("bench", "--base-url", d.url, "--model", model, "--num-prompts", "5000",
                  "--request-rate", "6", "--max-concurrency", "8", "--input-len", "64",
                  "--output-len", "48")  # fmt: skip
    # The page itself is open; its data takes the admin token as a bearer, or the session
    # cookie that the token (or a one-time link) buys: HttpOnly and SameSite=Strict.
    login = urllib.request.Request(d.url + "/dashboard/login", data=b'{"token": "%s"}' % TOKEN.encode(),
                                   headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(login, timeout=10) as r:
        cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
    session = cookie.split(";", 1)[0]
    for headers, status in (({}, 401), ({"Cookie": "labctl_session=wrong"}, 401),
                            ({"Cookie": f"labctl_token={TOKEN}"}, 401),
                            ({"Cookie": session}, 200),
                            ({"Authorization": f"Bearer {TOKEN}"}, 200)):  # fmt: skip
        req = urllib.request.Request(d.url + "/dashboard/state", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                code = r.status
        except urllib.error.HTTPError as exc:
            code = exc.code
            exc.close()
        assert code == status, (headers, code)
    html = get(d.url + "/")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), (
        "the page loads nothing external"
    )
    shots = _shots()
    with browser() as b:
        page = b.new_page(viewport={"width": 1280, "height": 800})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        # The lab has an admin token: the page's data asks for it.
        page.goto(d.url + "/")
        page.wait_for_selector("#lock:not([hidden])")
        assert page.locator("#gpus [data-gpu]").count() == 0
        assert page.locator("#live").inner_text() == "locked"
        started = time.monotonic()
        _set_token(page, TOKEN)
        page.wait_for_selector('[data-deployment="chat"] [data-panel="dep_ttft"]')
        first_paint = time.monotonic() - started
        panels = _wait_all_live(page, but=AFTER_A_STOP)
        seen = {p["panel"] for p in panels}
        assert seen == GPU_PANELS | DEPLOYMENT_PANELS | DEPLOY_PANELS | {"alerts", "doctor"}
        # Live: the stream keeps adding points, and the load shows as tokens per second.
        n = page.evaluate("S.times.length")
        page.wait_for_function(f"S.times.length >= {n + 2}", timeout=10_000)
        tps = page.locator('[data-deployment="chat"] [data-stat="tokens"] .n').inner_text()
        assert tps not in ("–", "0"), tps
        assert page.locator("#live").inner_text() == "live"
        page.screenshot(path=str(tmp_path / "dashboard-1280x800.png"))
        if shots:
            page.screenshot(path=str(shots / "dashboard-1280x800.png"))

        # The page never sees its session: the cookie is HttpOnly.
        assert "labctl_session" not in page.evaluate("document.cookie")
        # A deploy from the page, through its session cookie.
        timeline = page.locator("#timeline")
        before = timeline.get_attribute("data-latest")
        form = page.locator('form.deploy[data-name="chat"]')
        page.locator('button[data-act="deploy"][data-name="chat"]').click()
        form.locator("textarea").fill("max_model_len=2048")
        form.locator('button[type="submit"]').click()
        page.wait_for_function(
            "document.querySelector('.msg[data-name=chat]').textContent.startsWith('committed')",
            timeout=90_000,
        )
        page.wait_for_function(
            f"document.querySelector('#timeline').dataset.latest !== '{before}'", timeout=10_000
        )
        latest = page.locator(f'#timeline [data-deploy="{timeline.get_attribute("data-latest")}"]')
        head = latest.locator(".head").inner_text()
        assert "chat" in head and "deploy" in head and "committed" in head, head
        steps = latest.locator(".stepl").inner_text()
        for step in ("preflight", "stop", "start", "smoke", "switch"):
            assert step in steps, steps
        assert "freed" in steps, steps  # the stop step says how much memory came back
        assert d.deployment("chat")["revision"] == 2
        _wait_all_live(page)  # the memory release of the stop included
        page.wait_for_function(
            "document.querySelector('[data-deployment=chat] [data-state]').textContent === 'ready'"
        )
        assert all(u.startswith(d.url) for u in requests), [
            u for u in requests if not u.startswith(d.url)
        ]

        phone = b.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                           is_mobile=True, has_touch=True)  # fmt: skip
        phone.goto(d.url + "/")  # a new browser context: the token is asked for again
        phone.wait_for_selector("#lock:not([hidden])")
        _set_token(phone, "not-the-admin-token")  # refused: the page stays locked
        phone.wait_for_function("document.querySelector('#token').placeholder.startsWith('wrong')")
        assert phone.locator("#gpus [data-gpu]").count() == 0
        _set_token(phone, TOKEN)
        _wait_all_live(phone)
        phone.reload()  # remembered now (the session cookie)
        _wait_all_live(phone)
        phone.wait_for_timeout(3000)  # a few points more on the charts
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"
        phone.screenshot(path=str(tmp_path / "dashboard-phone.png"), full_page=True)
        if shots:
            phone.screenshot(path=str(shots / "dashboard-phone.png"))  # the first screen

        # The one-time link that `labctl up` printed logs a fresh browser in, once.
        link = next(line for line in d.printed if "/login?code=" in line).split()[1]
        fresh = b.new_page()
        fresh.goto(link)
        fresh.wait_for_selector('[data-deployment="chat"] [data-panel="dep_ttft"]')
        assert fresh.url.rstrip("/") == d.url
        again = b.new_page()
        again.goto(link)
        assert "used already" in again.content()
    assert first_paint < 5, first_paint  # generous here; benchmarks/dashboard_cost.py measures
    for name in ("dashboard-1280x800.png", "dashboard-phone.png"):
        assert (tmp_path / name).stat().st_size > 20_000
