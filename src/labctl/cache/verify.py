"""``verify``: every file of a model against the metadata its store kept, offline.

A hub blob is named by its ETag: the sha256 of the content for an LFS file (weights), the
git blob sha1 (``blob <size>\\0`` + content) for a small file; the tree listing a download
recorded (``trees/<commit>.json``) gives each file's size. A file copied into a snapshot
(no symlinks) is checked against the listing's git blob id, which for an LFS file is the
id of its pointer (``oid sha256:…``, ``size …``). Ollama names each blob by its sha256 and
its manifest gives sizes. Files are hashed in chunks, so memory stays flat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
import hashlib
from pathlib import Path
import re

from labctl.cache.entry import CacheEntry
from labctl.cache.hfcache import find_revision, snapshot_files, tree_files
from labctl.cache.inventory import Inventory
from labctl.cache.stores import ollama_blobs
from labctl.errors import CatalogError

#: Bytes read at a time while hashing.
CHUNK = 4 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")

#: Called as a file is hashed: (file, bytes done, bytes in all).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BadFile:
    """A file that is not what its store's metadata says."""

    repo_id: str
    revision: str | None
    file: str
    #: "size", "sha256", "git-sha1", "missing" or "unreadable".
    problem: str
    expected: str
    found: str


@dataclass(frozen=True)
class Checked:
    repo_id: str
    revision: str | None
    source: str
    files: int
    bytes: int


@dataclass(frozen=True)
class Verification:
    checked: tuple[Checked, ...]
    bad: tuple[BadFile, ...]
    #: Entries with nothing to check against, each with why.
    skipped: tuple[str, ...]


def verify(
    inv: Inventory, entries: Sequence[CacheEntry], progress: Progress | None = None
) -> Verification:
    """Check each entry's files; nothing is read from the network."""
    checked: list[Checked] = []
    bad: list[BadFile] = []
    skipped: list[str] = []
    hashed: dict[Path, tuple[str, str]] = {}  # a blob revisions share is read once
    for e in entries:
        if e.source == "hf-cache":
            files, nbytes, found = _hub(inv, e, progress, hashed)
        elif e.source == "ollama":
            files, nbytes, found = _ollama(e, progress)
        elif e.source == "gguf":
            files, nbytes = 1, 0
            found = [BadFile(e.repo_id, None, n, "missing", "present", "absent") for n in e.missing]
            if not e.complete and not found:
                note = e.notes[0] if e.notes else "unreadable header"
                found = [BadFile(e.repo_id, None, e.path.name, "unreadable", "a GGUF file", note)]
        else:
            skipped.append(f"{e.path}: a model folder has no checksums to check against")
            continue
        checked.append(Checked(e.repo_id, e.revision, e.source, files, nbytes))
        bad.extend(found)
    return Verification(tuple(checked), tuple(bad), tuple(skipped))


def _hub(
    inv: Inventory, e: CacheEntry, progress: Progress | None, hashed: dict[Path, tuple[str, str]]
) -> tuple[int, int, list[BadFile]]:
    rev = find_revision(inv.hub, e.repo_id, e.revision) if inv.hub and e.revision else None
    if rev is None:
        return 0, 0, [BadFile(e.repo_id, e.revision, "", "missing", "a snapshot", "none")]
    tree = tree_files(e.repo_id, rev.commit_hash, inv.cache_dir) or {}
    bad = [BadFile(e.repo_id, e.revision, n, "missing", f"{tree[n].size} bytes" if n in tree
                   else "present", "absent") for n in e.missing]  # fmt: skip
    count, nbytes = 0, 0
    for name, f in sorted(snapshot_files(rev).items()):
        listed = tree.get(name)
        count += 1

        def wrong(problem: str, expected: str, found: str, name: str = name) -> None:
            bad.append(BadFile(e.repo_id, e.revision, name, problem, expected, found))

        if listed is not None and listed.size != f.size_on_disk:
            wrong("size", f"{listed.size} bytes", f"{f.size_on_disk} bytes")
            continue
        blob = f.blob_path.name
        algo = (
            "sha256" if _SHA256.fullmatch(blob) else "git-sha1" if _SHA1.fullmatch(blob) else None
        )
        if algo is None and listed is None:
            continue  # a copied file with no listing: nothing to check it against
        if f.blob_path not in hashed or algo is None:
            try:
                hashed[f.blob_path] = hash_file(f.blob_path, f"{e.repo_id}/{name}", progress,
                                                algo or "sha256 git-sha1")  # fmt: skip
            except OSError as exc:
                wrong("unreadable", "a readable file", exc.strerror or str(exc))
                continue
            nbytes += f.size_on_disk
        sha256, git = hashed[f.blob_path]
        if algo == "sha256" and sha256 != blob:
            wrong("sha256", blob, sha256)
        elif algo == "git-sha1" and git != blob:
            wrong("git-sha1", blob, git)
        elif algo is None and listed is not None:
            pointer = lfs_pointer_id(sha256, f.size_on_disk)
            if listed.blob_id not in (git, pointer):
                wrong("git-sha1", listed.blob_id, git)
    return count, nbytes, bad


def _ollama(e: CacheEntry, progress: Progress | None) -> tuple[int, int, list[BadFile]]:
    root = e.path.parents[4]  # <root>/manifests/<host>/<namespace>/<model>/<tag>
    try:
        layers = ollama_blobs(root, e.path)
    except CatalogError as exc:
        return (
            0,
            0,
            [BadFile(e.repo_id, e.revision, str(e.path), "unreadable", "a manifest", str(exc))],
        )
    bad: list[BadFile] = []
    nbytes = 0
    for blob, digest, size in layers:

        def wrong(problem: str, expected: str, found: str, blob: Path = blob) -> None:
            bad.append(BadFile(e.repo_id, e.revision, blob.name, problem, expected, found))

        try:
            on_disk = blob.stat().st_size
        except OSError:
            wrong("missing", f"{size} bytes", "absent")
            continue
        if on_disk != size:
            wrong("size", f"{size} bytes", f"{on_disk} bytes")
            continue
        try:
            sha256, _ = hash_file(blob, f"{e.repo_id}:{e.revision} {blob.name[:19]}", progress,
                                  "sha256")  # fmt: skip
        except OSError as exc:
            wrong("unreadable", "a readable file", exc.strerror or str(exc))
            continue
        nbytes += size
        if sha256 != digest:
            wrong("sha256", digest, sha256)
    return len(layers), nbytes, bad


def hash_file(
    path: Path, label: str, progress: Progress | None = None, algos: str = "sha256 git-sha1"
) -> tuple[str, str]:
    """The file's sha256 and git blob sha1 (those ``algos`` names; "" for the other), read
    once in :data:`CHUNK`-byte pieces."""
    with path.open("rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(0)
        hashes = []
        if "sha256" in algos:
            hashes.append(hashlib.sha256())
        if "git-sha1" in algos:
            hashes.append(hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False))
        done = 0
        while chunk := fh.read(CHUNK):
            for h in hashes:
                h.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(label, done, size)
    found = {h.name: h.hexdigest() for h in hashes}
    return found.get("sha256", ""), found.get("sha1", "")


def lfs_pointer_id(sha256: str, size: int) -> str:
    """The git blob id of the LFS pointer that stands for a file of this sha256 and size."""
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    data = pointer.encode()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
