"""OpenVLA's memory as its own server holds it: Hugging Face transformers, not vLLM.

OpenVLA's server (``vla-scripts/deploy.py``) loads the checkpoint with
``AutoModelForVision2Seq.from_pretrained(..., torch_dtype=bfloat16,
attn_implementation="flash_attention_2")`` on one GPU and answers one ``/act`` at a time
with ``predict_action``: a ``generate`` of 7 tokens. What the process holds:

* **weights**, part by part: the two vision towers (DINOv2 ViT-L/14 with registers and
  SigLIP So400m/14, both at 224 px, every tensor timm builds, the unused last blocks and
  SigLIP's attention-pool head included), the fused projector and the Llama-2-7B backbone
  (vocabulary 32,064). ``load_in_8bit`` / ``load_in_4bit`` (bitsandbytes) convert every
  ``nn.Linear`` of the whole model — the towers' and the projector's too — except the
  LM head, which transformers keeps in bf16 as the model's output embedding; embeddings,
  the patch convolutions, position and register tokens, norms, LayerScale vectors and
  biases stay bf16. 8-bit is LLM.int8 (one byte a weight and an fp32 scale a row); 4-bit
  is bitsandbytes' default FP4 (half a byte a weight and an fp32 absmax per 64).
* **KV cache** of the request: transformers' dynamic cache, 2 × layers × width × 2 bytes
  (512 KiB) per position, for the prefill (BOS, 256 patch tokens, the prompt, token
  29871) and 6 decode steps; the 7th action token comes from the last step's logits and
  is never cached.
* **activations** of the largest forward, the prefill: transformers computes the LM head
  over every position and casts the logits to fp32 (bf16 and fp32 copies of positions ×
  vocabulary), one decoder layer's live tensors, and the towers' and projector's.
* **quantised formats' workspace**: 8-bit loads each linear to the GPU in fp16 and keeps
  an int8 copy and its transpose while it quantises; 4-bit dequantises each linear to
  bf16 for a prefill and casts it to its fp32 compute dtype (bitsandbytes' default),
  whose inputs and outputs are fp32 as well.
* **the runtime**: the CUDA context with the kernels a forward loads (PyTorch's, flash
  attention's, bitsandbytes'), and cuBLAS's workspaces.

Against published figures: ``nvidia-smi`` showed 15,296 MiB on an RTX 4090 while serving
(openvla#66); the plan's bf16 total is within 1% of it. The OpenVLA paper reports bf16
16.8 GB, int8 10.2 GB and int4 7.0 GB; the plan is 5% under the first and 14% and 18%
under the others: the paper's quantised runs hold ~2.4 GB beyond their weights where
bf16 holds ~1.7 GB. What is not modelled is PyTorch's caching allocator keeping the
blocks that load-time conversion freed (fragmentation), which nothing derives exactly.

OpenVLA-OFT (``oft``) is planned as its LIBERO server runs: two images (third-person and
wrist) and proprioception, an 8 × 7 chunk of empty action positions decoded in parallel by
one forward whose hidden states an MLP head reads, and OFT's action head and proprio
projector in bf16 (loaded beside the checkpoint, not through ``from_pretrained``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
import math

from labctl.catalog.arch import ModelArch, Role, WeightSpec
from labctl.catalog.formats import FORMATS
from labctl.errors import FitError, UsageError
from labctl.units import MiB, format_bytes

#: model_type values of OpenVLA and Prismatic checkpoints.
MODEL_TYPES = frozenset({"openvla", "prismatic"})
#: Prompt tokens besides the patches, BOS and token 29871: "In: What action should the
#: robot take to {instruction}?\nOut:" is 13 tokens around a short instruction (~9).
TEXT_TOKENS = 22
#: OpenVLA's action: one token per degree of freedom.
ACTION_DIM = 7
#: OpenVLA-OFT's LIBERO chunk: 8 steps of 7 (``NUM_ACTIONS_CHUNK`` × ``ACTION_DIM``).
OFT_CHUNK = (8, 7)
#: OFT LIBERO's inputs: third-person and wrist images, and an 8-wide proprio state.
OFT_IMAGES = 2
OFT_PROPRIO_DIM = 8
#: The CUDA context with the kernels a forward loads, and cuBLAS's workspaces: what a
#: PyTorch process holds on the GPU outside its tensors (the figure the vLLM plan uses).
RUNTIME_BYTES = 512 * MiB
#: Weight bits and the name each format goes by (what ``--quantization`` takes).
FORMAT_OF_BITS = {16: "bf16", 8: "bnb-8bit", 4: "bnb-4bit"}
#: bitsandbytes' storage layouts by bits (FP4 and NF4 store alike: 4 bits and an fp32
#: absmax per 64).
_LAYOUTS = {8: "bnb-int8", 4: "bnb-nf4"}
#: What ``--quantization`` may say for OpenVLA, by the weight bits it means.
WEIGHT_FORMATS: dict[str, int] = {
    "auto": 16,
    "none": 16,
    "bf16": 16,
    "bfloat16": 16,
    "8bit": 8,
    "int8": 8,
    "bnb-int8": 8,
    "bnb-8bit": 8,
    "load_in_8bit": 8,
    "4bit": 4,
    "int4": 4,
    "nf4": 4,
    "fp4": 4,
    "bnb-nf4": 4,
    "bnb-4bit": 4,
    "bitsandbytes": 4,
    "load_in_4bit": 4,
}
#: Human names of the three formats.
FORMAT_LABELS = {
    16: "bfloat16",
    8: "bitsandbytes 8-bit (LLM.int8)",
    4: "bitsandbytes 4-bit (FP4)",
}

_TOWERS = (
    ("dinov2", "vision_backbone.featurizer."),
    ("siglip", "vision_backbone.fused_featurizer."),
)
_WIDTHS = {768: "ViT-B", 1024: "ViT-L", 1152: "So400m", 1280: "ViT-H"}


def is_openvla(arch: ModelArch) -> bool:
    """Whether ``arch`` is an OpenVLA (Prismatic) model, which vLLM does not serve."""
    return arch.model_type in MODEL_TYPES


def weight_bits(quantization: str | None) -> int:
    """The weight bits a ``--quantization`` value means for OpenVLA's server.

    Raises:
        UsageError: a format OpenVLA's loader does not offer.
    """
    if quantization is None:
        return 16
    bits = WEIGHT_FORMATS.get(quantization.strip().lower())
    if bits is None:
        raise UsageError(
            f"--quantization {quantization!r}: OpenVLA's server loads bf16 weights, or 8-bit "
            "and 4-bit ones through bitsandbytes (load_in_8bit / load_in_4bit); use "
            "--quantization bf16, bnb-8bit or bnb-4bit"
        )
    return bits


@dataclass(frozen=True)
class Part:
    """One part of the model: its parameters and the bytes they take in a format."""

    key: str
    label: str
    params: int
    #: Parameters in ``nn.Linear`` weights that bitsandbytes converts.
    quantized_params: int
    bytes: int

    def to_json(self) -> dict[str, object]:
        return {
            "label": self.label,
            "params": self.params,
            "quantized_params": self.quantized_params,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class OpenVlaPlan:
    """What OpenVLA's server holds on its GPU, and how many requests would fit beside it."""

    model: str
    weight_bits: int
    oft: bool
    parts: tuple[Part, ...]
    images: int
    prefill_tokens: int
    #: Action tokens one request produces (OFT: the chunk's positions, in the prefill).
    action_tokens: int
    #: Forwards after the prefill, each caching one more position.
    decode_steps: int
    kv_bytes_per_token: int
    activation_bytes: int
    workspace_bytes: int
    runtime_bytes: int
    gpu_total_bytes: int | None

    @property
    def weight_format(self) -> str:
        return FORMAT_LABELS[self.weight_bits]

    @property
    def format_name(self) -> str:
        """The format as the comparison table names formats (bfloat16, bnb-8bit, bnb-4bit)."""
        return "bfloat16" if self.weight_bits == 16 else FORMAT_OF_BITS[self.weight_bits]

    @property
    def param_count(self) -> int:
        return sum(p.params for p in self.parts)

    @property
    def weights_bytes(self) -> int:
        return sum(p.bytes for p in self.parts)

    @property
    def kv_positions(self) -> int:
        return self.prefill_tokens + self.decode_steps

    @property
    def kv_bytes_per_request(self) -> int:
        return self.kv_positions * self.kv_bytes_per_token

    @property
    def per_request_bytes(self) -> int:
        """What each request in flight adds: its KV cache and its forward's activations."""
        return self.kv_bytes_per_request + self.activation_bytes

    @property
    def fixed_bytes(self) -> int:
        """What the process holds whatever runs: weights, workspace, the runtime."""
        return self.weights_bytes + self.workspace_bytes + self.runtime_bytes

    @property
    def total_bytes(self) -> int:
        """The process with one request in flight, as OpenVLA's server runs it."""
        return self.fixed_bytes + self.per_request_bytes

    @property
    def fits(self) -> bool:
        """Whether one request fits (True when the GPU's size is not known)."""
        return self.gpu_total_bytes is None or self.total_bytes <= self.gpu_total_bytes

    @property
    def robots_by_memory(self) -> int | None:
        """Requests a batching server could hold at once beside the weights (None when
        the GPU's size is not known)."""
        if self.gpu_total_bytes is None:
            return None
        return max(0, (self.gpu_total_bytes - self.fixed_bytes) // self.per_request_bytes)

    def rows(self) -> list[tuple[str, int, str]]:
        """(figure, bytes, what it is) for the table ``labctl fit`` prints."""
        out = [(p.label, p.bytes, f"{p.params:,} parameters") for p in self.parts]
        unit = "one chunk" if self.oft else f"{self.action_tokens} action tokens"
        out += [
            (
                "weights",
                self.weights_bytes,
                f"{self.param_count:,} parameters, {self.weight_format}",
            ),
            (
                "KV per request",
                self.kv_bytes_per_request,
                f"{self.kv_positions:,} positions × {format_bytes(self.kv_bytes_per_token)} ({unit})",
            ),
            (
                "activations",
                self.activation_bytes,
                f"the prefill of {self.prefill_tokens:,} positions: logits in bf16 and fp32, "
                + ("every layer's hidden states, " if self.oft else "one layer, ")
                + "the towers",
            ),
        ]
        if self.workspace_bytes:
            what = (
                "fp16 load copy, int8 and its transpose of the largest linear"
                if self.weight_bits == 8
                else "the largest linear dequantised to bf16 and fp32"
            )
            out.append(("quantisation", self.workspace_bytes, what))
        out += [
            ("CUDA context", self.runtime_bytes, "kernels loaded, cuBLAS workspaces"),
            ("total", self.total_bytes, "one request at a time, as OpenVLA's server runs"),
        ]
        return out

    def summary(self) -> str:
        """One line: the total and its terms, against the GPU when known."""
        of = f" of {format_bytes(self.gpu_total_bytes)}" if self.gpu_total_bytes else ""
        work = (
            f" + quantisation {format_bytes(self.workspace_bytes)}" if self.workspace_bytes else ""
        )
        return (
            f"{self.weight_format}: weights {format_bytes(self.weights_bytes)} + KV "
            f"{format_bytes(self.kv_bytes_per_request)} ({self.kv_positions} positions) + "
            f"activations {format_bytes(self.activation_bytes)}{work} + CUDA context "
            f"{format_bytes(self.runtime_bytes)} = {format_bytes(self.total_bytes)}{of}"
        )

    def to_json(self) -> dict[str, object]:
        """The figures under plain keys, as ``labctl fit --json`` prints them."""
        return {
            "model": self.model,
            "engine": "openvla",
            "oft": self.oft,
            "weight_bits": self.weight_bits,
            "weight_format": FORMAT_OF_BITS[self.weight_bits],
            "param_count": self.param_count,
            "parts": {p.key: p.to_json() for p in self.parts},
            "weights_bytes": self.weights_bytes,
            "images": self.images,
            "prefill_tokens": self.prefill_tokens,
            "action_tokens": self.action_tokens,
            "decode_steps": self.decode_steps,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_bytes_per_request": self.kv_bytes_per_request,
            "activation_bytes": self.activation_bytes,
            "workspace_bytes": self.workspace_bytes,
            "runtime_bytes": self.runtime_bytes,
            "per_request_bytes": self.per_request_bytes,
            "total_bytes": self.total_bytes,
            "gpu_total_bytes": self.gpu_total_bytes,
            "fits": self.fits,
            "robots_by_memory": self.robots_by_memory,
        }


def plan_openvla(
    arch: ModelArch, gpu_total_bytes: int | None, weight_bits: int = 16, oft: bool = False
) -> OpenVlaPlan:
    """What OpenVLA's server (or OpenVLA-OFT's, ``oft``) holds serving ``arch`` with
    ``weight_bits`` weights (16, or 8 / 4 through bitsandbytes), against a GPU of
    ``gpu_total_bytes`` (what CUDA can hand out; None when unknown).

    Raises:
        FitError: ``arch`` is not an OpenVLA model, is already quantised, or the bits
            are not 16, 8 or 4.
    """
    if not is_openvla(arch):
        raise FitError(
            f"{arch.name} is a {arch.model_type} model, not OpenVLA; plan it for vLLM "
            "(labctl fit --engine vllm)"
        )
    if weight_bits not in FORMAT_OF_BITS:
        raise FitError(
            f"weight_bits {weight_bits}: OpenVLA loads bf16 (16), 8-bit (8) or 4-bit (4) weights"
        )
    if arch.quant is not None:
        raise FitError(
            f"{arch.name} is stored as {arch.quant.method}; OpenVLA's server loads bf16 "
            "checkpoints and quantises them as it loads (load_in_8bit / load_in_4bit)"
        )
    parts = _parts(arch, weight_bits)
    if oft:
        parts += _oft_parts(arch.hidden_size)
    towers = [_tower_shape(arch.weights, prefix) for _, prefix in _TOWERS]
    patches = max((t.patches for t in towers if t is not None), default=0)
    images = OFT_IMAGES if oft else 1
    prefill = 1 + images * patches + TEXT_TOKENS + 1
    if oft:
        action_tokens = OFT_CHUNK[0] * OFT_CHUNK[1]
        prefill += int(OFT_PROPRIO_DIM > 0) + action_tokens + 1  # proprio, chunk, stop
        decode = 0
    else:
        action_tokens, decode = ACTION_DIM, ACTION_DIM - 1
    kv_per_token = sum(2 * layer.num_kv_heads * layer.head_size * 2 for layer in arch.kv_layers)
    act = _activations(arch, towers, images, prefill, weight_bits, oft)
    return OpenVlaPlan(
        model=arch.name,
        weight_bits=weight_bits,
        oft=oft,
        parts=parts,
        images=images,
        prefill_tokens=prefill,
        action_tokens=action_tokens,
        decode_steps=decode,
        kv_bytes_per_token=kv_per_token,
        activation_bytes=act,
        workspace_bytes=_workspace(arch, weight_bits),
        runtime_bytes=RUNTIME_BYTES,
        gpu_total_bytes=gpu_total_bytes,
    )


def _part_of(name: str) -> str:
    for key, prefix in _TOWERS:
        if name.startswith(prefix):
            return key
    return "projector" if name.startswith("projector.") else "llm"


def _quantized(spec: WeightSpec) -> bool:
    """Whether bitsandbytes converts the tensor: an ``nn.Linear`` weight (2-D) other than
    the embedding and the LM head."""
    return len(spec.shape) == 2 and spec.role not in (Role.EMBED, Role.LM_HEAD)


def _spec_bytes(spec: WeightSpec, bits: int) -> int:
    if bits == 16 or not _quantized(spec):
        return spec.numel * 2
    out, inp = spec.shape
    return math.ceil(FORMATS[_LAYOUTS[bits]].nbytes(out, inp, spec.count))


def _parts(arch: ModelArch, bits: int) -> tuple[Part, ...]:
    params: dict[str, int] = {}
    quantized: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    for spec in arch.weights:
        if spec.role is Role.MTP or spec.quant_aux:
            continue
        key = _part_of(spec.name)
        params[key] = params.get(key, 0) + spec.numel
        quantized[key] = quantized.get(key, 0) + (spec.numel if _quantized(spec) else 0)
        nbytes[key] = nbytes.get(key, 0) + _spec_bytes(spec, bits)
    labels = {key: _tower_label(_tower_shape(arch.weights, prefix), key) for key, prefix in _TOWERS}
    labels["projector"] = _projector_label(arch.weights)
    labels["llm"] = (
        f"Llama backbone ({arch.num_hidden_layers} layers of {arch.hidden_size}, "
        f"vocabulary {arch.vocab_size:,})"
    )
    order = [key for key, _ in _TOWERS] + ["projector", "llm"]
    return tuple(
        Part(key, labels[key], params[key], quantized[key], nbytes[key])
        for key in order
        if key in params
    )


def _oft_parts(hidden: int) -> tuple[Part, ...]:
    """OpenVLA-OFT's additions, in bf16: the L1-regression head (an MLP ResNet of two
    blocks over the chunk's hidden states, ``hidden × ACTION_DIM`` in) and the proprio
    projector (two linears into the LLM's width)."""
    wide = hidden * ACTION_DIM
    head = 2 * wide + wide * hidden + hidden  # LayerNorm, fc1
    head += 2 * (2 * hidden + hidden * hidden + hidden)  # two blocks: LayerNorm, linear
    head += 2 * hidden + hidden * ACTION_DIM + ACTION_DIM  # LayerNorm, fc2
    proprio = OFT_PROPRIO_DIM * hidden + hidden + hidden * hidden + hidden
    return (
        Part("action_head", "OFT action head (L1 regression MLP)", head, 0, 2 * head),
        Part("proprio_projector", "OFT proprio projector", proprio, 0, 2 * proprio),
    )


@dataclass(frozen=True)
class _Tower:
    width: int
    mlp: int
    patch: int
    patches: int
    tokens: int
    depth: int
    registers: int
    pooled: bool


def _find(weights: Iterable[WeightSpec], prefix: str, suffix: str) -> list[WeightSpec]:
    return [w for w in weights if w.name.startswith(prefix) and w.name.endswith(suffix)]


def _tower_shape(weights: tuple[WeightSpec, ...], prefix: str) -> _Tower | None:
    """A tower's geometry, read back from its tensors (catalog or checkpoint alike)."""
    embed = _find(weights, prefix, "patch_embed.proj.weight")
    if not embed or len(embed[0].shape) != 4:
        return None
    width, patch = embed[0].shape[0], embed[0].shape[2]
    fc1 = _find(weights, prefix, "mlp.fc1.weight")
    mlp = fc1[0].shape[0] if fc1 else 4 * width
    depth = sum(w.count for w in _find(weights, prefix, "attn.qkv.weight"))
    pos = _find(weights, prefix, "pos_embed")
    cls = bool(_find(weights, prefix, "cls_token"))
    regs = _find(weights, prefix, "reg_token")
    registers = regs[0].shape[1] if regs and len(regs[0].shape) == 3 else 0
    side = math.isqrt(pos[0].shape[1]) if pos and len(pos[0].shape) == 3 else 0
    patches = side * side
    pooled = bool(_find(weights, prefix, "attn_pool.latent"))
    return _Tower(width, mlp, patch, patches, patches + int(cls) + registers, depth, registers,
                  pooled)  # fmt: skip


def _tower_label(t: _Tower | None, key: str) -> str:
    if t is None:
        return key
    family = "DINOv2" if t.registers else "SigLIP" if t.pooled else "ViT"
    size = _WIDTHS.get(t.width, f"ViT-{t.width}")
    image = math.isqrt(t.patches) * t.patch
    regs = f", {t.registers} registers" if t.registers else ""
    return f"{family} {size}/{t.patch} ({image} px{regs})"


def _projector_label(weights: tuple[WeightSpec, ...]) -> str:
    mats = sorted(
        (w for w in weights if w.name.startswith("projector.") and len(w.shape) == 2),
        key=lambda w: w.name,
    )
    if not mats:
        return "projector"
    dims = [mats[0].shape[1]] + [w.shape[0] for w in mats]
    return "projector (MLP " + "→".join(str(d) for d in dims) + ")"


def _activations(
    arch: ModelArch,
    towers: list[_Tower | None],
    images: int,
    positions: int,
    bits: int,
    oft: bool,
) -> int:
    """Bytes live at the peak of the prefill, the largest forward of a request.

    The logits of every position, in bf16 from the LM head and again in fp32
    (transformers upcasts them); one decoder layer's tensors (residual, norms with their
    fp32 upcast, q/k/v and the attention output: ~10 × width; the MLP's gate, up and
    product: 3 × intermediate) in bf16, plus fp32 copies of a linear's input and output
    where 4-bit runs its fp32 compute dtype; each tower's block over its tokens (6 × width
    and 2 × MLP width) and the projector's three outputs; the pixels (two 224 px copies).
    OFT also keeps every layer's hidden states (its head reads the last).
    """
    h, inter, vocab = arch.hidden_size, arch.intermediate_size, arch.vocab_size
    logits = positions * vocab * (2 + 4)
    layer = positions * (10 * h + 3 * inter) * 2
    if bits == 4:
        layer += positions * (h + inter) * 4
    vision = 0
    for t in towers:
        if t is not None:
            vision += images * t.tokens * (6 * t.width + 2 * t.mlp) * 2
            vision += images * 3 * t.patch * t.patch * t.patches * 2
    patches = max((t.patches for t in towers if t is not None), default=0)
    vision_dim = sum(t.width for t in towers if t is not None)
    vision += images * patches * (4 * vision_dim + 2 * h) * 2  # the projector's outputs
    hidden_states = (arch.num_hidden_layers + 1) * positions * h * 2 if oft else 0
    return logits + layer + vision + hidden_states


def _workspace(arch: ModelArch, bits: int) -> int:
    """Bytes a quantised format needs beside its weights for its largest linear: 8-bit
    loads it in fp16 and keeps the int8 result and its transpose while quantising (4
    bytes a weight); 4-bit dequantises it to bf16 and casts that to fp32 for a prefill
    (6 bytes a weight). bf16 needs none."""
    if bits == 16:
        return 0
    largest = max(
        (w.numel // w.count for w in arch.weights if _quantized(w) and not w.quant_aux),
        default=0,
    )
    return largest * (4 if bits == 8 else 6)
