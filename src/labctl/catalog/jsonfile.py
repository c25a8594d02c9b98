"""JSON from model files (config.json, index files, safetensors headers), bounded.

:mod:`labctl.jsontext` does the bounded, strict parse; this module bounds the file's
size and turns its errors into :class:`ModelFormatError`, naming the file and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labctl import jsontext
from labctl.catalog.limits import MAX_JSON_DEPTH
from labctl.errors import ModelFormatError


def read_json(path: Path, what: str, max_bytes: int, max_items: int) -> Any:
    """Read and parse the JSON file at ``path`` within the bounds.

    ``what`` names the file's role in messages that need it ("an index file").

    Raises:
        ModelFormatError: unreadable, too large, too deep, not strict JSON.
    """
    try:
        with path.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > max_bytes:
        raise ModelFormatError(
            f"{path}: larger than {max_bytes // 2**20} MiB, far beyond any real {what}; "
            "check that it is the right file or re-download it"
        )
    return parse_json(raw, str(path), max_items)


def parse_json(
    raw: bytes,
    where: str,
    max_items: int,
    remedy: str = "no real model file holds that many; check the file or re-download it",
) -> Any:
    """Parse ``raw`` as strict JSON of at most ``max_items`` members and elements.

    The count is of commas and colons, an upper bound that costs two C-speed scans
    and bounds the objects (and so the memory) the parse creates.

    Raises:
        ModelFormatError: one line naming ``where``, the problem and the limit.
    """
    try:
        return jsontext.loads(raw, MAX_JSON_DEPTH, max_items)
    except jsontext.JsonError as exc:
        fix = {
            "items": f"; {remedy}",
            "depth": "; real model files nest a few; check the file or re-download it",
            "encoding": "; check the file or re-download it",
        }.get(exc.kind, "")
        raise ModelFormatError(f"{where}: {exc}{fix}") from None
