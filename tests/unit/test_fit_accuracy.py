"""The planner against every usable vLLM startup record in ../shared (the issue's targets)."""

from __future__ import annotations

import json
from pathlib import Path
import statistics

import pytest

from labctl.fit.records import Score, parse_version, score_record


@pytest.fixture(scope="module")
def scores(shared_dir: Path) -> list[Score]:
    rows = [
        json.loads(line)
        for line in (shared_dir / "data/fit/vllm-startup-logs.jsonl").read_text().splitlines()
        if line.strip()
    ]
    out: list[Score] = []
    for i, row in enumerate(rows):
        out.extend(score_record(i, row)[0])
    return out


def _errors(scores: list[Score], check: str) -> list[float]:
    errs = [abs(s.error) for s in scores if s.check == check]
    assert len(errs) >= 40, f"too few usable rows for {check}: {len(errs)}"
    return errs


def test_kv_tokens_from_logged_memory_within_2_percent(scores: list[Score]) -> None:
    errs = _errors(scores, "tokens")
    assert sum(e <= 0.02 for e in errs) / len(errs) >= 0.90


def test_weights_within_3_percent(scores: list[Score]) -> None:
    errs = _errors(scores, "weights")
    assert sum(e <= 0.03 for e in errs) / len(errs) >= 0.90


def test_kv_memory_from_gpu_total_and_flags(scores: list[Score]) -> None:
    errs = _errors(scores, "kv")
    assert statistics.median(errs) <= 0.025
    assert sum(e <= 0.05 for e in errs) / len(errs) >= 0.85


def test_planner_beats_the_gpustack_rule(scores: list[Score]) -> None:
    ours = statistics.median(_errors(scores, "kv"))
    rule = statistics.median(_errors(scores, "kv-gpustack"))
    assert ours * 5 < rule


def test_every_miss_has_a_recorded_cause(scores: list[Score]) -> None:
    tol = {"tokens": 0.02, "weights": 0.03, "kv": 0.05}
    unexplained = [
        s for s in scores if s.check in tol and abs(s.error) > tol[s.check] and not s.caveat
    ]
    assert len(unexplained) <= 2, [(s.row, s.check, s.model) for s in unexplained]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nightly 1acd67a7 (2026-05-08)", ("0.21.0", None)),
        ("nightly ~0.20-0.21 (June 2026)", ("0.21", None)),
        ("0.8.x/0.9.x V0 (Unsloth patched, Aug 2025)", ("0.8", True)),
        ("~0.8.2 (V1, Apr 2025)", ("0.8.2", False)),
        ("nightly (July 2026)", ("0.23.0", None)),
    ],
)
def test_record_versions_parse(text: str, expected: tuple[str, bool | None]) -> None:
    assert parse_version(text) == expected
