"""Headless Debian Chromium driven by Playwright, for the dashboard's browser tests."""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import shutil
from typing import Any

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium_path() -> str:
    path = shutil.which("chromium")
    assert path, "chromium is missing: `make test` installs the Debian package chromium"
    return path


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
