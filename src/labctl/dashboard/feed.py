"""Server-sent event streams, and the board's ticks that feed the page's.

A :class:`Feed` fans documents out to every open stream, each with a bounded queue. A
stream that cannot keep up either loses what does not fit (the admin API's event log) or
ends (a dashboard page, which reconnects and reloads its state rather than show a hole).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import json
import time
from typing import Any

from aiohttp import web

from labctl.dashboard.board import Board


def compact(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


class Feed:
    def __init__(self, size: int, end_when_full: bool, stopping: asyncio.Event) -> None:
        self.size = size
        self.end_when_full = end_when_full
        self.stopping = stopping
        self.subscribers: list[asyncio.Queue[dict[str, Any]]] = []
        self._lagging: set[int] = set()

    def __bool__(self) -> bool:
        """Whether anyone listens (so that a document nobody reads is never built)."""
        return bool(self.subscribers)

    def publish(self, doc: dict[str, Any]) -> None:
        for q in list(self.subscribers):
            try:
                q.put_nowait(doc)
            except asyncio.QueueFull:
                if self.end_when_full:
                    self._lagging.add(id(q))  # its stream ends; the page reconnects

    async def serve(
        self, request: web.Request, first: dict[str, Any] | None = None
    ) -> web.StreamResponse:
        """``first``, then each document published, with a keep-alive comment every 15 s."""
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=self.size)
        self.subscribers.append(q)
        try:
            if first is not None:
                await resp.write(f"data: {compact(first)}\n\n".encode())
            while not self.stopping.is_set() and id(q) not in self._lagging:
                try:
                    doc = await asyncio.wait_for(q.get(), 15)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                await resp.write(f"data: {compact(doc)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.subscribers.remove(q)
            self._lagging.discard(id(q))
        return resp


async def run_ticks(
    board: Board, pages: Feed, deployments: Callable[[], list[dict[str, Any]]],
    log: Callable[[str], None], on_tick: Callable[[dict[str, Any]], None] | None = None,
) -> None:  # fmt: skip
    """Every interval: the board's tick (panels, alerts), sent to every open page and then
    to ``on_tick`` (the lab's recorder); a failing tick, rule or ``on_tick`` is logged once,
    and the ticks go on."""
    interval = board.interval
    failed = told = False
    reported: dict[str, str] = {}
    while True:
        try:
            tick = board.tick(time.time())
        except Exception as exc:  # a bad tick must not end the page's updates
            if not failed:
                log(f"dashboard: a tick failed ({type(exc).__name__}: {exc}); retrying")
            failed = True
        else:
            failed = False
            for what, error in board.errors.items():
                if reported.get(what) != error:
                    log(f"dashboard: {what} failed: {error}")
            reported = dict(board.errors)
            if pages:
                pages.publish({"type": "tick", **tick, "deployments": deployments()})
            try:
                if on_tick is not None:
                    on_tick(tick)
            except Exception as exc:  # nor must a failing record
                if not told:
                    log(f"dashboard: recording a tick failed ({type(exc).__name__}: {exc})")
                told = True
            else:
                told = False
        await asyncio.sleep(interval - time.time() % interval)
