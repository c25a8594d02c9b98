"""The lab's monitoring as Prometheus Operator and Grafana sidecar objects.

A ServiceMonitor scrapes every engine that serves ``/metrics`` (the Services labelled
``labctl.dev/metrics``), each series labelled ``deployment`` as the lab's own are; a
PrometheusRule carries the lab's alert rules unchanged; a ConfigMap labelled
``grafana_dashboard: "1"`` carries the Grafana dashboard for the Grafana chart's sidecar.
The operator objects carry the ``release`` label kube-prometheus-stack selects on (its
``ruleSelector`` and ``serviceMonitorSelector`` match the Helm release unless told
otherwise), so they are found where they land.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
from typing import Any

from labctl.export.k8s import METRICS, PART_OF, Manifest, Options, Workload

#: The Grafana sidecar's label (kube-prometheus-stack's ``sidecar.dashboards.label``).
DASHBOARD_LABEL = {"grafana_dashboard": "1"}


def _meta(name: str, opts: Options, extra: Mapping[str, str] = {}) -> dict[str, Any]:
    return {"name": name, "namespace": opts.namespace,
            "labels": {**PART_OF, "release": opts.release, **extra}}  # fmt: skip


def service_monitor(opts: Options) -> dict[str, Any]:
    """One ServiceMonitor for every engine's Service that serves metrics."""
    relabel = [{"sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_name"],
                "targetLabel": "deployment"}]  # fmt: skip
    endpoint = {"port": "http", "path": "/metrics", "interval": "15s", "relabelings": relabel}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta("labctl-engines", opts),
        "spec": {
            "selector": {"matchLabels": {**PART_OF, "labctl.dev/metrics": "true"}},
            "endpoints": [endpoint],
        },
    }


def prometheus_rule(groups: Sequence[Mapping[str, Any]], opts: Options) -> dict[str, Any]:
    """The lab's alert rule groups (as ``labctl export prometheus`` writes them)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": _meta("labctl-rules", opts),
        "spec": {"groups": [dict(g) for g in groups]},
    }


def dashboard_map(dashboard: Mapping[str, Any], opts: Options) -> dict[str, Any]:
    """The Grafana dashboard in a ConfigMap the Grafana sidecar picks up."""
    meta = _meta("labctl-dashboard", opts, DASHBOARD_LABEL)
    meta["annotations"] = {"grafana_folder": "labctl"}
    name = f"{dashboard.get('uid') or 'labctl'}.json"
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
            "data": {name: json.dumps(dashboard, indent=2) + "\n"}}  # fmt: skip


def monitoring(
    workloads: Sequence[Workload], groups: Sequence[Mapping[str, Any]],
    dashboard: Mapping[str, Any], opts: Options,
) -> list[Manifest]:  # fmt: skip
    """The ServiceMonitor (when an engine serves metrics), the PrometheusRule and the
    dashboard's ConfigMap."""
    out: list[Manifest] = []
    if any(w.spec.engine in METRICS for w in workloads):
        out.append(Manifest("servicemonitor.yaml", service_monitor(opts)))
    out.append(Manifest("prometheusrule.yaml", prometheus_rule(groups, opts)))
    out.append(Manifest("dashboard-configmap.yaml", dashboard_map(dashboard, opts)))
    return out


def kustomization(files: Sequence[str], opts: Options) -> dict[str, Any]:
    """The kustomization that lists every file (``kubectl apply -k OUT``)."""
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "namespace": opts.namespace, "resources": list(files)}  # fmt: skip
