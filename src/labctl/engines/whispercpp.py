"""whisper.cpp's ``whisper-server``: speech to text, one request at a time.

It serves OpenAI's transcription endpoint when started with ``--inference-path
/v1/audio/transcriptions`` (the form's ``model`` is ignored); translation is the same
endpoint with the form field ``translate=true``, which the gateway adds for
``/v1/audio/translations``. It loads its model before it binds its port, so ``/health``
answering 200 means ready. It has no ``/metrics``: the gateway's own metrics (requests,
latency, audio seconds, real-time factor) carry it. One global lock serialises inference,
so the gateway lets one request run at a time and queues the rest.

Its load prints the memory it takes (``whisper_model_load: … total size``, ``kv self
size``, ``kv cross size``, ``compute buffer (…)``), which the planner
(:mod:`labctl.fit.whispercpp`) computes before the start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import re
from types import MappingProxyType
from typing import Any

from labctl.engines.base import Adapter, Estimate, Launch, Upstream, flags, gpu_env, model_file
from labctl.errors import EngineError, LabError
from labctl.fit.whispercpp import plan_file
from labctl.gpu.sample import DeviceSample
from labctl.units import MiB

#: The path whisper-server answers on, as the lab starts it.
INFERENCE_PATH = "/v1/audio/transcriptions"


class WhisperCppAdapter(Adapter):
    name = "whispercpp"
    families = ("transcriptions", "translations")
    phase_lines = (
        (re.compile(r"whisper_model_load: +model size"), "load_weights"),
        (re.compile(r"compute buffer \(decode\)"), "profile"),
        (re.compile(r"whisper server listening at http"), "api_server"),
    )
    #: Translation is transcription with ``translate=true`` (whisper-server has one path).
    upstream = MappingProxyType(
        {"translations": Upstream(INFERENCE_PATH, (("translate", "true"),))}
    )

    def launch(
        self, settings: Mapping[str, Any], host: str, port: int, gpus: Sequence[int]
    ) -> Launch:
        own = flags(settings.get("args", {}))
        # Without -nf a clip the model is unsure of is decoded again at five temperatures,
        # which makes one request's latency vary thirtyfold; the deployment may still ask.
        defaults = [] if {"--no-fallback", "--temperature-inc"} & set(own) else ["-nf"]
        argv = [settings.get("binary") or "whisper-server", "-m", settings["model"],
                "--host", host, "--port", str(port), "--inference-path", INFERENCE_PATH,
                *defaults, *own]  # fmt: skip
        return Launch(argv, gpu_env(gpus), self.health, None)

    def default_concurrency(self, settings: Mapping[str, Any], planned: int | None) -> int:
        return 1  # one lock around inference: a second request would only wait inside it

    def estimate(self, settings: Mapping[str, Any], device: DeviceSample) -> Estimate:
        path = model_file(settings, "a whisper.cpp ggml model (ggml-large-v3.bin, …)")
        if path is None:
            return super().estimate(settings, device)
        try:
            p = plan_file(path)
        except LabError as exc:
            raise EngineError(f"{settings['name']}: {exc}") from exc
        return Estimate(p.total, f"{p.total / MiB:.0f} MiB ({p.summary()})", max_num_seqs=1,
                        weight_bytes=p.weights)  # fmt: skip
