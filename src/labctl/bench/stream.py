"""One streamed request as the client sees it: the sink its connection feeds, and its result.

:class:`_Stream` turns server-sent events into the timings ``vllm bench serve``
reports: TTFT at the first event with non-empty ``choices``, one ITL sample per
later such event, E2EL at the last of them. A server that answers a streamed
request with one plain JSON document (whisper-server does, for transcriptions)
gives a :meth:`_Stream.whole` answer: TTFT and E2EL both at its end, no ITL.
Kept apart from the run loop so the parsing of one stream can be tested without
a server; :func:`reason` groups the failures it reports for counting.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
import json
from typing import Any

from labctl.bench.http import LagRecorder
from labctl.sim.report import Outcome

MALFORMED = "malformed SSE from the server"
MID_STREAM = "server error mid-stream"


class _Stream:
    """One streamed request: the sink its connection feeds."""

    __slots__ = ("chunks", "done", "error", "first", "future", "itl", "lag", "last", "plain",
                 "prev", "texts", "usage")  # fmt: skip

    def __init__(self, lag: LagRecorder) -> None:
        self.lag = lag
        self.prev = 0.0  # the time of the read before the current one
        self.future: asyncio.Future[tuple[int, bytes, str | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self.first: float | None = None
        self.last = 0.0
        self.itl: list[float] = []
        self.texts: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None
        self.done = False
        self.chunks = 0
        #: The answer came as one JSON document, not as an event stream.
        self.plain = False

    def whole(self, doc: dict[str, Any], text: str, t: float) -> None:
        """Take a complete answer that was not an event stream, read in full at ``t``."""
        self.first = self.last = t
        self.texts = [text] if text else []
        usage = doc.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        self.plain = self.done = True

    def on_event(self, data: bytes, t: float) -> None:
        if data == b"[DONE]":
            self.done = True
            return
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            if self.error is None:
                self.error = f"{MALFORMED}: {_clip(data)}"
            return
        if "error" in doc:
            if self.error is None:
                self.error = f"{MID_STREAM}: {_message(doc)}"
            return
        choices = doc.get("choices")
        if choices:
            if self.first is None:
                self.first = self.prev = t
            else:
                if t == self.last:  # same read: the previous event came at most this much earlier
                    self.lag.coalesced.append(min(self.lag.current, t - self.prev))
                else:
                    self.prev = self.last
                self.itl.append(t - self.last)
            self.last = t
            self.chunks += 1
            c = choices[0] if isinstance(choices[0], dict) else {}
            piece = c.get("text")
            if piece is None:
                delta = c.get("delta")
                piece = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(piece, str) and piece:
                self.texts.append(piece)
        usage = doc.get("usage")
        if isinstance(usage, dict):
            self.usage = usage

    def on_done(self, status: int, body: bytes, error: str | None) -> None:
        if not self.future.done():
            self.future.set_result((status, body, error))


def reason(error: str) -> str:
    """The failure's kind, for counting: one malformed event's text is not a reason of its own."""
    return MALFORMED if error.startswith(MALFORMED) else error


def _clip(data: bytes, n: int = 60) -> str:
    text = data.decode("utf-8", "replace")
    return repr(text if len(text) <= n else text[:n] + "…")


def _message(doc: Any) -> str:
    if isinstance(doc, dict):
        err = doc.get("error", doc)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            if msg:
                return str(msg)
        elif isinstance(err, str):
            return err
        if "detail" in doc:
            return str(doc["detail"])
    return "no message"


@dataclass
class _Result:
    outcome: Outcome
    text: str
    usage_tokens: bool
    chunks: int
    #: The prompt length asked for, to check against what the server counted (0: none).
    requested: int
    #: False where the answer was one JSON document rather than an event stream.
    streamed: bool = True
    #: The length of the audio sent (speech requests only).
    audio_seconds: float | None = None
