"""Server-sent events split out of a byte stream, for the gateway's relay and ``labctl bench``.

One splitter serves both, so that what the gateway relays and what the load client times
are the same events. :class:`Splitter` takes reads as they come and hands back each
complete event's raw bytes, through the blank line that ends it; the pieces concatenate to
exactly the bytes fed, so a relay can pass them on unchanged (or drop one). :func:`data`
joins an event's ``data:`` lines where a reader needs the payload.

Lines may end with CRLF, LF or CR, mixed (the HTML standard's event-stream format;
sse-starlette ends its lines with CRLF). A CR at the end of a read may be the first half
of a CRLF: an event whose blank line ends there is handed back at once, and the LF that
may follow begins the next piece (harmless: a leading line ending is an empty line).

It runs once per relayed read, so the common case is cheap: LF-only reads of whole events
split with ``bytes.find`` alone, and a read that is exactly one event is handed back as it
is. Anything with a CR goes through one regular expression. Imports only the standard
library (it is a foundation module).
"""

from __future__ import annotations

import re

#: Two line endings in a row: the end of an event's last line and the blank line after it.
#: A CR is a line ending of its own only where no LF follows it (else CRLF is one).
_BOUNDARY = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")
_LINE_END = re.compile(rb"\r\n|\r|\n")


class Splitter:
    """Complete events out of reads split anywhere; keeps what is not yet complete."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    @property
    def pending(self) -> bytes:
        """What was fed but ends no event yet (a stream's tail without its blank line)."""
        return self._buf

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events ``chunk`` completes, each as raw bytes through its blank line.

        Their concatenation, followed by :attr:`pending`, is everything fed so far.
        """
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" not in buf:
            # LF only: the common case. One whole event per read is handed back as it is.
            end = buf.find(b"\n\n")
            if end < 0:
                self._buf = buf
                return []
            end += 2
            if end == len(buf):
                self._buf = b""
                return [buf]
            out = [buf[:end]]
            start = end
            while (end := buf.find(b"\n\n", start)) >= 0:
                end += 2
                out.append(buf[start:end])
                start = end
            self._buf = buf[start:]
            return out
        out = []
        start = 0
        for match in _BOUNDARY.finditer(buf):
            end = match.end()
            out.append(buf[start:end])
            start = end
        self._buf = buf[start:]
        return out


def data(event: bytes) -> bytes | None:
    """An event's ``data:`` lines joined with LF (None: it has none, e.g. a comment).

    The leading space after the colon is dropped, as the standard says.
    """
    if event.startswith(b"data:"):
        # the common case: one data line, LF-ended ("data: {...}\n\n")
        nl = event.find(b"\n")
        if nl == len(event) - 2 and b"\r" not in event:
            value = event[5:nl]
            return value[1:] if value[:1] == b" " else value
    values = []
    for line in _LINE_END.split(event):
        if line.startswith(b"data"):
            if line.startswith(b"data:"):
                value = line[5:]
                values.append(value[1:] if value[:1] == b" " else value)
            elif line == b"data":
                values.append(b"")
    return b"\n".join(values) if values else None
