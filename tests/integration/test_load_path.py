"""A twin's start predicted phase by phase, measured, and judged: disk-bound on a slow disk,
not on a fast one; in the journal, `labctl history`, `labctl status` and the dashboard."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.browser import browser
from tests.integration.conftest import Run
from tests.integration.lab import Lab

#: 3.09 GB of bf16 weights (`labctl fit`): the catalog's model nearest 4 GB below it.
MODEL = "Qwen/Qwen2.5-1.5B-Instruct"


def start_step(record: dict[str, Any]) -> dict[str, Any]:
    (step,) = [s for s in record["steps"] if s["name"] == "start"]
    assert step["outcome"] == "ok"
    return dict(step["detail"])


def test_a_slow_disk_makes_a_start_disk_bound_and_the_load_phase_is_predicted(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    toml = tmp_path / "lab.toml"
    # 0.5 GB/s: 6.2 s of the twin's time, 3.1 s at time scale 0.5 (profile 1 s)
    toml.write_text(
        '[lab]\ngpu_backend = "sim"\nsim_gpus = "1xrtx-3090"\n[deployments.chat]\n'
        f'engine = "sim"\nmodel = "{MODEL}"\nstop_grace = 5\nargs = {{ max_model_len = 4096, '
        "enforce_eager = true, load_gbps = 0.5, time_scale = 0.5 }\n"
    )
    d = lab.up("--config", str(toml))
    d.wait_state("chat", "ready", timeout=60)
    # preflight alone says what the start should take, before anything stops
    dry = labctl("deploy", "chat", "--set", "load_gbps=4", "--set", "time_scale=1", "--dry-run",
                 "--url", d.url, "--json", home=lab.home, check=True).json()  # fmt: skip
    assert isinstance(dry, dict) and dry["predicted"]["disk_gbps"] == 4.0
    assert dry["predicted"]["phases"]["weights"] > 0 and dry["predicted"]["total_s"] > 0
    said = labctl("deploy", "chat", "--set", "load_gbps=4", "--set", "time_scale=1", "--dry-run",
                  "--url", d.url, home=lab.home, check=True).out  # fmt: skip
    assert "a start should take about " in said and "weights read at 4 GB/s" in said, said
    # 4 GB/s: 0.77 s in real time (profile 2 s)
    labctl("deploy", "chat", "--set", "load_gbps=4", "--set", "time_scale=1", "--url", d.url,
           home=lab.home, check=True)  # fmt: skip
    fit = labctl("fit", MODEL, "--gpu", "rtx-3090", "--max-model-len", "4096", "--json",
                 check=True).json()  # fmt: skip
    assert isinstance(fit, dict)
    doc = labctl("history", "chat", "--url", d.url, "--json", home=lab.home, check=True).json()
    assert isinstance(doc, dict)
    fast, slow = (start_step(r) for r in doc["deploys"])

    for detail, gbps, scale in ((slow, 0.5, 0.5), (fast, 4.0, 1.0)):
        predicted, went = detail["predicted"], detail["load_path"]
        assert predicted["weight_bytes"] == went["weight_bytes"] == fit["weights_bytes"]
        assert (predicted["disk_gbps"], predicted["time_scale"]) == (gbps, scale)
        expected = fit["weights_bytes"] / (gbps * 1e9) * scale
        assert abs(predicted["phases"]["weights"] / expected - 1) < 0.001
        took = went["phases"]["weights"]
        assert abs(took / predicted["phases"]["weights"] - 1) <= 0.2, (took, predicted)
        assert abs(went["error"]["weights"] - (took / predicted["phases"]["weights"] - 1)) < 0.005
        # the engine's own phases, split where the log said weights begin
        assert abs(went["phases"]["process_start"] + took - detail["phases"]["load_weights"]) < 0.01
        assert abs(went["achieved_gbps"] / gbps - 1) <= 0.2

    assert (slow["load_path"]["dominant"], slow["load_path"]["bound"]) == ("weights", "disk")
    assert slow["load_path"]["disk_bound"] is True
    assert slow["load_path"]["verdict"].startswith("disk-bound: weights took ")
    assert fast["load_path"]["dominant"] != "weights", str(fast["load_path"])
    assert fast["load_path"]["bound"] is None
    assert fast["load_path"]["disk_bound"] is False
    assert "disk-bound" not in fast["load_path"]["verdict"]
    # the second start's other phases come from the first's, rescaled to its time scale
    assert fast["predicted"]["basis"]["profile"] == "median of 1 start(s) of this model"
    assert abs(fast["predicted"]["phases"]["profile"] / slow["load_path"]["phases"]["profile"]
               - 2.0) < 0.01  # fmt: skip

    text = labctl("history", "chat", "--url", d.url, home=lab.home, check=True).out
    first, second = text.split("#1 ")
    assert "disk-bound: weights took" in second and "disk-bound" not in first
    assert f"{fast['load_path']['dominant']} dominated" in first
    assert "took/predicted (s): process_start " in first
    status = labctl("status", "--url", d.url, home=lab.home, check=True).out
    assert f"last start: {fast['load_path']['dominant']} dominated" in status
    serving = labctl("status", "--url", d.url, "--json", home=lab.home, check=True).json()
    assert isinstance(serving, dict)
    assert serving["deployments"][0]["load_path"] == fast["load_path"]

    with browser() as b:
        page = b.new_page(viewport={"width": 1280, "height": 800})
        page.goto(d.login_url())
        bound = page.wait_for_selector('#timeline .lp[data-bound="disk"]')
        assert bound is not None and "disk-bound" in bound.inner_text()
        card = page.wait_for_selector('[data-deployment="chat"] .lp')
        assert card is not None
        assert card.get_attribute("data-dominant") == fast["load_path"]["dominant"]
        assert card.inner_text() == f"last start: {fast['load_path']['verdict']}"
        page.screenshot(path=str(tmp_path / "load-path.png"))
