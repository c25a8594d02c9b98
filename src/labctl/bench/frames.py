"""What ``labctl bench --backend openvla`` sends: camera frames, their bodies, and where to.

OpenVLA's server takes ``POST /act`` with a json-numpy camera frame (H×W×3 uint8), an
instruction and, for a checkpoint that holds several datasets' statistics (openvla-7b
does), an ``unnorm_key``; the lab's gateway serves a deployment on ``/vla/NAME/act``.
Frames come from a folder of images (PNG, JPEG: anything Pillow opens, as RGB) or are
generated (:func:`labctl.vla.frame`, seeded). Every frame's body is built once, before
the run, with :func:`labctl.vla.request`, and sent as the same bytes each time: encoding
a frame takes milliseconds, which would otherwise be counted in the robots' timing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
import urllib.parse

import numpy as np

from labctl import vla
from labctl.bench.http import Endpoint
from labctl.errors import UsageError

#: The path OpenVLA's server (``vla-scripts/deploy.py``) serves actions on.
ROUTE = "/act"
#: The instruction sent when none is given; OpenVLA puts it in "What action should the
#: robot take to {instruction}?".
INSTRUCTION = "pick up the blue cup"
#: openvla-7b holds the statistics of many datasets and needs one named; Bridge V2's is
#: the one OpenVLA's README uses.
UNNORM_KEY = "bridge_orig"
#: Distinct generated frames; robot i's k-th request sends frame (i + k) mod this.
GENERATED_FRAMES = 8
#: The generated frames' size, as OpenVLA's README client sends (the model sees 224×224).
FRAME_HEIGHT = FRAME_WIDTH = 256


def route(url: str) -> tuple[Endpoint, str]:
    """The server and the request path of a robot-serving URL.

    ``http://h:8000`` (an OpenVLA server) posts to ``/act``; ``http://h:8080/vla/NAME``
    (a deployment behind the lab's gateway) to ``/vla/NAME/act``: any path is a prefix
    to which ``/act`` is added, and a path that already ends in ``/act`` is taken as it is.

    Raises:
        UsageError: not an http(s) URL, a query string, an OpenAI path (``/v1/…``), or the
            gateway's ``/vla`` without a deployment's name.
    """
    try:
        server = Endpoint.parse(url)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment:
        raise UsageError(f"--base-url {url!r}: drop the query string; --backend openvla posts "
                         "to the URL's path + /act, e.g. http://127.0.0.1:8000")  # fmt: skip
    path = parts.path.rstrip("/")
    prefix = path[: -len(ROUTE)] if path.endswith(ROUTE) else path
    segments = [s for s in prefix.split("/") if s]
    if "v1" in segments:
        raise UsageError(
            f"--base-url {url!r}: that is an OpenAI path; --backend openvla posts to an OpenVLA "
            "server's /act (http://HOST:PORT) or the lab gateway's /vla/NAME/act "
            "(http://HOST:PORT/vla/NAME)"
        )
    if segments and segments[-1] == "vla":
        raise UsageError(f"--base-url {url!r}: name the deployment, e.g. {url.rstrip('/')}/NAME "
                         "(the gateway serves robots on /vla/NAME/act)")  # fmt: skip
    return Endpoint(server.scheme, server.host, server.port, prefix), ROUTE


def deployment(url: str) -> str | None:
    """The deployment a gateway URL names (``…/vla/NAME[/act]``), or None."""
    segments = [s for s in urllib.parse.urlsplit(url).path.split("/") if s]
    if segments and segments[-1] == "act":
        segments.pop()
    if len(segments) >= 2 and segments[-2] == "vla":
        return urllib.parse.unquote(segments[-1])
    return None


@dataclass(frozen=True)
class Frame:
    """One camera frame as it is sent: its name and H×W×3 uint8 pixels."""

    name: str
    image: np.ndarray

    @property
    def size(self) -> str:
        height, width = self.image.shape[:2]
        return f"{width}×{height}"


def generated(count: int = GENERATED_FRAMES, seed: int = 0) -> list[Frame]:
    """``count`` camera frames (:func:`labctl.vla.frame`), frame i seeded ``seed + i``."""
    return [
        Frame(f"frame-{i:03d}", vla.frame(FRAME_HEIGHT, FRAME_WIDTH, seed=seed + i))
        for i in range(count)
    ]


def from_dir(folder: Path) -> list[Frame]:
    """Every file directly in ``folder`` (hidden ones aside), in name order, read as RGB.

    Raises:
        UsageError: Pillow is missing, the folder is missing or holds no files, or a file
            is not an image (or is larger than :data:`labctl.vla.MAX_IMAGE_BYTES`).
    """
    flag = f"--image-dir {folder}"
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise UsageError(f"{flag}: reading images needs Pillow: pip install pillow (or leave "
                         "out --image-dir to send generated frames)") from None  # fmt: skip
    if not folder.is_dir():
        raise UsageError(f"{flag}: no such folder; give a folder of camera frames (PNG, JPEG)")
    try:
        paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise UsageError(f"{flag}: {exc.strerror or exc}") from exc
    if not paths:
        raise UsageError(f"{flag} holds no files; put camera frames (PNG, JPEG) in it")
    out = []
    for path in paths:
        try:
            with Image.open(path) as img:
                width, height = img.size
                if width * height * 3 > vla.MAX_IMAGE_BYTES:
                    raise UsageError(
                        f"{flag}: {path.name} is {width}×{height}, more than the "
                        f"{vla.MAX_IMAGE_BYTES // 2**20} MiB a request may hold; resize it "
                        "(the model sees 224×224)"
                    )
                pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except UnidentifiedImageError:
            raise UsageError(f"{flag}: {path.name} is not an image Pillow can read; remove it "
                             "from the folder (PNG and JPEG frames are read)") from None  # fmt: skip
        except OSError as exc:
            raise UsageError(f"{flag}: cannot read {path.name}: {exc.strerror or exc}") from None
        out.append(Frame(path.name, np.ascontiguousarray(pixels)))
    return out


def bodies(frames: Sequence[Frame], instruction: str, unnorm_key: str | None) -> list[bytes]:
    """One ``/act`` body per frame (:func:`labctl.vla.request`), built once for the run."""
    return [vla.request(f.image, instruction, unnorm_key) for f in frames]
