"""Regression tests: hostile model files are refused in one line, quickly, in bounded memory.

Every case here once gave a traceback, ran for minutes or took gigabytes (see
tests/hostile_models.py for the writers).
"""

from __future__ import annotations

from collections.abc import Callable
import json
import math
import os
from pathlib import Path
import time
import tracemalloc

from click.testing import CliRunner
import pytest
from tests.hostile_models import (
    GGUF_ARRAY,
    GGUF_STRING,
    GGUF_UINT32,
    HOSTILE_CASES,
    base_config,
    config_dir,
    config_text_dir,
    deep_config_text,
    deep_gguf,
    deep_json,
    gguf_array_header,
    gguf_file,
    gguf_kv,
    gguf_many_strings,
    gguf_string,
    llama_kvs,
    many_tensors_header,
    safetensors_dir,
    safetensors_file,
)
from tests.tinymodels import TINY_LLAMA, write_gguf, write_hf_dir

from labctl.catalog.arch import KVLayer, LayerKind, ModelArch
from labctl.catalog.gguf import read_gguf
from labctl.catalog.gpus import gpu
from labctl.catalog.hf import read_config
from labctl.catalog.limits import LIMITS, MAX_JSON_DEPTH
from labctl.catalog.models import catalog, resolve, variants
from labctl.catalog.safetensors import read_checkpoint, read_header
from labctl.cli.main import cli
from labctl.errors import CatalogError, FitError, LabError, ModelFormatError
from labctl.fit.llamacpp import LlamaCppRequest, plan_llamacpp
from labctl.fit.plan import FitRequest, plan

REQUEST = FitRequest.on_gpu(gpu("rtx-3090"))
#: Bounds every case must keep (resolve and plan together, suggestions included).
SECONDS = 2.0
PEAK_BYTES = 200 * 2**20


def struct_q(n: int) -> bytes:
    return n.to_bytes(8, "little")


def gguf_u32_kv(key: str, value: int) -> bytes:
    return gguf_kv(key, GGUF_UINT32, value.to_bytes(4, "little"))


def refused(model: Path | str, *needles: str) -> str:
    """Resolve and plan ``model``; return the one-line message of the LabError it raises."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(LabError) as err:
            plan(resolve(str(model)), REQUEST)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert "\n" not in message and message.strip() == message
    for needle in needles:
        assert needle in message, message
    assert elapsed < SECONDS, f"{elapsed:.2f} s: {message}"
    assert peak < PEAK_BYTES, f"{peak / 2**20:.0f} MiB: {message}"
    return message


# --- the named hostile cases ----------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("case", "write"), HOSTILE_CASES, ids=[c for c, _ in HOSTILE_CASES])
def test_resolve_refuses_each_hostile_case_in_one_line(
    tmp_path: Path, case: str, write: Callable[[Path], Path]
) -> None:
    model = write(tmp_path)
    message = refused(model, str(model))
    assert isinstance(message, str) and case


# --- config.json: architecture bounds -------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_hidden_layers", 1_000_000),
        ("num_attention_heads", 1_000_000),
        ("num_key_value_heads", 1_000_000),
        ("head_dim", 10**9),
        ("hidden_size", 10**9),
        ("intermediate_size", 10**12),
        ("vocab_size", 10**12),
        ("max_position_embeddings", 10**12),
        ("sliding_window", 10**12),
        ("num_experts", 10**6),
    ],
)
def test_config_field_beyond_any_published_model_is_refused(
    tmp_path: Path, key: str, value: int
) -> None:
    model = config_dir(tmp_path / "m", **{key: value})
    message = refused(model, "config.json", repr(key), f"{value:,}", f"{LIMITS[key].high:,}")
    assert "published" in message


def test_top_k_above_the_expert_count_is_refused(tmp_path: Path) -> None:
    cfg = base_config("Qwen/Qwen3-30B-A3B")
    cfg["num_experts_per_tok"] = cfg["num_experts"] + 1
    model = config_text_dir(tmp_path / "m", json.dumps(cfg))
    refused(model, "num_experts_per_tok", str(cfg["num_experts"]))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("key", ["num_hidden_layers", "num_attention_heads", "hidden_size"])
@pytest.mark.parametrize(
    "value", [0, -1, 1.5, True, "8", [8], {"n": 8}, math.nan, math.inf, -math.inf, 2**63]
)
def test_config_count_that_is_not_a_positive_whole_number_is_refused(
    tmp_path: Path, key: str, value: object
) -> None:
    refused(config_dir(tmp_path / "m", **{key: value}), "config.json")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_number_anywhere_in_config_names_the_file_and_key(
    tmp_path: Path, constant: str
) -> None:
    text = json.dumps(base_config())[:-1] + ', "rope_theta": ' + constant + "}"
    model = config_text_dir(tmp_path / "m", text)
    message = refused(model, "config.json", "'rope_theta'")
    assert "finite" in message or "not a number" in message


def test_zero_heads_and_zero_hidden_size_get_no_plan(tmp_path: Path) -> None:
    refused(config_dir(tmp_path / "a", num_attention_heads=0), "'num_attention_heads'", "0")
    refused(config_dir(tmp_path / "b", hidden_size=0), "'hidden_size'", "0")


def test_zero_interval_fields_are_refused(tmp_path: Path) -> None:
    gemma = base_config("google/gemma-3-4b-it")
    gemma["text_config"]["sliding_window_pattern"] = 0
    refused(config_text_dir(tmp_path / "g", json.dumps(gemma)), "'sliding_window_pattern'")
    qwen = base_config("Qwen/Qwen3.6-35B-A3B")
    qwen["text_config"]["full_attention_interval"] = 0
    refused(config_text_dir(tmp_path / "q", json.dumps(qwen)), "'full_attention_interval'")
    whisper = base_config("openai/whisper-large-v3")
    whisper["decoder_attention_heads"] = 0
    refused(config_text_dir(tmp_path / "w", json.dumps(whisper)), "'decoder_attention_heads'")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cross_attention_layers", [[1], {"a": 1}]),
        ("layer_types", [{"a": 1}] * 28),
        ("partial_rotary_factor", "half"),
        ("partial_rotary_factor", 0),
        ("rope_scaling", {"rope_type": "yarn", "factor": 1e300}),
        ("sliding_window", "4096"),
    ],
)
def test_config_fields_of_the_wrong_shape_are_refused(
    tmp_path: Path, key: str, value: object
) -> None:
    refused(config_dir(tmp_path / "m", **{key: value}), "config.json", repr(key))


def test_unknown_state_dtype_is_refused(tmp_path: Path) -> None:
    cfg = base_config("Qwen/Qwen3.6-35B-A3B")
    cfg["text_config"]["mamba_ssm_dtype"] = "float128"
    refused(config_text_dir(tmp_path / "m", json.dumps(cfg)), "'mamba_ssm_dtype'")


def test_long_layer_lists_are_checked_in_linear_time(tmp_path: Path) -> None:
    cfg = base_config("Qwen/Qwen3-30B-A3B")
    cfg["mlp_only_layers"] = list(range(cfg["num_hidden_layers"])) * 4000
    model = config_text_dir(tmp_path / "m", json.dumps(cfg))
    start = time.perf_counter()
    arch = resolve(str(model))
    assert time.perf_counter() - start < SECONDS
    assert arch.moe is not None and arch.moe.num_moe_layers == 0


# --- config.json and index files: depth and size --------------------------------------


@pytest.mark.timeout(30)
def test_read_config_refuses_deep_nesting_before_parsing(tmp_path: Path) -> None:
    model = config_text_dir(tmp_path / "m", deep_config_text(100_000))
    with pytest.raises(ModelFormatError, match=f"nests deeper than {MAX_JSON_DEPTH}") as err:
        read_config(model)
    assert "config.json" in str(err.value)


def test_read_config_accepts_nesting_up_to_the_limit(tmp_path: Path) -> None:
    text = json.dumps(base_config())[:-1] + ', "x": ' + deep_json(MAX_JSON_DEPTH - 1) + "}"
    assert "x" in read_config(config_text_dir(tmp_path / "ok", text))
    text = json.dumps(base_config())[:-1] + ', "x": ' + deep_json(MAX_JSON_DEPTH) + "}"
    with pytest.raises(ModelFormatError, match="nests deeper"):
        read_config(config_text_dir(tmp_path / "deep", text))


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path: Path) -> None:
    text = json.dumps(dict(base_config(), note="[" * 10_000 + "{" * 10_000 + '\\"['))
    assert read_config(config_text_dir(tmp_path / "m", text))["note"].startswith("[[")


@pytest.mark.timeout(30)
def test_nesting_scan_stays_linear_on_an_unterminated_string(tmp_path: Path) -> None:
    # A string of escaped quotes that never closes once made the scan restart at each.
    text = b"[" * (MAX_JSON_DEPTH + 1) + b'"' + b'\\"' * 1_000_000
    start = time.perf_counter()
    with pytest.raises(ModelFormatError, match="config.json"):
        read_config(config_text_dir(tmp_path / "m", text))
    assert time.perf_counter() - start < SECONDS


def test_read_config_refuses_an_oversized_file(tmp_path: Path) -> None:
    text = json.dumps(dict(base_config(), padding=" " * (20 * 2**20)))
    with pytest.raises(ModelFormatError, match="MiB") as err:
        read_config(config_text_dir(tmp_path / "m", text))
    assert "config.json" in str(err.value)


def test_config_that_is_not_utf8_or_not_an_object_is_refused(tmp_path: Path) -> None:
    refused(config_text_dir(tmp_path / "a", b"\xff\xfe{}"), "config.json")
    refused(config_text_dir(tmp_path / "b", "[1, 2]"), "config.json")
    refused(config_text_dir(tmp_path / "c", "1" * 5000), "config.json")


@pytest.mark.timeout(30)
def test_index_file_deep_or_oversized_is_refused(tmp_path: Path) -> None:
    model = config_dir(tmp_path / "deep")
    (model / "model.safetensors.index.json").write_text(
        '{"weight_map": ' + deep_json(100_000) + "}"
    )
    with pytest.raises(ModelFormatError, match="index.json"):
        read_checkpoint(model)
    model = config_dir(tmp_path / "nan")
    (model / "model.safetensors.index.json").write_text('{"weight_map": {"a": NaN}}')
    with pytest.raises(ModelFormatError, match="index.json"):
        read_checkpoint(model)
    model = config_dir(tmp_path / "wrong")
    (model / "model.safetensors.index.json").write_text('{"weight_map": {"a": ["x"]}}')
    with pytest.raises(ModelFormatError, match="index.json"):
        read_checkpoint(model)


def test_index_naming_a_shard_outside_the_directory_is_refused(tmp_path: Path) -> None:
    model = config_dir(tmp_path / "m")
    (tmp_path / "outside.safetensors").write_bytes(b"")
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../outside.safetensors"}})
    )
    with pytest.raises(ModelFormatError, match="outside"):
        read_checkpoint(model)


# --- safetensors headers --------------------------------------------------------------


@pytest.mark.timeout(30)
def test_safetensors_header_deep_nesting_is_refused(tmp_path: Path) -> None:
    path = safetensors_file(tmp_path / "m.safetensors", deep_json(50_000).encode())
    with pytest.raises(ModelFormatError, match="nests deeper") as err:
        read_header(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"dtype": "F16", "shape": [0, 10**15], "data_offsets": [0, 0]}, "1,000,000,000,000,000"),
        ({"dtype": "F16", "shape": [1] * 40, "data_offsets": [0, 2]}, "dimensions"),
        ({"dtype": "F16", "shape": [True], "data_offsets": [0, 2]}, "shape"),
        ({"dtype": "F16", "shape": [2.0], "data_offsets": [0, 4]}, "shape"),
        ({"dtype": "F16", "shape": [1], "data_offsets": [True, 2]}, "data_offsets"),
        ({"dtype": ["F16"], "shape": [1], "data_offsets": [0, 2]}, "dtype"),
    ],
)
def test_safetensors_tensor_entries_out_of_bounds_are_refused(
    tmp_path: Path, entry: dict[str, object], needle: str
) -> None:
    path = safetensors_file(
        tmp_path / "m.safetensors", json.dumps({"w": entry}).encode(), b"\0" * 8
    )
    with pytest.raises(ModelFormatError, match=needle):
        read_header(path)


def test_safetensors_tensor_name_too_long_is_refused(tmp_path: Path) -> None:
    header = {"w" * 5000: {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}
    path = safetensors_file(tmp_path / "m.safetensors", json.dumps(header).encode(), b"\0\0")
    with pytest.raises(ModelFormatError, match="name"):
        read_header(path)


@pytest.mark.timeout(60)
def test_safetensors_header_with_too_many_tensors_is_refused(tmp_path: Path) -> None:
    model = safetensors_dir(tmp_path / "m", many_tensors_header(1_100_000))
    refused(model, "model.safetensors", "tensors")


def test_safetensors_header_nan_is_refused(tmp_path: Path) -> None:
    path = safetensors_file(
        tmp_path / "m.safetensors",
        b'{"w": {"dtype": "F16", "shape": [NaN], "data_offsets": [0, 2]}}',
    )
    with pytest.raises(ModelFormatError, match="m.safetensors"):
        read_header(path)


def test_zero_sized_tensors_plan_under_a_runtime_format(tmp_path: Path) -> None:
    header = json.dumps(
        {
            "model.layers.0.mlp.up_proj.weight": {
                "dtype": "BF16",
                "shape": [0, 64],
                "data_offsets": [0, 0],
            }
        }
    ).encode()
    model = safetensors_dir(tmp_path / "m", header)
    res = plan(resolve(str(model)), FitRequest.on_gpu(gpu("h100-sxm"), quantization="fp8"))
    assert res.weights_bytes == 0


def test_expert_tensors_are_grouped_so_big_checkpoints_plan_fast(tmp_path: Path) -> None:
    cfg = dict(TINY_LLAMA)
    write_hf_dir(tmp_path / "m", cfg)
    arch = resolve(str(tmp_path / "m"))
    per_layer = {}
    for w in arch.weights:
        per_layer[w.layer] = per_layer.get(w.layer, 0) + w.count
    assert per_layer[0] == 9  # every tensor is still counted
    # Per-expert tensors of one layer collapse into one spec per projection.
    entries = {}
    offset = 0
    for e in range(64):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            entries[f"model.layers.0.mlp.experts.{e}.{proj}.weight"] = {
                "dtype": "BF16",
                "shape": [8, 8],
                "data_offsets": [offset, offset + 128],
            }
            offset += 128
    model = safetensors_dir(tmp_path / "moe", json.dumps(entries).encode(), b"\0" * offset)
    arch = resolve(str(model))
    assert len(arch.weights) == 3
    assert sum(w.count for w in arch.weights) == 192
    assert sum(w.stored_bytes or 0 for w in arch.weights) == offset


# --- GGUF -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_gguf_deep_metadata_arrays_are_refused(tmp_path: Path) -> None:
    path = deep_gguf(tmp_path / "deep.gguf", 5_000)
    with pytest.raises(ModelFormatError, match="nest") as err:
        read_gguf(path)
    assert str(path) in str(err.value)


def test_gguf_array_of_arrays_one_level_is_read(tmp_path: Path) -> None:
    inner = gguf_array_header(GGUF_UINT32, 2) + b"\1\0\0\0\2\0\0\0"
    kvs = [*llama_kvs(), gguf_kv("x.pairs", GGUF_ARRAY, gguf_array_header(GGUF_ARRAY, 1) + inner)]
    assert read_gguf(gguf_file(tmp_path / "m.gguf", kvs)).metadata["x.pairs"] == [[1, 2]]


@pytest.mark.timeout(30)
def test_gguf_string_array_larger_than_the_file_is_refused_before_iterating(
    tmp_path: Path,
) -> None:
    # 64 MiB of zeros hold 8 Mi empty strings; the array claims 16 Mi.
    path = gguf_many_strings(tmp_path / "m.gguf", 16 * 2**20, size=64 * 2**20)
    start = time.perf_counter()
    with pytest.raises(ModelFormatError, match="tokenizer.ggml.tokens"):
        read_gguf(path)
    assert time.perf_counter() - start < SECONDS


@pytest.mark.timeout(30)
def test_gguf_string_array_beyond_any_vocabulary_is_refused(tmp_path: Path) -> None:
    # 512 MiB of zeros (sparse) would hold 64 Mi empty strings.
    path = gguf_many_strings(tmp_path / "m.gguf", 64 * 2**20, size=512 * 2**20)
    start = time.perf_counter()
    with pytest.raises(ModelFormatError, match="elements"):
        read_gguf(path)
    assert time.perf_counter() - start < SECONDS


@pytest.mark.parametrize(
    "payload",
    [
        gguf_kv("x", 99, b""),  # unknown value type
        gguf_kv("x", GGUF_ARRAY, gguf_array_header(99, 1)),  # unknown element type
        gguf_kv("x", GGUF_STRING, struct_q(2**40)),  # string past the end
        gguf_kv("x" * 100_000, GGUF_UINT32, b"\0\0\0\0"),  # absurd key
    ],
)
def test_gguf_corrupt_metadata_is_refused(tmp_path: Path, payload: bytes) -> None:
    path = gguf_file(tmp_path / "m.gguf", [*llama_kvs(), payload])
    with pytest.raises(ModelFormatError) as err:
        read_gguf(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("block_count", 1_000_000),
        ("embedding_length", 10**9),
        ("attention.head_count", 0),
        ("attention.head_count_kv", 1_000_000),
        ("context_length", 2**31),
        ("feed_forward_length", 10**9),
        ("vocab_size", 10**9),
        ("attention.key_length", 0),
    ],
)
def test_gguf_hyperparameters_beyond_any_published_model_are_refused(
    tmp_path: Path, key: str, value: int
) -> None:
    path = gguf_file(tmp_path / "m.gguf", llama_kvs(**{key.replace(".", "__"): value}))
    refused(path, f"llama.{key}")


def test_gguf_hyperparameters_of_the_wrong_type_are_refused(tmp_path: Path) -> None:
    kvs = [*llama_kvs(), gguf_kv("llama.attention.key_length", GGUF_STRING, gguf_string("64"))]
    refused(gguf_file(tmp_path / "a.gguf", kvs), "llama.attention.key_length")
    pattern = gguf_kv(
        "llama.attention.sliding_window_pattern",
        GGUF_ARRAY,
        gguf_array_header(GGUF_UINT32, 1) + b"\1\0\0\0",
    )
    kvs = [*llama_kvs(), gguf_u32_kv("llama.attention.sliding_window", 512), pattern]
    refused(gguf_file(tmp_path / "b.gguf", kvs), "sliding_window_pattern")


def test_gguf_tensor_table_bounds(tmp_path: Path) -> None:
    name = gguf_string("w" * 5000)
    table = name + b"\1\0\0\0" + struct_q(4) + b"\0\0\0\0" + struct_q(0)
    path = gguf_file(tmp_path / "a.gguf", llama_kvs(), table, n_tensors=1)
    with pytest.raises(ModelFormatError, match="name"):
        read_gguf(path)
    table = (
        gguf_string("w") + b"\2\0\0\0" + struct_q(0) + struct_q(2**60) + b"\0\0\0\0" + struct_q(0)
    )
    path = gguf_file(tmp_path / "b.gguf", llama_kvs(), table, n_tensors=1)
    with pytest.raises(ModelFormatError, match="dimension"):
        read_gguf(path)


def test_real_gguf_files_still_read(tmp_path: Path) -> None:
    write_gguf(tmp_path / "tiny.gguf")
    arch = resolve(str(tmp_path / "tiny.gguf"))
    assert arch.num_hidden_layers == 2 and arch.vocab_size == 512


# --- the quantization config ----------------------------------------------------------


@pytest.mark.parametrize(
    "qc",
    [
        {"quant_method": "fp8", "weight_block_size": [0, 128]},
        {"quant_method": "fp8", "weight_block_size": ["a", 1]},
        {"quant_method": "fp8", "weight_block_size": 128},
        {"quant_method": "gptq", "bits": "four"},
        {"quant_method": "gptq", "bits": 4, "group_size": math.nan},
        {"quant_method": "gptq", "bits": 4, "group_size": -8},
        {"quant_method": "compressed-tensors", "ignore": ["re:("]},
        {"quant_method": "compressed-tensors", "ignore": ["re:(a+)+$"]},
        {"quant_method": "fp8", "ignored_layers": [f"x{i}" for i in range(100_000)]},
        {"quant_method": "fp8", "ignored_layers": [{"a": 1}]},
        {"quant_method": "modelopt", "quant_algo": "MIXED_PRECISION", "quantized_layers": {"a": 1}},
        {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": -16},
    ],
)
def test_quantization_config_out_of_bounds_is_refused(tmp_path: Path, qc: object) -> None:
    refused(
        config_dir(tmp_path / "m", quantization_config=qc), "config.json", "quantization_config"
    )


# --- resolve() itself, the planner and the CLI ----------------------------------------


@pytest.mark.parametrize("text", ["a\0b", "x" * 5000, "/" + "y" * 300 + "/config.json"])
def test_resolve_refuses_impossible_paths_in_one_line(text: str) -> None:
    with pytest.raises(CatalogError) as err:
        resolve(text)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
@pytest.mark.timeout(10)
def test_resolve_refuses_a_named_pipe_instead_of_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "model.gguf")
    with pytest.raises(CatalogError, match="not a regular file"):
        resolve(str(tmp_path / "model.gguf"))


def test_plan_refuses_a_degenerate_architecture() -> None:
    arch = ModelArch(
        name="broken",
        model_type="llama",
        weights=(),
        kv_layers=(KVLayer(0, LayerKind.FULL, 0, 0, 0),),
        num_hidden_layers=1,
        hidden_size=0,
        vocab_size=1,
        num_attention_heads=0,
        num_kv_heads=0,
        head_dim=0,
        intermediate_size=0,
        max_position_embeddings=1,
    )
    with pytest.raises(FitError, match="broken"):
        plan(arch, REQUEST)


def test_llamacpp_plan_of_the_deepest_allowed_model_is_fast(tmp_path: Path) -> None:
    high = LIMITS["num_hidden_layers"].high
    arch = resolve(str(config_dir(tmp_path / "m", num_hidden_layers=high)))
    start = time.perf_counter()
    res = plan_llamacpp(arch, LlamaCppRequest(gpu_total_bytes=24 * 2**30))
    assert time.perf_counter() - start < SECONDS
    assert res.num_layers == high


def test_vllm_plan_of_the_deepest_allowed_model_is_fast(tmp_path: Path) -> None:
    high = LIMITS["num_hidden_layers"].high
    start = time.perf_counter()
    res = plan(resolve(str(config_dir(tmp_path / "m", num_hidden_layers=high))), REQUEST)
    assert time.perf_counter() - start < SECONDS
    assert not res.fits


@pytest.mark.timeout(30)
def test_cli_fit_prints_one_line_for_a_hostile_directory(tmp_path: Path) -> None:
    model = config_dir(tmp_path / "m", num_hidden_layers=1_000_000)
    result = CliRunner().invoke(cli, ["fit", str(model), "--gpu", "rtx-3090"])
    assert result.exit_code == ModelFormatError.exit_code
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labctl: error: "), result.stderr
    assert "num_hidden_layers" in lines[0] and "Traceback" not in result.stderr


def test_every_catalog_model_and_variant_resolves_under_the_bounds() -> None:
    for e in catalog():
        assert resolve(e.id).num_hidden_layers >= 1
    for v in variants():
        assert resolve(v.id).num_hidden_layers >= 1
