"""A scheduler that behaves like vLLM V1's: token budget, sequence cap, paged KV, preemption.

Every step it first gives each running request what it needs (one token when
decoding, the next chunk of its prompt when prefilling), then admits waiting
requests in arrival order while the token budget (``max_num_batched_tokens``),
the sequence cap (``max_num_seqs``) and free KV blocks allow. A prompt longer
than the remaining budget is prefilled in chunks. When a running request needs
a block and none is free, the most recently admitted running request is
preempted: its blocks are freed and it goes back to the front of the queue to
be recomputed, as vLLM's recompute preemption does. With prefix caching,
full blocks of a prompt that an earlier request already computed are reused.

A hybrid model's pool backs every layer group (``blocks_held``): a request holds
a block per block size of tokens in a full-attention group, only the blocks its
window still reaches in a sliding-window group (the rest go back to the pool as
it grows) and its state blocks in a recurrent one.

vLLM V1 (whose prefix caching is on by default) frees a preempted request's
blocks with their contents still cached: they go to the end of the free queue,
its last blocks first, and other requests take free blocks from the front, so
what is left of its work when it is admitted again is a cache hit, not a
recompute (``keep_preempted``). Without that, a burst of long prompts whose KV
does not fit would recompute the same chunks over and over (prefill work lost
to every preemption).

A request of an encoder-decoder model (Whisper) carries encoder positions:
its clip is encoded in the step that admits it, which prefills its decoder
prompt whole (vLLM disables chunked prefill for these models), and it keeps
blocks for those positions' cross-attention K/V beside its own until it ends.
A step starts at most ``encoder_budget`` positions of encoding (vLLM's encoder
compute budget, ``max(max_num_batched_tokens, positions of one item)``): one
1,500-position clip per step at 2,048 batched tokens, four at 6,144.

With chunked prefill off (vLLM V0's default below 32K of context), a prompt
runs whole, and a step that can admit one runs prefills only, ahead of the
decodes of running requests, as V0's scheduler does.

The same scheduler drives the live twin (in real time) and ``labctl sim run``
(as a discrete-event simulation); it has no clock of its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from labctl.sim.perf import StepCost, chunk_pairs, window_pairs


def block_keys(tokens: Sequence[object], block_size: int) -> tuple[int, ...]:
    """Prefix-cache keys of a prompt's full blocks: each chains the block before it,
    so two prompts share a key only when everything up to that block is the same."""
    keys: list[int] = []
    prev = 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        prev = hash((prev, tuple(tokens[start : start + block_size])))
        keys.append(prev)
    return tuple(keys)


@dataclass(eq=False)
class SimRequest:
    """One request as the engine sees it."""

    id: int
    prompt_len: int
    max_tokens: int
    arrival: float
    #: Block-hash keys of the prompt's full blocks, for prefix caching (empty: never shared).
    prefix_keys: tuple[int, ...] = ()
    #: Tokens whose KV is computed (prompt, then generated ones as they are fed back).
    computed: int = 0
    generated: int = 0
    blocks: int = 0
    cached_tokens: int = 0
    admitted: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None
    preemptions: int = 0
    #: Gaps between consecutive output tokens, seconds.
    itl: list[float] = field(default_factory=list)
    #: Encoder positions whose cross-attention K/V it keeps (Whisper: 1,500 per clip).
    encoder_positions: int = 0

    @property
    def total_len(self) -> int:
        return self.prompt_len + self.generated

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prompt_len


@dataclass
class Batch:
    """What one step runs: each request with the tokens scheduled for it."""

    items: list[tuple[SimRequest, int]]
    cost: StepCost
    preempted: list[SimRequest]


class Scheduler:
    """vLLM-V1-like scheduling over a paged KV cache of ``num_blocks`` × ``block_size`` tokens."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        window: int = 0,
        prefix_caching: bool = False,
        encoder_budget: int = 0,
        chunked_prefill: bool = True,
        keep_preempted: bool = False,
        blocks_held: Callable[[int, int], int] | None = None,
        chunked: bool = False,
    ) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.window = window
        #: ``window`` is a chunked local attention's chunk, not a sliding window.
        self.chunked = chunked
        self.prefix_caching = prefix_caching
        self.encoder_budget = encoder_budget
        #: Off (vLLM V0's default): prompts run whole, in prefill-only steps ahead of decodes.
        self.chunked_prefill = chunked_prefill
        #: A preempted request's computed blocks stay cached among the free ones (vLLM V1).
        self.keep_preempted = keep_preempted
        #: Blocks a request holds at a length, this step's new tokens among them (a hybrid
        #: model's groups: sliding windows give blocks back); None: a block per block size.
        self.blocks_held = blocks_held
        self.free_blocks = num_blocks
        #: Free blocks that still hold a preempted request's work, per request, oldest
        #: preemption first (taken first when free blocks run short).
        self._kept: dict[SimRequest, int] = {}
        self._kept_total = 0
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.preemptions_total = 0
        self.prefix_hits = 0
        self.prefix_queries = 0
        #: Prefix-cache keys of computed full blocks (evicted oldest first).
        self._cached: dict[int, None] = {}

    # -- queue -----------------------------------------------------------------

    def add(self, req: SimRequest) -> None:
        self.waiting.append(req)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    @property
    def usage(self) -> float:
        """Share of KV blocks in use, 0–1 (``vllm:kv_cache_usage_perc``)."""
        return 1.0 - self.free_blocks / self.num_blocks

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _held(self, tokens: int, new: int = 0) -> int:
        if self.blocks_held is None:
            return self._blocks_for(tokens)
        return self.blocks_held(tokens, new)

    def _tokens_in(self, blocks: int, limit: int) -> int:
        """The most whole blocks' worth of tokens (up to ``limit``) that ``blocks`` hold."""
        if self.blocks_held is None:
            return min(blocks * self.block_size, limit)
        lo, hi = 0, limit // self.block_size
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.blocks_held(mid * self.block_size, 0) <= blocks:
                lo = mid
            else:
                hi = mid - 1
        return lo * self.block_size

    def _free(self, req: SimRequest) -> None:
        self.free_blocks += req.blocks
        req.blocks = 0

    def _grow(self, req: SimRequest, tokens: int, new: int = 0) -> bool:
        # Cross-attention blocks come with the request's first ones and stay to its end.
        need = self._held(tokens, new) + self._blocks_for(req.encoder_positions) - req.blocks
        if need <= 0:
            # Blocks a sliding window has moved past go back to the pool.
            self.free_blocks -= need
            req.blocks += need
            return True
        if need > self.free_blocks:
            return False
        self._take(need)
        req.blocks += need
        return True

    def _take(self, need: int) -> None:
        """Take ``need`` free blocks: plain ones first, then (oldest preemption first, each
        request's last blocks first) blocks that still hold a preempted request's work."""
        short = need - (self.free_blocks - self._kept_total)
        while short > 0:
            victim = next(iter(self._kept))
            lost = min(short, self._kept[victim])
            self._kept[victim] -= lost
            self._kept_total -= lost
            short -= lost
            if not self._kept[victim]:
                del self._kept[victim]
        self.free_blocks -= need

    def _keep(self, req: SimRequest, computed: int) -> None:
        """Keep a just-preempted request's full computed blocks cached among the free ones."""
        if not self.keep_preempted or req.encoder_positions:
            return
        whole = computed // self.block_size * self.block_size
        kept = min(self._held(whole), self.free_blocks - self._kept_total)
        if kept > 0:
            self._kept[req] = kept
            self._kept_total += kept

    def _resume(self, req: SimRequest) -> int:
        """Claim what is still cached of a preempted request's work: tokens it need not
        recompute (its blocks become its own again)."""
        kept = self._kept.pop(req, 0)
        if not kept:
            return 0
        self._kept_total -= kept
        self.free_blocks -= kept
        req.blocks = kept
        # The last token is always recomputed to produce logits.
        return self._tokens_in(kept, req.total_len - 1)

    def _unresume(self, req: SimRequest) -> None:
        """Undo :meth:`_resume` for a request that was not admitted after all."""
        kept, req.blocks = req.blocks, 0
        self.free_blocks += kept
        self._kept[req] = kept
        self._kept_total += kept

    def _prefix_hit(self, req: SimRequest) -> int:
        """Prompt tokens already computed by earlier requests (whole blocks)."""
        if not self.prefix_caching or not req.prefix_keys:
            return 0
        hit = 0
        for key in req.prefix_keys:
            if key not in self._cached:
                break
            hit += 1
        # The last prompt token is always recomputed to produce logits.
        tokens = min(hit * self.block_size, req.prompt_len - 1)
        self.prefix_queries += req.prompt_len
        self.prefix_hits += max(0, tokens)
        return max(0, tokens)

    def _remember(self, req: SimRequest) -> None:
        if not self.prefix_caching:
            return
        full = min(len(req.prefix_keys), req.computed // self.block_size)
        for key in req.prefix_keys[:full]:
            self._cached[key] = None
        # Cached blocks beyond the pool's capacity are evicted, oldest first.
        while len(self._cached) > self.num_blocks:
            del self._cached[next(iter(self._cached))]

    # -- one step -----------------------------------------------------------------

    def schedule(self, now: float) -> Batch:
        if not self.chunked_prefill:
            prefills = self._admit(now, self.max_num_batched_tokens, [])
            if prefills:
                return Batch(prefills, self._cost(prefills), [])
        budget = self.max_num_batched_tokens
        items: list[tuple[SimRequest, int]] = []
        preempted: list[SimRequest] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.total_len - req.computed, budget)
            while not self._grow(req, req.computed + n, n):
                victim = self.running.pop()
                self._free(victim)
                self._keep(victim, victim.computed)
                victim.computed = 0
                victim.cached_tokens = 0
                victim.preemptions += 1
                self.preemptions_total += 1
                preempted.append(victim)
                self.waiting.appendleft(victim)
                if victim is req:
                    break
            else:
                items.append((req, n))
                budget -= n
                i += 1
                continue
            break  # the request itself was preempted
        if not preempted and self.chunked_prefill:
            items = self._admit(now, budget, items)
        return Batch(items, self._cost(items), preempted)

    def _admit(
        self, now: float, budget: int, items: list[tuple[SimRequest, int]]
    ) -> list[tuple[SimRequest, int]]:
        """Admit waiting requests in arrival order within ``budget`` more tokens, after ``items``."""
        encode = max(self.encoder_budget, 0)
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            resumed = req.computed == 0 and req in self._kept
            if resumed:
                req.computed = req.cached_tokens = self._resume(req)
            elif req.computed == 0:
                req.computed = req.cached_tokens = self._prefix_hit(req)
            n = min(req.total_len - req.computed, budget)
            # Without chunking (and for an encoder-decoder request) the whole prompt runs in
            # one step; an encoder-decoder request's clip is encoded within what is left of
            # this step's encoder budget.
            whole = req.encoder_positions or not self.chunked_prefill
            if (
                (whole and n < req.total_len - req.computed)
                or (req.encoder_positions and req.encoder_positions > encode)
                or not self._grow(req, req.computed + n, n)
            ):
                if resumed:
                    self._unresume(req)
                    req.computed = req.cached_tokens = 0
                break
            if req.encoder_positions:
                encode -= req.encoder_positions
            self.waiting.popleft()
            if req.admitted is None:
                req.admitted = now
            self.running.append(req)
            items.append((req, n))
            budget -= n
        return items

    def _cost(self, items: list[tuple[SimRequest, int]]) -> StepCost:
        tokens = attended = kv = win = clips = cross = decoding = windowed = 0
        w = self.window
        for req, n in items:
            end = req.computed + n
            tokens += n
            kv += end
            if w and self.chunked:
                win += (end - 1) % w + 1
                windowed += chunk_pairs(req.computed, n, w)
            elif w:
                win += min(end, w)
                windowed += window_pairs(req.computed, n, w)
            # Each new token attends over the context before it (causal).
            pairs = n * req.computed + n * (n + 1) // 2
            attended += pairs
            if n == 1:
                decoding += pairs
            if req.encoder_positions:
                cross += req.encoder_positions
                if req.computed == 0:  # admitted now: its clip is encoded in this step
                    clips += 1
        return StepCost(len(items), tokens, attended, kv, win, clips, cross, decoding, windowed)

    def complete(self, batch: Batch, now: float) -> list[SimRequest]:
        """Apply a finished step at time ``now``: tokens out, requests done."""
        finished = []
        for req, n in batch.items:
            req.computed += n
            if req.computed < req.total_len:
                continue  # a prefill chunk that did not reach the end of the prompt
            if req.last_token is not None:
                req.itl.append(now - req.last_token)
            else:
                req.first_token = now
            req.last_token = now
            req.generated += 1
            if req.computed >= req.prompt_len and req.generated == 1:
                self._remember(req)
            if req.generated >= req.max_tokens:
                req.finished = now
                finished.append(req)
        if finished:
            done = set(map(id, finished))
            self.running = [r for r in self.running if id(r) not in done]
            for req in finished:
                self._free(req)
        return finished

    def abort(self, req: SimRequest) -> None:
        """Drop a request (its client went away); its blocks are freed."""
        if req in self.running:
            self.running.remove(req)
            self._free(req)
        elif req in self.waiting:
            self.waiting.remove(req)
            kept = self._kept.pop(req, 0)
            self._kept_total -= kept
