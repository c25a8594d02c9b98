"""The exported Prometheus setup: promtool checks, rule tests, and a real Prometheus on a lab."""

from __future__ import annotations

from collections.abc import Callable
import json
from pathlib import Path
import re
import shutil
import subprocess
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
    for alert in ALERTS:
        assert text.count(f"alertname: {alert.name}\n") == 2  # one firing case, one quiet
    assert text.count("exp_alerts: []") == len(ALERTS)


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
