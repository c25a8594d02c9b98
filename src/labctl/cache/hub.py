"""What a model on the Hugging Face hub is, read without its weights, and kept for offline use.

Only ``config.json`` (with a quantization config kept in a file of its own), the
safetensors index and the headers at the front of the weight files are read: the files
through ``hf_hub_download`` into the hub cache (real cache entries, which ``hf`` and vLLM
see too), the headers with HTTP range requests through ``huggingface_hub``'s session (so
``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` apply). A header is the first bytes of
a file, not a file, so it is kept in huggingface_hub's assets cache: beside the hub cache
(``<hub cache>/../assets``, which is ``HF_HOME/assets`` by default) or in
``HF_ASSETS_CACHE``, under ``labctl/<repo>/<commit>/`` with a manifest, and
``labctl/<repo>/refs/<revision>`` naming the commit a revision was read at. A repo once
read this way resolves offline.

Every request is bounded in time and every read in bytes; the headers are parsed by the
catalog's own readers, which bound what a hostile file can declare.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
import contextlib
from dataclasses import dataclass, field, replace
import json
import os
from pathlib import Path
import re
import tempfile
from typing import Any
import urllib.parse

import httpx2
from huggingface_hub import (
    HfApi,
    cached_assets_path,
    get_session,
    get_token,
    hf_hub_download,
    hf_hub_url,
    hf_raise_for_status,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from labctl.cache.repoid import RepoRef
from labctl.catalog.gguf import GgufFile, read_gguf_head
from labctl.catalog.hf import QUANT_FILES
from labctl.catalog.jsonfile import read_json
from labctl.catalog.limits import (
    MAX_CONFIG_BYTES,
    MAX_INDEX_BYTES,
    MAX_INDEX_ITEMS,
    MAX_SHARDS,
    show,
)
from labctl.catalog.safetensors import TensorInfo, parse_header
from labctl.errors import CatalogError, ModelFormatError

#: Seconds any one request to the hub may wait for an answer.
TIMEOUT_S = 10.0
#: Largest safetensors header read over HTTP (the largest published shards' are under 1 MB).
MAX_HEADER_BYTES = 8 * 2**20
#: A GGUF head is read in growing steps up to this (vocabularies of 256k tokens need ~8 MB).
GGUF_FIRST_BYTES = 2 * 2**20
MAX_GGUF_HEAD_BYTES = 64 * 2**20
#: Weight files whose headers are read at once.
_PARALLEL = 8
_MANIFEST = "manifest.json"
_COMMIT = re.compile(r"[0-9a-f]{40}")
#: A GGUF quantization in a file name (``Q4_K_M``, ``IQ2_XS``, ``BF16``, ``UD-Q4_K_XL``).
_QUANT = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q[1-8](?:_[A-Z0-9]{1,4}){0,3}|TQ[12]_0|MXFP4(?:_MOE)?"
    r"|BF16|F16|F32))(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


class HubError(CatalogError):
    """A model could not be read from the Hugging Face hub (or its cache)."""


class NoSuchRepo(HubError):
    """The hub has no repo by that name (or hides a private one without a token)."""


def endpoint() -> str:
    return str(hf_constants.ENDPOINT)


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (as huggingface_hub read it at import)."""
    return bool(hf_constants.is_offline_mode())


def _first_line(exc: BaseException) -> str:
    """What the hub said (its ``X-Error-Message``), else the first line of the error."""
    said = exc.server_message if isinstance(exc, HfHubHTTPError) else None
    text = (said or str(exc)).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str = "main") -> Iterator[None]:
    """Turn huggingface_hub's and the network's errors into one-line :class:`HubError` s
    that say what to do."""
    where = endpoint()
    try:
        yield
    except OfflineModeIsEnabled:
        raise HubError(
            f"{repo_id} is not in the local hub cache and HF_HUB_OFFLINE is set; run "
            f"`labctl models pull {repo_id}` while online (or unset HF_HUB_OFFLINE)"
        ) from None
    except GatedRepoError as exc:
        raise HubError(
            f"{repo_id} is gated: {_first_line(exc)} Set HF_TOKEN (or run `hf auth login`) "
            f"for an account that has accepted its licence on {where}/{repo_id}"
        ) from None
    except RevisionNotFoundError:
        raise HubError(
            f"{repo_id} has no revision {revision!r} on {where}; give a branch, tag or commit "
            "it has"
        ) from None
    except RepositoryNotFoundError:
        raise NoSuchRepo(
            f"no such repo {repo_id} on {where} (a private one needs HF_TOKEN); built-in "
            "models: `labctl models --catalog`"
        ) from None
    except DisabledRepoError:
        raise HubError(f"{repo_id} is disabled on {where}") from None
    except RemoteEntryNotFoundError as exc:
        raise HubError(f"{repo_id}: {_first_line(exc)}") from None
    except HfHubHTTPError as exc:
        raise HubError(
            f"{where} answered {exc.response.status_code} for {repo_id}: {_first_line(exc)}"
        ) from None
    except (httpx2.TransportError, LocalEntryNotFoundError) as exc:
        raise HubError(
            f"cannot reach {where} for {repo_id} ({_first_line(exc)}); offline use needs an "
            f"earlier `labctl models pull {repo_id}` (or `labctl fit {repo_id}`) while online"
        ) from None


# -- GGUF files of a repo ------------------------------------------------------------------


def gguf_quant(name: str) -> str | None:
    """The quantization a GGUF file's name carries (``Q4_K_M``), upper-cased; None if none."""
    found = _QUANT.findall(Path(name).name) or _QUANT.findall(name)
    return found[-1].upper() if found else None


def _matches(name: str, quant: str) -> bool:
    if (gguf_quant(name) or "") == quant.upper():
        return True
    token = rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9]|_[A-Za-z0-9])"
    return re.search(token, name, re.IGNORECASE) is not None


def gguf_files(names: list[str]) -> list[str]:
    """The model GGUF files among a repo's files (not the vision projectors)."""
    return sorted(
        n for n in names if n.lower().endswith(".gguf") and "mmproj" not in Path(n).name.lower()
    )


def pick_gguf(repo_id: str, names: list[str], quant: str | None) -> list[str]:
    """The GGUF file (or the split parts of one, in order) of ``quant`` in a repo; without a
    quant, the only one, else ``Q4_K_M`` (llama.cpp's default), else an error naming them.

    Raises:
        HubError: no file of that quantization (the ones present are named).
    """
    files = gguf_files(names)
    quants = sorted({gguf_quant(n) or Path(n).name for n in files})
    if quant is None:
        if len(quants) == 1:
            return files
        if "Q4_K_M" not in quants:
            raise HubError(
                f"{repo_id} holds GGUF files in {len(quants)} quantizations "
                f"({', '.join(quants)}); name one: {repo_id}:{quants[0]}"
            )
        quant = "Q4_K_M"
    chosen = [n for n in files if _matches(n, quant)]
    parts = [m for n in chosen if (m := _SPLIT.search(n))]
    if parts and len(parts) == len(chosen) and len(chosen) != int(parts[0].group(2)):
        raise HubError(
            f"{repo_id}: {quant} is split in {int(parts[0].group(2))} files but "
            f"{len(chosen)} are there"
        )
    if not chosen:
        raise HubError(
            f"{repo_id} has no GGUF file of quantization {quant}; it has: "
            + (", ".join(quants) or "no GGUF files")
        )
    return chosen


# -- where the metadata is kept -----------------------------------------------------------


def assets_root(hub_cache: Path) -> Path:
    """huggingface_hub's assets cache beside ``hub_cache`` (or ``HF_ASSETS_CACHE``)."""
    env = os.environ.get("HF_ASSETS_CACHE")
    return Path(env).expanduser() if env else hub_cache.parent / "assets"


def _dir(hub_cache: Path, repo_id: str, sub: str) -> Path:
    return cached_assets_path(
        library_name="labctl", namespace=repo_id, subfolder=sub, assets_dir=assets_root(hub_cache)
    )


def _ref_file(hub_cache: Path, repo_id: str, revision: str) -> Path:
    return _dir(hub_cache, repo_id, "refs") / urllib.parse.quote(revision, safe="")


@dataclass(frozen=True)
class Manifest:
    """What was read of one commit of a repo, and where it was kept."""

    repo_id: str
    commit: str
    #: Every file of the repo at that commit, with its size.
    sizes: dict[str, int]
    #: The weight files whose headers are kept (safetensors, or GGUF heads): header bytes.
    headers: dict[str, int] = field(default_factory=dict)
    #: The hub they were read from.
    endpoint: str = ""

    def uses_gguf(self, quant: str | None) -> bool:
        """Whether the model is read from GGUF files: asked for by quant, or all there is."""
        names = list(self.sizes)
        return bool(gguf_files(names)) and (
            quant is not None or not any(n.endswith(".safetensors") for n in names)
        )


def load_manifest(ref: RepoRef, hub_cache: Path) -> Manifest | None:
    """The metadata kept for ``ref``'s revision, if it was read before."""
    try:
        commit = ref.revision
        if not _COMMIT.fullmatch(commit):
            commit = _ref_file(hub_cache, ref.repo_id, ref.revision).read_text().strip()
        doc = json.loads((_dir(hub_cache, ref.repo_id, commit) / _MANIFEST).read_text())
        return Manifest(
            ref.repo_id,
            commit,
            {str(k): int(v) for k, v in doc["sizes"].items()},
            {str(k): int(v) for k, v in doc["headers"].items()},
            str(doc.get("endpoint", "")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _save(ref: RepoRef, hub_cache: Path, m: Manifest, heads: dict[str, bytes]) -> None:
    """Keep the manifest and the headers; a cache that cannot be written is not an error
    (the next resolution reads the hub again)."""
    with contextlib.suppress(OSError):
        folder = _dir(hub_cache, m.repo_id, m.commit)
        (folder / "headers").mkdir(exist_ok=True)
        for name, raw in heads.items():
            _write(folder / "headers" / urllib.parse.quote(name, safe=""), raw)
        doc = {"repo_id": m.repo_id, "commit": m.commit, "sizes": m.sizes,
               "headers": m.headers, "endpoint": m.endpoint}  # fmt: skip
        _write(folder / _MANIFEST, json.dumps(doc).encode())
        _write(_ref_file(hub_cache, m.repo_id, ref.revision), m.commit.encode())


def _write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: another process may be reading or writing it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def kept_header(hub_cache: Path, m: Manifest, name: str) -> bytes | None:
    try:
        folder = _dir(hub_cache, m.repo_id, m.commit)
        return (folder / "headers" / urllib.parse.quote(name, safe="")).read_bytes()
    except OSError:
        return None


# -- reading the hub ------------------------------------------------------------------------


class _Silent:
    """A progress bar that shows nothing (metadata reads are small)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.n, self.total = 0, kwargs.get("total")

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float | None = 1) -> None:
        return None

    def close(self) -> None:
        return None


def _range(ref: RepoRef, commit: str, name: str, start: int, end: int) -> bytes:
    """Bytes ``start..end`` (inclusive) of a repo file; at most that many, whatever the
    server sends."""
    url = hf_hub_url(ref.repo_id, name, revision=commit)
    token = get_token()  # HF_TOKEN, else the one `hf auth login` saved
    headers = {"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    want = end - start + 1
    chunks: list[bytes] = []
    got = 0
    with (
        hub_errors(ref.repo_id, ref.revision),
        get_session().stream("GET", url, headers=headers, timeout=TIMEOUT_S) as response,
    ):
        if response.status_code >= 400:
            response.read()
        hf_raise_for_status(response)
        skip = start if response.status_code == 200 else 0  # the server ignored the range
        for chunk in response.iter_bytes():
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
            chunks.append(chunk[: want - got])
            got += len(chunks[-1])
            if got >= want:
                break
    return b"".join(chunks)


def _safetensors_header(ref: RepoRef, commit: str, name: str, size: int) -> bytes:
    """The JSON header of a safetensors file on the hub (with its 8-byte length in front)."""
    first = _range(ref, commit, name, 0, min(size, 100_000) - 1)
    if len(first) < 8:
        raise ModelFormatError(f"{ref.repo_id}/{name}: too short for a safetensors header")
    length = int.from_bytes(first[:8], "little")
    if length == 0 or length > MAX_HEADER_BYTES or 8 + length > size:
        raise ModelFormatError(
            f"{ref.repo_id}/{name}: header length {length:,} is not plausible (labctl reads "
            f"headers up to {MAX_HEADER_BYTES // 2**20} MiB); this is not a safetensors file"
        )
    if len(first) < 8 + length:
        first += _range(ref, commit, name, len(first), 8 + length - 1)
    return first[: 8 + length]


def safetensors_tensors(repo_id: str, name: str, raw: bytes, size: int) -> list[TensorInfo]:
    """The tensors a kept header declares (checked as a local file's would be)."""
    return parse_header(raw[8:], Path(repo_id) / name, size - len(raw))


def _gguf_head(ref: RepoRef, commit: str, name: str, size: int) -> bytes:
    """As many first bytes of a GGUF file as its metadata and tensor table take."""
    head = b""
    want = GGUF_FIRST_BYTES
    while True:
        head += _range(ref, commit, name, len(head), min(want, size) - 1)
        try:
            gf = read_gguf_head(head, size, Path(ref.repo_id) / name)
            return head[: gf.data_offset]  # the tensor data starts there: not kept
        except ModelFormatError:
            if len(head) >= size or want >= MAX_GGUF_HEAD_BYTES:
                raise
        want *= 2


def gguf_file(
    repo_id: str, names: list[str], heads: dict[str, bytes], sizes: dict[str, int]
) -> GgufFile:
    """One GGUF model from the heads of its file (or its split parts, in order)."""
    parts = [read_gguf_head(heads[n], sizes[n], Path(repo_id) / n) for n in names]
    first = parts[0]
    if len(parts) == 1:
        return first
    return replace(first, tensors=tuple(t for p in parts for t in p.tensors))


def _weights(ref: RepoRef, commit: str, sizes: dict[str, int], hub_cache: Path) -> list[str]:
    """The safetensors files whose headers describe the weights (the index's shards)."""
    index = "model.safetensors.index.json"
    if index in sizes:
        if sizes[index] > MAX_INDEX_BYTES:
            raise ModelFormatError(
                f"{ref.repo_id}/{index} is {sizes[index]:,} bytes, beyond the limit of "
                f"{MAX_INDEX_BYTES:,}; it is not a safetensors index"
            )
        path = _download(ref, commit, index, hub_cache)
        doc = read_json(path, "index file", MAX_INDEX_BYTES, MAX_INDEX_ITEMS)
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict):
            raise ModelFormatError(f"{ref.repo_id}/{index}: 'weight_map' must map tensors to files")
        names = sorted({str(v) for v in weight_map.values()})
        missing = [n for n in names if n not in sizes]
        if missing:
            raise ModelFormatError(
                f"{ref.repo_id}/{index} names shard {show(missing[0])}, which the repo does not have"
            )
    else:
        names = sorted(n for n in sizes if n.endswith(".safetensors") and "/" not in n)
    if len(names) > MAX_SHARDS.high:
        raise ModelFormatError(
            f"{ref.repo_id}: {len(names):,} safetensors shards, beyond the limit of "
            f"{MAX_SHARDS.high:,} (the largest published checkpoint has {MAX_SHARDS.published})"
        )
    return names


def _download(ref: RepoRef, revision: str, name: str, hub_cache: Path) -> Path:
    """A small repo file into the hub cache (a real cache entry)."""
    with hub_errors(ref.repo_id, ref.revision):
        return Path(
            hf_hub_download(
                ref.repo_id,
                name,
                revision=revision,
                cache_dir=hub_cache,
                etag_timeout=TIMEOUT_S,
                tqdm_class=_Silent,
            )
        )


def _files(ref: RepoRef, revision: str) -> tuple[str, dict[str, int]]:
    """The commit ``revision`` is at, and every file of the repo there with its size."""
    with hub_errors(ref.repo_id, ref.revision):
        info = HfApi().model_info(ref.repo_id, revision=revision, files_metadata=True,
                                  timeout=TIMEOUT_S)  # fmt: skip
    return str(info.sha), {s.rfilename: int(s.size or 0) for s in info.siblings or []}


def fetch(ref: RepoRef, hub_cache: Path, at: str | None = None) -> Manifest:
    """Read ``ref`` from the hub: its files and sizes, config.json and a quantization
    config file (into the hub cache), and the headers of its weights (kept beside it);
    ``at``: the commit to read, when its revision moved while it was read.

    Raises:
        HubError: the hub refused, or cannot be reached (the message says what to do).
        ModelFormatError: a file or header is malformed or too large.
    """
    commit, sizes = _files(ref, at or ref.revision)
    kept = load_manifest(replace(ref, revision=commit), hub_cache)
    manifest = Manifest(ref.repo_id, commit, sizes, dict(kept.headers) if kept else {}, endpoint())
    heads: dict[str, bytes] = {}
    if manifest.uses_gguf(ref.quant):
        for name in pick_gguf(ref.repo_id, list(sizes), ref.quant):
            heads[name] = _gguf_head(ref, commit, name, sizes[name])
    elif "config.json" in sizes:
        for name in ("config.json", *QUANT_FILES):
            if name in sizes and sizes[name] > MAX_CONFIG_BYTES:
                raise ModelFormatError(
                    f"{ref.repo_id}/{name} is {sizes[name]:,} bytes, beyond the limit of "
                    f"{MAX_CONFIG_BYTES:,}; it is not a model config"
                )
        # by its revision, so that the hub cache keeps refs/<revision> as a download does
        landed = _download(ref, ref.revision, "config.json", hub_cache).parent.name
        if landed != commit and at is None:  # a commit landed meanwhile: read the newer one
            return fetch(ref, hub_cache, landed)
        if landed != commit:  # and another: keep this one's
            _download(ref, commit, "config.json", hub_cache)
        for name in QUANT_FILES:
            if name in sizes:
                _download(ref, commit, name, hub_cache)
        names = _weights(ref, commit, sizes, hub_cache)
        with ThreadPoolExecutor(_PARALLEL) as pool:
            raws = pool.map(lambda n: _safetensors_header(ref, commit, n, sizes[n]), names)
            heads = dict(zip(names, raws, strict=True))
    else:
        raise HubError(
            f"{ref.repo_id} has neither a config.json nor GGUF files at {commit[:12]}; it is "
            "not a model labctl can read"
        )
    manifest.headers.update({n: len(b) for n, b in heads.items()})
    _save(ref, hub_cache, manifest, heads)
    return manifest
