"""The merged listing of every model on disk, and which deployments use which.

The hub cache (:mod:`~.hfcache`), ``[models] paths`` and Ollama's store (:mod:`~.stores`)
are read in turn; what one of them cannot read becomes a warning, never an error, so one
bad file does not hide the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import os
from pathlib import Path

from huggingface_hub import HFCacheInfo

from labctl.cache.entry import CacheEntry
from labctl.cache.hfcache import scan_hub
from labctl.cache.location import hub_cache_dir, ollama_dirs
from labctl.cache.stores import scan_ollama, scan_paths
from labctl.config import DeploymentSpec, ModelsConfig
from labctl.errors import CatalogError


@dataclass(frozen=True)
class Inventory:
    entries: tuple[CacheEntry, ...]
    #: Where each store was looked for.
    cache_dir: Path
    ollama: tuple[Path, ...]
    paths: tuple[str, ...]
    warnings: tuple[str, ...]
    #: The hub cache's scan, which deletions start from (None when there is no cache).
    hub: HFCacheInfo | None = None

    def looked_in(self) -> str:
        """Where the listing looked, in one line."""
        places = [f"hub cache {self.cache_dir}"]
        places += [f"Ollama {p}" for p in self.ollama] or ["no Ollama store"]
        places += [f"[models] paths {', '.join(self.paths)}"] if self.paths else []
        return "; ".join(places)


def scan(models: ModelsConfig) -> Inventory:
    """Everything on disk that ``[models]`` points at (and the tools' default places)."""
    cache_dir = hub_cache_dir(models)
    hub = scan_hub(cache_dir)
    loose, loose_warnings = scan_paths(models.paths, skip=cache_dir)
    ollama = ollama_dirs(models)
    held, ollama_warnings = scan_ollama(ollama)
    if models.ollama and not Path(models.ollama).expanduser().is_dir():
        ollama_warnings.append(f"models.ollama: {models.ollama} is not a directory")
    return Inventory(
        entries=(*hub.entries, *loose, *held),
        cache_dir=hub.cache_dir,
        ollama=tuple(ollama),
        paths=tuple(models.paths),
        warnings=(*hub.warnings, *loose_warnings, *ollama_warnings),
        hub=hub.info,
    )


def used_by(entry: CacheEntry, deployments: Sequence[DeploymentSpec]) -> list[str]:
    """The deployments whose model is this entry: its repo id (for a hub revision, the one
    ``main`` or the deployment's ``revision`` argument names), or a path to its files."""
    names = []
    for d in deployments:
        if d.model and _uses(entry, d.model, d.args.get("revision")):
            names.append(d.name)
    return names


def _uses(entry: CacheEntry, model: str, revision: object) -> bool:
    if entry.source == "hf-cache" and model.lower() == entry.repo_id.lower():
        wanted = str(revision) if revision else "main"
        return wanted in entry.refs or wanted == entry.revision
    if entry.source == "ollama" and model in (entry.repo_id, f"{entry.repo_id}:{entry.revision}"):
        return True
    if not model.startswith(("/", "~", ".")) and not model.lower().endswith(".gguf"):
        return False
    try:
        given = Path(os.path.abspath(Path(model).expanduser()))
        targets = {given, given.resolve()}
        own = {entry.path, entry.path.resolve()}
        if entry.plan_path is not None:
            own |= {entry.plan_path, entry.plan_path.resolve()}
    except (OSError, RuntimeError):
        return False
    if targets & own:
        return True
    # A file inside a snapshot (``…/snapshots/<commit>/model.gguf``) is that snapshot's.
    return entry.source == "hf-cache" and given.is_relative_to(entry.path)


def select(inv: Inventory, target: str, revision: str | None = None) -> list[CacheEntry]:
    """The entries ``target`` names: a repo id (any case), an Ollama ``model[:tag]``, a GGUF
    file's name, or a path; ``revision`` narrows a hub repo to a commit (or its first
    characters) or a ref, and an Ollama model to a tag.

    Raises:
        CatalogError: nothing on disk by that name, or no such revision of it.
    """
    name, _, tag = target.rpartition(":") if ":" in target else (target, "", "")
    path = Path(target).expanduser()
    found = [e for e in inv.entries if _named(e, target, name, tag, path)]
    if not found:
        raise CatalogError(
            f"{target} is not on disk (looked in {inv.looked_in()}); `labctl models` lists what is"
        )
    if revision is None:
        return found
    picked = [e for e in found if _matches(e, revision)]
    if not picked:
        have = ", ".join(_revision_label(e) for e in found)
        raise CatalogError(f"{target} has no revision {revision!r} on disk; it has: {have}")
    return picked


def _named(e: CacheEntry, target: str, name: str, tag: str, path: Path) -> bool:
    if e.source == "hf-cache":
        return e.repo_id.lower() == target.lower()
    if e.source == "ollama":
        return e.repo_id == name and tag in ("", e.revision)
    return target == e.repo_id or _same(path, e.path)


def _matches(e: CacheEntry, revision: str) -> bool:
    if e.revision is None:
        return False
    if revision in e.refs or revision == e.revision:
        return True
    return e.source == "hf-cache" and len(revision) >= 7 and e.revision.startswith(revision)


def _revision_label(e: CacheEntry) -> str:
    if e.revision is None:
        return "no revisions"
    refs = f" ({', '.join(e.refs)})" if e.refs else ""
    return (e.revision[:12] if e.source == "hf-cache" else e.revision) + refs


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and a.resolve() == b.resolve()
    except OSError:
        return False
