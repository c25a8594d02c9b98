"""Audio as the speech engines take it: what a file holds, its samples, and clips for tests
and benchmarks.

Files are read with libsndfile (``soundfile``), as vLLM's speech endpoints and its
benchmark client read them: WAV, FLAC, OGG/Vorbis, MP3 and the rest libsndfile knows.
:func:`probe` reads only what the header says (the gateway counts audio seconds with it);
:func:`decode` reads the samples, mono at 16 kHz (the twin's input). :func:`split` cuts
long audio as vLLM cuts it: chunks of at most 30 s, each cut at the quietest 100 ms within
the chunk's last second. :func:`clip` makes a WAV of a given length: speech-like bursts of
tone and noise with pauses, so that cuts have quiet places to fall in.
"""

from __future__ import annotations

from dataclasses import dataclass
import io
import math
import re

import numpy as np
import soundfile

__all__ = ["BUCKETS", "SAMPLE_RATE", "Audio", "AudioError", "bucket", "clip", "decode", "probe",
           "split", "wav"]  # fmt: skip

#: Whisper's input rate (and vLLM's ``SpeechToTextConfig.sample_rate``).
SAMPLE_RATE = 16_000
#: Audio length buckets (upper bounds, seconds) for latency by length, in the gateway's
#: metrics and in ``labctl bench``: a 30 s chunk is Whisper's unit.
BUCKETS = (5.0, 10.0, 30.0, 60.0)


class AudioError(ValueError):
    """A file that is not audio libsndfile can read (vLLM: "Invalid or unsupported audio file.")."""


@dataclass(frozen=True)
class Audio:
    seconds: float
    sample_rate: int
    channels: int
    format: str  # libsndfile's name: WAV, FLAC, OGG, MP3, …


class _View:
    """A read-only file over a buffer, read by libsndfile without copying the buffer
    (``io.BytesIO`` would copy all of it first)."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data).cast("B")
        self.at = 0

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.at, io.SEEK_END: len(self.data)}[whence]
        self.at = min(max(0, base + offset), len(self.data))
        return self.at

    def tell(self) -> int:
        return self.at

    def readinto(self, buf: memoryview) -> int:
        n = min(len(buf), len(self.data) - self.at)
        memoryview(buf).cast("B")[:n] = self.data[self.at : self.at + n]
        self.at += n
        return n

    def read(self, count: int = -1) -> bytes:
        end = len(self.data) if count < 0 else min(len(self.data), self.at + count)
        out = bytes(self.data[self.at : end])
        self.at = end
        return out


def probe(data: bytes | memoryview) -> Audio:
    """What an audio file holds, from its header.

    Raises:
        AudioError: empty, or not a format libsndfile reads.
    """
    if len(data) == 0:
        raise AudioError("the audio file is empty")
    try:
        info = soundfile.info(_View(data))
    except (RuntimeError, soundfile.LibsndfileError, TypeError) as exc:
        raise AudioError(f"not an audio file libsndfile can read ({_reason(exc)})") from None
    if info.samplerate <= 0 or info.frames < 0:
        raise AudioError("the audio file's header gives no sample rate")
    return Audio(info.frames / info.samplerate, info.samplerate, info.channels, info.format)


def decode(data: bytes | memoryview, rate: int = SAMPLE_RATE) -> np.ndarray:
    """The file's samples, mono float32 at ``rate`` (linear resampling where it differs).

    Raises:
        AudioError: empty, or not a format libsndfile reads.
    """
    if len(data) == 0:
        raise AudioError("the audio file is empty")
    try:
        samples, native = soundfile.read(_View(data), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, TypeError) as exc:
        raise AudioError(f"not an audio file libsndfile can read ({_reason(exc)})") from None
    mono: np.ndarray = samples.mean(axis=1, dtype=np.float32)
    if native != rate and len(mono):
        n = max(1, round(len(mono) * rate / native))
        mono = np.interp(np.linspace(0, len(mono) - 1, n), np.arange(len(mono)), mono).astype(
            np.float32
        )
    return mono


def split(
    samples: np.ndarray, rate: int = SAMPLE_RATE, max_clip_s: float = 30.0,
    overlap_s: float = 1.0, window: int = 1600,
) -> list[tuple[int, int]]:  # fmt: skip
    """Where vLLM cuts audio longer than ``max_clip_s``: ``(start, end)`` sample ranges of
    at most ``max_clip_s`` each, every cut at the ``window``-sample stretch of least energy
    within the last ``overlap_s`` of its chunk."""
    total = len(samples)
    chunk = int(max_clip_s * rate)
    if total <= chunk:
        return [(0, total)]
    overlap = int(overlap_s * rate)
    out: list[tuple[int, int]] = []
    start = 0
    while start < total:
        if total - start <= chunk:
            out.append((start, total))
            break
        lo, hi = start + chunk - overlap, start + chunk
        cut = _quietest(samples, lo, hi, window)
        out.append((start, cut))
        start = cut
    return out


def _quietest(samples: np.ndarray, lo: int, hi: int, window: int) -> int:
    region = samples[lo:hi].astype(np.float64)
    if len(region) <= window:
        return hi
    energy = np.convolve(region * region, np.ones(window), mode="valid")[::window]
    return lo + int(np.argmin(energy)) * window + window // 2 if len(energy) else hi


def clip(seconds: float, rate: int = SAMPLE_RATE, seed: int = 0) -> bytes:
    """A 16-bit mono WAV of ``seconds``: bursts of voiced tone and noise (0.2-1.2 s) with
    pauses between them (0.1-0.4 s), the same for the same seed."""
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"a clip needs a positive length in seconds, not {seconds!r}")
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    out = np.zeros(n, dtype=np.float32)
    at = 0
    while at < n:
        burst = min(n - at, int(rng.uniform(0.2, 1.2) * rate))
        t = np.arange(burst, dtype=np.float32) / rate
        pitch = rng.uniform(90, 220)
        voiced = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in (1, 2, 3))
        envelope = np.sin(np.pi * np.arange(burst) / max(burst, 1)) ** 2
        noise = rng.normal(0, 0.05, burst)
        out[at : at + burst] = (0.25 * voiced + noise) * envelope
        at += burst + int(rng.uniform(0.1, 0.4) * rate)
    return wav(np.clip(out, -1, 1), rate)


def wav(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """``samples`` (float, -1 to 1) as a 16-bit mono WAV file."""
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _reason(exc: Exception) -> str:
    return re.sub(r"^Error opening <[^>]*>: ", "", str(exc)).strip() or type(exc).__name__


def bucket(seconds: float | None) -> str:
    """The length bucket of a clip: ``"<=5s"``, ``"<=10s"``, ``"<=30s"``, ``"<=60s"``,
    ``">60s"``, or ``"unknown"``."""
    if seconds is None:
        return "unknown"
    for edge in BUCKETS:
        if seconds <= edge:
            return f"<={edge:g}s"
    return f">{BUCKETS[-1]:g}s"
