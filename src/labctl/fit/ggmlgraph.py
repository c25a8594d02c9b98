"""ggml's compute graphs and graph allocator, enough to size a compute buffer.

ggml engines (whisper.cpp, llama.cpp) build each forward pass as a graph of
tensors and reserve one compute buffer per graph at load time: ``ggml-alloc``
walks the graph's nodes in order, places every intermediate tensor in a
best-fit free list (reusing a parent's memory in place where the op allows),
frees a tensor when its last consumer has run, and the buffer is the high-water
mark of that walk. The size therefore depends on the order of the nodes and on
fragmentation, not only on the largest tensors, so it is computed here by
running the same walk over the same graph:

* :class:`Graph` builds tensors with the shapes, sources and view relations of
  ggml's constructors (``ggml_add``, ``ggml_mul_mat``, ``ggml_cpy``, …) and orders
  them as ``ggml_build_forward_expand`` does (depth first, sources in order);
* :func:`compute_buffer_bytes` replays ``ggml_gallocr``'s allocation (leafs and
  inputs first, in-place reuse of a sole-consumer parent of the same layout,
  best-fit free blocks with merging, the tail block growing the buffer).

Weights, KV caches and tensors that live in another graph's buffer are
*external*: they take no room in this buffer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
import math

#: Bytes per element of the unquantized types graphs produce.
TYPE_BYTES = {"f32": 4, "f16": 2, "i32": 4}
#: Ops ggml may compute into their first eligible parent's memory (``ggml_op_can_inplace``).
INPLACE_OPS = frozenset({"add", "mul", "scale", "unary", "soft_max"})
#: Alignment of the CPU backend's buffers (ggml's ``TENSOR_ALIGNMENT``).
CPU_ALIGNMENT = 32


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


@dataclass(eq=False)
class Tensor:
    """One ggml tensor as the allocator sees it (identity matters, not value)."""

    type: str
    ne: tuple[int, int, int, int]
    op: str = "none"
    src: list[Tensor | None] = field(default_factory=list)
    #: The tensor whose memory a view uses (its base, never another view).
    view_src: Tensor | None = None
    #: Memory owned elsewhere: weights, caches, another graph's buffer.
    external: bool = False
    is_input: bool = False
    is_output: bool = False

    @property
    def nbytes(self) -> int:
        return math.prod(self.ne) * TYPE_BYTES[self.type]

    @property
    def is_view(self) -> bool:
        return self.view_src is not None


def _ne(*dims: int) -> tuple[int, int, int, int]:
    padded = (*dims, 1, 1, 1, 1)
    return (padded[0], padded[1], padded[2], padded[3])


class Graph:
    """A ggml context and graph: tensor constructors plus forward expansion."""

    def __init__(self) -> None:
        self.nodes: list[Tensor] = []
        self.leafs: list[Tensor] = []
        self._visited: set[int] = set()

    # -- tensors --------------------------------------------------------------

    @staticmethod
    def external(type_: str, *ne: int) -> Tensor:
        """A tensor whose data is already allocated (a weight, a cache, another buffer's)."""
        return Tensor(type_, _ne(*ne), external=True)

    @staticmethod
    def input(type_: str, *ne: int) -> Tensor:
        """A graph input (``ggml_set_input``): allocated in the buffer before any node."""
        return Tensor(type_, _ne(*ne), is_input=True)

    @staticmethod
    def _new(type_: str, ne: Sequence[int], op: str, *src: Tensor | None) -> Tensor:
        return Tensor(type_, _ne(*ne), op, list(src))

    @staticmethod
    def _view(a: Tensor, ne: Sequence[int], op: str, *src: Tensor | None) -> Tensor:
        base = a.view_src if a.view_src is not None else a
        return Tensor(a.type, _ne(*ne), op, list(src), view_src=base)

    def view_tensor(self, a: Tensor) -> Tensor:
        """``ggml_view_tensor``: a source-less view (a leaf of the graph)."""
        return self._view(a, a.ne, "none")

    def view(self, a: Tensor, *ne: int) -> Tensor:
        return self._view(a, ne, "view", a)

    def reshape(self, a: Tensor, *ne: int) -> Tensor:
        return self._view(a, ne, "reshape", a)

    def permute(self, a: Tensor, *axes: int) -> Tensor:
        ne = [0, 0, 0, 0]
        for i, axis in enumerate(axes):
            ne[axis] = a.ne[i]
        return self._view(a, ne, "permute", a)

    def transpose(self, a: Tensor) -> Tensor:
        return self._view(a, (a.ne[1], a.ne[0], a.ne[2], a.ne[3]), "transpose", a)

    def cpy(self, a: Tensor, b: Tensor) -> Tensor:
        """``ggml_cpy``: a view of the destination that copies ``a`` into it."""
        return self._view(b, b.ne, "cpy", a, b)

    def cast(self, a: Tensor, type_: str) -> Tensor:
        t = self._new(type_, a.ne, "cpy", a)
        t.src.append(t)  # ggml_cast names the result as its own second source
        return t

    def cont(self, a: Tensor, *ne: int) -> Tensor:
        return self._new(a.type, ne or a.ne, "cont", a)

    def add(self, a: Tensor, b: Tensor) -> Tensor:
        return self._new(a.type, a.ne, "add", a, b)

    def mul(self, a: Tensor, b: Tensor) -> Tensor:
        return self._new(a.type, a.ne, "mul", a, b)

    def scale(self, a: Tensor) -> Tensor:
        return self._new(a.type, a.ne, "scale", a)

    def norm(self, a: Tensor) -> Tensor:
        return self._new(a.type, a.ne, "norm", a)

    def gelu(self, a: Tensor) -> Tensor:
        return self._new(a.type, a.ne, "unary", a)

    def soft_max(self, a: Tensor, mask: Tensor | None = None) -> Tensor:
        return self._new(a.type, a.ne, "soft_max", a, mask)

    def mul_mat(self, a: Tensor, b: Tensor) -> Tensor:
        return self._new("f32", (a.ne[1], b.ne[1], b.ne[2], b.ne[3]), "mul_mat", a, b)

    def get_rows(self, a: Tensor, b: Tensor) -> Tensor:
        return self._new("f32", (a.ne[0], b.ne[0], b.ne[1], b.ne[2]), "get_rows", a, b)

    def flash_attn(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return self._new(
            "f32", (v.ne[0], q.ne[2], q.ne[1], q.ne[3]), "flash_attn_ext", q, k, v, mask
        )

    def conv_1d_ph(self, kernel: Tensor, b: Tensor, stride: int) -> Tensor:
        """``ggml_conv_1d_ph``: im2col to f16, a matrix product, a reshape."""
        k, pad = kernel.ne[0], kernel.ne[0] // 2
        out_len = (b.ne[0] + 2 * pad - (k - 1) - 1) // stride + 1
        im2col = self._new("f16", (kernel.ne[1] * k, out_len, b.ne[2], 1), "im2col", kernel, b)
        cols = self.reshape(im2col, im2col.ne[0], im2col.ne[2] * im2col.ne[1])
        weight = self.reshape(kernel, k * kernel.ne[1], kernel.ne[2])
        out = self.mul_mat(cols, weight)
        return self.reshape(out, im2col.ne[1], kernel.ne[2], im2col.ne[2])

    # -- graph ------------------------------------------------------------------

    def expand(self, t: Tensor) -> None:
        """``ggml_build_forward_expand``: add ``t`` and its unvisited ancestors, depth first."""
        stack: list[tuple[Tensor, int]] = [(t, 0)]
        if id(t) in self._visited:
            return
        self._visited.add(id(t))
        while stack:
            node, i = stack.pop()
            while i < len(node.src):
                s = node.src[i]
                i += 1
                if s is not None and id(s) not in self._visited:
                    self._visited.add(id(s))
                    stack.append((node, i))
                    stack.append((s, 0))
                    break
            else:
                (self.leafs if node.op == "none" else self.nodes).append(node)


@dataclass
class _Slot:
    n_children: int = 0
    n_views: int = 0
    allocated: bool = False
    offset: int = 0


class _FreeList:
    """``ggml_dyn_tallocr`` for one chunk: free blocks sorted by offset, the last one
    the unbounded tail."""

    def __init__(self, alignment: int) -> None:
        self.alignment = alignment
        self.blocks: list[list[int]] = [[0, 1 << 62]]
        self.max_size = 0

    def alloc(self, size: int) -> int:
        size = _pad(size, self.alignment)
        best, best_size = -1, 1 << 63
        for i, (_, bsize) in enumerate(self.blocks[:-1]):
            if size <= bsize <= best_size:
                best, best_size = i, bsize
        if best == -1:
            best = len(self.blocks) - 1  # the tail grows the buffer
        block = self.blocks[best]
        offset = block[0]
        block[0] += size
        block[1] -= size
        if block[1] == 0:
            del self.blocks[best]
        self.max_size = max(self.max_size, offset + size)
        return offset

    def free(self, offset: int, size: int) -> None:
        size = _pad(size, self.alignment)
        for i, block in enumerate(self.blocks):
            if block[0] + block[1] == offset:
                block[1] += size
                if i + 1 < len(self.blocks) and block[0] + block[1] == self.blocks[i + 1][0]:
                    block[1] += self.blocks[i + 1][1]
                    del self.blocks[i + 1]
                return
            if offset + size == block[0]:
                block[0] = offset
                block[1] += size
                if i > 0 and self.blocks[i - 1][0] + self.blocks[i - 1][1] == block[0]:
                    self.blocks[i - 1][1] += block[1]
                    del self.blocks[i]
                return
        at = 0
        while at < len(self.blocks) and self.blocks[at][0] < offset:
            at += 1
        self.blocks.insert(at, [offset, size])


def compute_buffer_bytes(graph: Graph, alignment: int = CPU_ALIGNMENT) -> int:
    """The compute buffer ``ggml_gallocr`` reserves for ``graph`` on one backend."""
    slots: dict[int, _Slot] = {}
    free = _FreeList(alignment)

    def slot(t: Tensor) -> _Slot:
        return slots.setdefault(id(t), _Slot())

    def allocate(node: Tensor) -> None:
        s = slot(node)
        if node.external or s.allocated or node.is_view:
            return
        s.allocated = True
        if node.op in INPLACE_OPS:
            for parent in node.src:
                if parent is None:
                    continue
                p = slot(parent)
                # Only a tensor this buffer owns (never a view), not an output, laid out
                # alike and read by nobody else can be overwritten.
                if not p.allocated or parent.is_output:
                    continue
                if parent.type != node.type or parent.ne != node.ne:
                    continue
                if p.n_children == 1 and p.n_views == 0:
                    s.offset = p.offset
                    p.allocated = False
                    return
        s.offset = free.alloc(node.nbytes)

    def release(node: Tensor) -> None:
        if node.is_output:
            return
        s = slot(node)
        free.free(s.offset, node.nbytes)
        s.allocated = False

    for leaf in graph.leafs:
        allocate(leaf)
    for node in graph.nodes:
        if node.view_src is not None and node.op != "none":
            slot(node.view_src).n_views += 1
        if node.is_input:
            allocate(node)
        for src in node.src:
            if src is None:
                continue
            slot(src).n_children += 1
            if src.is_input:
                allocate(src)
    for node in graph.nodes:
        for parent in node.src:
            if parent is not None:
                allocate(parent)
        allocate(node)
        for parent in node.src:
            if parent is None:
                continue
            p = slot(parent)
            p.n_children -= 1
            if p.n_children or p.n_views:
                continue
            if parent.view_src is not None:
                base = slot(parent.view_src)
                base.n_views -= 1
                if base.n_views == 0 and base.n_children == 0 and base.allocated:
                    release(parent.view_src)
            elif p.allocated:
                release(parent)
    return free.max_size
