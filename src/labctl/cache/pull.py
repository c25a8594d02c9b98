"""Pull a model into the hub cache with ``huggingface_hub``, and tell when one is complete.

``snapshot_download`` does the work (the hub cache layout, refs, the tree listing that says
later whether a snapshot is complete, retries); this module picks the files
(``--include`` patterns, a GGUF quantization, or what an engine needs to serve), turns
huggingface_hub's progress bars into one stream of :class:`Progress` reports, and its
errors into one line each.

Resuming: when the connection drops mid-file, huggingface_hub retries the file with an
HTTP range request from the byte it had (up to five tries while no data comes); a pull
that fails anyway keeps every file it completed, and running it again fetches the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import contextlib
from dataclasses import dataclass, field
import fnmatch
import logging
from pathlib import Path
import threading
import time
from typing import Any

import httpx2
from huggingface_hub import HfApi, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, IncompleteSnapshotError, LocalEntryNotFoundError

from labctl.cache.hub import (
    TIMEOUT_S,
    HubError,
    endpoint,
    hub_errors,
    offline,
    pick_gguf,
)
from labctl.cache.repoid import parse_ref
from labctl.catalog.safetensors import checkpoint_files
from labctl.errors import ModelFormatError

#: The files an engine (vLLM) reads to serve a repo: config, tokenizer, chat template,
#: weights. Not the repo's other checkpoints (``original/*.pth``) or its GGUF files.
SERVING = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*.py")
#: Seconds between two progress reports (the last one always comes).
REPORT_EVERY_S = 0.25


@dataclass(frozen=True)
class Progress:
    """Where a pull is: bytes of this run, files done, and what happened (``note``)."""

    repo_id: str
    done_bytes: int
    total_bytes: int
    files_done: int
    files_total: int
    seconds: float
    note: str | None = None

    @property
    def rate(self) -> float:
        """Bytes per second over the run so far."""
        return self.done_bytes / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class PulledFile:
    path: str
    size: int
    #: Whether it was already complete in the cache (nothing to fetch).
    cached: bool


@dataclass
class PullResult:
    repo_id: str
    revision: str
    commit: str
    files: list[PulledFile]
    seconds: float = 0.0
    downloaded_bytes: int = 0
    snapshot: str | None = None
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id, "revision": self.commit, "ref": self.revision,
            "files": [{"path": f.path, "size": f.size, "cached": f.cached} for f in self.files],
            "bytes": self.bytes, "downloaded_bytes": self.downloaded_bytes,
            "seconds": round(self.seconds, 3), "snapshot": self.snapshot,
            "dry_run": self.dry_run, "notes": self.notes,
        }  # fmt: skip


class _Bars:
    """huggingface_hub's progress bars (one per byte stream and one for files), folded into
    :class:`Progress` reports to one callback, at most every :data:`REPORT_EVERY_S`."""

    def __init__(self, repo_id: str, total: int, files: int, report: Callable[[Progress], None]):
        self.repo_id, self.total, self.files_total, self.report = repo_id, total, files, report
        #: Bytes written, and received (the same over plain HTTP; counted from the received
        #: ones only where huggingface_hub keeps no bar of the written ones).
        self.written = self.received = 0
        self.counts_written = False
        self.files_done = 0
        self.started = time.monotonic()
        self.told = 0.0
        self.lock = threading.Lock()
        self.notes: list[str] = []

    @property
    def done(self) -> int:
        return self.written if self.counts_written else self.received

    def tell(self, note: str | None = None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and note is None and now - self.told < REPORT_EVERY_S:
            return
        self.told = now
        self.report(Progress(self.repo_id, self.done, self.total, self.files_done,
                             self.files_total, now - self.started, note))  # fmt: skip

    def bar_class(self) -> type:
        bars = self

        class Bar:
            """One of huggingface_hub's bars: the bytes written ("Reconstructing…"), the bytes
            received ("Downloading bytes") or the files done ("Fetching N files")."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                desc = str(kwargs.get("desc") or "")
                self.role = (
                    "files" if desc.startswith(("Fetching", "[dry-run]")) else
                    "written" if desc.startswith("Reconstruct") else
                    "received" if kwargs.get("unit") == "B" else "other"
                )  # fmt: skip
                bars.counts_written |= self.role == "written"
                self.n = 0
                self.total = kwargs.get("total")
                self.format_dict: dict[str, Any] = {"rate": None}

            def __enter__(self) -> Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def update(self, n: float | None = 1) -> None:
                step = int(n or 0)
                self.n += step
                with bars.lock:
                    if self.role == "written":
                        bars.written += step
                    elif self.role == "received":
                        bars.received += step
                    elif self.role == "files":
                        bars.files_done += step
                    else:
                        return
                    bars.tell()

            def refresh(self, *args: Any, **kwargs: Any) -> None:
                return None

            def close(self) -> None:
                return None

            def set_description(self, *args: Any, **kwargs: Any) -> None:
                return None

            set_description_str = set_postfix_str = set_description

        return Bar


class _ResumeNotes(logging.Filter):
    """huggingface_hub's warnings while a file downloads (a dropped connection, the retry
    with a range request) as one-line notes instead of its multi-line log."""

    def __init__(self, bars: _Bars) -> None:
        super().__init__()
        self.bars = bars

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "Trying to resume download" in text:
            cause = text.split(": ", 1)[-1].split("\n", 1)[0]
            with self.bars.lock:
                note = f"connection lost ({cause}); retrying from where the file broke off"
                self.bars.notes.append(note)
                self.bars.tell(note)
            return False
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def _notes(bars: _Bars) -> Iterator[None]:
    log = logging.getLogger("huggingface_hub.file_download")
    quiet = _ResumeNotes(bars)
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


def _files(repo_id: str, revision: str) -> tuple[str, dict[str, int]]:
    with hub_errors(repo_id, revision):
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True,
                                  timeout=TIMEOUT_S)  # fmt: skip
    return str(info.sha), {s.rfilename: int(s.size or 0) for s in info.siblings or []}


def plan_files(
    repo_id: str,
    sizes: dict[str, int],
    include: Sequence[str] = (),
    quant: str | None = None,
    serving: bool = False,
) -> list[str]:
    """The files of a repo that a pull fetches: those matching ``include``, the GGUF file(s)
    of ``quant``, what an engine needs to serve it (``serving``), or all.

    Raises:
        HubError: no file matches (the repo's files or quantizations are named).
    """
    names = sorted(sizes)
    patterns = list(include)
    if quant is not None:
        if not any(n.lower().endswith(".gguf") for n in names):
            raise HubError(
                f"{repo_id} has no GGUF files; --quant picks a quantization of a GGUF repo "
                "(use --include for other files)"
            )
        patterns += pick_gguf(repo_id, names, quant)
    if serving:
        patterns += SERVING if any(n.endswith(".safetensors") for n in names) else (
            *SERVING, "*.bin")  # fmt: skip
    if not patterns:
        return names
    chosen = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if not chosen:
        shown = ", ".join(names[:12]) + (f", … ({len(names) - 12} more)" if len(names) > 12 else "")
        raise HubError(f"no file of {repo_id} matches {', '.join(include)}; it has: {shown}")
    return chosen


def pull(
    repo: str,
    cache: Path,
    *,
    revision: str | None = None,
    include: Sequence[str] = (),
    quant: str | None = None,
    serving: bool = False,
    dry_run: bool = False,
    report: Callable[[Progress], None] = lambda p: None,
    workers: int = 8,
) -> PullResult:
    """Download ``repo`` (the files :func:`plan_files` picks) into the hub cache ``cache``.

    Raises:
        HubError: offline, not a repo id, the hub refused or cannot be reached, or the
            download broke off (the files completed are kept; running it again continues).
    """
    ref = parse_ref(repo, revision)
    if ref is None or ref.quant is not None:
        raise HubError(f"{repo!r} is not a hub repo id; give owner/name, e.g. Qwen/Qwen3-4B")
    if offline():
        raise HubError(
            f"HF_HUB_OFFLINE is set, and a pull downloads from {endpoint()}; unset "
            "HF_HUB_OFFLINE (or set it to 0) to pull"
        )
    commit, sizes = _files(ref.repo_id, ref.revision)
    chosen = plan_files(ref.repo_id, sizes, include, quant, serving)
    cached = {n for n in chosen if _cached(ref.repo_id, n, commit, cache)}
    result = PullResult(ref.repo_id, ref.revision, commit,
                        [PulledFile(n, sizes[n], n in cached) for n in chosen],
                        dry_run=dry_run)  # fmt: skip
    if dry_run:
        return result
    bars = _Bars(ref.repo_id, sum(sizes[n] for n in chosen if n not in cached), len(chosen), report)
    bars.tell(force=True)
    with _notes(bars), hub_errors(ref.repo_id, ref.revision):
        try:
            snapshot = snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=cache,
                                         allow_patterns=chosen, tqdm_class=bars.bar_class(),
                                         etag_timeout=TIMEOUT_S, max_workers=workers)  # fmt: skip
        except HfHubHTTPError:
            raise  # the hub's answer: hub_errors says what it means
        except (OSError, httpx2.TransportError) as exc:  # broke off after huggingface_hub's retries
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HubError(
                f"the download of {ref.repo_id} broke off ({cause}); run `labctl models pull "
                f"{ref.repo_id}` again to fetch the rest (the files completed are kept)"
            ) from None
    bars.tell(force=True)
    result.seconds = time.monotonic() - bars.started
    result.downloaded_bytes = bars.done
    result.snapshot = str(snapshot)
    result.notes = bars.notes
    return result


def _cached(repo_id: str, name: str, commit: str, cache: Path) -> bool:
    return isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache, revision=commit), str)


@dataclass(frozen=True)
class Snapshot:
    """A repo's snapshot in the hub cache, as an engine would read it."""

    repo_id: str
    revision: str
    path: Path | None
    #: Whether it holds what an engine needs to serve it (config, tokenizer, every shard).
    complete: bool
    #: What is wrong, said of the repo ("is not in the hub cache (…)").
    why: str = ""


def serving_snapshot(repo_id: str, revision: str, cache: Path) -> Snapshot:
    """Whether the cache holds ``repo_id`` at ``revision`` whole enough to serve offline:
    huggingface_hub's own check against the repo's tree listing (when it was pulled with
    it), then config.json and every safetensors shard the index names."""
    try:
        path = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                      local_files_only=True, allow_patterns=list(SERVING)))  # fmt: skip
    except IncompleteSnapshotError as exc:
        missing = str(exc).split("(s) are missing (", 1)[-1].split(")", 1)[0]
        return Snapshot(repo_id, revision, Path(exc.snapshot_path), False,
                        f"misses files in the hub cache ({missing})")  # fmt: skip
    except (LocalEntryNotFoundError, OSError, ValueError):
        return Snapshot(repo_id, revision, None, False, f"is not in the hub cache ({cache})")
    if not (path / "config.json").is_file():
        return Snapshot(repo_id, revision, path, False, "has no config.json in the hub cache")
    try:
        weights = checkpoint_files(path) or list(path.glob("*.bin"))
    except ModelFormatError as exc:
        return Snapshot(repo_id, revision, path, False, f"is not whole in the hub cache ({exc})")
    if not weights:
        return Snapshot(repo_id, revision, path, False, "has no weights in the hub cache")
    return Snapshot(repo_id, revision, path, True)


def offline_env(model: str, revision: str | None, cache: Path) -> dict[str, str]:
    """The environment for an engine that reads ``model`` from the hub cache once its
    snapshot is whole there: ``HF_HUB_OFFLINE=1`` (the engine never waits on the hub) and
    the cache the lab read (``HF_HUB_CACHE``). Empty otherwise (not a repo id, a local path,
    a snapshot missing files: the engine may then fetch them itself)."""
    ref = parse_ref(model, revision)
    if ref is None or ref.quant is not None or Path(model).expanduser().exists():
        return {}
    if not serving_snapshot(ref.repo_id, ref.revision, cache).complete:
        return {}
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
