"""Freeing disk: ``rm`` and ``prune``, each planned first (what goes, the space it frees)
and carried out only when asked, so a dry run is the same plan left unexecuted.

Hub-cache deletions go through ``huggingface_hub``'s own strategy
(``HFCacheInfo.delete_revisions``: a blob another revision still links stays) and its
``expected_freed_size``. Partial downloads, which it lists but has no deletion for, are
unlinked by the paths its scan gives, as ``hf cache prune`` does. Ollama's store is never
written: ``ollama rm`` owns it. A loose GGUF file from ``[models] paths`` may be deleted; a
loose model folder is left to its owner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
import time

from huggingface_hub import DeleteCacheStrategy

from labctl.cache.entry import SPLIT_GGUF, CacheEntry
from labctl.cache.inventory import Inventory, used_by
from labctl.config import DeploymentSpec
from labctl.errors import CatalogError, UsageError


@dataclass(frozen=True)
class Removal:
    """What deleting some entries removes, and the bytes it frees."""

    entries: tuple[CacheEntry, ...]
    freed_bytes: int
    #: Partial downloads that go with a hub repo removed whole (in ``freed_bytes``).
    partial_bytes: int
    strategy: DeleteCacheStrategy | None
    files: tuple[Path, ...]

    def paths(self) -> list[Path]:
        """Everything the removal deletes: repo folders, snapshots, blobs, files."""
        found: list[Path] = list(self.files)
        if self.strategy is not None:
            s = self.strategy
            found += sorted(s.repos) + sorted(s.snapshots) + sorted(s.refs) + sorted(s.blobs)
        return found


def check_unused(
    entries: Sequence[CacheEntry], deployments: Sequence[DeploymentSpec], source: str
) -> None:
    """Refuse entries a deployment of the lab uses.

    Raises:
        UsageError: naming the entry and the deployments, and ``--force``.
    """
    for e in entries:
        users = used_by(e, deployments)
        if users:
            what = e.repo_id + (f" {e.revision[:12]}" if e.revision else "")
            raise UsageError(
                f"{what} is the model of deployment {', '.join(users)} ({source}); stop or "
                "redeploy it first, or pass --force to delete it anyway"
            )


def plan_removal(inv: Inventory, entries: Sequence[CacheEntry]) -> Removal:
    """What deleting ``entries`` removes.

    Raises:
        CatalogError: an entry in Ollama's store or a loose model folder (not labctl's to
            delete), each with the command that deletes it.
    """
    for e in entries:
        if e.source == "ollama":
            name = f"{e.repo_id}:{e.revision}"
            raise CatalogError(
                f"{name} is in Ollama's store ({e.path.parents[4]}), which labctl only reads; "
                f"remove it with `ollama rm {name}`"
            )
        if e.source == "local":
            raise CatalogError(
                f"{e.path} is a model folder named in [models] paths; labctl deletes hub-cache "
                "revisions and loose GGUF files only: remove the folder yourself"
            )
    hub = [e for e in entries if e.source == "hf-cache" and e.revision]
    strategy, partial, freed = None, 0, 0
    if hub and inv.hub is not None:
        strategy = inv.hub.delete_revisions(*sorted({e.revision for e in hub if e.revision}))
        partial = sum(f.size_on_disk for f in inv.hub.incomplete_files
                      if f.file_path.parent.parent in strategy.repos)  # fmt: skip
        freed = strategy.expected_freed_size + partial
    files: list[Path] = []
    for e in entries:
        if e.source == "gguf":
            parts = [e.path] + [e.path.with_name(n) for n in _parts(e)]
            present = [p for p in parts if p.is_file()]
            files += present
            freed += sum(p.stat().st_size for p in present)
    return Removal(tuple(entries), freed, partial, strategy, tuple(files))


def _parts(e: CacheEntry) -> list[str]:
    """The other parts of a split GGUF entry (its first part is ``e.path``)."""
    m = SPLIT_GGUF.fullmatch(e.path.name)
    if m is None:
        return []
    width = len(m[2])
    return [f"{m[1]}-{i:0{width}d}-of-{m[3]}.gguf" for i in range(2, int(m[3]) + 1)]


def execute(removal: Removal) -> list[str]:
    """Carry out a removal; returns what could not be deleted (each a line)."""
    return _delete(removal.strategy, removal.files)


@dataclass(frozen=True)
class Prune:
    """Detached hub revisions and partial downloads, with what stays and why."""

    revisions: tuple[CacheEntry, ...]
    partial_files: tuple[tuple[Path, int], ...]
    kept: tuple[str, ...]
    strategy: DeleteCacheStrategy | None
    freed_bytes: int


def plan_prune(
    inv: Inventory,
    deployments: Sequence[DeploymentSpec],
    grace_s: float,
    now: float | None = None,
) -> Prune:
    """What ``prune`` removes: revisions of a hub repo that no ref points to while another
    revision of it has one (the branch moved on; a repo fetched by commit only is kept),
    unless a deployment uses them; and partial downloads untouched for ``grace_s`` (a
    younger one may belong to a download still running)."""
    now = time.time() if now is None else now
    with_ref = {e.repo_id for e in inv.entries if e.source == "hf-cache" and e.refs}
    kept: list[str] = []
    revisions = []
    for e in inv.entries:
        if e.source != "hf-cache" or e.refs or e.repo_id not in with_ref:
            continue
        users = used_by(e, deployments)
        if users:
            kept.append(f"{e.repo_id} {e.revision}: used by {', '.join(users)}")
        else:
            revisions.append(e)
    strategy = None
    freed = 0
    if revisions and inv.hub is not None:
        strategy = inv.hub.delete_revisions(*sorted({e.revision for e in revisions if e.revision}))
        freed = strategy.expected_freed_size
    partial: list[tuple[Path, int]] = []
    for f in sorted(inv.hub.incomplete_files if inv.hub else (), key=lambda f: f.file_path):
        try:
            age = now - f.file_path.stat().st_mtime
        except OSError:
            continue
        if age < grace_s:
            kept.append(f"{f.file_path}: written {age:.0f} s ago; a download may still be running")
        else:
            partial.append((f.file_path, f.size_on_disk))
            freed += f.size_on_disk
    return Prune(tuple(revisions), tuple(partial), tuple(kept), strategy, freed)


def execute_prune(p: Prune) -> list[str]:
    """Carry out a prune; returns what could not be deleted."""
    return _delete(p.strategy, [path for path, _ in p.partial_files])


def _delete(strategy: DeleteCacheStrategy | None, files: Sequence[Path]) -> list[str]:
    """huggingface_hub's deletion, then the loose files; what is left, each a line."""
    if strategy is not None:
        strategy.execute()
    left = []
    for f in files:
        try:
            f.unlink(missing_ok=True)
        except OSError as exc:
            left.append(f"{f}: {exc.strerror or exc}")
    if strategy is not None:
        s = strategy
        left += [f"{q}: still there" for q in sorted(s.repos | s.snapshots | s.blobs) if q.exists()]
    return left
