"""`labctl fit`, `labctl gpus` and `labctl models` as a user runs them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from labctl.catalog.gpus import GPUS
from tests.integration.conftest import Run
from tests.tinymodels import TINY_LLAMA, write_gguf, write_hf_dir

Labctl = Callable[..., Run]

#: The fields DESIGN.md promises in `labctl fit --json`.
FIT_FIELDS = {
    "weights_bytes",
    "kv_bytes_per_token",
    "kv_cache_bytes",
    "kv_cache_tokens",
    "max_concurrency",
    "max_model_len",
    "non_torch_bytes",
    "activation_peak_bytes",
    "cuda_graph_bytes",
    "fits",
    "max_model_len_fit",
    "recommended_args",
}
SEEDS = (
    "google/gemma-4-31B-it",
    "google/gemma-4-26B-A4B-it",
    "cyankiwi/gemma-4-26B-A4B-it-AWQ-4bit",
    "Qwen/Qwen3.6-35B-A3B-FP8",
    "openai/whisper-large-v3",
    "openvla/openvla-7b",
)
#: What `labctl fit --json` carries for OpenVLA, planned as its own server runs it.
OPENVLA_FIELDS = {
    "parts",
    "weights_bytes",
    "kv_bytes_per_request",
    "prefill_tokens",
    "action_tokens",
    "activation_bytes",
    "total_bytes",
    "fits",
    "action_seconds",
    "control_hz",
    "robots_at_control_hz",
    "robots_by_memory",
}


def assert_one_line_error(r: Run, *needles: str) -> None:
    assert r.code != 0
    assert r.out == ""
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("labctl: error: ")
    assert "Traceback" not in r.err
    for n in needles:
        assert n in lines[0], lines[0]


def test_fit_json_has_the_promised_fields(labctl: Labctl) -> None:
    doc = labctl("fit", "Qwen/Qwen3-8B", "--gpu", "h100-sxm", "--json", check=True).json()
    assert isinstance(doc, dict)
    assert doc.keys() >= FIT_FIELDS
    assert doc["fits"] is True and doc["gpu_id"] == "h100-sxm"
    assert doc["kv_bytes_per_token"] == 36 * 8 * 128 * 2 * 2
    assert doc["recommended_args"][:2] == ["--max-model-len", "40960"]


def test_fit_table_for_the_seed_models(labctl: Labctl) -> None:
    r = labctl("fit", *SEEDS, "--gpu", "rtx-3090", check=True)
    for model in SEEDS:
        assert model in r.out
    assert "max context" in r.out


def test_fit_several_models_as_json(labctl: Labctl) -> None:
    doc = labctl("fit", *SEEDS, "--gpu", "rtx-5090", "--json", check=True).json()
    assert isinstance(doc, dict)
    results = doc["results"]
    assert [d["model"] for d in results] == list(SEEDS)
    # vLLM does not serve OpenVLA: it is planned for its own server, with its own fields.
    assert all(d.keys() >= FIT_FIELDS for d in results if d["model"] != "openvla/openvla-7b")
    (vla,) = [d for d in results if d["model"] == "openvla/openvla-7b"]
    assert vla["engine"] == "openvla" and vla.keys() >= OPENVLA_FIELDS


def test_fit_openvla_as_its_server_runs_it_with_robots_at_a_rate(labctl: Labctl) -> None:
    r = labctl("fit", "openvla/openvla-7b", "--gpu", "rtx-3090", "--control-hz", "5", check=True)
    for needle in (
        "OpenVLA's server (transformers",
        "DINOv2 ViT-L/14 (224 px, 4 registers)",
        "303,230,976 parameters",
        "SigLIP So400m/14 (224 px)",
        "427,680,704 parameters",
        "projector (MLP 2176→8704→4096→4096)",
        "6,738,939,904 parameters",
        "14.05 GiB",  # 7,541,237,184 parameters in bf16: 15.08 GB
        "286 positions",
        "action latency",
        "achievable rate",
        "fits:",
        "python vla-scripts/deploy.py --openvla_path openvla/openvla-7b",
    ):
        assert needle in r.out, needle
    (robots,) = [line for line in r.out.splitlines() if line.startswith("robots at 5 Hz: ")]
    assert "(memory allows " in robots and "; the step model " in robots
    assert "one request at a time: without a batching server it is 1 robot at ≤ " in r.out
    assert r.err == ""
    doc = labctl(
        "fit", "openvla/openvla-7b", "--gpu", "rtx-3090", "--control-hz", "5", "--json", check=True
    ).json()
    assert isinstance(doc, dict) and doc.keys() >= OPENVLA_FIELDS
    assert doc["weights_bytes"] == 15_082_474_368 and doc["fits"] is True
    assert robots == (
        f"robots at 5 Hz: {doc['robots_at_control_hz']} (memory allows {doc['robots_by_memory']}; "
        f"the step model {doc['robots_by_step_model']})"
    )
    assert doc["robots_at_control_hz"] == min(doc["robots_by_memory"], doc["robots_by_step_model"])
    assert 0 < doc["action_seconds"] < 1


def test_fit_openvla_in_4_bit_fits_a_card_bf16_does_not(labctl: Labctl) -> None:
    small = ("fit", "openvla/openvla-7b", "--gpu-memory-gib", "8", "--json")
    bf16 = labctl(*small, check=True).json()
    int4 = labctl(*small, "--quantization", "bnb-4bit", check=True).json()
    assert isinstance(bf16, dict) and isinstance(int4, dict)
    assert bf16["fits"] is False and int4["fits"] is True
    assert int4["weights_bytes"] < bf16["weights_bytes"] / 3
    human = labctl("fit", "openvla/openvla-7b", "--gpu-memory-gib", "8", check=True)
    assert "does not fit" in human.out and "--quantization bnb-4bit" in human.out


def test_fit_human_output_explains_a_miss_and_suggests_changes(labctl: Labctl) -> None:
    r = labctl("fit", "google/gemma-4-31B-it", "--gpu", "rtx-3090", check=True)
    assert "does not fit" in r.out
    assert "to make it fit" in r.out and "GPUs" in r.out


def test_fit_a_local_directory_counts_its_tensors(labctl: Labctl, tmp_path: Path) -> None:
    total = write_hf_dir(tmp_path / "tiny", dict(TINY_LLAMA, torch_dtype="float16"), shards=2)
    doc = labctl("fit", str(tmp_path / "tiny"), "--gpu", "rtx-3090", "--json", check=True).json()
    assert isinstance(doc, dict)
    assert doc["weights_bytes"] == total
    assert doc["max_model_len"] == 2048


def test_fit_a_gguf_file_under_llama_cpp(labctl: Labctl, tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    total = write_gguf(path)
    doc = labctl(
        "fit",
        str(path),
        "--engine",
        "llamacpp",
        "--max-model-len",
        "1024",
        "--json",
        "--gpu",
        "rtx-3090",
        check=True,
    ).json()
    assert isinstance(doc, dict)
    assert doc["weights_bytes"] + doc["weights_host_bytes"] == total
    assert doc["kv_cache_tokens"] == 1024 and doc["fits"]
    vllm = labctl("fit", str(path), "--json", "--gpu", "rtx-3090", check=True).json()
    assert isinstance(vllm, dict)
    assert vllm["weights_bytes"] == total


def test_gpus_lists_the_simulated_gpus_and_the_catalog(labctl: Labctl) -> None:
    doc = labctl("gpus", "--json", "--gpu-backend", "sim", check=True).json()
    assert isinstance(doc, dict)
    ids = [g["id"] for g in doc["catalog"]]
    assert "gb10" in ids and "gh200-144gb" in ids and ids == [g.id for g in GPUS]
    (dev,) = doc["devices"]  # the embedded default: one simulated RTX 3090
    assert dev["catalog_id"] == "rtx-3090" and dev["used_bytes"] == 0 and dev["processes"] == []
    human = labctl("gpus", "--gpu-backend", "sim", check=True)
    assert "NVIDIA GeForce RTX 3090" in human.out and "rtx-pro-6000" not in human.out
    assert "rtx-pro-6000" in labctl("gpus", "--catalog", "--gpu-backend", "sim", check=True).out


def test_models_catalog_lists_the_catalog(labctl: Labctl) -> None:
    doc = labctl("models", "--catalog", "--json", check=True).json()
    assert isinstance(doc, dict)
    assert any(m["id"] == "openvla/openvla-7b" and m["seed"] for m in doc["models"])
    assert any(v["format"] == "mxfp4" or v["format"] == "awq" for v in doc["variants"])


def test_unknown_model_suggests_close_matches(labctl: Labctl) -> None:
    assert_one_line_error(
        labctl("fit", "google/gemma-4-31B-instruct"), "Did you mean", "gemma-4-31B-it"
    )
    assert_one_line_error(labctl("fit", "qwen3-8b-instruct"), "unknown model", "Qwen/Qwen3-8B")


def test_unknown_gpu_lists_the_catalog(labctl: Labctl) -> None:
    assert_one_line_error(
        labctl("fit", "Qwen/Qwen3-8B", "--gpu", "rtx-9090"), "unknown GPU", "Known GPUs: rtx-3090"
    )


def test_malformed_config_json_names_file_and_field(labctl: Labctl, tmp_path: Path) -> None:
    d = tmp_path / "broken"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama", "hidden_size": "big"}')
    assert_one_line_error(
        labctl("fit", str(d)), str(d / "config.json"), "'hidden_size' must be a whole number"
    )
    (d / "config.json").write_text("{not json")
    assert_one_line_error(labctl("fit", str(d)), "invalid JSON at line 1")


def test_malformed_gguf_names_file_and_field(labctl: Labctl, tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    write_gguf(path)
    path.write_bytes(path.read_bytes()[:300])
    assert_one_line_error(labctl("fit", str(path)), str(path), "truncated")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (7).to_bytes(4, "little") + b"\0" * 32)
    assert_one_line_error(labctl("fit", str(bad)), "GGUF version 7 is not supported")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--gpu-memory-utilization", "1.2"), ("--gpu-memory-utilization 1.2 is outside (0, 1]",)),
        (("--gpu-memory-utilization", "0"), ("outside (0, 1]",)),
        (
            ("-tp", "3"),
            ("--tensor-parallel-size 3 does not divide the 32 attention heads", "use one of"),
        ),
        (("--kv-cache-memory-bytes", "lots"), ("--kv-cache-memory-bytes",)),
        (("--gpu", "h100-sxm", "--gpu-memory-gib", "80"), ("either --gpu or --gpu-memory-gib",)),
        (("--max-model-len", "abc"), ("--max-model-len",)),
    ],
)
def test_impossible_flags_get_one_line(
    labctl: Labctl, args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    assert_one_line_error(labctl("fit", "Qwen/Qwen3-8B", *args), *needles)


def test_missing_path_is_reported(labctl: Labctl, tmp_path: Path) -> None:
    assert_one_line_error(
        labctl("fit", str(tmp_path / "nowhere.gguf")), "no such file or directory"
    )
