"""Read safetensors headers: the exact dtype, shape and byte size of each tensor.

Only the JSON header at the front of each file is read, never the data, so a
70B checkpoint is inspected in milliseconds. Sharded checkpoints are found
through ``model.safetensors.index.json`` or by globbing ``*.safetensors``.
Headers and index files are untrusted: their size, nesting, entry counts, names
and shapes are bounded (see :mod:`labctl.catalog.limits`) before and while they
are parsed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
import math
from pathlib import Path
import struct

from labctl.catalog.formats import SAFETENSORS_DTYPES
from labctl.catalog.jsonfile import parse_json, read_json
from labctl.catalog.limits import (
    MAX_DIM,
    MAX_HEADER_ITEMS,
    MAX_INDEX_BYTES,
    MAX_INDEX_ITEMS,
    MAX_NAME,
    MAX_SHARDS,
    MAX_TENSOR_DIMS,
    MAX_TENSORS,
    show,
)
from labctl.errors import ModelFormatError

#: Headers larger than this are not a safetensors file (the format caps them at 100 MB).
_MAX_HEADER = 100_000_000


@dataclass(frozen=True, slots=True)
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
        ModelFormatError: the header is truncated, not JSON, too large or deep, or
            inconsistent.
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
    return parse_header(raw, path, data_size)


def parse_header(raw: bytes, path: Path, data_size: int) -> list[TensorInfo]:
    """The tensors a safetensors header declares: ``raw`` is its JSON (after the 8-byte
    length), ``data_size`` the bytes that follow it in the file; ``path`` names the file in
    messages (a local path, or a repo file read over HTTP).

    Raises:
        ModelFormatError: the header is not JSON, too large or deep, or inconsistent.
    """
    header = parse_json(
        raw,
        f"{path}: header",
        MAX_HEADER_ITEMS,
        "that is more tensors than labctl reads from one file (about 115,000; a 5 GB shard "
        "holds a few thousand); save the checkpoint in shards (max_shard_size='5GB')",
    )
    del raw
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: header must be a JSON object")
    if len(header) > MAX_TENSORS.high:
        raise ModelFormatError(
            f"{path}: header declares {len(header):,} tensors, beyond the limit of "
            f"{MAX_TENSORS.high:,} (the largest published checkpoint has {MAX_TENSORS.published})"
        )
    return [
        _tensor(path, name, entry, data_size)
        for name, entry in header.items()
        if name != "__metadata__"
    ]


def _tensor(path: Path, name: str, entry: object, data_size: int) -> TensorInfo:
    if len(name) > MAX_NAME:
        raise ModelFormatError(
            f"{path}: tensor name {show(name)} is {len(name):,} characters, beyond the limit "
            f"of {MAX_NAME} (published names are under 120); the file is corrupt"
        )
    if not isinstance(entry, dict):
        raise ModelFormatError(f"{path}: tensor {name!r} header entry must be an object")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise ModelFormatError(
            f"{path}: tensor {name!r} has dtype {show(dtype)}; known: {', '.join(SAFETENSORS_DTYPES)}"
        )
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        type(d) is int and d >= 0
        for d in shape  # not bool, not float
    ):
        raise ModelFormatError(
            f"{path}: tensor {name!r} shape {show(shape)} must be a list of sizes"
        )
    if len(shape) > MAX_TENSOR_DIMS:
        raise ModelFormatError(
            f"{path}: tensor {name!r} has {len(shape)} dimensions, beyond the limit of "
            f"{MAX_TENSOR_DIMS} (published tensors have at most 5); the file is corrupt"
        )
    for d in shape:
        if d > MAX_DIM.high:
            raise ModelFormatError(
                f"{path}: tensor {name!r} dimension {d:,} is beyond the limit of "
                f"{MAX_DIM.high:,} (the largest published is {MAX_DIM.published}); "
                "the file is corrupt"
            )
    offsets = entry.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise ModelFormatError(
            f"{path}: tensor {name!r} data_offsets {show(offsets)} fall outside the file's "
            f"{data_size} data bytes; the file is truncated or corrupt"
        )
    nbytes = offsets[1] - offsets[0]
    numel = math.prod(shape)
    expected = numel * SAFETENSORS_DTYPES[dtype]
    if abs(expected - nbytes) > 1:
        raise ModelFormatError(
            f"{path}: tensor {name!r} is {dtype}{shape} ({expected:g} bytes) but its data_offsets "
            f"span {nbytes} bytes"
        )
    return TensorInfo(name, dtype, tuple(shape), nbytes, path.name)


def _shard_name(index: Path, value: object) -> str:
    """A shard file named by the index: a plain file name beside it, nothing else."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_NAME
        or value in (".", "..")
        or Path(value).name != value
        or "\\" in value
    ):
        raise ModelFormatError(
            f"{index}: 'weight_map' names shard {show(value)}, which is not a file name in the "
            "model directory (the shards sit beside the index); re-download the index file"
        )
    return value


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, in shard order.

    Raises:
        ModelFormatError: the index is malformed or too large, names a shard outside
            the directory or one that is missing, or there are too many shards.
    """
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        doc = read_json(index, "index file", MAX_INDEX_BYTES, MAX_INDEX_ITEMS)
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict):
            raise ModelFormatError(
                f"{index}: 'weight_map' must map tensor names to files; re-download the index file"
            )
        names = sorted({_shard_name(index, v) for v in weight_map.values()})
        _check_shards(directory, len(names))
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise ModelFormatError(
                f"{index}: shard {missing[0]} is listed but not present in {directory}; "
                "the download is incomplete"
            )
        return [directory / n for n in names]
    found: list[Path] = []
    for p in directory.glob("*.safetensors"):
        found.append(p)
        if len(found) > MAX_SHARDS.high:
            _check_shards(directory, len(found))
    return sorted(p for p in found if p.is_file())


def _check_shards(directory: Path, count: int) -> None:
    if count > MAX_SHARDS.high:
        raise ModelFormatError(
            f"{directory}: {count:,} or more safetensors shards, beyond the limit of "
            f"{MAX_SHARDS.high:,} (the largest published checkpoint has {MAX_SHARDS.published})"
        )


def iter_checkpoint(directory: Path) -> Iterator[TensorInfo]:
    """Every tensor of every shard, one shard's header in memory at a time.

    Raises:
        ModelFormatError: a header is malformed, or the shards together declare more
            tensors than any published checkpoint by a wide margin.
    """
    total = 0
    for f in checkpoint_files(directory):
        tensors = read_header(f)
        total += len(tensors)
        if total > MAX_TENSORS.high:
            raise ModelFormatError(
                f"{directory}: the safetensors shards declare {total:,} or more tensors, beyond "
                f"the limit of {MAX_TENSORS.high:,} (the largest published checkpoint has "
                f"{MAX_TENSORS.published}); the files are corrupt or not one model"
            )
        yield from tensors


def read_checkpoint(directory: Path) -> list[TensorInfo]:
    """Every tensor of every shard of a checkpoint directory."""
    return list(iter_checkpoint(directory))
