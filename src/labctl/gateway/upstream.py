"""The gateway's HTTP/1.1 client to its engines: keep-alive connections, read by callbacks.

Each connection is an :class:`asyncio.Protocol`. Its response is parsed in the read
callback itself; a streamed body goes to a sink that relays it in that same callback
(:mod:`labctl.gateway.relay`), so a relayed chunk costs no task switch and no future. A
read that is exactly whole chunks is offered to the sink as it is, framing and all (the
client's response is chunked too, so it may go on unchanged); any other read is unframed
into the pieces its chunks hold. A body that is not relayed is gathered and handed over
once whole.

Why not aiohttp's client: per request it builds a request object, a response object, a
stream reader and several futures, and per chunk it wakes the reading task; measured under
``benchmarks/gateway_overhead.py`` that was most of the gateway's CPU per relayed chunk.

Failures are told apart as the gateway needs them: :class:`EngineGone` when the request
surely did not run (the connection was refused, or a fresh one closed before any answer),
which the gateway may retry; :class:`EngineFailed` for anything else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
import contextlib
from typing import Protocol, cast
import urllib.parse

#: Seconds to connect to an engine (as the aiohttp session's ``sock_connect`` was).
CONNECT_TIMEOUT_S = 10.0
#: Bodies at least this large are written apart from the head rather than copied onto it.
_JOIN_LIMIT = 1 << 16


class EngineGone(Exception):
    """The engine never saw the request: refused, or closed before answering; it may go again."""


class EngineFailed(Exception):
    """The engine failed the request some other way (the message says how)."""


class Sink(Protocol):
    """Takes a streamed body as it is read, in the connection's read callback."""

    def relay(self, framed: bytes) -> bool:
        """A read of whole chunks (not the last): True where the sink passed it on as it
        is, framing and all; else it comes again through :meth:`feed`."""

    def feed(self, pieces: list[bytes], last: bool) -> None:
        """More of the body, in the pieces its framing delimits (one per chunk, where it is
        chunked), as one read brought them. ``last``: the body ends with this read
        (:meth:`end` follows at once)."""

    def end(self, error: str | None) -> None:
        """The body is complete (``error`` None) or was cut off (what happened)."""


class Response:
    """An engine's answer: its status and headers once read, then its body or a sink's feed."""

    __slots__ = ("content_type", "status")

    def __init__(self, status: int, content_type: str) -> None:
        self.status = status
        self.content_type = content_type


_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _LENGTH, _CLOSE, _DONE = range(8)


class Connection(asyncio.Protocol):
    """One keep-alive connection to an engine, one request at a time."""

    def __init__(self, pool: Pool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: Requests it has carried; a reused connection that closes unanswered is retried.
        self.used = 0
        self._reset()

    def _reset(self) -> None:
        loop = asyncio.get_running_loop()
        self.head: asyncio.Future[Response] = loop.create_future()
        self.done: asyncio.Future[bytes] = loop.create_future()
        self.sink: Sink | None = None
        self.keep_alive = True
        self._state = _HEAD
        self._buf = b""
        self._left = 0
        self._body: list[bytes] = []
        self._answered = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._state == _CLOSE:
            self._finish(None)  # the body ran to the close, as its headers said
        elif self._state != _DONE:
            reason = f": {exc}" if exc else ""
            self._fail(f"the engine closed the connection{reason}")

    def data_received(self, data: bytes) -> None:
        if self._state == _HEAD:
            buf = self._buf + data if self._buf else data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                if len(buf) > 65536:
                    self._fail("the engine's response headers are larger than 64 KiB")
                    self.abort()
                return
            self._buf = b""
            self._answered = True
            if not self._parse_head(buf[:end]):
                return
            data = buf[end + 4 :]
            if not data and self._state != _DONE:
                return
        state = self._state
        if state == _CHUNK_SIZE and not self._buf:
            sink = self.sink
            if sink is not None and _whole_chunks(data) and sink.relay(data):
                return  # the common case: whole chunks, relayed as they came
        if state in (_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS):
            self._chunked(data)
        elif state == _LENGTH:
            piece = data[: self._left]
            self._left -= len(piece)
            if piece:
                self._deliver([piece], False)
            if not self._left:
                if len(data) > len(piece):
                    self.keep_alive = False  # bytes after the response: not HTTP to rely on
                self._finish(None)
        elif state == _CLOSE:
            self._deliver([data], False)
        # _DONE: bytes after a complete response are not HTTP; the connection is not reused
        elif data:
            self.keep_alive = False

    # -- parsing ------------------------------------------------------------------------

    def _parse_head(self, head: bytes) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            self._fail(f"the engine answered something that is not HTTP: {lines[0][:80]!r}")
            self.abort()
            return False
        self.keep_alive = parts[0] == "HTTP/1.1"
        content_type = "application/json"
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-type":
                content_type = value.strip()
            elif name == "content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
            elif name == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif name == "connection":
                token = value.strip().lower()
                self.keep_alive = token != "close" and (self.keep_alive or token == "keep-alive")
        if status in (204, 304) or 100 <= status < 200:
            length = 0  # no body (1xx is not expected: the gateway sends no Expect)
        if chunked:
            self._state = _CHUNK_SIZE
        elif length is not None and length >= 0:
            self._state, self._left = _LENGTH, length
        elif length is None:
            self._state, self.keep_alive = _CLOSE, False
        else:
            self._fail("the engine sent an invalid Content-Length")
            self.abort()
            return False
        if not self.head.done():
            self.head.set_result(Response(status, content_type))
        if self._state == _LENGTH and not self._left:
            self._finish(None)
        return True

    def _chunked(self, data: bytes) -> None:
        """Chunked framing off ``data``: what each chunk holds goes on as one piece."""
        buf = self._buf + data if self._buf else data
        self._buf = b""
        at, n = 0, len(buf)
        out: list[bytes] = []
        state, left = self._state, self._left
        while at < n:
            if state == _CHUNK_SIZE:
                nl = buf.find(b"\r\n", at)
                if nl < 0:
                    self._buf = buf[at:]
                    if len(self._buf) > 1024:
                        self._malformed("a chunk size line longer than 1 KiB")
                        return
                    break
                try:
                    size = int(buf[at:nl], 16)
                except ValueError:
                    size = _size(buf[at:nl])
                if size < 0:
                    self._malformed(f"a chunk size of {buf[at:nl][:20]!r}")
                    return
                at = nl + 2
                if not size:
                    state = _TRAILERS  # the last chunk: trailers (rare), then a blank line
                    continue
                end = at + size
                if end + 2 <= n and buf.startswith(b"\r\n", end):  # all of it: the common case
                    out.append(buf[at:end])
                    at = end + 2
                    continue
                state, left = _CHUNK_DATA, size
            elif state == _CHUNK_DATA:
                piece = buf[at : at + left]
                out.append(piece)
                at += len(piece)
                left -= len(piece)
                if not left:
                    state, left = _CHUNK_CRLF, 2
            elif state == _CHUNK_CRLF:
                skip = min(left, n - at)
                at += skip
                left -= skip
                if not left:
                    state = _CHUNK_SIZE
            else:  # _TRAILERS
                if buf.startswith(b"\r\n", at):
                    end = at + 2
                else:
                    found = buf.find(b"\r\n\r\n", at)
                    end = found + 4 if found >= 0 else -1
                if end < 0:
                    self._buf = buf[at:]
                    if len(self._buf) > 65536:
                        self._malformed("trailers larger than 64 KiB")
                        return
                    break
                self._state = _DONE
                if out:
                    self._deliver(out, True)
                if end < n:
                    self.keep_alive = False  # bytes after the response: not HTTP to rely on
                self._finish(None)
                return
        self._state, self._left = state, left
        if out:
            self._deliver(out, False)

    def _malformed(self, what: str) -> None:
        self._fail(f"the engine sent malformed chunked encoding ({what})")
        self.abort()

    # -- delivery -----------------------------------------------------------------------

    def _deliver(self, pieces: list[bytes], last: bool) -> None:
        sink = self.sink
        if sink is not None:
            sink.feed(pieces, last)
        else:
            self._body += pieces

    def attach(self, sink: Sink) -> None:
        """Hand the body to ``sink`` from now on (and what of it came with the headers)."""
        self.sink = sink
        body, self._body = self._body, []
        if body:
            sink.feed(body, self.done.done())
        if self.done.done():
            sink.end(None if self.done.exception() is None else str(self.done.exception()))

    def _finish(self, error: str | None) -> None:
        prior = self._state
        self._state = _DONE
        if not self.head.done():
            self.head.set_exception(EngineFailed(error or "no response"))
        if self.done.done():
            return
        if error is None:
            self.done.set_result(b"".join(self._body))  # kept too, for a sink attached late
            if self.sink is not None:
                self.sink.end(None)
            if prior == _CLOSE:
                self.keep_alive = False
        else:
            self.done.set_exception(EngineFailed(error))
            if self.sink is not None:
                self.sink.end(error)
        # nobody may await it (a sink took the body): retrieving it keeps asyncio quiet
        self.done.exception()

    def _fail(self, error: str) -> None:
        self.keep_alive = False
        if not self._answered and not self.head.done():
            self.head.set_exception(_Stale(error) if self.used > 1 else EngineGone(error))
        self._finish(error)

    # -- use ----------------------------------------------------------------------------

    def send(self, data: bytes, body: bytes | Sequence[bytes | memoryview]) -> None:
        assert self.transport is not None
        self.used += 1
        if not isinstance(body, bytes):  # a form spliced from the client's buffer
            self.transport.write(data)
            for piece in body:
                if len(piece):
                    self.transport.write(piece)
        elif len(body) >= _JOIN_LIMIT:
            self.transport.write(data)
            self.transport.write(body)
        else:
            self.transport.write(data + body)

    @property
    def reusable(self) -> bool:
        return not self.closed and self.keep_alive and self._state == _DONE and not self._buf

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        """Drop the connection now: the engine sees its client go and stops the request."""
        self.keep_alive = False
        if self.transport is not None:
            self.transport.abort()


class _Stale(EngineGone):
    """A kept-alive connection that the engine had closed: sent again on a fresh one."""


class Pool:
    """Keep-alive connections to each engine, as many as requests need at once."""

    def __init__(self, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.connect_timeout = connect_timeout
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        self._open: set[Connection] = set()
        self._targets: dict[str, tuple[tuple[str, int], str, str]] = {}

    def target(self, url: str) -> tuple[tuple[str, int], str, str]:
        """``http://host:port[/prefix]`` → ((host, port), Host header, path prefix); cached."""
        found = self._targets.get(url)
        if found is None:
            u = urllib.parse.urlsplit(url)
            host = u.hostname or "127.0.0.1"
            port = u.port or 80
            shown = f"[{host}]" if ":" in host else host
            found = ((host, port), f"{shown}:{port}", u.path.rstrip("/"))
            if len(self._targets) > 1024:
                self._targets.clear()
            self._targets[url] = found
        return found

    async def request(
        self, url: str, path: str, headers: str, body: bytes | Sequence[bytes | memoryview]
    ) -> tuple[Connection, Response]:
        """Send ``POST path`` with ``headers`` (CRLF-ended lines) and ``body`` (bytes, or
        pieces sent one after another); returns the connection and the response's status
        line and headers, once they arrive.

        Raises:
            EngineGone: refused, or closed before answering (the request did not run).
            EngineFailed: anything else.
        """
        key, host, prefix = self.target(url)
        head = (
            f"POST {prefix}{path} HTTP/1.1\r\nHost: {host}\r\n{headers}"
            f"Content-Length: {_length(body)}\r\n\r\n"
        ).encode("latin-1")
        for _ in range(3):
            conn = await self._connection(key)
            conn.send(head, body)
            try:
                return conn, await conn.head
            except _Stale:
                continue  # the engine had closed it while idle: a fresh one
            except BaseException:
                conn.abort()
                raise
        raise EngineGone("the engine closed every connection before answering")

    async def _connection(self, key: tuple[str, int]) -> Connection:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.reusable:
                conn._reset()
                return conn
            conn.abort()
            self._open.discard(conn)
        loop = asyncio.get_running_loop()

        def factory() -> Connection:
            return Connection(self, key)

        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(factory, key[0], key[1])
        except (OSError, TimeoutError) as exc:
            raise EngineGone(f"the engine did not take the connection: {exc}") from None
        self._open.add(conn)
        return conn

    def release(self, conn: Connection) -> None:
        """Keep ``conn`` for the next request where its response ended cleanly, else close it."""
        if conn.reusable:
            self._idle.setdefault(conn.key, []).append(conn)
        else:
            conn.abort()
            self.forget(conn)

    def forget(self, conn: Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        for conn in list(self._open):
            with contextlib.suppress(Exception):
                conn.abort()
        self._open.clear()
        self._idle.clear()


def _size(line: bytes) -> int:
    """A chunk size line's size, after any extensions (``1a;name=value``); -1: not one."""
    digits = line.split(b";", 1)[0].strip()
    if not digits or digits.strip(b"0123456789abcdefABCDEF"):
        return -1
    return int(digits, 16)


def _whole_chunks(data: bytes) -> bool:
    """Whether ``data`` is exactly whole chunks of chunked framing, none of them the last."""
    at, n = 0, len(data)
    while at < n:
        nl = data.find(b"\r\n", at)
        if nl < 0:
            return False
        try:
            size = int(data[at:nl], 16)
        except ValueError:
            return False
        at = nl + size + 4
        if size <= 0 or at > n or not data.startswith(b"\r\n", at - 2):
            return False
    return True


def _length(body: bytes | Sequence[bytes | memoryview]) -> int:
    if isinstance(body, bytes):
        return len(body)
    return sum(memoryview(piece).nbytes for piece in body)
