"""The twin's speech to text, as vLLM serves Whisper: ``/v1/audio/transcriptions`` and
``/v1/audio/translations``.

The request is a multipart form (``file``, ``model``, ``language``, ``prompt``,
``response_format``, ``temperature``, ``timestamp_granularities[]``, ``stream``,
``stream_include_usage``, ``stream_continuous_usage_stats``,
``max_completion_tokens``, …), checked in vLLM's order: the form (a ``file`` that
is a string: 422; a missing one or a value of the wrong type: FastAPI's
validation error, 400), then the served model, the response format (vLLM refuses
``srt`` and ``vtt``), ``verbose_json`` with ``stream``, the language, the file size
(25 MB, ``VLLM_MAX_AUDIO_CLIP_FILESIZE_MB``), the audio itself (decoded with
``labctl.audio``; an empty or unreadable file is "Invalid or unsupported audio
file."), and the token cap.

Audio longer than 30 s is cut where vLLM cuts it, and each chunk is one engine
request whose clip takes the encoder's 1,500 positions. As in vLLM the chunks run
one after another, streamed or not; their texts are concatenated and their
segments offset by 30 s per chunk. Answers keep vLLM's shapes: ``json`` and
``text`` alike are ``{"text", "usage": {"type": "duration", "seconds"}}`` (vLLM
answers ``text`` with the JSON object too); ``verbose_json`` carries ``duration``
as a string, ``language``, ``segments`` and ``words`` (None); translations have no
usage; a stream is ``transcription.chunk`` (``translation.chunk``) events, one per
generated token with ``choices[0].delta.content``, the finishing one of each chunk
with ``finish_reason`` and ``stop_reason``, an optional usage event, then
``data: [DONE]``.

A model that is not a speech model answers these paths with vLLM's "The model does
not support Transcriptions API" (code 400; vLLM versions that register the routes
only for speech models answer 404 instead).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
import json
import math
import os
import time
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from labctl import audio
from labctl.sim.envelope import error_response
from labctl.sim.live import FILLER, AudioInput, LiveEngine, Stream
from labctl.sim.perf import speech_frontend_s as frontend_s
from labctl.sim.whisper import (
    Chunk,
    chunk_text,
    decoder_prompt_tokens,
    mel_frames,
    piece,
    plan_chunk,
    segments,
)

#: vLLM's ``VLLM_MAX_AUDIO_CLIP_FILESIZE_MB``.
MAX_FILE_MB = 25
#: What the request's ``response_format`` may name, and what vLLM serves of it.
FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
SERVED_FORMATS = ("text", "json", "verbose_json")
#: The languages Whisper transcribes well enough for OpenAI's API to list (ISO 639-1).
LANGUAGES = frozenset((
    "af", "ar", "hy", "az", "be", "bs", "bg", "ca", "zh", "hr", "cs", "da", "nl", "en", "et", "fi",
    "fr", "gl", "de", "el", "he", "hi", "hu", "is", "id", "it", "ja", "kn", "kk", "ko", "lv", "lt",
    "mk", "ms", "mr", "mi", "ne", "no", "fa", "pl", "pt", "ro", "ru", "sr", "sk", "sl", "es", "sw",
    "sv", "tl", "ta", "th", "tr", "uk", "ur", "vi", "cy",
))  # fmt: skip
_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}
#: Typed form fields of each task: name → type (vLLM's request models).
_FIELDS: dict[str, dict[str, type]] = {
    "transcribe": {
        "temperature": float, "top_p": float, "min_p": float, "frequency_penalty": float,
        "presence_penalty": float, "repetition_penalty": float, "length_penalty": float,
        "top_k": int, "seed": int, "n": int, "max_completion_tokens": int,
        "stream": bool, "stream_include_usage": bool, "stream_continuous_usage_stats": bool,
        "use_beam_search": bool,
    },
    "translate": {
        "temperature": float, "length_penalty": float, "seed": int, "n": int,
        "max_completion_tokens": int, "stream": bool, "stream_include_usage": bool,
        "stream_continuous_usage_stats": bool, "use_beam_search": bool,
    },
}  # fmt: skip
_PARSE_ERRORS = {
    bool: ("bool_parsing", "Input should be a valid boolean, unable to interpret input"),
    int: ("int_parsing", "Input should be a valid integer, unable to parse string as an integer"),
    float: ("float_parsing", "Input should be a valid number, unable to parse string as a number"),
}


class _Repr:
    """An object whose repr is given: pydantic's error context holds the exception itself."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


@dataclass(frozen=True)
class SpeechRequest:
    """A transcription or translation request, its form read and typed."""

    task: str  # "transcribe" or "translate"
    data: bytes
    model: str | None
    language: str | None
    prompt: str
    response_format: str
    temperature: float
    stream: bool
    include_usage: bool
    continuous_usage: bool
    max_completion_tokens: int | None


def _validation_error(errors: list[dict[str, Any]], param: str | None = None) -> web.Response:
    """FastAPI's ``RequestValidationError`` as vLLM's handler answers it: 400, the exception's
    text and its error list, type "Bad Request"."""
    n = len(errors)
    head = f"{n} validation error{'s' if n != 1 else ''}:\n" + "".join(f"  {e}\n" for e in errors)
    return error_response(400, f"{head.rstrip()} {errors}", param, kind="Bad Request")


def _convert(name: str, kind: type, value: str) -> tuple[Any, dict[str, Any] | None]:
    """A form value as pydantic's lax mode reads it, or its error."""
    text = value.strip()
    try:
        if kind is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE, None
            raise ValueError(text)
        if kind is int:
            return int(text), None
        number = float(text)
        if not math.isfinite(number):
            raise ValueError(text)
        return number, None
    except ValueError:
        code, msg = _PARSE_ERRORS[kind]
        return None, {"type": code, "loc": ("body", name), "msg": msg, "input": value}


async def read_request(request: web.Request, task: str) -> SpeechRequest | web.Response:
    """The form of a speech request, or vLLM's answer to a form it refuses."""
    try:
        form: MultiDictProxy[Any] = await request.post()
    except web.HTTPRequestEntityTooLarge:
        size = (request.content_length or 0) / 1024**2
        return _too_large(size)
    raw = {k: v for k, v in form.items() if not isinstance(v, web.FileField)}
    # vLLM's model validator runs on the raw form first: a string file is refused outright,
    # and stream options count as set when their value is any non-empty string.
    if isinstance(form.get("file"), str):
        return error_response(422, "Expected 'file' to be a file-like object, not 'str'.",
                              kind="Unprocessable Entity")  # fmt: skip
    options = ("stream_include_usage", "stream_continuous_usage_stats")
    if any(raw.get(o) for o in options) and not raw.get("stream"):
        option = next(o for o in options if raw.get(o))
        text = f"Stream options can only be defined when `stream=True`. (parameter={option})"
        cause = _Repr(f"VLLMValidationError({text.split(' (')[0]!r})")
        return _validation_error([{"type": "value_error", "loc": ("body",),
                                   "msg": f"Value error, {text}", "input": raw,
                                   "ctx": {"error": cause}}], param=option)  # fmt: skip
    errors: list[dict[str, Any]] = []
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        errors.append({"type": "missing", "loc": ("body", "file"), "msg": "Field required",
                       "input": raw})  # fmt: skip
    typed: dict[str, Any] = {}
    for name, kind in _FIELDS[task].items():
        if isinstance(value := raw.get(name), str):
            typed[name], failed = _convert(name, kind, value)
            if failed:
                errors.append(failed)
    fmt = str(raw.get("response_format", "json"))
    if fmt not in FORMATS:
        expected = "'json', 'text', 'srt', 'verbose_json' or 'vtt'"
        errors.append({"type": "literal_error", "loc": ("body", "response_format"),
                       "msg": f"Input should be {expected}", "input": fmt,
                       "ctx": {"expected": expected}})  # fmt: skip
    if task == "transcribe":
        for i, g in enumerate(form.getall("timestamp_granularities[]", [])):
            if g not in ("word", "segment"):
                errors.append({"type": "literal_error",
                               "loc": ("body", "timestamp_granularities[]", i),
                               "msg": "Input should be 'word' or 'segment'", "input": g,
                               "ctx": {"expected": "'word' or 'segment'"}})  # fmt: skip
    if errors:
        return _validation_error(errors)
    assert isinstance(upload, web.FileField)
    data = await asyncio.to_thread(upload.file.read)
    model, language = raw.get("model"), raw.get("language")
    return SpeechRequest(
        task=task,
        data=data,
        model=str(model) if model is not None else None,
        language=str(language) if language else None,
        prompt=str(raw.get("prompt", "")),
        response_format=fmt,
        temperature=typed.get("temperature") or 0.0,
        stream=bool(typed.get("stream")),
        include_usage=bool(typed.get("stream_include_usage")),
        continuous_usage=bool(typed.get("stream_continuous_usage_stats")),
        max_completion_tokens=typed.get("max_completion_tokens"),
    )


def _too_large(size_mb: float) -> web.Response:
    return error_response(
        400, f"Maximum file size exceeded (parameter=audio_filesize_mb, value={size_mb})",
        "audio_filesize_mb",
    )  # fmt: skip


class SpeechApi:
    """The two speech paths of a twin: a speech model serves them, any other refuses them."""

    def __init__(self, engine: LiveEngine, model: str, fail: str | None = None) -> None:
        self.engine = engine
        self.model = model
        self.speech = engine.twin.speech
        self.positions = engine.twin.encoder_positions
        self.max_model_len = engine.twin.fit.max_model_len
        #: A fault: every request fails with this message (500), as a broken engine does.
        self.fail = fail

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "transcribe")

    async def translations(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "translate")

    async def _serve(self, request: web.Request, task: str) -> web.StreamResponse:
        req = await read_request(request, task)
        if isinstance(req, web.Response):
            return req
        if not self.speech:
            api = "Transcriptions" if task == "transcribe" else "Translations"
            return error_response(400, f"The model does not support {api} API")
        if self.fail:
            return error_response(500, self.fail)
        if req.model not in (None, "", self.model):
            return error_response(404, f"The model `{req.model}` does not exist.", "model")
        if req.response_format not in SERVED_FORMATS:
            return error_response(
                400, "Currently only support response_format: `text`, `json` or `verbose_json`"
            )
        verbose = req.response_format == "verbose_json"
        if verbose and req.stream:
            return error_response(400, "verbose_json format doesn't support streaming case")
        language = req.language or "en"  # Whisper's default where none is given
        if language not in LANGUAGES:
            return error_response(
                400, f"Unsupported language: {language!r}. Language should be one of: "
                f"{sorted(LANGUAGES)}"
            )  # fmt: skip
        size = len(req.data) / 1024**2
        if size > MAX_FILE_MB:
            return _too_large(size)
        try:
            samples = await asyncio.to_thread(audio.decode, req.data)
        except audio.AudioError:
            return error_response(400, "Invalid or unsupported audio file.")
        seconds = len(samples) / audio.SAMPLE_RATE
        cuts = audio.split(samples) if seconds > 30 else [(0, len(samples))]
        prompt = decoder_prompt_tokens(req.prompt)
        if prompt >= self.max_model_len:
            return error_response(
                400, f"The decoder prompt (length {prompt}) is longer than the maximum model "
                f"length of {self.max_model_len}. Make sure that `max_model_len` is no smaller "
                "than the number of text tokens.",
            )  # fmt: skip
        asked = req.max_completion_tokens
        max_tokens = self.max_model_len if asked is None else min(asked, self.max_model_len)
        if max_tokens < 1:
            return error_response(400, f"max_tokens must be at least 1, got {max_tokens}.")
        if req.temperature < 0:
            return error_response(400, f"temperature must be non-negative, got {req.temperature}.")
        cap = min(max_tokens, self.max_model_len - prompt)
        chunks = [plan_chunk(i, end - start, prompt, cap, verbose) for i, (start, end) in enumerate(cuts)]  # fmt: skip
        rid = f"{task}-{request.headers.get('X-Request-Id') or os.urandom(16).hex()}"
        if req.stream:
            return await self._stream(request, req, chunks, rid, max_tokens, seconds)
        parts: list[str] = []
        found: list[dict[str, object]] = []
        for i, chunk in enumerate(chunks):
            await self._generate(chunk, max_tokens, frontend_s(len(chunks)) if i == 0 else 0.0)
            if verbose:
                segs = segments(chunk, FILLER, req.temperature)
                found += segs
                parts += [str(s["text"]) for s in segs]
            else:
                parts.append(chunk_text(chunk, FILLER))
        text = "".join(parts)
        body: dict[str, object]
        if verbose:
            body = {"duration": str(seconds), "language": language, "text": text,
                    "segments": found, "words": None}  # fmt: skip
        elif task == "transcribe":  # usage in audio seconds, rounded up "as per OpenAI spec"
            body = {"text": text, "usage": {"type": "duration", "seconds": math.ceil(seconds)}}
        else:
            body = {"text": text}
        return web.json_response(body)

    async def _submit(self, chunk: Chunk, max_tokens: int, frontend_s: float) -> Stream:
        inputs = AudioInput(self.positions, mel_frames(chunk.seconds), max_tokens, chunk.stops)
        return await self.engine.submit(chunk.prompt_tokens, chunk.generated, audio=inputs,
                                        frontend_s=frontend_s)  # fmt: skip

    async def _generate(self, chunk: Chunk, max_tokens: int, frontend_s: float) -> None:
        stream = await self._submit(chunk, max_tokens, frontend_s)
        try:
            while await stream.queue.get() is not None:
                pass
        except asyncio.CancelledError:
            self.engine.cancel(stream)  # the client went away
            raise

    async def _stream(
        self,
        request: web.Request,
        req: SpeechRequest,
        chunks: list[Chunk],
        rid: str,
        max_tokens: int,
        seconds: float,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        head = {"id": rid, "object": "transcription.chunk" if req.task == "transcribe"
                else "translation.chunk", "created": int(time.time()),
                "model": req.model or self.model}  # fmt: skip
        usage = req.include_usage
        completion = 0
        stream: Stream | None = None
        try:
            for i, chunk in enumerate(chunks):
                # vLLM counts the decoder prompt and the whole audio's mel frames.
                prompt = chunk.prompt_tokens + mel_frames(seconds)
                lead = frontend_s(len(chunks)) if i == 0 else 0.0
                stream = await self._submit(chunk, max_tokens, lead)
                while (n := await stream.queue.get()) is not None:
                    completion += 1
                    choice: dict[str, object] = {
                        "delta": {"content": piece(n, FILLER) if n <= chunk.text_tokens else ""}
                    }
                    if n == chunk.generated:
                        choice["finish_reason"] = "stop" if chunk.stops else "length"
                        choice["stop_reason"] = None
                    event: dict[str, object] = head | {"choices": [choice]}
                    if usage and req.continuous_usage:
                        event["usage"] = _usage(prompt, completion)
                    await resp.write(_event(event))
                stream = None
            if usage:
                prompt = chunks[0].prompt_tokens + mel_frames(seconds)
                await resp.write(
                    _event(head | {"choices": [], "usage": _usage(prompt, completion)})
                )
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            if stream is not None:
                self.engine.cancel(stream)  # the client went away: stop generating for it
            raise
        return resp


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion,
            "completion_tokens": completion}  # fmt: skip


def _event(doc: Mapping[str, object]) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"
