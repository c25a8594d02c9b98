"""The report as one self-contained HTML page: inline CSS and SVG, no script, no request.

The page's Content-Security-Policy forbids every fetch (``default-src 'none'``), so a
browser opening it offline, or from an issue's attachment, shows all of it and asks
nothing of any server. Every text is HTML-escaped; the charts are
:mod:`labctl.report.plots`' SVG, drawn from the same redacted numbers as the tables.
"""

from __future__ import annotations

from html import escape
from typing import Any

from labctl.report.view import Section, Table, sections

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;
background:#f6f7f9}
header,section,footer{max-width:1180px;margin:0 auto;padding:12px 24px}
header{background:#fff;border-bottom:1px solid #d8dde3;max-width:none}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:18px 0 8px;border-bottom:1px solid #d8dde3}
h3{font-size:14px;margin:12px 0 4px}nav a{margin-right:12px;color:#0b5cad;text-decoration:none}
table{border-collapse:collapse;background:#fff;margin:4px 0 10px;font-size:12.5px;
font-variant-numeric:tabular-nums}
th,td{border:1px solid #d8dde3;padding:3px 7px;text-align:left;vertical-align:top;
max-width:420px;overflow-wrap:break-word}
th{background:#eef1f4}.charts{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;background:#fff;border:1px solid #d8dde3;padding:4px}
figure svg{display:block;width:560px;height:auto;max-width:100%}
pre{background:#fff;border:1px solid #d8dde3;padding:8px;overflow:auto;font-size:12px;
max-height:480px}
details{margin:4px 0 10px}summary{cursor:pointer;font-weight:600}.more{color:#57606a}
.public{display:inline-block;background:#dff3e4;color:#14532d;border-radius:4px;padding:1px 8px}
.private{display:inline-block;background:#fde8e8;color:#7f1d1d;border-radius:4px;padding:1px 8px}
"""


def render_html(doc: dict[str, Any]) -> str:
    """The whole page for ``doc`` (:func:`labctl.report.document.assemble`'s, redacted if
    public)."""
    meta = doc["meta"]
    parts = sections(doc)
    badge = ('<span class="public">public: redacted</span>' if meta["public"]
             else '<span class="private">private: for the operator</span>')  # fmt: skip
    out = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{escape(meta['title'])} {escape(str(meta['generated']))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<header><h1>{escape(meta['title'])}</h1><p>{badge} generated "
        f"{escape(str(meta['generated']))}</p><nav>",
        *(f'<a href="#{s.id}">{escape(s.title)}</a>' for s in parts),
        "</nav></header>",
    ]  # fmt: skip
    for s in parts:
        out.append(_section(s))
    out.append(f"<footer><p>labctl {escape(str(meta.get('labctl') or ''))}: "
               "<code>labctl report</code>; the data is in report.json beside this page."
               "</p></footer></body></html>")  # fmt: skip
    return "\n".join(out) + "\n"


def _section(s: Section) -> str:
    out = [f'<section id="{s.id}"><h2>{escape(s.title)}</h2>']
    out += [f"<p>{escape(t)}</p>" for t in s.text]
    out += [_table(t, t.title != s.title) for t in s.tables if t.rows]
    if s.charts:
        out.append('<div class="charts">')
        for title, draw in s.charts:
            out.append(f'<figure aria-label="{escape(title)}">{draw()}</figure>')
        out.append("</div>")
    for summary, text in s.code:
        out.append(f"<details><summary>{escape(summary)}</summary><pre>{escape(text)}</pre>"
                   "</details>")  # fmt: skip
    out.append("</section>")
    return "\n".join(out)


def _table(t: Table, titled: bool = True) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                   for row in t.rows)  # fmt: skip
    more = f'<p class="more">{t.more} more in report.json</p>' if t.more else ""
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"
    if t.fold:
        return f"<details><summary>{escape(t.title)} ({len(t.rows)})</summary>{table}</details>"
    return f"<h3>{escape(t.title)}</h3>{table}" if titled else table
