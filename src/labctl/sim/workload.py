"""Workloads: when requests arrive and how long their prompts and outputs are.

Arrivals follow ``vllm bench serve``: a Poisson process at ``request_rate``
(``burstiness`` 1), or gamma-distributed gaps with shape ``burstiness`` and
the same mean; an infinite rate sends everything at once. Lengths are fixed
(``input_len``/``output_len``, optionally spread uniformly by ``range_ratio``)
or drawn from ShareGPT-like distributions, or read from a dataset file.
Speech workloads give audio instead: lengths in seconds (fixed, or spread
uniformly by ``range_ratio`` as prompt lengths are) or audio files, each
request cut into the chunks vLLM would run (``labctl.sim.whisper``).
Everything is computed up front from the seed, so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import json
import math
from pathlib import Path
import random

from labctl import audio
from labctl.errors import UsageError
from labctl.sim.whisper import DECODER_PROMPT_TOKENS, duration_chunks

#: File suffixes taken from a directory of audio (formats libsndfile reads).
AUDIO_SUFFIXES = frozenset((".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff",
                            ".au", ".caf", ".w64"))  # fmt: skip

#: ShareGPT as `vllm bench serve` samples it (Llama tokenizer, filtered to
#: prompts ≥ 4 and ≤ 1024 tokens, outputs ≥ 4): about 215 prompt and 198 output
#: tokens per request on average, both heavy-tailed.
SHAREGPT_INPUT = (4.95, 0.95, 4, 1024)  # lognormal mu, sigma, min, max
SHAREGPT_OUTPUT = (4.80, 0.95, 4, 1024)


@dataclass(frozen=True)
class Item:
    prompt_len: int
    output_len: int
    prompt: str | None = None
    #: Speech: the audio's chunks in samples at 16 kHz, one engine request each.
    audio: tuple[int, ...] = ()

    @property
    def audio_seconds(self) -> float:
        return sum(self.audio) / audio.SAMPLE_RATE


def _lognormal(rng: random.Random, spec: tuple[float, float, int, int]) -> int:
    mu, sigma, lo, hi = spec
    return int(min(hi, max(lo, round(rng.lognormvariate(mu, sigma)))))


def synthetic(
    n: int, input_len: int, output_len: int, range_ratio: float = 0.0, seed: int = 0
) -> list[Item]:
    if input_len < 1 or output_len < 1:
        raise UsageError("--input-len and --output-len must be at least 1")
    if not 0 <= range_ratio < 1:
        raise UsageError(f"--range-ratio {range_ratio} must be in [0, 1), e.g. 0.1")
    rng = random.Random(seed)

    def draw(mean: int) -> int:
        lo, hi = math.floor(mean * (1 - range_ratio)), math.ceil(mean * (1 + range_ratio))
        return max(1, rng.randint(lo, hi)) if range_ratio else mean

    return [Item(draw(input_len), draw(output_len)) for _ in range(n)]


def sharegpt_like(n: int, seed: int = 0) -> list[Item]:
    rng = random.Random(seed)
    return [
        Item(_lognormal(rng, SHAREGPT_INPUT), _lognormal(rng, SHAREGPT_OUTPUT)) for _ in range(n)
    ]


def from_file(path: Path, n: int, output_len: int | None = None, seed: int = 0) -> list[Item]:
    """A ShareGPT-format JSON file, or a JSONL of ``{"prompt": …}`` (optionally ``output_len``).

    Token counts are estimated at 1.3 tokens per word where no tokenizer is at hand.

    Raises:
        UsageError: the file is missing, empty, or in neither format.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--dataset {path}: {exc.strerror or exc}") from exc
    pairs: list[tuple[str, int | None]] = []
    try:
        if text.lstrip().startswith("["):
            for conv in json.loads(text):
                turns = conv.get("conversations") or conv.get("conversation") or []
                if len(turns) >= 2:
                    pairs.append((turns[0]["value"], _tokens(turns[1]["value"])))
        else:
            for line in text.splitlines():
                if line.strip():
                    doc = json.loads(line)
                    pairs.append((doc["prompt"], doc.get("output_len")))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(
            f'--dataset {path} is neither ShareGPT JSON nor a JSONL of {{"prompt": …}} ({exc})'
        ) from exc
    if not pairs:
        raise UsageError(f"--dataset {path} holds no prompts")
    rng = random.Random(seed)
    rng.shuffle(pairs)
    out = []
    for i in range(n):
        prompt, out_len = pairs[i % len(pairs)]
        out.append(Item(max(1, _tokens(prompt)), output_len or out_len or 128, prompt))
    return out


def audio_lengths(n: int, seconds: float, range_ratio: float = 0.0, seed: int = 0) -> list[Item]:
    """``n`` clips of ``seconds`` each, or spread uniformly over ``seconds × (1 ± range_ratio)``.

    Raises:
        UsageError: a length that is not positive, or a ratio outside [0, 1).
    """
    if not (seconds > 0 and math.isfinite(seconds)):
        raise UsageError(f"--audio-seconds {seconds} must be a positive length, e.g. 5")
    if not 0 <= range_ratio < 1:
        raise UsageError(f"--range-ratio {range_ratio} must be in [0, 1), e.g. 0.5")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        lo, hi = seconds * (1 - range_ratio), seconds * (1 + range_ratio)
        chunks = duration_chunks(rng.uniform(lo, hi) if range_ratio else seconds)
        out.append(Item(DECODER_PROMPT_TOKENS, 0, audio=tuple(_samples(c) for c in chunks)))
    return out


def audio_files(paths: Sequence[Path], n: int, seed: int = 0) -> list[Item]:
    """``n`` requests cycling through audio files (directories give the audio files under
    them), each cut where vLLM would cut it.

    Raises:
        UsageError: a path that is missing, a file that is not audio, or no file at all.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(f for f in path.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"--audio-files {path}: no such file or directory")
    if not files:
        raise UsageError(f"--audio-files {' '.join(map(str, paths))}: no audio files "
                         f"({', '.join(sorted(AUDIO_SUFFIXES))}) there")  # fmt: skip
    clips = []
    for f in files:
        try:
            data = f.read_bytes()
            seconds = audio.probe(data).seconds
            if seconds > duration_chunks(seconds)[0]:  # long audio: cut at its quiet places
                samples = audio.decode(data)
                chunks = tuple(end - start for start, end in audio.split(samples))
            else:
                chunks = (_samples(seconds),)
        except OSError as exc:
            raise UsageError(f"--audio-files {f}: {exc.strerror or exc}") from exc
        except audio.AudioError as exc:
            raise UsageError(f"--audio-files {f}: {exc}; give WAV, FLAC, OGG or MP3") from exc
        clips.append(Item(DECODER_PROMPT_TOKENS, 0, audio=chunks))
    rng = random.Random(seed)
    rng.shuffle(clips)
    return [clips[i % len(clips)] for i in range(n)]


def _samples(seconds: float) -> int:
    return round(seconds * audio.SAMPLE_RATE)


def _tokens(text: str) -> int:
    return max(1, round(len(text.split()) * 1.3))


def arrival_times(
    n: int, request_rate: float, burstiness: float = 1.0, seed: int = 0
) -> list[float]:
    """Send times, seconds from the start; all zero for an infinite rate."""
    if not burstiness > 0:
        raise UsageError(f"--burstiness {burstiness} must be positive; 1 is Poisson")
    if math.isinf(request_rate):
        return [0.0] * n
    if not request_rate > 0:
        raise UsageError(f"--request-rate {request_rate} must be positive, or inf")
    rng = random.Random(seed + 1)
    theta = 1.0 / (request_rate * burstiness)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.gammavariate(burstiness, theta)
    return out
