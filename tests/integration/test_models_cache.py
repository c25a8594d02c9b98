"""`labctl models` on a real Hugging Face cache, and `rm`, `prune`, `verify`, as a user runs them.

The cache is written once per module by huggingface_hub's own downloads from a local hub
endpoint (:mod:`tests.modelcache`), then copied for each test; HF_HUB_CACHE and
OLLAMA_MODELS point at the copy, so the embedded default lab (whose deployment "chat"
serves Qwen/Qwen3-0.6B) finds it where huggingface_hub would. HF_HUB_OFFLINE is set:
nothing here may need the network.
"""

from __future__ import annotations

from collections.abc import Callable
import hashlib
from pathlib import Path

import pytest

from tests.integration.conftest import Run
from tests.modelcache import Built, build

Labctl = Callable[..., Run]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(tmp_path_factory.mktemp("modelcache"))


@pytest.fixture(autouse=True)
def cache(built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Built:
    """This test's copy of the cache, where huggingface_hub and Ollama look for theirs."""
    mine = built.copy_to(tmp_path / "cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(mine.hub))
    monkeypatch.setenv("OLLAMA_MODELS", str(mine.ollama))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return mine


def entries(doc: object) -> dict[tuple[str, str | None], dict[str, object]]:
    assert isinstance(doc, dict)
    return {(m["repo_id"], m["revision"]): m for m in doc["models"]}


def test_models_lists_complete_partial_gguf_and_ollama_entries(
    labctl: Labctl, cache: Built
) -> None:
    toml = cache.lab_toml(
        cache.hub.parent / "lab.toml",
        '[deployments.small]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\n',
    )
    doc = labctl(
        "models", "--config", str(toml), "--gpu", "rtx-3090,h200", "--json", check=True
    ).json()
    assert isinstance(doc, dict)
    assert doc["cache_dir"] == str(cache.hub.resolve()) and doc["gpus"] == [
        "0: rtx-3090",
        "1: h200",
    ]
    got = entries(doc)
    main, old = cache.commits["main"], cache.commits["old"]
    main_blobs, old_blobs = cache.blobs(main), cache.blobs(old)
    # The weights blob both revisions link counts once: in main's revision.
    tiny = got[("Qwen/Qwen3-0.6B", main)]
    assert tiny["size_bytes"] == sum(main_blobs.values())
    detached = got[("Qwen/Qwen3-0.6B", old)]
    only_old = {k: v for k, v in old_blobs.items() if k not in main_blobs}
    assert len(only_old) == 1 and detached["size_bytes"] == sum(only_old.values())
    assert (tiny["refs"], detached["refs"]) == (["main"], [])
    assert tiny["used_by"] == ["small"] and detached["used_by"] == []
    for m in (tiny, detached):
        assert (m["format"], m["quantization"], m["complete"]) == ("safetensors", "bf16", True)
        assert m["fits_on"] == ["0: rtx-3090", "1: h200"]
    partial = got[("acme/Qwen3-32B-partial", cache.commits["partial"])]
    served = cache.served[cache.commits["partial"]]
    assert cache.partial_bytes > 0 and partial["partial_bytes"] == cache.partial_bytes
    assert (
        partial["size_bytes"]
        == len(served["config.json"]) + len(served["tokenizer.json"]) + cache.partial_bytes
    )
    assert partial["complete"] is False and partial["missing_files"] == ["model.safetensors"]
    assert partial["format"] == "safetensors"
    assert partial["fits_on"] == ["1: h200"]  # 65 GB of bf16 weights: not on a 24 GB card
    gguf = got[("acme/tiny-GGUF", cache.commits["gguf"])]
    # One quantization of a two-file GGUF repo is a complete model.
    assert (gguf["format"], gguf["quantization"], gguf["complete"]) == ("gguf", "Q4_K_M", True)
    assert gguf["size_bytes"] == sum(cache.blobs(cache.commits["gguf"]).values())
    assert gguf["fits_on"] == ["0: rtx-3090", "1: h200"]
    assert cache.loose_gguf is not None
    loose = got[(cache.loose_gguf.name, None)]
    assert (loose["source"], loose["quantization"], loose["complete"]) == ("gguf", "Q4_K_M", True)
    assert loose["size_bytes"] == cache.loose_gguf.stat().st_size
    assert loose["path"] == str(cache.loose_gguf)
    ollama = got[("tiny", "q4")]
    assert (ollama["source"], ollama["format"], ollama["quantization"]) == ("ollama", "gguf", "F32")
    assert ollama["size_bytes"] == sum(size for _, size in cache.ollama_layers)
    assert len(got) == 6 and doc["warnings"] == []

    gguf_only = labctl("models", "--config", str(toml), "--format", "gguf", "--json", check=True)
    assert {m["source"] for m in entries(gguf_only.json()).values()} == {
        "hf-cache",
        "gguf",
        "ollama",
    }
    assert {m["format"] for m in entries(gguf_only.json()).values()} == {"gguf"}
    big = entries(
        labctl("models", "--config", str(toml), "--min-size", "1MiB", "--json", check=True).json()
    )
    assert set(big) == {k for k, m in got.items() if int(str(m["size_bytes"])) >= 2**20} and big
    unused = entries(
        labctl("models", "--config", str(toml), "--unused", "--json", check=True).json()
    )
    assert set(unused) == set(got) - {("Qwen/Qwen3-0.6B", main)}
    bad = labctl("models", "--min-size", "lots")
    assert bad.code == 2 and bad.out == "" and bad.err.count("\n") == 1 and "--min-size" in bad.err

    table = labctl("models", "--config", str(toml), "--gpu", "t4", check=True).out
    assert "acme/Qwen3-32B-partial" in table and "no: 1 missing" in table and "0: t4" in table


def test_models_on_the_default_lab_and_an_empty_cache(
    labctl: Labctl, cache: Built, tmp_path: Path
) -> None:
    doc = labctl("models", "--json", check=True).json()
    got = entries(doc)
    assert (
        isinstance(doc, dict)
        and doc["lab"] == "embedded default"
        and doc["gpus"] == ["0: rtx-3090"]
    )
    assert got[("Qwen/Qwen3-0.6B", cache.commits["main"])]["used_by"] == ["chat"]
    assert got[("tiny", "q4")]["source"] == "ollama"  # OLLAMA_MODELS
    assert got[("acme/Qwen3-32B-partial", cache.commits["partial"])]["fits_on"] == []

    empty = tmp_path / "empty"
    empty.mkdir()
    toml = tmp_path / "empty.toml"
    toml.write_text(f'[models]\nhf_cache = "{empty}"\nollama = "{empty}"\n')
    out = labctl("models", "--config", str(toml), check=True).out
    assert str(empty) in out and "labctl models pull REPO" in out
    assert labctl("models", "--config", str(toml), "--json", check=True).json()["models"] == []  # type: ignore[index]


def test_models_verify_finds_a_corrupted_blob(labctl: Labctl, cache: Built) -> None:
    ok = labctl("models", "verify", "Qwen/Qwen3-0.6B", "--json")
    assert ok.code == 0, ok.err
    assert ok.json()["ok"] is True and len(ok.json()["checked"]) == 2  # type: ignore[index]

    served = cache.served[cache.commits["main"]]
    weights = hashlib.sha256(served["model.safetensors"]).hexdigest()
    blob = cache.hub / "models--Qwen--Qwen3-0.6B" / "blobs" / weights
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x40
    blob.write_bytes(bytes(data))
    r = labctl("models", "verify", "Qwen/Qwen3-0.6B", "--revision", "main", "--json")
    assert r.code == 1
    (bad,) = r.json()["bad"]  # type: ignore[index]
    assert (bad["file"], bad["problem"], bad["expected"]) == (
        "model.safetensors",
        "sha256",
        weights,
    )
    assert bad["found"] == hashlib.sha256(bytes(data)).hexdigest()

    human = labctl("models", "verify", "acme/Qwen3-32B-partial")
    assert human.code == 1 and "model.safetensors: missing" in human.out
    wrong = labctl("models", "verify", "no/such-model")
    assert wrong.code != 0 and wrong.err.count("\n") == 1 and "not on disk" in wrong.err


def test_models_rm_reports_the_space_then_frees_it(labctl: Labctl, cache: Built) -> None:
    repo = cache.hub / "models--Qwen--Qwen3-0.6B"
    blob_bytes = sum(p.stat().st_size for p in (repo / "blobs").iterdir())
    refused = labctl("models", "rm", "Qwen/Qwen3-0.6B", "--dry-run")
    assert refused.code == 2 and "deployment chat" in refused.err and "--force" in refused.err

    old = cache.commits["old"]
    one = labctl(
        "models", "rm", "Qwen/Qwen3-0.6B", "--revision", old[:10], "--dry-run", "--json", check=True
    ).json()
    only_old = {
        k: v for k, v in cache.blobs(old).items() if k not in cache.blobs(cache.commits["main"])
    }
    assert one["freed_bytes"] == sum(only_old.values())  # type: ignore[index]

    dry = labctl(
        "models", "rm", "Qwen/Qwen3-0.6B", "--force", "--dry-run", "--json", check=True
    ).json()
    assert isinstance(dry, dict) and dry["freed_bytes"] == blob_bytes and dry["dry_run"] is True
    assert sum(p.stat().st_size for p in (repo / "blobs").iterdir()) == blob_bytes
    # Without --config, [models] paths is empty: the hub cache and Ollama's store remain.
    assert len(entries(labctl("models", "--json", check=True).json())) == 5

    done = labctl(
        "models", "rm", "Qwen/Qwen3-0.6B", "--force", "--yes", "--json", check=True
    ).json()
    assert isinstance(done, dict) and done["freed_bytes"] == blob_bytes and done["errors"] == []
    assert not repo.exists()
    left = entries(labctl("models", "--json", check=True).json())
    assert not any(repo_id == "Qwen/Qwen3-0.6B" for repo_id, _ in left) and len(left) == 3

    partial = labctl("models", "rm", "acme/Qwen3-32B-partial", "--dry-run", "--json", check=True)
    served = cache.served[cache.commits["partial"]]
    on_disk = len(served["config.json"]) + len(served["tokenizer.json"]) + cache.partial_bytes
    assert partial.json()["freed_bytes"] == on_disk  # type: ignore[index]

    ollama = labctl("models", "rm", "tiny:q4", "--yes")
    assert ollama.code != 0 and "`ollama rm tiny:q4`" in ollama.err
    assert cache.ollama_model_blob is not None and cache.ollama_model_blob.is_file()
    asked = labctl("models", "rm", "acme/tiny-GGUF")  # no terminal to ask on
    assert (
        asked.code == 2
        and "--yes" in asked.err
        and (cache.hub / "models--acme--tiny-GGUF").is_dir()
    )
    toml = cache.lab_toml(cache.hub.parent / "lab.toml")
    assert cache.loose_gguf is not None
    labctl("models", "rm", cache.loose_gguf.name, "--config", str(toml), "--yes", check=True)
    assert not cache.loose_gguf.exists()


def test_models_prune_removes_detached_revisions_and_partial_downloads(
    labctl: Labctl, cache: Built
) -> None:
    old, main = cache.commits["old"], cache.commits["main"]
    only_old = {k: v for k, v in cache.blobs(old).items() if k not in cache.blobs(main)}
    recent = labctl("models", "prune", "--dry-run", "--json", check=True).json()
    assert isinstance(recent, dict) and recent["partial_files"] == []  # younger than the grace
    assert [r["revision"] for r in recent["revisions"]] == [old]
    assert any("may still be running" in k for k in recent["kept"])
    dry = labctl("models", "prune", "--dry-run", "--grace", "0", "--json", check=True).json()
    assert isinstance(dry, dict)
    assert dry["freed_bytes"] == sum(only_old.values()) + cache.partial_bytes
    assert [f["size_bytes"] for f in dry["partial_files"]] == [cache.partial_bytes]
    labctl("models", "prune", "--grace", "0", "--yes", check=True)
    got = entries(labctl("models", "--json", check=True).json())
    assert ("Qwen/Qwen3-0.6B", old) not in got and ("Qwen/Qwen3-0.6B", main) in got
    assert got[("acme/Qwen3-32B-partial", cache.commits["partial"])]["partial_bytes"] == 0
    assert not list(cache.hub.glob("*/blobs/*.incomplete"))
    assert labctl("models", "verify", "Qwen/Qwen3-0.6B").code == 0


def test_models_catalog_is_a_flag(labctl: Labctl) -> None:
    doc = labctl("models", "--catalog", "--json", check=True).json()
    assert isinstance(doc, dict) and any(m["id"] == "Qwen/Qwen3-0.6B" for m in doc["models"])
    both = labctl("models", "--catalog", "--gpu", "t4")
    assert both.code == 2 and both.err.count("\n") == 1
