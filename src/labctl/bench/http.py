"""A lean HTTP/1.1 client for streamed completions, built for timing.

Each connection is a non-blocking socket read from an event-loop callback,
with no task switch per chunk. On Linux the kernel stamps each read with the
time its data arrived (``SO_TIMESTAMPNS``): that time, moved into the
perf-counter clock, is the read's timestamp, so the client's own delay in
getting to the socket stays out of the latencies, and is measured apart as
its read lag. Reads are only read and stamped in the sockets' callbacks; the
server-sent events in them are parsed once every socket ready in that loop
iteration has been read (:class:`Inbox`), split by :mod:`labctl.sse` (the
gateway's splitter too: any of the three line endings, events cut anywhere).

``https://`` URLs go through asyncio's TLS streams with the same parser,
timestamped when read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
import json
import os
import socket
import ssl
import struct
import sys
import time
from typing import Any, Protocol
import urllib.parse

from labctl import sse
from labctl.sse import Splitter

SO_TIMESTAMPNS = 35  # Linux; socket does not export it
_CMSG = socket.CMSG_SPACE(16) if hasattr(socket, "CMSG_SPACE") else 0
_READ = 1 << 16  # larger reads cost an mmap each: 6× slower per read
#: How long parsing may hold the loop before the sockets are read again.
DRAIN_BUDGET_S = 0.0002


class RequestFailed(Exception):
    """A request that did not complete; ``str()`` is the reason, as counted in ``failed``."""


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    prefix: str  # path before /v1/..., without a trailing slash

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """``http(s)://host[:port][/prefix]``; a trailing ``/v1`` is dropped.

        Raises:
            ValueError: not an http(s) URL with a host.
        """
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(
                f"--base-url {url!r} is not an http(s) URL; e.g. http://127.0.0.1:8000"
            )
        try:
            port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError as exc:
            raise ValueError(f"--base-url {url!r}: {exc}") from exc
        prefix = u.path.rstrip("/")
        if prefix.endswith("/v1"):
            prefix = prefix[:-3]
        return cls(u.scheme, u.hostname, port, prefix)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.prefix}"


class Sink(Protocol):
    """Receives one response as it is parsed."""

    def on_event(self, data: bytes, t: float) -> None:
        """One server-sent event's ``data`` (lines joined), read at perf-counter time ``t``."""

    def on_done(self, status: int, body: bytes, error: str | None) -> None:
        """The response ended: status, the body when it was not an event stream, or an error."""


class _Parser:
    """HTTP/1.1 response → status, then SSE events or a body; keeps the connection's framing."""

    __slots__ = ("body", "buf", "chunk_left", "chunked", "done", "ended", "keep_alive", "length",
                 "sink", "skip", "splitter", "sse", "status")  # fmt: skip

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buf = b""
        self.status = 0
        self.chunked = False
        self.length: int | None = None
        self.chunk_left = 0  # 0: a size line comes next
        self.skip = 0
        self.sse = False
        self.splitter = Splitter()
        self.body = bytearray()
        self.done = False
        self.keep_alive = True
        #: When the last data of the response was read (perf-counter time): the end of an
        #: answer that is not an event stream.
        self.ended = 0.0

    def feed(self, data: bytes, t: float) -> None:
        if self.done:
            return
        self.ended = t
        buf = self.buf + data if self.buf else data
        if not self.status:
            buf = buf.lstrip(b"\r\n")  # the end of the previous response's last chunk
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            self._head(buf[:end].decode("latin-1"))
            buf = buf[end + 4 :]
            if self.length == 0 and not self.chunked:
                self.buf = b""
                self._finish(None)
                return
        if self.chunked:
            payload: list[bytes] = []
            while True:
                if self.skip:  # the CRLF after a chunk's data
                    n = min(self.skip, len(buf))
                    buf, self.skip = buf[n:], self.skip - n
                    if self.skip:
                        break
                if not self.chunk_left:
                    nl = buf.find(b"\r\n")
                    if nl < 0:
                        break
                    try:
                        size = int(buf[:nl].split(b";", 1)[0], 16)
                    except ValueError:
                        self.buf = b""
                        self._finish("malformed chunked encoding from the server")
                        return
                    buf = buf[nl + 2 :]
                    if size == 0:  # the last chunk (trailers, if any, are ignored)
                        self.buf = b""
                        self._body(b"".join(payload), t)
                        self._finish(None)
                        return
                    self.chunk_left = size
                take = buf[: self.chunk_left]
                payload.append(take)
                self.chunk_left -= len(take)
                buf = buf[len(take) :]
                if self.chunk_left:
                    break
                self.skip = 2
            self.buf = buf
            self._body(b"".join(payload), t)
        else:
            self.buf = b""
            self._body(buf, t)
            if self.length is not None:
                self.length -= len(buf)
                if self.length <= 0:
                    self._finish(None)

    def _head(self, head: str) -> None:
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        try:
            self.status = int(parts[1])
        except (IndexError, ValueError):
            self.status = 599
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "transfer-encoding" and "chunked" in value.lower():
                self.chunked = True
            elif name == "content-length" and value.isdigit():
                self.length = int(value)
            elif name == "content-type" and value.startswith("text/event-stream"):
                self.sse = self.status == 200
            elif name == "connection" and value.lower() == "close":
                self.keep_alive = False

    def _body(self, data: bytes, t: float) -> None:
        if not data:
            return
        if not self.sse:
            self.body += data
            return
        for event in self.splitter.feed(data):  # any line endings (labctl.sse)
            payload = sse.data(event)
            if payload is not None:
                self.sink.on_event(payload, t)
                continue
            block = event.strip(b"\r\n")
            if block.strip() and not block.startswith((b":", b"event:", b"id:", b"retry:")):
                self.sink.on_event(block, t)  # not SSE at all: let the request judge it

    def _finish(self, error: str | None) -> None:
        if not self.done:
            self.done = True
            self.sink.on_done(self.status, bytes(self.body), error)

    def eof(self) -> None:
        if not self.done:
            if self.status and not self.chunked and self.length is None:
                self._finish(None)  # body delimited by the close
            else:
                self._finish("the server closed the connection before the response ended")


class LagRecorder:
    """The client's own delays, seconds.

    ``samples``: for each read, how long its data had waited in the kernel. Reads
    are timestamped with the kernel's arrival time, so this wait does not enter
    latencies, except where one read holds several events: all but the last may
    have arrived earlier than the time they get, by up to the read's wait. Those
    bounds are ``coalesced``.
    """

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.coalesced: list[float] = []
        #: The wait of the read being parsed.
        self.current = 0.0


class Inbox:
    """Reads waiting to be parsed, in arrival order.

    A loop iteration first runs the read callback of every ready socket, each
    only reading and stamping; the parsing of all of them follows in one
    callback. Timestamps are then not held back by parsing other responses.
    """

    def __init__(self) -> None:
        self.items: list[tuple[Connection, bytes, float, float, str | None]] = []
        self.scheduled = False

    def post(self, conn: Connection, data: bytes, t: float, lag: float, error: str | None) -> None:
        self.items.append((conn, data, t, lag, error))
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.drain)

    def drain(self) -> None:
        """Parse for at most :data:`DRAIN_BUDGET_S`, then let the loop read what came meanwhile."""
        items = self.items
        stop = time.perf_counter() + DRAIN_BUDGET_S
        i = 0
        try:
            while i < len(items):
                conn, data, t, lag, error = items[i]
                i += 1
                conn.deliver(data, t, lag, error)
                if time.perf_counter() > stop:
                    break
        finally:  # a sink that raised must not stall every other connection
            del items[:i]
            if items:
                asyncio.get_running_loop().call_soon(self.drain)
            else:
                self.scheduled = False


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, endpoint: Endpoint, lag: LagRecorder | None, inbox: Inbox) -> None:
        self.endpoint = endpoint
        self.lag = lag
        self.inbox = inbox
        self.sock: socket.socket | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.parser: _Parser | None = None
        self.closed = False
        self.stamped = False
        self._tls_task: asyncio.Task[None] | None = None

    async def connect(self, ssl_context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        ep = self.endpoint
        if ep.scheme == "https":
            self.reader, self.writer = await asyncio.open_connection(
                ep.host, ep.port, ssl=ssl_context or ssl.create_default_context(), limit=_READ
            )
            return
        infos = await loop.getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM)
        last: OSError | None = None
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if sys.platform == "linux" and self.lag is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    self.stamped = True
                except OSError:
                    pass
            self.sock = sock
            loop.add_reader(sock.fileno(), self._readable)
            return
        raise last or OSError(f"cannot resolve {ep.host}")

    async def send(self, head: bytes, body: bytes, sink: Sink) -> None:
        self.parser = _Parser(sink)
        if self.sock is not None:
            loop = asyncio.get_running_loop()
            if len(body) <= _READ:
                await loop.sock_sendall(self.sock, head + body)
            else:  # a large body (an audio file) is sent as it is, not copied per request
                await loop.sock_sendall(self.sock, head)
                await loop.sock_sendall(self.sock, body)
        else:
            assert self.writer is not None
            self.writer.writelines((head, body))
            await self.writer.drain()
            if self._tls_task is None:
                self._tls_task = asyncio.create_task(self._tls_reader())

    def _readable(self) -> None:
        """Read and stamp now; parse once every socket ready in this loop iteration is read."""
        sock = self.sock
        if sock is None:
            return
        try:
            lag = 0.0
            if self.stamped:
                data, anc, _, _ = sock.recvmsg(_READ, _CMSG)
                t = time.perf_counter()
                if anc and self.lag is not None:
                    sec, nsec = struct.unpack_from("qq", anc[0][2])
                    lag = max(0.0, time.time() - (sec + nsec * 1e-9))
                    self.lag.samples.append(lag)
                    t -= lag  # when it arrived, in the perf-counter clock
            else:
                data = sock.recv(_READ)
                t = time.perf_counter()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            data, t = b"", time.perf_counter()
            self.inbox.post(self, data, t, 0.0, f"connection error: {_reason(exc)}")
            asyncio.get_running_loop().remove_reader(sock.fileno())
            return
        if not data:
            self.inbox.post(self, data, t, lag, None)
            asyncio.get_running_loop().remove_reader(sock.fileno())
            return
        self.inbox.post(self, data, t, lag, "")

    def deliver(self, data: bytes, t: float, lag: float, error: str | None) -> None:
        """Parse one read (``error``: "" for data, None for end of stream, else what failed)."""
        if error != "":
            self._lost(error)
            return
        if self.lag is not None:
            self.lag.current = lag
        parser = self.parser
        if parser is None or parser.done:
            if data.strip(b"\r\n"):  # a last chunk's CRLF may trail on its own
                self._lost("the server sent data outside a response")
            return
        parser.feed(data, t)

    async def _tls_reader(self) -> None:
        assert self.reader is not None
        try:
            while True:
                data = await self.reader.read(_READ)
                t = time.perf_counter()
                if not data:
                    self._lost(None)
                    return
                if self.parser is not None and not self.parser.done:
                    self.parser.feed(data, t)
        except (OSError, ssl.SSLError) as exc:
            self._lost(f"connection error: {exc}")

    def _lost(self, error: str | None) -> None:
        parser = self.parser
        self.close()
        if parser is not None and not parser.done:
            if error is None:
                parser.eof()
            else:
                parser._finish(error)

    @property
    def reusable(self) -> bool:
        p = self.parser
        return not self.closed and p is not None and p.done and p.keep_alive and not p.buf

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
        if self.writer is not None:
            self.writer.close()
        if self._tls_task is not None and self._tls_task is not asyncio.current_task():
            self._tls_task.cancel()


class Client:
    """A pool of keep-alive connections to one endpoint, unlimited in size."""

    def __init__(
        self,
        endpoint: Endpoint,
        api_key: str | None = None,
        lag: LagRecorder | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.lag = lag
        self.inbox = Inbox()
        self.ssl_context = ssl_context
        self.idle: list[Connection] = []
        self.open: set[Connection] = set()
        host = endpoint.host if ":" not in endpoint.host else f"[{endpoint.host}]"
        default = 443 if endpoint.scheme == "https" else 80
        self.host_header = host if endpoint.port == default else f"{host}:{endpoint.port}"
        self.auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""

    def head(
        self, method: str, path: str, length: int, content_type: str = "application/json"
    ) -> bytes:
        return (
            f"{method} {self.endpoint.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
            f"{self.auth}Content-Type: {content_type}\r\nAccept: text/event-stream, "
            f"application/json\r\nContent-Length: {length}\r\nUser-Agent: labctl-bench\r\n\r\n"
        ).encode("latin-1")

    async def request(
        self,
        method: str,
        path: str,
        body: bytes,
        sink: Sink,
        content_type: str = "application/json",
    ) -> Connection:
        """Send a request; the sink then sees the response. Returns its connection.

        Raises:
            RequestFailed: the connection could not be made or the request not sent.
        """
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                break
        else:
            conn = Connection(self.endpoint, self.lag, self.inbox)
            try:
                await conn.connect(self.ssl_context)
            except (OSError, ssl.SSLError) as exc:
                conn.close()
                raise RequestFailed(f"cannot connect to {self.endpoint}: {_reason(exc)}") from exc
        self.open.add(conn)
        try:
            await conn.send(self.head(method, path, len(body), content_type), body, sink)
        except OSError as exc:
            self.discard(conn)
            raise RequestFailed(f"connection error: {_reason(exc)}") from exc
        return conn

    def release(self, conn: Connection) -> None:
        if conn.reusable:
            self.idle.append(conn)
        else:
            self.discard(conn)

    def discard(self, conn: Connection) -> None:
        conn.close()
        self.open.discard(conn)

    def close(self) -> None:
        for conn in list(self.open) + self.idle:
            conn.close()
        self.open.clear()
        self.idle.clear()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class _Collect:
    def __init__(self) -> None:
        self.future: asyncio.Future[tuple[int, bytes, str | None]] = (
            asyncio.get_running_loop().create_future()
        )

    def on_event(self, data: bytes, t: float) -> None:
        pass

    def on_done(self, status: int, body: bytes, error: str | None) -> None:
        if not self.future.done():
            self.future.set_result((status, body, error))


async def call_json(
    client: Client, method: str, path: str, doc: Any = None, limit_s: float = 30.0
) -> tuple[int, Any]:
    """One small non-streamed exchange; returns (status, parsed JSON or None).

    Raises:
        RequestFailed: no response.
    """
    sink = _Collect()
    body = b"" if doc is None else json.dumps(doc).encode()
    conn = await client.request(method, path, body, sink)
    try:
        async with asyncio.timeout(limit_s):
            status, raw, error = await sink.future
    except TimeoutError as exc:
        client.discard(conn)
        raise RequestFailed(f"no answer from {client.endpoint}{path} in {limit_s:g} s") from exc
    client.release(conn)
    if error:
        raise RequestFailed(error)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None
