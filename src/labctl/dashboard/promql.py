"""The part of PromQL the lab's alert rules and panels use, evaluated over the daemon's own samples.

The daemon keeps an hour of its own metrics in a :class:`Store` and evaluates the
shipped rules and dashboard queries itself with :func:`evaluate`, so the built-in
page and ``labctl status`` show the same alerts a Prometheus with the exported
rules fires. The subset: instant selectors with ``= != =~ !~`` matchers, range
selectors under ``rate``, ``increase``, ``delta``, ``avg_over_time`` and
``max_over_time``; ``offset``; ``histogram_quantile``; ``sum``, ``avg``, ``min``, ``max`` and
``count`` with ``by``/``without``; arithmetic and comparisons (vector–scalar and
one-to-one vector–vector, with ``on``/``ignoring``); ``and``, ``or``, ``unless``.
Semantics follow Prometheus's: counter resets in ``rate``/``increase``, their
extrapolation to the window's edges, a five-minute lookback for instant
selectors, and bucket interpolation in ``histogram_quantile``.

The syntax and parser live in :mod:`labctl.dashboard.query` and the sample store in
:mod:`labctl.dashboard.samples`; this module evaluates, and re-exports their names so
callers import the subset from one place.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
import math

from labctl.dashboard.query import (
    _RANGE_FUNCS,
    Aggregate,
    Binary,
    Call,
    Matcher,
    Node,
    Number,
    PromQLError,
    Selector,
    metric_names,
    parse,
    parse_duration,
)
from labctl.dashboard.samples import Labels, Series, Store

__all__ = [
    "LOOKBACK",
    "Aggregate",
    "Binary",
    "Cache",
    "Call",
    "Labels",
    "Matcher",
    "Node",
    "Number",
    "PromQLError",
    "Selector",
    "Series",
    "Store",
    "Value",
    "Vector",
    "evaluate",
    "metric_names",
    "parse",
    "parse_duration",
]

LOOKBACK = 300.0

Vector = list[tuple[Labels, float]]
Value = Vector | float


Cache = dict[tuple[str, Selector, float], Vector]


def evaluate(text: str, store: Store, t: float, cache: Cache | None = None) -> Value:
    """The value of ``text`` at ``t``. ``cache`` shares range-function results between the
    expressions evaluated at the same ``t`` (the rules and panels of one tick)."""
    return _eval(parse(text), store, t, cache)


def _drop_name(labels: Labels) -> Labels:
    return tuple(kv for kv in labels if kv[0] != "__name__")


def _instant(store: Store, sel: Selector, t: float) -> Vector:
    t -= sel.offset
    out: Vector = []
    for key, s in store.matching(sel.name, sel.matchers):
        i = bisect_right(s.times, t) - 1
        if i >= 0 and s.times[i] > t - LOOKBACK and not math.isnan(s.values[i]):
            out.append(((("__name__", sel.name), *key), s.values[i]))
    return out


def _extrapolated(s: Series, start: float, end: float, kind: str) -> float | None:
    """Prometheus's extrapolatedRate over the samples in (start, end]: the increase (with
    counter resets) between the first and last sample, stretched to the window's edges."""
    times, values = s.times, s.values
    lo, hi = bisect_right(times, start), bisect_right(times, end)
    first, last = lo, hi - 1
    while first <= last and math.isnan(values[first]):
        first += 1
    while last >= first and math.isnan(values[last]):
        last -= 1
    if last <= first:
        return None
    before = s.marks[lo - 1] if lo > 0 else s.marks_base
    count = (hi - lo) - (s.marks[hi - 1] - before)
    v0 = values[first]
    result = values[last] - v0
    if kind != "delta":
        result += s.resets[last] - s.resets[first]
    sampled = times[last] - times[first]
    average = sampled / (count - 1)
    to_start, to_end = times[first] - start, end - times[last]
    threshold = average * 1.1
    if kind != "delta" and result > 0 and v0 >= 0:
        to_start = min(to_start, sampled * (v0 / result))
    extend = sampled
    extend += to_start if to_start < threshold else average / 2
    extend += to_end if to_end < threshold else average / 2
    result *= extend / sampled
    if kind == "rate":
        result /= end - start
    return result


def _range_call(func: str, sel: Selector, store: Store, t: float) -> Vector:
    assert sel.range is not None
    t -= sel.offset
    start = t - sel.range
    out: Vector = []
    for key, s in store.matching(sel.name, sel.matchers):
        value: float | None
        if func in ("rate", "increase", "delta"):
            value = _extrapolated(s, start, t, func)
        else:
            lo, hi = bisect_right(s.times, start), bisect_right(s.times, t)
            vs = [v for v in s.values[lo:hi] if not math.isnan(v)]
            if not vs:
                value = None
            elif func == "avg_over_time":
                value = sum(vs) / len(vs)
            elif func == "max_over_time":
                value = max(vs)
            else:
                value = min(vs)
        if value is not None:
            out.append((key, value))
    return out


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's bucketQuantile over (upper bound, cumulative count) pairs."""
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets.sort()
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]):
        return math.nan
    # Cumulative counts must not decrease (rates of different buckets can jitter).
    for i in range(1, len(buckets)):
        if buckets[i][1] < buckets[i - 1][1]:
            buckets[i] = (buckets[i][0], buckets[i - 1][1])
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    if math.isnan(total):
        return math.nan
    rank = q * total
    b = next((i for i, (_, c) in enumerate(buckets) if c >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0]
    start, count_before = (0.0, 0.0) if b == 0 else buckets[b - 1]
    end, count = buckets[b]
    if count == count_before:
        return end
    return start + (end - start) * (rank - count_before) / (count - count_before)


def _group_key(
    labels: Labels, by: tuple[str, ...] | None, without: tuple[str, ...] | None
) -> Labels:
    if by is not None:
        return tuple(kv for kv in labels if kv[0] in by)
    drop = set(without or ()) | {"__name__"}
    return tuple(kv for kv in labels if kv[0] not in drop)


def _aggregate(op: str, values: list[float]) -> float:
    if op == "sum":
        return sum(values)
    if op == "avg":
        return sum(values) / len(values)
    if op == "min":
        return min(values)
    if op == "max":
        return max(values)
    return float(len(values))


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, ">": lambda a, b: a > b,
    "<": lambda a, b: a < b, ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b,
}  # fmt: skip
_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b else (math.nan if a == 0 else math.copysign(math.inf, a)),
    "%": lambda a, b: math.fmod(a, b) if b else math.nan,
}  # fmt: skip


def _signature(
    labels: Labels, on: tuple[str, ...] | None, ignoring: tuple[str, ...] | None
) -> Labels:
    if on is not None:
        return tuple(kv for kv in labels if kv[0] in on)
    drop = set(ignoring or ()) | {"__name__"}
    return tuple(kv for kv in labels if kv[0] not in drop)


def _result_labels(labels: Labels, n: Binary, compare: bool) -> Labels:
    """Prometheus's resultMetric for one-to-one matching: the left side's labels, without the
    name for arithmetic and ``bool``, only the ``on`` labels or without the ``ignoring`` ones."""
    if not compare or n.bool_:
        labels = _drop_name(labels)
    if n.on is not None:
        return tuple(kv for kv in labels if kv[0] in n.on)
    if n.ignoring:
        return tuple(kv for kv in labels if kv[0] not in n.ignoring)
    return labels


def _binary(n: Binary, store: Store, t: float, cache: Cache | None) -> Value:
    left, right = _eval(n.left, store, t, cache), _eval(n.right, store, t, cache)
    op = n.op
    if op in ("and", "or", "unless"):
        if not isinstance(left, list) or not isinstance(right, list):
            raise PromQLError(f"{op} takes vectors on both sides")
        rsigs = {_signature(k, n.on, n.ignoring) for k, _ in right}
        if op == "and":
            return [(k, v) for k, v in left if _signature(k, n.on, n.ignoring) in rsigs]
        if op == "unless":
            return [(k, v) for k, v in left if _signature(k, n.on, n.ignoring) not in rsigs]
        lsigs = {_signature(k, n.on, n.ignoring) for k, _ in left}
        return left + [(k, v) for k, v in right if _signature(k, n.on, n.ignoring) not in lsigs]
    compare = op in _COMPARE
    fn_c, fn_a = _COMPARE.get(op), _ARITH.get(op)
    if isinstance(left, float) and isinstance(right, float):
        if compare:
            assert fn_c is not None
            return 1.0 if fn_c(left, right) else 0.0
        assert fn_a is not None
        return fn_a(left, right)
    pairs: list[tuple[Labels, float, float, float]] = []  # labels, left, right, value kept
    if isinstance(left, list) and isinstance(right, list):
        index: dict[Labels, float] = {}
        for k, v in right:
            sig = _signature(k, n.on, n.ignoring)
            if sig in index:
                raise PromQLError(f"many-to-many matching is not allowed ({op}): labels {dict(sig)} "
                                  "repeat on the right")  # fmt: skip
            index[sig] = v
        matched: set[Labels] = set()
        for k, v in left:
            sig = _signature(k, n.on, n.ignoring)
            if sig not in index:
                continue
            if sig in matched:
                raise PromQLError(f"multiple matches for labels {dict(sig)} ({op}): many-to-one "
                                  "matching is not supported")  # fmt: skip
            matched.add(sig)
            pairs.append((_result_labels(k, n, compare), v, index[sig], v))
    elif isinstance(left, list):
        assert isinstance(right, float)
        pairs = [(k if compare and not n.bool_ else _drop_name(k), v, right, v) for k, v in left]
    else:
        assert isinstance(right, list) and isinstance(left, float)
        pairs = [(k if compare and not n.bool_ else _drop_name(k), left, v, v) for k, v in right]
    out: Vector = []
    for labels, a, b, kept in pairs:
        if compare:
            assert fn_c is not None
            hit = fn_c(a, b)
            if n.bool_:
                out.append((_drop_name(labels), 1.0 if hit else 0.0))
            elif hit:
                out.append((labels, kept))
        else:
            assert fn_a is not None
            out.append((labels, fn_a(a, b)))
    return out


def _eval(n: Node, store: Store, t: float, cache: Cache | None = None) -> Value:
    if isinstance(n, Number):
        return n.value
    if isinstance(n, Selector):
        if n.range is not None:
            raise PromQLError(f"a range selector {n.name}[…] needs a function such as rate()")
        return _instant(store, n, t)
    if isinstance(n, Binary):
        return _binary(n, store, t, cache)
    if isinstance(n, Aggregate):
        vec = _eval(n.arg, store, t, cache)
        if not isinstance(vec, list):
            raise PromQLError(f"{n.op}() takes a vector")
        groups: dict[Labels, list[float]] = {}
        for k, v in vec:
            groups.setdefault(_group_key(k, n.by, n.without), []).append(v)
        return [(k, _aggregate(n.op, vs)) for k, vs in groups.items()]
    func, args = n.func, n.args
    if func in _RANGE_FUNCS:
        sel = args[0]
        assert isinstance(sel, Selector)
        if cache is None:
            return _range_call(func, sel, store, t)
        memo = (func, sel, t)
        if memo not in cache:
            cache[memo] = _range_call(func, sel, store, t)
        return cache[memo]
    if func == "histogram_quantile":
        q = _eval(args[0], store, t, cache)
        vec = _eval(args[1], store, t, cache)
        if not isinstance(q, float) or not isinstance(vec, list):
            raise PromQLError("histogram_quantile(q, vector) takes a number and a vector")
        hist: dict[Labels, list[tuple[float, float]]] = {}
        for k, v in vec:
            le = dict(k).get("le")
            if le is None:
                continue
            key = tuple(kv for kv in k if kv[0] not in ("le", "__name__"))
            hist.setdefault(key, []).append((float(le), v))
        return [(k, _quantile(q, b)) for k, b in hist.items()]
    if func in ("abs", "clamp_min", "clamp_max"):
        vec = _eval(args[0], store, t, cache)
        if not isinstance(vec, list):
            raise PromQLError(f"{func}() takes a vector")
        if func == "abs":
            return [(_drop_name(k), abs(v)) for k, v in vec]
        bound = _eval(args[1], store, t, cache)
        assert isinstance(bound, float)
        pick = max if func == "clamp_min" else min
        return [(_drop_name(k), pick(v, bound)) for k, v in vec]
    if func == "vector":
        value = _eval(args[0], store, t, cache)
        assert isinstance(value, float)
        return [((), value)]
    vec = _eval(args[0], store, t, cache)  # scalar()
    if not isinstance(vec, list):
        return vec
    return vec[0][1] if len(vec) == 1 else math.nan
