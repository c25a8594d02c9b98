"""The built-in dashboard page: one self-contained HTML file (no CDN, works offline)."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def page_html() -> str:
    return resources.files("labctl.dashboard").joinpath("static/index.html").read_text("utf-8")
