"""The report as Markdown that fits a GitHub issue or discussion (under 60,000 characters).

GitHub refuses a body over 65,536 characters; the report keeps under :data:`LIMIT` by
showing fewer rows of the long tables and fewer log lines until it fits (the rest is in
report.json). Long tables and verbatim blocks are folded in ``<details>``, as vLLM's issue
template asks for environment dumps. Cells are HTML-escaped (``|`` and line breaks too),
so nothing in a log line can break a table or inject markup.
"""

from __future__ import annotations

from html import escape
import re
from typing import Any

from labctl.report.view import Section, Table, sections

LIMIT = 60_000
#: (table rows, log lines) tried in turn until the Markdown fits.
BUDGETS = ((100, 40), (50, 20), (25, 10), (10, 5), (5, 0))


def render_markdown(doc: dict[str, Any], limit: int = LIMIT) -> str:
    """The Markdown for ``doc``, under ``limit`` characters."""
    text = ""
    for rows, lines in BUDGETS:
        text = _render(doc, rows, lines, code=True)
        if len(text) < limit:
            return text
    text = _render(doc, 5, 0, code=False)
    return text if len(text) < limit else text[: limit - 80] + "\n\n(cut: see report.json)\n"


def _render(doc: dict[str, Any], rows: int, lines: int, code: bool) -> str:
    meta = doc["meta"]
    kind = "public, redacted" if meta["public"] else "private, for the operator"
    out = [f"# {meta['title']}", "", f"_{kind}; generated {meta['generated']}; the plots are "
           "in report.html and the data in report.json._", ""]  # fmt: skip
    for s in sections(doc, rows=rows, log_lines=lines):
        out += _section(s, code)
    return "\n".join(out).rstrip() + "\n"


def _section(s: Section, code: bool) -> list[str]:
    out = [f"## {s.title}", ""]
    for line in s.text:
        out += [_inline(line), ""]
    for t in s.tables:
        if t.rows:
            out += _table(t)
    if code:
        for summary, text in s.code:
            fence = "`" * max([3, *(len(m) + 1 for m in re.findall(r"`+", text))])
            out += [f"<details><summary>{escape(summary)}</summary>", "", fence, text, fence, "",
                    "</details>", ""]  # fmt: skip
    return out


def _table(t: Table) -> list[str]:
    lines = ["| " + " | ".join(_cell(c) for c in t.columns) + " |",
             "|" + "|".join("---" for _ in t.columns) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    if t.more:
        lines += ["", f"_{t.more} more in report.json_"]
    if t.fold:
        return [f"<details><summary>{escape(t.title)} ({len(t.rows)})</summary>", "", *lines, "",
                "</details>", ""]  # fmt: skip
    return [f"**{_inline(t.title)}**", "", *lines, ""]


def _cell(text: str) -> str:
    return escape(text, quote=False).replace("|", "&#124;").replace("\n", "<br>").replace("\r", "")


def _inline(text: str) -> str:
    """Prose: HTML-escaped; backticks kept for the commands it names."""
    return escape(text, quote=False)
