"""vLLM's memory accounting, version by version.

At startup vLLM measures, in a profiling run, how much memory the model takes
beyond its weights and gives the rest of ``gpu_memory_utilization × total``
to the KV cache::

    kv = total × utilization − weights − non_torch − activation_peak [− cuda_graphs]

* ``weights``: what "Model loading took" reports (parameters plus buffers).
* ``non_torch``: memory that appears outside PyTorch's allocator during the
  profile (cuBLAS workspaces; all-reduce buffers when tensor parallel).
* ``activation_peak``: PyTorch's peak during a dummy forward pass of
  ``max_num_batched_tokens`` tokens and a dummy sampling step over
  ``max_num_seqs`` sequences (logits are ``max_num_seqs × vocab`` floats, and
  the sampler holds several copies of them).
* ``cuda_graphs``: subtracted only in versions that estimate graph memory
  before sizing the cache; otherwise graphs come out of the headroom left by
  ``1 − utilization``.

The coefficients below were fitted on real startup logs
(``benchmarks/fit_accuracy.py`` reports the fit) and each is tied to a
mechanism rather than to a model.
"""

from __future__ import annotations

from dataclasses import dataclass
import re

from labctl.catalog.arch import LayerKind, ModelArch
from labctl.errors import UsageError
from labctl.units import GiB, MiB

#: The newest vLLM release whose behaviour this module models; the default.
LATEST = "0.24.0"


@dataclass(frozen=True, order=True)
class VllmVersion:
    """A vLLM release, and whether it runs the legacy (V0) engine."""

    major: int
    minor: int
    patch: int = 0
    v0: bool = False

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" + (" (V0 engine)" if self.v0 else "")

    @classmethod
    def parse(cls, text: str, v0: bool | None = None) -> VllmVersion:
        """Parse ``"0.19.0"``, ``"0.6.4.dev26+g92d86da2"`` or ``"0.11"``.

        The legacy V0 engine is assumed before 0.8 and may be forced for
        0.8–0.10 (older GPUs fell back to it).

        Raises:
            UsageError: the text holds no version number.
        """
        m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
        if not m:
            raise UsageError(
                f"--vllm-version {text!r} is not a version; write e.g. 0.19.0 (supported 0.6 to {LATEST})"
            )
        major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        version = (major, minor, patch)
        if version < (0, 5, 0):
            raise UsageError(
                f"--vllm-version {text} is older than the versions labctl models (0.5 to {LATEST})"
            )
        legacy = version < (0, 8, 0) if v0 is None else (v0 or version < (0, 8, 0))
        if version >= (0, 11, 0):
            legacy = False  # V0 was removed in 0.11
        return cls(major, minor, patch, legacy)

    def at_least(self, *version: int) -> bool:
        return self.key >= tuple(version)


@dataclass(frozen=True)
class Behaviour:
    """What a vLLM version does that changes the numbers."""

    version: VllmVersion
    #: Sliding-window layers are sized by their window (hybrid KV cache manager, V1 0.10+).
    hybrid_manager: bool
    #: Chunked-local layers (Llama 4) are sized by their chunk (on by default from 0.19).
    chunked_hybrid: bool
    #: Bytes the dummy sampling step holds per logit element: the sort-based
    #: top-k/top-p path keeps fp32 logits, sorted values, int64 indices,
    #: probabilities and a scatter (~38 B); the in-place Triton and FlashInfer
    #: paths ~14 B.
    sampler_bytes_per_logit: float
    #: The Triton top-k/top-p kernel keeps min(#SM, seqs) rows of fp32 logits (0.17-0.20).
    sampler_sm_buffer: bool
    #: The dummy forward's full hidden states stay alive through the sampler (V1).
    holds_hidden_states: bool
    #: The fused-MoE workspace persists into the sampler step (V1 0.13+).
    moe_workspace: bool
    #: Estimated CUDA-graph memory is subtracted from the KV budget (0.20+).
    graphs_in_budget: bool
    #: "GPU KV cache size" is printed as int(max_concurrency × max_model_len) (0.21+).
    tokens_from_concurrency: bool

    def non_torch_bytes(self, tp: int, pp: int) -> int:
        """Memory outside PyTorch's allocator that the profile run sees grow.

        Before 0.6.5 (V0) and up to 0.9.0 (V1) every byte outside PyTorch was
        charged, the CUDA context included; from 0.11 the snapshot is taken
        after the communicators exist, so only buffers set up during the
        profile count (a lazily created NCCL buffer set of ~2 GiB from 0.18
        when tensor parallel).
        """
        v = self.version
        if v.v0:
            if not v.at_least(0, 6, 5):
                return int(0.35 * GiB)
            return int(0.06 * GiB) if tp == 1 else int(0.2 * GiB)
        if not v.at_least(0, 9, 2):
            return int(0.5 * GiB)
        if tp > 1:
            if v.at_least(0, 18):
                return int((2.06 + 0.035 * min(tp, 8)) * GiB)
            return int(0.55 * GiB) if v.at_least(0, 11) else int(0.2 * GiB)
        if pp > 1:
            return int(0.07 * GiB)
        if v.at_least(0, 18):
            return int(0.25 * GiB)
        return int(0.14 * GiB) if v.at_least(0, 11) else int(0.06 * GiB)


def behaviour(version: VllmVersion) -> Behaviour:
    """The accounting rules of one vLLM version."""
    v = version
    if v.v0:
        sampler = 38.4
    elif v.at_least(0, 17):
        sampler = 14.0
    elif v.at_least(0, 11):
        sampler = 38.4  # FlashInfer sampling off by default, PyTorch sort path
    else:
        sampler = 14.0  # FlashInfer sampling on when installed (wheels ship it)
    return Behaviour(
        version=v,
        hybrid_manager=not v.v0 and v.at_least(0, 10),
        chunked_hybrid=v.at_least(0, 19),
        sampler_bytes_per_logit=sampler,
        sampler_sm_buffer=not v.v0 and v.at_least(0, 17) and not v.at_least(0, 21),
        holds_hidden_states=not v.v0,
        moe_workspace=not v.v0 and v.at_least(0, 13),
        graphs_in_budget=v.at_least(0, 20),
        tokens_from_concurrency=v.at_least(0, 21),
    )


@dataclass(frozen=True)
class Batching:
    """The scheduler limits that size the profiling run."""

    max_num_seqs: int
    max_num_batched_tokens: int
    chunked_prefill: bool


def default_batching(
    version: VllmVersion,
    nvml_total_bytes: int,
    gpu_name: str,
    max_model_len: int,
    max_num_seqs: int | None,
    max_num_batched_tokens: int | None,
    *,
    sliding_window: bool = False,
    multimodal: bool = False,
    mla: bool = False,
    encoder_decoder: bool = False,
) -> Batching:
    """The limits ``vllm serve`` picks when the user leaves them unset.

    ``nvml_total_bytes`` is the device total as NVML reports it, which is what
    vLLM compares with its 70 GiB threshold for the larger defaults.
    """
    v = version
    if v.v0:
        seqs = max_num_seqs or 256
        chunked = max_model_len > 32768 and not (sliding_window or multimodal or mla)
        if max_num_batched_tokens:
            tokens = max_num_batched_tokens
        elif chunked:
            tokens = 2048 if v.at_least(0, 6, 5) else 512
        else:
            tokens = max(max_model_len, 2048)
        if v.at_least(0, 10):
            tokens = min(seqs * max_model_len, tokens)
        return Batching(seqs, tokens, chunked)
    name = gpu_name.lower()
    if v.at_least(0, 9):
        big = nvml_total_bytes >= 70 * GiB and "a100" not in name
    elif v.at_least(0, 8, 5):
        big = nvml_total_bytes >= 70 * GiB
    else:
        big = "h100" in name or "h200" in name
    if v.at_least(0, 8, 5):
        seqs = max_num_seqs or (1024 if big else 256)
    else:
        seqs = max_num_seqs or 1024
    default_tokens = 8192 if big else 2048
    if v.at_least(0, 28) and nvml_total_bytes >= 160 * GiB:
        default_tokens = 16384
    if encoder_decoder:
        default_tokens = min(seqs * max_model_len, max(max_model_len, default_tokens))
    tokens = max_num_batched_tokens or default_tokens
    if not max_num_batched_tokens and v.at_least(0, 11, 2):
        tokens = min(seqs * max_model_len, tokens)
    seqs = min(seqs, tokens)
    return Batching(seqs, tokens, not encoder_decoder)


def forward_activation_bytes(arch: ModelArch, tokens: int, tp: int, dtype_bytes: float) -> int:
    """Peak of a dummy forward pass over ``tokens`` tokens on one rank.

    The largest live set is one layer's worth: hidden states and residual,
    the fused QKV output, and the feed-forward's gate/up output with its
    activated product.
    """
    h = arch.hidden_size
    qkv = (arch.num_attention_heads + 2 * arch.num_kv_heads) * arch.head_dim / tp
    inter = arch.intermediate_size
    if (
        arch.moe is not None
        and arch.moe.num_experts
        and arch.moe.num_moe_layers >= arch.num_hidden_layers
    ):
        inter = arch.moe.shared_intermediate_size or arch.moe.intermediate_size
    per_token = 2 * h + qkv + 3 * inter / tp
    return int(tokens * per_token * dtype_bytes)


def moe_workspace_bytes(arch: ModelArch, tokens: int, tp: int) -> int:
    """The fused-MoE kernel's persistent workspace (routed tokens × top-k slots)."""
    if (
        arch.moe is None
        or not arch.moe.num_experts
        or (arch.quant is not None and arch.quant.method == "mxfp4")
    ):
        return 0
    h, inter, k = arch.hidden_size, arch.moe.intermediate_size / tp, arch.moe.top_k
    return int(tokens * k * (max(inter, h) + max(2 * inter, h)) * 2)


@dataclass(frozen=True)
class Activation:
    forward: int
    sampler: int
    moe_workspace: int
    encoder_margin: int
    total: int


def activation_peak(
    arch: ModelArch,
    batching: Batching,
    tp: int,
    pp: int,
    last_rank: bool,
    dtype_bytes: float,
    b: Behaviour,
    sm_count: int,
) -> Activation:
    """PyTorch's peak increase in the profile run.

    Forward and sampling happen one after the other, so the peak is the larger
    of the two, plus what persists across both (the MoE workspace, pipeline
    receive buffers, the multimodal encoder cache).
    """
    mbt = batching.max_num_batched_tokens
    forward = forward_activation_bytes(arch, mbt, tp, dtype_bytes)
    workspace = moe_workspace_bytes(arch, mbt, tp) if b.moe_workspace else 0
    pp_buffers = int(2 * mbt * arch.hidden_size * 2) if pp > 1 else 0
    encoder = (
        int(0.2 * GiB)
        if arch.multimodal and not b.version.v0 and arch.model_type != "whisper"
        else 0
    )
    sampler = 0
    # V0 with chunked prefill profiles partial prefills, which do not sample.
    if last_rank and not (b.version.v0 and batching.chunked_prefill):
        v = arch.vocab_size
        rows = batching.max_num_seqs if b.version.v0 else min(batching.max_num_seqs, mbt)
        sampler = int(rows * v * b.sampler_bytes_per_logit)
        if b.sampler_sm_buffer:
            sampler += int(min(sm_count or 132, rows) * v * 4)
        if b.holds_hidden_states:
            sampler += int(mbt * arch.hidden_size * dtype_bytes)
    total = max(forward, sampler) + workspace + pp_buffers + encoder
    if not b.version.v0:
        total += int(0.05 * GiB)
    return Activation(forward, sampler, workspace, encoder, total)


def cuda_graph_bytes(arch: ModelArch, layers_on_rank: int, enforce_eager: bool) -> int:
    """Memory the CUDA graph pool takes once captured (0 with --enforce-eager).

    Roughly a fixed cost for capturing ~50 batch sizes plus a per-layer part;
    MLA's full-graph capture costs more.
    """
    if enforce_eager:
        return 0
    mla = any(layer.kind is LayerKind.MLA for layer in arch.kv_layers)
    return int((0.46 + 0.0145 * layers_on_rank + (0.4 if mla else 0.0)) * GiB)


#: CUDA context and communicator memory that exists before vLLM's memory
#: snapshot; it lives in the ``1 - gpu_memory_utilization`` headroom.
CONTEXT_BYTES = 512 * MiB
