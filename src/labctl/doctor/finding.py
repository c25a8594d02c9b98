"""Findings, the checks that make them, and the run of all of them.

A check is a function registered with :func:`check` under a stable code: it reads a
:class:`~labctl.doctor.host.HostView` (and the lab's config) and returns its findings, at
least one (``ok`` included), or raises :class:`Skip` with why it does not apply here. Every
check appears once in a report: in ``findings`` or in ``skipped``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
import inspect
import time
from typing import Any, Literal

from labctl.config import LabConfig
from labctl.doctor.host import HostView
from labctl.errors import ConfigError, UsageError

Severity = Literal["ok", "info", "warn", "fail"]
SEVERITIES: tuple[Severity, ...] = ("ok", "info", "warn", "fail")
#: Where a finding is: "host", "gpu N", "container", "lab".
PLACES = ("host", "gpu", "container", "lab")


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    #: "host", "gpu 0", "container", "lab" (or "lab: deployment NAME").
    place: str
    message: str
    #: What was read: the file, command or NVML call, and the excerpt (one or a few lines).
    evidence: str
    #: One remedy, a command where one exists ("" for ok findings).
    remedy: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Skipped:
    code: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Skip(Exception):
    """Raised by a check that does not apply here; its text says why."""


@dataclass(frozen=True)
class Context:
    """What a check reads: the machine and the lab (None: no lab config given)."""

    host: HostView
    lab: LabConfig | None = None


CheckFn = Callable[[Context], Sequence[Finding]]


@dataclass(frozen=True)
class Check:
    code: str
    #: "host", "gpu", "container" or "lab": where its findings go.
    place: str
    title: str
    #: What `labctl doctor --explain CODE` prints: what it detects, how, and the fix.
    explain: str
    run: CheckFn
    #: The failure-mode catalogue rows it covers (the reference's numbering; empty for
    #: the lab's own checks).
    rows: tuple[int, ...] = ()


REGISTRY: dict[str, Check] = {}


def check(
    code: str, place: str, title: str, explain: str, rows: Iterable[int] = ()
) -> Callable[[CheckFn], CheckFn]:
    """Register a check under ``code`` (unique, kebab-case, stable across releases)."""
    if place not in PLACES:
        raise ValueError(f"check {code}: place {place!r} is not one of {PLACES}")

    def register(fn: CheckFn) -> CheckFn:
        if code in REGISTRY:
            raise ValueError(f"check {code} is registered twice")
        REGISTRY[code] = Check(code, place, title, inspect.cleandoc(explain), fn, tuple(rows))
        return fn

    return register


def checks() -> dict[str, Check]:
    """Every check, once their modules are imported."""
    from labctl.doctor import container_checks, driver_checks, gpu_checks, host_checks, lab_checks  # noqa: F401

    return REGISTRY


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    skipped: tuple[Skipped, ...]
    seconds: float

    @property
    def failed(self) -> bool:
        return any(f.severity == "fail" for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "findings": [f.to_json() for f in self.findings],
            "skipped": [s.to_json() for s in self.skipped],
            "seconds": round(self.seconds, 3),
        }


def ignored_checks(lab: LabConfig | None) -> frozenset[str]:
    """The checks whose failures ``lab`` turns into warnings (``lab.doctor_ignore``).

    Raises:
        ConfigError: a code that names no check, with the codes there are.
    """
    if lab is None:
        return frozenset()
    known = checks()
    for i, code in enumerate(lab.doctor_ignore):
        if code not in known:
            raise ConfigError(f"lab.doctor_ignore[{i}] = {code!r}: not a check of the doctor; "
                              f"use one of {', '.join(sorted(known))}")  # fmt: skip
    return frozenset(lab.doctor_ignore)


def run_checks(ctx: Context, only: Sequence[str] = ()) -> Report:
    """Run every check (or those in ``only``), in code order within each place.

    A check that raises anything but :class:`Skip` becomes a ``warn`` finding naming the
    error: one broken check never hides the others. The failures of a check the lab ignores
    (``lab.doctor_ignore``) are warnings that say so.

    Raises:
        UsageError: a code in ``only`` names no check.
        ConfigError: a code in ``lab.doctor_ignore`` names no check.
    """
    known = checks()
    unknown = [c for c in only if c not in known]
    if unknown:
        raise UsageError(
            f"no check named {', '.join(unknown)}; `labctl doctor --explain` lists them"
        )
    ignored = ignored_checks(ctx.lab)
    started = time.monotonic()
    findings: list[Finding] = []
    skipped: list[Skipped] = []
    order = sorted(known.values(), key=lambda c: (PLACES.index(c.place), c.code))
    for c in order:
        if only and c.code not in only:
            continue
        try:
            found = list(c.run(ctx))
        except Skip as exc:
            skipped.append(Skipped(c.code, str(exc)))
            continue
        except Exception as exc:  # a check's own bug or an unexpected machine
            found = [Finding(c.code, "warn", c.place, f"the check itself failed: {exc}",
                             f"{type(exc).__name__}: {exc}",
                             "report it with `labctl doctor --json` attached")]  # fmt: skip
        if not found:
            raise AssertionError(f"check {c.code} returned no finding and did not skip")
        if c.code in ignored:
            found = [replace(f, severity="warn", message=f"ignored by lab.doctor_ignore: {f.message}")
                     if f.severity == "fail" else f for f in found]  # fmt: skip
        findings.extend(found)
    return Report(tuple(findings), tuple(skipped), time.monotonic() - started)
