"""A lab's report sources (``GET /api/report``'s document) made up for tests: any number of
deployments and deploys, a bench sweep, a minute's serving figures for hours, alerts, the
doctor's findings, engine log tails and the models on disk.

Every free-text place a source has is a parameter (``plant``), so a test can put a secret
into each: lab.toml (as a valid TOML string, beside a secret-named key), a deploy's error, an
engine log line, a bench result (the fields the report shows: its model, backend and
headline), the doctor's evidence, a model's path, a metric label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import random
from typing import Any

T0 = 1_796_000_000.0
GPU_UUID = "GPU-5a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"
HOME = "/home/alice/.labctl"
CACHE = "/home/alice/.cache/huggingface/hub"
REV = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Plant:
    """Text put into each source (empty: nothing extra)."""

    config: str = ""
    error: str = ""
    log: str = ""
    bench: str = ""
    doctor: str = ""
    path: str = ""
    label: str = ""
    alert: str = ""
    step: str = ""
    password: str = ""  # lab.toml's ``my_password`` (a secret by its key's name only)
    extra: dict[str, str] = field(default_factory=dict)


def sources(
    deployments: int = 2,
    deploys: int = 6,
    minutes: int = 180,
    plant: Plant | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the daemon's report sources, ``labctl models --json``'s document)."""
    p = plant or Plant()
    rng = random.Random(seed)
    names = [f"dep{i}" if i else "chat" for i in range(deployments)]
    models = ["Qwen/Qwen3-0.6B", "Qwen/Qwen3-8B", "meta-llama/Llama-3.1-8B-Instruct"]
    until = T0 + minutes * 60
    config = "\n".join([
        "[lab]", 'listen = "10.20.30.40:8080"', 'allowed_hosts = ["gpubox.lan"]',
        'sim_gpus = "rtx-3090"', "[gateway]", 'admin_token = "adm-0f9e8d7c6b5a4f3e2d1c"',
        *(f'[[deployments]]\nname = "{n}"\nengine = "sim"\nmodel = "{models[i % 3]}"'
          for i, n in enumerate(names)),
        *(["[lab.extra]"] if p.config or p.password else []),
        *([f"note = {json.dumps(p.config)}"] if p.config else []),
        *([f"my_password = {json.dumps(p.password)}"] if p.password else []),
    ])  # fmt: skip
    deploy_docs = []
    for i in range(deploys):
        name = names[i % deployments]
        kind = ("start", "deploy", "rollback", "restart")[i % 4] if i else "start"
        outcome = "rolled_back" if i % 7 == 3 else "committed"
        start = T0 + i * 60
        steps = []
        t = start
        for s, d in (("preflight", 0.3), ("drain", 0.1), ("stop", 1.0), ("verify_release", 0.5),
                     ("start", 8.0 + rng.random() * 4), ("smoke_test", 0.4), ("switch", 0.01)):  # fmt: skip
            detail: dict[str, Any] = {}
            if s == "preflight":
                detail["need"] = f"21.22 GiB per GPU (weights 1.11 GiB) {p.step}".strip()
            if s == "verify_release":
                detail["release_seconds"] = 0.4 + rng.random()
            steps.append({"deploy_id": i + 1, "seq": len(steps) + 1, "name": s, "started": t,
                          "finished": t + d, "outcome": "ok", "error": None,
                          "freed_bytes": 22_786_948_989 if s == "verify_release" else None,
                          "detail": detail, "duration_s": d})  # fmt: skip
            t += d
        deploy_docs.append({
            "id": i + 1, "deployment": name, "kind": kind, "from_revision": i or None,
            "to_revision": i + 1, "started": start, "finished": t, "outcome": outcome,
            "error": f"smoke test failed: engine said 500 {p.error}" if outcome != "committed"
            else None, "duration_s": t - start, "steps": steps,
        })  # fmt: skip
    deploy_docs.reverse()
    serving = []
    for m in range(minutes):
        for n in names:
            label = f"{n} {p.label}".strip() if m % 2 else n
            serving.append({"t": T0 + m * 60, "deployment": label, "figures": {
                "tokens_completion": 800 + 200 * rng.random(), "tokens_prompt": 3000.0,
                "ttft_p50": 0.05 + 0.01 * rng.random(), "ttft_p99": 0.2 + 0.1 * rng.random(),
                "itl_p50": 0.012, "itl_p99": 0.02, "requests_running": float(rng.randint(0, 30)),
                "requests_waiting": float(rng.randint(0, 3)), "requests_queued": 0.0,
                "kv": rng.random() * 0.9}})  # fmt: skip
    sweep = {"sweep": {"parameter": "concurrency", "values": [1, 4, 16]}, "interrupted": False,
             "runs": [{"model_id": models[0], "backend": "openai", "max_concurrency": c,
                       "request_rate": "inf", "completed": 100, "failed": 0,
                       "request_throughput": 2.0 * c, "output_throughput": 250.0 * c,
                       "median_ttft_ms": 30.0 + c, "p99_ttft_ms": 90.0 + 3 * c,
                       "median_tpot_ms": 8.0 + c / 4, "median_itl_ms": 8.0, "p99_itl_ms": 20.0}
                      for c in (1, 4, 16)]}  # fmt: skip
    if p.bench:  # the fields of a bench result the report shows
        sweep["headline"] = p.bench
        sweep["runs"][0]["backend"] = f"openai {p.bench}"
    src = {
        "generated": until, "since": T0 - 60,
        "lab": {"url": "http://10.20.30.40:8080", "config": "/home/alice/lab/lab.toml",
                "config_text": config, "gpu_backend": "nvml", "hostname": "gpubox",
                "fqdn": "gpubox.corp.example.com", "user": "alice", "home": HOME,
                "version": "0.1.0", "started": T0 - 120},
        "gpus": [{"index": 0, "name": "NVIDIA GeForce RTX 3090", "uuid": GPU_UUID,
                  "pci_bus_id": "00000000:01:00.0", "memory_total_bytes": 25_769_803_776,
                  "power_limit_watts": 350.0, "driver_version": "550.54.15",
                  "cuda_driver_version": "12.4"}],
        "deployments": [{"name": n, "state": "ready", "model": models[i % 3],
                         "served_model": models[i % 3], "engine": "sim", "revision": 2,
                         "gpus": [0], "url": f"http://127.0.0.1:{40000 + i}", "pid": 4000 + i,
                         "error": None, "restarts": i % 2, "startup_phases": {},
                         "load_path": {"total_s": 2.9, "verdict": "profile dominated: 2.01 s "
                                       "of 2.87 s"}, "deploying": None, "asleep": []}
                        for i, n in enumerate(names)],
        "deploys": deploy_docs,
        "revisions": {},
        "alerts": [{"id": 1, "name": "LabKVCacheNearlyFull", "severity": "warning",
                    "labels": {"deployment": names[0], "instance": f"gpubox:8080 {p.alert}".strip()},
                    "summary": f"KV cache of {names[0]} at 95% {p.alert}".strip(),
                    "started": T0 + 600, "ended": T0 + 900}],
        "serving": serving,
        "bench": [{"id": 1, "t": T0 + 1200, "model": f"{models[0]} {p.bench}".strip(),
                   "result": sweep}],
        "doctor": {"findings": [
            {"code": "host-memory", "severity": "info", "place": "host",
             "message": "memory: 23.11 GiB available", "evidence": f"/proc/meminfo {p.doctor}",
             "remedy": ""},
            {"code": "gpu-persistence", "severity": "warn", "place": "gpu 0",
             "message": "persistence mode is off", "evidence": f"{GPU_UUID} on 00000000:01:00.0",
             "remedy": "sudo nvidia-smi -pm 1"},
        ], "skipped": [], "seconds": 0.4},
        "logs": {n: [f"INFO 12-03 07:00:0{j} loading weights from {CACHE}/models--Qwen--Qwen3-0.6B"
                     f"/snapshots/{REV}/model.safetensors" for j in range(5)]
                 + [f"INFO connected to 10.20.30.41:5000 {p.log}".strip()] for n in names},
    }  # fmt: skip
    disk = {
        "models": [{"repo_id": "Qwen/Qwen3-0.6B", "revision": REV, "source": "hf-cache",
                    "format": "safetensors", "quantization": None, "size_bytes": 1_503_300_328,
                    "complete": True, "used_by": ["chat"], "fits_on": ["0: rtx-3090"],
                    "path": f"{CACHE}/models--Qwen--Qwen3-0.6B/snapshots/{REV}", "notes": []},
                   {"repo_id": f"/srv/models/private-llama.gguf {p.path}".strip(), "revision": None,
                    "source": "gguf", "format": "gguf", "quantization": "Q4_K_M",
                    "size_bytes": 4_920_000_000, "complete": True, "used_by": [],
                    "fits_on": ["0: rtx-3090"],
                    "path": f"/srv/models/private-llama.gguf {p.path}".strip(), "notes": []}],
        "cache_dir": CACHE, "ollama": [], "paths": ["/srv/models"], "lab": None,
        "gpus": ["0: rtx-3090"], "warnings": [],
    }  # fmt: skip
    for where, text in p.extra.items():
        src["logs"].setdefault(where, []).append(text)
    return src, disk


PLANS = [{"model": "Qwen/Qwen3-0.6B", "gpu": "0: rtx-3090", "fits": True,
          "weights_bytes": 1_192_099_840, "kv_cache_tokens": 180_592, "max_model_len": 40_960,
          "max_model_len_fit": 40_960, "max_concurrency": 4.41, "note": ""}]  # fmt: skip
