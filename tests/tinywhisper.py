"""Tiny random-weight Whisper models in whisper.cpp's ggml format, for the real whisper-server.

whisper.cpp's own test models (``for-tests-ggml-tiny.bin``) carry only the header, the mel
filters and the vocabulary; with no tensors the server answers every request with empty
text. The files written here reuse that file's filters and vocabulary and add every tensor
whisper.cpp's loader expects, with random values, so the server loads them and decodes
garbage tokens: non-empty text, in a fraction of a second on one thread.

The layout is whisper.cpp's ``models/convert-pt-to-ggml.py``: ``int32`` magic, 11 ``int32``
hyper-parameters, the mel filter bank (``int32 n_mel, n_fft`` then float32 rows), the
vocabulary (``int32`` count, then length-prefixed token bytes), then per tensor ``int32
n_dims, name_len, ttype`` (0 = f32, 1 = f16), the dimensions innermost first, the name and
the raw data. Matrices and conv kernels are f16 (the file's ftype is 1: whisper.cpp's conv
needs f16 kernels then); biases, norms and both positional embeddings are f32.
"""

from __future__ import annotations

import os
from pathlib import Path
import struct

import numpy as np

GGML_MAGIC = 0x67676D6C
N_FFT_BINS = 201  # whisper.cpp's 400-point FFT gives 1 + 400/2 frequency bins
SERVER_DIR = Path.home() / ".cache" / "labctl" / "whisper-server-1.5.1-portable"


def tests_model_source() -> Path:
    """whisper.cpp's ``for-tests-ggml-tiny.bin`` beside the whisper-server binary (the
    directory of ``LABCTL_WHISPER_SERVER`` when set)."""
    server = os.environ.get("LABCTL_WHISPER_SERVER")
    folder = Path(server).parent if server else SERVER_DIR
    path = folder / "for-tests-ggml-tiny.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make whisper-server`, which puts it "
                                "beside the binary, or set LABCTL_WHISPER_SERVER")  # fmt: skip
    return path


# pytest would collect the function as a test where a test module imports it by name.
tests_model_source.__test__ = False  # type: ignore[attr-defined]


def _source_parts(source: Path) -> tuple[np.ndarray, bytes]:
    """The mel filters (n_mel × n_fft float32) and the raw vocabulary block of a ggml file."""
    data = source.read_bytes()
    offset = 4 + 11 * 4
    n_mel, n_fft = struct.unpack_from("<2i", data, offset)
    offset += 8
    filters = np.frombuffer(data, "<f4", n_mel * n_fft, offset).reshape(n_mel, n_fft)
    offset += n_mel * n_fft * 4
    vocab_start = offset
    (n_vocab,) = struct.unpack_from("<i", data, offset)
    offset += 4
    for _ in range(n_vocab):
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4 + length
    return filters.copy(), data[vocab_start:offset]


def _mel_filters(n_mels: int, source: np.ndarray) -> np.ndarray:
    """The source's bank when the band count matches, else triangular filters on a mel scale
    (only the shape matters to random weights; whisper.cpp requires n_mel == n_mels)."""
    if source.shape[0] == n_mels:
        return source
    mel = np.linspace(0.0, 2595 * np.log10(1 + 8000 / 700), n_mels + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)
    bins = np.linspace(0.0, 8000.0, N_FFT_BINS)
    bank = np.zeros((n_mels, N_FFT_BINS), np.float32)
    for m in range(n_mels):
        lo, mid, hi = hz[m], hz[m + 1], hz[m + 2]
        rise = (bins - lo) / (mid - lo)
        fall = (hi - bins) / (hi - mid)
        bank[m] = np.maximum(0.0, np.minimum(rise, fall)) * 2 / (hi - lo)
    return bank


def _tensors(
    *,
    n_vocab: int,
    n_audio_ctx: int,
    n_audio_state: int,
    n_audio_layer: int,
    n_text_ctx: int,
    n_text_state: int,
    n_text_layer: int,
    n_mels: int,
) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, numpy shape, f16) for every tensor whisper.cpp's loader creates, in its order."""
    a, t = n_audio_state, n_text_state
    out: list[tuple[str, tuple[int, ...], bool]] = [
        ("encoder.positional_embedding", (n_audio_ctx, a), False),
        ("encoder.conv1.weight", (a, n_mels, 3), True),
        ("encoder.conv1.bias", (a, 1), False),
        ("encoder.conv2.weight", (a, a, 3), True),
        ("encoder.conv2.bias", (a, 1), False),
        ("encoder.ln_post.weight", (a,), False),
        ("encoder.ln_post.bias", (a,), False),
    ]

    def block(prefix: str, n: int, attn: tuple[str, ...]) -> None:
        out.extend([
            (f"{prefix}.mlp_ln.weight", (n,), False),
            (f"{prefix}.mlp_ln.bias", (n,), False),
            (f"{prefix}.mlp.0.weight", (4 * n, n), True),
            (f"{prefix}.mlp.0.bias", (4 * n,), False),
            (f"{prefix}.mlp.2.weight", (n, 4 * n), True),
            (f"{prefix}.mlp.2.bias", (n,), False),
        ])  # fmt: skip
        for name in attn:
            out.extend([
                (f"{prefix}.{name}_ln.weight", (n,), False),
                (f"{prefix}.{name}_ln.bias", (n,), False),
                (f"{prefix}.{name}.query.weight", (n, n), True),
                (f"{prefix}.{name}.query.bias", (n,), False),
                (f"{prefix}.{name}.key.weight", (n, n), True),
                (f"{prefix}.{name}.value.weight", (n, n), True),
                (f"{prefix}.{name}.value.bias", (n,), False),
                (f"{prefix}.{name}.out.weight", (n, n), True),
                (f"{prefix}.{name}.out.bias", (n,), False),
            ])  # fmt: skip

    for i in range(n_audio_layer):
        block(f"encoder.blocks.{i}", a, ("attn",))
    out.extend([
        ("decoder.positional_embedding", (n_text_ctx, t), False),
        ("decoder.token_embedding.weight", (n_vocab, t), True),
        ("decoder.ln.weight", (t,), False),
        ("decoder.ln.bias", (t,), False),
    ])  # fmt: skip
    for i in range(n_text_layer):
        block(f"decoder.blocks.{i}", t, ("attn", "cross_attn"))
    return out


def write_model(
    path: Path,
    *,
    n_audio_state: int = 64,
    n_audio_head: int = 2,
    n_audio_layer: int = 1,
    n_text_state: int | None = None,
    n_text_head: int = 2,
    n_text_layer: int = 1,
    n_mels: int = 80,
    n_audio_ctx: int = 1500,
    n_text_ctx: int = 448,
    n_vocab: int | None = None,
    seed: int = 0,
    source: Path | None = None,
) -> Path:
    """Write a random-weight whisper.cpp model to ``path`` and return it.

    ``n_text_state`` defaults to ``n_audio_state`` (whisper.cpp requires them equal);
    ``n_vocab`` defaults to the source file's (51865, multilingual; 51866 marks a v3 model).
    The defaults make an ~8 MB file that whisper-server loads in a few hundredths of a second.
    """
    text_state = n_audio_state if n_text_state is None else n_text_state
    if text_state != n_audio_state:
        raise ValueError(f"n_text_state {text_state} must equal n_audio_state {n_audio_state} "
                         "(whisper.cpp asserts it)")  # fmt: skip
    if n_audio_state % n_audio_head or text_state % n_text_head:
        raise ValueError("the state width must be a multiple of the head count")
    src = tests_model_source() if source is None else source
    filters, vocab = _source_parts(src)
    header_vocab = struct.unpack_from("<i", src.read_bytes(), 4)[0]
    vocab_size = header_vocab if n_vocab is None else n_vocab
    bank = _mel_filters(n_mels, filters)
    rng = np.random.default_rng(seed)
    hparams = (vocab_size, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer, n_text_ctx,
               text_state, n_text_head, n_text_layer, n_mels, 1)  # fmt: skip
    with path.open("wb") as f:
        f.write(struct.pack("<12i", GGML_MAGIC, *hparams))
        f.write(struct.pack("<2i", *bank.shape))
        f.write(bank.astype("<f4").tobytes())
        f.write(vocab)
        for name, shape, half in _tensors(
            n_vocab=vocab_size, n_audio_ctx=n_audio_ctx, n_audio_state=n_audio_state,
            n_audio_layer=n_audio_layer, n_text_ctx=n_text_ctx, n_text_state=text_state,
            n_text_layer=n_text_layer, n_mels=n_mels,
        ):  # fmt: skip
            if name.endswith(("ln.weight", "ln_post.weight")):
                data = 1.0 + 0.1 * rng.standard_normal(shape)
            else:
                data = 0.5 * rng.standard_normal(shape) / np.sqrt(shape[-1])
            encoded = data.astype("<f2" if half else "<f4").tobytes()
            key = name.encode()
            f.write(struct.pack("<3i", len(shape), len(key), 1 if half else 0))
            f.write(struct.pack(f"<{len(shape)}i", *reversed(shape)))
            f.write(key)
            f.write(encoded)
    return path
