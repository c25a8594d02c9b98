"""How close is `labctl fit` to what vLLM printed at startup?

Reads every row of ../shared/data/fit/vllm-startup-logs.jsonl, plans it with the
same flags, and prints one line per comparison and a summary with GPUStack's
"1.2 × weights + 2 GiB" rule side by side. Misses are listed with the reason.

    python benchmarks/fit_accuracy.py [--data PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import statistics
import sys

from labctl.fit.records import Score, score_record

DEFAULT_DATA = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "fit"
    / "vllm-startup-logs.jsonl"
)

#: The thresholds of the accuracy targets (check: (tolerance, share of rows)).
TARGETS = {"tokens": (0.02, 0.90), "weights": (0.03, 0.90)}
KV_MEDIAN, KV_WITHIN, KV_SHARE = 0.025, 0.05, 0.85


def load(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def evaluate(rows: list[dict[str, object]]) -> tuple[list[Score], list[tuple[int, str]]]:
    scores: list[Score] = []
    skipped: list[tuple[int, str]] = []
    for i, row in enumerate(rows):
        got, why = score_record(i, row)
        scores.extend(got)
        if why:
            skipped.append((i, why))
    return scores, skipped


def summary(scores: list[Score]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for check in ("tokens", "weights", "kv", "kv-gpustack"):
        errs = [abs(s.error) for s in scores if s.check == check]
        if not errs:
            continue
        tol = TARGETS.get(check, (KV_WITHIN, KV_SHARE))[0]
        out[check] = {
            "rows": len(errs),
            "median_abs_error": statistics.median(errs),
            "within_2pct": sum(e <= 0.02 for e in errs) / len(errs),
            "within_3pct": sum(e <= 0.03 for e in errs) / len(errs),
            "within_5pct": sum(e <= 0.05 for e in errs) / len(errs),
            "within_target": sum(e <= tol for e in errs) / len(errs),
        }
    return out


def verdicts(stats: dict[str, dict[str, float]]) -> dict[str, bool]:
    kv = stats.get("kv", {})
    return {
        "tokens within 2% for >= 90% of rows": stats.get("tokens", {}).get("within_target", 0)
        >= 0.90,
        "weights within 3% for >= 90% of rows": stats.get("weights", {}).get("within_target", 0)
        >= 0.90,
        "kv median abs error <= 2.5%": kv.get("median_abs_error", 1) <= KV_MEDIAN,
        "kv within 5% for >= 85% of rows": kv.get("within_5pct", 0) >= KV_SHARE,
    }


def _fmt(check: str, value: float) -> str:
    return f"{value:,.0f}" if check == "tokens" else f"{value:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the report"
    )
    args = ap.parse_args(argv)
    rows = load(args.data)
    scores, skipped = evaluate(rows)
    stats = summary(scores)
    ok = verdicts(stats)
    if args.json:
        print(
            json.dumps(
                {
                    "summary": stats,
                    "targets": ok,
                    "scores": [s.__dict__ | {"error": s.error} for s in scores],
                    "skipped": skipped,
                },
                indent=2,
            )
        )
        return 0 if all(ok.values()) else 1
    print(
        f"{'row':>3}  {'check':<11} {'model':<46} {'gpu':<10} {'vllm':<10} {'logged':>12} {'labctl':>12} {'error':>8}"
    )
    for s in scores:
        if s.check == "kv-gpustack":
            continue
        logged, predicted = (_fmt(s.check, v) for v in (s.logged, s.predicted))
        print(
            f"{s.row:>3}  {s.check:<11} {s.model[:46]:<46} {s.gpu[:10]:<10} {s.version[:10]:<10} "
            f"{logged:>12} {predicted:>12} {s.error:>+8.2%}"
        )
    print()
    print(
        "Summary (abs error; labctl vs GPUStack's 1.2 x weights + 2 GiB rule given the logged weights)"
    )
    for check, st in stats.items():
        print(
            f"  {check:<12} rows {st['rows']:>3}  median {st['median_abs_error']:6.2%}  "
            f"<=2% {st['within_2pct']:6.1%}  <=3% {st['within_3pct']:6.1%}  <=5% {st['within_5pct']:6.1%}"
        )
    if "kv" in stats and "kv-gpustack" in stats:
        print(
            f"  KV memory: labctl median {stats['kv']['median_abs_error']:.2%} vs GPUStack "
            f"{stats['kv-gpustack']['median_abs_error']:.2%}; within 5%: {stats['kv']['within_5pct']:.0%} vs "
            f"{stats['kv-gpustack']['within_5pct']:.0%}"
        )
    print()
    tol = {"tokens": 0.02, "weights": 0.03, "kv": 0.05}
    misses = [s for s in scores if s.check in tol and abs(s.error) > tol[s.check]]
    print(f"Misses ({len(misses)}):")
    for s in misses:
        print(
            f"  row {s.row:>2} {s.check:<8} {s.model[:40]:<40} {s.error:+.2%}  {s.caveat or 'no recorded cause'}"
        )
    print(f"Rows not usable ({len(skipped)}):")
    for i, why in skipped:
        print(f"  row {i:>2} {why}")
    print()
    for name, passed in ok.items():
        print(f"  [{'PASS' if passed else 'FAIL'}] {name}")
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
