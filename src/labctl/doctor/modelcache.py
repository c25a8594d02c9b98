"""The lab's model cache as the doctor's checks read it: where it is, which deployments read
a hub repo from it, and what each still lacks there.

vLLM, given ``owner/name``, reads the repo from the Hugging Face hub cache (and downloads
what is missing at start, the slow way); the twin reads no weights, and llama.cpp and
whisper.cpp take file paths. So only a vLLM deployment of a repo id needs it whole there.
huggingface_hub is imported only when a check reads the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
from typing import TYPE_CHECKING

from labctl.cache.location import hub_cache_dir
from labctl.cache.repoid import RepoRef, parse_ref
from labctl.config import DeploymentSpec, LabConfig
from labctl.errors import LabError
from labctl.units import format_bytes

if TYPE_CHECKING:
    from labctl.cache.pull import Snapshot

#: Engines that read their model from the hub cache when it names a repo.
READS_HUB = ("vllm",)


def cache_dir(lab: LabConfig | None) -> Path:
    """The hub cache the lab reads: ``[models] hf_cache``, else huggingface_hub's own."""
    return hub_cache_dir(lab.models if lab is not None else None)


def existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists (what ``statvfs`` can be asked about)."""
    for p in (path, *path.parents):
        try:
            if p.exists():
                return p
        except OSError:
            continue
    return Path("/")


def local_model(spec: DeploymentSpec) -> str | None:
    """The deployment's model as an absolute path, when it names a file or directory."""
    model = spec.model
    if not model:
        return None
    if spec.engine in ("llamacpp", "whispercpp") or model.startswith(("/", "~", ".")):
        return os.path.abspath(os.path.expanduser(model))
    return None


def hub_model(spec: DeploymentSpec) -> RepoRef | None:
    """The hub repo (and revision, vLLM's ``--revision``) whose files the engine reads from
    the cache; None when it reads none (another engine, a local path, no model)."""
    if spec.engine not in READS_HUB or not spec.model or local_model(spec) is not None:
        return None
    revision = spec.args.get("revision")
    ref = parse_ref(spec.model, str(revision) if revision else None)
    return ref if ref is not None and ref.quant is None else None


def hub_deployments(lab: LabConfig) -> list[tuple[DeploymentSpec, RepoRef]]:
    out = []
    for spec in lab.deployments:
        ref = hub_model(spec)
        if ref is not None:
            out.append((spec, ref))
    return out


def pull_command(ref: RepoRef) -> str:
    revision = f" --revision {ref.revision}" if ref.revision != "main" else ""
    return f"labctl models pull {ref.repo_id}{revision}"


@dataclass(frozen=True)
class Wanted:
    """A deployment's repo, how whole the cache holds it, and the bytes still to download."""

    spec: DeploymentSpec
    ref: RepoRef
    snapshot: Snapshot
    #: Bytes still to download (0 when whole; None when nothing says how many).
    missing_bytes: int | None
    #: Whether ``missing_bytes`` is the planner's estimate rather than the tree listing's sum.
    estimated: bool = False

    def to_download(self) -> str:
        """The bytes still to download, in words ("about 15.26 GiB to download")."""
        if self.missing_bytes is None:
            return "an unknown size to download (not in the model catalog, no tree listing)"
        about = "about " if self.estimated else ""
        return f"{about}{format_bytes(self.missing_bytes)} to download"


def wanted(lab: LabConfig, cache: Path) -> list[Wanted]:
    """Each vLLM deployment of a hub repo, checked against the cache as a deploy checks it."""
    from labctl.cache.pull import serving_snapshot

    out = []
    for spec, ref in hub_deployments(lab):
        snap = serving_snapshot(ref.repo_id, ref.revision, cache)
        size, estimated = (0, False) if snap.complete else _missing_bytes(ref, snap, cache)
        out.append(Wanted(spec, ref, snap, size, estimated))
    return out


def _missing_bytes(ref: RepoRef, snap: Snapshot, cache: Path) -> tuple[int | None, bool]:
    """(bytes, estimated): the serving files a snapshot lacks, by the tree listing a download
    left, else the planner's weight bytes for the model less the weights on disk."""
    from labctl.cache.hfcache import tree_listing
    from labctl.cache.pull import plan_files

    have: dict[str, int] = {}
    if snap.path is not None:
        for f in snap.path.rglob("*"):
            try:
                if f.is_file():
                    have[f.relative_to(snap.path).as_posix()] = f.stat().st_size
            except OSError:
                continue
        listing = tree_listing(ref.repo_id, snap.path.name, cache)
        if listing:
            try:
                names = plan_files(ref.repo_id, listing, serving=True)
            except LabError:
                names = list(listing)
            return sum(listing[n] for n in names if n not in have), False
    from labctl.catalog.models import resolve
    from labctl.fit.weights import plan_weights

    try:
        weights = plan_weights(resolve(ref.repo_id)).weights_bytes
    except LabError:
        return None, False
    on_disk = sum(n for name, n in have.items() if name.endswith((".safetensors", ".bin")))
    return max(0, weights - on_disk), True
