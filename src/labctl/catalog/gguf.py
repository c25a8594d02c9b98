"""Read GGUF files: metadata and the tensor table, never the tensor data.

Supports GGUF versions 2 and 3 (little-endian) and every ggml type in
:data:`labctl.catalog.formats.GGML_TYPES`. Large metadata arrays (the
vocabulary, merges) are skipped over and only their length is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
import math
import mmap
from pathlib import Path
import re
import struct
from typing import Any

from labctl.catalog.arch import KVLayer, LayerKind, ModelArch, MoEInfo, Role, RopeBuffer, WeightSpec
from labctl.catalog.formats import GGML_TYPES, GGUF_FILE_TYPES
from labctl.errors import ModelFormatError

_MAGIC = b"GGUF"
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
#: Arrays longer than this are not kept in memory (only their length is).
_KEEP_ARRAY = 4096


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array too large to keep; only its element type and length."""

    type: int
    length: int


@dataclass(frozen=True)
class GgufTensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: str
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GgufFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: tuple[GgufTensor, ...]
    data_offset: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def file_type(self) -> str | None:
        ft = self.metadata.get("general.file_type")
        return GGUF_FILE_TYPES.get(ft, f"type {ft}") if isinstance(ft, int) else None


class _Reader:
    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def fail(self, what: str) -> ModelFormatError:
        return ModelFormatError(
            f"{self.path}: {what} (at byte {self.pos}); the GGUF file is truncated or corrupt"
        )

    def unpack(self, fmt: str, size: int) -> Any:
        if self.pos + size > len(self.buf):
            raise self.fail("unexpected end of file")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.unpack("<Q", 8)
        if self.pos + n > len(self.buf):
            raise self.fail(f"string of {n} bytes runs past the end of the file")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str) -> Any:
        if vtype in _SCALARS:
            return self.unpack(*_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.unpack("<I", 4)
            count = self.unpack("<Q", 8)
            if count > len(self.buf):
                raise self.fail(f"metadata {key!r} claims {count} array elements")
            if count > _KEEP_ARRAY:
                self.skip(etype, count, key)
                return ArrayInfo(etype, count)
            return [self.value(etype, key) for _ in range(count)]
        raise self.fail(f"metadata {key!r} has unknown value type {vtype}")

    def skip(self, etype: int, count: int, key: str) -> None:
        if etype in _SCALARS:
            size = _SCALARS[etype][1] * count
            if self.pos + size > len(self.buf):
                raise self.fail(f"metadata array {key!r} runs past the end of the file")
            self.pos += size
        elif etype == _STRING:
            for _ in range(count):
                n = self.unpack("<Q", 8)
                self.pos += n
            if self.pos > len(self.buf):
                raise self.fail(f"metadata array {key!r} runs past the end of the file")
        else:
            for _ in range(count):
                self.value(etype, key)


def read_gguf(path: Path) -> GgufFile:
    """Parse a GGUF file's header, metadata and tensor table.

    Raises:
        ModelFormatError: not a GGUF file, an unsupported version, or a corrupt table.
    """
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            if size < 24:
                raise ModelFormatError(f"{path}: {size} bytes is too short for a GGUF file")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, path)
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _parse(buf: mmap.mmap, path: Path) -> GgufFile:
    r = _Reader(buf, path)
    if bytes(buf[:4]) != _MAGIC:
        raise ModelFormatError(f"{path}: does not start with the GGUF magic; not a GGUF file")
    r.pos = 4
    version = r.unpack("<I", 4)
    if version not in (2, 3):
        raise ModelFormatError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors = r.unpack("<Q", 8)
    n_kv = r.unpack("<Q", 8)
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise ModelFormatError(
            f"{path}: header claims {n_tensors} tensors and {n_kv} metadata keys"
        )
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string()
        vtype = r.unpack("<I", 4)
        meta[key] = r.value(vtype, key)
    tensors: list[GgufTensor] = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.unpack("<I", 4)
        if n_dims > 8:
            raise r.fail(f"tensor {name!r} has {n_dims} dimensions")
        dims = tuple(r.unpack("<Q", 8) for _ in range(n_dims))
        type_id = r.unpack("<I", 4)
        offset = r.unpack("<Q", 8)
        gtype = GGML_TYPES.get(type_id)
        if gtype is None:
            raise ModelFormatError(
                f"{path}: tensor {name!r} has ggml type {type_id}, which this version of labctl "
                "does not know; upgrade labctl or re-quantize the file"
            )
        numel = 1
        for d in dims:
            numel *= d
        try:
            nbytes = gtype.nbytes(numel)
        except ValueError as exc:
            raise ModelFormatError(f"{path}: tensor {name!r}: {exc}") from exc
        tensors.append(GgufTensor(name, dims, gtype.name, offset, nbytes))
    alignment = meta.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0:
        raise ModelFormatError(
            f"{path}: general.alignment {alignment!r} must be a positive integer"
        )
    data_offset = -(-r.pos // alignment) * alignment
    for t in tensors:
        if data_offset + t.offset + t.nbytes > len(buf):
            raise ModelFormatError(
                f"{path}: tensor {t.name!r} ({t.nbytes} bytes at offset {t.offset}) runs past the "
                f"end of the {len(buf)}-byte file; the file is truncated"
            )
    return GgufFile(path, version, meta, tuple(tensors), data_offset)


_BLK = re.compile(r"^blk\.(\d+)\.")


def _role(name: str) -> Role:
    base = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
    leaf = base.split(".")[-1]
    if base == "token_embd":
        return Role.EMBED
    if base == "output":
        return Role.LM_HEAD
    if leaf in ("attn_q", "attn_qkv", "attn_q_b", "attn_kv_b"):
        return Role.ATTN_Q
    if leaf in ("attn_k", "attn_v"):
        return Role.ATTN_KV
    if leaf in ("attn_q_a", "attn_kv_a_mqa"):
        return Role.REPLICATED
    if leaf == "attn_output":
        return Role.ATTN_O
    if leaf.endswith("_exps"):
        return Role.EXPERT
    if leaf.endswith("_shexp"):
        return Role.SHARED_EXPERT
    if leaf == "ffn_gate_inp":
        return Role.ROUTER
    if leaf in ("ffn_gate", "ffn_up", "ffn_down"):
        return Role.MLP
    if leaf.startswith("ssm_") and leaf not in ("ssm_a", "ssm_d", "ssm_norm", "ssm_dt"):
        return Role.LINEAR_ATTN
    if base.startswith(("v.", "mm.", "a.")):
        return Role.VISION
    return Role.NORM


def _per_layer(meta: Mapping[str, Any], key: str, n_layers: int, default: int) -> list[int]:
    value = meta.get(key, default)
    if isinstance(value, list):
        if len(value) != n_layers:
            raise ModelFormatError(
                f"metadata {key!r} has {len(value)} entries for {n_layers} layers"
            )
        return [int(v) for v in value]
    if isinstance(value, ArrayInfo):
        raise ModelFormatError(
            f"metadata {key!r} is an array of {value.length}, expected {n_layers}"
        )
    return [int(value)] * n_layers


def arch_from_gguf(gf: GgufFile, name: str | None = None) -> ModelArch:
    """Describe a GGUF model for the planner; weights carry their exact stored bytes.

    Raises:
        ModelFormatError: a required metadata key is missing or malformed.
    """
    meta = gf.metadata
    a = gf.architecture
    where = str(gf.path)
    if not a:
        raise ModelFormatError(f"{where}: metadata 'general.architecture' is missing")

    def need(key: str) -> int:
        value = meta.get(f"{a}.{key}")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelFormatError(
                f"{where}: metadata '{a}.{key}' is {'missing' if value is None else repr(value)}; "
                "it must be a positive integer"
            )
        return value

    n_layers = need("block_count")
    hidden = need("embedding_length")
    n_heads_l = _per_layer(
        meta, f"{a}.attention.head_count", n_layers, need("attention.head_count")
    )
    n_heads = max(n_heads_l)
    n_kv_l = _per_layer(meta, f"{a}.attention.head_count_kv", n_layers, n_heads)
    key_len = int(meta.get(f"{a}.attention.key_length", hidden // max(n_heads, 1)))
    val_len = int(meta.get(f"{a}.attention.value_length", key_len))
    ctx = int(meta.get(f"{a}.context_length", 2048))
    window = meta.get(f"{a}.attention.sliding_window")
    ff = meta.get(f"{a}.feed_forward_length", 0)
    ff_len = int(max(ff) if isinstance(ff, list) else ff)
    n_experts = int(meta.get(f"{a}.expert_count", 0) or 0)
    vocab_info = meta.get("tokenizer.ggml.tokens")
    vocab = int(meta.get(f"{a}.vocab_size", 0) or 0)
    if not vocab:
        vocab = vocab_info.length if isinstance(vocab_info, ArrayInfo) else len(vocab_info or [])
    embd = next((t for t in gf.tensors if t.name == "token_embd.weight"), None)
    if not vocab and embd is not None and len(embd.shape) == 2:
        vocab = embd.shape[1]

    weights = []
    for t in gf.tensors:
        m = _BLK.match(t.name)
        weights.append(
            WeightSpec(
                t.name,
                _role(t.name),
                t.shape,
                layer=int(m.group(1)) if m else None,
                stored_dtype=t.ggml_type,
                stored_bytes=t.nbytes,
                quant_aux=True,
            )
        )

    swa_pattern = meta.get(f"{a}.attention.sliding_window_pattern")
    kv_layers: list[KVLayer] = []
    for i in range(n_layers):
        if n_kv_l[i] == 0:
            continue  # recurrent layer without attention (hybrid models)
        sliding = False
        if isinstance(window, int) and window > 0:
            if isinstance(swa_pattern, list):
                sliding = bool(swa_pattern[i])
            elif isinstance(swa_pattern, int) and swa_pattern > 0:
                sliding = (i + 1) % swa_pattern != 0
            elif a in ("gemma2",):
                sliding = i % 2 == 0
            elif a in ("gemma3", "gemma3n"):
                sliding = (i + 1) % 6 != 0
            elif a in ("gpt-oss", "gptoss"):
                sliding = i % 2 == 0
            else:
                sliding = True
        kv_layers.append(
            KVLayer(
                i,
                LayerKind.SLIDING if sliding else LayerKind.FULL,
                num_kv_heads=n_kv_l[i],
                head_size=key_len,
                head_size_v=val_len,
                window=int(window) if sliding and isinstance(window, int) else None,
            )
        )
    if not kv_layers:
        raise ModelFormatError(f"{where}: no layer has attention heads; cannot size a KV cache")
    rope_dim = int(meta.get(f"{a}.rope.dimension_count", key_len))
    moe = None
    if n_experts:
        moe = MoEInfo(
            n_experts,
            int(meta.get(f"{a}.expert_used_count", 0) or 0),
            int(meta.get(f"{a}.expert_feed_forward_length", ff_len) or ff_len),
            int(meta.get(f"{a}.expert_shared_feed_forward_length", 0) or 0),
            n_layers,
        )
    return ModelArch(
        name=name or str(meta.get("general.name") or gf.path.name),
        model_type=a,
        weights=tuple(weights),
        kv_layers=tuple(kv_layers),
        num_hidden_layers=n_layers,
        hidden_size=hidden,
        vocab_size=vocab,
        num_attention_heads=n_heads,
        num_kv_heads=max(n_kv_l),
        head_dim=key_len,
        intermediate_size=ff_len,
        max_position_embeddings=ctx,
        dtype="float16",
        tie_word_embeddings=not any(t.name == "output.weight" for t in gf.tensors),
        moe=moe,
        rope_buffers=(RopeBuffer(ctx, rope_dim),),
        source=str(gf.path),
        gguf_file_type=gf.file_type,
    )
