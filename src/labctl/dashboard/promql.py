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
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
import math
import re

LOOKBACK = 300.0

Labels = tuple[tuple[str, str], ...]
Vector = list[tuple[Labels, float]]
Value = Vector | float


class PromQLError(ValueError):
    pass


# -- store -----------------------------------------------------------------------------


class Series:
    """One series' samples in time order; a NaN value is a staleness marker.

    ``resets[i]`` is the sum of the values before each counter reset up to sample ``i``,
    so the increase between two samples is a subtraction, and ``marks[i]`` counts the
    markers up to ``i``: ``rate`` and ``increase`` cost two bisections, not a scan.
    """

    __slots__ = ("last", "marks", "marks_base", "resets", "stale", "times", "values")

    def __init__(self) -> None:
        self.times = array("d")
        self.values = array("d")
        self.resets = array("d")
        self.marks = array("q")
        self.marks_base = 0
        self.last: float | None = None
        self.stale = False

    def append(self, t: float, value: float) -> None:
        if self.times and t <= self.times[-1]:
            return  # samples only move forward (a clock stepped back is ignored)
        if math.isnan(value):
            self.mark_stale(t)
            return
        offset = self.resets[-1] if self.resets else 0.0
        if self.last is not None and value < self.last:
            offset += self.last
        self.times.append(t)
        self.values.append(value)
        self.resets.append(offset)
        self.marks.append(self.marks[-1] if self.marks else self.marks_base)
        self.last, self.stale = value, False

    def mark_stale(self, t: float) -> None:
        if self.stale or not self.times or t <= self.times[-1]:
            return
        self.times.append(t)
        self.values.append(math.nan)
        self.resets.append(self.resets[-1])
        self.marks.append(self.marks[-1] + 1)
        self.stale = True

    def trim(self, keep_from: int) -> None:
        if keep_from <= 0:
            return
        self.marks_base = self.marks[keep_from - 1]
        for arr in (self.times, self.values, self.resets, self.marks):
            del arr[:keep_from]


class Store:
    """Samples of the metrics named in ``names`` (all when ``None``) for ``retention`` seconds."""

    def __init__(self, retention: float = 3900.0, names: set[str] | None = None) -> None:
        self.retention = retention
        self.names = names
        self.series: dict[str, dict[Labels, Series]] = {}

    def add(
        self,
        t: float,
        samples: Iterable[tuple[str, dict[str, str], float]],
        mark_missing: bool = True,
    ) -> None:
        """One scrape at ``t``; with ``mark_missing``, the series it lacks are stale from ``t``
        on, as Prometheus marks them."""
        seen: set[int] = set()
        for name, labels, value in samples:
            if self.names is not None and name not in self.names:
                continue
            by_labels = self.series.setdefault(name, {})
            key = tuple(sorted(labels.items()))
            s = by_labels.get(key)
            if s is None:
                s = by_labels[key] = Series()
            s.append(t, value)
            seen.add(id(s))
        if mark_missing:
            for by_labels in self.series.values():
                for s in by_labels.values():
                    if id(s) not in seen:
                        s.mark_stale(t)
        self._trim(t)

    def _trim(self, now: float) -> None:
        cutoff = now - self.retention
        for name, by_labels in list(self.series.items()):
            for key, s in list(by_labels.items()):
                if s.times and s.times[0] < cutoff:
                    if s.times[-1] < cutoff:
                        del by_labels[key]
                        continue
                    # Trim in bulk (a tenth of the retention at a time), not every sample.
                    if s.times[0] < cutoff - self.retention / 10:
                        s.trim(bisect_right(s.times, cutoff))
            if not by_labels:
                del self.series[name]

    def matching(self, name: str, matchers: tuple[Matcher, ...]) -> Iterable[tuple[Labels, Series]]:
        for key, s in self.series.get(name, {}).items():
            labels = dict(key)
            if all(m.matches(labels.get(m.label, "")) for m in matchers):
                yield key, s


# -- syntax ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str

    def matches(self, actual: str) -> bool:
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = re.fullmatch(self.value, actual) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[Matcher, ...]
    range: float | None = None
    offset: float = 0.0


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Aggregate:
    op: str
    by: tuple[str, ...] | None
    without: tuple[str, ...] | None
    arg: Node


@dataclass(frozen=True)
class Binary:
    op: str
    left: Node
    right: Node
    on: tuple[str, ...] | None = None
    ignoring: tuple[str, ...] | None = None
    bool_: bool = False


Node = Number | Selector | Call | Aggregate | Binary

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?)(?P<unit>ms|s|m|h|d|w|y)?(?![\w:])"
    r"|(?P<str>\"(?:[^\"\\]|\\.)*\")|(?P<id>[A-Za-z_:][\w:]*)"
    r"|(?P<op>=~|!~|==|!=|>=|<=|[-+*/(){}\[\],=<>^%]))"
)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_RANGE_FUNCS = {"rate", "increase", "delta", "avg_over_time", "max_over_time", "min_over_time"}
_FUNCS = _RANGE_FUNCS | {"histogram_quantile", "abs", "clamp_min", "clamp_max", "vector", "scalar"}
_AGGS = {"sum", "avg", "min", "max", "count"}
_PRECEDENCE = [("or",), ("and", "unless"), ("==", "!=", ">", "<", ">=", "<="), ("+", "-"),
               ("*", "/", "%")]  # fmt: skip


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", text.strip())
    if not m:
        raise PromQLError(f"{text!r} is not a duration such as 30s, 5m or 1h")
    return float(m.group(1)) * _UNITS[m.group(2)]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m:
                raise PromQLError(f"cannot read {text[pos : pos + 20]!r} in {text!r}")
            pos = m.end()
            if m.group("num") is not None:
                self.tokens.append(("num", m.group("num") + (m.group("unit") or "")))
            elif m.group("str") is not None:
                self.tokens.append(("str", m.group("str")[1:-1].replace('\\"', '"')))
            elif m.group("id") is not None:
                self.tokens.append(("id", m.group("id")))
            else:
                self.tokens.append(("op", m.group("op")))
        self.i = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else ("end", "")

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise PromQLError(
                f"expected {value!r} but found {tok[1] or 'the end'!r} in {self.text!r}"
            )
        self.i += 1
        return tok

    def labels(self) -> tuple[str, ...]:
        self.take("(")
        out = []
        while self.peek()[1] != ")":
            out.append(self.take()[1])
            if self.peek()[1] == ",":
                self.take()
        self.take(")")
        return tuple(out)

    def parse(self) -> Node:
        node = self.binary(0)
        if self.peek()[0] != "end":
            raise PromQLError(f"unexpected {self.peek()[1]!r} in {self.text!r}")
        return node

    def binary(self, level: int) -> Node:
        if level == len(_PRECEDENCE):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek()[1] in _PRECEDENCE[level]:
            op = self.take()[1]
            bool_ = False
            on = ignoring = None
            if self.peek()[1] == "bool":
                self.take()
                bool_ = True
            if self.peek()[1] == "on":
                self.take()
                on = self.labels()
            elif self.peek()[1] == "ignoring":
                self.take()
                ignoring = self.labels()
            right = self.binary(level + 1)
            left = Binary(op, left, right, on, ignoring, bool_)
        return left

    def unary(self) -> Node:
        if self.peek()[1] == "-":
            self.take()
            return Binary("*", Number(-1.0), self.unary())
        return self.primary()

    def primary(self) -> Node:
        kind, value = self.peek()
        if kind == "num":
            self.take()
            return Number(float(value))
        if value == "(":
            self.take()
            node = self.binary(0)
            self.take(")")
            return node
        if kind != "id":
            raise PromQLError(f"unexpected {value or 'end'!r} in {self.text!r}")
        if value in _AGGS and self.peek(1)[1] in ("(", "by", "without"):
            self.take()
            by = without = None
            if self.peek()[1] == "by":
                self.take()
                by = self.labels()
            elif self.peek()[1] == "without":
                self.take()
                without = self.labels()
            self.take("(")
            arg = self.binary(0)
            self.take(")")
            if self.peek()[1] in ("by", "without"):
                which = self.take()[1]
                if which == "by":
                    by = self.labels()
                else:
                    without = self.labels()
            if by is None and without is None:
                by = ()
            return Aggregate(value, by, without, arg)
        if value in _FUNCS and self.peek(1)[1] == "(":
            self.take()
            self.take("(")
            args = []
            while self.peek()[1] != ")":
                args.append(self.binary(0))
                if self.peek()[1] == ",":
                    self.take()
            self.take(")")
            if value in _RANGE_FUNCS and not (isinstance(args[0], Selector) and args[0].range):
                raise PromQLError(f"{value}() takes a range selector such as x[5m]")
            return Call(value, tuple(args))
        return self.selector()

    def selector(self) -> Selector:
        name = self.take()[1]
        matchers: list[Matcher] = []
        if self.peek()[1] == "{":
            self.take()
            while self.peek()[1] != "}":
                label = self.take()[1]
                op = self.take()[1]
                if op not in ("=", "!=", "=~", "!~"):
                    raise PromQLError(f"{op!r} is not a label matcher in {self.text!r}")
                kind, text = self.take()
                if kind != "str":
                    raise PromQLError(f"label values are quoted strings in {self.text!r}")
                matchers.append(Matcher(label, op, text))
                if self.peek()[1] == ",":
                    self.take()
            self.take("}")
        rng = None
        if self.peek()[1] == "[":
            self.take()
            rng = parse_duration(self.take()[1])
            self.take("]")
        offset = 0.0
        if self.peek()[1] == "offset":
            self.take()
            offset = parse_duration(self.take()[1])
        return Selector(name, tuple(matchers), rng, offset)


_CACHE: dict[str, Node] = {}


def parse(text: str) -> Node:
    node = _CACHE.get(text)
    if node is None:
        node = _CACHE[text] = _Parser(text).parse()
    return node


def metric_names(text: str) -> set[str]:
    """Every metric an expression reads."""
    out: set[str] = set()

    def walk(n: Node) -> None:
        if isinstance(n, Selector):
            out.add(n.name)
        elif isinstance(n, Call):
            for a in n.args:
                walk(a)
        elif isinstance(n, Aggregate):
            walk(n.arg)
        elif isinstance(n, Binary):
            walk(n.left)
            walk(n.right)

    walk(parse(text))
    return out


# -- evaluation ------------------------------------------------------------------------


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
