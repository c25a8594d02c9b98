"""How much streamed load one `labctl bench` process drives without distorting its numbers.

Starts `labctl sim serve --time-scale 0` (the twin answering as fast as it can)
and, at each concurrency from 64 to 2048, drives it with:

- `labctl bench`: first with no rate limit, then at lower request rates if
  the run was `client_limited`, keeping the highest streamed chunks/s of a run
  that was not. The self-check is the run's own (p99 timestamp error ≤ 1 ms);
- GuideLLM (`guidellm run`, concurrent profile, its default worker processes)
  on the same server, with the same prompt and output lengths; its chunks/s is
  streamed iterations over its benchmark duration. GuideLLM has no self-check.

Both clients and the twin share this machine's cores: the CPU seconds each
client used (its processes and theirs) are printed beside its rate.

Targets: labctl's sustained chunks/s ≥ 2× GuideLLM's, and ≥ 10,000 from one process.

    python benchmarks/bench_capacity.py [--guidellm PATH] [--concurrency 64,256] [--json]

GuideLLM is not a labctl dependency: `make bench-capacity` installs it in
`.venv-guidellm`. It needs a tokenizer for its synthetic prompts; a one-word
tokenizer is written to a temporary folder (no network needed).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from procs import run_measured

MODEL = "Qwen/Qwen3-0.6B"
INPUT_LEN, OUTPUT_LEN = 64, 128
RATIO_TARGET, CHUNKS_TARGET = 2.0, 10_000
TOKENIZER = """
import sys
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import PreTrainedTokenizerFast
tok = Tokenizer(models.WordLevel({"word": 0, "the": 1}, unk_token="word"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok.decoder = decoders.WordPiece(prefix="##")
PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(sys.argv[1])
"""


def start_twin(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    twin = subprocess.Popen(
        [sys.executable, "-m", "labctl", "sim", "serve", "--model", MODEL, "--time-scale", "0",
         "--no-gpu-ledger", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    assert twin.stdout is not None
    url = twin.stdout.readline().strip()
    if not url.startswith("http"):
        raise SystemExit("the twin did not start")
    return twin, url


def labctl_point(url: str, c: int, env: dict[str, str], work: Path) -> dict[str, Any]:
    """The highest chunks/s at concurrency ``c`` whose run was not client_limited."""
    best: dict[str, Any] | None = None
    tried = []
    for rate in ("inf", 800, 400, 200, 100):
        out = work / f"labctl-{c}-{rate}.json"
        n = max(512, 4 * c)
        code, cpu = run_measured(
            [sys.executable, "-m", "labctl", "bench", "--base-url", url, "--model", MODEL,
             "--num-prompts", str(n), "--max-concurrency", str(c), "--request-rate", str(rate),
             "--input-len", str(INPUT_LEN), "--output-len", str(OUTPUT_LEN), "--json-out", str(out)],
            env,
        )  # fmt: skip
        if code != 0:
            raise SystemExit(f"labctl bench failed at concurrency {c}, rate {rate}")
        doc = json.loads(out.read_text())
        point = {
            "rate": rate, "chunks_per_s": doc["chunk_throughput"], "cpu_s": cpu,
            "duration_s": doc["duration"], "client_limited": doc["client_limited"],
            "timestamp_error_p99_ms": doc["client_check"]["timestamp_error_p99_ms"],
            "failed": doc["failed"],
        }  # fmt: skip
        tried.append(point)
        if not doc["client_limited"] and doc["failed"] == 0:
            best = point
            break
    return {"best": best, "tried": tried}


def guidellm_point(
    guidellm: str, url: str, c: int, env: dict[str, str], work: Path, tokenizer: Path
) -> dict[str, Any]:
    out = work / f"guidellm-{c}.json"
    n = max(512, 4 * c)
    code, cpu = run_measured(
        [guidellm, "run", "--backend", f"kind=openai_http,target={url},model={MODEL}",
         "--profile", f"kind=concurrent,streams={c}",
         "--data", f"kind=synthetic_text,prompt_tokens={INPUT_LEN},output_tokens={OUTPUT_LEN}",
         "--tokenizer", f"kind=hf_auto,model={tokenizer}",
         "--constraint", f"kind=max_requests,count={n}",
         "--output", f"kind=json,path={out}", "--disable-console"],
        dict(env, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"),
    )  # fmt: skip
    if code != 0:
        return {"chunks_per_s": None, "cpu_s": cpu, "error": f"guidellm exited {code}"}
    bench = json.loads(out.read_text())["benchmarks"][0]
    m = bench["metrics"]
    iterations = m["request_streaming_iterations_count"]["successful"]["total_sum"]
    errored = m["request_totals"]["errored"]
    return {
        "chunks_per_s": iterations / bench["duration"], "cpu_s": cpu,
        "duration_s": bench["duration"], "failed": errored,
        "output_tokens_per_s": m["output_tokens_per_second"]["successful"]["mean"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guidellm", default=str(Path(".venv-guidellm/bin/guidellm")))
    parser.add_argument("--concurrency", default="64,128,256,512,1024,2048")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    guidellm = args.guidellm if Path(args.guidellm).exists() else shutil.which("guidellm")
    if guidellm is None:
        raise SystemExit("guidellm is missing: `make bench-capacity` installs it in .venv-guidellm")
    py = str(Path(guidellm).parent / "python")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = dict(os.environ, LABCTL_HOME=str(work / "home"))
        tokenizer = work / "tokenizer"
        subprocess.run([py, "-c", TOKENIZER, str(tokenizer)], check=True)
        twin, url = start_twin(env)
        rows = []
        try:
            for c in levels:
                ours = labctl_point(url, c, env, work)
                theirs = guidellm_point(guidellm, url, c, env, work, tokenizer)
                rows.append({"concurrency": c, "labctl": ours, "guidellm": theirs})
                if not args.json:
                    print(row_text(rows[-1]), flush=True)
        finally:
            twin.terminate()
            twin.wait(10)
    ours_best = max((r["labctl"]["best"]["chunks_per_s"] for r in rows if r["labctl"]["best"]),
                    default=0.0)  # fmt: skip
    theirs_best = max((r["guidellm"]["chunks_per_s"] or 0.0 for r in rows), default=0.0)
    ratio = ours_best / theirs_best if theirs_best else float("inf")
    summary = {
        "labctl_sustained_chunks_per_s": ours_best,
        "guidellm_chunks_per_s": theirs_best,
        "ratio": ratio,
        "targets": {"ratio": RATIO_TARGET, "chunks_per_s": CHUNKS_TARGET},
        "met": ratio >= RATIO_TARGET and ours_best >= CHUNKS_TARGET,
        "cpu_count": os.cpu_count(),
    }
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=2))
    else:
        print(
            f"\nsustained (not client_limited): labctl {ours_best:,.0f} chunks/s, GuideLLM "
            f"{theirs_best:,.0f} chunks/s: {ratio:.1f}× (target ≥ {RATIO_TARGET:g}× and ≥ "
            f"{CHUNKS_TARGET:,} chunks/s: {'met' if summary['met'] else 'NOT met'}); "
            f"{os.cpu_count()} cores shared by the twin and the client"
        )
    if not summary["met"]:
        sys.exit(1)


def row_text(row: dict[str, Any]) -> str:
    ours, theirs = row["labctl"], row["guidellm"]
    best = ours["best"]
    if best is None:
        left = "client_limited at every rate tried"
    else:
        left = (f"{best['chunks_per_s']:>9,.0f} chunks/s at rate {best['rate']} "
                f"(ts err p99 {best['timestamp_error_p99_ms']:.2f} ms, {best['cpu_s']:.1f} CPU-s)")  # fmt: skip
    if theirs["chunks_per_s"] is None:
        right = theirs.get("error", "failed")
    else:
        right = f"{theirs['chunks_per_s']:>9,.0f} chunks/s ({theirs['cpu_s']:.1f} CPU-s)"
    ratio = (best["chunks_per_s"] / theirs["chunks_per_s"]
             if best and theirs["chunks_per_s"] else float("nan"))  # fmt: skip
    return f"c={row['concurrency']:<5} labctl {left} | GuideLLM {right} | {ratio:.1f}×"


if __name__ == "__main__":
    main()
