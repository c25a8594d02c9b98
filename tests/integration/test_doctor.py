"""`labctl doctor` through the real CLI, and the doctor inside a real lab: `/api/doctor`, the
metric, the alert, the dashboard's panel and a deploy refused with the finding, on a fixture
host given through the daemon's testing hooks (LABCTL_DOCTOR_ROOT, LABCTL_DOCTOR_PATH)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
import urllib.error
import urllib.request

import pytest

from tests.integration.browser import browser
from tests.integration.conftest import Run
from tests.integration.lab import FAST_TWIN, Lab, wait_for


def _no_driver_here() -> None:
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this machine has an NVIDIA driver: the no-driver findings do not apply")


def _codes(labctl: Callable[..., Run]) -> set[str]:
    doc = labctl("doctor", "--explain", "--json", check=True).json()
    assert isinstance(doc, dict)
    return {c["code"] for c in doc["checks"]}


def test_doctor_on_this_machine_finds_no_driver_once_and_passes_a_simulated_lab(
    labctl: Callable[..., Run],
) -> None:
    _no_driver_here()
    run = labctl("doctor", "--json")
    assert run.code == 0, run.out + run.err  # the embedded default lab simulates its GPU
    doc = run.json()
    assert isinstance(doc, dict) and set(doc) == {"findings", "skipped", "seconds"}
    for f in doc["findings"]:
        assert set(f) == {"code", "severity", "place", "message", "evidence", "remedy"}, f
        assert f["severity"] in ("ok", "info", "warn") and f["evidence"], f
    assert all(set(s) == {"code", "reason"} and s["reason"] for s in doc["skipped"])
    found = {f["code"] for f in doc["findings"]}
    skipped = [s["code"] for s in doc["skipped"]]
    # every check once: in the findings (ok included) or skipped, never both
    assert len(skipped) == len(set(skipped)) and not found & set(skipped)
    assert found | set(skipped) == _codes(labctl)
    (driver,) = [f for f in doc["findings"] if f["code"] == "no-nvidia-driver"]
    assert driver["severity"] == "info" and "no NVIDIA GPU or driver" in driver["message"]
    assert "install the NVIDIA driver" in driver["remedy"]
    # said once: the checks that need a driver skip, saying why
    others = [f for f in doc["findings"] if "driver" in f["message"].lower() and f is not driver]
    assert others == [], others
    assert any(s["reason"].startswith("no NVIDIA driver") for s in doc["skipped"])
    assert doc["seconds"] < 5, doc["seconds"]  # the bound: it reads, it loads nothing

    text = labctl("doctor")
    assert text.code == 0, text.err
    assert "no-nvidia-driver: no NVIDIA GPU or driver here" in text.out
    assert "install the NVIDIA driver" in text.out
    assert "skipped" in text.out and f"{len(skipped)} skipped" in text.out


def test_doctor_fails_a_lab_with_vllm_on_nvml_naming_the_missing_driver(
    labctl: Callable[..., Run], tmp_path: Path
) -> None:
    _no_driver_here()
    config = tmp_path / "lab.toml"
    config.write_text(  # vllm is not installed here: the doctor reports it, it still loads
        '[lab]\ngpu_backend = "nvml"\n\n[deployments.chat]\nengine = "vllm"\n'
        'model = "Qwen/Qwen3-8B"\n'
    )
    run = labctl("doctor", "--config", str(config), "--json")
    assert run.code == 1, run.out + run.err
    doc = run.json()
    assert isinstance(doc, dict)
    (driver,) = [f for f in doc["findings"] if f["code"] == "no-nvidia-driver"]
    assert driver["severity"] == "fail" and "the lab needs one" in driver["message"]
    engine = [f for f in doc["findings"] if f["code"] == "engine-missing"]
    assert [(f["severity"], f["place"]) for f in engine] == [("fail", "lab: deployment chat")]
    text = labctl("doctor", "--config", str(config))
    assert text.code == 1
    assert "no-nvidia-driver: no NVIDIA GPU or driver here, and the lab needs one" in text.out


def _fixture_host(tmp_path: Path) -> dict[str, str]:
    """A container started without GPUs: /.dockerenv, and no /dev/nvidia* (nor a driver)."""
    root, path = tmp_path / "host", tmp_path / "host-bin"
    (root / "dev").mkdir(parents=True)
    (root / ".dockerenv").touch()
    path.mkdir()
    return {"LABCTL_DOCTOR_ROOT": str(root), "LABCTL_DOCTOR_PATH": str(path)}


def _fixture_lab(tmp_path: Path) -> Path:
    """A twin, and a vLLM deployment on GPUs the machine would have with a driver (``auto``):
    its engine is a stand-in that would only answer ``--version``; it is never started."""
    model = tmp_path / "model"
    model.mkdir()
    vllm = tmp_path / "vllm"
    vllm.write_text('#!/bin/sh\n[ "$1" = --version ] && echo 0.11.0 && exit 0\nexit 3\n')
    vllm.chmod(0o755)
    config = tmp_path / "lab.toml"
    config.write_text(
        '[lab]\ngpu_backend = "auto"\n\n'
        "[dashboard]\ninterval = 0.5\nalert_for_scale = 0\n\n"
        f'[deployments.chat]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\nstop_grace = 5\n'
        f"args = {FAST_TWIN}\n\n"
        f'[deployments.big]\nengine = "vllm"\nmodel = "{model}"\nbinary = "{vllm}"\n'
    )
    return config


def _metric(d: Any, line_start: str) -> float | None:
    req = urllib.request.Request(d.url + "/metrics")
    with urllib.request.urlopen(req, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.split()[-1])
    return None


def test_the_lab_runs_the_doctor_shows_its_failure_and_refuses_the_deploy_it_explains(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    d = lab.up("--config", str(_fixture_lab(tmp_path)), env=_fixture_host(tmp_path))
    assert d.token, "the lab wrote its admin token into its home"
    d.wait_state("chat", "ready")
    report = d.api("GET", "/api/doctor")
    fails = {f["code"]: f for f in report["findings"] if f["severity"] == "fail"}
    assert "container-no-gpus" in fails, report
    no_gpus = fails["container-no-gpus"]
    assert no_gpus["message"].startswith("this container was started without GPUs: big cannot")
    assert "/.dockerenv exists" in no_gpus["evidence"] and "--gpus all" in no_gpus["remedy"]
    with pytest.raises(urllib.error.HTTPError) as refused:  # the admin token, as all of /api
        urllib.request.urlopen(d.url + "/api/doctor", timeout=10).close()
    refused.value.close()
    assert refused.value.code == 401
    again = d.api("GET", "/api/doctor?refresh=1")
    assert {f["code"] for f in again["findings"]} == {f["code"] for f in report["findings"]}

    series = 'labctl_doctor_findings{code="container-no-gpus",severity="fail"}'
    assert _metric(d, series) == 1.0
    assert _metric(d, 'labctl_doctor_findings{code="container-no-gpus",severity="ok"}') == 0.0

    def firing() -> list[dict[str, Any]]:
        alerts = d.api("GET", "/api/status")["alerts"]
        return [a for a in alerts if a["name"] == "LabDoctorFail" and a["state"] == "firing"]

    alerts = wait_for(firing, 15, "LabDoctorFail to fire")
    assert "container-no-gpus" in {a["labels"]["code"] for a in alerts}
    assert all(a["severity"] == "critical" for a in alerts)

    # the start of `big` was refused at preflight with the finding; so is a deploy now
    history = labctl("history", "big", "--url", d.url, "--json", home=lab.home, check=True)
    (start,) = history.json()["deploys"]  # type: ignore[index]
    assert start["outcome"] == "refused", start
    assert [(s["name"], s["outcome"]) for s in start["steps"]] == [("preflight", "failed")], start
    assert no_gpus["message"] in start["error"] and no_gpus["remedy"] in start["error"]
    run = labctl("deploy", "big", "--url", d.url, home=lab.home)
    assert run.code != 0
    assert no_gpus["message"] in run.err and "fix: start the container with `--gpus all`" in run.err
    assert d.deployment("chat")["state"] == "ready"  # the twin needs no GPU: not refused

    with browser() as b:
        page = b.new_page(viewport={"width": 1280, "height": 900})
        page.goto(d.url + "/")
        page.locator("#token").fill(d.token)
        page.locator("#token").dispatch_event("change")
        row = page.locator('#doctor [data-finding="container-no-gpus"]')
        row.wait_for(timeout=15_000)
        assert row.get_attribute("data-severity") == "fail"
        assert "--gpus all" in row.inner_text()
        assert page.locator("#doctor").get_attribute("data-live") == "1"
        assert page.locator('[data-alert="LabDoctorFail"]').count() >= 1
