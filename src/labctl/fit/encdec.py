"""vLLM's accounting for an encoder-decoder speech model (Whisper).

A decoder-only model's request grows its KV cache token by token up to
``max_model_len``. A Whisper request holds two caches:

* decoder self-attention: up to ``max_model_len`` (448) positions;
* cross-attention: the encoder's output, a fixed 1,500 positions for every 30 s
  chunk of audio however short the clip (the audio is padded to 30 s).

Both are paged in blocks of ``block_size`` positions, so a request takes
``cdiv(448, 16) + cdiv(1500, 16) = 28 + 94`` blocks of the pool. How many such
requests run at once is the pool's blocks over that, capped by ``max_num_seqs``.

The scheduler also limits how many encodes start in one step: the encoder
compute budget is ``max(max_num_batched_tokens, positions of one item)``
(vLLM's ``compute_mm_encoder_budget``), and each clip costs 1,500 of it.

vLLM's own "Maximum concurrency" startup line reserves cross-attention blocks
for ``max_num_encoder_input_tokens`` (= ``max_num_batched_tokens``) rather than
1,500, so it understates the real capacity when that budget is larger; the plan
keeps that figure beside the real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from labctl.catalog.arch import KVLayer, LayerKind
from labctl.fit.kv import KVLayout, LayerCache
from labctl.units import cdiv


@dataclass(frozen=True)
class EncoderDecoderPlan:
    """Per-request KV, encoder admission and concurrency of an encoder-decoder model
    on one GPU (bytes per GPU)."""

    #: Encoder positions one request's cross-attention keeps (Whisper: 1,500 per 30 s).
    encoder_positions: int
    kv_self_bytes_per_position: int
    kv_cross_bytes_per_position: int
    #: Decoder self-attention K/V of one request at ``max_model_len`` positions.
    kv_self_bytes_per_request: int
    #: Cross-attention K/V of one request: ``encoder_positions`` positions.
    kv_cross_bytes_per_request: int
    kv_self_blocks_per_request: int
    kv_cross_blocks_per_request: int
    #: Blocks of the pool one request takes (self plus cross).
    kv_blocks_per_request: int
    #: Encoder positions a scheduler step may start: max(max_num_batched_tokens, one item).
    encoder_budget_tokens: int
    #: Clips (30 s chunks) whose encoding one step can start.
    clips_per_step: int
    max_num_seqs: int
    #: Requests of one chunk the KV cache holds at once (pool blocks ÷ blocks per request).
    kv_concurrency: float
    #: Requests of one chunk served at once: ``kv_concurrency`` capped by ``max_num_seqs``.
    max_concurrency: float
    #: What vLLM's "Maximum concurrency" startup line prints: cross-attention reserved
    #: for ``max_num_batched_tokens`` encoder tokens rather than one chunk's positions.
    vllm_logged_concurrency: float

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _split(
    layout: KVLayout, kv_layers: Sequence[KVLayer]
) -> tuple[list[LayerCache], list[LayerCache]]:
    """The layout's self-attention and cross-attention caches. Engines without a
    hybrid manager store cross layers as plain full attention, so the layer kinds of
    the architecture decide, not the kinds in the layout."""
    cross = {layer.index for layer in kv_layers if layer.kind is LayerKind.CROSS}
    self_caches = [c for c in layout.caches if c.index not in cross]
    cross_caches = [c for c in layout.caches if c.index in cross]
    return self_caches, cross_caches


def plan_encoder_decoder(
    layout: KVLayout,
    kv_layers: Sequence[KVLayer],
    num_blocks: int,
    *,
    encoder_positions: int,
    max_model_len: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    vllm_logged_concurrency: float,
) -> EncoderDecoderPlan:
    """The encoder-decoder figures for a KV pool of ``num_blocks`` blocks laid out as
    ``layout`` (the plan's worst rank)."""
    self_caches, cross_caches = _split(layout, kv_layers)
    block = layout.min_block_size
    self_blocks = cdiv(max_model_len, block) if self_caches else 0
    cross_blocks = cdiv(encoder_positions, block) if cross_caches else 0
    per_request = self_blocks + cross_blocks
    self_pos = sum(c.token_bytes for c in self_caches)
    cross_pos = sum(c.token_bytes for c in cross_caches)
    budget = max(max_num_batched_tokens, encoder_positions)
    kv_conc = num_blocks / per_request if per_request else 0.0
    return EncoderDecoderPlan(
        encoder_positions=encoder_positions,
        kv_self_bytes_per_position=self_pos,
        kv_cross_bytes_per_position=cross_pos,
        kv_self_bytes_per_request=max_model_len * self_pos,
        kv_cross_bytes_per_request=encoder_positions * cross_pos,
        kv_self_blocks_per_request=self_blocks,
        kv_cross_blocks_per_request=cross_blocks,
        kv_blocks_per_request=per_request,
        encoder_budget_tokens=budget,
        clips_per_step=budget // encoder_positions if encoder_positions else 0,
        max_num_seqs=max_num_seqs,
        kv_concurrency=round(kv_conc, 2),
        max_concurrency=round(min(kv_conc, max_num_seqs), 2),
        vllm_logged_concurrency=round(vllm_logged_concurrency, 2),
    )
