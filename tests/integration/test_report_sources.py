"""What a lab report is built from: a real lab records its alerts, serving figures and the
bench runs made against it, and serves them with its facts at ``/api/report``."""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import json
from pathlib import Path
from typing import Any
import urllib.error

import pytest

from tests.integration.conftest import Run
from tests.integration.lab import Lab, lab_toml, raw, wait_for

#: Ticks every half second, so serving rollups come every 6 s; alerts fire without waiting.
DASHBOARD = "\n[dashboard]\ninterval = 0.5\nalert_for_scale = 0\n"


def test_the_lab_records_bench_runs_alerts_and_serving_and_serves_the_report_sources(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path, lab=DASHBOARD)))
    d.wait_state("chat", "ready")
    d.api("POST", "/api/deployments/chat/deploy", {"set": {"max_model_len": 2048}})
    with contextlib.suppress(urllib.error.HTTPError):  # fails its smoke test: rolled back
        d.api("POST", "/api/deployments/chat/deploy", {"set": {"fail_completions": True}})
    assert d.wait_state("chat", "ready")["revision"] == 2

    shape = ("--model", "chat", "--num-prompts", "20", "--input-len", "32", "--output-len", "8")
    run = labctl("bench", "--base-url", d.url, *shape, "--json", check=True)
    assert "labctl: recorded in the lab as bench #1" in run.err
    printed = run.json()
    quiet = labctl("bench", "--base-url", d.url + "/v1", *shape, "--no-record", check=True)
    assert "recorded" not in quiet.err

    def report() -> dict[str, Any]:
        doc = d.api("GET", "/api/report?since=3600")
        assert isinstance(doc, dict)
        return doc

    def ready(doc: dict[str, Any]) -> bool:
        # the engine's gauges (KV usage) come with its first scrape, every 2 s: on a slow
        # machine that can be after the first rollups, while its deploys replace it
        return (
            any(a["name"] == "LabDeployFailed" for a in doc["alerts"])
            and any(s["figures"].get("tokens_completion", 0) > 0 for s in doc["serving"])
            and "kv" in doc["serving"][-1]["figures"]
        )

    doc = wait_for(lambda: r if ready(r := report()) else None, 30, "an alert and a rollup")
    assert set(doc) == {"generated", "since", "lab", "gpus", "deployments", "deploys",
                        "revisions", "alerts", "serving", "bench", "doctor", "logs"}  # fmt: skip
    assert doc["since"] == pytest.approx(doc["generated"] - 3600)
    lab_doc = doc["lab"]
    assert lab_doc["url"] == d.url and lab_doc["config"] == str(tmp_path / "lab.toml")
    assert lab_doc["config_text"] == (tmp_path / "lab.toml").read_text()
    assert lab_doc["gpu_backend"] == "sim" and lab_doc["home"] == str(lab.home)
    assert doc["since"] < lab_doc["started"] <= doc["generated"]
    assert {"hostname", "fqdn", "user", "version"} <= set(lab_doc)
    (gpu,) = doc["gpus"]
    assert gpu["name"] == "NVIDIA GeForce RTX 3090" and gpu["memory_total_bytes"] > 20e9
    assert {"uuid", "pci_bus_id", "power_limit_watts", "driver_version",
            "cuda_driver_version"} <= set(gpu)  # fmt: skip
    (dep,) = doc["deployments"]
    assert (dep["name"], dep["state"], dep["revision"]) == ("chat", "ready", 2)
    outcomes = [(x["kind"], x["to_revision"], x["outcome"]) for x in doc["deploys"]]
    assert outcomes[:2] == [("deploy", 3, "rolled_back"), ("deploy", 2, "committed")]
    assert all(x["steps"] and x["duration_s"] is not None for x in doc["deploys"])
    revisions = doc["revisions"]["chat"]
    assert {"1", "2", "3"} <= set(revisions)
    assert revisions["2"]["args"]["max_model_len"] == 2048
    (failed,) = [a for a in doc["alerts"] if a["name"] == "LabDeployFailed"]
    assert failed["labels"]["outcome"] == "rolled_back" and failed["ended"] is None
    assert failed["severity"] == "warning" and doc["since"] <= failed["started"]
    times = [s["t"] for s in doc["serving"]]
    assert times == sorted(times) and {s["deployment"] for s in doc["serving"]} == {"chat"}
    figures = doc["serving"][-1]["figures"]
    assert figures["gpu_memory_bytes"] > 0 and 0 <= figures["kv"] <= 1
    (bench,) = doc["bench"]
    assert (bench["id"], bench["model"], bench["result"]) == (1, "chat", printed)
    assert doc["doctor"] is None or "findings" in doc["doctor"]
    assert doc["logs"]["chat"] and len(doc["logs"]["chat"]) <= 40

    for bad in ("0", "-1", "nan", "week", str(401 * 86400)):
        status, _, body = raw(d, "GET", f"/api/report?since={bad}",
                              headers={"Authorization": f"Bearer {d.token}"})  # fmt: skip
        assert status == 400 and b"give the period in seconds" in body, (bad, body)
    for body in (b"[1]", b'{"model_id": "chat"}', b"{not json"):
        status, _, answer = raw(d, "POST", "/api/bench", body,
                                {"Authorization": f"Bearer {d.token}",
                                 "Content-Type": "application/json"})  # fmt: skip
        assert status == 400, (body, answer)
        assert len(json.loads(answer)["error"]["message"].splitlines()) == 1
    assert len(report()["bench"]) == 1
