"""Findings of one check worded alike: the code and place given once, the evidence kept to
one line."""

from __future__ import annotations

from dataclasses import dataclass

from labctl.doctor.finding import Finding, Severity


def clip(text: str, n: int = 200) -> str:
    """One line of at most ``n`` characters, for a finding's evidence."""
    line = " ".join(text.split())
    return line if len(line) <= n else line[: n - 1] + "…"


@dataclass(frozen=True)
class Say:
    """The findings of one check at one place, with the evidence kept to one line."""

    code: str
    place: str = "host"

    def one(self, severity: Severity, message: str, evidence: str, remedy: str = "") -> Finding:
        return Finding(self.code, severity, self.place, message, clip(evidence), remedy)

    def __call__(
        self, severity: Severity, message: str, evidence: str, remedy: str = ""
    ) -> list[Finding]:
        return [self.one(severity, message, evidence, remedy)]
