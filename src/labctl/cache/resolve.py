"""Resolve MODEL as a user types it: the built-in catalog, the local hub cache, then the hub.

The catalog (``labctl.catalog.models.resolve``) answers for its ids, the quantized
repos it knows by name, local directories and ``.gguf`` files. Any other ``owner/name``
(or ``owner/name:QUANT`` for a GGUF repo, llama.cpp's ``-hf`` form) is a Hugging Face repo:

1. a snapshot in the local hub cache that holds its config.json and all its safetensors
   shards (or the GGUF file asked for) is read as a local directory;
2. else what an earlier resolution read from the hub (config.json in the hub cache, the
   headers beside it: :mod:`labctl.cache.hub`);
3. else the hub, once, unless ``HF_HUB_OFFLINE`` is set or the caller must not wait on
   the network (``hub=False``), and then 2 answers from then on.

So ``labctl fit Qwen/Qwen3-4B`` works for any public (or, with ``HF_TOKEN``,
token-accessible) repo while online, and offline once seen.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from labctl.cache.location import hub_cache_dir
from labctl.cache.repoid import RepoRef, parse_ref
from labctl.catalog.arch import ModelArch
from labctl.catalog.gguf import arch_from_gguf, read_gguf
from labctl.catalog.hf import arch_from_parts, load_hf_dir, read_config
from labctl.catalog.models import resolve as catalog_resolve
from labctl.catalog.safetensors import checkpoint_files
from labctl.config import ModelsConfig
from labctl.errors import CatalogError, ModelFormatError

if TYPE_CHECKING:
    from labctl.cache.hub import Manifest

# huggingface_hub takes a third of a second to import: it is imported where a repo id is
# resolved, not by every command that can resolve a catalog id.


def resolve_model(
    text: str,
    models: ModelsConfig | None = None,
    *,
    revision: str | None = None,
    hub: bool = True,
) -> ModelArch:
    """The architecture MODEL names (see the module's docstring for the order).

    ``hub=False`` never touches the network (for callers on an event loop): a repo seen
    before still resolves.

    Raises:
        CatalogError: nothing by that name (the catalog's suggestions), or the hub refused
            or cannot be reached (:class:`HubError`: what to do, e.g. the ``labctl models
            pull`` to run while online).
        ModelFormatError: a file or header is malformed.
    """
    try:
        return catalog_resolve(text)
    except ModelFormatError:
        raise
    except CatalogError as exc:
        ref = parse_ref(text, revision)
        if ref is None or text.strip().startswith((".", "/", "~")):
            raise
        unknown = exc
    from labctl.cache.hub import HubError, endpoint, fetch, load_manifest, offline

    cache = hub_cache_dir(models)
    name = text.strip()
    arch = local_arch(ref, cache, name)
    if arch is not None:
        return arch
    manifest = load_manifest(ref, cache)
    arch = manifest_arch(ref, manifest, cache, name) if manifest is not None else None
    if arch is not None:
        return arch
    if not hub:
        raise unknown
    # A typo of a catalog id is the likelier story when the hub cannot help: say which.
    hint = str(unknown).partition(" Did you mean ")[2].partition("?")[0]
    also = f". Did you mean {hint}?" if hint else ""
    if offline():
        raise HubError(
            f"{ref.repo_id} is not in the local hub cache ({cache}) and HF_HUB_OFFLINE is set; "
            f"run `labctl models pull {ref.repo_id}` (or `labctl fit {ref.repo_id}`) while "
            f"online, or unset HF_HUB_OFFLINE{also}"
        )
    try:
        manifest = fetch(ref, cache)
    except HubError as exc:
        raise type(exc)(f"{exc}{also}") from None
    arch = manifest_arch(ref, manifest, cache, name)
    if arch is None:  # written a moment ago: only a cache that cannot be written gets here
        raise HubError(
            f"{ref.repo_id}: what was read from {endpoint()} could not be kept in {cache}"
        )
    return arch


def snapshot_dir(repo_id: str, revision: str, cache: Path) -> Path | None:
    """The local snapshot folder of ``revision``, complete or not (None: none there)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        found = snapshot_download(
            repo_id, revision=revision, cache_dir=cache, local_files_only=True
        )
        return Path(found)
    except IncompleteSnapshotError as exc:  # files missing: the weights may still be whole
        return Path(exc.snapshot_path)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def local_arch(ref: RepoRef, cache: Path, name: str) -> ModelArch | None:
    """``ref`` read from a local snapshot that holds its weights (None: there is none)."""
    from labctl.cache.hub import HubError, gguf_files, pick_gguf

    snap = snapshot_dir(ref.repo_id, ref.revision, cache)
    if snap is None:
        return None
    names = [str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file()]
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    if gguf_files(names) and (ref.quant is not None or not has_safetensors):
        try:
            chosen = pick_gguf(ref.repo_id, names, ref.quant)
        except HubError:
            return None  # the hub may have the quantization (or the parts) asked for
        parts = [read_gguf(snap / n) for n in chosen]
        gf = replace(parts[0], tensors=tuple(t for p in parts for t in p.tensors))
        return arch_from_gguf(gf, name)
    if not (snap / "config.json").is_file() or not has_safetensors:
        return None
    try:
        if not checkpoint_files(snap):
            return None
    except ModelFormatError:
        return None  # a shard is missing: not complete
    return load_hf_dir(snap, name)


def manifest_arch(ref: RepoRef, m: Manifest, cache: Path, name: str) -> ModelArch | None:
    """``ref`` from what an earlier read of the hub kept (None: not all of it is there)."""
    from huggingface_hub import try_to_load_from_cache

    from labctl.cache.hub import gguf_file, kept_header, pick_gguf, safetensors_tensors

    note = f"read from {m.endpoint}: {ref.repo_id} at {m.commit[:12]} (config and headers only)"
    if m.uses_gguf(ref.quant):
        names = pick_gguf(ref.repo_id, list(m.sizes), ref.quant)
        heads = {n: kept_header(cache, m, n) for n in names}
        kept = {n: h for n, h in heads.items() if h is not None}
        if len(kept) < len(names):
            return None
        arch = arch_from_gguf(gguf_file(ref.repo_id, names, kept, m.sizes), name)
        return replace(arch, notes=(*arch.notes, note))
    config = try_to_load_from_cache(ref.repo_id, "config.json", cache_dir=cache, revision=m.commit)
    if not isinstance(config, str):
        return None
    tensors = []
    for shard in sorted(m.headers):
        raw = kept_header(cache, m, shard)
        if raw is None:
            return None
        tensors += safetensors_tensors(ref.repo_id, shard, raw, m.sizes.get(shard, 0))
    source = f"{ref.repo_id}@{m.commit[:12]}"
    arch = arch_from_parts(read_config(Path(config).parent), tensors, name, source)
    return replace(arch, notes=(*arch.notes, note))
