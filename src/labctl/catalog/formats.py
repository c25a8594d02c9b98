"""Numeric formats: element sizes of tensor dtypes, ggml block types, and the
storage layout of the weight quantization formats the planner understands.

These are facts about files and kernels, shared by the readers (which must
size what they read) and the planner (which must size what an engine loads).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Bytes per element of the dtypes that appear in configs, flags and safetensors.
DTYPE_BYTES: dict[str, float] = {
    "float32": 4,
    "float": 4,
    "fp32": 4,
    "f32": 4,
    "float16": 2,
    "half": 2,
    "fp16": 2,
    "f16": 2,
    "bfloat16": 2,
    "bf16": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "fp8_inc": 1,
    "fp8_ds_mla": 1,
    "int8": 1,
    "uint8": 1,
    "int4": 0.5,
}

#: safetensors dtype tags and their element sizes in bytes.
SAFETENSORS_DTYPES: dict[str, float] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "F4": 0.5,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}

#: safetensors tags of floating-point tensors an engine may recast to the model dtype.
SAFETENSORS_FLOATS = frozenset({"F64", "F32", "F16", "BF16"})


@dataclass(frozen=True)
class GgmlType:
    """A ggml tensor type: ``type_size`` bytes hold ``block_size`` elements."""

    id: int
    name: str
    block_size: int
    type_size: int

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def nbytes(self, numel: int) -> int:
        blocks, rem = divmod(numel, self.block_size)
        if rem:
            raise ValueError(
                f"{numel} elements is not a whole number of {self.name} blocks of {self.block_size}"
            )
        return blocks * self.type_size


GGML_TYPES: dict[int, GgmlType] = {
    t.id: t
    for t in (
        GgmlType(0, "F32", 1, 4),
        GgmlType(1, "F16", 1, 2),
        GgmlType(2, "Q4_0", 32, 18),
        GgmlType(3, "Q4_1", 32, 20),
        GgmlType(6, "Q5_0", 32, 22),
        GgmlType(7, "Q5_1", 32, 24),
        GgmlType(8, "Q8_0", 32, 34),
        GgmlType(9, "Q8_1", 32, 40),
        GgmlType(10, "Q2_K", 256, 84),
        GgmlType(11, "Q3_K", 256, 110),
        GgmlType(12, "Q4_K", 256, 144),
        GgmlType(13, "Q5_K", 256, 176),
        GgmlType(14, "Q6_K", 256, 210),
        GgmlType(15, "Q8_K", 256, 292),
        GgmlType(16, "IQ2_XXS", 256, 66),
        GgmlType(17, "IQ2_XS", 256, 74),
        GgmlType(18, "IQ3_XXS", 256, 98),
        GgmlType(19, "IQ1_S", 256, 50),
        GgmlType(20, "IQ4_NL", 32, 18),
        GgmlType(21, "IQ3_S", 256, 110),
        GgmlType(22, "IQ2_S", 256, 82),
        GgmlType(23, "IQ4_XS", 256, 136),
        GgmlType(24, "I8", 1, 1),
        GgmlType(25, "I16", 1, 2),
        GgmlType(26, "I32", 1, 4),
        GgmlType(27, "I64", 1, 8),
        GgmlType(28, "F64", 1, 8),
        GgmlType(29, "IQ1_M", 256, 56),
        GgmlType(30, "BF16", 1, 2),
        GgmlType(34, "TQ1_0", 256, 54),
        GgmlType(35, "TQ2_0", 256, 66),
        GgmlType(39, "MXFP4", 32, 17),
    )
}

#: ``general.file_type`` values of GGUF files (llama.cpp's model file types).
GGUF_FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}

#: Average bits per weight of llama.cpp's mixed quantization presets, used when a
#: catalog model is planned for a GGUF preset without a file at hand. Figures are
#: the storage of the preset's main type plus its usual higher-precision tensors.
GGUF_PRESET_BPW: dict[str, float] = {
    "F32": 32.0,
    "F16": 16.0,
    "BF16": 16.0,
    "Q8_0": 8.5,
    "Q6_K": 6.5625,
    "Q5_K_M": 5.69,
    "Q5_K_S": 5.54,
    "Q5_0": 5.5,
    "Q4_K_M": 4.89,
    "Q4_K_S": 4.58,
    "Q4_0": 4.5,
    "IQ4_XS": 4.25,
    "IQ4_NL": 4.5,
    "MXFP4_MOE": 4.25,
    "Q3_K_L": 4.27,
    "Q3_K_M": 3.91,
    "Q3_K_S": 3.5,
    "IQ3_M": 3.66,
    "IQ3_XXS": 3.06,
    "Q2_K": 3.35,
    "IQ2_M": 2.7,
    "IQ2_XXS": 2.06,
    "IQ1_M": 1.75,
}


@dataclass(frozen=True)
class WeightFormat:
    """How a quantization format stores one linear weight of shape (out, in).

    ``bits`` is the packed element width. Scales: ``group_size`` elements along
    the input dimension share one scale of ``scale_bytes`` (per-channel when
    ``group_size`` is 0, one per tensor when ``per_tensor``, or one per
    ``block`` tile); ``zero_bits`` adds a packed zero-point per group when the
    format is asymmetric.
    """

    name: str
    bits: float
    scale_bytes: float = 0
    group_size: int = 0
    per_tensor: bool = False
    block: tuple[int, int] | None = None
    zero_bits: int = 0
    description: str = ""

    def nbytes(self, out_features: int, in_features: int, count: int = 1) -> float:
        """Bytes of ``count`` weights of shape (out, in) in this format."""
        numel = out_features * in_features
        total = numel * self.bits / 8
        if self.per_tensor:
            total += self.scale_bytes
        elif self.block is not None:
            bo, bi = self.block
            total += -(-out_features // bo) * -(-in_features // bi) * self.scale_bytes
        elif self.group_size:
            groups = out_features * -(-in_features // self.group_size)
            total += groups * self.scale_bytes
            total += groups * self.zero_bits / 8
        elif self.scale_bytes:
            total += out_features * self.scale_bytes
        return total * count


def _int4(name: str, group: int, zero_bits: int, description: str) -> WeightFormat:
    return WeightFormat(
        name, bits=4, scale_bytes=2, group_size=group, zero_bits=zero_bits, description=description
    )


#: The weight formats of ``--quantization`` and of checkpoints' quantization_config.
FORMATS: dict[str, WeightFormat] = {
    f.name: f
    for f in (
        WeightFormat("bf16", bits=16, description="bfloat16, unquantized"),
        WeightFormat("fp16", bits=16, description="float16, unquantized"),
        WeightFormat("fp32", bits=32, description="float32, unquantized"),
        WeightFormat(
            "fp8",
            bits=8,
            scale_bytes=4,
            per_tensor=True,
            description="FP8 E4M3 with one scale per tensor (vLLM --quantization fp8)",
        ),
        WeightFormat(
            "fp8-channel",
            bits=8,
            scale_bytes=4,
            description="FP8 E4M3 with a scale per output channel (compressed-tensors FP8-dynamic)",
        ),
        WeightFormat(
            "fp8-block",
            bits=8,
            scale_bytes=4,
            block=(128, 128),
            description="FP8 E4M3 with a scale per 128x128 block (DeepSeek/Qwen FP8 checkpoints)",
        ),
        WeightFormat(
            "int8",
            bits=8,
            scale_bytes=4,
            description="INT8 W8A8 with a scale per output channel (compressed-tensors, SmoothQuant)",
        ),
        _int4("gptq", 128, 0, "INT4 W4A16, group 128, symmetric (GPTQ, compressed-tensors)"),
        _int4("awq", 128, 4, "INT4 W4A16, group 128, with zero points (AWQ)"),
        _int4("autoround", 128, 0, "INT4 W4A16, group 128, symmetric (Intel AutoRound)"),
        WeightFormat(
            "mxfp4",
            bits=4,
            scale_bytes=1,
            group_size=32,
            description="MXFP4: FP4 E2M1 with an E8M0 scale per 32 (OCP microscaling)",
        ),
        WeightFormat(
            "nvfp4",
            bits=4,
            scale_bytes=1,
            group_size=16,
            description="NVFP4: FP4 E2M1 with an FP8 scale per 16 and a global FP32 scale",
        ),
        WeightFormat(
            "bnb-nf4",
            bits=4,
            scale_bytes=4,
            group_size=64,
            description="bitsandbytes NF4, blocks of 64; vLLM expands the absmax to fp32 at load",
        ),
        WeightFormat(
            "bnb-int8",
            bits=8,
            scale_bytes=4,
            description="bitsandbytes LLM.int8 with a scale per output channel",
        ),
    )
}

#: Names users and configs give formats, mapped to :data:`FORMATS` keys.
FORMAT_ALIASES: dict[str, str] = {
    "none": "bf16",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "fp8_e4m3": "fp8",
    "fp8-dynamic": "fp8-channel",
    "fp8_dynamic": "fp8-channel",
    "fbgemm_fp8": "fp8-channel",
    "modelopt": "fp8",
    "w8a8": "int8",
    "int8": "int8",
    "w8a8-int8": "int8",
    "smoothquant": "int8",
    "w4a16": "gptq",
    "gptq_marlin": "gptq",
    "gptq": "gptq",
    "compressed-tensors-w4a16": "gptq",
    "awq_marlin": "awq",
    "awq": "awq",
    "auto-round": "autoround",
    "auto_round": "autoround",
    "autoround": "autoround",
    "int4": "gptq",
    "mxfp4": "mxfp4",
    "nvfp4": "nvfp4",
    "modelopt_fp4": "nvfp4",
    "fp4": "nvfp4",
    "bitsandbytes": "bnb-nf4",
    "bnb": "bnb-nf4",
    "nf4": "bnb-nf4",
    "bnb-4bit": "bnb-nf4",
    "bnb-8bit": "bnb-int8",
}


def format_named(name: str) -> WeightFormat | None:
    """Look a format up by its name or a common alias (case-insensitive)."""
    key = name.strip().lower()
    key = FORMAT_ALIASES.get(key, key)
    return FORMATS.get(key)
