"""Vision-language-action requests as OpenVLA's server takes them, checked, and made.

OpenVLA's ``POST /act`` takes JSON with numpy arrays in json-numpy's encoding
(``{"__numpy__": base64, "dtype": "|u1", "shape": [H, W, 3]}``): ``image`` (any H×W×3
uint8 camera frame; the processor resizes it to 224 px), ``instruction`` and, where the
checkpoint holds several datasets' statistics, ``unnorm_key``. Clients without json-numpy
send the same document double-encoded, ``{"encoded": "<that JSON as a string>"}``. The
answer is the action, a json-numpy float array: 7 values (OpenVLA), or a K×D chunk
(OpenVLA-OFT). Its errors come back as HTTP 200 with the JSON string ``"error"``.

:func:`observation` reads and checks a request the way the engine would take it, with one
line naming what is wrong; :func:`request` and :func:`frame` make them (the bench, tests);
:func:`action` reads an answer.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
import json
import math
from pathlib import Path
from typing import Any

import json_numpy
import numpy as np

__all__ = ["ACTION_DIM", "MAX_IMAGE_BYTES", "Observation", "VlaError", "action",
           "checkpoint_statistics", "frame", "observation", "request"]  # fmt: skip

#: OpenVLA's action: 7 degrees of freedom (xyz, rpy, gripper), one token each.
ACTION_DIM = 7
#: The largest camera frame taken (decoded bytes): an 8K frame is 100 MB, a robot's camera
#: sends a few hundred KB to a few MB; a 4096×4096 frame is the most any setup needs.
MAX_IMAGE_BYTES = 4096 * 4096 * 3


class VlaError(ValueError):
    """A request or answer that is not what OpenVLA's server takes or gives (one line)."""


@dataclass(frozen=True)
class Observation:
    image: np.ndarray
    instruction: str
    unnorm_key: str | None


def observation(doc: Any) -> Observation:
    """The observation in a parsed ``/act`` body (either form).

    Raises:
        VlaError: no image, an image that is not H×W×3 uint8 (or too large), no instruction.
    """
    if isinstance(doc, dict) and set(doc) == {"encoded"}:
        inner = doc["encoded"]
        if not isinstance(inner, str):
            raise VlaError('"encoded" must hold the request as a JSON string')
        try:
            doc = json.JSONDecoder().decode(inner)
        except ValueError as exc:
            raise VlaError(f'"encoded" is not valid JSON: {exc}') from None
    if not isinstance(doc, dict):
        raise VlaError('the body must be a JSON object with "image" and "instruction"')
    if "image" not in doc:
        raise VlaError('the request has no "image" (a json-numpy H×W×3 uint8 array)')
    image = _array(doc["image"], "image")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise VlaError(
            f"image must be an H×W×3 uint8 array (an RGB camera frame), not "
            f"{'×'.join(map(str, image.shape)) or 'a scalar'} {image.dtype}"
        )
    instruction = doc.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise VlaError('the request needs an "instruction": what the robot should do, as text')
    key = doc.get("unnorm_key")
    if key is not None and not isinstance(key, str):
        raise VlaError('"unnorm_key" must be a dataset name (a string), e.g. "bridge_orig"')
    return Observation(image, instruction, key)


def _array(value: Any, name: str) -> np.ndarray:
    if not isinstance(value, dict) or "__numpy__" not in value:
        raise VlaError(f"{name} must be a json-numpy array "
                       '({"__numpy__": base64, "dtype": …, "shape": […]})')  # fmt: skip
    data, dtype, shape = value.get("__numpy__"), value.get("dtype"), value.get("shape")
    if not isinstance(data, str) or not isinstance(dtype, str) or not isinstance(shape, list):
        raise VlaError(f"{name}: a json-numpy array needs __numpy__, dtype and shape")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise VlaError(f"{name}: shape must be a list of sizes, not {shape!r}")
    try:
        kind = np.dtype(dtype)
    except TypeError:
        raise VlaError(f"{name}: {dtype!r} is not a numpy dtype") from None
    size = math.prod(shape) * kind.itemsize
    if size > MAX_IMAGE_BYTES:
        raise VlaError(f"{name} is {size / 2**20:.0f} MiB decoded; the limit is "
                       f"{MAX_IMAGE_BYTES / 2**20:.0f} MiB: send the camera frame at its own "
                       "size (the model sees 224×224)")  # fmt: skip
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise VlaError(f"{name}: __numpy__ is not base64") from None
    if len(raw) != size:
        raise VlaError(f"{name}: {len(raw)} bytes of data for shape {shape} of {dtype} "
                       f"({size} bytes)")  # fmt: skip
    out: np.ndarray = np.frombuffer(raw, kind).reshape(shape)
    return out


def checkpoint_statistics(model: str) -> dict[str, Any]:
    """A local checkpoint's action statistics by dataset, as OpenVLA's server loads them
    (``dataset_statistics.json`` beside the weights, else config.json's ``norm_stats``);
    empty for a hub id or a checkpoint without them."""
    folder = Path(model).expanduser()
    for name, member in (("dataset_statistics.json", None), ("config.json", "norm_stats")):
        path = folder / name
        try:
            if not path.is_file() or path.stat().st_size > 16 * 2**20:
                continue
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if member is not None:
            found = found.get(member) if isinstance(found, dict) else None
        if isinstance(found, dict) and found:
            return {str(k): v for k, v in found.items()}
    return {}


def request(image: np.ndarray, instruction: str, unnorm_key: str | None = None) -> bytes:
    """A ``/act`` body, as OpenVLA's README client sends it (json-numpy)."""
    doc: dict[str, Any] = {"image": image, "instruction": instruction}
    if unnorm_key is not None:
        doc["unnorm_key"] = unnorm_key
    return str(json_numpy.dumps(doc)).encode()


def frame(height: int = 256, width: int = 256, seed: int = 0) -> np.ndarray:
    """A camera frame: H×W×3 uint8 noise over a gradient, the same for the same seed."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 160, width, dtype=np.float32)[None, :, None]
    noise = rng.integers(0, 96, (height, width, 3), dtype=np.uint8)
    return (ramp + noise).clip(0, 255).astype(np.uint8)


def action(body: bytes) -> np.ndarray:
    """The action in an answer: a float array (7 values, or a K×D chunk).

    Raises:
        VlaError: the engine's ``"error"``, or anything that is not a json-numpy array.
    """
    try:
        # The standard decoder, even where json_numpy.patch() replaced json.loads.
        doc = json.JSONDecoder().decode(body.decode())
        if isinstance(doc, str) and doc != "error":  # the double-encoded answer
            doc = json.JSONDecoder().decode(doc)
    except (ValueError, UnicodeDecodeError):
        raise VlaError(f"the answer is not JSON: {body[:80]!r}") from None
    if isinstance(doc, str) and doc == "error":
        raise VlaError('the engine answered "error" (its log has the exception)')
    try:
        arr = _array(doc, "the action") if isinstance(doc, dict) else np.asarray(doc, dtype=float)
    except (TypeError, ValueError):
        raise VlaError(f"the action must be numbers, not {str(doc)[:80]!r}") from None
    if arr.dtype.kind not in "fiu" or arr.ndim not in (1, 2) or arr.size == 0:
        raise VlaError(f"the action must be a vector or a chunk of floats, not {arr.shape}")
    return arr.astype(np.float64)
