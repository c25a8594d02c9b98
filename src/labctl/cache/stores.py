"""Model files outside the hub cache: ``[models] paths`` and Ollama's store, read only.

Both are read by hand, within bounds: a folder is searched a few levels deep and a few
thousand names wide; Ollama's manifests (``manifests/<host>/<namespace>/<model>/<tag>``,
JSON naming ``blobs/sha256-<hex>`` layers) are small files read with the catalog's bounded
JSON reader. The model layer of an Ollama manifest is a GGUF file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
import os
from pathlib import Path
import re
from typing import Any

from labctl.cache.entry import (
    SPLIT_GGUF,
    CacheEntry,
    file_format,
    hf_quantization,
    index_shards,
    weights_format,
)
from labctl.cache.hfcache import describe_ggufs
from labctl.catalog.jsonfile import read_json
from labctl.errors import CatalogError

#: How deep a folder in ``[models] paths`` is searched, and how many names are looked at.
MAX_DEPTH = 4
MAX_NAMES = 20_000
#: Ollama: manifests read at most, and the size of one (real ones are under 2 KiB).
MAX_MANIFESTS = 10_000
MAX_MANIFEST_BYTES = 1 << 20
#: The media type of the layer that holds an Ollama model's weights (a GGUF file).
OLLAMA_MODEL = "application/vnd.ollama.image.model"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_OLLAMA_LIBRARY = ("registry.ollama.ai", "library")


@dataclass
class _Budget:
    names: int = MAX_NAMES

    def take(self) -> bool:
        self.names -= 1
        return self.names >= 0


def scan_paths(
    paths: Sequence[str], skip: Path | None = None
) -> tuple[list[CacheEntry], list[str]]:
    """GGUF files (``source`` gguf) and model directories with a ``config.json``
    (``source`` local) at or under ``paths``; anything under ``skip`` (the hub cache, which
    is listed through its own API) is left out. Each file counts once, however many paths
    reach it."""
    entries: list[CacheEntry] = []
    warnings: list[str] = []
    seen: set[Path] = set()
    budget = _Budget()
    skip_r = skip.resolve() if skip else None
    for raw in paths:
        top = Path(raw).expanduser()
        try:
            if not top.exists():
                warnings.append(f"models.paths: {raw} does not exist")
                continue
            found = list(_walk(top, 0, budget)) if top.is_dir() else [top]
        except OSError as exc:
            warnings.append(f"models.paths: {raw}: cannot read: {exc.strerror or exc}")
            continue
        if budget.names < 0:
            warnings.append(
                f"models.paths: stopped after {MAX_NAMES:,} names; name the model folders "
                "themselves rather than a large tree"
            )
        for path in found:
            real = path.resolve()
            if real in seen or (skip_r is not None and real.is_relative_to(skip_r)):
                continue
            seen.add(real)
            if path.is_dir():
                entries.append(_model_dir(path))
            elif path.name.lower().endswith(".gguf"):
                entries.append(_gguf_file(path))
            else:
                warnings.append(f"models.paths: {raw} is neither a GGUF file nor a model folder")
    return entries, warnings


def _walk(folder: Path, depth: int, budget: _Budget) -> Iterator[Path]:
    """Model directories and GGUF files (the first part of a split one) under ``folder``;
    hidden names and symbolic links to folders are passed over."""
    if (folder / "config.json").is_file():
        yield folder
        return
    with os.scandir(folder) as it:
        items = sorted(it, key=lambda e: e.name)
    for item in items:
        if not budget.take():
            return
        if item.name.startswith("."):
            continue
        if item.is_dir(follow_symlinks=False):
            if depth + 1 < MAX_DEPTH:
                yield from _walk(Path(item.path), depth + 1, budget)
        elif item.name.lower().endswith(".gguf") and item.is_file():
            split = SPLIT_GGUF.fullmatch(item.name)
            if split is None or int(split[2]) == 1:
                yield Path(item.path)


def _gguf_file(path: Path) -> CacheEntry:
    """A loose GGUF file, with the other parts of a split one."""
    parts = [path]
    split = SPLIT_GGUF.fullmatch(path.name)
    notes: list[str] = []
    if split:
        width, total = len(split[2]), int(split[3])
        parts = [path.with_name(f"{split[1]}-{i:0{width}d}-of-{split[3]}.gguf")
                 for i in range(1, total + 1)]  # fmt: skip
    present = [p for p in parts if p.is_file()]
    missing = tuple(p.name for p in parts if p not in present)
    quant, plan, more = describe_ggufs(path.parent, [path.name])
    notes.extend(more)
    if split:
        notes.append(f"split into {len(parts)} files; `labctl fit` plans whole files only")
    stats = [p.stat() for p in present]
    return CacheEntry(
        repo_id=path.name,
        revision=None,
        source="gguf",
        format="gguf",
        quantization=quant,
        size_bytes=sum(s.st_size for s in stats),
        complete=not missing and not more,
        last_accessed=max(s.st_atime for s in stats),
        path=path,
        missing=missing,
        notes=tuple(notes),
        plan_path=plan,
    )


def _model_dir(path: Path) -> CacheEntry:
    """A loose Hugging Face model directory (``config.json`` beside its weights)."""
    names: dict[str, os.stat_result] = {}
    for item in sorted(path.iterdir())[:MAX_NAMES]:
        if item.is_file():
            names[item.name] = item.stat()
    notes: list[str] = []
    try:
        shards = index_shards(path)
    except CatalogError as exc:
        shards, notes = [], [str(exc)]
    fmt = weights_format(names)
    weights = [path / n for n in sorted(names) if file_format(n) == fmt]
    quant, more = hf_quantization(path, weights)
    missing = tuple(s for s in shards if s not in names)
    return CacheEntry(
        repo_id=path.name,
        revision=None,
        source="local",
        format=fmt,
        quantization=quant,
        size_bytes=sum(s.st_size for s in names.values()),
        complete=not missing,
        last_accessed=max((s.st_atime for s in names.values()), default=None),
        path=path,
        missing=missing,
        notes=tuple(notes + more),
        plan_path=path,
    )


# -- Ollama ---------------------------------------------------------------------------------


def scan_ollama(roots: Sequence[Path]) -> tuple[list[CacheEntry], list[str]]:
    """Every model tag in Ollama's stores at ``roots``. An entry's size is the sum of its
    manifest's layers, as ``ollama ls`` shows it (a blob two tags share counts in both)."""
    entries: list[CacheEntry] = []
    warnings: list[str] = []
    for root in roots:
        manifests = root / "manifests"
        try:
            found = sorted(_manifests(manifests))
        except OSError as exc:
            warnings.append(f"{manifests}: cannot read Ollama's manifests: {exc.strerror or exc}")
            continue
        if len(found) > MAX_MANIFESTS:
            warnings.append(
                f"{manifests}: read the first {MAX_MANIFESTS:,} of {len(found):,} manifests"
            )
        for path in found[:MAX_MANIFESTS]:
            try:
                entries.append(_ollama_entry(root, path))
            except CatalogError as exc:
                warnings.append(str(exc))
    return entries, warnings


def _manifests(manifests: Path) -> Iterator[Path]:
    """``manifests/<host>/<namespace>/<model>/<tag>``: exactly four levels."""
    if not manifests.is_dir():
        return
    count = 0
    for host in manifests.iterdir():
        for ns in _dirs(host):
            for model in _dirs(ns):
                for tag in model.iterdir() if model.is_dir() else ():
                    count += 1
                    if count > MAX_MANIFESTS + 1:
                        return
                    if tag.is_file():
                        yield tag


def _dirs(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.is_dir()] if path.is_dir() else []


def ollama_name(manifest: Path, manifests: Path) -> tuple[str, str]:
    """(model, tag) as Ollama writes them: ``llama3.2``, ``3b``; a namespace or host other
    than the library's stays in the name (``user/model``, ``host/ns/model``)."""
    host, ns, model, tag = manifest.relative_to(manifests).parts
    if (host, ns) == _OLLAMA_LIBRARY:
        return model, tag
    if host == _OLLAMA_LIBRARY[0]:
        return f"{ns}/{model}", tag
    return f"{host}/{ns}/{model}", tag


def _ollama_entry(root: Path, manifest: Path) -> CacheEntry:
    doc = read_json(manifest, "Ollama manifest", MAX_MANIFEST_BYTES, 10_000)
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, list):
        raise CatalogError(f"{manifest}: not an Ollama manifest (no 'layers' list)")
    name, tag = ollama_name(manifest, root / "manifests")
    size, missing, notes = 0, [], []
    model_blob: Path | None = None
    for layer in layers:
        blob, layer_size, problem = _layer(root, layer)
        if problem:
            notes.append(f"{manifest}: {problem}")
            continue
        assert blob is not None
        size += layer_size
        try:
            on_disk = blob.stat().st_size
        except OSError:
            on_disk = None
        if on_disk != layer_size:
            missing.append(blob.name)
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL:
            model_blob = blob
    quant, plan = None, None
    if model_blob is not None and model_blob.name not in missing:
        quant, plan, more = describe_ggufs(model_blob.parent, [model_blob.name])
        notes.extend(more)
    accessed = None
    if model_blob is not None and model_blob.name not in missing:
        accessed = model_blob.stat().st_atime
    return CacheEntry(
        repo_id=name,
        revision=tag,
        source="ollama",
        format="gguf" if model_blob is not None else "none",
        quantization=quant,
        size_bytes=size,
        complete=not missing and not notes,
        last_accessed=accessed,
        path=manifest,
        missing=tuple(missing),
        notes=tuple(notes),
        plan_path=plan,
    )


def _layer(root: Path, layer: Any) -> tuple[Path | None, int, str | None]:
    """A manifest layer's blob and size, or what is wrong with it."""
    if not isinstance(layer, dict):
        return None, 0, "a layer is not an object"
    digest, size = layer.get("digest"), layer.get("size")
    m = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if m is None or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return None, 0, "a layer without a sha256 digest and a size"
    return root / "blobs" / f"sha256-{m[1]}", size, None


def ollama_blobs(root: Path, manifest: Path) -> list[tuple[Path, str, int]]:
    """(blob, sha256, size) of each layer of a manifest, for verification.

    Raises:
        CatalogError: the manifest cannot be read.
    """
    doc = read_json(manifest, "Ollama manifest", MAX_MANIFEST_BYTES, 10_000)
    layers = doc.get("layers") if isinstance(doc, dict) else None
    out = []
    for layer in layers if isinstance(layers, list) else []:
        blob, size, problem = _layer(root, layer)
        if blob is not None and problem is None:
            out.append((blob, blob.name.removeprefix("sha256-"), size))
    return out
