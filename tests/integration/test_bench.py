"""`labctl bench` against the twin (`labctl sim serve`), a real server process on loopback."""

from __future__ import annotations

from collections.abc import Callable
import json
from pathlib import Path
import signal
import time

import pytest

from tests.integration.conftest import Run
from tests.integration.lab import Lab, free_port, wait_for

SMALL = "Qwen/Qwen3-0.6B"
MODEL, GPU = "meta-llama/Llama-3.1-8B-Instruct", "rtx-4090"
FIXTURE = Path(__file__).parent.parent / "fixtures" / "vllm_bench_serve.json"


# One request at a time, a closed loop of 16 clients (each sends its next request as its
# last one ends, while the engine runs the others' steps: `sim run` took such a request in a
# step late, and its mean TTFT came out 12% high), and a burst of 128 that the engine
# batches, chunks and queues on its KV cache.
@pytest.mark.parametrize(("concurrency", "prompts"), [(1, 8), (16, 96), (None, 128)])
def test_measured_ttft_and_tpot_match_the_twins_configured_timing(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path, concurrency: int | None, prompts: int
) -> None:
    """The twin's timing is known: `labctl sim run` computes it offline for the same workload."""
    flags = ["--gpu", GPU, "--max-model-len", "4096"]
    twin = lab.twin("--model", MODEL, *flags, "--load-gbps", "0", "--no-gpu-ledger")
    shape = ["--num-prompts", str(prompts), "--input-len", "512", "--output-len", "32"]
    if concurrency:
        shape += ["--max-concurrency", str(concurrency)]
    expected = labctl("sim", "run", "--model", MODEL, *flags, *shape, "--json", check=True).json()
    out = tmp_path / "bench.json"
    labctl("bench", "--base-url", twin.url, "--model", MODEL, *shape, "--json-out", str(out),
           check=True)  # fmt: skip
    got = json.loads(out.read_text())
    assert isinstance(expected, dict)
    assert got["completed"] == prompts and got["failed"] == 0
    figures = ["mean_ttft_ms", "mean_tpot_ms"]
    if concurrency in (None, 1):
        # The loop's clients come back in waves (16 requests sent at once, then as each
        # ends), and which step a wave's middle request joins moves its medians by up to 9%.
        figures += ["median_ttft_ms", "median_tpot_ms"]
    for figure in figures:
        # A burst's median request sits at the edge of a wave of admissions, and the client's
        # own send ramp (tens of ms for 128 requests; `sim run` sends them at one instant)
        # decides which step the first ones join: 20 ms of ramp moves it 2.5% offline, 50 ms 4%.
        rel = 0.08 if figure == "median_ttft_ms" and not concurrency else 0.05
        assert got[figure] == pytest.approx(expected[figure], rel=rel), figure
    assert got["total_input_tokens"] == 512 * prompts  # the prompt lengths the server counted
    assert got["prompt_len_error_mean"] == 0.0
    assert got["client_check"]["timestamps"] == "kernel"


def test_a_run_reads_like_vllm_bench_serve_output(lab: Lab, labctl: Callable[..., Run]) -> None:
    """A script written against `vllm bench serve` JSON reads ours unchanged."""
    twin = lab.twin("--model", SMALL, "--time-scale", "0", "--no-gpu-ledger")
    run = labctl("bench", "--base-url", twin.url, "--num-prompts", "40", "--max-concurrency", "8",
                 "--input-len", "32", "--output-len", "16", "--request-rate", "400",
                 "--goodput", "ttft:1000", "tpot:100", "--endpoint", "chat", "--json", check=True)  # fmt: skip
    ours = run.json()
    assert isinstance(ours, dict)
    theirs = json.loads(FIXTURE.read_text())

    def read_like_a_vllm_script(doc: dict[str, object]) -> dict[str, float]:
        rate = doc["request_rate"]
        return {
            "qps": float("inf") if rate == "inf" else float(rate),  # type: ignore[arg-type]
            **{k: float(doc[k]) for k in theirs if k.endswith("_ms")},  # type: ignore[arg-type]
            **{k: float(doc[k]) for k in ("duration", "request_throughput", "output_throughput",  # type: ignore[arg-type]
                                          "total_token_throughput", "max_output_tokens_per_s")},
            "completed": int(doc["completed"]),  # type: ignore[call-overload]
        }  # fmt: skip

    assert read_like_a_vllm_script(ours).keys() == read_like_a_vllm_script(theirs).keys()
    assert ours["model_id"] == SMALL  # discovered from /v1/models
    assert ours["completed"] == 40 and ours["request_goodput"] is not None
    assert ours["endpoint_type"] == "openai-chat"
    assert ours["total_input_tokens"] == 40 * 32  # calibrated through the chat template
    assert "e2el_including_client_queue" not in json.dumps(theirs)  # rate inf in the fixture
    assert "median_e2el_including_client_queue_ms" in ours  # a finite rate here, as vLLM does


def test_a_sweep_plots_a_png(lab: Lab, labctl: Callable[..., Run], tmp_path: Path) -> None:
    import matplotlib.image

    twin = lab.twin("--model", SMALL, "--time-scale", "0", "--no-gpu-ledger")
    png, out = tmp_path / "sweep.png", tmp_path / "sweep.json"
    labctl("bench", "--base-url", twin.url, "--num-prompts", "48", "--input-len", "64",
           "--output-len", "32", "--sweep", "concurrency=1,4,16", "--plot", str(png),
           "--json-out", str(out), check=True)  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["sweep"] == {"parameter": "concurrency", "values": [1, 4, 16]}
    assert [r["max_concurrency"] for r in doc["runs"]] == [1, 4, 16]
    assert all(r["completed"] == 48 for r in doc["runs"])
    assert "ttfts" not in doc["runs"][0]  # per-request arrays only with --save-detailed
    image = matplotlib.image.imread(png)
    height, width = image.shape[:2]
    assert width >= 1200 and height >= 600
    assert image[..., :3].std() > 0.05  # lines and text, not a blank canvas
    single = tmp_path / "run.png"
    labctl("bench", "--base-url", twin.url, "--num-prompts", "32", "--input-len", "16",
           "--output-len", "16", "--plot", str(single), check=True)  # fmt: skip
    assert matplotlib.image.imread(single)[..., :3].std() > 0.05


def test_unreachable_server_and_wrong_model_are_counted_with_reasons(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    out = tmp_path / "r.json"
    url = f"http://127.0.0.1:{free_port()}"
    run = labctl("bench", "--base-url", url, "--model", "m", "--num-prompts", "5",
                 "--json-out", str(out))  # fmt: skip
    assert run.code == 8
    assert run.err.strip().endswith(
        f"all 5 requests failed: cannot connect to {url}: connection refused"
    )
    doc = json.loads(out.read_text())
    assert doc["failed"] == 5 and doc["errors_by_reason"] == {
        f"cannot connect to {url}: connection refused": 5
    }
    assert labctl("bench", "--base-url", url, "--num-prompts", "5").err.startswith(
        f"labctl: error: cannot connect to {url}: connection refused; is the server running?"
    )
    twin = lab.twin("--model", SMALL, "--time-scale", "0", "--no-gpu-ledger")
    run = labctl("bench", "--base-url", twin.url, "--model", "nope", "--num-prompts", "4",
                 "--input-len", "8", "--output-len", "4", "--json")  # fmt: skip
    assert run.code == 8
    assert f"model 'nope' is not served at {twin.url} (it serves: {SMALL})" in run.err
    doc = run.json()
    assert isinstance(doc, dict)
    assert doc["errors_by_reason"] == {"HTTP 404: The model `nope` does not exist.": 4}


def test_errors_mid_stream_and_malformed_events_fail_only_their_requests(
    lab: Lab, labctl: Callable[..., Run]
) -> None:
    twin = lab.twin("--model", SMALL, "--time-scale", "0", "--no-gpu-ledger",
                    "--error-mid-stream-every", "5", "--malformed-sse-every", "7")  # fmt: skip
    run = labctl("bench", "--base-url", twin.url, "--num-prompts", "70", "--max-concurrency", "1",
                 "--input-len", "8", "--output-len", "20", "--json", check=True)  # fmt: skip
    doc = run.json()
    assert isinstance(doc, dict)
    # 14 of 70 end with an error event, 10 carry a bad event, 2 (every 35th) both.
    assert doc["errors_by_reason"] == {
        "server error mid-stream: EngineCore encountered an issue (--error-mid-stream-every)": 14,
        "malformed SSE from the server": 8,
    }
    assert doc["completed"] == 48 and doc["failed"] == 22


def test_ctrl_c_stops_and_still_writes_the_partial_results(lab: Lab, tmp_path: Path) -> None:
    twin = lab.twin("--model", SMALL, "--load-gbps", "0", "--no-gpu-ledger")
    out = tmp_path / "partial.json"
    bench = lab.start("bench", "--base-url", twin.url, "--num-prompts", "1000",
                      "--max-concurrency", "4", "--input-len", "16", "--output-len", "64",
                      "--json-out", str(out))  # fmt: skip
    time.sleep(2.5)
    bench.send_signal(signal.SIGINT)
    code = bench.wait(30)
    assert code == 130
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True
    assert doc["completed"] > 0 and doc["not_sent"] > 0
    assert doc["completed"] + doc["failed"] + doc["cut"] + doc["not_sent"] == 1000
    assert doc["cut"] > 0  # four were in flight: cut short, they did not fail
    assert doc["failed"] == 0 and doc["errors_by_reason"] == {}
    wait_for(lambda: twin.proc.poll() is None, what="the twin to keep serving")


def test_datasets_give_the_prompts_and_the_server_counts_them(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    words = ["one two three", "a b c d e f g h", "x " * 20]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": p, "output_len": 8}) + "\n" for p in words))
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(json.dumps([
        {"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": "w " * 10}]}
        for p in words
    ]))  # fmt: skip
    twin = lab.twin("--model", SMALL, "--time-scale", "0", "--no-gpu-ledger")
    common = ["--base-url", twin.url, "--num-prompts", "6", "--json"]
    doc = labctl("bench", *common, "--dataset", str(jsonl), "--warmup", "2", check=True).json()
    assert isinstance(doc, dict)
    assert doc["completed"] == 6  # the warmup requests are not measured
    assert doc["total_input_tokens"] == 2 * (3 + 8 + 20)  # as the server counted them
    assert doc["total_output_tokens"] == 6 * 8
    assert doc["prompt_len_error_mean"] > 0.2  # the file's lengths were estimates (1.3/word)
    doc = labctl("bench", *common, "--dataset", str(sharegpt), check=True).json()
    assert isinstance(doc, dict)
    assert doc["completed"] == 6 and doc["total_output_tokens"] == 6 * 13  # 10 words × 1.3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt key"}\n')
    run = labctl("bench", *common, "--dataset", str(bad))
    assert run.code == 2
    assert run.err.startswith(f"labctl: error: --dataset {bad} is neither ShareGPT JSON")
