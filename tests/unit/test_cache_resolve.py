"""Resolving MODEL through the catalog, the local hub cache and the hub; picking GGUF files;
the files a pull takes; a deploy's model files. No network: caches are laid out on disk."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import huggingface_hub.constants
import pytest
from tests.tinymodels import TINY_LLAMA, write_gguf, write_hf_dir

from labctl.cache.hub import HubError, gguf_quant, pick_gguf
from labctl.cache.pull import plan_files, serving_snapshot
from labctl.cache.repoid import RepoRef, parse_ref
from labctl.cache.resolve import resolve_model
from labctl.catalog.gguf import read_gguf, read_gguf_head
from labctl.catalog.hf import load_hf_dir
from labctl.catalog.models import resolve
from labctl.config import DeploymentSpec, ModelsConfig
from labctl.deploy.journal import Journal
from labctl.deploy.modelfiles import ModelFiles, hub_model
from labctl.engines import adapter
from labctl.errors import CatalogError, DeployError, ModelFormatError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE as huggingface_hub reads it (at import, hence the constant)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def snapshot(cache: Path, repo_id: str, files: dict[str, bytes] | None = None) -> Path:
    """A repo in the hub cache's layout (refs/main → snapshots/<commit>), as a download
    leaves it; ``files`` (default: a tiny Llama checkpoint) in the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    if files is None:
        write_hf_dir(snap)
    else:
        snap.mkdir(parents=True)
        for name, data in files.items():
            (snap / name).write_bytes(data)
    return snap


def test_repo_ids_are_owner_slash_name_with_an_optional_gguf_quant() -> None:
    assert parse_ref("Qwen/Qwen3-4B") == RepoRef("Qwen/Qwen3-4B", "main", None)
    assert parse_ref("unsloth/Qwen3-4B-GGUF:Q4_K_M", "v1") == RepoRef(
        "unsloth/Qwen3-4B-GGUF", "v1", "Q4_K_M"
    )
    for text in ("gpt2", "a/b/c", "../x", "./a/b", "a--b/c", "a/b.git", "a/b:Q4 K", "/abs/path",
                 "a/b\x00", ""):  # fmt: skip
        assert parse_ref(text) is None, text
    assert parse_ref("a/b:") == RepoRef("a/b", "main", None)


def test_gguf_files_are_picked_by_quantization_with_llama_cpps_default() -> None:
    names = ["README.md", "m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "m-Q8_0.gguf", "mmproj-F16.gguf",
             "BF16/m-BF16-00002-of-00002.gguf", "BF16/m-BF16-00001-of-00002.gguf"]  # fmt: skip
    assert [gguf_quant(n) for n in names[1:4]] == ["Q4_K_M", "Q4_K_S", "Q8_0"]
    assert pick_gguf("o/m", names, None) == ["m-Q4_K_M.gguf"]  # llama.cpp's default
    assert pick_gguf("o/m", names, "q8_0") == ["m-Q8_0.gguf"]
    assert pick_gguf("o/m", names, "BF16") == [  # split parts, in order
        "BF16/m-BF16-00001-of-00002.gguf",
        "BF16/m-BF16-00002-of-00002.gguf",
    ]
    with pytest.raises(HubError, match=r"no GGUF file of quantization Q4_K; it has: BF16, Q4_K_M"):
        pick_gguf("o/m", names, "Q4_K")  # Q4_K is not Q4_K_M
    with pytest.raises(HubError, match=r"2 quantizations \(Q5_K_M, Q8_0\); name one: o/m:Q5_K_M"):
        pick_gguf("o/m", ["a-Q8_0.gguf", "a-Q5_K_M.gguf"], None)
    with pytest.raises(HubError, match="split in 3 files but 2 are there"):
        pick_gguf("o/m", ["x-Q8_0-00001-of-00003.gguf", "x-Q8_0-00003-of-00003.gguf"], "Q8_0")
    assert pick_gguf("o/m", ["only.gguf"], None) == ["only.gguf"]


def test_a_pull_takes_the_included_files_a_quant_or_what_an_engine_serves() -> None:
    sizes = dict.fromkeys(["config.json", "tokenizer.json", "model-1.safetensors",
                           "model-2.safetensors", "original/consolidated.pth", "README.md"], 1)  # fmt: skip
    assert plan_files("o/m", sizes) == sorted(sizes)
    assert plan_files("o/m", sizes, include=["*.safetensors"]) == [
        "model-1.safetensors",
        "model-2.safetensors",
    ]
    served = plan_files("o/m", sizes, serving=True)
    assert "original/consolidated.pth" not in served and "config.json" in served
    assert plan_files("o/m", {"a-Q8_0.gguf": 1, "a-Q4_K_M.gguf": 1}, quant="Q8_0") == [
        "a-Q8_0.gguf"
    ]
    with pytest.raises(HubError, match=r"has no GGUF files; --quant picks"):
        plan_files("o/m", sizes, quant="Q8_0")
    with pytest.raises(HubError, match=r"no file of o/m matches \*\.onnx; it has: README\.md"):
        plan_files("o/m", sizes, include=["*.onnx"])


def test_a_catalog_id_resolves_without_the_hub_even_offline(offline: None, tmp_path: Path) -> None:
    models = ModelsConfig(hf_cache=str(tmp_path / "hub"))
    assert resolve_model("Qwen/Qwen3-8B", models) == resolve("Qwen/Qwen3-8B")
    with pytest.raises(CatalogError, match="no such file or directory"):
        resolve_model("./no/such/dir", models)  # a path stays a path, not a repo id


def test_a_whole_snapshot_in_the_hub_cache_is_read_as_a_directory_offline(
    offline: None, tmp_path: Path
) -> None:
    cache = tmp_path / "hub"
    snap = snapshot(cache, "acme/tiny")
    arch = resolve_model("acme/tiny", ModelsConfig(hf_cache=str(cache)))
    assert arch.weights == load_hf_dir(snap).weights and arch.name == "acme/tiny"


def test_a_snapshot_missing_a_shard_is_not_used_and_offline_names_the_pull(
    offline: None, tmp_path: Path
) -> None:
    cache = tmp_path / "hub"
    snap = snapshot(cache, "acme/sharded", {})
    write_hf_dir(snap, shards=2)
    (snap / "model-00002-of-00002.safetensors").unlink()  # the pull broke off
    with pytest.raises(HubError) as err:
        resolve_model("acme/sharded", ModelsConfig(hf_cache=str(cache)))
    message = str(err.value)
    assert "\n" not in message and "HF_HUB_OFFLINE is set" in message
    assert "`labctl models pull acme/sharded`" in message
    assert not serving_snapshot("acme/sharded", "main", cache).complete


def test_a_gguf_snapshot_resolves_by_quant(offline: None, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    snap = snapshot(cache, "acme/gg", {})
    write_gguf(snap / "gg-Q8_0.gguf")
    write_gguf(snap / "gg-Q4_K_M.gguf", layers=3)
    models = ModelsConfig(hf_cache=str(cache))
    assert resolve_model("acme/gg", models).num_hidden_layers == 3  # Q4_K_M by default
    assert resolve_model("acme/gg:Q8_0", models).num_hidden_layers == 2


def test_without_the_hub_an_unknown_repo_is_the_catalogs_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="unknown model 'acme/never-seen'") as err:
        resolve_model("acme/never-seen", ModelsConfig(hf_cache=str(tmp_path)), hub=False)
    assert not isinstance(err.value, HubError)


def test_a_gguf_header_parses_from_its_first_bytes_as_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path)
    data = path.read_bytes()
    whole = read_gguf(path)
    head = read_gguf_head(data[: whole.data_offset], len(data), path)
    assert head.tensors == whole.tensors and head.metadata == whole.metadata
    with pytest.raises(ModelFormatError, match="truncated or corrupt"):
        read_gguf_head(data[:4096], len(data), path)  # the table runs past what was read
    with pytest.raises(ModelFormatError, match="runs past the end"):
        read_gguf_head(data[: whole.data_offset], whole.data_offset + 10, path)


def test_a_quantization_config_in_a_file_of_its_own_is_read(tmp_path: Path) -> None:
    gptq = tmp_path / "gptq"
    write_hf_dir(gptq)
    (gptq / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 128}))
    quant = load_hf_dir(gptq).quant
    assert quant is not None and quant.method == "gptq" and quant.group_size == 128
    modelopt = tmp_path / "modelopt"
    write_hf_dir(modelopt)
    (modelopt / "hf_quant_config.json").write_text(
        json.dumps({"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4"}})
    )
    quant = load_hf_dir(modelopt).quant
    assert quant is not None and quant.method == "nvfp4"
    own = tmp_path / "own"
    write_hf_dir(own, dict(TINY_LLAMA, quantization_config={"quant_method": "fp8"}))
    (own / "quantize_config.json").write_text(json.dumps({"bits": 4}))
    quant = load_hf_dir(own).quant
    assert quant is not None and quant.method == "fp8"  # config.json's own wins


def test_only_vllm_deployments_of_repo_ids_need_files_in_the_hub_cache(tmp_path: Path) -> None:
    def spec(engine: str, model: str, **args: object) -> DeploymentSpec:
        return DeploymentSpec.from_dict("d", {"engine": engine, "model": model, "args": args})

    assert hub_model(spec("vllm", "Qwen/Qwen3-8B")) == RepoRef("Qwen/Qwen3-8B")
    assert hub_model(spec("vllm", "Qwen/Qwen3-8B", revision="v2")) == RepoRef("Qwen/Qwen3-8B", "v2")
    assert hub_model(spec("sim", "Qwen/Qwen3-8B")) is None  # the twin reads no weights
    assert hub_model(spec("vllm", str(tmp_path))) is None  # a local directory
    assert hub_model(spec("vllm", "o/m-GGUF:Q4_K_M")) is None


def test_a_deploy_of_a_missing_repo_is_refused_naming_the_pull_and_a_whole_one_runs_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    journal = Journal(tmp_path / "journal.db")
    files = ModelFiles(journal, lambda name, doc: None, ModelsConfig(hf_cache=str(cache)))
    vllm = DeploymentSpec.from_dict("chat", {"engine": "vllm", "model": "acme/tiny",
                                             "args": {"revision": "v2"}})  # fmt: skip
    deploy_id = journal.begin("chat", "deploy", None, 1)
    with pytest.raises(
        DeployError, match=r"run `labctl models pull acme/tiny --revision v2` first"
    ):
        asyncio.run(files.prepare(vllm, deploy_id))
    record = journal.record(deploy_id)
    assert record is not None and [s["name"] for s in record["steps"]] == ["preflight"]
    launch = adapter("vllm").launch(vllm.to_dict(), "127.0.0.1", 9000, [0])
    assert "HF_HUB_OFFLINE" not in launch.env
    snapshot(cache, "acme/tiny")
    whole = DeploymentSpec.from_dict("chat", {"engine": "vllm", "model": "acme/tiny"})
    asyncio.run(files.prepare(whole, journal.begin("chat", "deploy", None, 2)))
    env = adapter("vllm").launch(whole.to_dict(), "127.0.0.1", 9000, [0]).env
    assert env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0",
                   "NVIDIA_VISIBLE_DEVICES": "0", "HF_HUB_OFFLINE": "1",
                   "HF_HUB_CACHE": str(cache)}  # fmt: skip
