from __future__ import annotations

from pathlib import Path

import pytest
from tests.tinymodels import GGUF_TYPES, write_gguf

from labctl.catalog.arch import LayerKind, Role
from labctl.catalog.gguf import arch_from_gguf, read_gguf
from labctl.errors import ModelFormatError


def test_reader_sizes_every_tensor_like_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    total = write_gguf(path)
    gf = read_gguf(path)
    assert sum(t.nbytes for t in gf.tensors) == total
    assert {t.ggml_type for t in gf.tensors} >= {q.name for q in GGUF_TYPES}
    assert gf.file_type == "Q4_K_M"
    assert gf.architecture == "llama"


def test_arch_from_gguf_keeps_stored_bytes_and_geometry(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    total = write_gguf(path, hidden=256, layers=3)
    arch = arch_from_gguf(read_gguf(path))
    assert sum(w.stored_bytes or 0 for w in arch.weights) == total
    assert arch.num_hidden_layers == 3 and arch.num_kv_heads == 2 and arch.head_dim == 64
    assert [k.kind for k in arch.kv_layers] == [LayerKind.FULL] * 3
    roles = {w.name: w.role for w in arch.weights}
    assert roles["token_embd.weight"] is Role.EMBED and roles["blk.0.ffn_gate.weight"] is Role.MLP


def test_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ModelFormatError, match="magic"):
        read_gguf(path)


def test_truncated_tensor_data_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFormatError, match="truncated"):
        read_gguf(path)


def test_truncated_metadata_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelFormatError, match="truncated or corrupt"):
        read_gguf(path)


def test_missing_hyperparameter_names_the_key(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "nohead.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFormatError, match="llama.attention.head_count"):
        arch_from_gguf(read_gguf(path))
