"""What a vLLM engine in sleep mode still holds, and which sleep level the host can afford.

vLLM's sleep mode allocates weights and KV cache through its own CUDA allocator (tagged
``weights`` and ``kv_cache``) and gives exactly those back: level 1 copies the weights to
host RAM first and drops the KV cache, level 2 drops both. What it never allocated there
stays on the GPU: the memory outside PyTorch that the profile run saw (the plan's
``non_torch_bytes``: communicators, buffers) and the CUDA-graph pool (``cuda_graph_bytes``),
plus the CUDA context, which the plan leaves outside its budget. Preflight and the twin both
size a sleeping engine with :func:`asleep_bytes`, so they agree.
"""

from __future__ import annotations

from labctl.fit.plan import FitResult
from labctl.fit.vllm import CONTEXT_BYTES
from labctl.units import GiB

#: What a real engine keeps asleep beyond :func:`asleep_bytes`: its CUDA context.
CONTEXT_SLACK_BYTES = CONTEXT_BYTES
#: Level 1 needs the host to keep this much available once the weights are there: the larger
#: of a fixed floor and a share of its RAM.
HOST_MARGIN_BYTES = 2 * GiB
HOST_MARGIN_SHARE = 0.1
LEVELS = (1, 2)


def asleep_bytes(fit: FitResult) -> int:
    """Bytes per GPU of its budget that a sleeping engine keeps: everything its sleep-mode
    allocator did not hold (weights and KV cache go)."""
    return min(fit.budget_bytes, fit.non_torch_bytes + fit.cuda_graph_bytes)


def host_bytes(weight_bytes: int, level: int) -> int:
    """Host RAM a sleeping engine takes: its weights at level 1, nothing at level 2 (it keeps
    only small buffers, such as rotary tables)."""
    return weight_bytes if level == 1 else 0


def choose_level(setting: str | int, weight_bytes: int, available: int, total: int) -> int:
    """The sleep level for ``setting`` (``"auto"``, 1 or 2): ``auto`` takes level 1 when the
    host's available RAM holds all of the engine's weights (``weight_bytes``, every GPU's) and
    still keeps a margin (:data:`HOST_MARGIN_BYTES` or :data:`HOST_MARGIN_SHARE` of ``total``,
    the larger), else level 2, whose wake reads the weights from disk again."""
    if setting in LEVELS:
        return int(setting)
    margin = max(HOST_MARGIN_BYTES, int(HOST_MARGIN_SHARE * total))
    return 1 if available - weight_bytes >= margin else 2
