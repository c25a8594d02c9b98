"""The lab's monitoring as Prometheus Operator and Grafana sidecar objects.

A ServiceMonitor for each engine that serves ``/metrics`` (its Service, labelled
``labctl.dev/metrics``) labels its series ``deployment`` and renames the engine's own
series to the lab's, as the daemon does when it scrapes; a PrometheusRule carries the lab's
alert rules unchanged; a ConfigMap labelled
``grafana_dashboard: "1"`` carries the Grafana dashboard for the Grafana chart's sidecar.
The operator objects carry the ``release`` label kube-prometheus-stack selects on (its
``ruleSelector`` and ``serviceMonitorSelector`` match the Helm release unless told
otherwise), so they are found where they land.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import re
from typing import Any

from labctl.engines import adapter
from labctl.export.k8s import METRICS, PART_OF, Manifest, Options, Workload, object_name

#: The Grafana sidecar's label (kube-prometheus-stack's ``sidecar.dashboards.label``).
DASHBOARD_LABEL = {"grafana_dashboard": "1"}


def _meta(name: str, opts: Options, extra: Mapping[str, str] = {}) -> dict[str, Any]:
    return {"name": name, "namespace": opts.namespace,
            "labels": {**PART_OF, "release": opts.release, **extra}}  # fmt: skip


def service_monitor(w: Workload, opts: Options) -> dict[str, Any]:
    """The ServiceMonitor of one engine's Service. Prometheus scrapes the engine itself here,
    not the daemon, so the monitor does what the daemon does when it scrapes: each series is
    labelled ``deployment`` with the lab's name for it, and the engine's series the adapter
    maps (``metrics``: ``vllm:num_requests_running`` → ``labctl_engine_requests_running``, …)
    are renamed to the lab's, so the rules and the dashboard read them unchanged."""
    obj = object_name(w.spec.name)
    relabel = [{"action": "replace", "targetLabel": "deployment", "replacement": w.spec.name}]
    rename = [{"action": "replace", "sourceLabels": ["__name__"], "regex": re.escape(own),
               "targetLabel": "__name__", "replacement": lab}
              for own, lab in sorted(adapter(w.spec.engine).metrics.items())]  # fmt: skip
    endpoint = {"port": "http", "path": "/metrics", "interval": "15s", "relabelings": relabel,
                "metricRelabelings": rename}  # fmt: skip
    selector = {"app.kubernetes.io/name": obj, **PART_OF, "labctl.dev/metrics": "true"}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(obj, opts),
        "spec": {"selector": {"matchLabels": selector}, "endpoints": [endpoint]},
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
    """A ServiceMonitor for each engine that serves metrics, the PrometheusRule and the
    dashboard's ConfigMap."""
    out = [Manifest(f"{object_name(w.spec.name)}-servicemonitor.yaml", service_monitor(w, opts))
           for w in workloads if w.spec.engine in METRICS]  # fmt: skip
    out.append(Manifest("prometheusrule.yaml", prometheus_rule(groups, opts)))
    out.append(Manifest("dashboard-configmap.yaml", dashboard_map(dashboard, opts)))
    return out


def kustomization(files: Sequence[str], opts: Options) -> dict[str, Any]:
    """The kustomization that lists every file (``kubectl apply -k OUT``)."""
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "namespace": opts.namespace, "resources": list(files)}  # fmt: skip
