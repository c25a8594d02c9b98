"""The README's alert table documents the rules the lab ships, as they are."""

from __future__ import annotations

from pathlib import Path
import re

from labctl.dashboard.alerts import ALERTS

README = Path(__file__).resolve().parents[2] / "README.md"


def _rows() -> dict[str, tuple[str, str]]:
    """alert → (what it fires on, severity), from the table under "| alert | fires on |"."""
    text = README.read_text("utf-8")
    table = text[text.index("| alert | fires on | severity |") :].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:
        m = re.fullmatch(r"\| `(\w+)` \| (.+) \| (\w+) \|", line)
        assert m, f"README.md: cannot read the alert table's row {line!r}"
        rows[m.group(1)] = (m.group(2).replace("\\|", "|"), m.group(3))
    return rows


def test_the_readme_lists_every_shipped_alert_with_its_expression_duration_and_severity() -> None:
    rows = _rows()
    assert list(rows) == [a.name for a in ALERTS], "README.md's alert table and ALERTS differ"
    for a in ALERTS:
        fires_on, severity = rows[a.name]
        assert severity == a.severity, a.name
        assert fires_on.startswith(f"`{a.expr}`"), (a.name, fires_on)
        if a.for_ != "0m":
            assert f"` for {a.for_}" in fires_on, (a.name, fires_on)
