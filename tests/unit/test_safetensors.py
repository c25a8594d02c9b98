from __future__ import annotations

import json
from pathlib import Path
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from labctl.catalog.safetensors import read_checkpoint, read_header
from labctl.errors import ModelFormatError


def test_read_header_reports_exact_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"a": np.zeros((3, 5), np.float16), "b": np.zeros(7, np.int32)}, str(path))
    got = {t.name: (t.dtype, t.shape, t.nbytes) for t in read_header(path)}
    assert got == {"a": ("F16", (3, 5), 30), "b": ("I32", (7,), 28)}


def _raw(tmp_path: Path, header: object, data: bytes = b"", declared: int | None = None) -> Path:
    body = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(
        struct.pack("<Q", declared if declared is not None else len(body)) + body + data
    )
    return path


@pytest.mark.parametrize(
    ("header", "data", "declared", "message"),
    [
        (
            {"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}},
            b"\0" * 4,
            None,
            "fall outside",
        ),
        (
            {"w": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "dtype 'Q9'",
        ),
        (
            {"w": {"dtype": "F16", "shape": [5], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "span 8 bytes",
        ),
        ({"w": {"dtype": "F16", "shape": "4", "data_offsets": [0, 8]}}, b"\0" * 8, None, "shape"),
        ({}, b"", 10**12, "not plausible"),
    ],
)
def test_corrupt_headers_name_the_file_and_the_tensor(
    tmp_path: Path, header: object, data: bytes, declared: int | None, message: str
) -> None:
    path = _raw(tmp_path, header, data, declared)
    with pytest.raises(ModelFormatError, match=message) as err:
        read_header(path)
    assert str(path) in str(err.value)


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"\x10\x00")
    with pytest.raises(ModelFormatError, match="incomplete"):
        read_header(path)


def test_sharded_checkpoint_with_missing_shard(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "part-2.safetensors"}})
    )
    with pytest.raises(ModelFormatError, match="part-2.safetensors"):
        read_checkpoint(tmp_path)
