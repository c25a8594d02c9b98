"""What one benchmark run is asked to do, checked before anything is sent.

The options are validated here, in one place, so a bad flag is a usage error
before a connection opens. :data:`DETAIL_FIELDS` names the per-request arrays
that only ``--save-detailed`` keeps in the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math
from pathlib import Path

from labctl.bench.http import Endpoint
from labctl.errors import UsageError

#: Per-request arrays (``vllm bench serve --save-detailed``); kept only when asked for.
DETAIL_FIELDS = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times",
                 "queue_times", "generated_texts", "errors")  # fmt: skip


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
        try:
            Endpoint.parse(self.base_url)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
