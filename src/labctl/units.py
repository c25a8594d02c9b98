"""Byte and time helpers shared by every layer.

Sizes are plain ``int`` bytes internally. Where a figure is printed, GiB
(2**30) is used because that is the unit vLLM and PyTorch print, even where
they label it "GB".
"""

from __future__ import annotations

import math
import re

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
}


def parse_size(text: str) -> int:
    """Parse ``"24GiB"``, ``"8e9"``, ``"512 MiB"`` or ``"1.5G"`` into bytes.

    Decimal suffixes (k, M, G, T, with or without ``B``) mean powers of 1000 and
    binary suffixes (KiB, MiB, GiB, TiB) powers of 1024, as in vLLM's
    ``--kv-cache-memory-bytes``.

    Raises:
        ValueError: the text is not a size.
    """
    m = _SIZE_RE.match(text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(
            f"{text!r} is not a size; write bytes as a number with an optional unit, "
            "e.g. 8000000000, 8G or 7.5GiB"
        )
    value = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a non-negative size")
    return int(value)


def format_bytes(n_bytes: float, digits: int = 2) -> str:
    """Render bytes in the largest binary unit that keeps the number >= 1."""
    sign = "-" if n_bytes < 0 else ""
    value = abs(float(n_bytes))
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if value >= size:
            return f"{sign}{value / size:.{digits}f} {unit}"
    return f"{sign}{value:.0f} B"


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative integers."""
    return -(-a // b)


def round_up(a: int, multiple: int) -> int:
    """Round ``a`` up to a multiple of ``multiple``."""
    return cdiv(a, multiple) * multiple


def parse_duration(text: str) -> float:
    """Parse ``"1s"``, ``"250ms"``, ``"2m"``, ``"24h"``, ``"7d"`` or a bare number of seconds.

    Raises:
        ValueError: the text is not a duration.
    """
    m = re.match(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d)?\s*$", text)
    if not m:
        raise ValueError(f"{text!r} is not a duration; write e.g. 500ms, 1s, 2m, 24h, 7d")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}[m.group(2) or "s"]
    return float(m.group(1)) * scale
