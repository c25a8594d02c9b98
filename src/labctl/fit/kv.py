"""Paged KV cache layout: per-layer page sizes, layer groups, blocks and tokens.

This follows how a paged KV manager of the vLLM V1 kind lays memory out:

* each KV-bearing layer gets a *spec*: full attention, sliding window,
  chunked local, MLA latent, cross attention, or a fixed recurrent state
  (linear attention / Mamba);
* layers are bucketed by spec; in a hybrid model buckets are cut into groups
  of ``group_size`` layers, pages are made equal across specs (attention
  blocks grow to hold a recurrent state), and one pool of ``num_blocks``
  blocks backs ``group_size`` tensors shared by one layer of every group;
* a request needs, per group, blocks for what its spec can hold at most.

Everything here is a pure function of its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from labctl.catalog.arch import KVLayer, LayerKind
from labctl.catalog.formats import DTYPE_BYTES
from labctl.units import cdiv

#: Bytes per token of an FP8 DeepSeek-style MLA cache entry (vLLM's fp8_ds_mla).
FP8_DS_MLA_BYTES = 656
#: Attention block sizes are raised in steps of this when a recurrent state must fit a page.
BLOCK_ALIGN = 16


@dataclass(frozen=True)
class LayerCache:
    """The cache one layer needs on one GPU."""

    index: int
    kind: LayerKind
    #: Bytes one token adds to this layer (attention kinds); 0 for recurrent state.
    token_bytes: int
    #: Bytes of the recurrent state of one sequence (LINEAR only).
    state_bytes: int = 0
    window: int | None = None

    @property
    def key(self) -> tuple[object, ...]:
        return (self.kind, self.token_bytes, self.state_bytes, self.window)


@dataclass(frozen=True)
class KVOptions:
    """Engine behaviour that changes the layout."""

    kv_dtype: str  # resolved dtype name of the attention cache
    model_dtype: str  # dtype of "auto" recurrent states
    block_size: int = 16
    #: Size sliding-window layers by their window (a hybrid-aware manager).
    hybrid_manager: bool = True
    #: Size chunked-local layers by their chunk (otherwise they are sized as full).
    chunked_hybrid: bool = True
    #: Store K only where K = V (Gemma 4 global layers); stock vLLM stores both.
    k_eq_v: bool = False
    #: Blocks a recurrent-state group needs per request: 1 (no prefix caching), 2 (prefix caching).
    state_blocks: int = 1
    #: Speculative tokens per step: each adds a state block per request to recurrent
    #: groups and a step to convolution states.
    speculative_blocks: int = 0
    #: DeepSeek-style FP8 MLA entries (656 bytes per token).
    mla_fp8_ds: bool = False


def dtype_bytes(dtype: str) -> float:
    key = dtype.lower().removeprefix("torch.")
    if key not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}")
    return DTYPE_BYTES[key]


def layer_caches(layers: Sequence[KVLayer], tp: int, opts: KVOptions) -> list[LayerCache]:
    """Per-GPU cache needs of the KV-bearing layers a rank holds."""
    kv_b = dtype_bytes(opts.kv_dtype)
    out: list[LayerCache] = []
    for layer in layers:
        if layer.shares_kv_with is not None:
            continue
        kind = layer.kind
        if kind is LayerKind.LINEAR:
            state = 0.0
            for s in layer.states:
                per_rank = (s.elems + opts.speculative_blocks * s.elems_per_spec_token) // tp
                state += per_rank * dtype_bytes(opts.model_dtype if s.dtype == "auto" else s.dtype)
            out.append(LayerCache(layer.index, kind, 0, int(state)))
            continue
        if kind is LayerKind.MLA:
            token = FP8_DS_MLA_BYTES if opts.mla_fp8_ds else int(layer.mla_latent * kv_b)
            out.append(LayerCache(layer.index, kind, token))
            continue
        heads = layer.num_kv_heads // tp if layer.num_kv_heads >= tp else 1
        v = 0 if (layer.k_eq_v and opts.k_eq_v) else layer.head_size_v
        token = int(heads * (layer.head_size + v) * kv_b)
        window = layer.window
        if (kind in (LayerKind.SLIDING, LayerKind.CROSS) and not opts.hybrid_manager) or (
            kind is LayerKind.CHUNKED and not (opts.hybrid_manager and opts.chunked_hybrid)
        ):
            # Older engines give every layer a slot per token in one uniform cache.
            kind, window = LayerKind.FULL, None
        out.append(LayerCache(layer.index, kind, token, window=window))
    return out


@dataclass(frozen=True)
class KVLayout:
    """How a rank's KV pool is cut: pages, groups and blocks per request."""

    caches: tuple[LayerCache, ...]
    #: Tokens per block for each distinct attention token size (hybrid models raise them).
    block_sizes: dict[int, int]
    #: Bytes of one block of the pool: its page in every tensor that shares it (a
    #: page per layer when uniform; one equal page per group member when hybrid).
    block_bytes: int
    #: Layers sharing one pool tensor (one per group); the whole model when uniform.
    group_size: int
    #: Each group is a list of layer caches of one spec.
    groups: tuple[tuple[LayerCache, ...], ...]
    #: True when every layer is plain attention (one group, possibly mixed page sizes).
    uniform: bool
    opts: KVOptions

    @property
    def min_block_size(self) -> int:
        return min(self.block_sizes.values()) if self.block_sizes else self.opts.block_size

    @property
    def padding_layers(self) -> int:
        return self.group_size * len(self.groups) - len(self.caches) if not self.uniform else 0

    def num_blocks(self, available_bytes: int) -> int:
        """Blocks the pool holds in ``available_bytes``."""
        if available_bytes <= 0 or not self.caches:
            return 0
        return available_bytes // self.block_bytes

    def bytes_for_blocks(self, blocks: int) -> int:
        return blocks * self.block_bytes

    def _block_tokens(self, cache: LayerCache) -> int:
        return self.block_sizes.get(cache.token_bytes, self.opts.block_size)

    def blocks_per_request(self, max_model_len: int, max_num_batched_tokens: int) -> float:
        """Blocks (of the shared pool) one request of ``max_model_len`` tokens needs at most."""
        if self.uniform:
            # One block holds block_size tokens of every layer.
            return cdiv(max_model_len, self.opts.block_size)
        total = 0
        for group in self.groups:
            c = group[0]
            bs = self._block_tokens(c)
            if c.kind is LayerKind.FULL:
                total += cdiv(max_model_len, bs)
            elif c.kind is LayerKind.SLIDING:
                assert c.window is not None
                total += cdiv(min(c.window - 1 + max_num_batched_tokens, max_model_len), bs) + 1
            elif c.kind is LayerKind.CHUNKED:
                assert c.window is not None
                total += cdiv(min(c.window + max_num_batched_tokens, max_model_len), bs)
            elif c.kind is LayerKind.MLA:
                total += cdiv(max_model_len, bs)
            elif c.kind is LayerKind.CROSS:
                # The engine reserves encoder positions up to the batch token budget.
                total += cdiv(max_num_batched_tokens, bs)
            elif c.kind is LayerKind.LINEAR:
                total += self.opts.state_blocks + self.opts.speculative_blocks
        return total

    def blocks_held(self, tokens: int, new: int = 0) -> int:
        """Pool blocks one request holds with ``tokens`` of context, ``new`` of them being
        computed in this step: a full-attention or MLA group a block per block size of
        tokens; a sliding-window or chunked group only the blocks its window (and this
        step's new tokens) still reaches, the rest going back to the pool as the request
        grows (a chunked-local group from the chunk its first new token is in); a recurrent
        group its state blocks whatever the length."""
        if self.uniform:
            return cdiv(tokens, self.opts.block_size)
        total = 0
        for group in self.groups:
            c = group[0]
            bs = self._block_tokens(c)
            if c.kind in (LayerKind.SLIDING, LayerKind.CHUNKED) and c.window:
                if c.kind is LayerKind.SLIDING:
                    first = max(0, tokens - (c.window - 1 + max(new, 1)))
                else:
                    first = max(0, tokens - max(new, 1)) // c.window * c.window
                total += (cdiv(tokens, bs) - first // bs) if tokens else 0
            elif c.kind is LayerKind.LINEAR:
                total += self.opts.state_blocks + self.opts.speculative_blocks
            else:
                total += cdiv(tokens, bs)
        return total

    def request_bytes(self, max_model_len: int, max_num_batched_tokens: int) -> int:
        """Bytes of KV one request of ``max_model_len`` tokens can occupy."""
        return self.bytes_for_blocks(
            int(self.blocks_per_request(max_model_len, max_num_batched_tokens))
        )

    def max_concurrency(
        self, num_blocks: int, max_model_len: int, max_num_batched_tokens: int
    ) -> float:
        need = self.blocks_per_request(max_model_len, max_num_batched_tokens)
        return num_blocks / need if need else 0.0

    def tokens_by_blocks(self, num_blocks: int) -> int:
        """The token count the older report prints: blocks per group times block size."""
        if self.uniform:
            return num_blocks * self.opts.block_size
        return num_blocks // len(self.groups) * self.min_block_size

    def bytes_per_token(self) -> int:
        """KV bytes one more token of context costs on this GPU: the layers that keep
        every token (full attention, MLA)."""
        return sum(c.token_bytes for c in self.caches if c.kind in (LayerKind.FULL, LayerKind.MLA))

    def window_bytes_per_token(self) -> int:
        """KV bytes per token of the sliding-window and chunked layers, which stop
        growing once a request passes their window."""
        return sum(
            c.token_bytes for c in self.caches if c.kind in (LayerKind.SLIDING, LayerKind.CHUNKED)
        )

    def state_bytes_per_sequence(self) -> int:
        return sum(c.state_bytes for c in self.caches if c.kind is LayerKind.LINEAR)


def plan_layout(caches: Sequence[LayerCache], opts: KVOptions) -> KVLayout:
    """Group layers and size pages the way a hybrid-aware paged KV manager does."""
    caches = tuple(caches)
    bs = opts.block_size
    attention = [c for c in caches if c.kind is not LayerKind.LINEAR]
    recurrent = [c for c in caches if c.kind is LayerKind.LINEAR]
    kinds = {c.kind for c in caches}
    if not caches:
        return KVLayout((), {}, 0, 0, (), True, opts)
    if not recurrent and len(kinds) == 1:
        # One attention type: a single group, every layer with its own page.
        block_bytes = sum(c.token_bytes * bs for c in caches)
        return KVLayout(
            caches,
            {c.token_bytes: bs for c in caches},
            block_bytes,
            len(caches),
            (caches,),
            True,
            opts,
        )

    # Hybrid: make pages equal. Attention pages are block_size * token_bytes;
    # layers with smaller tokens get proportionally larger blocks.
    sizes: dict[int, int] = {}
    if attention:
        largest = max(c.token_bytes for c in attention)
        page = largest * bs
        if recurrent:
            state = max(c.state_bytes for c in recurrent)
            if state > page:
                bs = BLOCK_ALIGN * cdiv(state, BLOCK_ALIGN * largest)
                page = largest * bs
        for c in attention:
            sizes[c.token_bytes] = page // c.token_bytes if c.token_bytes else bs
    else:
        page = max(c.state_bytes for c in recurrent)

    buckets: dict[tuple[object, ...], list[LayerCache]] = {}
    for c in caches:
        buckets.setdefault(c.key, []).append(c)
    counts = [len(v) for v in buckets.values()]
    lo, hi = min(counts), max(counts)
    group_size = hi if hi < 1.5 * lo else lo
    groups: list[tuple[LayerCache, ...]] = []
    for members in buckets.values():
        for start in range(0, len(members), group_size):
            groups.append(tuple(members[start : start + group_size]))
    return KVLayout(caches, sizes, page * group_size, group_size, tuple(groups), False, opts)
