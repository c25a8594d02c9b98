"""How ``labctl history``, ``deploy`` and ``status`` show a start's load path: each phase as
it went beside its prediction, the phase that dominated, and whether the disk held it up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def step_lines(detail: Mapping[str, Any]) -> list[str]:
    """A start step's load path in two lines: each phase as it went and as predicted, then
    the verdict (none where the step has no verdict)."""
    path, predicted = detail.get("load_path"), detail.get("predicted")
    if not isinstance(path, dict) or not isinstance(path.get("phases"), dict):
        return []
    guess: dict[str, Any] = predicted if isinstance(predicted, dict) else {}
    expected = guess.get("phases")
    expected = expected if isinstance(expected, dict) else {}
    parts = [f"{name} {_pair(took, expected.get(name))}" for name, took in path["phases"].items()]
    parts.append(f"total {_pair(path.get('total_s'), guess.get('total_s'))}")
    return ["took/predicted (s): " + " · ".join(parts), str(path.get("verdict") or "")]


def _pair(took: Any, predicted: Any) -> str:
    shown = f"{took:.2f}" if isinstance(took, (int, float)) else "-"
    return shown + (f"/{predicted:.2f}" if isinstance(predicted, (int, float)) else "/-")


def summary(path: Mapping[str, Any] | None) -> str | None:
    """One line for ``labctl status``: the serving revision's start, as its verdict says."""
    if not path or not path.get("verdict"):
        return None
    return f"last start: {path['verdict']}"


def predicted_line(predicted: Any) -> str | None:
    """A dry run's prediction in one line: the start's total and each phase."""
    if not isinstance(predicted, dict) or not isinstance(predicted.get("phases"), dict):
        return None
    phases = " · ".join(f"{k} {v:.2f} s" for k, v in predicted["phases"].items()
                        if isinstance(v, (int, float)))  # fmt: skip
    disk = predicted.get("disk_gbps")
    read = f"; weights read at {disk:g} GB/s ({predicted.get('disk_basis')})" if disk else ""
    return f"a start should take about {predicted.get('total_s', 0):.2f} s: {phases}{read}"
