"""What one benchmark run is asked to do, checked before anything is sent.

The options are validated here, in one place, so a bad flag is a usage error
before a connection opens. :data:`DETAIL_FIELDS` names the per-request arrays
that only ``--save-detailed`` keeps in the result. :data:`BACKENDS` are vLLM's
``--backend`` names this bench speaks (text completions, chat, and speech) and
``openvla``: simulated robots posting camera frames to OpenVLA's ``/act``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math
from pathlib import Path

from labctl.bench import audio, frames
from labctl.bench.http import Endpoint
from labctl.errors import UsageError

#: Per-request arrays (``vllm bench serve --save-detailed``); kept only when asked for.
DETAIL_FIELDS = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times",
                 "queue_times", "generated_texts", "errors", "robot_ids", "arrival_times",
                 "actions", "deadline_missed")  # fmt: skip
#: vLLM's ``vllm bench serve --backend`` names, each with the endpoint it posts to.
BACKENDS = {"openai": "/v1/completions", "openai-chat": "/v1/chat/completions",
            "openai-audio": audio.DEFAULT_ROUTE, "openvla": frames.ROUTE}  # fmt: skip


@dataclass(frozen=True)
class BenchConfig:
    base_url: str
    model: str
    num_prompts: int = 1000
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    input_len: int = 1024
    output_len: int = 128
    range_ratio: float = 0.0
    dataset: Path | None = None
    endpoint: str = "completions"  # or "chat"
    goodput: dict[str, float] | None = None
    warmup: int = 0
    api_key: str | None = None
    seed: int = 0
    timeout: float = 600.0
    percentiles: Sequence[float] = (99,)
    #: vLLM's ``--backend``; None: ``openai-chat`` for the chat endpoint, else ``openai``.
    backend: str | None = None
    #: The speech backend's clips: a folder of audio files, or lengths of generated clips.
    audio_dir: Path | None = None
    audio_seconds: tuple[float, ...] = ()
    #: The robots (``--backend openvla``): how many, how often each sends a frame, and how.
    robots: int = 1
    target_hz: float = 5.0
    #: False: a robot sends its next frame once its last action is back (closed loop).
    open_loop: bool = False
    image_dir: Path | None = None
    instruction: str = frames.INSTRUCTION
    unnorm_key: str | None = frames.UNNORM_KEY
    #: Seconds the robots send for; None: ``num_prompts`` requests in all.
    duration: float | None = None
    #: The p99 action latency a sweep's robots-per-GPU count must meet; None: 1000/target_hz.
    slo_ms: float | None = None

    @property
    def kind(self) -> str:
        """The backend in effect (a key of :data:`BACKENDS`)."""
        if self.backend is not None:
            return self.backend
        return "openai-chat" if self.endpoint == "chat" else "openai"

    @property
    def audio(self) -> bool:
        return self.kind == "openai-audio"

    @property
    def vla(self) -> bool:
        return self.kind == "openvla"

    @property
    def deadline_ms(self) -> float:
        """One control period: an action later than this missed its deadline."""
        return 1000.0 / self.target_hz

    @property
    def slo(self) -> float:
        """The p99 action latency (ms) a run must meet to count toward robots per GPU."""
        return self.slo_ms if self.slo_ms is not None else self.deadline_ms

    def validate(self) -> None:
        if self.num_prompts < 1:
            raise UsageError(f"--num-prompts {self.num_prompts} must be at least 1")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise UsageError(f"--max-concurrency {self.max_concurrency} must be at least 1")
        if not self.request_rate > 0:
            raise UsageError(f"--request-rate {self.request_rate} must be positive, or inf")
        if self.endpoint not in ("chat", "completions"):
            raise UsageError(f"--endpoint {self.endpoint!r}: use chat or completions")
        if self.warmup < 0:
            raise UsageError(f"--warmup {self.warmup} must be 0 or more")
        if not self.timeout > 0:
            raise UsageError(f"--timeout {self.timeout} must be positive (seconds)")
        if self.kind not in BACKENDS:
            raise UsageError(f"--backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.backend == "openai-chat" and self.endpoint != "chat":
            raise UsageError("--backend openai-chat posts to the chat endpoint: drop --endpoint")
        if self.backend == "openai" and self.endpoint != "completions":
            raise UsageError("--backend openai posts to the completions endpoint: drop --endpoint")
        if self.vla:
            self._validate_vla()
            return
        vla_only = [flag for flag, given in (("--image-dir", self.image_dir is not None),
                    ("--duration", self.duration is not None), ("--open-loop", self.open_loop),
                    ("--slo-ms", self.slo_ms is not None)) if given]  # fmt: skip
        if vla_only:
            raise UsageError(f"{vla_only[0]} is for robots: add --backend openvla")
        if self.audio:
            self._validate_audio()
            return
        if self.audio_dir is not None or self.audio_seconds:
            flag = "--audio-dir" if self.audio_dir is not None else "--audio-seconds"
            raise UsageError(f"{flag} is for speech: add --backend openai-audio")
        try:
            Endpoint.parse(self.base_url)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc

    def _validate_audio(self) -> None:
        audio.route(self.base_url)
        if (self.audio_dir is None) == (not self.audio_seconds):
            raise UsageError(
                "--backend openai-audio needs its clips: give --audio-dir DIR (audio files) "
                "or --audio-seconds S (generated clips, e.g. 4.7, 2,5,12 or 1-30), not both"
            )
        if self.dataset is not None:
            raise UsageError("--dataset holds text prompts: for speech give --audio-dir instead")
        if any(not (s > 0) for s in self.audio_seconds):
            raise UsageError("--audio-seconds: each length must be above 0")

    def _validate_vla(self) -> None:
        frames.route(self.base_url)
        if self.audio_dir is not None or self.audio_seconds or self.dataset is not None:
            flag = "--dataset" if self.dataset is not None else "--audio-dir/--audio-seconds"
            raise UsageError(f"{flag} is not for robots: --backend openvla sends camera frames "
                             "(--image-dir DIR, or generated ones)")  # fmt: skip
        if self.max_concurrency is not None or math.isfinite(self.request_rate):
            flag = "--max-concurrency" if self.max_concurrency is not None else "--request-rate"
            raise UsageError(f"{flag} is not for robots: each of --robots N sends at --target-hz "
                             "(one request in flight each, or any number with --open-loop)")  # fmt: skip
        if self.robots < 1:
            raise UsageError(f"--robots {self.robots} must be at least 1")
        if not (self.target_hz > 0 and math.isfinite(self.target_hz)):
            raise UsageError(f"--target-hz {self.target_hz:g} must be a positive number of "
                             "requests per second per robot, e.g. 5")  # fmt: skip
        if self.duration is not None and not (self.duration > 0 and math.isfinite(self.duration)):
            raise UsageError(f"--duration {self.duration:g} must be a positive number of seconds")
        if self.duration is None and self.num_prompts < self.robots:
            raise UsageError(f"--num-prompts {self.num_prompts} is fewer than --robots "
                             f"{self.robots}: give each robot at least one request")  # fmt: skip
        if self.slo_ms is not None and not (self.slo_ms > 0 and math.isfinite(self.slo_ms)):
            raise UsageError(f"--slo-ms {self.slo_ms:g} must be a positive number of milliseconds")
        if not self.instruction.strip():
            raise UsageError("--instruction must say what the robot should do, e.g. "
                             f"{frames.INSTRUCTION!r}")  # fmt: skip
