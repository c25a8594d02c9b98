"""The syntax of the PromQL subset: its tokens, its parser and the tree it builds.

Parsing is kept apart from evaluation so that code which only reads expressions
(``labctl export`` checking durations, :func:`metric_names` choosing which metrics the
sample store keeps) needs neither the store nor the evaluator; :mod:`labctl.dashboard.promql`
evaluates the trees built here.
"""

from __future__ import annotations

from dataclasses import dataclass
import re


class PromQLError(ValueError):
    pass


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
