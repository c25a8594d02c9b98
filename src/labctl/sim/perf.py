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
  of peak on that H100; whole prefill steps with attention and norms less) times
  the GPU architecture's ``GEMM_SHARE`` (an A100 holds more of its peak than an
  H100); the GEMMs at the weights' format's peak (FP8, FP4 where the GPU has it),
  attention at the KV cache's (BF16 unless the cache is FP8),

plus what a pure roofline misses and measured vLLM shows: a fixed per-step
cost (scheduling, sampling, launch), a per-sequence cost, kernel launches per
layer when CUDA graphs are off (``--enforce-eager``), and tensor-parallel
all-reduces. The constants below were fitted on the published points in
``shared/data/sim/vllm-perf-points.jsonl`` (``benchmarks/twin_fidelity.py``
prints the fit).

An encoder-decoder speech model (Whisper) adds two things to a step:

- the encoder pass of every clip the step starts, compute-bound, over a fixed
  30 s window (1,500 positions for large-v3) whatever the audio's length: 32
  layers of GEMMs, attention and element-wise kernels, then each decoder
  layer's projection of the result into its cross-attention K/V. Its GEMMs run
  in waves of 128×256 output tiles, one tile per SM at a time, so one clip
  (12 row tiles) leaves SMs idle in its last wave and a batch of clips fills
  them better (:class:`EncoderSpec`);
- the cross-attention K/V that every decoding sequence reads each step
  (1,500 positions × 160 KiB for large-v3), on top of the weights and its own
  self-attention K/V: decode is bandwidth-bound.

The encoder's compute and the step's memory traffic share the step's one
roofline, as prefill and decode of a mixed step already do. That is how
SGLang-Omni runs Whisper (its encoder has its own CUDA stream beside decoding),
and its published RTX 4090 run (sglang-omni#1888) is what calibrates this
model (``benchmarks/twin_speech.py``). vLLM instead runs the encoder before the
decoder within the step, so on vLLM a step that starts clips while many
requests decode takes up to the sum of the two (about 12 ms more at 32 running
requests on an RTX 4090).
"""

from __future__ import annotations

from dataclasses import dataclass
import math

from labctl.catalog.arch import LayerKind, ModelArch, Role
from labctl.catalog.gpus import GpuSpec
from labctl.fit.kv import KVOptions, dtype_bytes, layer_caches
from labctl.fit.plan import FitResult

# The LLM step model's free constants, as ``benchmarks/twin_fidelity.py``'s fit puts them on
# every published vLLM point (its surrogate linearised at the constants shipped before these,
# then again at its result; the README has the calibration and cross-validated errors of the
# benchmark's own fits from its datasheet-and-kernel prior). They are effective values: a
# bandwidth share below what a kernel alone reaches also carries the costs the model has no
# term for.
#: Achievable share of datasheet bandwidth, by memory technology (LPDDR: not fitted, no
#: published point beyond the DGX Spark's).
BW_EFFICIENCY = {"HBM": 0.628, "GDDR": 0.817, "LPDDR": 0.62}
#: Share of dense tensor peak that whole prefill-heavy steps reach, and the step size
#: (tokens) at which GEMMs reach half of it: small batches do not fill the GPU (the H100
#: GEMMs in shared/data/gpu reach 16–35% of peak at 128 rows, 62–78% at 512).
MFU = 0.370
MFU_HALF_TOKENS = 24.1
#: How much more of its datasheet tensor peak a GPU architecture's steps reach than Hopper's,
#: on whose points ``MFU`` is mostly fitted (1 where no point fits it: Hopper, Blackwell).
#: An H100's large GEMMs reach 80% of its quoted 989 TFLOPS (793 at 8,192 rows in
#: shared/data/gpu: its 700 W do not hold the boost clock the figure is quoted at); an
#: A100's come nearer their 312 (published cuBLAS runs: 250–290). The fitted shares are
#: effective values: they also carry the attention kernels and whatever else a prefill step
#: spends differently on the older parts.
GEMM_SHARE = {"ampere": 1.28, "ada": 1.34}
#: Share of the dense GEMMs' rate the routed experts' fused MoE kernels reach (the routing's
#: gather and scatter, the grouped GEMMs' scheduling), on top of each expert's GEMM filling
#: the GPU by its own rows (the step's routed tokens spread over the experts it touches,
#: :meth:`PerfModel.expert_rows`), not by the step's, and by its width on the GPU (the fit
#: puts it at its bound, 1: the rows' and the width's fill carry what the kernels lose).
MOE_EFFICIENCY = 1.0
#: The width (columns) of one routed expert's slice on one GPU (its intermediate size ÷ TP)
#: at which its GEMMs run at half ``MOE_EFFICIENCY``: tensor parallelism cuts every expert
#: into thin slices (DeepSeek R1 at TP 8: 256 columns, at 39% of that rate; gpt-oss-120b at
#: TP 1: 2,880, at 88%), whose GEMMs do little work per byte moved. The fit finds it
#: within 290–390 in every fold: the published TP 4–8 MoE bursts prefill slower than their
#: FLOPs say, and their decode steps are longer.
MOE_HALF_WIDTH = 406.0
#: Per step: scheduler, input preparation, sampling, output processing (the fit puts it near
#: its lower bound, 0.2 ms).
STEP_OVERHEAD_S = 0.20e-3
#: Per extra rank of a TP × PP group per step: broadcasting the schedule, gathering output
#: (the fit's; the folds put it anywhere from 0.3 to 3.0 ms: the published TP runs hardly
#: tell it apart from the experts' slicing and the all-reduces).
RANK_OVERHEAD_S = 1.54e-3
#: Per running sequence per step (sampling, detokenising, bookkeeping).
PER_SEQUENCE_S = 35.0e-6
#: Per layer per step when CUDA graphs are off: Python-side kernel launches.
EAGER_PER_LAYER_S = 0.28e-3
#: Latency of one all-reduce, over NVLink and over PCIe or a network (PCIe: not fitted).
ALLREDUCE_LATENCY_S = {"nvlink": 18.0e-6, "pcie": 50e-6}
#: The API server's share of a request's latency: HTTP, tokenizing, queueing, detokenizing.
FRONTEND_S = 31.3e-3
#: The API server's process time to take in one request (parse, tokenize, validate). One
#: process shares itself among the requests in hand (``labctl.sim.api_server``), so a burst of N
#: reaches the engine together after about N × its requests' cost.
INTAKE_S = 1.82e-3
#: A chat request's more: rendering the model's Jinja chat template (vLLM renders gpt-oss
#: chats with its compiled harmony encoder instead, and pays only ``INTAKE_S``). The fit's:
#: it also carries the rest of a chat's intake.
CHAT_TEMPLATE_S = 9.89e-3
#: The API server's process time to stream one token to its client (detokenizing, the
#: response chunk's JSON, the write), shared with the intake: when the engine makes tokens
#: faster than this, they reach the clients late (``labctl.sim.api_server``): one process
#: streams at most about 50,000 tokens/s.
STREAM_TOKEN_S = 20.0e-6


def intake_s(model_type: str, chat: bool) -> float:
    """The API server's process time to take in one text request for a model of
    ``model_type``, a chat (``/v1/chat/completions``) or a completion."""
    template = chat and model_type != "gpt_oss"
    return INTAKE_S + (CHAT_TEMPLATE_S if template else 0.0)


#: The speech twin's own calibration (``benchmarks/twin_speech.py``, fitted on speech points
#: apart from the LLM points above): Whisper's steps, bandwidth and API-server latency.
SPEECH_MFU = 0.55
SPEECH_MFU_HALF_TOKENS = 32
SPEECH_STEP_OVERHEAD_S = 1.2e-3
SPEECH_PER_SEQUENCE_S = 25e-6
SPEECH_BW_EFFICIENCY = {"HBM": 0.88, "GDDR": 0.90, "LPDDR": 0.62}
SPEECH_FRONTEND_S = 15e-3
#: The API server's work on each 30 s chunk of a speech request before the engine sees it:
#: Whisper's log-mel features of the padded window (3,000 frames of a 400-point FFT and a
#: 128-band filter bank, in NumPy on one core).
MEL_FEATURES_S = 10e-3


def speech_frontend_s(chunks: int) -> float:
    """The API server's share of a speech request: the request itself, then the features of
    every chunk, all before its first chunk reaches the engine."""
    return SPEECH_FRONTEND_S + chunks * MEL_FEATURES_S


#: Pipeline-parallel hand-off between stages.
PP_HANDOFF_S = 0.4e-3
#: Output tile (rows × columns) of the large tensor-core GEMM kernels from Ampere to Hopper.
GEMM_TILE = (128, 256)
#: Share of an SM's tensor peak a GEMM tile's main loop reaches: large GEMMs on the H100 in
#: shared/data/gpu reach 0.78–0.80 of peak (2048 and 8192 rows).
GEMM_EFFICIENCY = 0.80
#: Query rows per attention tile (flash attention over the encoder's positions).
ATTN_TILE = 128

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
    #: Clips whose encoder pass runs in this step (encoder-decoder models).
    encoder_items: int = 0
    #: Σ encoder positions each scheduled sequence's cross-attention reads.
    cross_tokens_read: int = 0
    #: The part of ``attended_tokens`` that decoding sequences (one token each) attend over.
    decode_attended_tokens: int = 0
    #: Σ context each scheduled token attends over in sliding-window layers (at most the
    #: window each).
    window_attended_tokens: int = 0


def window_pairs(computed: int, n: int, window: int) -> int:
    """Token pairs ``n`` new tokens after ``computed`` attend over in a sliding-window
    layer: each its own position's context, at most ``window``."""
    lo, hi = computed + 1, computed + n
    if hi <= window:
        return (lo + hi) * n // 2
    if lo > window:
        return n * window
    return (lo + window) * (window - lo + 1) // 2 + (hi - window) * window


def chunk_pairs(computed: int, n: int, chunk: int) -> int:
    """The same in a chunked local attention layer (Llama 4): each token attends over its
    own chunk up to itself."""

    def upto(x: int) -> int:  # pairs of positions 0 .. x - 1
        whole, rest = divmod(x, chunk)
        return whole * chunk * (chunk + 1) // 2 + rest * (rest + 1) // 2

    return upto(computed + n) - upto(computed)


@dataclass(frozen=True)
class EncoderSpec:
    """The audio encoder of an encoder-decoder model (Whisper) and what one pass costs.

    A pass over ``clips`` clips runs every encoder layer on ``clips × positions`` rows:
    the fused QKV, output, and two feed-forward GEMMs, attention over each clip's own
    positions, layer norms, GELU and residual adds; then every decoder layer projects
    the output into its cross-attention K and V. The GEMMs and attention are timed in
    waves of tiles over the GPU's SMs; the element-wise kernels, the weights and the
    cross K/V written are memory traffic.
    """

    positions: int
    layers: int
    hidden: int
    ffn: int
    heads: int
    head_dim: int
    #: Decoder layers, each with its own cross-attention K/V projection.
    decoder_layers: int
    #: Parameters outside the encoder layers (convolution stem, positions, final norm).
    stem_params: float
    weight_bytes: float
    activation_bytes: float
    cross_kv_bytes_per_position: float

    @classmethod
    def of(
        cls, arch: ModelArch, encoder_params: float, dtype_bytes: float, cross: float
    ) -> EncoderSpec:
        """Whisper's encoder from its architecture: the same width, heads and feed-forward
        size as the decoder; its layer count from its parameters."""
        d, ffn = arch.hidden_size, arch.intermediate_size
        per_layer = 4 * d * d + 2 * d * ffn + ffn + 9 * d  # attention, MLP, biases, two norms
        stem = 3 * d * d + arch.encoder_positions * d  # second convolution, positions
        layers = max(1, round((encoder_params - stem) / per_layer))
        return cls(
            positions=arch.encoder_positions,
            layers=layers,
            hidden=d,
            ffn=ffn,
            heads=arch.num_attention_heads,
            head_dim=arch.head_dim,
            decoder_layers=arch.num_hidden_layers,
            stem_params=max(0.0, encoder_params - layers * per_layer),
            weight_bytes=encoder_params * dtype_bytes,
            activation_bytes=dtype_bytes,
            cross_kv_bytes_per_position=cross,
        )

    def compute_seconds(self, clips: int, peak_flops: float, sm_count: int) -> float:
        """Tensor-core time of one pass over ``clips`` clips."""
        if clips <= 0:
            return 0.0
        rows = clips * self.positions
        sms = sm_count or 1
        per_sm = peak_flops * GEMM_EFFICIENCY / sms

        def waves(tiles: int) -> int:
            # Without an SM count the kernel is taken as filling the GPU exactly.
            return math.ceil(tiles / sms) if sm_count else tiles

        def gemm(n: int, k: int) -> float:
            tm, tn = GEMM_TILE
            tiles = math.ceil(rows / tm) * math.ceil(n / tn)
            return waves(tiles) * 2.0 * tm * tn * k / per_sm

        d, ffn = self.hidden, self.ffn
        layer = gemm(3 * d, d) + gemm(d, d) + gemm(ffn, d) + gemm(d, ffn)
        # Attention: each query tile of a head attends over its clip's positions (QKᵀ, then AV).
        q_tiles = clips * self.heads * math.ceil(self.positions / ATTN_TILE)
        attention = waves(q_tiles) * 4.0 * ATTN_TILE * self.positions * self.head_dim / per_sm
        stem = 2.0 * self.stem_params * rows / (peak_flops * GEMM_EFFICIENCY)
        return self.layers * (layer + attention) + self.decoder_layers * gemm(2 * d, d) + stem

    def memory_bytes(self, clips: int) -> float:
        """Bytes one pass moves that its GEMMs do not hide: the encoder's weights, the
        element-wise kernels' reads and writes (two layer norms and two residual adds
        over the width, GELU over the feed-forward width), and the cross K/V written."""
        if clips <= 0:
            return 0.0
        rows = clips * self.positions
        elementwise = (10 * self.hidden + 2 * self.ffn) * self.activation_bytes
        return (
            self.weight_bytes
            + self.layers * rows * elementwise
            + rows * self.cross_kv_bytes_per_position
        )


def _mla_widths(arch: ModelArch) -> dict[int, int]:
    """Per MLA layer, its heads' query/key width plus their value width (DeepSeek: 128
    heads × (192 + 128)): prefill attends with them after decompressing the latent cache."""
    q: dict[int, int] = {}
    v: dict[int, int] = {}
    mla = {layer.index for layer in arch.kv_layers if layer.kind is LayerKind.MLA}
    for w in arch.weights:
        if w.layer not in mla or len(w.shape) != 2 or w.quant_aux:
            continue
        if w.role is Role.ATTN_Q and w.name.endswith(("q_b_proj.weight", "q_proj.weight")):
            q[w.layer] = w.shape[0]
        elif w.role is Role.ATTN_O:
            v[w.layer] = w.shape[1]
    return {i: q[i] + v[i] for i in q if i in v}


def _mla_lora(arch: ModelArch) -> int:
    """The MLA latent's compressed width without its rotary part (DeepSeek: 512), read off
    the latent's layer norm."""
    for w in arch.weights:
        if w.name.endswith("kv_a_layernorm.weight") and w.shape:
            return int(w.shape[0])
    return 0


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
    #: The routed experts' share of ``flops_per_token``.
    expert_flops_per_token: float
    #: Columns of one routed expert's slice on one GPU (its intermediate size ÷ TP).
    expert_width: float
    #: Attention FLOPs per token per attended context token, per GPU: the full-attention
    #: and MLA layers' (MLA at its decompressed head sizes, as prefill runs it).
    attn_flops_per_pair: float
    full_kv_bytes_per_token: float
    window_kv_bytes_per_token: float
    window: int
    #: Recurrent state (Mamba, Gated DeltaNet) read and written per sequence per step.
    state_bytes_per_sequence: float
    peak_flops: float
    #: Attention's tensor-core rate: the KV cache's dtype sets it (FlashAttention and
    #: FlashMLA take BF16 Q/K/V, FP8 only with an FP8 cache), not the weights' format.
    attn_peak_flops: float
    #: The routed experts' tensor rate: the weights' format's, except FP4 experts on a
    #: compute capability 12.x GPU (RTX 50, RTX PRO 6000 Blackwell, GB10), which vLLM's
    #: builds run as weight-only FP4 (Marlin: dequantized to BF16, BF16's rate; vllm#50925).
    expert_peak_flops: float
    bandwidth: float
    layers: int
    hidden_size: int
    tp: int
    pp: int
    eager: bool
    #: Cross-attention K/V bytes per encoder position (encoder-decoder models).
    cross_kv_bytes_per_token: float = 0.0
    encoder: EncoderSpec | None = None
    #: The vLLM version's multiple of the fixed per-step and per-sequence costs (V0's
    #: engine loop costs more than V1's; ``sim.versions``).
    overhead_factor: float = 1.0
    #: Steps with prefill tokens run without CUDA graphs (V0 captures decode batches only).
    eager_prefill: bool = False
    #: vLLM's async scheduling: the engine prepares step N+1 and processes step N's output
    #: while the GPU runs step N, so a step takes the longer of the two (``sim.versions``).
    async_scheduling: bool = False
    #: The same as ``attn_flops_per_pair`` for decoding tokens, which MLA runs absorbed:
    #: every head attends over the latent itself (DeepSeek: 128 heads × (576 + 512) a pair,
    #: 3.4× prefill's); 0: the same as prefill's.
    decode_attn_flops_per_pair: float = 0.0
    #: Attention FLOPs per token per attended context token of the sliding-window layers.
    window_attn_flops_per_pair: float = 0.0
    #: The windowed layers are chunked local attention (``window`` is the chunk), not
    #: sliding windows.
    chunked: bool = False

    @classmethod
    def build(cls, arch: ModelArch, fit: FitResult, gpu: GpuSpec) -> PerfModel:
        roles = fit.weights_by_role
        dense = sum(v for k, v in roles.items() if k not in _SKIP_ROLES)
        if Role.LM_HEAD.value not in roles:  # tied embeddings: the head reads the embedding
            dense += roles.get(Role.EMBED.value, 0)
        experts = roles.get(Role.EXPERT.value, 0)
        tp, pp = fit.tensor_parallel_size, fit.pipeline_parallel_size
        opts = KVOptions(kv_dtype=fit.kv_cache_dtype, model_dtype=fit.dtype)
        full = window_bytes = state = cross = 0.0
        window = 0
        for c in layer_caches(arch.kv_layers, tp, opts):
            if c.kind in (LayerKind.SLIDING, LayerKind.CHUNKED) and c.window:
                window_bytes += c.token_bytes
                window = max(window, c.window)
            elif c.kind is LayerKind.CROSS:
                cross += c.token_bytes
            else:
                full += c.token_bytes
            state += c.state_bytes
        # Q·K and P·V per token pair, summed over the attention layers: the heads' width
        # each (MLA: its own query/key and value head sizes, read off q and o projections).
        # Sliding-window layers attend over their window only.
        mla = _mla_widths(arch)
        q_width = arch.num_attention_heads * arch.head_dim
        attending = [layer for layer in arch.kv_layers if layer.kind is not LayerKind.LINEAR]
        windowed = {LayerKind.SLIDING, LayerKind.CHUNKED}
        pair_width = sum(mla.get(layer.index, 2 * q_width) for layer in attending
                         if not (layer.kind in windowed and layer.window))  # fmt: skip
        window_width = sum(2 * q_width for layer in attending
                           if layer.kind in windowed and layer.window)  # fmt: skip
        lora = _mla_lora(arch) if mla else 0
        decode_width = pair_width + sum(
            arch.num_attention_heads * (layer.mla_latent + lora) - mla[layer.index]
            for layer in attending if layer.index in mla and layer.mla_latent
        )  # fmt: skip
        fmt = fit.weight_format.lower()
        if gpu.fp4 and gpu.fp4_tflops and ("fp4" in fmt):
            peak = gpu.fp4_tflops
        elif gpu.fp8 and gpu.fp8_tflops and "fp8" in fmt:
            peak = gpu.fp8_tflops
        else:
            peak = gpu.bf16_tflops
        expert_peak = peak
        if "fp4" in fmt and gpu.compute_capability[0] == 12:
            expert_peak = gpu.bf16_tflops
        fp8_kv = "fp8" in (fit.kv_cache_dtype or "").lower()
        attn_peak = gpu.fp8_tflops if gpu.fp8 and gpu.fp8_tflops and fp8_kv else gpu.bf16_tflops
        mem = gpu.memory_type.upper()
        table = SPEECH_BW_EFFICIENCY if arch.encoder_positions else BW_EFFICIENCY
        eff = next((v for k, v in table.items() if k in mem), 0.85)
        moe = arch.moe
        active = float(arch.active_param_count)
        routed = float(sum(w.numel * moe.top_k // max(moe.num_experts, 1) for w in arch.weights
                           if w.role is Role.EXPERT and not w.quant_aux)) if moe else 0.0  # fmt: skip
        encoder = None
        if arch.encoder_positions:
            # The decoder's steps run only the decoder; the encoder is its own pass.
            enc_params = float(sum(w.numel for w in arch.weights if w.role is Role.VISION))
            active -= enc_params
            encoder = EncoderSpec.of(arch, enc_params / (tp * pp), dtype_bytes(fit.dtype), cross)
        return cls(
            gpu=gpu,
            dense_bytes=dense / pp,
            expert_bytes=experts / pp,
            num_experts=moe.num_experts if moe else 0,
            experts_per_token=moe.top_k if moe else 0,
            flops_per_token=2.0 * active / (tp * pp),
            expert_flops_per_token=2.0 * routed / (tp * pp),
            expert_width=moe.intermediate_size / tp if moe else 0.0,
            attn_flops_per_pair=2.0 * pair_width / (tp * pp),
            decode_attn_flops_per_pair=2.0 * decode_width / (tp * pp),
            window_attn_flops_per_pair=2.0 * window_width / (tp * pp),
            chunked=any(layer.kind is LayerKind.CHUNKED and layer.window for layer in attending),
            full_kv_bytes_per_token=full / pp,
            window_kv_bytes_per_token=window_bytes / pp,
            window=window,
            state_bytes_per_sequence=2.0 * state / pp,
            peak_flops=peak * 1e12,
            attn_peak_flops=attn_peak * 1e12,
            expert_peak_flops=expert_peak * 1e12,
            bandwidth=gpu.bandwidth_gbs * 1e9 * eff,
            layers=arch.num_hidden_layers,
            hidden_size=arch.hidden_size,
            tp=tp,
            pp=pp,
            eager=fit.cuda_graph_bytes == 0,
            cross_kv_bytes_per_token=cross / pp,
            encoder=encoder,
        )

    def experts_touched(self, tokens: int) -> float:
        """Expected share of experts a batch of ``tokens`` routes to."""
        if not self.num_experts or tokens <= 0:
            return 0.0
        miss = 1.0 - self.experts_per_token / self.num_experts
        return 1.0 - miss**tokens

    def expert_rows(self, tokens: int, touched: float | None = None) -> float:
        """Mean rows of each routed expert's GEMM in a step of ``tokens`` tokens: the
        batch's ``tokens × top_k`` routings spread over the experts it touches
        (``touched``: :meth:`experts_touched`'s share, when the caller has it)."""
        if touched is None:
            touched = self.experts_touched(tokens)
        experts = touched * self.num_experts
        return tokens * self.experts_per_token / experts if experts else 0.0

    @property
    def mfu(self) -> float:
        """Share of the dense tensor peak whole prefill-heavy steps reach on this GPU: ``MFU``
        times its architecture's ``GEMM_SHARE``."""
        return MFU * GEMM_SHARE.get(self.gpu.architecture, 1.0)

    @property
    def peak_seconds_per_token(self) -> float:
        """Tensor-core time of one token's GEMMs at the rates they run at (the dense layers
        at the weights' format's, the routed experts at theirs), before any efficiency."""
        dense = self.flops_per_token - self.expert_flops_per_token
        return dense / self.peak_flops + self.expert_flops_per_token / self.expert_peak_flops

    def encoder_seconds(self, clips: int) -> float:
        """Tensor-core time of the encoder pass over ``clips`` clips (0 without an encoder)."""
        if self.encoder is None:
            return 0.0
        return self.encoder.compute_seconds(clips, self.peak_flops, self.gpu.sm_count)

    def step_seconds(self, cost: StepCost) -> float:
        """Wall time of one step over the whole TP × PP group: the GPU's work and the
        engine's CPU work one after the other, or overlapped under async scheduling."""
        if cost.tokens <= 0:
            return 0.0
        gpu, cpu = self.gpu_seconds(cost), self.cpu_seconds(cost)
        return max(gpu, cpu) if self.async_scheduling else gpu + cpu

    def gpu_seconds(self, cost: StepCost) -> float:
        """The GPUs' part of a step: every pipeline stage's reads or compute, its
        all-reduces and, without CUDA graphs, its kernel launches."""
        touched = self.experts_touched(cost.tokens)
        read = (
            self.dense_bytes
            + self.expert_bytes * touched
            + self.full_kv_bytes_per_token * cost.kv_tokens_read
            + self.window_kv_bytes_per_token * cost.window_tokens_read
            + self.state_bytes_per_sequence * cost.sequences
            + self.cross_kv_bytes_per_token * cost.cross_tokens_read
        )
        speech = self.encoder is not None
        top, half = (SPEECH_MFU, SPEECH_MFU_HALF_TOKENS) if speech else (self.mfu, MFU_HALF_TOKENS)
        encode = 0.0
        if self.encoder is not None and cost.encoder_items:
            encode = self.encoder_seconds(cost.encoder_items)
            read += self.encoder.memory_bytes(cost.encoder_items)
        dense = self.flops_per_token - self.expert_flops_per_token
        compute = dense * cost.tokens / self.peak_flops
        decoding = cost.decode_attended_tokens
        attn = self.attn_flops_per_pair * (cost.attended_tokens - decoding)
        attn += (self.decode_attn_flops_per_pair or self.attn_flops_per_pair) * decoding
        attn += self.window_attn_flops_per_pair * cost.window_attended_tokens
        compute += attn / self.attn_peak_flops
        compute /= top * cost.tokens / (cost.tokens + half)
        if self.expert_flops_per_token:
            rows, width = self.expert_rows(cost.tokens, touched), self.expert_width
            # each expert's GEMM fills the GPU by its rows and by its slice's width
            rate = MOE_EFFICIENCY * top * rows / (rows + half) * width / (width + MOE_HALF_WIDTH)
            compute += (self.expert_flops_per_token * cost.tokens / self.expert_peak_flops) / rate
        stage = max(read / self.bandwidth, compute + encode)
        if self.tp > 1:
            link = "nvlink" if self.gpu.interconnect_gbs >= 100 else "pcie"
            size = cost.tokens * self.hidden_size * 2.0
            per_reduce = ALLREDUCE_LATENCY_S[link] + (
                2 * (self.tp - 1) / self.tp * size / (self.gpu.interconnect_gbs * 1e9)
            )
            stage += 2 * (self.layers / self.pp) * per_reduce
        if self.eager or (self.eager_prefill and cost.tokens > cost.sequences):
            stage += EAGER_PER_LAYER_S * self.layers / self.pp
        return self.pp * stage + (self.pp - 1) * PP_HANDOFF_S

    def cpu_seconds(self, cost: StepCost) -> float:
        """The engine's CPU part of a step: scheduling, inputs, the ranks' broadcast and
        gather, sampling's and the outputs' bookkeeping per sequence."""
        step, per_seq = (
            (SPEECH_STEP_OVERHEAD_S, SPEECH_PER_SEQUENCE_S) if self.encoder is not None
            else (STEP_OVERHEAD_S, PER_SEQUENCE_S)
        )  # fmt: skip
        return (
            step * self.overhead_factor
            + RANK_OVERHEAD_S * (self.tp * self.pp - 1)
            + per_seq * self.overhead_factor * cost.sequences
        )
