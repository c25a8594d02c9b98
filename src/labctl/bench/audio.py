"""What ``labctl bench --backend openai-audio`` sends: clips, their forms, and where to.

vLLM's ``async_request_openai_audio`` posts each clip as a multipart form to
``/v1/audio/transcriptions`` (or ``/translations``): the audio as ``file``
(``audio/wav``) and the fields ``model``, ``max_completion_tokens``, ``stream``,
``language``, ``stream_include_usage`` and ``stream_continuous_usage_stats``.
The clips come from a folder of audio files (any format libsndfile reads; other
formats than WAV are sent as 16 kHz mono WAV, as vLLM's client re-encodes its
datasets) or are generated (:func:`labctl.audio.clip`, seeded). Every clip's form
is built once, before the run, and sent as the same bytes each time.

:func:`by_bucket` gives E2E latency per audio-length bucket
(:func:`labctl.audio.bucket`), the one breakdown speech latency needs: a 30 s
chunk costs the encoder the same whatever its length, the decoder does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math
from pathlib import Path
import random
import re
import secrets
import statistics
import urllib.parse

from labctl import audio
from labctl.bench.http import Endpoint
from labctl.errors import UsageError
from labctl.sim.report import percentile

#: The routes vLLM serves speech-to-text on; the URL's path must end in one of them.
ROUTES = ("transcriptions", "translations")
DEFAULT_ROUTE = "/v1/audio/transcriptions"
#: Distinct clips drawn for a range of lengths (``--audio-seconds 1-30``); requests cycle.
RANGE_CLIPS = 32
#: The longest generated clip (an hour of 16 kHz 16-bit audio is 115 MB).
MAX_SECONDS = 3600.0


def route(url: str) -> tuple[Endpoint, str]:
    """The server and the request path of a speech URL.

    ``http://h:8000/v1/audio/transcriptions`` (or ``…/translations``, behind any
    prefix) is taken as it is; a bare server URL (no path, or ``/v1``) means
    ``/v1/audio/transcriptions``.

    Raises:
        UsageError: not an http(s) URL, or a path that ends in neither route.
    """
    try:
        server = Endpoint.parse(url)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    path = urllib.parse.urlsplit(url).path.rstrip("/")
    if path in ("", "/v1"):
        return server, DEFAULT_ROUTE
    if not path.endswith(ROUTES):
        raise UsageError(
            f"--base-url {url!r}: --backend openai-audio posts to /v1/audio/transcriptions or "
            "/v1/audio/translations; give a URL whose path ends in one of them, e.g. "
            "http://127.0.0.1:8000/v1/audio/transcriptions"
        )
    at = path.rfind("/v1/")
    prefix, request_path = (path[:at], path[at:]) if at >= 0 else ("", path)
    return Endpoint(server.scheme, server.host, server.port, prefix), request_path


def parse_seconds(spec: str, count: int, seed: int = 0) -> tuple[float, ...]:
    """Clip lengths from ``--audio-seconds``: ``4.7``, a list ``2,5,12``, or a range ``1-30``
    (:data:`RANGE_CLIPS` lengths drawn uniformly, seeded; at most ``count`` of them).

    Raises:
        UsageError: not numbers, not positive, or longer than :data:`MAX_SECONDS`.
    """
    text = spec.strip()
    if m := re.fullmatch(r"(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)", text):
        lo, hi = float(m[1]), float(m[2])
        _check_length(spec, lo)
        _check_length(spec, hi)
        if lo > hi:
            raise UsageError(f"--audio-seconds {spec!r}: the range's low end is above its high end")
        rng = random.Random(seed)
        return tuple(round(rng.uniform(lo, hi), 2) for _ in range(min(max(count, 1), RANGE_CLIPS)))
    out: list[float] = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise UsageError(
                f"--audio-seconds {spec!r}: {part.strip()!r} is not a number; give seconds as "
                "4.7, a list 2,5,12 or a range 1-30"
            ) from None
        _check_length(spec, value)
        out.append(value)
    return tuple(out)


def _check_length(spec: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)) or value > MAX_SECONDS:
        raise UsageError(
            f"--audio-seconds {spec!r}: each length must be above 0 and at most "
            f"{MAX_SECONDS:g} seconds"
        )


@dataclass(frozen=True)
class Clip:
    """One audio file as it is sent: its name, length and WAV bytes."""

    name: str
    seconds: float
    wav: bytes

    @property
    def bucket(self) -> str:
        return audio.bucket(self.seconds)


def generated(lengths: Sequence[float], seed: int = 0) -> list[Clip]:
    """Speech-like WAV clips of these lengths (:func:`labctl.audio.clip`), clip i seeded ``seed + i``."""
    clips = []
    for i, seconds in enumerate(lengths):
        wav = audio.clip(seconds, seed=seed + i)
        clips.append(Clip(f"clip-{i:03d}-{seconds:g}s.wav", audio.probe(wav).seconds, wav))
    return clips


def from_dir(folder: Path) -> list[Clip]:
    """Every file directly in ``folder`` (hidden ones aside), in name order, read and checked.

    Raises:
        UsageError: the folder is missing or holds no files, or a file is not audio.
    """
    flag = f"--audio-dir {folder}"
    if not folder.is_dir():
        raise UsageError(f"{flag}: no such folder; give a folder of audio files (WAV, FLAC, …)")
    try:
        paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise UsageError(f"{flag}: {exc.strerror or exc}") from exc
    if not paths:
        raise UsageError(f"{flag} holds no files; put audio files (WAV, FLAC, …) in it")
    clips = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"{flag}: cannot read {path.name}: {exc.strerror or exc}") from exc
        try:
            info = audio.probe(data)
            if info.seconds <= 0:
                raise audio.AudioError("it holds no samples")
            if info.format != "WAV":  # vLLM's client sends WAV whatever the dataset held
                data = audio.wav(audio.decode(data))
        except audio.AudioError as exc:
            raise UsageError(
                f"{flag}: {path.name} is not usable audio ({exc}); remove it from the folder"
            ) from None
        clips.append(Clip(path.name, info.seconds, data))
    return clips


def fields(model: str, output_len: int) -> dict[str, str]:
    """The form fields vLLM's benchmark client sends with each clip."""
    return {
        "model": model,
        "max_completion_tokens": str(output_len),
        "stream": "true",
        "language": "en",
        "stream_include_usage": "true",
        "stream_continuous_usage_stats": "true",
    }


def boundary(clips: Sequence[Clip]) -> str:
    """A multipart boundary found in none of the clips."""
    while True:
        mark = f"labctl-bench-{secrets.token_hex(12)}"
        if not any(mark.encode() in c.wav for c in clips):
            return mark


def form(clip: Clip, values: dict[str, str], mark: str) -> bytes:
    """The multipart/form-data body for one clip: ``file`` first, then the fields."""
    name = clip.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
    parts = [
        f'--{mark}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode(),
        clip.wav,
        b"\r\n",
    ]
    for key, value in values.items():
        parts.append(
            f'--{mark}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        )
    parts.append(f"--{mark}--\r\n".encode())
    return b"".join(parts)


def estimate_tokens(text: str) -> int:
    """Tokens in a transcript where nothing counted them: 1.3 per word, as for datasets."""
    return round(len(text.split()) * 1.3)


def by_bucket(
    seconds: Sequence[float], e2els: Sequence[float | None]
) -> dict[str, dict[str, float | int]]:
    """E2E latency (ms) per audio-length bucket: mean, median, p95; and each bucket's count and
    audio seconds. ``e2els[i]`` is None for a request that failed (counted, not timed)."""
    groups: dict[str, tuple[list[float], list[float], list[int]]] = {}
    for s, e in zip(seconds, e2els, strict=True):
        lat, secs, failed = groups.setdefault(audio.bucket(s), ([], [], [0]))
        if e is None:
            failed[0] += 1
        else:
            lat.append(e * 1000.0)
            secs.append(s)
    order = [audio.bucket(edge) for edge in audio.BUCKETS] + [audio.bucket(math.inf)]
    out: dict[str, dict[str, float | int]] = {}
    for name in sorted(groups, key=lambda b: order.index(b) if b in order else len(order)):
        lat, secs, failed = groups[name]
        row: dict[str, float | int] = {
            "completed": len(lat),
            "failed": failed[0],
            "audio_seconds": sum(secs),
            "mean_e2el_ms": statistics.fmean(lat) if lat else 0.0,
            "median_e2el_ms": statistics.median(lat) if lat else 0.0,
            "p95_e2el_ms": percentile(lat, 95),
        }
        out[name] = row
    return out
