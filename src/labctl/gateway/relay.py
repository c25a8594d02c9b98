"""A streamed answer relayed event by event, inside the engine connection's read callback.

:class:`EventRelay` is the :class:`~labctl.gateway.upstream.Sink` of a streamed response.
Nothing is parsed as JSON on the way (but the one usage event), no task wakes per read,
and each read from the engine leaves in at most one write to the client:

- the common read, whole chunks of whole events with nothing to drop, goes on exactly as
  it came (the client's response is chunked as the engine's is); a few C-speed counts
  over it find its token events;
- any other read (an event cut across reads, CR or CRLF line endings, the usage event) is
  split into events by :mod:`labctl.sse`, each looked at by byte patterns, and what the
  client should see is written in one chunk.

What is looked for:

- a token event (``"choices": [{``): its arrival time is the first token (TTFT) or the
  next one (ITL; 0 for events read together);
- the usage event (``"choices": []`` with a ``"usage"`` object): its token counts are
  recorded, and it is dropped when the gateway, not the client, asked for it.

Until the request's task has sent the response's headers, and from the read that ends the
stream, output is held for that task instead, so that it goes out with the headers, or
with the response's last chunk, in one write. A client that falls behind pauses reading
from the engine until its transport drains; a client that is gone stops the relay (the
server cancels the request's task, which drops the engine connection). An engine that
stops mid-stream gets an error event in OpenAI's envelope, so the client learns why the
stream ended early.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import json
import re
from typing import Protocol

from labctl.gateway.envelope import body
from labctl.sse import Splitter

#: A token event: ``"choices"`` with an object in its list (what the two fast scans miss).
_TOKEN = re.compile(rb'"choices"\s*:\s*\[\s*\{')
#: The usage event: no choices, and a usage object.
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_COUNTS = re.compile(rb'"(prompt|completion)_tokens"\s*:\s*(\d{1,18})\b')
#: The client's transport holds this much unsent before the engine is read no further.
HIGH_WATER = 1 << 18

TOKEN, USAGE, OTHER = 1, 2, 0
#: A chunk whose data ends an event: two line endings (LF, CR or CRLF), then the chunk's CRLF.
_EVENT_ENDS = tuple(end + b"\r\n" for end in (b"\n\n", b"\r\r", b"\n\r", b"\n\r\n", b"\r\r\n"))


class Observer(Protocol):
    """A histogram's child, as the relay records latencies in it."""

    def observe(self, value: float, count: int = 1) -> None: ...


def kind(event: bytes) -> int:
    """Whether an event carries tokens, is the usage event, or neither: by bytes alone."""
    if b'"choices":[{' in event or b'"choices": [{' in event:
        return TOKEN
    if b'"usage"' in event:
        if _USAGE.search(event) and _NO_CHOICES.search(event):
            return USAGE
    elif b'"choices"' not in event:
        return OTHER
    return TOKEN if _TOKEN.search(event) else OTHER


def _relayable(framed: bytes) -> int:
    """How many token events a read of whole chunks holds, where it may go as it came:
    it ends an event (so no event is left half read) and holds nothing to drop or look
    into (no usage object, no ``choices`` but a list with an object in it); else -1.

    A few C-speed counts over the read, however many events it holds.
    """
    if not framed.endswith(_EVENT_ENDS):
        return -1
    usage = framed.count(b'"usage"')
    if usage:
        nulls = framed.count(b'"usage":null')
        if nulls != usage:
            nulls += framed.count(b'"usage": null')
            if nulls != usage:
                return -1
    keys = framed.count(b'"choices"')
    if not keys:
        return 0
    tokens = framed.count(b'"choices":[{')
    if tokens != keys:
        tokens += framed.count(b'"choices": [{')
    return tokens if tokens == keys else -1


def usage_counts(event: bytes) -> dict[str, int]:
    """``prompt``/``completion`` token counts from a usage event or a whole response body.

    Read off the bytes after the ``usage`` key rather than parsed: an embeddings body holds
    thousands of numbers before it. A count's key cannot occur inside a string (its quotes
    would be escaped there).
    """
    m = _USAGE.search(event) if b'"usage"' in event else None
    if m is None:
        return {}
    out: dict[str, int] = {}
    for name, digits in _COUNTS.findall(event, m.end()):
        kind, n = name.decode(), int(digits)
        if kind not in out and n > 0:
            out[kind] = n
    return out


def error_event(message: str) -> bytes:
    """An error as the last event of a stream, in OpenAI's envelope."""
    return b"data: " + json.dumps(body(message, "api_error", 502)).encode() + b"\n\n"


class EventRelay:
    """Relays one stream's events to the client as they are read (see the module doc).

    Until the request's task has sent the response's headers, and from the read that ends
    the stream, what is to be written is kept in :attr:`held` instead: the task writes it
    with the headers, or with the response's last chunk, in one write.
    """

    __slots__ = ("asked", "chunked", "clock", "done", "first", "gone", "held", "itl", "last",
                 "name", "on_usage", "pause", "paused", "splitter", "t0", "transport", "ttft",
                 "wake")  # fmt: skip

    def __init__(
        self,
        transport: asyncio.Transport,
        chunked: bool,
        name: str,
        asked: bool,
        t0: float,
        clock: Callable[[], float],
        ttft: Observer,
        itl: Observer,
        on_usage: Callable[[bytes], None],
        pause: Callable[[], None],
    ) -> None:
        self.transport = transport
        #: Whether the client's response is in chunked framing (HTTP/1.1) or ends at close.
        self.chunked = chunked
        self.name = name
        #: Whether the client asked for the usage event (else it is dropped).
        self.asked = asked
        self.t0 = t0
        self.clock = clock
        self.ttft, self.itl = ttft, itl
        self.on_usage = on_usage
        #: Stops reading from the engine (until the request's task resumes it).
        self.pause = pause
        self.splitter = Splitter()
        self.first = True
        self.last = 0.0
        self.gone = False
        self.paused = False
        #: None while the stream goes on; "" once it ended, else why it failed.
        self.done: str | None = None
        #: What the request's task is to write (None: the relay writes itself).
        self.held: list[bytes] | None = []
        #: Set when the request's task has something to do: the stream ended, or the client
        #: fell behind (the engine is paused until the client's transport drains).
        self.wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def relay(self, framed: bytes) -> bool:
        """The common case: a read of whole chunks of whole events, none to drop. It goes
        as it came (the client's framing is the engine's), its tokens counted in bulk."""
        if self.held is not None or self.splitter.pending or not self.chunked or self.gone:
            return False
        n = _relayable(framed)
        if n < 0:
            return False
        if n:
            self._tokens(self.clock(), n)
        self._write(framed)
        return True

    def feed(self, pieces: list[bytes], last: bool) -> None:
        if self.gone:
            return
        now = self.clock()
        splitter = self.splitter
        out: list[bytes] = []
        for piece in pieces:
            for event in splitter.feed(piece):
                k = kind(event)
                if k == TOKEN:
                    self._tokens(now, 1)
                elif k == USAGE:
                    self.on_usage(event)
                    if not self.asked:
                        continue  # added by the gateway: not the client's to see
                out.append(event)
        held = self.held
        if held is not None or last:
            if held is None:
                held = self.held = []
            held += out
        elif out:
            data = out[0] if len(out) == 1 else b"".join(out)
            self._write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)

    def _tokens(self, now: float, n: int) -> None:
        """``n`` token events read at ``now``: the first is the first token (TTFT), each
        other one is a gap since the previous event (ITL: 0 for those read together)."""
        if self.first:
            self.first = False
            self.ttft.observe(now - self.t0)
        else:
            self.itl.observe(now - self.last)
        if n > 1:
            self.itl.observe(0.0, n - 1)
        self.last = now

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport.is_closing():
            self.gone = True  # the client went away; its task is cancelled with it
            self._wake()
            return
        transport.write(data)
        if transport.get_write_buffer_size() > HIGH_WATER and not self.paused:
            self.paused = True
            self.pause()
            self._wake()

    def end(self, error: str | None) -> None:
        """The stream ended (``error`` None) or was cut off: its tail goes to the task."""
        if self.done is not None:
            return
        self.done = error or ""
        if self.held is None:
            self.held = []
        # what the engine sent past its last event: as it is, or, where the engine went
        # away mid-stream, an error event instead (as OpenAI's API ends such a stream)
        if error is not None:
            self.held.append(error_event(
                f"{self.name}: {error} in the middle of the stream; retry the request"
            ))  # fmt: skip
        elif self.splitter.pending:
            self.held.append(self.splitter.pending)
        self._wake()

    def take(self) -> bytes:
        """What was held for the request's task to write; the relay writes itself from now
        on (until the stream ends)."""
        held, self.held = self.held or [], None
        return b"".join(held)

    def _wake(self) -> None:
        if not self.wake.done():
            self.wake.set_result(None)

    def rearm(self) -> None:
        """A new wake-up for the request's task, after it handled the last one."""
        self.wake = asyncio.get_running_loop().create_future()
        if self.done is not None or self.gone:
            self.wake.set_result(None)
