"""The gateway's multipart form reader: fields, the file, and the body an engine gets."""

from __future__ import annotations

import time

import pytest

from labctl.gateway.form import FormError, parse

CT = "multipart/form-data; boundary=xYz"


def form(*parts: tuple[str, bytes, str | None], boundary: bytes = b"xYz") -> bytes:
    out = b""
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        ctype = b"Content-Type: audio/wav\r\n" if filename else b""
        out += b"--%s\r\nContent-Disposition: %s\r\n%s\r\n%s\r\n" % (
            boundary,
            disp.encode(),
            ctype,
            value,
        )
    return out + b"--%s--\r\n" % boundary


def join(pieces: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(p) for p in pieces)


def test_fields_and_file_are_found_and_the_file_is_not_copied() -> None:
    audio = (
        b"RIFF" + bytes(range(256)) * 100 + b'name="model"\r\n\r\nevil\r\n'
    )  # look-alikes inside
    raw = form(("file", audio, "a.wav"), ("model", b"whisper-1", None), ("language", b"en", None))
    f = parse(raw, CT)
    assert f.fields == {"model": "whisper-1", "language": "en"}
    assert f.file_bytes is not None and bytes(f.file_bytes) == audio
    assert f.file_bytes.obj is raw  # a view of the client's buffer


def test_the_engine_body_renames_the_model_and_adds_fields_and_parses_again() -> None:
    raw = form(("model", b"speech", None), ("file", b"\x00\x01audio", "a.wav"),
               ("translate", b"false", None))  # fmt: skip
    f = parse(raw, CT)
    out = join(f.for_engine({"model": "openai/whisper-large-v3"}, (("translate", "true"),)))
    again = parse(out, CT)
    assert again.fields == {"model": "openai/whisper-large-v3", "translate": "true"}
    assert again.file_bytes is not None and bytes(again.file_bytes) == b"\x00\x01audio"
    assert join(f.for_engine({})) == raw  # nothing to change: the same bytes


def test_a_quoted_boundary_and_a_preamble_are_read() -> None:
    raw = b"preamble\r\n" + form(("model", b"m", None), boundary=b"a'b(c)")
    assert parse(raw, 'multipart/form-data; boundary="a\'b(c)"').fields == {"model": "m"}


@pytest.mark.parametrize(
    ("raw", "ctype", "says"),
    [
        (b"--xYz\r\n", "multipart/form-data", "names no multipart boundary"),
        (b"hello", CT, "does not hold the boundary"),
        (b'--xYz\r\nContent-Disposition: form-data; name="model"\r\n\r\nm', CT, "cut short"),
        (b"--xYz\r\n" + b"X" * 9000, CT, "no end to its headers"),
        (b"--xYzjunk", CT, "not followed by a line break"),
    ],
)
def test_broken_forms_say_what_is_wrong(raw: bytes, ctype: str, says: str) -> None:
    with pytest.raises(FormError, match=says):
        parse(raw, ctype)


def test_parsing_is_linear_on_hostile_forms() -> None:
    many = b'name="model"\r\n' * 2_000_000  # once quadratic: hours
    start = time.perf_counter()
    with pytest.raises(FormError):
        parse(b"--xYz\r\n" + many, CT)
    parts = form(*[("model", b"m", None)] * 20_000)
    assert parse(parts, CT).fields == {"model": "m"}
    assert time.perf_counter() - start < 5
