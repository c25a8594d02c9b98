"""``labctl bench --backend openai-audio``: speech-to-text under load, as vLLM measures it.

Each request posts one clip as a multipart form (:mod:`labctl.bench.audio`) and
reads the answer with the same client and stream parser as text: TTFT at the
first ``transcription.chunk`` with ``choices``, ITL between chunks, output tokens
from the final usage chunk. A server that does not stream (whisper-server answers
``{"text": …}`` whatever ``stream`` says) is measured too: TTFT is then the whole
answer's time, there is no ITL, and output tokens come from the text; the report
says how many answers were not streamed.

On top of ``vllm bench serve``'s fields the report carries ``audio_seconds`` (the
audio of the requests that completed) and ``rtfx`` (those seconds per second of
benchmark, vLLM's "RTFx (Inverse Real-Time Factor)"), and ``e2el_by_audio_bucket``:
E2E latency per audio-length bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import json
from pathlib import Path
from typing import Any

from labctl.bench.audio import Clip, boundary, by_bucket, fields, form, from_dir, generated, route
from labctl.bench.http import Endpoint
from labctl.bench.options import BenchConfig
from labctl.bench.progress import Progress
from labctl.bench.run import Runner, _Result
from labctl.bench.selfcheck import TimedSelector
from labctl.bench.stream import _Stream
from labctl.sim.workload import Item


def load_clips(config: BenchConfig) -> list[Clip]:
    """The run's clips: the files of ``--audio-dir`` or the generated ``--audio-seconds``.

    Raises:
        UsageError: the folder is missing or empty, or one of its files is not audio.
    """
    if config.audio_dir is not None:
        return from_dir(Path(config.audio_dir))
    return generated(config.audio_seconds, config.seed)


class AudioRunner(Runner):
    """A :class:`Runner` whose requests are clips posted to a transcription endpoint."""

    def __init__(
        self,
        config: BenchConfig,
        clips: Sequence[Clip] | None = None,
        progress: Progress | None = None,
        tick: Callable[[Progress], None] | None = None,
    ) -> None:
        super().__init__(config, progress, tick)
        self.clips = list(clips) if clips is not None else load_clips(config)
        mark = boundary(self.clips)
        self.content_type = f"multipart/form-data; boundary={mark}"
        values = fields(config.model, config.output_len)
        #: One form per clip, built once: every request of that clip sends these bytes.
        self.forms = [form(c, values, mark) for c in self.clips]
        self.seconds = {c.name: c.seconds for c in self.clips}

    def route(self) -> tuple[Endpoint, str]:
        return route(self.config.base_url)

    async def calibrate(self) -> None:
        """Nothing to calibrate: the prompt is audio, and the server counts it."""

    def workload(self) -> tuple[list[Item], list[bytes]]:
        """Request i sends clip i mod the number of clips; an item names its clip."""
        n, out = len(self.clips), self.config.output_len
        items = [Item(0, out, self.clips[i % n].name) for i in range(self.config.num_prompts)]
        return items, [self.forms[i % n] for i in range(self.config.num_prompts)]

    async def one(self, body: bytes, item: Item, start: float, queue_time: float) -> _Result:
        result = await super().one(body, item, start, queue_time)
        result.audio_seconds = self.seconds.get(item.prompt or "")
        return result

    def check(self, stream: _Stream, status: int, raw: bytes, ended: float) -> str | None:
        """As for text, and a plain JSON transcript (``{"text": …}``) is a whole answer."""
        if status == 200 and stream.first is None and stream.error is None and raw:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and isinstance(doc.get("text"), str):
                stream.whole(doc, doc["text"], ended)
                return None
        return super().check(stream, status, raw, ended)

    def report(
        self,
        done: list[_Result],
        duration: float,
        slips: list[float],
        selector: TimedSelector | None,
    ) -> dict[str, Any]:
        doc = super().report(done, duration, slips, selector)
        ok = [r for r in done if r.outcome.success]
        seconds = sum(r.audio_seconds or 0.0 for r in ok)
        doc["rtfx"] = seconds / doc["duration"] if doc["duration"] > 0 else 0.0
        doc["audio_seconds"] = seconds
        doc["audio_clips"] = len(self.clips)
        doc["audio_source"] = str(self.config.audio_dir) if self.config.audio_dir else "generated"
        doc["e2el_by_audio_bucket"] = by_bucket(
            [r.audio_seconds or 0.0 for r in done],
            [r.outcome.e2el if r.outcome.success else None for r in done],
        )
        plain = sum(1 for r in ok if not r.streamed)
        doc["non_streamed_responses"] = plain
        if plain:
            doc["warnings"].append(
                f"{plain} of {len(ok)} answers were one JSON document, not an event stream (the "
                "server does not stream transcriptions): their TTFT is their E2E latency and they "
                "have no ITL or TPOT"
            )
        return doc
