"""Read whisper.cpp's ggml model files: the header, and the tensor table without the data.

The layout (whisper.cpp's ``models/convert-pt-to-ggml.py`` and its loader): the
``int32`` magic ``0x67676d6c``, eleven ``int32`` hyper-parameters (``n_vocab``,
``n_audio_ctx``, ``n_audio_state``, ``n_audio_head``, ``n_audio_layer``,
``n_text_ctx``, ``n_text_state``, ``n_text_head``, ``n_text_layer``, ``n_mels``,
``ftype``), the mel filter bank (``int32 n_mel, n_fft`` and float32 rows), the
vocabulary (an ``int32`` count and length-prefixed token bytes), then per tensor
``int32 n_dims, name_len, ttype``, the dimensions innermost first, the name and
the data. A file may stop after the vocabulary (whisper.cpp's test models do).

The file is untrusted: counts are checked against the file's size and against
bounds far above published models before anything is read or iterated.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import mmap
from pathlib import Path
import struct

from labctl.catalog.formats import GGML_TYPES
from labctl.errors import CatalogError, ModelFormatError

MAGIC = 0x67676D6C
#: whisper.cpp keeps a quantization version in ``ftype`` as ``version * 1000 + ftype``.
QNT_VERSION_FACTOR = 1000
#: ggml file types (``enum ggml_ftype``) to the tensor type of the weight matrices.
FTYPE_WEIGHT_TYPE = {0: 0, 1: 1, 2: 2, 3: 3, 7: 8, 8: 6, 9: 7, 10: 10, 11: 11, 12: 12, 13: 13,
                     14: 14, 15: 16, 16: 17, 17: 18, 18: 19, 19: 20, 20: 21, 21: 22, 22: 23,
                     23: 29, 24: 30, 25: 39}  # fmt: skip
#: Model names whisper.cpp prints, by encoder layer count.
MODEL_NAMES = {4: "tiny", 6: "base", 12: "small", 24: "medium", 32: "large"}
#: Bounds far above published models (large-v3: 51,866 tokens, 1,500 positions, width
#: 1,280, 32 layers, 128 mel bands) that keep a corrupt header from driving the reader.
_MAX_VOCAB = 1 << 20
_MAX_CTX = 1 << 16
_MAX_STATE = 1 << 15
_MAX_LAYERS = 1 << 10
_MAX_MELS = 1 << 12
_MAX_FFT = 1 << 14
_MAX_TOKEN = 1 << 12
_MAX_TENSORS = 1 << 16
_MAX_NAME = 1 << 10
_HPARAMS = ("n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
            "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer", "n_mels", "ftype")  # fmt: skip


@dataclass(frozen=True)
class WhisperHparams:
    """whisper.cpp's hyper-parameters (``whisper_hparams``) as the file declares them."""

    n_vocab: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int
    n_mels: int
    #: The file type without its quantization version (1 = f16 matrices).
    ftype: int = 1

    @property
    def weight_type(self) -> int:
        """The ggml type of the weight matrices."""
        return FTYPE_WEIGHT_TYPE[self.ftype]

    @property
    def model_name(self) -> str:
        """The size whisper.cpp names the model by, from its encoder depth."""
        name = MODEL_NAMES.get(self.n_audio_layer, "unknown")
        return name + (" v3" if name == "large" and self.n_vocab == 51866 else "")


@dataclass(frozen=True)
class GgmlTensorInfo:
    """One tensor of the file's table (dimensions innermost first, as ggml's ``ne``)."""

    name: str
    ne: tuple[int, ...]
    type: int
    nbytes: int


@dataclass(frozen=True)
class WhisperGgml:
    """What a whisper.cpp model file holds, apart from the tensor data."""

    path: Path
    hparams: WhisperHparams
    n_mel_filters: int
    n_fft: int
    n_tokens: int
    tensors: tuple[GgmlTensorInfo, ...]

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def tensor_nbytes(type_id: int, ne: tuple[int, ...]) -> int:
    """Bytes of a contiguous tensor of ggml type ``type_id`` (rows are whole blocks)."""
    t = GGML_TYPES[type_id]
    rows = math.prod(ne[1:]) if len(ne) > 1 else 1
    return ne[0] // t.block_size * t.type_size * rows


def is_whisper_ggml(path: Path) -> bool:
    """Whether ``path`` is a file that starts with the ggml magic."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and struct.unpack("<I", head)[0] == MAGIC


class _Reader:
    """Bounds-checked reads from the mapped file."""

    def __init__(self, path: Path, data: mmap.mmap) -> None:
        self.path, self.data, self.size, self.pos = path, data, len(data), 0

    def fail(self, what: str) -> ModelFormatError:
        return ModelFormatError(
            f"{self.path}: {what}; the file is not a whole whisper.cpp ggml model, download or "
            "convert it again (whisper.cpp's models/download-ggml-model.sh)"
        )

    def ints(self, n: int, what: str) -> tuple[int, ...]:
        end = self.pos + 4 * n
        if end > self.size:
            raise self.fail(f"it ends inside the {what}")
        out = struct.unpack_from(f"<{n}i", self.data, self.pos)
        self.pos = end
        return out

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"it ends inside the {what}")
        self.pos += n


def read_whisper_ggml(path: Path) -> WhisperGgml:
    """Read a whisper.cpp ggml model's header and tensor table.

    Raises:
        CatalogError: the file cannot be read.
        ModelFormatError: it is not a whisper.cpp ggml model, or is cut short or corrupt.
    """
    try:
        with path.open("rb") as f:
            if not is_whisper_ggml(path):
                raise ModelFormatError(
                    f"{path}: not a whisper.cpp ggml model (it does not start with the ggml "
                    "magic 0x67676d6c); give a ggml-*.bin file from whisper.cpp's models"
                )
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _read(path, _Reader(path, data))
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the model file ({exc.strerror or exc})") from exc


def _read(path: Path, r: _Reader) -> WhisperGgml:
    r.pos = 4
    hp = _hparams(path, r.ints(len(_HPARAMS), "hyper-parameters"))
    n_mel, n_fft = r.ints(2, "mel filter header")
    if not (0 < n_mel <= _MAX_MELS and 0 < n_fft <= _MAX_FFT):
        raise r.fail(f"its mel filter bank declares {n_mel} × {n_fft}")
    if n_mel != hp.n_mels:
        raise ModelFormatError(
            f"{path}: the mel filter bank has {n_mel} bands but the model takes {hp.n_mels}; "
            "whisper.cpp refuses such a file, convert the model again"
        )
    r.skip(4 * n_mel * n_fft, "mel filters")
    (n_tokens,) = r.ints(1, "vocabulary size")
    if not 0 <= n_tokens <= _MAX_VOCAB:
        raise r.fail(f"it declares {n_tokens} vocabulary tokens")
    for _ in range(n_tokens):
        (length,) = r.ints(1, "vocabulary")
        if not 0 <= length <= _MAX_TOKEN:
            raise r.fail(f"a vocabulary token claims {length} bytes")
        r.skip(length, "vocabulary")
    tensors: list[GgmlTensorInfo] = []
    while r.pos < r.size:
        if len(tensors) >= _MAX_TENSORS:
            raise r.fail(f"it holds more than {_MAX_TENSORS} tensors")
        n_dims, name_len, ttype = r.ints(3, "tensor table")
        if not (1 <= n_dims <= 4 and 0 < name_len <= _MAX_NAME and ttype in GGML_TYPES):
            raise r.fail(
                f"tensor {len(tensors)} declares {n_dims} dimensions, a {name_len}-byte name "
                f"and type {ttype}"
            )
        ne = r.ints(n_dims, "tensor table")
        if any(not 0 < d <= 1 << 24 for d in ne) or ne[0] % GGML_TYPES[ttype].block_size:
            raise r.fail(f"tensor {len(tensors)} declares the shape {list(ne)}")
        start = r.pos
        r.skip(name_len, "tensor table")
        name = bytes(r.data[start : r.pos]).decode("utf-8", "replace")
        nbytes = tensor_nbytes(ttype, ne)
        r.skip(nbytes, f"data of tensor {name!r}")
        tensors.append(GgmlTensorInfo(name, ne, ttype, nbytes))
    return WhisperGgml(path, hp, n_mel, n_fft, n_tokens, tuple(tensors))


def _hparams(path: Path, values: tuple[int, ...]) -> WhisperHparams:
    raw = dict(zip(_HPARAMS, values, strict=True))
    ftype = raw["ftype"] % QNT_VERSION_FACTOR if raw["ftype"] >= 0 else raw["ftype"]
    bounds = {"n_vocab": _MAX_VOCAB, "n_audio_ctx": _MAX_CTX, "n_text_ctx": _MAX_CTX,
              "n_audio_state": _MAX_STATE, "n_text_state": _MAX_STATE,
              "n_audio_head": _MAX_STATE, "n_text_head": _MAX_STATE,
              "n_audio_layer": _MAX_LAYERS, "n_text_layer": _MAX_LAYERS, "n_mels": _MAX_MELS}  # fmt: skip
    bad = [f"{k} {raw[k]}" for k, top in bounds.items() if not 0 < raw[k] <= top]
    if bad:
        raise ModelFormatError(
            f"{path}: the header declares {', '.join(bad)}, which no whisper model has; the "
            "file is corrupt or not a whisper.cpp model"
        )
    if ftype not in FTYPE_WEIGHT_TYPE:
        raise ModelFormatError(
            f"{path}: unknown ggml file type {raw['ftype']}; whisper.cpp refuses it, convert or "
            "quantize the model again"
        )
    if raw["n_text_state"] != raw["n_audio_state"]:
        raise ModelFormatError(
            f"{path}: n_text_state {raw['n_text_state']} differs from n_audio_state "
            f"{raw['n_audio_state']}; whisper.cpp requires them equal"
        )
    for width, heads in (("n_audio_state", "n_audio_head"), ("n_text_state", "n_text_head")):
        if raw[width] % raw[heads]:
            raise ModelFormatError(
                f"{path}: {width} {raw[width]} is not a multiple of {heads} {raw[heads]}; the "
                "file is corrupt"
            )
    return WhisperHparams(**{**raw, "ftype": ftype})
