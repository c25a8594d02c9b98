"""The page's alert badge and list in a real browser, fed the board's own documents (no lab):
"no alerts" only when none is pending or firing, and a pending alert shown as pending."""

from __future__ import annotations

import json
from typing import Any

import pytest

from labctl.dashboard.board import Board
from labctl.dashboard.page import page_html
from tests.integration.browser import browser

ORIGIN = "http://lab.test"


def _state(depth: float | None, ticks: int) -> dict[str, Any]:
    """What /dashboard/state answers after ``ticks`` ticks of a queue ``depth`` deep."""

    def samples() -> list[tuple[str, dict[str, str], float]]:
        return [] if depth is None else [("labctl_gateway_queue_depth", {"model": "chat"}, depth)]

    board = Board(samples, interval=5, history=600)
    for i in range(ticks):
        board.tick(1000.0 + 5 * i)
    return {**board.snapshot(), "url": ORIGIN, "gpu_backend": "sim", "gpus": [],
            "deployments": [], "timeline": [], "auth": True}  # fmt: skip


def _show(state: dict[str, Any]) -> dict[str, Any]:
    """The badge and the alert cards the page draws from ``state``."""
    with browser() as b:
        page = b.new_page()

        def answer(route: Any) -> None:
            path = route.request.url.removeprefix(ORIGIN)
            if path == "/":
                route.fulfill(body=page_html(), content_type="text/html")
            elif path == "/dashboard/state":
                route.fulfill(body=json.dumps(state), content_type="application/json")
            elif path == "/dashboard/events":
                route.fulfill(body=": hello\n\n", content_type="text/event-stream")
            else:
                route.fulfill(status=404, body="")

        page.route("**/*", answer)
        page.goto(ORIGIN + "/")
        page.wait_for_function("document.querySelector('#alerts').dataset.live === '1'")
        return dict(
            page.evaluate("""() => ({
          badge: document.querySelector('#alertcount').textContent,
          state: document.querySelector('#alertcount').dataset.state,
          cards: [...document.querySelectorAll('[data-alert]')].map(el => ({
            name: el.dataset.alert, state: el.dataset.state, text: el.textContent})),
        })""")
        )


@pytest.mark.parametrize(
    ("depth", "ticks", "badge", "state"),
    [(None, 1, "no alerts", "none"), (50.0, 1, "1 pending", "pending"),
     (50.0, 30, "1 firing", "firing")],
)  # fmt: skip
def test_dashboard_alert_badge_counts_pending_and_firing(
    depth: float | None, ticks: int, badge: str, state: str
) -> None:
    shown = _show(_state(depth, ticks))
    assert (shown["badge"], shown["state"]) == (badge, state), shown
    if depth is None:
        assert shown["cards"] == []
        return
    (card,) = shown["cards"]
    assert (card["name"], card["state"]) == ("LabRequestsQueueing", state)
    assert ("if it holds" in card["text"]) == (state == "pending"), card
