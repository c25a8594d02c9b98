"""Read safetensors headers: the exact dtype, shape and byte size of each tensor.

Only the JSON header at the front of each file is read, never the data, so a
70B checkpoint is inspected in milliseconds. Sharded checkpoints are found
through ``model.safetensors.index.json`` or by globbing ``*.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
import math
from pathlib import Path
import struct

from labctl.catalog.formats import SAFETENSORS_DTYPES
from labctl.errors import ModelFormatError

#: Headers larger than this are not a safetensors file (the format caps them at 100 MB).
_MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    file: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> list[TensorInfo]:
    """Return the tensors one safetensors file declares.

    Raises:
        ModelFormatError: the header is truncated, not JSON, or inconsistent.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ModelFormatError(
                    f"{path}: file is {len(head)} bytes, too short for a safetensors header; "
                    "the download is probably incomplete"
                )
            (size,) = struct.unpack("<Q", head)
            if size == 0 or size > _MAX_HEADER:
                raise ModelFormatError(
                    f"{path}: header length {size} is not plausible; this is not a safetensors file"
                )
            raw = fh.read(size)
            data_size = fh.seek(0, 2) - 8 - size
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) < size:
        raise ModelFormatError(
            f"{path}: header says {size} bytes but the file ends after {len(raw)}; "
            "the download is probably incomplete"
        )
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path}: header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: header must be a JSON object")
    tensors: list[TensorInfo] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors.append(_tensor(path, name, entry, data_size))
    return tensors


def _tensor(path: Path, name: str, entry: object, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise ModelFormatError(f"{path}: tensor {name!r} header entry must be an object")
    dtype = entry.get("dtype")
    if dtype not in SAFETENSORS_DTYPES:
        raise ModelFormatError(
            f"{path}: tensor {name!r} has dtype {dtype!r}; known: {', '.join(SAFETENSORS_DTYPES)}"
        )
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ModelFormatError(f"{path}: tensor {name!r} shape {shape!r} must be a list of sizes")
    offsets = entry.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise ModelFormatError(
            f"{path}: tensor {name!r} data_offsets {offsets!r} fall outside the file's "
            f"{data_size} data bytes; the file is truncated or corrupt"
        )
    nbytes = offsets[1] - offsets[0]
    numel = 1
    for d in shape:
        numel *= d
    expected = numel * SAFETENSORS_DTYPES[dtype]
    if abs(expected - nbytes) > 1:
        raise ModelFormatError(
            f"{path}: tensor {name!r} is {dtype}{shape} ({expected:g} bytes) but its data_offsets "
            f"span {nbytes} bytes"
        )
    return TensorInfo(name, dtype, tuple(shape), nbytes, path.name)


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, in shard order."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text("utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFormatError(
                f"{index}: cannot read 'weight_map' ({exc}); re-download the index file"
            ) from exc
        if not isinstance(weight_map, dict):
            raise ModelFormatError(f"{index}: 'weight_map' must map tensor names to files")
        names = sorted(set(map(str, weight_map.values())))
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise ModelFormatError(
                f"{index}: shard {missing[0]} is listed but not present in {directory}; "
                "the download is incomplete"
            )
        return [directory / n for n in names]
    return sorted(p for p in directory.glob("*.safetensors") if p.is_file())


def read_checkpoint(directory: Path) -> list[TensorInfo]:
    """Every tensor of every shard of a checkpoint directory."""
    tensors: list[TensorInfo] = []
    for f in checkpoint_files(directory):
        tensors.extend(read_header(f))
    return tensors
