"""A multipart form (the audio endpoints' body): its fields, where its file lies, and the
body an engine gets instead.

The body is read once; parsing finds each part's boundary with C-speed searches and reads
only the parts' headers and small text fields, never copying the file. The engine's body
differs from the client's only where it must: the ``model`` field's value (the served id,
where the client used the deployment's name or an alias) and fields the engine needs added
(whisper-server's ``translate=true``); it goes as pieces of the client's buffer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
import re

__all__ = ["Form", "FormError", "parse"]

#: A part's headers larger than this are not a form's (a client sends a few hundred bytes).
_MAX_HEADERS = 8192
#: Text fields larger than this are kept out of ``fields`` (a prompt is the longest).
_MAX_FIELD = 65536
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)
_NAME = re.compile(rb'(?i)content-disposition:[^\r\n]*?[; ]name="([^"\r\n]{0,256})"')
_FILENAME = re.compile(rb'(?i)content-disposition:[^\r\n]*?filename="([^"\r\n]{0,1024})"')


class FormError(ValueError):
    """A body that is not the multipart form its Content-Type says."""


@dataclass
class Form:
    raw: bytes
    boundary: bytes
    #: Text fields, first occurrence of each name (values up to 64 KiB).
    fields: dict[str, str] = field(default_factory=dict)
    #: Each part: (name, start of its value, end of its value) in ``raw``.
    parts: list[tuple[str, int, int]] = field(default_factory=list)
    #: The ``file`` part's value, where a part named ``file`` carries a file name.
    file: tuple[int, int] | None = None
    #: Where the closing delimiter starts (new parts go before it).
    end: int = 0

    @property
    def file_bytes(self) -> memoryview | None:
        if self.file is None:
            return None
        return memoryview(self.raw)[self.file[0] : self.file[1]]

    def for_engine(
        self, replace: Mapping[str, str], add: Sequence[tuple[str, str]] = ()
    ) -> list[bytes | memoryview]:
        """The body as pieces of ``raw``: the first value of each field in ``replace`` set
        to its new value, and the fields of ``add`` appended (each replacing a field of the
        client's of the same name, which is dropped)."""
        view = memoryview(self.raw)
        dropped = {name for name, _ in add}
        out: list[bytes | memoryview] = []
        at = 0
        done: set[str] = set()
        delim = b"\r\n--" + self.boundary
        for name, start, end in self.parts:
            if name in dropped:  # the whole part goes: from its delimiter to the next
                head = self.raw.rfind(delim, 0, start)
                out.append(view[at:head])
                at = self.raw.find(delim, end)
            elif name in replace and name not in done:
                done.add(name)
                out += [view[at:start], replace[name].encode()]
                at = end
        out.append(view[at : self.end])
        for name, value in add:
            out.append(
                b'\r\n--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s'
                % (self.boundary, name.encode(), value.encode())
            )
        out.append(view[self.end :])
        return out


def parse(raw: bytes, content_type: str) -> Form:
    """The form in ``raw``, by the boundary ``content_type`` names.

    Raises:
        FormError: no boundary, or a body that does not follow it (the reason, one line).
    """
    m = _BOUNDARY.search(content_type)
    if m is None:
        raise FormError("the Content-Type names no multipart boundary")
    boundary = (m.group(1) or m.group(2)).encode("latin-1")
    form = Form(raw, boundary)
    first = b"--" + boundary
    if not raw.startswith(first):
        at = raw.find(b"\r\n" + first)  # a preamble, which the form's reader ignores
        if at < 0:
            raise FormError("the body does not hold the boundary its Content-Type names")
        at += 2
    else:
        at = 0
    delim = b"\r\n--" + boundary
    while True:
        at += len(first)
        if raw.startswith(b"--", at):
            form.end = at - len(first) - 2 if at >= len(first) + 2 else 0
            return form
        if not raw.startswith(b"\r\n", at):
            raise FormError("a form part's delimiter is not followed by a line break")
        head_end = raw.find(b"\r\n\r\n", at + 2, at + 2 + _MAX_HEADERS)
        if head_end < 0:
            raise FormError("a form part has no end to its headers (or headers over 8 KiB)")
        headers = raw[at + 2 : head_end + 2]
        start = head_end + 4
        end = raw.find(delim, start)
        if end < 0:
            raise FormError("the form is cut short: its closing boundary is missing")
        name_m = _NAME.search(headers)
        name = name_m.group(1).decode(errors="replace") if name_m else ""
        form.parts.append((name, start, end))
        is_file = _FILENAME.search(headers) is not None
        if name == "file" and form.file is None:
            form.file = (start, end)
        elif not is_file and name not in form.fields and end - start <= _MAX_FIELD:
            form.fields[name] = raw[start:end].decode(errors="replace")
        form.end = end
        at = end + 2  # past the CRLF: at the next "--boundary"
