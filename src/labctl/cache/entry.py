"""One model on disk, and what its files say about it: weights format and quantization.

The readers are the catalog's (bounded, for untrusted files): ``config.json`` and its
``quantization_config``, safetensors headers, GGUF headers. Nothing here plans or loads a
model; which GPUs it fits is composed above this layer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
import re
from typing import Any

from labctl.catalog.gguf import read_gguf
from labctl.catalog.hf import read_config
from labctl.catalog.jsonfile import read_json
from labctl.catalog.limits import MAX_INDEX_BYTES, MAX_INDEX_ITEMS
from labctl.catalog.quantconfig import parse_quantization_config
from labctl.catalog.safetensors import read_header
from labctl.errors import CatalogError

#: Where an entry comes from: the Hugging Face hub cache, a loose GGUF file or a model
#: directory named in ``[models] paths``, or Ollama's store.
SOURCES = ("hf-cache", "gguf", "local", "ollama")
#: Weight formats by file name, in the order an engine prefers them when a repo has several.
FORMATS = ("safetensors", "gguf", "pytorch-bin", "pytorch", "onnx", "none")
#: A split GGUF file's part: ``name-00001-of-00003.gguf``.
SPLIT_GGUF = re.compile(r"(.*)-(\d{5})-of-(\d{5})\.gguf", re.IGNORECASE)
#: Checkpoint index files, which name every shard of the weights.
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "bf16": "bf16",
           "f16": "fp16", "f32": "fp32", "f8_e4m3": "fp8", "float8_e4m3fn": "fp8"}  # fmt: skip


@dataclass(frozen=True)
class CacheEntry:
    """A model on disk: one revision of a hub repo, a GGUF file, a model directory, or an
    Ollama tag.

    ``size_bytes`` is what the entry holds on disk, partial downloads included
    (``partial_bytes``); how shared blobs are counted is the store reader's to say.
    ``plan_path`` is what a planner reads (a snapshot or model directory, a GGUF file), None
    when there is nothing to plan from.
    """

    repo_id: str
    revision: str | None
    source: str
    format: str
    quantization: str | None
    size_bytes: int
    complete: bool
    last_accessed: float | None
    path: Path
    refs: tuple[str, ...] = ()
    partial_bytes: int = 0
    #: Files the entry needs that are not on disk (from the snapshot's tree listing).
    missing: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    plan_path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "source": self.source,
            "format": self.format,
            "quantization": self.quantization,
            "size_bytes": self.size_bytes,
            "partial_bytes": self.partial_bytes,
            "complete": self.complete,
            "missing_files": list(self.missing),
            "last_accessed": iso_time(self.last_accessed),
            "refs": list(self.refs),
            "path": str(self.path),
            "notes": list(self.notes),
        }


def iso_time(ts: float | None) -> str | None:
    """A timestamp as ISO 8601 in UTC, to the second."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def file_format(name: str) -> str | None:
    """The weight format a file name says, or None for other files."""
    low = name.lower().rsplit("/", 1)[-1]
    if low.endswith(".safetensors"):
        return "safetensors"
    if low.endswith(".gguf"):
        return "gguf"
    if low.endswith(".bin") and low.startswith("pytorch_model"):
        return "pytorch-bin"
    if low.endswith((".pt", ".pth")):
        return "pytorch"
    if low.endswith(".onnx"):
        return "onnx"
    return None


def weights_format(names: Iterable[str]) -> str:
    """The format an engine would load from these files (safetensors before the others)."""
    found = {file_format(n) for n in names}
    return next((f for f in FORMATS if f in found), "none")


def needed_missing(
    present: Iterable[str], listed: Iterable[str], index: Iterable[str]
) -> list[str]:
    """The files a snapshot still needs, of those its tree listing names and it lacks.

    A download usually takes part of a repo (vLLM takes the safetensors and configs; a GGUF
    repo's user takes one quantization), so an absent file counts only when it is part of
    the weights the snapshot holds: a shard beside a present one or named by its index
    file, another part of a present split GGUF, every weight file of the repo's format when
    none has arrived yet, and ``config.json`` for non-GGUF weights.
    """
    have = set(present)
    absent = sorted(set(listed) - have)
    fmt = weights_format(have)
    if fmt == "none":
        fmt = weights_format(listed)
    have_fmt = [n for n in have if file_format(n) == fmt]
    shards = set(index)
    need = []
    for name in absent:
        if name == "config.json" and fmt not in ("gguf", "none"):
            need.append(name)
        elif file_format(name) != fmt:
            continue
        elif not have_fmt or name in shards or any(_same_split(name, h) for h in have_fmt):
            need.append(name)
    return need


def _same_split(a: str, b: str) -> bool:
    """Whether two files are parts of one split checkpoint (``…-00002-of-00004.*``)."""
    pa = re.fullmatch(r"(.*)-\d{5}-of-(\d{5})(\.[a-z]+)", a, re.IGNORECASE)
    pb = re.fullmatch(r"(.*)-\d{5}-of-(\d{5})(\.[a-z]+)", b, re.IGNORECASE)
    return bool(pa and pb and pa.groups() == pb.groups())


def index_shards(directory: Path) -> list[str]:
    """The shard files the directory's index file names (none without one).

    Raises:
        CatalogError: the index file cannot be read or is malformed.
    """
    for name in INDEX_FILES:
        path = directory / name
        if path.is_file():
            doc = read_json(path, "index file", MAX_INDEX_BYTES, MAX_INDEX_ITEMS)
            weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
            if isinstance(weight_map, dict):
                return sorted({v for v in weight_map.values() if isinstance(v, str)})
    return []


def hf_quantization(directory: Path, weight_files: list[Path]) -> tuple[str | None, list[str]]:
    """A model directory's quantization: ``quantization_config``'s method (``fp8``,
    ``awq``…), else the dtype it is stored in (``bf16``); with notes on what could not be read.
    """
    notes: list[str] = []
    config: dict[str, Any] = {}
    if (directory / "config.json").is_file():
        try:
            config = read_config(directory)
        except CatalogError as exc:
            notes.append(str(exc))
    for cfg in (config, config.get("text_config")):
        if isinstance(cfg, dict) and cfg.get("quantization_config") is not None:
            try:
                quant = parse_quantization_config(cfg["quantization_config"])
            except CatalogError as exc:
                notes.append(str(exc))
                return None, notes
            return (quant.method if quant else None), notes
    for cfg in (config.get("text_config"), config):
        if isinstance(cfg, dict):
            value = cfg.get("torch_dtype") or cfg.get("dtype")
            if isinstance(value, str):
                name = value.removeprefix("torch.").lower()
                return _DTYPES.get(name, name), notes
    safetensors = [p for p in weight_files if p.name.endswith(".safetensors")]
    if safetensors:
        try:
            tensors = read_header(safetensors[0])
        except CatalogError as exc:
            notes.append(str(exc))
            return None, notes
        by_bytes: Counter[str] = Counter()
        for t in tensors:
            by_bytes[t.dtype] += t.nbytes
        if by_bytes:
            top = by_bytes.most_common(1)[0][0].lower()
            return _DTYPES.get(top, top), notes
    return None, notes


@dataclass(frozen=True)
class GgufFacts:
    """What a GGUF header says: the quantization, or why the header cannot be read (the
    reader refuses a truncated file: a tensor that runs past its end)."""

    quantization: str | None
    error: str | None


def gguf_facts(path: Path) -> GgufFacts:
    """Read a GGUF header (never the tensor data): ``general.file_type`` (``Q4_K_M``), else
    the ggml type that holds most bytes of the 2-D tensors."""
    try:
        gf = read_gguf(path)
    except CatalogError as exc:
        return GgufFacts(None, str(exc))
    quant = gf.file_type
    if quant is None:
        by_bytes: Counter[str] = Counter()
        for t in gf.tensors:
            if len(t.shape) >= 2:
                by_bytes[t.ggml_type] += t.nbytes
        quant = by_bytes.most_common(1)[0][0] if by_bytes else None
    return GgufFacts(quant, None)
