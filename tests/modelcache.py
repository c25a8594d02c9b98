"""A small model cache on disk, written by the tools that write real ones.

The hub cache is filled by ``huggingface_hub``'s own ``snapshot_download`` from a local
endpoint (:mod:`tests.hubserver`): a tiny Qwen3 repo in two revisions (the older fetched by
commit, so detached, sharing the weights blob with ``main``), a partial download of a
Qwen3-32B repo (its weights' transfer killed midway: an ``.incomplete`` blob, a file the tree
listing names missing), and one quantization of a two-file GGUF repo. Beside it: a loose
GGUF file for ``[models] paths`` and an Ollama store (a manifest and its blobs). Every figure
a test checks is kept here from the bytes served or written, not read back through labctl.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import hashlib
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import time

from huggingface_hub import snapshot_download
import numpy as np
from safetensors.numpy import save

from tests.hubserver import HubServer, etag
from tests.tinygguf import write_tiny_llama
from tests.tinymodels import llama_tensors, write_gguf

TINY_QWEN3 = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256, "max_position_embeddings": 4096,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "rms_norm_eps": 1e-6,
}  # fmt: skip
#: Qwen3-32B's real config.json fields (as the catalog keeps them): bf16 weights of 65 GB,
#: more than an RTX 3090 holds, less than an H200.
QWEN3_32B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 5120,
    "intermediate_size": 25600, "num_hidden_layers": 64, "num_attention_heads": 64,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
    "max_position_embeddings": 40960, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}  # fmt: skip
TOKENIZER = json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}}}).encode()
#: The partial download's weights: past one 10 MiB chunk of huggingface_hub's transfer, so
#: part of it reaches the disk before the transfer stalls and is killed.
PARTIAL_WEIGHTS = 12 << 20
PARTIAL_CUT = 11 << 20


def tiny_qwen3_files(revision: int) -> dict[str, bytes]:
    cfg = dict(TINY_QWEN3, transformers_version=f"4.{50 + revision}.0")
    tensors = llama_tensors(cfg, np.float16)
    for i in range(int(cfg["num_hidden_layers"])):
        for norm in ("q_norm", "k_norm"):
            tensors[f"model.layers.{i}.self_attn.{norm}.weight"] = np.ones(16, np.float16)
    return {
        "config.json": json.dumps(cfg).encode(),
        "model.safetensors": save(tensors),
        "tokenizer.json": TOKENIZER,
    }


@dataclass
class Built:
    """Where the cache is and what was put in it."""

    hub: Path
    paths_dir: Path
    ollama: Path
    #: Per hub revision: {path in repo: bytes served}.
    served: dict[str, dict[str, bytes]] = field(default_factory=dict)
    commits: dict[str, str] = field(default_factory=dict)
    partial_bytes: int = 0
    loose_gguf: Path | None = None
    ollama_layers: list[tuple[str, int]] = field(default_factory=list)
    ollama_model_blob: Path | None = None

    def blobs(self, commit: str) -> dict[str, int]:
        """Blob name → size for the files of a revision, as huggingface_hub names blobs."""
        return {etag(name, data): len(data) for name, data in self.served[commit].items()}

    def copy_to(self, root: Path) -> Built:
        """The same cache copied under ``root`` (snapshot links are relative, so they hold)."""
        old = self.hub.parent
        shutil.copytree(old, root, symlinks=True)

        def moved(p: Path) -> Path:
            return root / p.relative_to(old)

        return replace(
            self,
            hub=moved(self.hub),
            paths_dir=moved(self.paths_dir),
            ollama=moved(self.ollama),
            loose_gguf=moved(self.loose_gguf) if self.loose_gguf else None,
            ollama_model_blob=moved(self.ollama_model_blob) if self.ollama_model_blob else None,
        )

    def lab_toml(self, path: Path, deployments: str = "") -> Path:
        path.write_text(
            f'[models]\nhf_cache = "{self.hub}"\nollama = "{self.ollama}"\n'
            f'paths = ["{self.paths_dir}"]\n{deployments}'
        )
        return path


def build(root: Path) -> Built:
    root.mkdir(parents=True, exist_ok=True)
    b = Built(hub=root / "hub", paths_dir=root / "models", ollama=root / "ollama")
    hub = HubServer()
    old, new = tiny_qwen3_files(0), tiny_qwen3_files(1)
    b.commits["old"] = hub.add("Qwen/Qwen3-0.6B", old, ref=None)
    b.commits["main"] = hub.add("Qwen/Qwen3-0.6B", new)
    b.served = {b.commits["old"]: old, b.commits["main"]: new}
    big = {
        "config.json": json.dumps(QWEN3_32B).encode(),
        "tokenizer.json": TOKENIZER,
        "model.safetensors": np.random.default_rng(3).bytes(PARTIAL_WEIGHTS),
    }
    b.commits["partial"] = hub.add("acme/Qwen3-32B-partial", big)
    b.served[b.commits["partial"]] = big
    ggufs = {}
    for name, write in (("tiny-Q4_K_M.gguf", write_gguf), ("tiny-F32.gguf", write_tiny_llama)):
        write(root / name)
        ggufs[name] = (root / name).read_bytes()
    b.commits["gguf"] = hub.add("acme/tiny-GGUF", ggufs)
    b.served[b.commits["gguf"]] = {"tiny-Q4_K_M.gguf": ggufs["tiny-Q4_K_M.gguf"]}
    hub.hold("acme/Qwen3-32B-partial", "model.safetensors", PARTIAL_CUT)
    with hub.serve():
        quiet = {"cache_dir": b.hub, "endpoint": hub.url}
        snapshot_download("Qwen/Qwen3-0.6B", revision=b.commits["old"], **quiet)
        time.sleep(0.01)  # the newer revision's blobs are newer
        snapshot_download("Qwen/Qwen3-0.6B", **quiet)
        snapshot_download("acme/tiny-GGUF", allow_patterns=["*Q4_K_M*"], **quiet)
        b.partial_bytes = _killed_download(b.hub, hub.url, "acme/Qwen3-32B-partial")
    b.paths_dir.mkdir()
    b.loose_gguf = b.paths_dir / "loose-Q4_K_M.gguf"
    write_gguf(b.loose_gguf, hidden=128)
    _ollama_store(b, root / "tiny-F32.gguf")
    return b


def _killed_download(cache: Path, url: str, repo_id: str) -> int:
    """Start ``snapshot_download`` in a process, let the held file's transfer reach the disk,
    kill it; return the bytes of partial download left behind."""
    code = ("import sys\nfrom huggingface_hub import snapshot_download\n"
            "snapshot_download(sys.argv[1], cache_dir=sys.argv[2], endpoint=sys.argv[3])")  # fmt: skip
    # The held file sends nothing more: the client's read timeout (10 s by default) must not
    # end the download first on a loaded machine.
    env = dict(os.environ, HF_HUB_DOWNLOAD_TIMEOUT="300", HF_HUB_ETAG_TIMEOUT="60")
    proc = subprocess.Popen([sys.executable, "-c", code, repo_id, str(cache), url], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            partial = sorted(repo.glob("blobs/*.incomplete"))
            done = {p.name for p in repo.glob("snapshots/*/*")}
            if (
                partial
                and partial[0].stat().st_size > 0
                and {"config.json", "tokenizer.json"} <= done
            ):
                break
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
                raise AssertionError(
                    f"the download of {repo_id} ended ({proc.returncode}) before it was held: {err}"
                )
            time.sleep(0.05)
        else:
            raise AssertionError(f"the download of {repo_id} did not reach its hold in 60 s")
    finally:
        proc.kill()
        proc.communicate()
    return sum(p.stat().st_size for p in repo.glob("blobs/*.incomplete"))


def _ollama_store(b: Built, model_file: Path) -> None:
    """Ollama's layout: ``manifests/registry.ollama.ai/library/tiny/q4`` and its blobs."""
    blobs = b.ollama / "blobs"
    blobs.mkdir(parents=True)
    layers = []
    for media, data in (
        ("application/vnd.ollama.image.model", model_file.read_bytes()),
        ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
    ):
        digest = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{digest}").write_bytes(data)
        layers.append({"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)})
        b.ollama_layers.append((digest, len(data)))
    b.ollama_model_blob = blobs / f"sha256-{b.ollama_layers[0][0]}"
    config = b'{"model_format": "gguf"}'
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
        "layers": layers,
    }  # fmt: skip
    where = b.ollama / "manifests" / "registry.ollama.ai" / "library" / "tiny"
    where.mkdir(parents=True)
    (where / "q4").write_text(json.dumps(manifest))
