from __future__ import annotations

import pytest

from labctl.errors import close_matches, did_you_mean
from labctl.units import GiB, MiB, cdiv, format_bytes, parse_duration, parse_size, round_up


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8000000000", 8_000_000_000),
        ("8G", 8_000_000_000),
        ("7.5GiB", int(7.5 * GiB)),
        ("512 MiB", 512 * MiB),
        ("1e3", 1000),
    ],
)
def test_parse_size_accepts_decimal_and_binary_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "-1G", "12 parsecs", "nan"])
def test_parse_size_rejects_non_sizes_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match="e.g."):
        parse_size(text)


def test_format_bytes_picks_the_largest_unit() -> None:
    assert format_bytes(1536 * MiB) == "1.50 GiB"
    assert format_bytes(-2 * GiB) == "-2.00 GiB"
    assert format_bytes(12) == "12 B"


def test_cdiv_and_round_up() -> None:
    assert cdiv(131072, 2096) == 63
    assert round_up(2880, 256) == 3072


def test_parse_duration_units() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2m") == 120
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


def test_close_matches_finds_ids_by_their_tail() -> None:
    ids = ["meta-llama/Llama-3.1-8B-Instruct", "google/gemma-4-31B-it", "Qwen/Qwen3-8B"]
    assert close_matches("llama-3.1-8b-instruct", ids)[0] == "meta-llama/Llama-3.1-8B-Instruct"
    assert "gemma-4-31B-it" in did_you_mean("gemma-4-31b", ids)
    assert did_you_mean("zzzz", ids) == ""
