"""What every engine adapter declares, and the shared pieces they are built from.

An adapter is pure: it turns a deployment's settings into argv and environment, and says
what the engine is — the API families it serves, how to tell it is healthy, its startup
phases (read off its log lines), its metric names mapped to the lab's, its default
concurrency and its memory estimate for preflight. Running the process is the runtime's
job; probing, starting and stopping it are the deploy controller's; routing requests to
it is the gateway's, by the :class:`Route` the controller publishes.

Phases are named by the step that ends at the log line, so that
``labctl_engine_startup_seconds{phase}`` is the time from the previous phase
(or the spawn) to that line:

- ``load_weights``: vLLM "Model loading took …"; llama.cpp "llama_server: model loaded";
- ``profile``: vLLM "GPU KV cache size: …" (memory profiling and KV allocation);
- ``cuda_graphs``: vLLM "Graph capturing finished …";
- ``api_server``: vLLM "Application startup complete."; llama.cpp "listening on http://…".
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
import re
from typing import Any, Literal

from labctl.config import check_flag
from labctl.errors import EngineError
from labctl.gpu.sample import DeviceSample

PHASES = ("load_weights", "profile", "cuda_graphs", "api_server")


@dataclass(frozen=True)
class Family:
    """A family of API endpoints that engines serve and the gateway routes.

    ``paths`` are the gateway's (aiohttp route patterns); a path with ``{model}`` names the
    deployment in the path, the others carry ``model`` in the body, as JSON or as a
    multipart form field.
    """

    name: str
    paths: tuple[str, ...]
    body: Literal["json", "multipart"] = "json"
    #: Whether a response may stream (server-sent events, relayed event by event).
    streams: bool = False
    #: The path engines take it on, where it differs from the gateway's (``/act`` for
    #: ``/vla/{model}/act``); an adapter's :class:`Upstream` still overrides it.
    engine_path: str | None = None


@dataclass(frozen=True)
class Health:
    """How an engine says it is ready: the path, the status, and (for engines that answer
    errors with 200) what the body must hold."""

    path: str = "/health"
    status: int = 200
    body_ok: Callable[[bytes], bool] | None = None
    #: A JSON body to POST instead of a GET (an engine with no health endpoint, whose one
    #: real request is the check: OpenVLA's ``/act``).
    payload: bytes | None = None
    #: Seconds the check may take (a real request runs a forward pass).
    timeout: float = 2.0

    def ok(self, status: int, body: bytes) -> bool:
        return status == self.status and (self.body_ok is None or self.body_ok(body))


@dataclass(frozen=True)
class Launch:
    """How to run one engine process and see that it serves."""

    argv: list[str]
    env: dict[str, str]
    health: Health
    #: The model id ``/v1/models`` must list before the engine counts as ready (None: any).
    served_model: str | None


@dataclass(frozen=True)
class Estimate:
    """What a revision takes on each of its GPUs, as its adapter can say before it starts."""

    bytes_per_gpu: int
    summary: str
    #: Flags that make the plan explicit, added where the deployment sets none.
    recommended: tuple[str, ...] = ()
    #: Sequences the engine runs at once, where known (the gateway's default limit).
    max_num_seqs: int | None = None
    #: Bytes of weights it reads at startup (its startup budget scales with them).
    weight_bytes: int = 0
    #: Bytes per GPU it keeps while asleep (engines with a sleep mode; None: not known).
    asleep_bytes: int | None = None


@dataclass(frozen=True)
class Upstream:
    """Where an engine takes a family's requests when that is not the gateway's own path:
    its path, and form fields the gateway adds to a multipart body (whisper-server
    translates on its one path, given ``translate=true``)."""

    path: str
    form: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Route:
    """A deployment as the gateway routes it, published by the deploy controller whenever it
    switches, drains or fails (``url`` None: nothing serves it now)."""

    name: str
    served: str
    aliases: tuple[str, ...]
    url: str | None
    limit: int
    queue_size: int
    #: The API key its engine's /v1 takes (None: none); clients never see it.
    key: str | None = None
    #: The API families it serves (names of :class:`Family`).
    families: frozenset[str] = frozenset()
    #: The gateway holds its new requests (a swap or a restart is in progress): they wait,
    #: bounded by the swap timeout, for the next route that is not held.
    held: bool = False
    #: API family → where its engine takes it, for families it takes elsewhere.
    upstream: tuple[tuple[str, Upstream], ...] = ()
    #: Speech: the real-time factor (audio seconds per wall second) below which the
    #: deployment falls behind while requests queue (the alert's floor).
    rtfx_floor: float | None = None
    #: Actions (VLA): the control rate its robots run at (an answer slower than 1/control_hz
    #: misses its deadline), and the datasets whose statistics its checkpoint holds (an
    #: ``unnorm_key`` is then required where there are several; empty: not known).
    control_hz: float | None = None
    unnorm_keys: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, self.served, *self.aliases)


class Adapter:
    """One engine kind. Subclasses set the class attributes and override what differs."""

    name: str = ""
    #: The environment variable through which the engine takes an API key for its /v1 (None:
    #: it takes none). The lab gives each engine a key of its own that only the gateway and
    #: the lab's probes send, so nothing reaches an engine's port around the gateway.
    key_env: str | None = None
    #: The API families it serves unless the deployment says (``serves``).
    families: tuple[str, ...] = ("chat", "completions")
    #: Its startup phases, in order, and the log lines that end them.
    phase_lines: tuple[tuple[re.Pattern[str], str], ...] = ()
    #: Its own metric names → the lab's normalised gauges (summed over the engine's labels).
    metrics: Mapping[str, str] = {}
    health = Health()
    #: API families it takes on another path than the gateway's (see :class:`Upstream`).
    upstream: Mapping[str, Upstream] = {}
    #: It has a sleep mode (vLLM's ``/sleep``, ``/wake_up``, ``/is_sleeping``): a deployment's
    #: ``sleep`` keeps a replaced revision asleep instead of stopping it.
    sleeps: bool = False

    def launch(
        self, settings: Mapping[str, Any], host: str, port: int, gpus: Sequence[int]
    ) -> Launch:
        raise NotImplementedError

    @property
    def phases(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for _, p in self.phase_lines))

    def phase(self, line: str) -> str | None:
        """The startup phase a log line ends, if any."""
        for pattern, phase in self.phase_lines:
            if pattern.search(line):
                return phase
        return None

    def progress(self, line: str) -> float | None:
        """The fraction of its weights loaded, where a log line says (None: it does not)."""
        return None

    def health_of(self, settings: Mapping[str, Any]) -> Health:
        """How to tell that a revision with these settings is ready."""
        return self.health

    def serves(self, settings: Mapping[str, Any]) -> frozenset[str]:
        return frozenset(settings.get("serves") or self.families)

    def smoke(self, settings: Mapping[str, Any], served: str) -> tuple[str, dict[str, Any]] | None:
        """One real request that shows a new revision answers before it is switched in: its
        path and JSON body, which must answer 200 with a non-empty ``choices`` (None: the
        health check is all there is, e.g. for an engine that serves only audio)."""
        serves = self.serves(settings)
        if "completions" in serves:
            return "/v1/completions", {"model": served, "prompt": "Hello", "max_tokens": 1}
        if "chat" in serves:
            return "/v1/chat/completions", {
                "model": served, "max_tokens": 1,
                "messages": [{"role": "user", "content": "Hello"}],
            }  # fmt: skip
        return None

    def default_concurrency(self, settings: Mapping[str, Any], planned: int | None) -> int:
        """Requests the gateway lets run at once where the deployment sets no limit."""
        return planned or 64

    def unnorm_keys(self, settings: Mapping[str, Any]) -> tuple[str, ...]:
        """Actions: the datasets whose statistics the checkpoint holds, where known."""
        return ()

    def estimate(self, settings: Mapping[str, Any], device: DeviceSample) -> Estimate:
        """Bytes per GPU it needs on ``device`` (0: no estimate; the engine's own check decides).

        Raises:
            LabError: it does not fit, or its model cannot be read (the reason and the numbers).
        """
        return Estimate(0, f"no estimate for a {self.name} engine")


def flags(
    args: Mapping[str, Any], key: str = "args", negate: bool | Collection[str] = False
) -> list[str]:
    """``{"max_model_len": 8192, "enforce_eager": true}`` → ``--max-model-len 8192 --enforce-eager``.
    ``false`` drops the flag, or where ``negate`` says the engine's switch comes in an on/off
    pair (every one, as vLLM's do, or the names given) turns it off: ``--no-enforce-eager``.

    Raises:
        ConfigError: a name that is not a flag's, or a value that is not a string, finite
            number, boolean or list of strings and numbers (:func:`labctl.config.check_flag`).
    """
    out: list[str] = []
    for name, value in args.items():
        check_flag(name, value, key)
        flag = "--" + name.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False and (negate is True or (negate and name in negate)):
            out.append("--no-" + flag[2:])
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            out += [flag, *(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def missing(recommended: Sequence[str], own: Sequence[str]) -> list[str]:
    """The planner's ``--flag value`` pairs for flags the deployment does not set itself
    (``--no-flag`` sets ``--flag`` too: off)."""
    own = [*own, *("--" + f[5:] for f in own if f.startswith("--no-"))]
    out: list[str] = []
    i = 0
    while i < len(recommended):
        flag = recommended[i]
        value = (
            []
            if i + 1 >= len(recommended) or recommended[i + 1].startswith("--")
            else [recommended[i + 1]]
        )
        if flag not in own:
            out += [flag, *value]
        i += 1 + len(value)
    return out


def model_file(settings: Mapping[str, Any], what: str) -> Path | None:
    """The deployment's model as a file (None: it names none).

    Raises:
        EngineError: no such file (``what`` says what to give, e.g. "a .gguf model").
    """
    name, model = settings["name"], settings.get("model")
    if not model:
        return None
    path = Path(model).expanduser()
    if not path.is_file():
        raise EngineError(f"{name}: model {model!r}: no such file; give the path of {what}")
    return path


def gpu_env(gpus: Sequence[int]) -> dict[str, str]:
    """The environment that puts an engine on the GPUs at NVML indices ``gpus``.

    NVML numbers GPUs in PCI bus order, the CUDA runtime fastest first unless
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``: without it, on a machine with two different cards,
    ``CUDA_VISIBLE_DEVICES=0`` can be the card the lab does not plan for or watch (vLLM's
    docs ask for the same). ``NVIDIA_VISIBLE_DEVICES`` is what the NVIDIA container runtime
    reads for an engine that runs in a container (a process on the host ignores it).

    llama.cpp's Vulkan build selects devices with ``GGML_VK_VISIBLE_DEVICES`` instead, by
    Vulkan's own enumeration (which counts integrated and software devices, in the driver's
    order), so an NVML index is not one there and is not given: a deployment of a Vulkan
    build sets it in its ``env``, and the identity check after its start catches a mismatch.
    """
    visible = ",".join(str(g) for g in gpus)
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": visible,
            "NVIDIA_VISIBLE_DEVICES": visible}  # fmt: skip
