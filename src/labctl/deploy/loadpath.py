"""The load path of a start: each phase predicted before the engine starts, measured as it
starts, and which phase held it up.

A start's phases are those its engine's log marks (``engines/base.py``), with the first one
split where the log says weights begin ("Starting to load model"): ``process_start`` (the
process, its imports and devices, until weights begin), ``weights`` (reading them), then
``profile``, ``cuda_graphs``, ``audio_warmup`` and ``api_server`` as the engine has them.

**Prediction.** ``weights`` is bytes over a rate. The twin reads at its ``load_gbps`` (its
simulated disk; its loader sets no limit of its own) in its own time, which ``time_scale``
stretches. A real engine reads at the rate the last starts of the same model reached; before
any, at min(disk, loader): the disk's figure is ``lab.disk_read_mbps``, else the last cold
``labctl models disk`` measurement of the filesystem holding the model, else the rate the lab's
last start read at, else 250 MB/s; the loader's is vLLM's default safetensors loader's, about
1.1 GB/s (fastsafetensors, Run:ai's streamer and llama.cpp's mmap set none of their own).
Every other phase is the median of the last five starts of the same model on the same engine
(the twin's simulated phases rescaled to this start's ``time_scale``), else the engine's
default.

**Verdict.** ``dominant`` is the longest phase of the start. The start was *disk-bound* when
``weights`` dominated and read within 20% of the disk's figure, and the disk is slower than
the loader; *loader-bound* the same way with the loader's figure; otherwise neither is named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import contextlib
from dataclasses import dataclass
from pathlib import Path
import re
import statistics
from typing import Any

from labctl.cache.disk import saved_rate
from labctl.cache.location import hub_cache_dir
from labctl.config import DeploymentSpec
from labctl.engines.vllm import model_kind
from labctl.runtime.process import DEFAULT_READ_RATE
from labctl.sim.startup import AUDIO_WARMUP_S, PROCESSOR_WARMUP_S

#: vLLM's default safetensors loader, GB/s (Qwen3-30B-A3B on an H200: 57.4 s, 1.1 GB/s).
LOADER_GBPS = 1.1
#: ``load_format`` values whose loaders read as fast as the disk gives.
FAST_LOADERS = frozenset({"fastsafetensors", "runai_streamer", "runai_streamer_sharded"})
#: The twin's disk when its deployment sets no ``load_gbps`` (``labctl sim serve``'s default).
TWIN_LOAD_GBPS = 2.0
#: A log line that says weights begin to be read (vLLM and the twin; Hugging Face's first
#: shard line, as OpenVLA's server logs it; llama.cpp).
WEIGHTS_BEGIN = re.compile(
    r"Starting to load model|checkpoint shards:\s+0%|llama_model_loader: loaded meta data"
)
#: Within this fraction of a rate counts as reading at that rate.
NEAR = 0.2
#: Past starts of a model whose phases a prediction takes the median of.
SEEN = 5
#: The order phases are shown in (others follow, in the order the engine logged them).
ORDER = ("process_start", "weights", "profile", "cuda_graphs", "audio_warmup", "api_server")
#: The twin's phases that its time scale stretches (its process start and API server are real).
SCALED = frozenset({"weights", "profile", "cuda_graphs", "audio_warmup"})


@dataclass(frozen=True)
class Prediction:
    """What a start should take, phase by phase, and from what."""

    model: str
    engine: str
    weight_bytes: int
    #: The twin's time scale (1 for a real engine): its rates are in its own time.
    time_scale: float
    #: The disk's read rate in GB/s, and where the figure comes from (None: not known).
    disk_gbps: float | None
    disk_basis: str | None
    #: The loader's rate in GB/s (None: it reads as fast as the disk gives).
    loader_gbps: float | None
    #: Phase → seconds, and phase → where the figure comes from.
    phases: dict[str, float]
    basis: dict[str, str]

    @property
    def total(self) -> float:
        return sum(self.phases.values())

    def doc(self) -> dict[str, Any]:
        return {"model": self.model, "engine": self.engine, "weight_bytes": self.weight_bytes,
                "time_scale": self.time_scale, "disk_gbps": self.disk_gbps,
                "disk_basis": self.disk_basis, "loader_gbps": self.loader_gbps,
                "phases": {k: round(v, 3) for k, v in self.phases.items()},
                "total_s": round(self.total, 3), "basis": dict(self.basis)}  # fmt: skip


def _args(spec: DeploymentSpec) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in spec.args.items()}


def _number(value: Any, default: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    return float(value) if ok else default


def seen(history: Sequence[Mapping[str, Any]], model: str, engine: str) -> list[dict[str, Any]]:
    """The load paths of the last starts of ``model`` on ``engine`` (journal records, newest
    first), at most :data:`SEEN`."""
    out: list[dict[str, Any]] = []
    for record in history:
        for step in reversed(record.get("steps") or []):
            path = (step.get("detail") or {}).get("load_path")
            if (step.get("name") in ("start", "rollback") and step.get("outcome") == "ok"
                    and isinstance(path, dict) and path.get("model") == model
                    and path.get("engine") == engine
                    and isinstance(path.get("phases"), dict)):  # fmt: skip
                out.append(path)
                if len(out) == SEEN:
                    return out
    return out


def _defaults(engine: str, args: Mapping[str, Any], model: str, scale: float) -> dict[str, float]:
    """Each phase but weights, before the lab has seen a start of the model: the twin's own
    durations (``sim/startup.py``: profile 2 s, graph capture 5 s, the speech warm-ups; all
    in its time), and rough figures for vLLM on a current GPU."""
    eager, kind = bool(args.get("enforce_eager")), model_kind(model)
    speech = kind == "whisper"
    if engine == "sim" and kind == "openvla":
        return {"process_start": 1.0, "api_server": 0.1}
    if engine == "sim":
        out = {"process_start": 1.0, "profile": 2.0 * scale}
        out |= {} if eager else {"cuda_graphs": 5.0 * scale}
        out |= {"audio_warmup": AUDIO_WARMUP_S * scale} if speech else {}
        return out | {"api_server": 0.05 + (PROCESSOR_WARMUP_S * scale if speech else 0.0)}
    if engine == "vllm":
        out = {"process_start": 15.0, "profile": 3.0 if eager else 10.0}
        out |= {} if eager else {"cuda_graphs": 15.0}
        out |= {"audio_warmup": AUDIO_WARMUP_S} if speech else {}
        return out | {"api_server": 2.0}
    if engine == "llamacpp":
        return {"process_start": 0.2, "api_server": 0.5}
    return {}


def _model_path(spec: DeploymentSpec, models_dir: Path | None) -> Path:
    """Where the model's files are read from: its own path, else the hub cache."""
    if spec.model:
        with contextlib.suppress(OSError, ValueError):
            own = Path(spec.model).expanduser()
            if own.exists():
                return own
    return models_dir if models_dir is not None else hub_cache_dir()


def plan(
    spec: DeploymentSpec,
    weight_bytes: int,
    history: Sequence[Mapping[str, Any]],
    configured_rate: float | None = None,
    last_rate: float | None = None,
    home: Path | None = None,
    models_dir: Path | None = None,
) -> Prediction:
    """What a start of ``spec`` should take, from the journal's ``history`` (records, newest
    first), the lab's disk figures (bytes/s: ``lab.disk_read_mbps``; the last start's rate)
    and ``labctl models disk``'s measurement kept in ``home``."""
    engine, model, args = spec.engine, spec.model or "", _args(spec)
    past = seen(history, model, engine)
    twin = engine == "sim"
    scale = _number(args.get("time_scale"), 1.0) if twin else 1.0
    if twin and model_kind(model) == "openvla":
        from labctl.sim.vla import weight_bytes as vla_bytes  # its checkpoint is bf16

        weight_bytes = vla_bytes(16, bool(args.get("oft")))
    loader: float | None = None
    disk: float | None
    disk_basis: str | None
    read: float | None
    if twin:
        twin_disk = _number(args.get("load_gbps"), TWIN_LOAD_GBPS)
        disk, disk_basis = twin_disk, "the twin's load_gbps"
        read = twin_disk * 1e9 / scale if twin_disk > 0 and scale > 0 else None
        why = f"{weight_bytes / 1e9:.2f} GB at the twin's {twin_disk:g} GB/s" + (
            f", time scale {scale:g}" if scale != 1 else ""
        )
    else:
        if engine == "vllm" and str(args.get("load_format") or "auto") not in FAST_LOADERS:
            loader = LOADER_GBPS
        measured = saved_rate(home, _model_path(spec, models_dir)) if home is not None else None
        found = configured_rate or measured
        disk = found / 1e9 if found else None
        disk_basis = (
            ("lab.disk_read_mbps" if configured_rate else "labctl models disk") if found else None
        )
        read, why = _read_rate(weight_bytes, past, disk, disk_basis, loader, last_rate)
    phases = dict(_defaults(engine, args, model, scale))
    basis = dict.fromkeys(phases, "default")
    for name in dict.fromkeys(n for p in past for n in p["phases"] if n != "weights"):
        values = [v for p in past if (v := _rescaled(p, name, scale)) is not None]
        if values and not (name == "cuda_graphs" and args.get("enforce_eager")):
            phases[name] = statistics.median(values)
            basis[name] = f"median of {len(values)} start(s) of this model"
    if weight_bytes:
        phases["weights"] = weight_bytes / read if read else 0.0
        basis["weights"] = why
    phases = _ordered(phases)
    return Prediction(model, engine, weight_bytes, scale, disk, disk_basis, loader, phases,
                      {n: basis[n] for n in phases})  # fmt: skip


def _read_rate(
    weight_bytes: int, past: Sequence[Mapping[str, Any]], disk: float | None,
    disk_basis: str | None, loader: float | None, last_rate: float | None,
) -> tuple[float, str]:  # fmt: skip
    """A real engine's read rate in bytes/s, and where it comes from: what the last starts of
    the model reached, else min(disk, loader) with the best disk figure there is."""
    rates = [float(r) for p in past
             if isinstance(r := p.get("achieved_gbps"), (int, float)) and r > 0]  # fmt: skip
    if rates:
        rate = statistics.median(rates) * 1e9
        return (
            rate,
            f"read at {rate / 1e9:.2f} GB/s in the last {len(rates)} start(s) of this model",
        )
    known = disk * 1e9 if disk else last_rate or DEFAULT_READ_RATE
    source = disk_basis or ("the lab's last start" if last_rate else "assumed; measure it with "
                            "`labctl models disk`")  # fmt: skip
    rate = min(known, loader * 1e9) if loader else known
    limit = f"loader {loader:g} GB/s" if loader else "no loader limit"
    return rate, (f"{weight_bytes / 1e9:.2f} GB at min(disk {known / 1e9:.2f} GB/s ({source}), "
                  f"{limit})")  # fmt: skip


def _rescaled(path: Mapping[str, Any], name: str, scale: float) -> float | None:
    """A past start's phase, in this start's time (the twin's simulated phases stretch with
    its time scale)."""
    value = path["phases"].get(name)
    if not isinstance(value, (int, float)):
        return None
    before = _number(path.get("time_scale"), 1.0)
    if name in SCALED and before != scale:
        return float(value) * scale / before if before > 0 else None
    return float(value)


def _ordered(phases: Mapping[str, float]) -> dict[str, float]:
    first = [n for n in ORDER if n in phases]
    return {n: phases[n] for n in first + [n for n in phases if n not in first]}


def split(phases: Mapping[str, float], weights_from: float | None) -> dict[str, float]:
    """An engine's phases (each from the previous one's end, the first from the spawn) with
    ``load_weights`` split at ``weights_from`` (seconds from the spawn to the line that says
    weights begin) into ``process_start`` and ``weights``."""
    out: dict[str, float] = {}
    elapsed = 0.0
    for name, seconds in phases.items():
        if name == "load_weights":
            begin = weights_from if weights_from is not None else None
            if begin is not None and elapsed <= begin <= elapsed + seconds:
                out["process_start"] = begin - elapsed
                out["weights"] = elapsed + seconds - begin
            else:
                out["weights"] = seconds
        else:
            out[name] = seconds
        elapsed += seconds
    return _ordered(out)


def weights_seconds(phases: Mapping[str, float], weights_from: float | None) -> float | None:
    """Seconds the weights took to read (None: the engine's log does not say)."""
    return split(phases, weights_from).get("weights") if "load_weights" in phases else None


def _near(value: float, target: float) -> bool:
    return target > 0 and abs(value / target - 1) <= NEAR


def verdict(
    predicted: Prediction, phases: Mapping[str, float], weights_from: float | None
) -> dict[str, Any]:
    """What the start took against ``predicted``: its phases, the dominant one, and whether
    it was disk- or loader-bound (see the module's docstring), with a one-line verdict."""
    actual = split(phases, weights_from)
    total = sum(actual.values())
    dominant = max(actual, key=lambda n: actual[n]) if actual else None
    w = actual.get("weights")
    scale = predicted.time_scale
    achieved = (predicted.weight_bytes * scale / w / 1e9
                if w and predicted.weight_bytes and scale > 0 else None)  # fmt: skip
    disk, loader = predicted.disk_gbps, predicted.loader_gbps
    bound = None
    if dominant == "weights" and achieved is not None:
        if disk and (loader is None or disk < loader) and _near(achieved, disk):
            bound = "disk"
        elif loader and (disk is None or loader <= disk) and _near(achieved, loader):
            bound = "loader"
    return {
        "model": predicted.model, "engine": predicted.engine,
        "weight_bytes": predicted.weight_bytes, "time_scale": scale,
        "phases": {k: round(v, 3) for k, v in actual.items()}, "total_s": round(total, 3),
        "achieved_gbps": round(achieved, 3) if achieved is not None else None,
        "dominant": dominant, "bound": bound, "disk_bound": bound == "disk",
        "error": {n: round(actual[n] / p - 1, 3) for n, p in predicted.phases.items()
                  if n in actual and p > 0},
        "verdict": _say(actual, total, dominant, bound, achieved, disk, loader),
    }  # fmt: skip


def _say(
    actual: Mapping[str, float], total: float, dominant: str | None, bound: str | None,
    achieved: float | None, disk: float | None, loader: float | None,
) -> str:  # fmt: skip
    if dominant is None:
        return "no startup phases seen"
    share = f"{actual[dominant]:.2f} s of {total:.2f} s"
    rate = f", read at {achieved:.2f} GB/s" if achieved is not None else ""
    if bound == "disk":
        return (f"disk-bound: weights took {share}{rate}, the disk's rate ({disk:g} GB/s)"
                + (f"; the loader could take {loader:g} GB/s" if loader else ""))  # fmt: skip
    if bound == "loader":
        return (f"loader-bound: weights took {share}{rate}, the loader's rate ({loader:g} "
                "GB/s); a faster loader (fastsafetensors, Run:ai's streamer) would shorten it")  # fmt: skip
    if dominant == "weights":
        limit = min(r for r in (disk, loader, float("inf")) if r)
        if achieved is not None and limit != float("inf"):
            how = "slower" if achieved < limit else "faster"
            return f"weights dominated: {share}{rate}, {how} than the disk and loader figures"
        return f"weights dominated: {share}{rate}"
    w = actual.get("weights")
    weights = f"; weights {w:.2f} s{rate}" if w is not None else ""
    return f"{dominant} dominated: {share}{weights}"
