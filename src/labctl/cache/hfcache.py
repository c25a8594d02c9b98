"""The Hugging Face hub cache, read through ``huggingface_hub``'s cache API only.

``scan_cache_dir`` gives the repos, their revisions (snapshots), the files each links and
the partial downloads (``.incomplete`` blobs); ``get_cached_repo_tree`` gives the tree
listing a download recorded for a commit (``trees/<commit>.json``), against which a
snapshot is complete or not. Nothing here writes to the cache; see :mod:`~.maintain`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import (
    CachedFileInfo,
    CachedIncompleteFileInfo,
    CachedRepoInfo,
    CachedRevisionInfo,
    HFCacheInfo,
    RepoFile,
    get_cached_repo_tree,
    scan_cache_dir,
)
from huggingface_hub.errors import CachedRepoTreeNotFoundError, CacheNotFound

from labctl.cache.entry import (
    SPLIT_GGUF,
    CacheEntry,
    file_format,
    gguf_facts,
    hf_quantization,
    index_shards,
    needed_missing,
    weights_format,
)
from labctl.errors import CatalogError
from labctl.units import format_bytes


@dataclass(frozen=True)
class HubScan:
    """One scan of the hub cache: its entries, the scan itself (for deletions), and the
    texts of what could not be read (huggingface_hub's ``CorruptedCacheException``\\ s)."""

    cache_dir: Path
    entries: tuple[CacheEntry, ...]
    info: HFCacheInfo | None
    warnings: tuple[str, ...]


def scan_hub(cache_dir: Path) -> HubScan:
    """Every model revision in the hub cache at ``cache_dir`` (none when it does not exist).

    A blob that several revisions of one repo link is counted in one of them only: the
    revision ``main`` points to, else one another ref points to, else the newest. So a
    repo's entries add up to its size on disk. Its partial downloads count in the first
    revision, in that order, that lacks files (else in the first).
    """
    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return HubScan(cache_dir, (), None, ())
    except (OSError, ValueError) as exc:
        return HubScan(cache_dir, (), None, (f"{cache_dir}: cannot scan the hub cache: {exc}",))
    warnings = [str(w) for w in info.warnings]
    partials: dict[Path, list[CachedIncompleteFileInfo]] = defaultdict(list)
    for f in info.incomplete_files:
        partials[f.file_path.parent.parent].append(f)
    entries: list[CacheEntry] = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type == "model" and repo.revisions:
            entries.extend(_repo_entries(repo, partials.pop(repo.repo_path, []), info.cache_dir))
    for repo_path, files in sorted(partials.items()):
        size = sum(f.size_on_disk for f in files)
        warnings.append(
            f"{repo_path}: {len(files)} partial download(s), {format_bytes(size)}, belong to no "
            "readable snapshot; `labctl models prune` removes them"
        )
    return HubScan(info.cache_dir or cache_dir, tuple(entries), info, tuple(warnings))


def revision_order(repo: CachedRepoInfo) -> list[CachedRevisionInfo]:
    """A repo's revisions, the one a shared blob counts in first: ``main``'s, another
    ref's, then by modification time (newest first)."""
    return sorted(
        repo.revisions,
        key=lambda r: ("main" in r.refs, bool(r.refs), r.last_modified, r.commit_hash),
        reverse=True,
    )


def tree_files(repo_id: str, commit: str, cache_dir: Path | None) -> dict[str, RepoFile] | None:
    """The files (size, git blob id) a download recorded for ``commit``, by path; None when
    it recorded none."""
    try:
        files = get_cached_repo_tree(repo_id, revision=commit, cache_dir=cache_dir)
    except CachedRepoTreeNotFoundError:
        return None
    return {f.path: f for f in files}


def tree_listing(repo_id: str, commit: str, cache_dir: Path | None) -> dict[str, int] | None:
    """The file sizes a download recorded for ``commit`` (None when it recorded none)."""
    files = tree_files(repo_id, commit, cache_dir)
    return None if files is None else {path: f.size for path, f in files.items()}


def find_revision(info: HFCacheInfo, repo_id: str, commit: str) -> CachedRevisionInfo | None:
    """A revision of a model repo in a scan."""
    for repo in info.repos:
        if repo.repo_type == "model" and repo.repo_id == repo_id:
            return next((r for r in repo.revisions if r.commit_hash == commit), None)
    return None


def snapshot_files(revision: CachedRevisionInfo) -> dict[str, CachedFileInfo]:
    """The revision's files by their path in the repo."""
    out = {}
    for f in revision.files:
        try:
            rel = f.file_path.relative_to(revision.snapshot_path).as_posix()
        except ValueError:
            rel = f.file_name
        out[rel] = f
    return out


def _repo_entries(
    repo: CachedRepoInfo, partials: list[CachedIncompleteFileInfo], cache_dir: Path | None
) -> list[CacheEntry]:
    counted: set[Path] = set()
    drafts = []
    for rev in revision_order(repo):
        own = {f.blob_path: f.size_on_disk for f in rev.files if f.blob_path not in counted}
        counted |= own.keys()
        drafts.append(
            (rev, sum(own.values()), tree_listing(repo.repo_id, rev.commit_hash, cache_dir))
        )
    partial = sum(f.size_on_disk for f in partials)
    # The revision still being downloaded owns the partial files: the first that lacks files.
    owner = next((i for i, (rev, _, tree) in enumerate(drafts) if _lacks(rev, tree)), 0)
    entries = []
    for i, (rev, size, tree) in enumerate(drafts):
        mine = partial if i == owner and partials else 0
        entries.append(_entry(repo, rev, size, tree, mine))
    return entries


def _lacks(rev: CachedRevisionInfo, tree: dict[str, int] | None) -> bool:
    return tree is not None and bool(set(tree) - set(snapshot_files(rev)))


def _entry(
    repo: CachedRepoInfo,
    rev: CachedRevisionInfo,
    size: int,
    tree: dict[str, int] | None,
    partial: int,
) -> CacheEntry:
    files = snapshot_files(rev)
    notes: list[str] = []
    try:
        shards = index_shards(rev.snapshot_path)
    except CatalogError as exc:
        shards, notes = [], [str(exc)]
    missing = needed_missing(files, tree or {}, shards)
    wrong = [
        n for n, f in sorted(files.items()) if (tree or {}).get(n, f.size_on_disk) != f.size_on_disk
    ]
    for name in wrong:
        notes.append(
            f"{name}: {files[name].size_on_disk:,} bytes on disk, {(tree or {})[name]:,} in the "
            "tree listing; `labctl models verify` checks it"
        )
    # Without a tree listing, a partial download is the only sign of a missing file.
    complete = not missing and not wrong if tree is not None else not partial
    if weights_format(files) == "none":  # config and headers only, as `labctl fit` leaves it
        complete = False
        notes.append(
            f"no weights, only {', '.join(sorted(files)) or 'nothing'}; "
            f"`labctl models pull {repo.repo_id}` downloads them"
        )
    if partial and complete:
        notes.append(
            f"{format_bytes(partial)} of leftover partial downloads; `labctl models prune` "
            "removes them"
        )
    fmt = weights_format(list(files) + list(tree or {}))
    quant, plan_path, more = _describe(rev.snapshot_path, files, fmt)
    notes.extend(more)
    accessed = [f.blob_last_accessed for f in rev.files]
    return CacheEntry(
        repo_id=repo.repo_id,
        revision=rev.commit_hash,
        source="hf-cache",
        format=fmt,
        quantization=quant,
        size_bytes=size + partial,
        complete=complete,
        last_accessed=max(accessed) if accessed else repo.last_accessed,
        path=rev.snapshot_path,
        refs=tuple(sorted(rev.refs)),
        partial_bytes=partial,
        missing=tuple(missing),
        notes=tuple(notes),
        plan_path=plan_path,
    )


def _describe(
    snapshot: Path, files: Iterable[str], fmt: str
) -> tuple[str | None, Path | None, list[str]]:
    """Quantization, what to plan from, and notes, for a snapshot of format ``fmt``."""
    if fmt != "gguf":
        weights = [snapshot / n for n in sorted(files) if file_format(n) == fmt]
        quant, notes = hf_quantization(snapshot, weights)
        plannable = (snapshot / "config.json").is_file()
        return quant, snapshot if plannable else None, notes
    return describe_ggufs(snapshot, sorted(n for n in files if n.lower().endswith(".gguf")))


def describe_ggufs(base: Path, names: Iterable[str]) -> tuple[str | None, Path | None, list[str]]:
    """The quantizations of a folder's GGUF files and the one to plan: the smallest whole
    file that is not a multimodal projector (a repo of quantizations fits where its
    smallest does)."""
    quants: list[str] = []
    notes: list[str] = []
    candidates: list[tuple[int, Path]] = []
    for name in names:
        path = base / name
        facts = gguf_facts(path)
        if facts.error:
            notes.append(facts.error)
            continue
        if facts.quantization and facts.quantization not in quants:
            quants.append(facts.quantization)
        low = Path(name).name.lower()
        if not low.startswith("mmproj") and not SPLIT_GGUF.fullmatch(low):
            try:
                candidates.append((path.stat().st_size, path))
            except OSError:
                continue
    plan = min(candidates)[1] if candidates else None
    if plan is not None and len(candidates) > 1:
        notes.append(f"{len(candidates)} GGUF files; fits on is for the smallest, {plan.name}")
    return (", ".join(quants) or None), plan, notes
