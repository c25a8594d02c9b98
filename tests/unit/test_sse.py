"""The server-sent-event splitter the gateway and ``labctl bench`` share (``labctl.sse``).

The property: any list of events (data lines, multi-line data, comments, other fields),
written with any of the three line endings (or a mix where the standard allows one), and cut
into reads anywhere, comes out as the same events, their raw pieces adding up to exactly the
bytes fed. And the gateway's relay, which splits with it: a CRLF stream (sse-starlette's) is
timed event by event and loses the usage event the gateway added.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from labctl.gateway.relay import EventRelay
from labctl.sse import Splitter, data

ENDINGS = (b"\n", b"\r\n", b"\r")

#: Text a line may hold: anything but the line endings (colons and leading spaces included).
text = st.text(st.characters(blacklist_characters="\r\n", codec="utf-8"), max_size=12).map(
    str.encode
)
line = st.one_of(
    st.tuples(st.just("data"), text),
    st.tuples(st.just("comment"), text),
    st.tuples(st.sampled_from(["event", "id"]), text),
)
events = st.lists(st.lists(line, min_size=1, max_size=4), max_size=6)


def serialise(evs: list[list[tuple[str, bytes]]], endings: list[bytes]) -> bytes:
    """The events as a stream; line ``i`` (blank lines included) ends with ``endings[i]``."""
    out, i = [], 0
    for ev in evs:
        for kind, value in ev:
            if kind == "data":
                out.append(b"data: " + value)
            elif kind == "comment":
                out.append(b":" + value)
            else:
                out.append(kind.encode() + b": " + value)
            out.append(endings[i])
            i += 1
        out.append(endings[i])  # the blank line that ends the event
        i += 1
    return b"".join(out)


def expected(evs: list[list[tuple[str, bytes]]]) -> list[bytes]:
    """What a reader sees: each event that has data lines, its values joined with LF."""
    out = []
    for ev in evs:
        values = [v for kind, v in ev if kind == "data"]
        if values:
            out.append(b"\n".join(values))
    return out


def split_feed(stream: bytes, cuts: list[int]) -> tuple[list[bytes], Splitter]:
    splitter = Splitter()
    pieces: list[bytes] = []
    at = 0
    for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
        pieces += splitter.feed(stream[at:cut])
        at = cut
    return pieces, splitter


def lines_in(evs: list[list[tuple[str, bytes]]]) -> int:
    return sum(len(ev) + 1 for ev in evs)


@settings(max_examples=150, deadline=None)
@given(events, st.sampled_from(ENDINGS), st.lists(st.integers(min_value=0), max_size=8))
def test_splitter_events_survive_any_ending_and_any_cut(
    evs: list[list[tuple[str, bytes]]], ending: bytes, cuts: list[int]
) -> None:
    stream = serialise(evs, [ending] * lines_in(evs))
    pieces, splitter = split_feed(stream, cuts)
    # all of it, but at most the LF of a CRLF whose CR already ended the last event
    assert b"".join(pieces) + splitter.pending == stream and splitter.pending in (b"", b"\n")
    assert [d for p in pieces if (d := data(p)) is not None] == expected(evs)


@st.composite
def mixed_endings(draw: st.DrawFn, n: int) -> list[bytes]:
    """Any ending per line, except LF right after a CR (the two would read as one CRLF)."""
    out: list[bytes] = []
    for _ in range(n):
        choices = (b"\r\n", b"\r") if out and out[-1] == b"\r" else ENDINGS
        out.append(draw(st.sampled_from(choices)))
    return out


@settings(max_examples=150, deadline=None)
@given(st.data(), events, st.lists(st.integers(min_value=0), max_size=8))
def test_splitter_events_survive_mixed_endings(
    draws: st.DataObject, evs: list[list[tuple[str, bytes]]], cuts: list[int]
) -> None:
    stream = serialise(evs, draws.draw(mixed_endings(lines_in(evs))))
    pieces, splitter = split_feed(stream, cuts)
    # all of it, but at most the LF of a CRLF whose CR already ended the last event
    assert b"".join(pieces) + splitter.pending == stream and splitter.pending in (b"", b"\n")
    assert [d for p in pieces if (d := data(p)) is not None] == expected(evs)


def test_splitter_hands_back_a_read_of_one_event_as_it_is() -> None:
    chunk = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    pieces = Splitter().feed(chunk)
    assert pieces == [chunk] and pieces[0] is chunk  # no copy on the common path
    assert data(chunk) == b'{"choices":[{"delta":{"content":"x"}}]}'


def test_splitter_a_cr_at_the_end_of_a_read_ends_the_event_at_once() -> None:
    splitter = Splitter()
    assert splitter.feed(b"data: a\r\n\r") == [b"data: a\r\n\r"]  # not held for the next read
    pieces = splitter.feed(b"\ndata: b\r\n\r\n")  # the LF completes the CRLF before it
    assert pieces == [b"\ndata: b\r\n\r\n"] and data(pieces[0]) == b"b"
    assert splitter.feed(b"data: c\r") == [] and splitter.pending == b"data: c\r"
    assert splitter.feed(b"\n\r\n") == [b"data: c\r\n\r\n"]  # CRLF split across reads


def test_splitter_keeps_an_unfinished_event_and_several_per_read() -> None:
    splitter = Splitter()
    assert splitter.feed(b"data: 1\n\ndata: 2\n\ndata: 3") == [b"data: 1\n\n", b"data: 2\n\n"]
    assert splitter.pending == b"data: 3"
    assert splitter.feed(b"\n") == [] and splitter.feed(b"\n") == [b"data: 3\n\n"]


def test_sse_data_joins_lines_and_skips_comments_and_other_fields() -> None:
    assert data(b"data: a\ndata:b\ndata:  c\n\n") == b"a\nb\n c"  # one space dropped, no more
    assert data(b": keep-alive\n\n") is None
    assert data(b"event: ping\nid: 7\n\n") is None
    assert data(b"data\n\n") == b""  # a field with no colon has an empty value
    assert data(b"data:\r\n\r\n") == b""
    assert data(b"\ndata: x\r\r") == b"x"  # the LF of the previous event's CRLF: nothing
    assert data(b"datum: x\n\n") is None


def test_splitter_a_blank_line_at_the_start_is_no_event() -> None:
    pieces = Splitter().feed(b"\n\ndata: x\n\n")
    assert [data(p) for p in pieces] == [None, b"x"]


class _Transport:
    """What the relay writes to, kept."""

    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


class _Times:
    def __init__(self) -> None:
        self.seen: list[float] = []

    def observe(self, value: float, count: int = 1) -> None:
        self.seen += [value] * count


def test_sse_relay_of_a_crlf_stream_times_tokens_and_drops_the_added_usage() -> None:
    """sse-starlette's CRLF events, read cut anywhere (a CR and its LF in two reads): each
    token is timed as it comes, and the usage event the gateway asked for is not relayed."""

    async def go() -> tuple[bytes, list[float], list[float], list[bytes]]:
        transport, ttft, itl, usage = _Transport(), _Times(), _Times(), []
        now = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        relay = EventRelay(transport, False, "sse", False, 0.5, lambda: next(now), ttft, itl,
                           usage.append, lambda: None)  # type: ignore[arg-type]  # fmt: skip
        relay.take()  # the headers went: the relay writes itself from now on
        token = b'data: {"choices": [{"delta": {"content": "x"}}]}\r\n\r\n'
        reads = [token[:-1], token[-1:] + token, b'data: {"choices": [], "usage": {"prompt_tokens":'
                 b' 1}}\r\n\r', b"\ndata: [DONE]\r\n\r\n"]  # fmt: skip
        for read in reads[:-1]:
            relay.feed([read], False)
        relay.feed([reads[-1]], True)
        relay.end(None)
        return transport.written + relay.take(), ttft.seen, itl.seen, usage

    written, ttft, itl, usage = asyncio.run(go())
    assert written == (b'data: {"choices": [{"delta": {"content": "x"}}]}\r\n\r\n' * 2
                       + b"\ndata: [DONE]\r\n\r\n")  # fmt: skip
    assert ttft == [0.5] and itl == [1.0]  # first token at its read's time, then the gap
    assert len(usage) == 1 and b'"usage"' in usage[0]
