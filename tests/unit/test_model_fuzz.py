"""Property and fuzz tests: whatever a model file holds, ``resolve()`` then ``plan()``
give a plan or a :class:`LabError` with a one-line message, never another exception,
within a time and memory bound.

Three families of input: real catalog config.json documents with numeric fields
pushed to extremes, keys dropped and deep nesting added; safetensors headers, valid
and broken; GGUF files written by the ``gguf`` package and then corrupted, and GGUF
files built from raw bytes with hostile counts, types and nesting.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import copy
from dataclasses import dataclass
import json
import math
from pathlib import Path
import struct
import tempfile
import time
import tracemalloc
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
import pytest
from tests.hostile_models import (
    GGUF_ARRAY,
    GGUF_SCALARS,
    GGUF_STRING,
    config_text_dir,
    deep_json,
    gguf_array_header,
    gguf_file,
    gguf_kv,
    gguf_scalar,
    gguf_string,
    gguf_u32,
    safetensors_dir,
)
from tests.tinymodels import TINY_LLAMA, write_gguf

from labctl.catalog.gguf import read_gguf
from labctl.catalog.gpus import gpu
from labctl.catalog.jsonfile import parse_json
from labctl.catalog.limits import LAYERS, LIMITS, MAX_JSON_DEPTH
from labctl.catalog.models import catalog, resolve
from labctl.errors import LabError, ModelFormatError
from labctl.fit.plan import FitRequest, FitResult, plan
from labctl.jsontext import nesting_depth

#: Bounds on one case: resolve and plan together, suggestions included.
SECONDS = 2.0
PEAK_BYTES = 200 * 2**20
#: A GPU most catalog models miss (so the suggestions run) and one they fit.
REQUESTS = {name: FitRequest.on_gpu(gpu(name)) for name in ("rtx-3090", "b200")}
CONFIGS = {e.id: e.config for e in catalog()}


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh directory per example (Hypothesis reruns a test body many times)."""
    with tempfile.TemporaryDirectory(prefix="labctl-fuzz-") as d:
        yield Path(d)


def _run(model: Path, gpu_name: str) -> FitResult | LabError:
    try:
        return plan(resolve(str(model)), REQUESTS[gpu_name])
    except LabError as exc:
        return exc


def outcome(model: Path, gpu_name: str = "rtx-3090") -> FitResult | LabError:
    """Resolve and plan ``model``, checking the bounds every input must keep.

    Time is measured on a plain run and memory on a second, traced one: tracemalloc
    slows allocation-heavy work (parsing JSON) five to ten times.
    """
    start = time.perf_counter()
    result = _run(model, gpu_name)
    elapsed = time.perf_counter() - start
    tracemalloc.start()
    try:
        again = _run(model, gpu_name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert type(again) is type(result)
    if currently_in_test_context():  # shown by --hypothesis-show-statistics
        event("refused" if isinstance(result, LabError) else "planned")
    if isinstance(result, LabError):
        message = str(result)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        assert "Traceback" not in message
    else:
        assert result.weights_bytes >= 0 and result.max_model_len >= 1
    assert elapsed < SECONDS, f"{elapsed:.2f} s for {model}: {result}"
    assert peak < PEAK_BYTES, f"{peak / 2**20:.0f} MiB for {model}: {result}"
    return result


# --- (a) config.json documents --------------------------------------------------------

#: Values no count field should hold, and a few that are fine.
EXTREMES: list[object] = [0, -1, 1, 2, 3, 64, 1.5, -0.5, 2**31, 2**63, 10**6, 10**9, 10**30,
                          10**400, math.nan, math.inf, -math.inf, 1e308, True, False, None, "8",
                          "", [], {}, [1, 2], {"a": 1}, [[[]]]]  # fmt: skip

# Layer-like counts from 257 up to the bound are valid but cost a traced plan seconds;
# the regression tests time the bound itself untraced.
_LAYER_SAFE = st.one_of(
    st.integers(min_value=-(2**70), max_value=256),
    st.integers(min_value=LAYERS.high + 1, max_value=2**70),
)
_ANY_VALUE = st.one_of(
    st.sampled_from(EXTREMES),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.booleans(),
)


def _value_for(key: str) -> st.SearchStrategy[Any]:
    if LIMITS.get(key) is LAYERS:
        return st.one_of(st.sampled_from(EXTREMES), _LAYER_SAFE)
    return _ANY_VALUE


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path inside ``doc`` (lists are entered by index)."""
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for k, v in items:
        yield (*prefix, k)
        if isinstance(v, dict | list) and len(prefix) < 4:
            yield from _paths(v, (*prefix, k))


def _numeric_paths(doc: Any) -> list[tuple[Any, ...]]:
    out = []
    for path in _paths(doc):
        leaf = _get(doc, path)
        if isinstance(leaf, int | float) and not isinstance(leaf, bool):
            out.append(path)
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: object) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _drop(doc: Any, path: tuple[Any, ...]) -> None:
    parent = _get(doc, path[:-1])
    if isinstance(parent, dict):
        parent.pop(path[-1], None)
    else:
        parent.pop(path[-1])


@st.composite
def mutated_configs(draw: st.DrawFn) -> str:
    """A real catalog config.json with numeric fields pushed to extremes, keys dropped,
    fields added (nested deep, or of the wrong type)."""
    cfg = json.loads(json.dumps(CONFIGS[draw(st.sampled_from(sorted(CONFIGS)))]))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["number", "number", "number", "any", "drop", "add"]))
        numeric = _numeric_paths(cfg)
        # Drawn values are copied: later mutations must not change the strategies' own.
        if op == "number" and numeric:
            path = draw(st.sampled_from(numeric))
            _set(cfg, path, copy.deepcopy(draw(_value_for(str(path[-1])))))
        elif op == "any":
            path = draw(st.sampled_from(list(_paths(cfg)) or [("x",)]))
            _set(cfg, path, copy.deepcopy(draw(_value_for(str(path[-1])))))
        elif op == "drop" and cfg:
            _drop(cfg, draw(st.sampled_from(list(_paths(cfg)))))
        else:
            key = draw(st.sampled_from([*LIMITS, "nested", "rope_scaling", "layer_types"]))
            depth = draw(st.sampled_from([1, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH + 1, 2000]))
            value = draw(st.one_of(_value_for(key), st.just(json.loads(deep_json(min(depth, 60))))))
            target = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
            target[key] = copy.deepcopy(value)
            if depth > 60 and draw(st.booleans()):
                return json.dumps(cfg)[:-1] + f', "deep": {deep_json(depth)}}}'
    return json.dumps(cfg)


# too_slow is suppressed in the tests below: each example writes model files to disk and
# resolves and plans them under tracemalloc, which Hypothesis counts as slow generation.
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=mutated_configs(), gpu_name=st.sampled_from(sorted(REQUESTS)))
@example(
    text=json.dumps(CONFIGS["Qwen/Qwen3-0.6B"] | {"num_hidden_layers": 10**6}), gpu_name="rtx-3090"
)
@example(text=json.dumps(CONFIGS["Qwen/Qwen3-0.6B"] | {"head_dim": math.nan}), gpu_name="b200")
def test_resolve_config_mutations_plan_or_refuse_in_one_line(text: str, gpu_name: str) -> None:
    with scratch() as d:
        outcome(config_text_dir(d / "m", text), gpu_name)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"\xef\xbb\xbf{}",
        b"\xff\xfe\x00{",
        b'{"model_type": "llama", "hidden_size": ' + b"9" * 5000 + b"}",
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 99_999 + b"}",
        b'{"a": "' + b"[" * 1000 + b'"}',
        deep_json(100_000).encode(),
        b'{"model_type": "llama", "x": ' + b"1," * 600_000 + b"1}",
        b" " * (5 * 2**20),
        b'{"model_type": "llama"}',
        b'{"architectures": [{"a": 1}]}',
    ],
    ids=lambda raw: f"{len(raw)}B",
)
def test_resolve_raw_config_text_plans_or_refuses_in_one_line(tmp_path: Path, raw: bytes) -> None:
    result = outcome(config_text_dir(tmp_path / "m", raw))
    assert isinstance(result, ModelFormatError)


# --- (b) safetensors headers ----------------------------------------------------------


def _tiny_header() -> tuple[dict[str, Any], int]:
    """TINY_LLAMA's checkpoint header (F16) and the length of its data."""
    h, inter, vocab = (
        TINY_LLAMA["hidden_size"],
        TINY_LLAMA["intermediate_size"],
        TINY_LLAMA["vocab_size"],
    )
    kv = TINY_LLAMA["num_key_value_heads"] * h // TINY_LLAMA["num_attention_heads"]
    shapes: dict[str, list[int]] = {
        "model.embed_tokens.weight": [vocab, h],
        "model.norm.weight": [h],
        "lm_head.weight": [vocab, h],
    }
    for i in range(int(TINY_LLAMA["num_hidden_layers"])):
        p = f"model.layers.{i}"
        shapes |= {
            f"{p}.input_layernorm.weight": [h],
            f"{p}.self_attn.q_proj.weight": [h, h],
            f"{p}.self_attn.k_proj.weight": [kv, h],
            f"{p}.self_attn.v_proj.weight": [kv, h],
            f"{p}.self_attn.o_proj.weight": [h, h],
            f"{p}.mlp.gate_proj.weight": [inter, h],
            f"{p}.mlp.down_proj.weight": [h, inter],
        }
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape) * 2
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    return header, offset


TINY_HEADER, TINY_DATA = _tiny_header()
TINY_CONFIG = json.dumps(TINY_LLAMA)

_DIMS = st.one_of(
    st.integers(min_value=0, max_value=300),
    st.sampled_from([0, 1, 2**31, 2**36 + 1, 10**15, 2**64, -1, 1.0, 1.5, True, None, "8", [2]]),
)
_ENTRY_FIELDS = {
    "dtype": st.one_of(
        st.sampled_from(["F16", "BF16", "F8_E4M3", "F4", "I64", "Q4", "", "f16"]), _ANY_VALUE
    ),
    "shape": st.one_of(st.lists(_DIMS, max_size=20), _ANY_VALUE),
    "data_offsets": st.one_of(st.lists(_DIMS, min_size=0, max_size=3), _ANY_VALUE),
}


@dataclass(frozen=True)
class HeaderCase:
    """A safetensors file to write, kept small so Hypothesis can print it: the many extra
    tensors and the deep nesting are made when the file is written."""

    header: dict[str, Any]
    many: int = 0
    form: str = "keep"  # keep, deep, truncate, declare, short-data
    number: int = 0  # the depth, the declared length or the data length
    cut: float = 1.0  # where a truncated header ends, as a fraction

    def write(self, path: Path) -> None:
        raw = json.dumps(self.header).encode()
        if self.many:
            extra = ",".join(
                f'"t{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}'
                for i in range(self.many)
            )
            raw = raw[:-1] + b"," + extra.encode() + b"}"
        declared, data = len(raw), TINY_DATA
        if self.form == "deep":
            raw = deep_json(self.number).encode()
            declared = len(raw)
        elif self.form == "truncate":
            raw = raw[: int(self.cut * len(raw))]
            declared = len(raw) + self.number
        elif self.form == "declare":
            declared = self.number
        elif self.form == "short-data":
            data = self.number
        path.write_bytes(struct.pack("<Q", declared) + raw)
        with path.open("r+b") as fh:  # the data, as a sparse tail
            fh.truncate(8 + len(raw) + data)


@st.composite
def safetensors_cases(draw: st.DrawFn) -> HeaderCase:
    """TINY_LLAMA's header with entries broken, dropped, renamed or multiplied, then
    nested deep, truncated, given a wrong length or too little data."""
    header = json.loads(json.dumps(TINY_HEADER))
    names = [n for n in header if n != "__metadata__"]
    many = 0
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        op = draw(st.sampled_from(["field", "field", "drop", "rename", "metadata", "many"]))
        name = draw(st.sampled_from(names))
        if op == "field" and name in header:
            field = draw(st.sampled_from(sorted(_ENTRY_FIELDS)))
            header[name][field] = copy.deepcopy(draw(_ENTRY_FIELDS[field]))
        elif op == "drop":
            header.pop(name, None)
        elif op == "rename" and name in header:
            new = draw(
                st.sampled_from(
                    ["x" * 5000, "model.layers.99999999999999999999.mlp.up_proj.weight", "", "é"]
                )
            )
            header[new] = header.pop(name)
        elif op == "metadata":
            header["__metadata__"] = copy.deepcopy(draw(_ANY_VALUE))
        elif op == "many":
            many = draw(st.sampled_from([10, 1000, 20_000, 200_000]))
    form = draw(
        st.sampled_from(["keep", "keep", "keep", "deep", "truncate", "declare", "short-data"])
    )
    number = {
        "deep": st.sampled_from([MAX_JSON_DEPTH + 1, 50_000]),
        "truncate": st.integers(min_value=0, max_value=64),
        "declare": st.sampled_from([0, 1, 7, 10**8, 10**8 + 1, 2**63, 2**64 - 1]),
        "short-data": st.integers(min_value=0, max_value=TINY_DATA),
    }.get(form, st.just(0))
    cut = draw(st.floats(min_value=0, max_value=1)) if form == "truncate" else 1.0
    return HeaderCase(header, many, form, draw(number), cut)


@settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=safetensors_cases())
def test_resolve_safetensors_headers_plan_or_refuse_in_one_line(case: HeaderCase) -> None:
    with scratch() as d:
        model = config_text_dir(d / "m", TINY_CONFIG)
        case.write(model / "model.safetensors")
        outcome(model)


def test_resolve_valid_safetensors_header_keeps_exact_bytes(tmp_path: Path) -> None:
    model = safetensors_dir(tmp_path / "m", json.dumps(TINY_HEADER).encode(), b"\0" * TINY_DATA)
    (model / "config.json").write_text(TINY_CONFIG)
    arch = resolve(str(model))
    assert sum(w.stored_bytes or 0 for w in arch.weights) == TINY_DATA


# --- (c) GGUF files -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    """A real GGUF file (written by the gguf package) and where its tensor data starts."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_gguf(path)
    return path.read_bytes(), read_gguf(path).data_offset


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_resolve_corrupted_gguf_plans_or_refuses_in_one_line(
    tiny_gguf: tuple[bytes, int], data: st.DataObject
) -> None:
    original, header_end = tiny_gguf
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        op = data.draw(st.sampled_from(["byte", "u64", "u32", "truncate"]))
        at = data.draw(st.integers(min_value=0, max_value=max(header_end - 8, 0)))
        if at >= len(raw):
            continue  # truncated before this point already
        if op == "byte":
            raw[at] = data.draw(st.integers(min_value=0, max_value=255))
        elif op == "u64":
            value = data.draw(
                st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**62, 2**64 - 1, 5000, 10**9])
            )
            raw[at : at + 8] = value.to_bytes(8, "little")
        elif op == "u32":
            value = data.draw(st.sampled_from([0, 1, 9, 13, 99, 2**31, 2**32 - 1]))
            raw[at : at + 4] = value.to_bytes(4, "little")
        else:  # bounds fixed by the original, not by earlier draws: every run draws alike
            del raw[min(data.draw(st.integers(min_value=0, max_value=len(original))), len(raw)) :]
    with scratch() as d:
        path = d / "m.gguf"
        path.write_bytes(bytes(raw))
        outcome(path)


#: The hyperparameters of a tiny llama GGUF.
GGUF_BASE = {"block_count": 2, "embedding_length": 64, "attention.head_count": 4,
             "attention.head_count_kv": 2, "context_length": 2048, "feed_forward_length": 128,
             "vocab_size": 256}  # fmt: skip
_GGUF_KEYS = ["block_count", "embedding_length", "attention.head_count", "attention.head_count_kv",
              "context_length", "feed_forward_length", "vocab_size", "attention.key_length",
              "attention.value_length", "attention.sliding_window", "attention.sliding_window_pattern",
              "expert_count", "expert_used_count", "rope.dimension_count"]  # fmt: skip


@st.composite
def gguf_values(draw: st.DrawFn, depth: int = 0) -> bytes:
    """An encoded GGUF value (type tag and payload), possibly hostile."""
    kind = draw(st.sampled_from(["scalar", "scalar", "string", "array", "unknown"]))
    if kind == "scalar":
        vtype = draw(st.sampled_from(sorted(GGUF_SCALARS)))
        value = draw(
            st.one_of(st.sampled_from([0, 1, 2, 64, 2**31, 2**63, -1]), st.floats(allow_nan=True))
        )
        return struct.pack("<I", vtype) + gguf_scalar(
            vtype, value if math.isfinite(value) or vtype in (6, 12) else 0
        )
    if kind == "string":
        return struct.pack("<I", GGUF_STRING) + gguf_string(draw(st.text(max_size=8)))
    if kind == "array" and depth < 3:
        count = draw(st.sampled_from([0, 1, 2, 3, 5000, 2**31, 2**63]))
        inner = [draw(gguf_values(depth + 1)) for _ in range(min(count, 3))]
        etype = (
            struct.unpack("<I", inner[0][:4])[0] if inner else draw(st.sampled_from([4, 8, 9, 99]))
        )
        body = b"".join(v[4:] for v in inner if v[:4] == inner[0][:4])
        return struct.pack("<I", GGUF_ARRAY) + gguf_array_header(etype, count) + body
    return struct.pack("<I", draw(st.sampled_from([13, 99, 2**32 - 1]))) + b"\0" * 8


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    overrides=st.dictionaries(st.sampled_from(_GGUF_KEYS), gguf_values(), max_size=4),
    extra=st.lists(gguf_values(), max_size=2),
    tail=st.sampled_from([0, 64, 2**16, 2**26]),
)
def test_resolve_hostile_gguf_metadata_plans_or_refuses_in_one_line(
    overrides: dict[str, bytes], extra: list[bytes], tail: int
) -> None:
    kvs = [
        gguf_kv("general.architecture", GGUF_STRING, gguf_string("llama")),
        *(gguf_u32(f"llama.{k}", v) for k, v in GGUF_BASE.items() if k not in overrides),
        *(gguf_string(f"llama.{k}") + v for k, v in overrides.items()),
        *(gguf_string(f"x.extra{i}") + v for i, v in enumerate(extra)),
    ]
    with scratch() as d:
        path = gguf_file(d / "m.gguf", kvs)
        with path.open("r+b") as fh:  # room the counts may claim, as a sparse tail
            fh.truncate(fh.seek(0, 2) + tail)
        outcome(path)


# --- the bounded JSON reader itself ---------------------------------------------------

_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(alphabet='[]{}",:\\ab', max_size=6),
    ),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), children, max_size=3)
    ),
    max_leaves=30,
)


def _depth(doc: Any) -> int:
    if isinstance(doc, dict):
        return 1 + max(map(_depth, doc.values()), default=0)
    if isinstance(doc, list):
        return 1 + max(map(_depth, doc), default=0)
    return 0


@settings(max_examples=200, deadline=None)
@given(doc=_JSON, wrap=st.integers(min_value=0, max_value=70))
def test_nesting_depth_counts_brackets_outside_strings(doc: Any, wrap: int) -> None:
    raw = ("[" * wrap + json.dumps(doc) + "]" * wrap).encode()
    depth = _depth(doc) + wrap
    measured = nesting_depth(raw)
    # Exact past the limit; below it, any upper bound that stays below it will do.
    assert measured >= depth and (measured > MAX_JSON_DEPTH) == (depth > MAX_JSON_DEPTH)
    if depth > MAX_JSON_DEPTH:
        assert measured == depth
    if depth <= MAX_JSON_DEPTH:
        assert parse_json(raw, "x", 10**6) == json.loads(raw)
    else:
        with pytest.raises(ModelFormatError, match="nests deeper"):
            parse_json(raw, "x", 10**6)


@settings(max_examples=300, deadline=None)
@given(
    raw=st.binary(max_size=200) | st.text(alphabet='[]{}"\\a1,: \n', max_size=400).map(str.encode)
)
def test_parse_json_of_any_bytes_parses_or_refuses_in_one_line(raw: bytes) -> None:
    message = ""
    try:
        parse_json(raw, "x.json", 10**6)
    except ModelFormatError as exc:
        message = str(exc)
    assert "\n" not in message
