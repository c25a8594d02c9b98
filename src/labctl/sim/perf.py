"""How long one engine step takes: a roofline with calibrated efficiencies and overheads.

A vLLM step runs every scheduled token of the batch through the model once:
decode tokens (one per running sequence) and prefill chunks. Its time is the
larger of

- the bytes it must read: weights (for MoE only the experts the batch routes
  to), and the KV cache of every sequence in the batch, at the GPU's achievable
  bandwidth (``bandwidth × BW_EFFICIENCY``; the H100 measurements in
  ``shared/data/gpu`` reach 0.86–0.90 of 3.35 TB/s for GEMV, attention and
  copies), and
- its floating-point work (2 FLOPs per active parameter per token, plus
  attention over the context), at ``peak × MFU`` (large GEMMs reach 0.78–0.80
  of peak on that H100; whole prefill steps with attention and norms less),

plus what a pure roofline misses and measured vLLM shows: a fixed per-step
cost (scheduling, sampling, launch), a per-sequence cost, kernel launches per
layer when CUDA graphs are off (``--enforce-eager``), and tensor-parallel
all-reduces. The constants below were fitted on the published points in
``shared/data/sim/vllm-perf-points.jsonl`` (``benchmarks/twin_fidelity.py``
prints the fit).
"""

from __future__ import annotations

from dataclasses import dataclass

from labctl.catalog.arch import LayerKind, ModelArch, Role
from labctl.catalog.gpus import GpuSpec
from labctl.fit.kv import KVOptions, layer_caches
from labctl.fit.plan import FitResult

#: Achievable share of datasheet bandwidth, by memory technology.
BW_EFFICIENCY = {"HBM": 0.88, "GDDR": 0.90, "LPDDR": 0.62}
#: Share of dense tensor peak that whole prefill-heavy steps reach, and the step size
#: (tokens) at which GEMMs reach half of it: small batches do not fill the GPU (the H100
#: GEMMs in shared/data/gpu reach 16–35% of peak at 128 rows, 62–78% at 512).
MFU = 0.55
MFU_HALF_TOKENS = 32
#: Per step: scheduler, input preparation, sampling, output processing.
STEP_OVERHEAD_S = 1.2e-3
#: Per extra rank of a TP × PP group per step: broadcasting the schedule, gathering output.
RANK_OVERHEAD_S = 0.6e-3
#: Per running sequence per step (sampling, detokenising, bookkeeping).
PER_SEQUENCE_S = 25e-6
#: Per layer per step when CUDA graphs are off: Python-side kernel launches.
EAGER_PER_LAYER_S = 0.28e-3
#: Latency of one all-reduce, over NVLink and over PCIe or a network.
ALLREDUCE_LATENCY_S = {"nvlink": 25e-6, "pcie": 50e-6}
#: The API server's share of a request's latency: HTTP, tokenizing, queueing, detokenizing.
FRONTEND_S = 15e-3
#: Pipeline-parallel hand-off between stages.
PP_HANDOFF_S = 0.4e-3

_SKIP_ROLES = {Role.EMBED.value, Role.VISION.value, Role.MTP.value, Role.EXPERT.value}


@dataclass(frozen=True)
class StepCost:
    """The work of one step, summed over the batch."""

    #: Sequences in the batch (decoding or prefilling).
    sequences: int
    #: Tokens run through the model: one per decoding sequence plus prefill chunks.
    tokens: int
    #: Σ context length each scheduled token attends over, for full-attention layers.
    attended_tokens: int
    #: Σ context read from the KV cache per sequence, for full-attention layers.
    kv_tokens_read: int
    #: Same, capped at the sliding window, for sliding-window layers.
    window_tokens_read: int = 0


@dataclass(frozen=True)
class PerfModel:
    """Step time for one model on one GPU type, per GPU of a TP × PP group."""

    gpu: GpuSpec
    #: Weights every step reads (all but embeddings and routed experts), bytes per GPU.
    dense_bytes: float
    #: All routed experts, bytes per GPU.
    expert_bytes: float
    num_experts: int
    experts_per_token: int
    #: GEMM FLOPs per token per GPU (2 × active parameters / TP).
    flops_per_token: float
    #: Attention FLOPs per token per attended context token, per GPU.
    attn_flops_per_pair: float
    full_kv_bytes_per_token: float
    window_kv_bytes_per_token: float
    window: int
    #: Recurrent state (Mamba, Gated DeltaNet) read and written per sequence per step.
    state_bytes_per_sequence: float
    peak_flops: float
    bandwidth: float
    layers: int
    hidden_size: int
    tp: int
    pp: int
    eager: bool

    @classmethod
    def build(cls, arch: ModelArch, fit: FitResult, gpu: GpuSpec) -> PerfModel:
        roles = fit.weights_by_role
        dense = sum(v for k, v in roles.items() if k not in _SKIP_ROLES)
        if Role.LM_HEAD.value not in roles:  # tied embeddings: the head reads the embedding
            dense += roles.get(Role.EMBED.value, 0)
        experts = roles.get(Role.EXPERT.value, 0)
        tp, pp = fit.tensor_parallel_size, fit.pipeline_parallel_size
        opts = KVOptions(kv_dtype=fit.kv_cache_dtype, model_dtype=fit.dtype)
        full = window_bytes = state = 0.0
        window = 0
        for c in layer_caches(arch.kv_layers, tp, opts):
            if c.kind in (LayerKind.SLIDING, LayerKind.CHUNKED) and c.window:
                window_bytes += c.token_bytes
                window = max(window, c.window)
            else:
                full += c.token_bytes
            state += c.state_bytes
        attn_layers = sum(1 for layer in arch.kv_layers if layer.kind != LayerKind.LINEAR)
        q_width = arch.num_attention_heads * arch.head_dim
        fmt = fit.weight_format.lower()
        if gpu.fp4 and gpu.fp4_tflops and ("fp4" in fmt):
            peak = gpu.fp4_tflops
        elif gpu.fp8 and gpu.fp8_tflops and "fp8" in fmt:
            peak = gpu.fp8_tflops
        else:
            peak = gpu.bf16_tflops
        mem = gpu.memory_type.upper()
        eff = next((v for k, v in BW_EFFICIENCY.items() if k in mem), 0.85)
        moe = arch.moe
        return cls(
            gpu=gpu,
            dense_bytes=dense / pp,
            expert_bytes=experts / pp,
            num_experts=moe.num_experts if moe else 0,
            experts_per_token=moe.top_k if moe else 0,
            flops_per_token=2.0 * arch.active_param_count / (tp * pp),
            attn_flops_per_pair=4.0 * attn_layers * q_width / (tp * pp),
            full_kv_bytes_per_token=full / pp,
            window_kv_bytes_per_token=window_bytes / pp,
            window=window,
            state_bytes_per_sequence=2.0 * state / pp,
            peak_flops=peak * 1e12,
            bandwidth=gpu.bandwidth_gbs * 1e9 * eff,
            layers=arch.num_hidden_layers,
            hidden_size=arch.hidden_size,
            tp=tp,
            pp=pp,
            eager=fit.cuda_graph_bytes == 0,
        )

    def experts_touched(self, tokens: int) -> float:
        """Expected share of experts a batch of ``tokens`` routes to."""
        if not self.num_experts or tokens <= 0:
            return 0.0
        miss = 1.0 - self.experts_per_token / self.num_experts
        return 1.0 - miss**tokens

    def step_seconds(self, cost: StepCost) -> float:
        """Wall time of one step over the whole TP × PP group."""
        if cost.tokens <= 0:
            return 0.0
        read = (
            self.dense_bytes
            + self.expert_bytes * self.experts_touched(cost.tokens)
            + self.full_kv_bytes_per_token * cost.kv_tokens_read
            + self.window_kv_bytes_per_token * cost.window_tokens_read
            + self.state_bytes_per_sequence * cost.sequences
        )
        flops = self.flops_per_token * cost.tokens + self.attn_flops_per_pair * cost.attended_tokens
        mfu = MFU * cost.tokens / (cost.tokens + MFU_HALF_TOKENS)
        stage = max(read / self.bandwidth, flops / (self.peak_flops * mfu))
        if self.tp > 1:
            link = "nvlink" if self.gpu.interconnect_gbs >= 100 else "pcie"
            size = cost.tokens * self.hidden_size * 2.0
            per_reduce = ALLREDUCE_LATENCY_S[link] + (
                2 * (self.tp - 1) / self.tp * size / (self.gpu.interconnect_gbs * 1e9)
            )
            stage += 2 * (self.layers / self.pp) * per_reduce
        if self.eager:
            stage += EAGER_PER_LAYER_S * self.layers / self.pp
        overhead = (
            STEP_OVERHEAD_S
            + RANK_OVERHEAD_S * (self.tp * self.pp - 1)
            + PER_SEQUENCE_S * cost.sequences
        )
        return self.pp * stage + (self.pp - 1) * PP_HANDOFF_S + overhead
