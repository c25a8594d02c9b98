"""What a Whisper request is to the twin: its chunks, decoder prompt, tokens, text and segments.

vLLM serves a transcription as one engine request per chunk of at most 30 s
(longer audio is cut at quiet points, ``labctl.audio.split``), each with the
encoder's fixed 1,500 positions and a decoder prompt of four special tokens
(``<|startoftranscript|><|lang|><|task|><|notimestamps|>``), after
``<|startofprev|>`` and the request's ``prompt`` when one is given. The twin's
decoder writes deterministic filler at a speaking rate of ``TOKENS_PER_SECOND``
(people speak about 150 words a minute, some 2.5–3 tokens a second), then the
end-of-text token; ``max_completion_tokens`` and the context (448 positions)
cap it. With ``verbose_json`` the decoder also writes a start and an end
timestamp token around each segment.

The live server (``labctl.sim.speech``) and the offline runner build their
requests from here, so that both generate the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math
import zlib

from labctl.audio import SAMPLE_RATE

#: Special tokens ahead of every chunk's transcript.
DECODER_PROMPT_TOKENS = 4
#: Text tokens the twin's decoder writes per second of audio.
TOKENS_PER_SECOND = 2.75
#: Samples per mel frame (100 frames a second at 16 kHz): vLLM counts a clip's frames
#: with the decoder prompt as its prompt tokens (``get_num_audio_tokens``).
HOP_SAMPLES = 160
#: Longest chunk one engine request takes (Whisper's window).
CHUNK_SECONDS = 30.0
#: Audio per ``verbose_json`` segment.
SEGMENT_SECONDS = 5.0
#: Whisper's timestamp resolution.
TIMESTAMP_STEP = 0.02
#: Token ids of the filler words (Whisper's text vocabulary starts at 0; these are nominal).
FIRST_TOKEN_ID = 262


def decoder_prompt_tokens(prompt: str) -> int:
    """The decoder prompt of one chunk: the request's ``prompt`` (one token per word, after
    ``<|startofprev|>``) and the four special tokens."""
    words = len(prompt.split())
    return DECODER_PROMPT_TOKENS + (1 + words if words else 0)


def mel_frames(seconds: float) -> int:
    """vLLM's audio token count of ``seconds`` of audio: ``ceil(seconds × 16000 / 160)``,
    from the duration as vLLM computes it (a partial frame counts)."""
    return math.ceil(seconds * SAMPLE_RATE / HOP_SAMPLES)


def duration_chunks(seconds: float) -> list[float]:
    """Chunk lengths of audio known only by its length: cut every 30 s (with the samples,
    vLLM cuts at the quietest 100 ms of each chunk's last second instead)."""
    if seconds <= CHUNK_SECONDS:
        return [seconds]
    n = math.ceil(seconds / CHUNK_SECONDS)
    return [CHUNK_SECONDS] * (n - 1) + [seconds - CHUNK_SECONDS * (n - 1)]


@dataclass(frozen=True)
class Chunk:
    """One engine request of a transcription: what it generates and how it ends."""

    index: int
    seconds: float
    #: Where its segments start: vLLM offsets chunk ``i`` by ``i × 30`` s.
    offset: float
    #: Text tokens before the cap.
    words: int
    #: Segments of ``verbose_json`` (0 otherwise).
    segments: int
    #: Tokens the decoder generates: text, timestamps, end-of-text, within the cap.
    generated: int
    #: It ends on end-of-text (``finish_reason`` "stop"), not at the cap ("length").
    stops: bool
    prompt_tokens: int
    samples: int

    @property
    def text_tokens(self) -> int:
        """Text tokens it writes: all of its words unless the cap cut it short."""
        return max(0, min(self.words, self.generated - 2 * self.segments))


def plan_chunk(index: int, samples: int, prompt_tokens: int, cap: int, verbose: bool) -> Chunk:
    """Chunk ``index`` of ``samples`` samples, generating at most ``cap`` tokens."""
    seconds = samples / SAMPLE_RATE
    words = math.ceil(round(seconds * TOKENS_PER_SECOND, 6))
    segments = max(1, math.ceil(seconds / SEGMENT_SECONDS)) if verbose and words else 0
    want = words + 2 * segments + 1
    generated = max(1, min(want, cap))
    return Chunk(index, seconds, index * CHUNK_SECONDS, words, segments, generated,
                 generated == want, prompt_tokens, samples)  # fmt: skip


def piece(n: int, filler: Sequence[str]) -> str:
    """The text of the ``n``-th text token (1-based): a word with its leading space, as
    Whisper's byte-pair tokens carry it."""
    return " " + filler[(n - 1) % len(filler)]


def chunk_text(chunk: Chunk, filler: Sequence[str]) -> str:
    return "".join(piece(n, filler) for n in range(1, chunk.text_tokens + 1))


def segments(chunk: Chunk, filler: Sequence[str], temperature: float) -> list[dict[str, object]]:
    """``verbose_json`` segments of a chunk, as vLLM builds them from timestamp tokens: text
    split evenly over the chunk's audio, times on Whisper's 20 ms grid from the chunk's
    offset, ``no_speech_prob`` None (vLLM does not compute it)."""
    if not chunk.segments:
        return []
    out: list[dict[str, object]] = []
    n = chunk.text_tokens
    per = chunk.seconds / chunk.segments
    for i in range(chunk.segments):
        lo, hi = n * i // chunk.segments, n * (i + 1) // chunk.segments
        tokens = [FIRST_TOKEN_ID + (k - 1) % len(filler) for k in range(lo + 1, hi + 1)]
        text = "".join(piece(k, filler) for k in range(lo + 1, hi + 1))
        raw = text.encode()
        out.append({
            "id": i,
            "avg_logprob": -0.2 if tokens else 0.0,
            "compression_ratio": len(raw) / len(zlib.compress(raw)),
            "end": round(chunk.offset + _grid(per * (i + 1)), 2),
            "no_speech_prob": None,
            "seek": int(chunk.offset),
            "start": round(chunk.offset + _grid(per * i), 2),
            "temperature": temperature,
            "text": text,
            "tokens": tokens,
        })  # fmt: skip
    return out


def _grid(seconds: float) -> float:
    return round(seconds / TIMESTAMP_STEP) * TIMESTAMP_STEP
