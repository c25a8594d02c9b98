from __future__ import annotations

import gguf
import pytest

from labctl.catalog.formats import FORMATS, GGML_TYPES, format_named


def test_ggml_type_table_matches_the_gguf_package() -> None:
    for type_id, t in GGML_TYPES.items():
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
        assert (t.block_size, t.type_size) == (block, size), t.name


@pytest.mark.parametrize(
    ("name", "bytes_per_param"),
    [
        ("bf16", 2.0),
        ("fp8", 1.0),
        ("gptq", 0.5 + 2 / 128),
        ("awq", 0.5 + 2 / 128 + 0.5 / 128),
        ("mxfp4", 0.5 + 1 / 32),
        ("nvfp4", 0.5 + 1 / 16),
        ("bnb-nf4", 0.5 + 4 / 64),
    ],
)
def test_weight_formats_store_the_documented_bytes_per_parameter(
    name: str, bytes_per_param: float
) -> None:
    out_f, in_f = 4096, 4096
    got = FORMATS[name].nbytes(out_f, in_f) / (out_f * in_f)
    assert got == pytest.approx(bytes_per_param, rel=1e-3)


def test_fp8_block_scales_cover_partial_blocks() -> None:
    fmt = FORMATS["fp8-block"]
    assert fmt.nbytes(130, 256) == 130 * 256 + 2 * 2 * 4


def test_format_aliases() -> None:
    assert format_named("W4A16").name == "gptq"  # type: ignore[union-attr]
    assert format_named("auto-round").name == "autoround"  # type: ignore[union-attr]
    assert format_named("nonsense") is None
