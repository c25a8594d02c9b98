"""`labctl export kubernetes`: manifests that validate offline (Kubernetes's schemas and the
Prometheus Operator's CRDs), Recreate exactly where the planner says two copies do not fit,
probes that cover the predicted start, the lab's own alert rules."""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import json
from pathlib import Path
import re
from typing import Any

from click.testing import CliRunner
import jsonschema
import kubernetes_validate
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
import pytest
from tests.tinygguf import write_tiny_llama
from tests.tinywhisper import write_model
import yaml

from labctl.cache.resolve import resolve_model
from labctl.catalog.gpus import gpu
from labctl.cli.exportk8s import workloads
from labctl.cli.main import cli
from labctl.config import DeploymentSpec, LabConfig, default_config
from labctl.dashboard.alerts import ALERTS, RuleEngine, rule_groups, rules_yaml
from labctl.dashboard.grafana import dashboard_json
from labctl.dashboard.promql import Store, metric_names
from labctl.deploy.loadpath import plan as predict
from labctl.errors import ConfigError
from labctl.export.k8s import Manifest, Options, Workload, engines, object_name, startup_budget
from labctl.export.k8sout import manifests, parse_version
from labctl.export.k8splan import MARGIN
from labctl.export.k8syaml import dump
from labctl.fit.plan import FitRequest, plan
from labctl.sim.live import TwinMetrics

CRDS = Path(__file__).resolve().parents[1] / "data" / "crds"
SEEDS = ("google/gemma-4-31B-it", "google/gemma-4-26B-A4B-it",
         "cyankiwi/gemma-4-26B-A4B-it-AWQ-4bit", "Qwen/Qwen3.6-35B-A3B-FP8",
         "openai/whisper-large-v3")  # fmt: skip
GPUS = ("rtx-3090", "h100-sxm")
#: vLLM's default, and a share two copies can hold.
SHARES = (0.9, 0.45)
VERSIONS = ("1.30", "1.36")


def seed_lab(gpu_id: str) -> LabConfig:
    """Every seed model on vLLM at two memory shares, and OpenVLA in its own image."""
    specs = [DeploymentSpec(name=f"seed{i}-{int(share * 100)}", engine="vllm", model=model,
                            args={"gpu_memory_utilization": share})
             for i, model in enumerate(SEEDS) for share in SHARES]  # fmt: skip
    specs.append(DeploymentSpec(name="robot", engine="openvla", model="openvla/openvla-7b",
                                image="ghcr.io/example/openvla:1"))  # fmt: skip
    return LabConfig(gpu_backend="sim", sim_gpus=f"1x{gpu_id}", deployments=tuple(specs))


@pytest.fixture(scope="module")
def mixed_lab(tmp_path_factory: pytest.TempPathFactory) -> LabConfig:
    """Every other engine: llama.cpp and whisper.cpp on files, the twin, a command server
    (a secret in its environment), a vLLM on two GPUs."""
    where = tmp_path_factory.mktemp("models")
    gguf = write_tiny_llama(where / "tiny.gguf")
    ggml = write_model(where / "ggml-tiny.bin")
    specs = (
        DeploymentSpec(name="small", engine="llamacpp", model=str(gguf),
                       args={"ctx_size": 2048, "n_gpu_layers": 99}),
        DeploymentSpec(name="asr_cpp", engine="whispercpp", model=str(ggml)),
        DeploymentSpec(name="twin", engine="sim", model="Qwen/Qwen3-0.6B",
                       args={"max_model_len": 4096, "gpu_memory_utilization": 0.3}),
        DeploymentSpec(name="custom", engine="command", image="ghcr.io/example/server:1.0",
                       command=("my-server", "--host", "{host}", "--port", "{port}"),
                       health_path="/healthz",
                       env={"MODE": "fast", "SERVER_TOKEN": "s3cret-value-123"}),
        DeploymentSpec(name="Big.Model", engine="vllm", model="Qwen/Qwen3-0.6B", gpus=(0, 1),
                       args={"tensor_parallel_size": 2}),
    )  # fmt: skip
    return LabConfig(gpu_backend="sim", sim_gpus="2xh100-sxm", deployments=specs)


def export(lab: LabConfig, opts: Options | None = None) -> tuple[list[Workload], list[Manifest]]:
    """The lab's workloads (sized on its simulated GPUs) and every object of its export."""
    sized = workloads(lab, None, False, False)
    return sized, manifests(sized, rule_groups(), dashboard_json(), opts or Options())


def labs(mixed: LabConfig) -> Iterator[tuple[str, LabConfig]]:
    yield "default", default_config()
    for g in GPUS:
        yield f"seeds on {g}", seed_lab(g)
    yield "mixed", mixed


def of_kind(objects: list[Manifest], kind: str) -> list[dict[str, Any]]:
    return [m.doc for m in objects if m.doc["kind"] == kind]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(mixed_lab: LabConfig, version: str) -> None:
    for name, lab in labs(mixed_lab):
        _, objects = export(lab)
        for m in objects:
            doc = yaml.safe_load(dump(m.doc))  # as the file reads
            assert doc == m.doc
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                continue
            assert kubernetes_validate.validate(doc, version, strict=True) == version, name


def test_strict_validation_refuses_an_unknown_field() -> None:
    _, objects = export(default_config())
    doc = of_kind(objects, "Deployment")[0]
    doc["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.30", strict=True)


def _strict(schema: Any) -> Any:
    """The CRD's schema with unknown fields refused (the API server would prune them)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    doc = json.loads((CRDS / f"{kind.lower()}s.v1.json").read_text())
    assert doc["kind"] == kind
    schema = _strict(doc["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def test_operator_objects_validate_against_their_crds(mixed_lab: LabConfig) -> None:
    _, objects = export(mixed_lab, Options(release="prom"))
    kinds = {m.doc["kind"] for m in objects if m.doc["apiVersion"] == "monitoring.coreos.com/v1"}
    assert kinds == {"ServiceMonitor", "PrometheusRule"}
    for kind in kinds:
        validator = crd_validator(kind)
        for doc in of_kind(objects, kind):
            validator.validate(doc)
            assert doc["metadata"]["labels"]["release"] == "prom"
    bad = of_kind(objects, "ServiceMonitor")[0]
    bad["spec"]["endpoints"][0]["scrapeEvery"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        crd_validator("ServiceMonitor").validate(bad)


@pytest.mark.parametrize("gpu_id", GPUS)
def test_recreate_exactly_when_the_planner_says_two_copies_do_not_fit(gpu_id: str) -> None:
    sized, objects = export(seed_lab(gpu_id))
    spec_gpu = gpu(gpu_id)
    outcomes = set()
    for w, doc in zip(sized, of_kind(objects, "Deployment"), strict=True):
        assert doc["metadata"]["name"] == object_name(w.spec.name)
        if w.spec.engine == "vllm":
            share = w.spec.args["gpu_memory_utilization"]
            res = plan(resolve_model(str(w.spec.model)),
                       FitRequest.on_gpu(spec_gpu, gpu_memory_utilization=share), suggest=False)  # fmt: skip
            two = res.fits and 2 * res.budget_bytes <= spec_gpu.cuda_total_bytes * (1 - MARGIN)
        else:
            two = 2 * w.sizing.estimate.bytes_per_gpu <= spec_gpu.cuda_total_bytes * (1 - MARGIN)
        strategy = doc["spec"]["strategy"]
        assert strategy["type"] == ("RollingUpdate" if two else "Recreate"), w.spec.name
        if two:
            assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        outcomes.add(two)
    assert outcomes == {True, False}  # both answers occur on both GPUs


def test_a_rtx_3090_holds_no_seed_model_twice_at_vllms_default_share() -> None:
    sized, _ = export(seed_lab("rtx-3090"))
    at_default = [w for w in sized if w.spec.args.get("gpu_memory_utilization") == 0.9]
    assert at_default and not any(w.sizing.two_fit for w in at_default)
    whisper = next(w for w in sized if w.spec.name == "seed4-45")
    assert whisper.sizing.two_fit  # 2 × 0.45 of the card, within the margin


@pytest.mark.parametrize("gpu_id", GPUS)
def test_the_startup_probe_covers_the_predicted_start(gpu_id: str) -> None:
    sized, objects = export(seed_lab(gpu_id))
    for w, doc in zip(sized, of_kind(objects, "Deployment"), strict=True):
        predicted = predict(w.spec, w.sizing.estimate.weight_bytes, []).total
        assert w.predicted_s == pytest.approx(predicted)
        probe = doc["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
        budget = probe["failureThreshold"] * probe["periodSeconds"]
        assert budget >= 2 * predicted + 60
        notes = doc["metadata"]["annotations"]
        assert notes["labctl.dev/predicted-start-seconds"] == f"{predicted:.0f}"
    if gpu_id == "h100-sxm":  # Gemma 4 26B in bf16 fits: 48 GiB read at 250 MB/s
        assert max(w.predicted_s for w in sized if w.sizing.fits) > 200


def test_startup_budget() -> None:
    assert startup_budget(0) == 300
    assert startup_budget(400) == 860
    assert startup_budget(10, startup_timeout=1801) == 1810


def test_the_prometheus_rule_carries_the_rules_promtool_tests() -> None:
    _, objects = export(default_config())
    doc = yaml.safe_load(dump(of_kind(objects, "PrometheusRule")[0]))
    assert doc["spec"]["groups"] == yaml.safe_load(rules_yaml())["groups"]
    assert len(doc["spec"]["groups"][0]["rules"]) == len(ALERTS)


def test_the_command_writes_the_rules_promtool_tests(tmp_path: Path) -> None:
    """The PrometheusRule the command itself writes (not one built here from
    ``rules_yaml()``): the same groups, expressions, ``for:`` and labels as the rules file
    ``promtool test rules`` passes, under the operator's metadata."""
    out = tmp_path / "k8s"
    result = CliRunner().invoke(cli, ["export", "kubernetes", "--out", str(out),
                                      "--namespace", "lab", "--release", "prom"])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load((out / "prometheusrule.yaml").read_text())
    assert doc["metadata"]["labels"]["release"] == "prom"
    assert doc["metadata"]["namespace"] == "lab"
    tested = yaml.safe_load(rules_yaml())["groups"]
    assert doc["spec"]["groups"] == tested
    rules = [r for g in doc["spec"]["groups"] for r in g["rules"]]
    assert [(r["alert"], r["expr"], r["for"], r["labels"]) for r in rules] == [
        (a.name, a.expr, a.for_, {"severity": a.severity}) for a in ALERTS
    ]


def _relabel(configs: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str]:
    """Prometheus's relabelling, for the action the export uses (``replace``): the source
    labels joined, the regex anchored, ``$1`` in the replacement the first group."""
    out = dict(labels)
    for c in configs:
        assert c.get("action", "replace") == "replace", c
        value = c.get("separator", ";").join(out.get(k, "") for k in c.get("sourceLabels", []))
        m = re.fullmatch(c.get("regex", "(.*)"), value)
        if m:
            replacement = re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", c.get("replacement", "$1"))
            out[c["targetLabel"]] = m.expand(replacement)
    return out


def scraped(monitor: dict[str, Any], service: dict[str, Any], exposition: str) -> list[Sample]:
    """The samples Prometheus stores when ``monitor`` scrapes ``exposition`` from the pod
    behind ``service``: the endpoint's relabelings on the target's labels, then its
    metricRelabelings on each sample."""
    (endpoint,) = monitor["spec"]["endpoints"]
    meta = {"__meta_kubernetes_service_label_" + re.sub(r"[^A-Za-z0-9_]", "_", k): v
            for k, v in service["metadata"]["labels"].items()}  # fmt: skip
    target = _relabel(endpoint.get("relabelings", []), {**meta, "instance": "10.0.0.7:8000"})
    target = {k: v for k, v in target.items() if not k.startswith("__")}
    out = []
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            labels = _relabel(endpoint.get("metricRelabelings", []),
                              {**s.labels, **target, "__name__": s.name})  # fmt: skip
            name = labels.pop("__name__")
            out.append(Sample(name, labels, s.value))
    return out


def test_the_monitor_gives_a_vllm_engine_the_series_the_rules_read() -> None:
    """On a cluster Prometheus scrapes vLLM itself, not the daemon: the monitor renames the
    engine's series to the lab's and labels them ``deployment``, so every engine series a
    rule reads exists there, and the KV rule fires on a saturated engine."""
    lab = LabConfig(deployments=(DeploymentSpec(name="Chat.1", engine="vllm",
                                                model="Qwen/Qwen3-0.6B"),))  # fmt: skip
    sized = workloads(lab, "h100-sxm", False, False)
    objects = manifests(sized, rule_groups(), dashboard_json(), Options())
    (service,) = of_kind(objects, "Service")
    tags = service["metadata"]["labels"]
    (monitor,) = [m for m in of_kind(objects, "ServiceMonitor")
                  if m["spec"]["selector"]["matchLabels"].items() <= tags.items()]  # fmt: skip
    crd_validator("ServiceMonitor").validate(monitor)
    twin = TwinMetrics("Qwen/Qwen3-0.6B", 4096)  # vLLM's own names and labels
    twin.kv_usage.set(0.99)
    twin.waiting.set(5)
    samples = scraped(monitor, service, generate_latest(twin.registry).decode())
    have = {s.name for s in samples if s.labels.get("deployment") == "Chat.1"}
    rules = [r for g in of_kind(objects, "PrometheusRule")[0]["spec"]["groups"]
             for r in g["rules"]]  # fmt: skip
    # The engine's series; the restart counter is the daemon's own (README: daemon-only).
    wanted = {n for r in rules for n in metric_names(r["expr"])
              if n.startswith("labctl_engine_") and n != "labctl_engine_restarts_total"}  # fmt: skip
    assert {"labctl_engine_kv_cache_usage_ratio", "labctl_engine_requests_waiting"} <= wanted
    assert wanted <= have, wanted - have
    assert "vllm:kv_cache_usage_perc" not in have  # renamed, not copied
    assert "vllm:prompt_tokens_total" in have  # the others keep vLLM's names
    (kv,) = [a for a in ALERTS if a.name == "LabKvCacheSaturated"]
    store = Store()
    store.add(0.0, [(s.name, s.labels, s.value) for s in samples])
    firing = RuleEngine((kv,), for_scale=0).evaluate(store, 0.0)
    assert [f.labels["deployment"] for f in firing if f.state == "firing"] == ["Chat.1"]


def test_the_readme_names_the_rules_a_cluster_can_fire(mixed_lab: LabConfig) -> None:
    """On a cluster the series are the engines' (as the monitors rename them) and
    dcgm-exporter's; a rule that reads any other series cannot fire there."""
    _, objects = export(mixed_lab)
    renamed = {c["replacement"] for m in of_kind(objects, "ServiceMonitor")
               for c in m["spec"]["endpoints"][0]["metricRelabelings"]}  # fmt: skip
    fire = sorted(a.name for a in ALERTS
                  if all(n in renamed or n.startswith("DCGM_FI_") for n in metric_names(a.expr)))  # fmt: skip
    assert fire == ["LabGpuMemoryNearFull", "LabKvCacheSaturated"]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text("utf-8")
    section = readme.split("## When one machine is not enough", 1)[1].split("\n## ", 1)[0]
    assert f"Of the {len(ALERTS)} rules, two can fire there" in " ".join(section.split())
    assert f"The other {len(ALERTS) - 2} read series only the daemon" in " ".join(section.split())
    assert all(f"`{name}`" in section for name in fire)


def test_a_vllm_pod(mixed_lab: LabConfig) -> None:
    _, objects = export(mixed_lab, Options(vllm_version="0.24.0"))
    doc = next(d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == "big-model")
    pod = doc["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "vllm/vllm-openai:v0.24.0"
    assert c["command"][:3] == ["vllm", "serve", "Qwen/Qwen3-0.6B"]
    assert c["command"][c["command"].index("--port") + 1] == "8000"
    assert "--max-model-len" in c["command"]  # the planner's flag
    assert c["resources"] == {"limits": {"nvidia.com/gpu": 2}}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "big-model-models"}
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
    assert "HF_HUB_OFFLINE" not in env
    assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}


def test_pre_pulled_models_run_offline_from_the_hosts_cache() -> None:
    lab = LabConfig(deployments=(DeploymentSpec(name="chat", engine="vllm",
                                                model="Qwen/Qwen3-0.6B"),))  # fmt: skip
    sized = workloads(lab, "h100-sxm", True, True)
    opts = Options(model_cache="hostpath", hub_cache="/data/hf/hub")
    objects = engines(sized, opts)
    assert [m.file for m in objects] == ["chat-deployment.yaml", "chat-service.yaml"]
    pod = objects[0].doc["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env == {"HF_HOME": "/root/.cache/huggingface", "HF_HUB_OFFLINE": "1"}
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["hostPath"] == {"path": "/data/hf/hub", "type": "Directory"}


def test_file_engines_twin_and_command(mixed_lab: LabConfig) -> None:
    sized, objects = export(mixed_lab)
    docs = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    small = docs["small"]["spec"]["template"]["spec"]
    assert small["containers"][0]["image"] == "ghcr.io/ggml-org/llama.cpp:server-cuda"
    assert small["containers"][0]["command"][0] == "/app/llama-server"
    gguf = mixed_lab.deployment("small").model or ""
    assert small["volumes"][0]["persistentVolumeClaim"]["claimName"] == "small-models"
    assert small["containers"][0]["volumeMounts"][0]["mountPath"] == str(Path(gguf).parent)
    asr = docs["asr-cpp"]["spec"]["template"]["spec"]["containers"][0]
    assert asr["image"] == "ghcr.io/ggml-org/whisper.cpp:main-cuda"
    assert asr["command"][0] == "whisper-server"
    twin = docs["twin"]["spec"]["template"]["spec"]["containers"][0]
    assert twin["image"] == "labctl-twin:latest" and "resources" not in twin
    assert twin["command"][:3] == ["labctl", "sim", "serve"]
    assert twin["command"][-3:] == ["--gpu", "h100-sxm", "--no-gpu-ledger"]
    custom = docs["custom"]["spec"]["template"]["spec"]["containers"][0]
    assert custom["image"] == "ghcr.io/example/server:1.0"
    assert custom["command"] == ["my-server", "--host", "0.0.0.0", "--port", "8000"]
    assert custom["startupProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in custom["env"]}
    assert env["MODE"] == {"name": "MODE", "value": "fast"}
    assert env["SERVER_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "custom-env",
                                                                "key": "SERVER_TOKEN"}  # fmt: skip
    assert "s3cret" not in json.dumps([m.doc for m in objects])
    by_name = {w.spec.name: w for w in sized}
    assert by_name["small"].sizing.two_fit and by_name["asr_cpp"].sizing.two_fit
    assert not by_name["custom"].sizing.two_fit  # not sized: Recreate
    monitored = {s["metadata"]["name"] for s in of_kind(objects, "Service")
                 if s["metadata"]["labels"].get("labctl.dev/metrics") == "true"}  # fmt: skip
    assert monitored == {"small", "twin", "big-model"}  # whisper-server has no /metrics


def test_an_engine_without_an_official_image_needs_one() -> None:
    spec = DeploymentSpec(name="robot", engine="openvla", model="openvla/openvla-7b")
    lab = LabConfig(deployments=(spec,))
    with pytest.raises(ConfigError, match=r"deployments\.robot\.image"):
        export(dataclasses.replace(lab, sim_gpus="1xh100-sxm"))


def test_names_that_collide_as_objects_are_refused() -> None:
    specs = tuple(DeploymentSpec(name=n, engine="sim", model="Qwen/Qwen3-0.6B")
                  for n in ("a_b", "A.b"))  # fmt: skip
    with pytest.raises(ConfigError, match="both become Kubernetes objects named 'a-b'"):
        export(LabConfig(sim_gpus="1xrtx-3090", deployments=specs))
    assert object_name("7b") == "lab-7b"


def test_the_image_key_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"deployments\.x\.image"):
        DeploymentSpec.from_dict("x", {"engine": "command", "command": ["s"], "image": "a b"})
    spec = DeploymentSpec.from_dict("x", {"engine": "command", "command": ["s"], "image": "i:1"})
    assert spec.image == "i:1"


def test_versions() -> None:
    assert parse_version("v1.36.2") == "1.36"
    for bad in ("1.24", "latest"):
        with pytest.raises(ConfigError, match="--k8s-version"):
            parse_version(bad)


@pytest.mark.parametrize(
    "text",
    ["on", "1", "0.30", "", "a: b", "- x", "null", "~", "x:", "it's", "two\nlines\n",
     "no end\nnewline", "  lead\nx\n", "end\n\n", "tab\there\nx", "ünï\ncode\n", "#c", "@a"],
)  # fmt: skip
def test_yaml_keeps_every_string(text: str) -> None:
    doc = {"k": text, text or "e": [text, {"n": text}], "list": [[1, 2.5, True, None], {}]}
    assert yaml.safe_load(dump(doc)) == doc


def test_the_command_writes_a_kustomization_of_every_file(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    result = CliRunner().invoke(cli, ["export", "kubernetes", "--out", str(out),
                                      "--namespace", "lab", "--release", "prom"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "chat: Recreate" in result.output and "validated for Kubernetes 1.30" in result.output
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    files = sorted(p.name for p in out.iterdir() if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    assert kustomization["namespace"] == "lab"
    for name in files:
        doc = yaml.safe_load((out / name).read_text())
        assert doc["metadata"].get("namespace", "lab") == "lab"
    board = yaml.safe_load((out / "dashboard-configmap.yaml").read_text())
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["labctl-lab.json"]) == dashboard_json()


def test_the_command_needs_the_clusters_gpu_type(tmp_path: Path) -> None:
    lab = tmp_path / "lab.toml"
    lab.write_text('[deployments.chat]\nengine = "vllm"\nmodel = "Qwen/Qwen3-0.6B"\n')
    args = ["export", "kubernetes", "--config", str(lab), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and "--gpu h100-sxm" in result.output
    result = CliRunner().invoke(cli, [*args, "--gpu", "h100-sxm", "--k8s-version", "1.36"])
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load((tmp_path / "o" / "chat-deployment.yaml").read_text())
    assert doc["spec"]["strategy"] == {"type": "Recreate"}


def test_the_readme_shows_real_output(tmp_path: Path) -> None:
    lab = tmp_path / "lab.toml"
    lab.write_text(
        '[deployments.chat]\nengine = "vllm"\nmodel = "cyankiwi/gemma-4-26B-A4B-it-AWQ-4bit"\n'
        "args = { max_model_len = 32768 }\n\n"
        '[deployments.asr]\nengine = "vllm"\nmodel = "openai/whisper-large-v3"\n'
        "args = { gpu_memory_utilization = 0.3 }\n"
    )
    out = tmp_path / "k8s"
    args = ["export", "kubernetes", "--config", str(lab), "--gpu", "h100-sxm", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text("utf-8")
    section = readme.split("## When one machine is not enough", 1)[1].split("\n## ", 1)[0]
    for line in result.output.splitlines():
        assert line.replace(str(out), "k8s") in section
    excerpt = section.split("```yaml\n", 1)[1].split("```", 1)[0].splitlines()
    written = (out / "chat-deployment.yaml").read_text().splitlines()
    at = 0
    for line in excerpt:  # abridged: the excerpt's lines, in the file's order
        at = written.index(line, at) + 1
