"""The Grafana dashboard of the lab, built with grafana-foundation-sdk's typed builders.

It holds the built-in page's panels (:mod:`labctl.dashboard.panels`), one row per
section (the speech and VLA rows have data only in a lab that serves speech or
actions), with the variables users expect: ``instance`` (the daemon), ``gpu`` and
``deployment``. Provisioning files point Grafana at a Prometheus (``--prometheus-url``) and
at the folder the dashboard is written to.
"""

from __future__ import annotations

import json
import re
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pb
from grafana_foundation_sdk.builders import statetimeline, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from labctl.dashboard.panels import PANELS, Panel, for_grafana

UID = "labctl-lab"
DATASOURCE_UID = "labctl-prometheus"
SECTIONS = {
    "gpu": "GPUs",
    "deployment": "Deployments",
    "speech": "Speech",
    "vla": "VLA",
    "deploys": "Deploys and restarts",
    "alerts": "Alerts",
}
#: Roles of a panel's threshold lines (a floor, a target, a deadline): drawn dashed.
THRESHOLDS = ("floor", "target", "deadline")
_DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")


def _variable(name: str, label: str, query: str) -> db.QueryVariable:
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(_DS)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.NATURAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def _legend_tail(legend: str) -> str:
    """A regular expression for what a threshold's legend says after the deployment's name
    (``floor``, ``target per robot``)."""
    return re.escape(legend.removeprefix("{{model}} ")).replace("\\ ", " ")


def _panel(p: Panel) -> Any:
    if p.kind == "table":
        builder: Any = table.Panel()
    elif p.kind == "state":
        builder = statetimeline.Panel()
    else:
        builder = timeseries.Panel().fill_opacity(40 if p.stacked else 10).line_width(1)
        if p.stacked:
            builder = builder.stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
            totals = [q for q in p.queries if q.role == "total"]
            for q in totals:
                builder = builder.with_override(
                    dm.MatcherConfig(id_val="byRegexp", options=".* total$"),
                    [dm.DynamicConfigValue(id_val="custom.stacking", value={"mode": "none"}),
                     dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
                     dm.DynamicConfigValue(id_val="custom.lineStyle",
                                           value={"fill": "dash", "dash": [10, 10]})],
                )  # fmt: skip
                del q
        for q in p.queries:  # a threshold: a dashed line, no fill, found by its legend
            if q.role in THRESHOLDS:
                builder = builder.with_override(
                    dm.MatcherConfig(id_val="byRegexp", options=f".* {_legend_tail(q.legend)}$"),
                    [dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
                     dm.DynamicConfigValue(id_val="custom.lineStyle",
                                           value={"fill": "dash", "dash": [10, 10]})],
                )  # fmt: skip
    builder = (
        builder.title(p.title).datasource(_DS).unit(p.unit).height(8)
        .span(24 if p.kind == "table" else 12)
    )  # fmt: skip
    if p.description:
        builder = builder.description(p.description)
    for i, q in enumerate(p.queries):
        target = (
            pb.Dataquery().expr(for_grafana(q.expr)).legend_format(q.legend).ref_id("ABCDEFGH"[i])
        )
        if p.kind == "table":
            target = target.instant().format(pm.PromQueryFormat.TABLE)
        else:
            target = target.range()
        builder = builder.with_target(target)
    return builder


def dashboard_json() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (schemaVersion and all)."""
    d = (
        db.Dashboard("labctl lab")
        .uid(UID)
        .description("GPUs, deployments, latency, speech, VLA, deploys and alerts of a labctl lab.")
        .tags(["labctl", "llm", "speech", "vla", "gpu"])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            db.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
        .with_variable(_variable("instance", "Lab", "label_values(labctl_gpu_up, instance)"))
        .with_variable(_variable(
            "gpu", "GPU", 'label_values(DCGM_FI_DEV_GPU_UTIL{instance=~"$instance"}, gpu)'
        ))
        .with_variable(_variable(
            "deployment", "Deployment",
            'label_values(labctl_deployment_state{instance=~"$instance"}, deployment)',
        ))
    )  # fmt: skip
    for section, title in SECTIONS.items():
        d = d.with_row(db.Row(title))
        for p in PANELS:
            if p.section == section:
                d = d.with_panel(_panel(p))
    doc: dict[str, Any] = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    return doc


def expressions(doc: dict[str, Any]) -> list[str]:
    """Every PromQL expression in a dashboard: panel targets and query variables."""
    out = []
    for panel in doc.get("panels", []):
        for sub in [panel, *panel.get("panels", [])]:
            out += [t["expr"] for t in sub.get("targets", []) if t.get("expr")]
    for var in doc.get("templating", {}).get("list", []):
        query = var.get("query")
        if var.get("type") == "query":
            out.append(query if isinstance(query, str) else query.get("query", ""))
    return out


def provisioning(prometheus_url: str, folder: str) -> dict[str, str]:
    """Grafana provisioning files: the Prometheus data source and the dashboard provider."""
    datasource = f"""\
# Grafana data source for the lab's Prometheus; copy to provisioning/datasources/.
apiVersion: 1
datasources:
  - name: labctl Prometheus
    uid: {DATASOURCE_UID}
    type: prometheus
    access: proxy
    url: {prometheus_url}
    isDefault: false
    jsonData:
      timeInterval: 5s
"""
    provider = f"""\
# Grafana dashboard provider; copy to provisioning/dashboards/.
apiVersion: 1
providers:
  - name: labctl
    folder: labctl
    type: file
    disableDeletion: false
    updateIntervalSeconds: 30
    allowUiUpdates: true
    options:
      path: {folder}
"""
    return {"datasource.yml": datasource, "dashboards.yml": provider}
