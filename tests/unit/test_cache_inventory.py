"""The model cache's pieces: which absent files a snapshot needs, loose GGUF files and model
folders, Ollama's store, who uses an entry, finding one by name, hashing, "fits on".

The hub cache itself, which only huggingface_hub's downloads write, is tested through the
CLI in tests/integration/test_models_cache.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from tests.fakenvml import FakeNvml, load_h100
from tests.hubserver import git_sha1, lfs_pointer
from tests.modelcache import QWEN3_32B
from tests.tinygguf import write_tiny_llama
from tests.tinymodels import write_gguf, write_hf_dir

from labctl.cache import verify as verify_mod
from labctl.cache.entry import CacheEntry, needed_missing, weights_format
from labctl.cache.hfcache import describe_ggufs
from labctl.cache.inventory import Inventory, select, used_by
from labctl.cache.stores import scan_ollama, scan_paths
from labctl.cache.verify import hash_file, lfs_pointer_id, verify
from labctl.catalog.gpus import gpu
from labctl.cli.modelfit import fits_on, lab_gpus
from labctl.config import DeploymentSpec, LabConfig, default_config
from labctl.errors import CatalogError, GpuUnavailable, UsageError
from labctl.gpu import nvml
from labctl.gpu.nvml import NvmlBackend
from labctl.gpu.sample import DeviceSample

MAIN = "a" * 40
OLD = "b" * 40


def hub_entry(revision: str, refs: tuple[str, ...], path: Path) -> CacheEntry:
    return CacheEntry("Qwen/Qwen3-0.6B", revision, "hf-cache", "safetensors", "bf16", 10, True,
                      None, path / revision, refs=refs, plan_path=path / revision)  # fmt: skip


def inventory(*entries: CacheEntry) -> Inventory:
    return Inventory(entries, Path("/hub"), (), (), ())


# -- which absent files a snapshot needs ----------------------------------------------------


def test_needed_missing_ignores_what_a_partial_download_leaves_out_on_purpose() -> None:
    listed = [
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "README.md",
        "onnx/model.onnx",
    ]
    # vLLM downloads the safetensors and configs only: nothing it needs is absent.
    assert needed_missing(["config.json", "model.safetensors"], listed, []) == []
    # Nothing of the weights yet: they and the config are needed.
    assert needed_missing(["README.md"], listed, []) == ["config.json", "model.safetensors"]


def test_needed_missing_wants_every_shard_of_present_weights() -> None:
    shards = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    listed = ["config.json", *shards, "model.safetensors.index.json"]
    present = ["config.json", shards[0], "model.safetensors.index.json"]
    assert needed_missing(present, listed, []) == shards[1:]
    # An index names its shards even when their names share no pattern.
    listed2 = ["config.json", "a.safetensors", "b.safetensors", "model.safetensors.index.json"]
    have = ["config.json", "a.safetensors", "model.safetensors.index.json"]
    assert needed_missing(have, listed2, ["a.safetensors", "b.safetensors"]) == ["b.safetensors"]
    assert needed_missing(have, listed2, []) == []


def test_needed_missing_takes_one_gguf_quantization_as_whole() -> None:
    listed = ["m-Q4_K_M.gguf", "m-Q8_0.gguf", "big-00001-of-00002.gguf", "big-00002-of-00002.gguf"]
    assert needed_missing(["m-Q4_K_M.gguf"], listed, []) == []
    assert needed_missing(["big-00001-of-00002.gguf"], listed, []) == ["big-00002-of-00002.gguf"]


def test_weights_format_prefers_what_engines_load() -> None:
    assert weights_format(["pytorch_model.bin", "model.safetensors"]) == "safetensors"
    assert weights_format(["x.gguf", "pytorch_model-00001-of-00002.bin"]) == "gguf"
    assert weights_format(["pytorch_model.bin"]) == "pytorch-bin"
    assert weights_format(["config.json", "training_args.bin"]) == "none"


# -- [models] paths and Ollama --------------------------------------------------------------


def test_scan_paths_finds_gguf_files_split_parts_and_model_folders(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "deep" / "er").mkdir(parents=True)
    write_gguf(root / "deep" / "er" / "a.gguf")
    write_gguf(root / "split-00001-of-00002.gguf")
    tensor_bytes = write_hf_dir(root / "llama")
    hidden = root / ".hidden"
    hidden.mkdir()
    write_gguf(hidden / "skipped.gguf")
    found, warnings = scan_paths(
        [str(root), str(root / "deep" / "er" / "a.gguf"), str(tmp_path / "nope")]
    )
    assert warnings == [f"models.paths: {tmp_path / 'nope'} does not exist"]
    by_name = {e.repo_id: e for e in found}
    assert set(by_name) == {"a.gguf", "split-00001-of-00002.gguf", "llama"}  # a.gguf once
    a = by_name["a.gguf"]
    assert (a.source, a.quantization, a.complete) == ("gguf", "Q4_K_M", True)
    assert (
        a.size_bytes == (root / "deep" / "er" / "a.gguf").stat().st_size and a.plan_path == a.path
    )
    split = by_name["split-00001-of-00002.gguf"]
    assert split.complete is False and split.missing == ("split-00002-of-00002.gguf",)
    assert split.plan_path is None  # the planner reads whole files
    llama = by_name["llama"]
    assert (llama.source, llama.format, llama.quantization) == ("local", "safetensors", "bf16")
    assert llama.size_bytes > tensor_bytes and llama.plan_path == root / "llama"
    # A path inside the hub cache is the hub cache's to list.
    skipped, _ = scan_paths([str(root)], skip=root / "deep")
    assert sorted(e.repo_id for e in skipped) == ["llama", "split-00001-of-00002.gguf"]


def test_a_folder_of_quantizations_plans_its_smallest_whole_file(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m-Q4_K_M.gguf")
    write_tiny_llama(tmp_path / "m-F32.gguf")
    write_gguf(tmp_path / "mmproj-m.gguf", hidden=64)
    names = ["m-F32.gguf", "m-Q4_K_M.gguf", "mmproj-m.gguf"]
    quant, plan, notes = describe_ggufs(tmp_path, names)
    assert quant == "F32, Q4_K_M"
    sizes = {n: (tmp_path / n).stat().st_size for n in names[:2]}
    assert plan == tmp_path / min(sizes, key=lambda n: sizes[n])
    assert notes == [f"2 GGUF files; fits on is for the smallest, {plan.name}"]


def test_a_truncated_gguf_file_is_not_complete(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    write_gguf(path)
    path.write_bytes(path.read_bytes()[:-100])
    (entry,), _ = scan_paths([str(path)])
    assert entry.complete is False and "truncated" in entry.notes[0] and entry.plan_path is None


def ollama_store(
    root: Path, model: bytes, host: str = "registry.ollama.ai", ns: str = "library"
) -> Path:
    layers = []
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for media, data in (("application/vnd.ollama.image.model", model),
                        ("application/vnd.ollama.image.params", b'{"stop": []}')):  # fmt: skip
        digest = hashlib.sha256(data).hexdigest()
        (root / "blobs" / f"sha256-{digest}").write_bytes(data)
        layers.append({"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)})
    where = root / "manifests" / host / ns / "tiny"
    where.mkdir(parents=True)
    (where / "latest").write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return where / "latest"


def test_scan_ollama_reads_manifests_and_checks_blobs(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    write_gguf(gguf)
    ollama_store(tmp_path / "o", gguf.read_bytes())
    ollama_store(tmp_path / "o", gguf.read_bytes(), ns="someone")
    bad = tmp_path / "o" / "manifests" / "example.com" / "ns" / "broken"
    bad.mkdir(parents=True)
    (bad / "v1").write_text("{not json")
    found, warnings = scan_ollama([tmp_path / "o"])
    assert len(warnings) == 1 and str(bad / "v1") in warnings[0]
    names = {(e.repo_id, e.revision) for e in found}
    assert names == {("tiny", "latest"), ("someone/tiny", "latest")}
    e = next(e for e in found if e.repo_id == "tiny")
    assert (e.format, e.quantization, e.complete) == ("gguf", "Q4_K_M", True)
    assert e.size_bytes == gguf.stat().st_size + len(b'{"stop": []}')
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    (tmp_path / "o" / "blobs" / f"sha256-{digest}").unlink()
    again = next(e for e in scan_ollama([tmp_path / "o"])[0] if e.repo_id == "tiny")
    assert again.complete is False and again.missing == (f"sha256-{digest}",)


# -- who uses an entry, and finding one -----------------------------------------------------


def test_used_by_follows_the_ref_a_deployment_serves(tmp_path: Path) -> None:
    main, old = hub_entry(MAIN, ("main",), tmp_path), hub_entry(OLD, (), tmp_path)
    deployments = (
        DeploymentSpec(name="chat", engine="sim", model="qwen/qwen3-0.6b"),
        DeploymentSpec(
            name="pinned", engine="vllm", model="Qwen/Qwen3-0.6B", args={"revision": OLD}
        ),
        DeploymentSpec(name="bypath", engine="vllm", model=str(tmp_path / OLD / "config.json")),
        DeploymentSpec(name="other", engine="sim", model="Qwen/Qwen3-8B"),
    )
    assert used_by(main, deployments) == ["chat"]
    assert used_by(old, deployments) == ["pinned", "bypath"]
    gguf = CacheEntry("x.gguf", None, "gguf", "gguf", "Q4_K_M", 1, True, None, tmp_path / "x.gguf")
    assert used_by(
        gguf, [DeploymentSpec(name="l", engine="llamacpp", model=str(tmp_path / "x.gguf"))]
    ) == ["l"]


def test_select_names_repos_revisions_and_ollama_tags(tmp_path: Path) -> None:
    main, old = hub_entry(MAIN, ("main",), tmp_path), hub_entry(OLD, (), tmp_path)
    tag = CacheEntry("tiny", "q4", "ollama", "gguf", None, 1, True, None, tmp_path / "m")
    inv = inventory(main, old, tag)
    assert select(inv, "QWEN/qwen3-0.6b") == [main, old]
    assert select(inv, "Qwen/Qwen3-0.6B", "main") == [main]
    assert select(inv, "Qwen/Qwen3-0.6B", OLD[:7]) == [old]
    assert select(inv, "tiny:q4") == [tag] and select(inv, "tiny", "q4") == [tag]
    with pytest.raises(
        CatalogError, match=r"no revision 'v2'.*aaaaaaaaaaaa \(main\), bbbbbbbbbbbb"
    ):
        select(inv, "Qwen/Qwen3-0.6B", "v2")
    with pytest.raises(CatalogError, match="not on disk .*hub cache /hub"):
        select(inv, "nope/nope")


# -- hashing and verification ---------------------------------------------------------------


def test_hash_file_matches_the_hub_names_in_small_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify_mod, "CHUNK", 7)
    data = bytes(range(256)) * 5
    path = tmp_path / "f"
    path.write_bytes(data)
    seen: list[int] = []
    sha256, git = hash_file(path, "f", lambda _, done, total: seen.append(done))
    assert (sha256, git) == (hashlib.sha256(data).hexdigest(), git_sha1(data))
    assert seen[-1] == len(data) and len(seen) == -(-len(data) // 7)
    assert hash_file(path, "f", algos="sha256") == (sha256, "")
    assert lfs_pointer_id(sha256, len(data)) == git_sha1(lfs_pointer(data))


def test_verify_checks_ollama_blobs_against_their_digests(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    write_gguf(gguf)
    manifest = ollama_store(tmp_path / "o", gguf.read_bytes())
    (entry,), _ = scan_ollama([tmp_path / "o"])
    assert entry.path == manifest
    assert verify(inventory(entry), [entry]).bad == ()
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    blob = tmp_path / "o" / "blobs" / f"sha256-{digest}"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    (bad,) = verify(inventory(entry), [entry]).bad
    assert (bad.problem, bad.expected, bad.found) == (
        "sha256",
        digest,
        hashlib.sha256(data).hexdigest(),
    )


# -- "fits on" ------------------------------------------------------------------------------


def test_lab_gpus_are_the_labs_or_the_named_ones() -> None:
    assert [g.label for g in lab_gpus(default_config(), ())] == ["0: rtx-3090"]
    lab = LabConfig(gpu_backend="sim", sim_gpus="2xrtx-4090")
    assert [g.label for g in lab_gpus(lab, ())] == ["0: rtx-4090", "1: rtx-4090"]
    assert [g.label for g in lab_gpus(lab, ("t4,h200", "2xl4"))] == [
        "0: t4",
        "1: h200",
        "2: l4",
        "3: l4",
    ]
    with pytest.raises(CatalogError, match="rtx-9090"):
        lab_gpus(lab, ("rtx-9090",))


def test_fits_on_plans_each_entry_and_notes_what_it_cannot(tmp_path: Path) -> None:
    write_hf_dir(tmp_path / "tiny")
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "config.json").write_text(json.dumps(QWEN3_32B))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "llama"}')

    def entry(name: str) -> CacheEntry:
        return CacheEntry(name, None, "local", "safetensors", None, 1, True, None,
                          tmp_path / name, plan_path=tmp_path / name)  # fmt: skip

    gpus = lab_gpus(default_config(), ("rtx-3090", "h200", "rtx-3090"))
    tiny, big, broken = fits_on([entry("tiny"), entry("big"), entry("broken")], gpus)
    assert tiny.fits_on == ("0: rtx-3090", "1: h200", "2: rtx-3090") and tiny.note is None
    assert big.fits_on == ("1: h200",) and big.note is None
    assert broken.fits_on == () and broken.note is not None and "not planned" in broken.note
    none = dataclasses.replace(entry("tiny"), plan_path=None)
    (nothing,) = fits_on([none], gpus)
    assert nothing.fits_on == () and nothing.note is not None

    ticks = iter([0.0, 0.0, 100.0])
    first, late = fits_on(
        [entry("tiny"), entry("tiny")], gpus, budget_s=30, clock=lambda: next(ticks)
    )
    assert first.fits_on and late.fits_on == () and late.note is not None and "budget" in late.note


def test_lab_gpus_refuses_a_bad_sim_list() -> None:
    with pytest.raises(UsageError, match="lab.sim_gpus"):
        lab_gpus(LabConfig(gpu_backend="sim", sim_gpus="0xrtx-3090"), ())
    with pytest.raises(UsageError, match="--gpu"):
        lab_gpus(default_config(), (",",))


def test_lab_gpus_on_a_gpu_machine_are_what_nvml_sees(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    h100 = load_h100(shared_dir)
    backend = NvmlBackend(FakeNvml([h100, h100]), host_memory_reader=lambda: (2**36, 2**35))
    devices = list(backend.read().devices)
    monkeypatch.setattr(nvml, "read_devices", lambda: devices)
    gpus = lab_gpus(LabConfig(gpu_backend="auto"), ())
    assert [g.label for g in gpus] == ["0: h100-sxm", "1: h100-sxm"]
    expected = devices[0].cuda_total_bytes or gpu("h100-sxm").cuda_total_bytes
    assert gpus[0].request.gpu_total_bytes == expected

    def no_driver() -> list[DeviceSample]:
        raise GpuUnavailable("NVML: driver not loaded")

    monkeypatch.setattr(nvml, "read_devices", no_driver)
    monkeypatch.setenv("LABCTL_HOME", str(tmp_path))
    assert [g.label for g in lab_gpus(LabConfig(gpu_backend="auto"), ())] == ["0: rtx-3090"]
    assert lab_gpus(LabConfig(gpu_backend="nvml"), ()) == []
