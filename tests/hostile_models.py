"""Write hostile model files: what a careless download or a malicious repository can hold.

Each writer makes a model that ``labctl fit MODEL`` (and the daemon's preflight) must
refuse with one line, quickly, without a traceback. The unit tests check the readers
with them; the integration tests deploy them into a running daemon with ``--dry-run``
and check that it keeps answering. :data:`HOSTILE_CASES` names every case; each
writer takes a parent directory and returns the MODEL path to pass.
"""

from __future__ import annotations

from collections.abc import Callable
import json
import math
from pathlib import Path
import struct
from typing import Any

from labctl.catalog.models import catalog

#: The small real catalog model the config cases start from.
BASE_MODEL = "Qwen/Qwen3-0.6B"

# GGUF value types (the format's numbering).
GGUF_UINT32, GGUF_STRING, GGUF_ARRAY = 4, 8, 9


def base_config(model: str = BASE_MODEL) -> dict[str, Any]:
    """A copy of a catalog model's real config.json fields."""
    entry = next(e for e in catalog() if e.id == model)
    return json.loads(json.dumps(entry.config))


def config_dir(path: Path, **overrides: object) -> Path:
    """A model directory whose config.json is :data:`BASE_MODEL`'s with ``overrides``.

    A value of ``None`` drops the key. Floats ``nan`` and ``inf`` are written the way
    Python's json writes them (``NaN``, ``Infinity``), which is not JSON.
    """
    cfg = base_config()
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return config_text_dir(path, json.dumps(cfg))


def config_text_dir(path: Path, text: str | bytes) -> Path:
    """A model directory whose config.json holds exactly ``text``."""
    path.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    (path / "config.json").write_bytes(data)
    return path


def deep_json(depth: int, leaf: str = "0") -> str:
    """A JSON value nested ``depth`` lists deep."""
    return "[" * depth + leaf + "]" * depth


def deep_config_text(depth: int) -> str:
    """A real config.json with one extra field nested ``depth`` levels deep."""
    text = json.dumps(base_config())
    return text[:-1] + ', "nested": ' + deep_json(depth) + "}"


def safetensors_file(
    path: Path, header: bytes, data: bytes = b"", declared: int | None = None
) -> Path:
    """A safetensors file: the 8-byte header length (``declared`` or the real one), the
    header and the data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = len(header) if declared is None else declared
    path.write_bytes(struct.pack("<Q", size) + header + data)
    return path


def safetensors_dir(path: Path, header: bytes, data: bytes = b"") -> Path:
    """A model directory with the base config.json and one safetensors file."""
    config_dir(path)
    safetensors_file(path / "model.safetensors", header, data)
    return path


def many_tensors_header(count: int) -> bytes:
    """A header declaring ``count`` empty tensors (all valid, no data bytes)."""
    entry = '"t{}":{{"dtype":"F16","shape":[0],"data_offsets":[0,0]}}'
    return ("{" + ",".join(entry.format(i) for i in range(count)) + "}").encode()


# --- GGUF, from raw bytes -------------------------------------------------------------


def gguf_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def gguf_kv(key: str, vtype: int, payload: bytes) -> bytes:
    """One metadata pair: the key, the value type and the encoded value."""
    return gguf_string(key) + struct.pack("<I", vtype) + payload


def gguf_u32(key: str, value: int) -> bytes:
    return gguf_kv(key, GGUF_UINT32, struct.pack("<I", value))


#: struct formats of the GGUF scalar value types, by type number.
GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip


def gguf_scalar(vtype: int, value: float | int | bool) -> bytes:
    """A scalar of GGUF type ``vtype``; out-of-range integers wrap as a careless writer's
    would."""
    fmt = GGUF_SCALARS[vtype]
    if fmt in ("<f", "<d"):
        try:
            return struct.pack(fmt, float(value))
        except OverflowError:  # too large for a float32: what a careless cast gives
            return struct.pack(fmt, math.copysign(math.inf, float(value)))
    if fmt == "<?":
        return struct.pack(fmt, bool(value))
    bits = struct.calcsize(fmt) * 8
    n = int(value) % (1 << bits)
    if fmt[1].islower() and n >= 1 << (bits - 1):
        n -= 1 << bits
    return struct.pack(fmt, n)


def gguf_array_header(etype: int, count: int) -> bytes:
    return struct.pack("<IQ", etype, count)


def gguf_file(
    path: Path, kvs: list[bytes], tensors: bytes = b"", n_tensors: int = 0, tail: bytes = b""
) -> Path:
    """A GGUF v3 file from encoded metadata pairs (and a raw tensor table)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs))
    path.write_bytes(head + b"".join(kvs) + tensors + tail)
    return path


def llama_kvs(**values: int) -> list[bytes]:
    """The hyperparameters of a tiny llama GGUF, each overridable by its key suffix."""
    params = {
        "block_count": 2,
        "embedding_length": 64,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "context_length": 2048,
        "feed_forward_length": 128,
        "vocab_size": 256,
    }
    params |= {k.replace("__", "."): v for k, v in values.items()}
    return [gguf_kv("general.architecture", GGUF_STRING, gguf_string("llama"))] + [
        gguf_u32(f"llama.{k}", v) for k, v in params.items()
    ]


def deep_gguf(path: Path, depth: int) -> Path:
    """A GGUF file with a metadata value that is an array of arrays ``depth`` deep."""
    nested = gguf_array_header(GGUF_UINT32, 0)
    for _ in range(depth - 1):
        nested = gguf_array_header(GGUF_ARRAY, 1) + nested
    kvs = [*llama_kvs(), gguf_kv("hostile.deep", GGUF_ARRAY, nested)]
    return gguf_file(path, kvs)


def gguf_many_strings(path: Path, count: int, size: int = 1 << 16) -> Path:
    """A GGUF file whose metadata claims a string array of ``count`` elements followed by
    ``size`` zero bytes (empty strings), written as a sparse file: a large ``size`` costs
    no disk."""
    kvs = [
        *llama_kvs(),
        gguf_kv("tokenizer.ggml.tokens", GGUF_ARRAY, gguf_array_header(GGUF_STRING, count)),
    ]
    gguf_file(path, kvs)
    with path.open("r+b") as fh:
        fh.truncate(fh.seek(0, 2) + size)
    return path


# --- the named cases ------------------------------------------------------------------


def _case_config(name: str, **overrides: object) -> Callable[[Path], Path]:
    def write(parent: Path) -> Path:
        return config_dir(parent / name, **overrides)

    return write


def _deep_config(parent: Path) -> Path:
    return config_text_dir(parent / "deep-config", deep_config_text(100_000))


def _deep_safetensors(parent: Path) -> Path:
    return safetensors_dir(parent / "deep-safetensors", deep_json(50_000).encode())


def _deep_index(parent: Path) -> Path:
    path = config_dir(parent / "deep-index")
    (path / "model.safetensors.index.json").write_text('{"weight_map": ' + deep_json(100_000) + "}")
    return path


def _deep_gguf(parent: Path) -> Path:
    return deep_gguf(parent / "deep.gguf", 5_000)


def _gguf_billion_strings(parent: Path) -> Path:
    return gguf_many_strings(parent / "strings.gguf", 1_000_000_000)


def _huge_dim(parent: Path) -> Path:
    header = json.dumps(
        {"w": {"dtype": "F16", "shape": [0, 10**15], "data_offsets": [0, 0]}}
    ).encode()
    return safetensors_dir(parent / "huge-dim", header)


def _many_tensors(parent: Path) -> Path:
    return safetensors_dir(parent / "many-tensors", many_tensors_header(1_100_000))


def _gguf_layers(parent: Path) -> Path:
    return gguf_file(parent / "layers.gguf", llama_kvs(block_count=1_000_000))


#: Every hostile case: a name and a writer that takes a parent directory and returns the
#: MODEL path to pass to ``labctl fit`` or a deployment.
HOSTILE_CASES: list[tuple[str, Callable[[Path], Path]]] = [
    ("layers-1e6", _case_config("layers-1e6", num_hidden_layers=1_000_000)),
    ("layers-1e9", _case_config("layers-1e9", num_hidden_layers=1_000_000_000)),
    ("heads-nan", _case_config("heads-nan", num_attention_heads=math.nan)),
    ("hidden-infinity", _case_config("hidden-infinity", hidden_size=math.inf)),
    (
        "context-minus-infinity",
        _case_config("context-minus-infinity", max_position_embeddings=-math.inf),
    ),
    ("zero-heads", _case_config("zero-heads", num_attention_heads=0)),
    ("zero-hidden", _case_config("zero-hidden", hidden_size=0)),
    ("deep-config-100000", _deep_config),
    ("deep-safetensors-50000", _deep_safetensors),
    ("deep-index-100000", _deep_index),
    ("deep-gguf-5000", _deep_gguf),
    ("gguf-1e9-strings", _gguf_billion_strings),
    ("gguf-layers-1e6", _gguf_layers),
    ("safetensors-dim-1e15", _huge_dim),
    ("safetensors-1.1e6-tensors", _many_tensors),
]
