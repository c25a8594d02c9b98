"""The twin of Whisper as a user runs it: `labctl sim serve --model openai/whisper-large-v3`
with the real ``openai`` client, raw multipart forms, and its Prometheus metrics."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request

import openai
from openai.types.audio.transcription import UsageDuration
import pytest

from labctl import audio
from tests.integration.lab import Lab, Twin, get

pytestmark = pytest.mark.integration
#: This ``openai`` release marks ``audio.translations`` deprecated; vLLM still serves it.
TRANSLATIONS_DEPRECATED = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

WHISPER = "openai/whisper-large-v3"
FILLER_START = " the lab runs on the card it owns and every token here is"


@pytest.fixture
def twin(lab: Lab) -> Twin:
    return lab.twin("--model", WHISPER, "--time-scale", "0", "--no-gpu-ledger")


def client(twin: Twin) -> openai.OpenAI:
    return openai.OpenAI(base_url=twin.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def wav(seconds: float, seed: int = 0) -> tuple[str, bytes, str]:
    return ("clip.wav", audio.clip(seconds, seed=seed), "audio/wav")


def series(text: str, prefix: str) -> float:
    """The sum of the samples whose line starts with ``prefix`` (a name and opening labels)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))  # fmt: skip


@TRANSLATIONS_DEPRECATED
def test_twin_speech_answers_the_openai_client_as_vllm_does(twin: Twin) -> None:
    c = client(twin)
    json_ = c.audio.transcriptions.create(model=WHISPER, file=wav(4.7))
    # 13 words at the twin's speaking rate, Whisper's leading space, usage in whole seconds.
    assert json_.text == FILLER_START
    assert isinstance(json_.usage, UsageDuration)
    assert (json_.usage.type, json_.usage.seconds) == ("duration", 5)

    # vLLM answers response_format=text with the JSON object too (the client hands it over raw).
    text = c.audio.transcriptions.create(model=WHISPER, file=wav(4.7), response_format="text")
    assert json.loads(text) == {"text": FILLER_START, "usage": {"type": "duration", "seconds": 5}}

    verbose = c.audio.transcriptions.create(
        model=WHISPER, file=wav(12.0), response_format="verbose_json",
        timestamp_granularities=["segment"], language="de", temperature=0.2,
    )  # fmt: skip
    duration: object = verbose.duration
    assert duration == "12.0"  # vLLM answers the duration as a string
    assert verbose.language == "de" and verbose.words is None and verbose.segments
    assert [(s.start, s.end) for s in verbose.segments] == [(0.0, 4.0), (4.0, 8.0), (8.0, 12.0)]
    assert verbose.text == "".join(s.text for s in verbose.segments)
    assert all(s.temperature == 0.2 and s.no_speech_prob is None for s in verbose.segments)

    translated = c.audio.translations.create(model=WHISPER, file=wav(4.7))
    assert translated.text == FILLER_START and "usage" not in translated.model_dump()

    # The model's name may be left out; another one is not served.
    capped = c.audio.transcriptions.create(model="", file=wav(4.7),
                                           extra_body={"max_completion_tokens": 3})  # fmt: skip
    assert capped.text == " the lab runs"
    with pytest.raises(openai.NotFoundError, match="The model `whisper-1` does not exist."):
        c.audio.transcriptions.create(model="whisper-1", file=wav(1.0))


@TRANSLATIONS_DEPRECATED
def test_twin_speech_streams_transcription_chunks_then_done(twin: Twin) -> None:
    c = client(twin)
    plain = c.audio.transcriptions.create(model=WHISPER, file=wav(4.7)).text
    with c.audio.transcriptions.with_streaming_response.create(
        model=WHISPER, file=wav(4.7), stream=True,
        extra_body={"stream_include_usage": True, "stream_continuous_usage_stats": True},
    ) as resp:  # fmt: skip
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert {ch["object"] for ch in chunks} == {"transcription.chunk"}
    deltas = [ch for ch in chunks if ch["choices"]]
    assert "".join(ch["choices"][0]["delta"]["content"] for ch in deltas) == plain
    assert len(deltas) == 14  # 13 words and the end-of-text token
    assert deltas[-1]["choices"][0]["finish_reason"] == "stop"
    assert "finish_reason" not in deltas[0]["choices"][0]
    prompt = 4 + 470  # the decoder prompt and 4.7 s of mel frames
    assert [ch["usage"]["completion_tokens"] for ch in deltas] == list(range(1, 15))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": prompt, "total_tokens": prompt + 14, "completion_tokens": 14
    }  # fmt: skip

    with c.audio.translations.with_streaming_response.create(
        model=WHISPER, file=wav(2.0), extra_body={"stream": True}
    ) as resp:  # fmt: skip
        events = [line for line in resp.iter_lines() if line.startswith("data: {")]
    assert {json.loads(e[6:])["object"] for e in events} == {"translation.chunk"}
    assert all(json.loads(e[6:])["choices"] for e in events)  # no usage event unless asked


def test_twin_speech_splits_a_75_s_clip_into_three_chunks(twin: Twin) -> None:
    c = client(twin)
    long = wav(75.0, seed=4)
    samples = audio.decode(long[1])
    cuts = audio.split(samples)
    assert len(cuts) == 3
    verbose = c.audio.transcriptions.create(model=WHISPER, file=long,
                                            response_format="verbose_json")  # fmt: skip
    assert verbose.segments is not None
    assert sorted({s.seek for s in verbose.segments}) == [0, 30, 60]  # vLLM: chunk i at i × 30 s
    words = [math.ceil((end - start) / audio.SAMPLE_RATE * 2.75) for start, end in cuts]
    plain = c.audio.transcriptions.create(model=WHISPER, file=long)
    assert len(plain.text.split()) == sum(words)
    assert isinstance(plain.usage, UsageDuration) and plain.usage.seconds == 75

    with c.audio.transcriptions.with_streaming_response.create(
        model=WHISPER, file=long, stream=True
    ) as resp:  # fmt: skip
        chunks = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    finished = [ch for ch in chunks if ch["choices"][0].get("finish_reason")]
    assert len(finished) == 3  # each chunk ends on its own end-of-text, one after another
    assert "".join(ch["choices"][0]["delta"]["content"] for ch in chunks) == plain.text

    metrics = get(twin.url + "/metrics")
    # 3 requests of 75 s: three engine requests each, all ending on end-of-text.
    assert series(metrics, 'vllm:request_success_total{engine="0",finished_reason="stop"') == 9
    assert series(metrics, "vllm:e2e_request_latency_seconds_count{") == 9
    frames = 3 * sum(math.ceil((end - start) / 160) for start, end in cuts)
    assert series(metrics, "vllm:prompt_tokens_total{") == pytest.approx(9 * 4 + frames, abs=9)
    # Words and an end-of-text token per chunk; the verbose one timestamps each 5 s segment.
    segments = sum(math.ceil((end - start) / audio.SAMPLE_RATE / 5) for start, end in cuts)
    generated = 3 * (sum(words) + 3) + 2 * segments
    assert series(metrics, "vllm:generation_tokens_total{") == generated


def form(*parts: tuple[str, bytes, str | None]) -> tuple[bytes, str]:
    """A multipart body of (name, value, filename or None for a plain field) parts."""
    out = b""
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--b0undary\r\nContent-Disposition: %s\r\n\r\n%s\r\n" % (disp.encode(), value)
    return out + b"--b0undary--\r\n", "multipart/form-data; boundary=b0undary"


def test_twin_speech_refuses_bad_input_with_vllms_error_and_status(twin: Twin) -> None:
    url = twin.url + "/v1/audio/transcriptions"
    model = ("model", WHISPER.encode(), None)

    def post(*parts: tuple[str, bytes, str | None]) -> tuple[int, dict[str, object]]:
        body, ctype = form(*parts)
        req = urllib.request.Request(url, body, {"Content-Type": ctype}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            error: dict[str, object] = json.loads(err.read())["error"]
            return err.code, error

    invalid = {"message": "Invalid or unsupported audio file.", "type": "BadRequestError",
               "param": None, "code": 400}  # fmt: skip
    assert post(model, ("file", b"this is a text file, not audio\n" * 20, "notes.wav")) == (
        400, invalid
    )  # fmt: skip
    assert post(model, ("file", b"", "empty.wav")) == (400, invalid)
    status, err = post(model, ("file", b"RIFF" + bytes(26 * 2**20), "big.wav"))  # vLLM: MiB
    assert status == 400 and err["param"] == "audio_filesize_mb"
    assert str(err["message"]).startswith("Maximum file size exceeded (parameter=audio_filesize_mb")

    status, err = post(model)  # no file at all: FastAPI's validation error, as vLLM answers it
    assert status == 400 and (err["type"], err["code"]) == ("Bad Request", 400)
    assert "'loc': ('body', 'file'), 'msg': 'Field required'" in str(err["message"])
    status, err = post(model, ("file", b"clip.wav", None))  # a string where the file goes
    assert (status, err["message"], err["type"]) == (
        422, "Expected 'file' to be a file-like object, not 'str'.", "Unprocessable Entity"
    )  # fmt: skip
    status, err = post(model, ("file", audio.clip(1.0), "a.wav"), ("stream_include_usage", b"true", None))  # fmt: skip
    assert status == 400 and err["param"] == "stream_include_usage"
    assert "Stream options can only be defined when `stream=True`." in str(err["message"])
    status, err = post(model, ("file", audio.clip(1.0), "a.wav"), ("temperature", b"hot", None))
    assert status == 400 and "Input should be a valid number" in str(err["message"])

    c = client(twin)
    with pytest.raises(openai.BadRequestError) as srt:
        c.audio.transcriptions.create(model=WHISPER, file=wav(1.0), response_format="srt")
    assert srt.value.body == {
        "message": "Currently only support response_format: `text`, `json` or `verbose_json`",
        "type": "BadRequestError", "param": None, "code": 400,
    }  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="verbose_json format doesn't support stream"):
        c.audio.transcriptions.create(model=WHISPER, file=wav(1.0), stream=True,
                                      response_format="verbose_json")  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="Unsupported language: 'xx'"):
        c.audio.transcriptions.create(model=WHISPER, file=wav(1.0), language="xx")
    with pytest.raises(openai.BadRequestError, match="max_tokens must be at least 1, got 0."):
        c.audio.transcriptions.create(model=WHISPER, file=wav(1.0),
                                      extra_body={"max_completion_tokens": 0})  # fmt: skip
    # Whisper does not chat.
    with pytest.raises(openai.BadRequestError, match="does not support Chat Completions API"):
        c.chat.completions.create(model=WHISPER, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="does not support Completions API"):
        c.completions.create(model=WHISPER, prompt="hi", max_tokens=1)


@TRANSLATIONS_DEPRECATED
def test_twin_of_a_text_model_refuses_speech(lab: Lab) -> None:
    text = lab.twin("--model", "Qwen/Qwen3-0.6B", "--time-scale", "0", "--no-gpu-ledger")
    c = client(text)
    with pytest.raises(openai.BadRequestError) as err:
        c.audio.transcriptions.create(model="Qwen/Qwen3-0.6B", file=wav(1.0))
    assert err.value.body == {"message": "The model does not support Transcriptions API",
                              "type": "BadRequestError", "param": None, "code": 400}  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="does not support Translations API"):
        c.audio.translations.create(model="Qwen/Qwen3-0.6B", file=wav(1.0))
