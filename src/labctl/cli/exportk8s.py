"""``labctl export kubernetes``: the lab's deployments as Kubernetes manifests.

What only the services know comes from here: the alert rules and the dashboard
(``labctl.dashboard``), each deployment's predicted start (``labctl.deploy.loadpath``, from
the model's weights and the lab's disk figure, as before a first start).
"""

from __future__ import annotations

from pathlib import Path

import click

from labctl.cli.export import make_out
from labctl.config import LabConfig, load_config, sim_gpu_ids
from labctl.doctor.finding import ignored_checks
from labctl.errors import CatalogError, UsageError
from labctl.export.k8s import Options, Workload

_DEFAULT_OUT = Path("labctl-k8s")


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="lab.toml (default: the embedded default lab)")  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path), default=_DEFAULT_OUT, show_default=True,
              help="folder to write")  # fmt: skip
@click.option("--namespace", default="labctl", show_default=True)
@click.option("--release", default="kube-prometheus-stack", show_default=True,
              help="the release label the Prometheus Operator selects on")  # fmt: skip
@click.option("--k8s-version", default="1.30", show_default=True,
              help="the Kubernetes the manifests are checked against")  # fmt: skip
@click.option("--gpu", "gpu_id", metavar="GPU",
              help="the cluster's GPU type, a catalog id such as h100-sxm (default: lab.sim_gpus)")  # fmt: skip
@click.option("--twin-image", default="labctl-twin:latest", show_default=True,
              help="the image `sim` deployments run in (the repository's Dockerfile builds it)")  # fmt: skip
@click.option("--model-cache", type=click.Choice(["pvc", "hostpath"]), default="pvc",
              show_default=True,
              help="models on a claim per deployment, or on the nodes' own disks")  # fmt: skip
@click.option("--pre-pulled", is_flag=True,
              help="the cache already holds every model: engines run with HF_HUB_OFFLINE=1")  # fmt: skip
@click.option("--storage-class", help="the claims' storage class (default: the cluster's)")
def kubernetes(config_path: Path | None, out: Path, namespace: str, release: str,
               k8s_version: str, gpu_id: str | None, twin_image: str, model_cache: str,
               pre_pulled: bool, storage_class: str | None) -> None:  # fmt: skip
    """Kubernetes manifests for the lab's deployments: a Deployment and a Service each (the
    engine's official image, the planner's flags, GPU limits, probes sized to the predicted
    start, Recreate where two copies do not fit), the alert rules as a PrometheusRule, a
    ServiceMonitor per engine (its series under the lab's names), the Grafana dashboard as a ConfigMap, and a kustomization: `kubectl
    apply -k OUT`."""
    from labctl.cache.location import hub_cache_dir
    from labctl.dashboard.alerts import rule_groups
    from labctl.dashboard.grafana import dashboard_json
    from labctl.export.k8s import check_namespace, object_name, secret_env
    from labctl.export.k8sout import manifests, parse_version, validate, write

    lab = load_config(config_path, check_host=False)
    ignored_checks(lab)  # as `labctl up` would refuse it
    version = parse_version(k8s_version)
    check_namespace(namespace)
    opts = Options(namespace=namespace, release=release, twin_image=twin_image,
                   model_cache=model_cache, hub_cache=str(hub_cache_dir(lab.models)),
                   storage_class=storage_class)  # fmt: skip
    sized = workloads(lab, gpu_id, pre_pulled, model_cache == "hostpath")
    objects = manifests(sized, rule_groups(), dashboard_json(), opts)
    checked = validate(objects, version)
    make_out(out)
    header = (f"labctl export kubernetes: {lab.source}, for Kubernetes {version} and later.\n"
              "Apply with `kubectl apply -k .` (README: 'When one machine is not enough').")  # fmt: skip
    files = write(out, objects, opts, header)
    for w in sized:
        strategy = "RollingUpdate" if w.sizing.two_fit else "Recreate"
        click.echo(f"{w.spec.name}: {strategy} ({w.sizing.why}); start predicted "
                   f"{w.predicted_s:.0f} s")  # fmt: skip
        if not w.sizing.fits:
            click.echo(f"labctl: warning: {w.spec.name}: {w.sizing.why}", err=True)
        if keys := secret_env(w.spec):
            click.echo(f"  create its Secret first: kubectl -n {namespace} create secret generic "
                       f"{object_name(w.spec.name)}-env " + " ".join(f"--from-literal={k}=…" for k in keys))  # fmt: skip
    check = (f"validated for Kubernetes {version} (kubernetes-validate, strict)" if checked
             else f"check them with `kubernetes-validate --strict -k {version} {out}/*.yaml`")  # fmt: skip
    click.echo(f"wrote {len(files)} files to {out} ({check}); a Hugging Face token goes in "
               f"`kubectl -n {namespace} create secret generic {opts.hf_token_secret} "
               "--from-literal=token=…`")  # fmt: skip


def workloads(
    lab: LabConfig, gpu_id: str | None, pre_pulled: bool, hostpath: bool
) -> list[Workload]:
    """Each deployment sized on its GPU type, with its predicted start."""
    from labctl.catalog.gpus import gpu as catalog_gpu
    from labctl.deploy.loadpath import plan as predict
    from labctl.engines.vllm import hub_env
    from labctl.export.k8splan import settings, size

    sims = sim_gpu_ids(lab.sim_gpus, "lab.sim_gpus") if lab.sim_gpus else []
    rate = lab.disk_read_mbps * 1e6 if lab.disk_read_mbps else None
    out: list[Workload] = []
    for spec in lab.deployments:
        named = gpu_id or (sims[spec.gpus[0]] if spec.gpus[0] < len(sims) else None)
        if named is None:
            raise UsageError(
                f"deployments.{spec.name}: name the cluster's GPU type with --gpu, e.g. "
                "--gpu h100-sxm (`labctl fit --help` lists the catalog)"
            )
        try:
            gpu = catalog_gpu(named)
        except CatalogError as exc:
            raise UsageError(f"--gpu: {exc}") from None
        sizing = size(spec, gpu)
        predicted = predict(spec, sizing.estimate.weight_bytes, [], configured_rate=rate).total
        offline = spec.engine == "vllm" and (
            pre_pulled or (hostpath and bool(hub_env(settings(spec))))
        )
        out.append(Workload(spec, sizing, predicted, offline))
    return out
