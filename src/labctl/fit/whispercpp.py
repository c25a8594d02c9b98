"""whisper.cpp's memory, as ``whisper-server`` allocates it when it loads a model.

At load whisper.cpp allocates, and prints:

* the weights (``CPU total size``): every tensor the loader creates, each padded
  to the buffer's 32-byte alignment (allocated even when the file holds none);
* three caches in f16 (``whisper_init_state``): decoder self-attention over
  ``n_text_ctx`` padded to 256 cells, cross-attention over ``n_audio_ctx`` padded
  to 256, both for every decoder layer, and one encoder layer's K/V padding
  buffer for flash attention (``kv pad``);
* four compute buffers, one per graph (conv front end, encoder, cross-attention
  K/V projection, decoder), each reserved by running ggml's graph allocator over
  the graph's worst case (the decoder's: all ``n_text_ctx`` tokens at once, with
  logits for each of them). These are computed by building the same graphs and
  replaying the allocator (:mod:`labctl.fit.ggmlgraph`), plus the fixed metadata
  block whisper.cpp adds to each (room for 4,096 tensor headers and a graph).

The figures are those of the CPU build (32-byte alignment), which the tests check
against a real ``whisper-server``; a GPU build keeps the same buffers in device
memory under its backend's alignment.

Beam search and ``best_of`` sampling re-create the self-attention cache for
``n + 2`` sequences when ``n`` decoders run (whisper.cpp over-allocates against
fragmentation); the compute buffers stay as reserved at load.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from labctl.catalog.ggml import WhisperHparams, read_whisper_ggml, tensor_nbytes
from labctl.errors import UsageError
from labctl.fit.ggmlgraph import CPU_ALIGNMENT, Graph, Tensor, compute_buffer_bytes

#: whisper.cpp pads both caches' lengths to this many cells.
KV_PAD = 256
#: Bytes per cache element: whisper.cpp keeps K and V in f16 (its ``itype``).
KV_ELEMENT_BYTES = 2
#: ``WHISPER_MAX_NODES``: each compute buffer's metadata holds this many tensor headers.
MAX_NODES = 4096
#: ``ggml_tensor_overhead()`` on 64-bit builds: a 32-byte object header and a 336-byte tensor.
TENSOR_OVERHEAD = 32 + 336
#: ``ggml_graph_overhead()`` on 64-bit builds: a 2,048-node graph with its hash set.
GRAPH_OVERHEAD = 82_608
#: What ``whisper_sched_size`` adds to each compute buffer for the graph's metadata.
META_BYTES = TENSOR_OVERHEAD * MAX_NODES + GRAPH_OVERHEAD
#: Most decoders (beam width or best-of) whisper.cpp runs at once.
MAX_DECODERS = 8


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


@dataclass(frozen=True)
class WhisperCppPlan:
    """Bytes whisper.cpp allocates for one model and one state (what ``whisper-server`` holds)."""

    model: str
    weights: int
    kv_self: int
    kv_cross: int
    kv_pad: int
    compute_conv: int
    compute_encode: int
    compute_cross: int
    compute_decode: int

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self) if f.name != "model")

    def to_json(self) -> dict[str, object]:
        """The figures as ``<name>_bytes`` keys, as ``labctl fit --json`` prints them."""
        out: dict[str, object] = {"model": self.model, "engine": "whispercpp"}
        for f in fields(self):
            if f.name != "model":
                out[f"{f.name}_bytes"] = getattr(self, f.name)
        return out | {"total_bytes": self.total}

    def rows(self) -> list[tuple[str, int, str]]:
        """(figure, bytes, what it is) in the order whisper.cpp prints them, then the total."""
        return [
            ("weights", self.weights, "weight buffers (CPU total size): every tensor created"),
            ("kv self", self.kv_self, "decoder self-attention cache, f16"),
            ("kv cross", self.kv_cross, "cross-attention cache over the encoder output, f16"),
            ("kv pad", self.kv_pad, "one encoder layer's K/V for flash attention"),
            ("compute (conv)", self.compute_conv, "mel front end: two convolutions"),
            ("compute (encode)", self.compute_encode, "encoder layers"),
            ("compute (cross)", self.compute_cross, "cross-attention K/V projection"),
            ("compute (decode)", self.compute_decode, "decoder at n_text_ctx tokens, all logits"),
            ("total", self.total, "what whisper-server holds for one model"),
        ]

    def summary(self) -> str:
        """One line, in whisper.cpp's MB (10**6 bytes) as its load log prints them."""
        compute = self.compute_conv + self.compute_encode + self.compute_cross + self.compute_decode
        return (
            f"weights {self.weights / 1e6:.2f} MB, kv self {self.kv_self / 1e6:.2f} MB, "
            f"kv cross {self.kv_cross / 1e6:.2f} MB, kv pad {self.kv_pad / 1e6:.2f} MB, "
            f"compute {compute / 1e6:.2f} MB (conv {self.compute_conv / 1e6:.2f}, encode "
            f"{self.compute_encode / 1e6:.2f}, cross {self.compute_cross / 1e6:.2f}, decode "
            f"{self.compute_decode / 1e6:.2f})"
        )


def weight_bytes(hp: WhisperHparams, alignment: int = CPU_ALIGNMENT) -> int:
    """The weight buffer whisper.cpp allocates for the tensors its loader creates."""
    wtype = hp.weight_type
    conv = 0 if wtype == 0 else 1  # conv kernels are f16 unless the whole model is f32
    a, t = hp.n_audio_state, hp.n_text_state
    shapes: list[tuple[int, tuple[int, ...]]] = [
        (0, (a, hp.n_audio_ctx)),
        (conv, (3, hp.n_mels, a)),
        (0, (1, a)),
        (conv, (3, a, a)),
        (0, (1, a)),
        (0, (a,)),
        (0, (a,)),
        (0, (t, hp.n_text_ctx)),
        (wtype, (t, hp.n_vocab)),
        (0, (t,)),
        (0, (t,)),
    ]

    def block(n: int, attentions: int) -> list[tuple[int, tuple[int, ...]]]:
        mlp = [(0, (n,)), (0, (n,)), (wtype, (n, 4 * n)), (0, (4 * n,)), (wtype, (4 * n, n)),
               (0, (n,))]  # fmt: skip
        attn = [(0, (n,)), (0, (n,)), (wtype, (n, n)), (0, (n,)), (wtype, (n, n)),
                (wtype, (n, n)), (0, (n,)), (wtype, (n, n)), (0, (n,))]  # fmt: skip
        return mlp + attn * attentions

    shapes += block(a, 1) * hp.n_audio_layer + block(t, 2) * hp.n_text_layer
    return sum(_pad(tensor_nbytes(ty, ne), alignment) for ty, ne in shapes)


def kv_bytes(hp: WhisperHparams, decoders: int = 1) -> tuple[int, int, int]:
    """(self, cross, pad) cache bytes; ``decoders`` > 1 is the grown self-attention cache."""
    factor = decoders + 2 if decoders > 1 else 1
    self_cells = _pad(hp.n_text_ctx, KV_PAD) * factor
    cross_cells = _pad(hp.n_audio_ctx, KV_PAD)
    per_cell = 2 * KV_ELEMENT_BYTES  # K and V
    return (
        per_cell * hp.n_text_state * hp.n_text_layer * self_cells,
        per_cell * hp.n_text_state * hp.n_text_layer * cross_cells,
        per_cell * hp.n_audio_state * cross_cells,
    )


# ---------------------------------------------------------------------------
# the four graphs, as whisper.cpp builds them (whisper_build_graph_*)


def conv_graph(hp: WhisperHparams) -> Graph:
    g = Graph()
    n_ctx, n_state = hp.n_audio_ctx, hp.n_audio_state
    kernel = "f32" if hp.weight_type == 0 else "f16"
    mel = g.input("f32", 2 * n_ctx, hp.n_mels)
    cur = g.conv_1d_ph(g.external(kernel, 3, hp.n_mels, n_state), mel, 1)
    cur = g.gelu(g.add(cur, g.external("f32", 1, n_state)))
    cur = g.conv_1d_ph(g.external(kernel, 3, n_state, n_state), cur, 2)
    cur = g.gelu(g.add(cur, g.external("f32", 1, n_state)))
    cur.is_output = True
    g.expand(cur)
    return g


def _weight(*ne: int) -> Tensor:
    return Graph.external("f16", *ne)  # weights live in their own buffer; their type is moot


def _vec(n: int) -> Tensor:
    return Graph.external("f32", n)


def _norm(g: Graph, x: Tensor, n: int) -> Tensor:
    return g.add(g.mul(g.norm(x), _vec(n)), _vec(n))


def _mlp(g: Graph, x: Tensor, n: int) -> Tensor:
    cur = _norm(g, x, n)
    cur = g.gelu(g.add(g.mul_mat(_weight(n, 4 * n), cur), _vec(4 * n)))
    cur = g.add(g.mul_mat(_weight(4 * n, n), cur), _vec(n))
    return g.add(cur, x)


def encoder_graph(hp: WhisperHparams, flash_attn: bool = True) -> Graph:
    g = Graph()
    n_ctx, n, n_head = hp.n_audio_ctx, hp.n_audio_state, hp.n_audio_head
    hd, n_ctx_pad = n // n_head, _pad(n_ctx, KV_PAD)
    kv_k = g.external("f16", n * n_ctx_pad)
    kv_v = g.external("f16", n * n_ctx_pad)
    embd_conv = g.external("f32", n_ctx, n)  # the conv graph's output, in its buffer
    cur = g.view_tensor(embd_conv)
    pos = g.view(g.external("f32", n, n_ctx), n, n_ctx)
    inp = g.add(pos, g.cont(g.transpose(cur)))
    for _ in range(hp.n_audio_layer):
        cur = _norm(g, inp, n)
        q = g.add(g.mul_mat(_weight(n, n), cur), _vec(n))
        k = g.mul_mat(_weight(n, n), cur)
        v = g.add(g.mul_mat(_weight(n, n), cur), _vec(n))
        qh = g.permute(g.reshape(q, hd, n_head, n_ctx), 0, 2, 1, 3)
        if flash_attn:
            g.expand(g.cpy(k, g.view(kv_k, n_ctx * n)))
            g.expand(g.cpy(v, g.view(kv_v, n_ctx * n)))
            kh = g.view(kv_k, hd, n_ctx_pad, n_head)
            vh = g.view(kv_v, hd, n_ctx_pad, n_head)
            cur = g.reshape(g.flash_attn(qh, kh, vh, None), n, n_ctx)
        else:
            kh = g.permute(g.cast(g.reshape(k, hd, n_head, n_ctx), "f16"), 0, 2, 1, 3)
            kq = g.soft_max(g.mul_mat(kh, qh))
            vh = g.cast(g.permute(g.reshape(v, hd, n_head, n_ctx), 1, 2, 0, 3), "f16")
            cur = g.cont(g.permute(g.mul_mat(vh, kq), 0, 2, 1, 3), n, n_ctx)
        cur = g.add(g.add(g.mul_mat(_weight(n, n), cur), _vec(n)), inp)
        inp = _mlp(g, cur, n)
    g.expand(_norm(g, inp, n))
    return g


def cross_graph(hp: WhisperHparams, flash_attn: bool = True) -> Graph:
    g = Graph()
    n_ctx, n = hp.n_audio_ctx, hp.n_audio_state
    cells = n * _pad(n_ctx, KV_PAD) * hp.n_text_layer
    kv_k, kv_v = g.external("f16", cells), g.external("f16", cells)
    cur = g.view_tensor(g.external("f32", n, n_ctx))  # the encoder's output, in its buffer
    for _ in range(hp.n_text_layer):
        _store_kv(g, cur, kv_k, kv_v, n, n_ctx, flash_attn)
    return g


def _store_kv(
    g: Graph, cur: Tensor, kv_k: Tensor, kv_v: Tensor, n: int, rows: int, flash_attn: bool
) -> None:
    """K and V of ``rows`` positions projected from ``cur`` and copied into the caches (V
    transposed where attention is not flash, as whisper.cpp stores it then)."""
    k = g.scale(g.mul_mat(_weight(n, n), cur))
    v = g.add(g.mul_mat(_weight(n, n), cur), _vec(n))
    if flash_attn:
        dst_v = g.view(kv_v, n * rows)
    else:
        v = g.transpose(g.reshape(v, n, rows))
        dst_v = g.view(kv_v, rows, n)
    g.expand(g.cpy(k, g.view(kv_k, n * rows)))
    g.expand(g.cpy(v, dst_v))


def decoder_graph(hp: WhisperHparams, flash_attn: bool = True) -> Graph:
    """The decoder's worst case, which whisper.cpp reserves at load: ``n_text_ctx`` tokens
    over a cache of ``n_text_ctx`` padded cells, logits for every token."""
    g = Graph()
    n, n_head = hp.n_text_state, hp.n_text_head
    hd = n // n_head
    n_tokens = hp.n_text_ctx
    n_kv = _pad(hp.n_text_ctx, KV_PAD)
    n_audio = hp.n_audio_ctx
    n_audio_pad = _pad(n_audio, KV_PAD)
    self_k = g.external("f16", n * n_kv * hp.n_text_layer)
    self_v = g.external("f16", n * n_kv * hp.n_text_layer)
    cross_k = g.external("f16", n * n_audio_pad * hp.n_text_layer)
    cross_v = g.external("f16", n * n_audio_pad * hp.n_text_layer)
    embd = g.input("i32", n_tokens)
    position = g.input("i32", n_tokens)
    mask = g.input("f32", n_kv, n_tokens, 1)
    mask_f16 = g.cast(mask, "f16")
    token_embd = _weight(n, hp.n_vocab)
    inp = g.add(
        g.get_rows(token_embd, embd), g.get_rows(g.external("f32", n, hp.n_text_ctx), position)
    )
    for _ in range(hp.n_text_layer):
        cur = _norm(g, inp, n)
        q = g.scale(g.add(g.mul_mat(_weight(n, n), cur), _vec(n)))
        _store_kv(g, cur, self_k, self_v, n, n_tokens, flash_attn)
        qh = g.permute(g.reshape(q, hd, n_head, n_tokens), 0, 2, 1, 3)
        kh = g.view(self_k, hd, n_kv, n_head)
        if flash_attn:
            vh = g.view(self_v, hd, n_kv, n_head)
            cur = g.reshape(g.flash_attn(qh, kh, vh, mask_f16), n, n_tokens)
        else:
            kq = g.soft_max(g.mul_mat(kh, qh), mask)
            vh = g.view(self_v, n_kv, hd, n_head)
            cur = g.cont(g.permute(g.mul_mat(vh, kq), 0, 2, 1, 3), n, n_tokens)
        inp_ca = g.add(g.add(g.mul_mat(_weight(n, n), cur), _vec(n)), inp)
        cur = _norm(g, inp_ca, n)
        q = g.add(g.mul_mat(_weight(n, n), cur), _vec(n))
        qh = g.permute(g.reshape(q, hd, n_head, n_tokens), 0, 2, 1, 3)
        if flash_attn:
            kh = g.view(cross_k, hd, n_audio_pad, n_head)
            vh = g.view(cross_v, hd, n_audio_pad, n_head)
            cur = g.reshape(g.flash_attn(qh, kh, vh, None), n, n_tokens)
        else:
            kh = g.view(cross_k, hd, n_audio, n_head)
            vh = g.view(cross_v, n_audio, hd, n_head)
            kq = g.soft_max(g.mul_mat(kh, qh))
            cur = g.cont(g.permute(g.mul_mat(vh, kq), 0, 2, 1, 3), n, n_tokens)
        cur = g.add(g.add(g.mul_mat(_weight(n, n), cur), _vec(n)), inp_ca)
        inp = _mlp(g, cur, n)
    g.expand(g.mul_mat(token_embd, _norm(g, inp, n)))
    return g


def plan_hparams(
    hp: WhisperHparams, *, model: str = "", flash_attn: bool = True, decoders: int = 1
) -> WhisperCppPlan:
    """whisper.cpp's allocations for a model of these hyper-parameters on its CPU backend.

    ``decoders`` is the most sequences one request decodes at once (``beam_size`` with
    beam search, ``best_of`` when sampling falls back to a temperature above 0; 1 for
    greedy decoding without fallback).

    Raises:
        UsageError: ``decoders`` is outside 1 to 8.
    """
    if not 1 <= decoders <= MAX_DECODERS:
        raise UsageError(
            f"decoders {decoders} is outside 1..{MAX_DECODERS}; whisper.cpp runs at most "
            f"{MAX_DECODERS} (beam size or best-of)"
        )
    kv_self, kv_cross, kv_pad = kv_bytes(hp, decoders)
    return WhisperCppPlan(
        model=model or hp.model_name,
        weights=weight_bytes(hp),
        kv_self=kv_self,
        kv_cross=kv_cross,
        kv_pad=kv_pad,
        compute_conv=META_BYTES + compute_buffer_bytes(conv_graph(hp)),
        compute_encode=META_BYTES + compute_buffer_bytes(encoder_graph(hp, flash_attn)),
        compute_cross=META_BYTES + compute_buffer_bytes(cross_graph(hp, flash_attn)),
        compute_decode=META_BYTES + compute_buffer_bytes(decoder_graph(hp, flash_attn)),
    )


def plan_file(path: Path, *, flash_attn: bool = True, decoders: int = 1) -> WhisperCppPlan:
    """whisper.cpp's memory for the ggml model at ``path`` (see :func:`plan_hparams`).

    Raises:
        CatalogError: the file cannot be read.
        ModelFormatError: it is not a whisper.cpp ggml model.
        UsageError: ``decoders`` is outside 1 to 8.
    """
    model = read_whisper_ggml(path)
    return plan_hparams(model.hparams, model=path.name, flash_attn=flash_attn, decoders=decoders)


__all__ = ["WhisperCppPlan", "plan_file", "plan_hparams"]
