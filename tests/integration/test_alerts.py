"""The exported Prometheus setup: promtool checks, rule tests, and a real Prometheus on a lab."""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import json
from pathlib import Path
import re
import shutil
import subprocess
import urllib.error
import urllib.parse

from labctl.dashboard.alerts import ALERTS
from tests.integration.conftest import Run
from tests.integration.lab import Lab, free_port, get, wait_for

FAST = "{ max_model_len = 4096, time_scale = 0.05, load_gbps = 0 }"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `make test` installs the Debian package prometheus"
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False)


def test_exported_rules_pass_promtool_with_a_firing_and_a_quiet_case_each(
    labctl: Callable[..., Run], tmp_path: Path
) -> None:
    out = tmp_path / "prom"
    run = labctl("export", "prometheus", "--out", str(out), check=True)
    assert f"{len(ALERTS)} alerts" in run.out
    check = promtool("check", "rules", str(out / "labctl-rules.yml"))
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in check.stdout
    config = promtool("check", "config", str(out / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    tests = promtool("test", "rules", str(out / "labctl-rules.test.yml"))
    assert tests.returncode == 0, tests.stdout + tests.stderr
    text = (out / "labctl-rules.test.yml").read_text()
    for alert in ALERTS:  # one firing case, one quiet, and the extra quiet ones
        assert text.count(f"alertname: {alert.name}\n") == 2 + len(alert.also_quiet)
    assert text.count("exp_alerts: []") == len(ALERTS) + sum(len(a.also_quiet) for a in ALERTS)


def test_a_real_prometheus_with_the_exported_config_scrapes_the_lab_and_its_engines(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(
        '[lab]\ngpu_backend = "sim"\nsim_gpus = "1xrtx-3090"\n\n[deployments.chat]\n'
        f'engine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\nstop_grace = 5\nargs = {FAST}\n'
    )
    d = lab.up("--config", str(config))
    d.wait_state("chat", "ready")
    out = tmp_path / "prom"
    labctl("export", "prometheus", "--out", str(out), "--url", d.url, check=True)
    port = free_port()
    binary = shutil.which("prometheus")
    assert binary
    server = subprocess.Popen(
        [binary, f"--config.file={out / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        api = f"http://127.0.0.1:{port}/api/v1/"

        def query(expr: str) -> list[dict[str, object]]:
            doc = json.loads(get(api + "query?query=" + urllib.parse.quote(expr)))
            return list(doc["data"]["result"])

        wait_for(lambda: query('up{job="labctl"} == 1') and query('up{job="engines"} == 1'), 30,
                 "Prometheus to scrape the daemon and the engine")  # fmt: skip
        (engine,) = query('up{job="engines"}')
        assert engine["metric"]["deployment"] == "chat"  # type: ignore[index]
        groups = json.loads(get(api + "rules"))["data"]["groups"]
        assert len(groups[0]["rules"]) == len(ALERTS)
        assert all(r["health"] == "ok" for r in groups[0]["rules"])
        # Every series the rules read is one the lab exports (or a counter that appears with
        # its first event).
        names = set(re.findall(r"^# HELP (\S+)", get(d.url + "/metrics"), re.M))
        on_event = {"labctl_gpu_xid_errors", "labctl_gpu_clock_event_active"}
        for alert in ALERTS:
            for metric in re.findall(r"\b(?:labctl|DCGM)_\w+", alert.expr):
                base = re.sub(r"_(bucket|count|sum|total)$", "", metric)
                assert base in names or metric in names or base in on_event, (alert.name, metric)
    finally:
        server.terminate()
        server.wait(10)


PROVOKE = """
[lab]
gpu_backend = "sim"
sim_gpus = "1xrtx-3090"

[dashboard]
interval = 1.0
alert_for_scale = 0

[deployments.chat]
engine = "sim"
model = "Qwen/Qwen3-0.6B"
stop_grace = 5
max_concurrency = 2
queue_size = 500
args = { max_model_len = 4096, time_scale = 0.5, load_gbps = 0, gpu_memory_utilization = 0.5 }
"""
PROVOKED = {"LabGpuUnaccountedMemory", "LabRequestsQueueing", "LabDeployFailed"}


def _grafana_queries(doc: dict[str, object], only: list[str] | None = None) -> list[str]:
    """The dashboard's PromQL (or ``only`` these) with its variables as "All" and Grafana's
    rate interval."""
    from labctl.dashboard.grafana import expressions

    out = []
    for expr in expressions(doc) if only is None else only:
        expr = expr.replace("$__rate_interval", "1m")
        expr = re.sub(r'=~"\$(instance|gpu|deployment)"', '=~".*"', expr)
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", expr)
        out.append(f"count by ({m.group(2)}) ({m.group(1)})" if m else expr)
    return out


def test_prometheus_and_the_dashboard_fire_the_alerts_a_lab_provokes_and_every_grafana_query_has_data(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(PROVOKE)
    d = lab.up("--config", str(config))
    d.wait_state("chat", "ready")
    out = tmp_path / "prom"
    labctl("export", "prometheus", "--out", str(out), "--url", d.url, "--scrape-interval", "1s",
           "--alert-for-scale", "0", check=True)  # fmt: skip
    query, api = lab.prometheus_with(out / "prometheus.yml", tmp_path)
    wait_for(lambda: query('up{job="labctl"} == 1'), 30, "Prometheus to scrape the lab")

    # 1. An orphaned twin worker: a twin outside the lab, killed, leaves its worker holding memory.
    twin = lab.twin("--model", "Qwen/Qwen3-0.6B", "--time-scale", "0", "--gpu-memory-utilization",
                    "0.2", "--max-model-len", "4096", "--orphan-worker")  # fmt: skip
    worker = wait_for(lambda: _holders(lab, twin.proc.pid), 15, "the twin's worker")
    lab.stray += worker
    twin.proc.kill()
    twin.proc.wait()
    # 2. A failed deploy: the new revision fails its smoke test and is rolled back.
    with contextlib.suppress(urllib.error.HTTPError):
        d.api("POST", "/api/deployments/chat/deploy", {"set": {"fail_completions": True}})
    assert d.wait_state("chat", "ready")["revision"] == 1
    # 3. Queueing: four times more requests than the deployment takes at once, for a while.
    lab.start("bench", "--base-url", d.url, "--model", "chat", "--num-prompts", "400",
              "--max-concurrency", "40", "--input-len", "64", "--output-len", "200")  # fmt: skip

    def prometheus_firing() -> set[str]:
        alerts = json.loads(get(api + "alerts"))["data"]["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    def lab_firing() -> set[str]:
        return {a["name"] for a in d.api("GET", "/api/status")["alerts"] if a["state"] == "firing"}

    wait_for(lambda: prometheus_firing() >= PROVOKED, 60, f"Prometheus to fire {PROVOKED}")
    wait_for(lambda: lab_firing() >= PROVOKED, 30, f"the lab to fire {PROVOKED}")
    # On the page: the alert list names each, with its summary.
    from tests.integration.browser import browser

    with browser() as b:
        page = b.new_page(viewport={"width": 1280, "height": 800})
        page.goto(d.login_url())  # the lab's admin token, as a one-time link
        for name in PROVOKED:
            page.wait_for_selector(f'#alerts [data-alert="{name}"]', timeout=15_000)
        text = page.locator("#alerts").inner_text()
    assert "Requests for chat are queueing" in text and "A deploy ended rolled_back" in text
    status = labctl("status", "--url", d.url, check=True).out
    assert "LabRequestsQueueing" in status and "firing" in status

    # Every PromQL expression of the exported Grafana dashboard returns data from this lab,
    # but the speech and VLA rows': this lab serves neither (the tests below have them).
    gout = tmp_path / "grafana"
    labctl("export", "grafana", "--out", str(gout), check=True)
    doc = json.loads((gout / "dashboards" / "labctl-lab.json").read_text())
    speech = set(_grafana_queries(doc, _row(doc, "Speech")))
    vla = set(_grafana_queries(doc, _row(doc, "VLA")))
    empty = [e for e in _grafana_queries(doc) if e not in speech | vla and not query(e)]
    assert not empty, f"Grafana queries with no data: {empty}"
    assert not [expr for expr in speech if query(expr)], "speech panels with data in a chat lab"
    assert not [expr for expr in vla if query(expr)], "VLA panels with data in a chat lab"


def _row(doc: dict[str, object], title: str) -> list[str]:
    """The PromQL of the Grafana dashboard's row ``title``."""
    panels = doc["panels"]
    assert isinstance(panels, list)
    out, row = [], ""
    for panel in panels:
        if panel["type"] == "row":
            row = panel["title"]
        elif row == title:
            out += [t["expr"] for t in panel["targets"]]
    assert out, f"the Grafana dashboard has no {title} row"
    return out


def test_prometheus_fires_speech_falling_behind_and_every_speech_grafana_query_has_data(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    """The speech row and LabSpeechFallingBehind in a real Prometheus, on the gateway's own
    speech series: a speech deployment answers clips far below its RTFx floor while requests
    queue, and a chat deployment queues beside it."""
    import threading

    from prometheus_client import CollectorRegistry, start_http_server

    from labctl.gateway.metrics import GatewayMetrics

    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    metrics.rtfx_floor.labels("asr").set(1000)  # out of reach: it falls behind
    metrics.queue_depth.labels("asr").set(3)
    metrics.in_flight.labels("asr").set(2)
    metrics.queue_depth.labels("chat").set(20)
    speech = metrics.audio("asr")
    stop = threading.Event()

    def answer() -> None:  # twice a second, a clip in each audio length bucket but unknown
        lengths = (3.0, 8.0, 20.0, 45.0, 90.0)
        while not stop.wait(0.5):
            for seconds in lengths:
                speech.observe(seconds, 0.1 + seconds / 20)

    port = free_port()
    server, _ = start_http_server(port, "127.0.0.1", registry)
    answering = threading.Thread(target=answer, daemon=True)
    answering.start()
    try:
        out = tmp_path / "prom"
        labctl("export", "prometheus", "--out", str(out), "--alert-for-scale", "0", check=True)
        config = out / "speech.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {out / 'labctl-rules.yml'}\n"
            "scrape_configs:\n  - job_name: labctl\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{port}']\n"
        )
        query, api = lab.prometheus_with(config, tmp_path)

        def firing() -> list[dict[str, str]]:
            alerts = json.loads(get(api + "alerts"))["data"]["alerts"]
            return [a["labels"] for a in alerts if a["state"] == "firing"]

        def behind() -> list[dict[str, str]]:
            return [a for a in firing() if a["alertname"] == "LabSpeechFallingBehind"]

        labels = wait_for(behind, 60, "Prometheus to fire LabSpeechFallingBehind")
        assert [(a["model"], a["instance"]) for a in labels] == [("asr", f"127.0.0.1:{port}")]
        gout = tmp_path / "grafana"
        labctl("export", "grafana", "--out", str(gout), check=True)
        doc = json.loads((gout / "dashboards" / "labctl-lab.json").read_text())
        exprs = _grafana_queries(doc, _row(doc, "Speech"))
        # rate() over a minute needs two scrapes of each counter; then every query has data.
        wait_for(lambda: all(query(e) for e in exprs), 30, "every speech query to have data")
        for expr in exprs:  # and only for the speech deployment, never the chat one
            assert {r["metric"].get("model") for r in query(expr)} == {"asr"}, expr
        lengths = query(
            "histogram_quantile(0.95, sum by (le, model, audio_length) "
            "(rate(labctl_gateway_audio_request_duration_seconds_bucket[1m])))"
        )
        answered = {r["metric"]["audio_length"] for r in lengths if r["value"][1] != "NaN"}
        assert answered == {"<=5s", "<=10s", "<=30s", "<=60s", ">60s"}
    finally:
        stop.set()
        answering.join(5)
        server.shutdown()
        server.server_close()


def test_prometheus_fires_vla_deadline_misses_and_every_vla_grafana_query_has_data(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    """The VLA row and LabVlaDeadlineMisses in a real Prometheus, on the gateway's own VLA
    series: a VLA deployment at 5 Hz answers every other frame after its 200 ms deadline, and a
    chat deployment queues beside it."""
    import threading

    from prometheus_client import CollectorRegistry, start_http_server

    from labctl.gateway.metrics import GatewayMetrics

    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    metrics.control_hz.labels("arm").set(5)  # as the gateway's route sets it
    metrics.queue_depth.labels("arm").set(1)
    metrics.in_flight.labels("arm").set(2)
    metrics.queue_depth.labels("chat").set(20)
    arm = metrics.vla("arm")
    stop = threading.Event()

    def answer() -> None:  # ten frames a second, every other one late
        late = False
        while not stop.wait(0.1):
            arm.observe(0.4 if late else 0.12, 1, 5.0)
            late = not late

    port = free_port()
    server, _ = start_http_server(port, "127.0.0.1", registry)
    answering = threading.Thread(target=answer, daemon=True)
    answering.start()
    try:
        out = tmp_path / "prom"
        labctl("export", "prometheus", "--out", str(out), "--alert-for-scale", "0", check=True)
        config = out / "vla.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {out / 'labctl-rules.yml'}\n"
            "scrape_configs:\n  - job_name: labctl\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{port}']\n"
        )
        query, api = lab.prometheus_with(config, tmp_path)

        def late() -> list[dict[str, str]]:
            alerts = json.loads(get(api + "alerts"))["data"]["alerts"]
            return [a["labels"] for a in alerts
                    if a["state"] == "firing" and a["labels"]["alertname"] == "LabVlaDeadlineMisses"]  # fmt: skip

        labels = wait_for(late, 60, "Prometheus to fire LabVlaDeadlineMisses")
        assert [(a["model"], a["instance"]) for a in labels] == [("arm", f"127.0.0.1:{port}")]
        gout = tmp_path / "grafana"
        labctl("export", "grafana", "--out", str(gout), check=True)
        doc = json.loads((gout / "dashboards" / "labctl-lab.json").read_text())
        exprs = _grafana_queries(doc, _row(doc, "VLA"))
        wait_for(lambda: all(query(e) for e in exprs), 30, "every VLA query to have data")
        for expr in exprs:  # and only for the VLA deployment, never the chat one
            assert {r["metric"].get("model") for r in query(expr)} == {"arm"}, expr
        values = {e: float(query(e)[0]["value"][1]) for e in exprs}
        misses = next(v for e, v in values.items() if "deadline_misses" in e)
        assert abs(misses - 0.5) < 0.1, values
        deadline = next(v for e, v in values.items() if e.startswith("1 / "))
        assert deadline == 0.2
        p50, p90, p99 = (v for e, v in values.items() if e.startswith("histogram_quantile"))
        assert 0.1 < p50 <= p90 <= p99 <= 0.5, values
    finally:
        stop.set()
        answering.join(5)
        server.shutdown()
        server.server_close()


def _holders(lab: Lab, twin_pid: int) -> list[int]:
    """The pids holding simulated GPU memory for the twin (its worker)."""
    from labctl.gpu.procs import read_stat
    from labctl.gpu.sim import SimBackend, SimMachine

    procs = SimBackend(SimMachine(lab.home)).read().devices[0].processes
    return [
        p.pid
        for p in procs
        if p.pid != twin_pid and getattr(read_stat(p.pid), "ppid", -1) == twin_pid
    ]
