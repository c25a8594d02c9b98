"""Read GGUF files: metadata and the tensor table, never the tensor data.

Supports GGUF versions 2 and 3 (little-endian) and every ggml type in
:data:`labctl.catalog.formats.GGML_TYPES`. Large metadata arrays (the
vocabulary, merges) are skipped over and only their length is kept.

The file is untrusted: every count it declares is checked against what the rest
of the file can hold, and against bounds far above published files, before it is
iterated; arrays nest at most two levels; kept text is bounded. So a corrupt or
hostile file is refused in milliseconds, whatever it claims.
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
from labctl.catalog.limits import MAX_DIM, MAX_NAME, Bound, bound_for, check_arch, show, whole
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
#: Metadata keys: about 60 in published files.
_MAX_KV = 16_384
#: Tensors: about 1,100 in the largest published files (experts are stacked in 3-D tensors).
_MAX_TENSORS = 65_536
#: Arrays of arrays: published files use plain arrays (depth 1).
_MAX_ARRAY_DEPTH = 2
#: Elements of one array (the largest vocabularies have 262,144 tokens), and of all
#: arrays together: each is read in turn to find where the next value starts.
_MAX_ARRAY = 2**21
_MAX_ELEMENTS = 2**22
#: One string (chat templates, the longest, are tens of KiB), and all text kept.
_MAX_STRING = 4 * 2**20
_MAX_TEXT = 64 * 2**20
#: The smallest encoding of an element of each value type, in bytes.
_MIN_SIZE = {**{t: size for t, (_, size) in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}
_ALIGNMENT = Bound(1 << 20, "32 (every published file)")
_U64 = struct.Struct("<Q")


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
        #: Array elements read and text bytes kept so far (both bounded).
        self.elements = 0
        self.text = 0

    def fail(self, what: str) -> ModelFormatError:
        return ModelFormatError(
            f"{self.path}: {what} (at byte {self.pos}); the GGUF file is truncated or corrupt"
        )

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def unpack(self, fmt: str, size: int) -> Any:
        if self.pos + size > len(self.buf):
            raise self.fail("unexpected end of file")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str, limit: int = _MAX_STRING) -> str:
        n = self.unpack("<Q", 8)
        if n > self.left:
            raise self.fail(f"{what}: a string of {n:,} bytes runs past the end of the file")
        if n > limit:
            raise self.fail(f"{what}: a string of {n:,} bytes, beyond the limit of {limit:,}")
        self.text += n
        if self.text > _MAX_TEXT:
            raise self.fail(f"{what}: more than {_MAX_TEXT // 2**20} MiB of metadata text")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.unpack(*_SCALARS[vtype])
        if vtype == _STRING:
            return self.string(f"metadata {show(key)}")
        if vtype == _ARRAY:
            if depth >= _MAX_ARRAY_DEPTH:
                raise self.fail(
                    f"metadata {show(key)} nests arrays more than {_MAX_ARRAY_DEPTH} levels deep "
                    "(published files use plain arrays)"
                )
            etype = self.unpack("<I", 4)
            count = self.unpack("<Q", 8)
            self.check_count(etype, count, key)
            if count > _KEEP_ARRAY:
                self.skip(etype, count, key, depth + 1)
                return ArrayInfo(etype, count)
            return [self.value(etype, key, depth + 1) for _ in range(count)]
        raise self.fail(f"metadata {show(key)} has unknown value type {vtype}")

    def check_count(self, etype: int, count: int, key: str) -> None:
        """Refuse an array the rest of the file cannot hold, or too long to walk."""
        if etype not in _MIN_SIZE:
            raise self.fail(f"metadata {show(key)} is an array of unknown type {etype}")
        if count * _MIN_SIZE[etype] > self.left:
            raise self.fail(
                f"metadata {show(key)} claims {count:,} array elements, more than the "
                f"{self.left:,} bytes left in the file can hold"
            )
        if count > _MAX_ARRAY:
            raise self.fail(
                f"metadata {show(key)} claims {count:,} array elements, beyond the limit of "
                f"{_MAX_ARRAY:,} (the largest published vocabulary has 262,144 tokens)"
            )
        self.elements += count
        if self.elements > _MAX_ELEMENTS:
            raise self.fail(
                f"metadata arrays hold more than {_MAX_ELEMENTS:,} elements together "
                f"(at {show(key)}); published files hold under a million"
            )

    def skip(self, etype: int, count: int, key: str, depth: int) -> None:
        if etype in _SCALARS:
            self.pos += _SCALARS[etype][1] * count  # fits: check_count saw the room
        elif etype == _STRING:
            buf, end, pos, unpack = self.buf, len(self.buf), self.pos, _U64.unpack_from
            for _ in range(count):
                if pos + 8 > end:
                    break
                pos += 8 + unpack(buf, pos)[0]
            else:
                if pos <= end:
                    self.pos = pos
                    return
            self.pos = min(pos, end)
            raise self.fail(f"metadata array {show(key)} runs past the end of the file")
        else:
            for _ in range(count):
                self.value(etype, key, depth)


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


def read_gguf_head(head: bytes, size: int, path: Path) -> GgufFile:
    """Parse a GGUF header from its first bytes (``head``) and the whole file's ``size``: a
    file read over HTTP with a range request. ``head`` must hold the metadata and the
    tensor table; ``path`` names the file in messages.

    Raises:
        ModelFormatError: not a GGUF file, ``head`` ends inside the table, or it is corrupt.
    """
    if size < 24 or len(head) < 24:
        raise ModelFormatError(f"{path}: {size} bytes is too short for a GGUF file")
    return _parse(head, path, size)


def _parse(buf: mmap.mmap | bytes, path: Path, size: int | None = None) -> GgufFile:
    """Parse ``buf``, the file or (with ``size``, the whole file's length) its head."""
    size = len(buf) if size is None else size
    r = _Reader(buf, path)
    if bytes(buf[:4]) != _MAGIC:
        raise ModelFormatError(f"{path}: does not start with the GGUF magic; not a GGUF file")
    r.pos = 4
    version = r.unpack("<I", 4)
    if version not in (2, 3):
        raise ModelFormatError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors = r.unpack("<Q", 8)
    n_kv = r.unpack("<Q", 8)
    if n_tensors > _MAX_TENSORS or n_kv > _MAX_KV or 13 * n_kv + 24 * n_tensors > r.left:
        raise ModelFormatError(
            f"{path}: header claims {n_tensors:,} tensors and {n_kv:,} metadata keys; the file "
            f"holds {r.left:,} more bytes and published files have under {_MAX_TENSORS:,} tensors "
            f"and {_MAX_KV:,} keys; the GGUF file is truncated or corrupt"
        )
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string("a metadata key", MAX_NAME)
        vtype = r.unpack("<I", 4)
        meta[key] = r.value(vtype, key)
    tensors: list[GgufTensor] = []
    for _ in range(n_tensors):
        name = r.string("a tensor name", MAX_NAME)
        n_dims = r.unpack("<I", 4)
        if n_dims > 8:
            raise r.fail(f"tensor {name!r} has {n_dims} dimensions")
        dims = tuple(r.unpack("<Q", 8) for _ in range(n_dims))
        if any(d > MAX_DIM.high for d in dims):
            raise r.fail(
                f"tensor {name!r} has a dimension of {max(dims):,}, beyond the limit of "
                f"{MAX_DIM.high:,}"
            )
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
    alignment = whole(
        meta.get("general.alignment", 32), "metadata 'general.alignment'", str(path), 1, _ALIGNMENT
    )
    data_offset = -(-r.pos // alignment) * alignment
    for t in tensors:
        if data_offset + t.offset + t.nbytes > size:
            raise ModelFormatError(
                f"{path}: tensor {t.name!r} ({t.nbytes} bytes at offset {t.offset}) runs past the "
                f"end of the {size}-byte file; the file is truncated"
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


class _Meta:
    """Typed, bounded access to one architecture's GGUF hyperparameters."""

    def __init__(self, meta: Mapping[str, Any], arch: str, where: str) -> None:
        self.meta = meta
        self.arch = arch
        self.where = where

    def raw(self, key: str) -> Any:
        return self.meta.get(f"{self.arch}.{key}")

    def count(self, key: str, default: int | None = None, minimum: int = 0) -> int:
        """A count between ``minimum`` and the key's bound; ``default`` when absent."""
        value = self.raw(key)
        if value is None:
            if default is None:
                raise ModelFormatError(
                    f"{self.where}: metadata '{self.arch}.{key}' is missing; it must be a "
                    "positive integer (the file was not written for a supported llama.cpp model)"
                )
            return default
        return whole(value, f"metadata '{self.arch}.{key}'", self.where, minimum, bound_for(key))

    def per_layer(self, key: str, n_layers: int, default: int, minimum: int = 0) -> list[int]:
        """A count that may be given once or per layer (hybrid models)."""
        value = self.raw(key)
        label = f"metadata '{self.arch}.{key}'"
        if value is None:
            return [default] * n_layers
        if isinstance(value, ArrayInfo) or (isinstance(value, list) and len(value) != n_layers):
            length = value.length if isinstance(value, ArrayInfo) else len(value)
            raise ModelFormatError(
                f"{self.where}: {label} has {length:,} entries for {n_layers} layers; "
                "the GGUF file is truncated or corrupt"
            )
        if isinstance(value, list):
            return [whole(v, label, self.where, 0, bound_for(key)) for v in value]
        return [whole(value, label, self.where, minimum, bound_for(key))] * n_layers


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

    m = _Meta(meta, a, where)
    n_layers = m.count("block_count", minimum=1)
    hidden = m.count("embedding_length", minimum=1)
    if m.raw("attention.head_count") is None:
        m.count("attention.head_count")  # names the missing key
    n_heads_l = m.per_layer("attention.head_count", n_layers, 0, minimum=1)
    n_heads = max(n_heads_l)
    if n_heads < 1:
        raise ModelFormatError(
            f"{where}: metadata '{a}.attention.head_count' gives no layer attention heads; "
            "the GGUF file is truncated or corrupt"
        )
    n_kv_l = m.per_layer("attention.head_count_kv", n_layers, n_heads, minimum=1)
    key_len = m.count("attention.key_length", max(hidden // n_heads, 1), minimum=1)
    val_len = m.count("attention.value_length", key_len, minimum=1)
    ctx = m.count("context_length", 2048, minimum=1)
    window = m.count("attention.sliding_window", 0)
    ff_len = max(m.per_layer("feed_forward_length", n_layers, 0))
    n_experts = m.count("expert_count", 0)
    vocab_info = meta.get("tokenizer.ggml.tokens")
    vocab = m.count("vocab_size", 0)
    if not vocab:
        if isinstance(vocab_info, ArrayInfo):
            vocab = vocab_info.length
        elif isinstance(vocab_info, list):
            vocab = len(vocab_info)
    embd = next((t for t in gf.tensors if t.name == "token_embd.weight"), None)
    if not vocab and embd is not None and len(embd.shape) == 2:
        vocab = embd.shape[1]

    weights = []
    for t in gf.tensors:
        blk = _BLK.match(t.name)
        weights.append(
            WeightSpec(
                t.name,
                _role(t.name),
                t.shape,
                layer=int(blk.group(1)) if blk else None,
                stored_dtype=t.ggml_type,
                stored_bytes=t.nbytes,
                quant_aux=True,
            )
        )

    swa_pattern = m.raw("attention.sliding_window_pattern")
    if isinstance(swa_pattern, list | ArrayInfo):
        swa_pattern = m.per_layer("attention.sliding_window_pattern", n_layers, 0)
    elif swa_pattern is not None:
        swa_pattern = m.count("attention.sliding_window_pattern")
    kv_layers: list[KVLayer] = []
    for i in range(n_layers):
        if n_kv_l[i] == 0:
            continue  # recurrent layer without attention (hybrid models)
        sliding = False
        if window > 0:
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
                window=window if sliding else None,
            )
        )
    if not kv_layers:
        raise ModelFormatError(f"{where}: no layer has attention heads; cannot size a KV cache")
    rope_dim = m.count("rope.dimension_count", key_len)
    moe = None
    if n_experts:
        moe = MoEInfo(
            n_experts,
            m.count("expert_used_count", 0),
            m.count("expert_feed_forward_length", ff_len) or ff_len,
            m.count("expert_shared_feed_forward_length", 0),
            n_layers,
        )
    general_name = meta.get("general.name")
    arch = ModelArch(
        name=name
        or (general_name if isinstance(general_name, str) and general_name else gf.path.name),
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
    return check_arch(arch, where)
