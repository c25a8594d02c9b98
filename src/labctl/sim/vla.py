"""How long OpenVLA takes to answer: the step model of one batched ``/act`` forward.

One OpenVLA action (``predict_action`` in Hugging Face transformers, eager PyTorch) is

1. the processor on the host: the camera frame resized to 224 px and normalised for each of
   the two vision towers, and the prompt tokenised (``PREPROCESS_S`` per image);
2. the vision towers over 224 px: DINOv2 ViT-L/14 (with 4 registers and a CLS token: 261
   tokens) and SigLIP So400m/14 (256 tokens), each to its second-to-last block, their patch
   features concatenated (2,176 wide) and projected into Llama's width by a 3-layer MLP;
3. the prefill of Llama-2-7B over ~280 positions (256 patches, the prompt, BOS and token
   29871), with logits for every position (HF computes the head over all of them): its
   logits give the first of the 7 action tokens;
4. 6 decode steps for the other 6 tokens, each reading all of Llama's weights and the
   request's KV cache (512 KiB per position).

OpenVLA-OFT answers a chunk (LIBERO: 8 steps × 7) from one forward: the prompt carries K×D
empty action positions that attend to each other (parallel decoding), and an MLP head reads
their hidden states. No decode steps; more prefill positions; the same vision towers.

Each phase costs the larger of

- its device time: FLOPs at the GPU's dense BF16 rate × ``MFU`` (scaled down for small
  GEMMs, ``MFU_HALF_ROWS``), or the bytes it reads (weights, KV) at the datasheet bandwidth
  × the memory technology's efficiency (``BW_EFFICIENCY``), plus any
  separate dequantisation pass over the weights; and
- its host time: eager PyTorch dispatches every op from Python (``HOST_OP_S`` each), and at
  batch 1 on a fast GPU the ~1,600 ops of one Llama forward take longer to launch than the
  GPU takes to run them. Phases run one after another (``generate`` syncs on every token).

Desktop cards (GeForce, RTX PRO, the DGX Spark) sit beside CPUs that run single-threaded
Python about a quarter faster than a datacenter server's (``SERVER_HOST_FACTOR``), and at
batch 1 the host is what bounds OpenVLA: an H100 is barely faster per action than an RTX
4090. Where bandwidth is scarce it is the other way round: on a GB10 (273 GB/s of LPDDR5X)
every decode step waits on 13 GB of weights, and 8- and 4-bit weights do answer sooner.

Weight formats as ``load_in_8bit`` / ``load_in_4bit`` (bitsandbytes) load them, every
``nn.Linear`` but the LM head quantised:

- 8-bit is LLM.int8(): each linear quantises its input by rows, finds outlier columns, runs
  an int8 GEMM and an fp16 one for the outliers, and dequantises the result: ~12 ops where
  bf16 takes one (``OPS_PER_LINEAR``). Half the weight bytes, far more launches: slower.
- 4-bit is NF4: one input row (decode at batch 1) goes through a fused 4-bit GEMV (half a
  byte per weight plus its absmax scales), but through more Python per call; more rows
  (prefill, the vision towers, batched decode) dequantise the whole weight to bf16 first
  (read 4-bit, write bf16) and then run the bf16 GEMM: more traffic than bf16 itself.

Calibration (``benchmarks/twin_vla.py`` prints these beside the model):

- RTX 4090, bf16, batch 1: the paper claims ~6 Hz; a user measured 4.4 Hz after warm-up
  (openvla#66). The model gives 5.2 Hz (193 ms: 122 ms of it six host-bound decode steps).
- OpenVLA-OFT, one image, LIBERO chunk 8×7: 0.07 s per chunk (the paper, single-arm;
  dreamzero#32 quotes OFT on an A100, so the anchor is taken there). The model gives
  0.062 s on an A100 80GB (0.89×).
- OpenVLA-OFT on an H100 in LIBERO's evaluation (two images and proprioception): ~90 ms per
  chunk, of which the vision side (preprocessing and the towers) ≈ 40 ms (VLA-Adapter#57).
  The model gives 77 ms (0.85×) and 46 ms (1.16×). OFT's own deploy path preprocesses each
  image through TensorFlow on the host (JPEG round trip, Lanczos resize, centre crop:
  ``OFT_PREPROCESS_S``), which is most of that 40 ms.
- Quantised: int8 slower than bf16, 4-bit about 1.6× slower (the OpenVLA paper: int8
  slower; pytorch/ao#3236: a 4-bit path ~2× slower than bf16 on an A6000; ~3 Hz for int4).

What it leaves out: CUDA graphs or ``torch.compile`` (they remove most host time), flash
attention's exact kernel count, the HTTP and JSON of the server (the twin's are real), and
the first request's warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

from labctl.catalog.gpus import GpuSpec

__all__ = ["ACTION_DIM", "OFT_CHUNK", "Phase", "Setup", "VlaForward", "action_seconds",
           "forward", "memory_bytes", "robots_at", "weight_bytes"]  # fmt: skip

# -- the model (openvla/openvla-7b: prismatic dinosiglip-vit-so-224px + Llama-2-7B) --------

#: Llama-2-7B: layers, width, feed-forward width, vocabulary (32,000 padded to 32,064).
LLM_LAYERS, LLM_HIDDEN, LLM_FFN, VOCAB = 32, 4096, 11008, 32064
#: Weights of one Llama layer's seven linears (q, k, v, o; gate, up, down).
LLM_LAYER_LINEAR = 4 * LLM_HIDDEN * LLM_HIDDEN + 3 * LLM_HIDDEN * LLM_FFN
#: Bytes of K and V per position (bf16, whatever the weights' format).
KV_BYTES_PER_TOKEN = 2 * LLM_LAYERS * LLM_HIDDEN * 2
#: Patch tokens per image: (224 / 14)².
PATCHES = 256
#: Prompt positions beside the patches: BOS, "In: What action should the robot take to
#: {instruction}?\nOut:" (~20 tokens for a short instruction) and the empty token 29871.
PROMPT_TOKENS = 24
#: OpenVLA's action: one token per degree of freedom.
ACTION_DIM = 7
#: OpenVLA-OFT's chunk for LIBERO: 8 steps of 7 (``NUM_ACTIONS_CHUNK``, ``ACTION_DIM``).
OFT_CHUNK = (8, 7)


@dataclass(frozen=True)
class Vit:
    """A vision tower as OpenVLA runs it: to its second-to-last block."""

    width: int
    mlp: int
    blocks: int
    #: Tokens per image: patches plus CLS and registers.
    tokens: int
    #: Eager ops of one block besides its 4 linears (norms, attention, GELU, adds, scales).
    ops_per_block: int
    #: Parameters outside the blocks (patch embedding, positions, norms, pooling head).
    stem_params: int

    @property
    def block_linear(self) -> int:
        return 4 * self.width * self.width + 2 * self.width * self.mlp

    @property
    def run_blocks(self) -> int:
        return self.blocks - 1

    def flops(self) -> float:
        """One image: the blocks' GEMMs and attention (QKᵀ and AV over its tokens)."""
        per_block = 2 * self.tokens * self.block_linear + 4 * self.tokens**2 * self.width
        return float(self.run_blocks * per_block)


#: DINOv2 ViT-L/14 with registers (24 blocks; 256 patches + CLS + 4 registers) and
#: SigLIP So400m/14 (27 blocks; 256 patches, its attention-pool head loaded but unused).
DINO = Vit(1024, 4096, 24, 261, 10, 1024 * 3 * 14 * 14 + 261 * 1024 + 5 * 1024)
SIGLIP = Vit(1152, 4304, 27, 256, 8, 1152 * 3 * 14 * 14 + 256 * 1152 + 15_000_000)
#: The fused projector 2176 → 8704 → 4096 → 4096 (GELU between).
PROJECTOR = (2176 * 8704, 8704 * 4096, 4096 * 4096)
#: OFT's L1-regression head (an MLP ResNet over the chunk's hidden states) and the
#: proprioception projector.
OFT_HEAD_PARAMS = LLM_HIDDEN * ACTION_DIM * LLM_HIDDEN + 2 * LLM_HIDDEN * LLM_HIDDEN
OFT_PROPRIO_PARAMS = 8 * LLM_HIDDEN + LLM_HIDDEN * LLM_HIDDEN

# -- how eager PyTorch runs it ------------------------------------------------------------

#: Ops of a Llama layer in HF transformers besides its linears: two RMSNorms (7 ops each:
#: upcast, square, mean, add, rsqrt, scale, downcast), rotary tables and their application to
#: q and k, the KV cache's concatenation, layout copies, flash attention, two residual adds,
#: SiLU and the gate product.
LLM_OPS_PER_LAYER = 41
#: Ops of a forward outside the layers: embedding, final norm, head, and ``generate``'s
#: per-token work (logits processors, argmax, appending the token, the stopping check).
LLM_OPS_FIXED = 30
#: Ops outside the towers' blocks: patch embeddings, positions, concatenation, GELUs.
VISION_OPS_FIXED = 20
#: Ops (and Python around them) one ``nn.Linear`` call costs, by weight bits; 4-bit with
#: several input rows dequantises first (one more).
OPS_PER_LINEAR = {16: 1, 8: 12, 4: 6}
NF4_DEQUANT_OPS = 1
#: Ops OFT adds: action placeholders and masks, proprio projection, the MLP head, unnormalising.
OFT_OPS = 60
#: Host seconds per eager op on a desktop CPU (a Python module call, dispatch and launch).
HOST_OP_S = 13e-6
#: How much slower a datacenter server's CPU runs that single-threaded Python.
SERVER_HOST_FACTOR = 1.25
#: Host seconds per image for OpenVLA's processor (two resizes to 224, normalise, tokenise),
#: and for OFT's deploy path (TensorFlow JPEG round trip, Lanczos resize, centre crop, then
#: the processor).
PREPROCESS_S = 3e-3
OFT_PREPROCESS_S = 10e-3
#: Host seconds per forward for ``generate``'s setup (config, processors, cache).
GENERATE_SETUP_S = 3e-3
#: Share of dense peak the forward's GEMMs, attention and element-wise work reach together at
#: large sizes, and the GEMM rows at which that halves (small GEMMs do not fill the GPU).
MFU = 0.45
MFU_HALF_ROWS = 32
#: Achievable share of datasheet bandwidth by memory technology for the policy's forward
#: (the VLA twin's own, calibrated on its points in ``benchmarks/twin_vla.py``).
BW_EFFICIENCY = {"HBM": 0.88, "GDDR": 0.90, "LPDDR": 0.62}
#: Bytes per weight by bits: bf16; int8 with a scale per row; NF4 with an fp32 absmax per
#: 64 weights (HF's default, no double quantisation).
BYTES_PER_WEIGHT = {16: 2.0, 8: 1.0, 4: 0.5 + 4 / 64}
#: What the process holds besides weights: the CUDA context and PyTorch's allocator cache
#: (openvla#66's 15,296 MiB on an RTX 4090 less 14.04 GiB of weights).
RUNTIME_BYTES = 900 * 2**20
#: Per request in flight: activations of the prefill (fp32 logits over every position among
#: them) besides its KV cache.
ACTIVATION_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Setup:
    """What one request carries: images, proprioception, and what it answers."""

    images: int = 1
    proprio: bool = False
    #: OFT's chunk (steps × dims), or None for OpenVLA's 7 tokens one at a time.
    chunk: tuple[int, int] | None = None

    @property
    def oft(self) -> bool:
        return self.chunk is not None

    @property
    def prefill_tokens(self) -> int:
        """Positions of the one forward: patches, prompt, proprio, OFT's action slots (and
        the stop token after them)."""
        n = self.images * PATCHES + PROMPT_TOKENS + int(self.proprio)
        if self.chunk is not None:
            n += self.chunk[0] * self.chunk[1] + 1
        return n

    @property
    def decode_steps(self) -> int:
        return 0 if self.oft else ACTION_DIM - 1

    @property
    def actions(self) -> int:
        """Control steps one answer covers."""
        return self.chunk[0] if self.chunk else 1


OPENVLA = Setup()
#: The OFT paper's efficiency setup: one third-person image, LIBERO's chunk.
OFT = Setup(chunk=OFT_CHUNK)
#: OFT in LIBERO's evaluation: third-person and wrist images, proprioception.
OFT_LIBERO = Setup(images=2, proprio=True, chunk=OFT_CHUNK)


@dataclass(frozen=True)
class Phase:
    """One part of a forward: its time, and what bounds it ("host", "compute", "memory")."""

    name: str
    seconds: float
    bound: str


@dataclass(frozen=True)
class VlaForward:
    """One forward over a batch: its phases in order."""

    gpu: str
    batch: int
    weight_bits: int
    setup: Setup
    phases: tuple[Phase, ...]

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    def phase(self, name: str) -> float:
        return sum(p.seconds for p in self.phases if p.name == name)


def _check(batch: int, weight_bits: int) -> None:
    if weight_bits not in BYTES_PER_WEIGHT:
        raise ValueError(f"weight_bits {weight_bits}: OpenVLA loads bf16 (16), 8-bit (8) or "
                         "4-bit (4) weights")  # fmt: skip
    if batch < 1:
        raise ValueError(f"batch {batch} must be at least 1")


def _host_factor(gpu: GpuSpec) -> float:
    desktop = gpu.id.startswith("rtx-") or gpu.unified_memory  # GeForce, RTX PRO, DGX Spark
    return 1.0 if desktop else SERVER_HOST_FACTOR


def _bandwidth(gpu: GpuSpec) -> float:
    mem = gpu.memory_type.upper()
    eff = next((v for k, v in BW_EFFICIENCY.items() if k in mem), 0.85)
    return gpu.bandwidth_gbs * 1e9 * eff


class _Pass:
    """Times phases on one GPU for one weight format."""

    def __init__(self, gpu: GpuSpec, bits: int) -> None:
        self.gpu, self.bits = gpu, bits
        self.op_s = HOST_OP_S * _host_factor(gpu)
        self.bw = _bandwidth(gpu)

    def linear_ops(self, rows: int) -> int:
        extra = NF4_DEQUANT_OPS if self.bits == 4 and rows > 1 else 0
        return OPS_PER_LINEAR[self.bits] + extra

    def weights(self, params: float, rows: int) -> tuple[float, float]:
        """(bytes the GEMMs read, bytes a separate dequantisation pass moves)."""
        if self.bits == 4 and rows > 1:  # dequantise to bf16, then a bf16 GEMM reads it
            return params * 2.0, params * (BYTES_PER_WEIGHT[4] + 2.0)
        return params * BYTES_PER_WEIGHT[self.bits], 0.0

    def phase(
        self, name: str, *, ops: int, flops: float, rows: int, params: float, plain: float
    ) -> Phase:
        """``params`` quantisable weights and ``plain`` other bytes read, over ``rows`` rows."""
        read, dequant = self.weights(params, rows)
        mfu = MFU * rows / (rows + MFU_HALF_ROWS)
        compute = flops / (self.gpu.bf16_tflops * 1e12 * mfu)
        memory = (read + plain) / self.bw
        device = max(compute, memory) + dequant / self.bw
        host = ops * self.op_s
        if host >= device:
            return Phase(name, host, "host")
        return Phase(name, device, "compute" if compute >= memory else "memory")


def forward(
    gpu: GpuSpec, batch: int = 1, weight_bits: int = 16, setup: Setup = OPENVLA
) -> VlaForward:
    """The phases of one forward serving ``batch`` requests of ``setup`` together.

    Raises:
        ValueError: a batch below 1 or weight bits other than 16, 8 or 4.
    """
    _check(batch, weight_bits)
    p = _Pass(gpu, weight_bits)
    phases: list[Phase] = []
    per_image = OFT_PREPROCESS_S if setup.oft else PREPROCESS_S
    host = p.op_s / HOST_OP_S
    phases.append(Phase("preprocess", batch * setup.images * per_image * host, "host"))
    phases.append(Phase("setup", GENERATE_SETUP_S * host, "host"))

    # Vision: every image of the batch through both towers, then the projector.
    images = batch * setup.images
    towers = (DINO, SIGLIP)
    rows = images * PATCHES
    v_flops = images * (sum(t.flops() for t in towers) + 2 * PATCHES * sum(PROJECTOR))
    v_params = sum(t.run_blocks * t.block_linear for t in towers) + sum(PROJECTOR)
    v_linears = sum(4 * t.run_blocks for t in towers) + len(PROJECTOR)
    v_ops = (sum(t.ops_per_block * t.run_blocks for t in towers) + VISION_OPS_FIXED
             + v_linears * p.linear_ops(rows)) * setup.images  # fmt: skip
    plain = 2.0 * sum(t.stem_params for t in towers)
    phases.append(p.phase("vision", ops=v_ops, flops=v_flops, rows=rows, params=v_params,
                          plain=plain))  # fmt: skip

    head = VOCAB * LLM_HIDDEN * 2.0  # the LM head stays bf16

    def llm(name: str, tokens: int, context: int, logits_rows: int, extra_ops: int) -> Phase:
        rows = batch * tokens
        flops = batch * (2.0 * tokens * LLM_LAYERS * LLM_LAYER_LINEAR
                         + 4.0 * tokens * context * LLM_HIDDEN * LLM_LAYERS
                         + 2.0 * logits_rows * VOCAB * LLM_HIDDEN)  # fmt: skip
        ops = LLM_LAYERS * (LLM_OPS_PER_LAYER + 7 * p.linear_ops(rows)) + LLM_OPS_FIXED
        kv = batch * context * KV_BYTES_PER_TOKEN
        return p.phase(name, ops=ops + extra_ops, flops=flops, rows=rows,
                       params=LLM_LAYERS * LLM_LAYER_LINEAR, plain=head + kv)  # fmt: skip

    n = setup.prefill_tokens
    phases.append(llm("prefill", n, n, n, OFT_OPS if setup.oft else 0))
    for step in range(setup.decode_steps):
        phases.append(llm("decode", 1, n + step + 1, 1, 0))
    if setup.chunk is not None:
        k = setup.chunk[0]
        params = OFT_HEAD_PARAMS + (OFT_PROPRIO_PARAMS if setup.proprio else 0)
        phases.append(p.phase("action head", ops=16, flops=2.0 * batch * k * params,
                              rows=batch * k, params=0, plain=params * 2.0))  # fmt: skip
    return VlaForward(gpu.id, batch, weight_bits, setup, tuple(phases))


def action_seconds(gpu: GpuSpec, batch: int = 1, weight_bits: int = 16, oft: bool = False) -> float:
    """Seconds for one forward serving ``batch`` requests together: 7 action tokens each
    (OpenVLA), or one chunk each by parallel decoding (``oft``: OpenVLA-OFT, one image,
    LIBERO's 8×7 chunk).

    Raises:
        ValueError: a batch below 1 or weight bits other than 16, 8 or 4.
    """
    return forward(gpu, batch, weight_bits, OFT if oft else OPENVLA).seconds


def weight_bytes(weight_bits: int = 16, oft: bool = False) -> int:
    """Bytes of the weights as loaded: linears at ``weight_bits``, the rest bf16."""
    _check(1, weight_bits)
    linears = (LLM_LAYERS * LLM_LAYER_LINEAR + sum(PROJECTOR)
               + sum(t.blocks * t.block_linear for t in (DINO, SIGLIP)))  # fmt: skip
    other = 2 * VOCAB * LLM_HIDDEN + sum(t.stem_params for t in (DINO, SIGLIP))
    other += LLM_LAYERS * 2 * LLM_HIDDEN + sum(t.blocks * 4 * t.width for t in (DINO, SIGLIP))
    if oft:
        linears += OFT_HEAD_PARAMS + OFT_PROPRIO_PARAMS
    return round(linears * BYTES_PER_WEIGHT[weight_bits] + other * 2.0)


def memory_bytes(batch: int = 1, weight_bits: int = 16, oft: bool = False) -> int:
    """What the serving process holds with ``batch`` requests in flight: weights, the CUDA
    context and allocator cache, and each request's KV cache and activations."""
    setup = OFT if oft else OPENVLA
    per = (setup.prefill_tokens + setup.decode_steps) * KV_BYTES_PER_TOKEN + ACTIVATION_BYTES
    return weight_bytes(weight_bits, oft) + RUNTIME_BYTES + batch * per


def robots_at(gpu: GpuSpec, control_hz: float, weight_bits: int = 16, oft: bool = False) -> int:
    """The most robots one server keeps at ``control_hz`` in a closed loop, their requests
    batched: the largest N whose forward takes at most 1/``control_hz`` and whose requests
    fit the GPU's memory beside the weights; 0 when even one cannot.

    With OFT every control step asks for a fresh chunk here (closed loop); a robot that
    executes each chunk's 8 steps open-loop asks 8× less often: pass ``control_hz / 8``.

    Raises:
        ValueError: ``control_hz`` not above 0, or weight bits other than 16, 8 or 4.
    """
    if not control_hz > 0 or math.isinf(control_hz):
        raise ValueError(f"control_hz {control_hz} must be a rate above 0 Hz, e.g. 5")
    _check(1, weight_bits)
    deadline = 1.0 / control_hz
    room = gpu.cuda_total_bytes - memory_bytes(0, weight_bits, oft)
    per = memory_bytes(1, weight_bits, oft) - memory_bytes(0, weight_bits, oft)
    most = room // per
    if most < 1 or action_seconds(gpu, 1, weight_bits, oft) > deadline:
        return 0
    lo, hi = 1, int(most)  # action_seconds grows with the batch: bisect
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if action_seconds(gpu, mid, weight_bits, oft) <= deadline:
            lo = mid
        else:
            hi = mid - 1
    return lo
