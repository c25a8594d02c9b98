"""The lab daemon with twin engines on simulated GPUs: deploys, refusals, rollbacks, crashes."""

from __future__ import annotations

from collections.abc import Callable
import json
import os
from pathlib import Path
import signal
import time
from typing import Any
import urllib.request

import pytest

from labctl.config import ENGINES, load_config
from labctl.gpu.sim import SimBackend, SimMachine
from tests.integration.conftest import Run
from tests.integration.lab import (
    Daemon,
    Lab,
    alive,
    engine_pids,
    free_port,
    get,
    lab_toml,
    wait_for,
)

GiB = 2**30
EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "lab.toml"


def complete(d: Daemon, name: str = "chat") -> dict[str, object]:
    dep = d.deployment(name)
    body = json.dumps({"model": dep["served_model"], "prompt": "hi", "max_tokens": 2}).encode()
    req = urllib.request.Request(d.url + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as r:
        return dict(json.loads(r.read()))


def test_the_embedded_default_is_ready_within_10_s_and_ctrl_c_leaves_nothing(
    lab: Lab, labctl: Callable[..., Run]
) -> None:
    d = lab.up()
    ready = d.wait_state("chat", "ready", timeout=10)
    assert ready["model"] == "Qwen/Qwen3-0.6B" and ready["revision"] == 1
    status = labctl("status", "--url", d.url, "--json", home=lab.home, check=True).json()
    assert isinstance(status, dict)
    assert {k: status["deployments"][0][k] for k in ("name", "state", "model", "revision")} == {
        "name": "chat", "state": "ready", "model": "Qwen/Qwen3-0.6B", "revision": 1,
    }  # fmt: skip
    assert complete(d)["choices"]
    assert engine_pids(lab.home) and SimMachine(lab.home).devices()[0].spec.id == "rtx-3090"
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(30) == 0
    assert engine_pids(lab.home) == []  # no engine, worker or daemon left
    assert SimBackend(SimMachine(lab.home)).read().devices[0].memory_used_bytes == 0


def test_a_swap_between_models_that_cannot_both_fit_is_journaled_step_by_step(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    old = d.wait_state("chat", "ready")
    run = labctl("deploy", "chat", "--model", "Qwen/Qwen3-8B", "--set", "max_model_len=4096",
                 "--url", d.url, "--json", home=lab.home, check=True)  # fmt: skip
    record = run.json()
    assert isinstance(record, dict) and record["outcome"] == "committed"
    steps = {s["name"]: s for s in record["steps"]}
    assert list(steps) == ["preflight", "drain", "stop", "verify_release", "start", "smoke_test",
                           "switch"]  # fmt: skip
    assert all(s["outcome"] == "ok" and s["duration_s"] is not None for s in record["steps"])
    assert steps["verify_release"]["freed_bytes"] > 20 * GiB  # 0.9 of the 3090
    assert "21.22 GiB per GPU" in steps["preflight"]["detail"]["need"]
    assert not alive(old["pid"])
    new = d.wait_state("chat", "ready")
    assert new["model"] == "Qwen/Qwen3-8B" and new["revision"] == 2 and complete(d)["choices"]
    text = labctl("history", "chat", "--url", d.url, home=lab.home, check=True).out
    assert "chat deploy r1 → r2: committed" in text and "released 21.22 GiB" in text
    metrics = get(d.url + "/metrics")
    assert 'labctl_deploy_duration_seconds_count{outcome="committed",swap="cold"} 2.0' in metrics
    assert 'labctl_deployment_state{deployment="chat",state="ready"} 1.0' in metrics
    assert "labctl_memory_release_seconds_count 1.0" in metrics
    assert 'labctl_engine_startup_seconds_count{phase="load_weights"} 2.0' in metrics


def test_a_model_that_cannot_fit_is_refused_with_the_planners_numbers(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    before = d.wait_state("chat", "ready")
    run = labctl("deploy", "chat", "--model", "Qwen/Qwen3-8B", "--set", "max_model_len=40960",
                 "--url", d.url, home=lab.home)  # fmt: skip
    assert run.code == 9
    assert run.err.strip() == (
        "labctl: error: chat: Qwen/Qwen3-8B does not fit on GPU 0 (NVIDIA GeForce RTX 3090): one "
        "40,960-token request needs 5.62 GiB of KV cache but 4.15 GiB is available; the largest "
        "context that fits is 30,224"
    )
    after = d.deployment("chat")
    assert (after["state"], after["pid"], after["revision"]) == ("ready", before["pid"], 1)
    assert complete(d)["choices"]


@pytest.mark.parametrize(
    ("flags", "why"),
    [
        (["--set", "fail_startup_after=0.05"], "exited with code"),
        (
            ["--set", "hang_startup=true", "--set", "startup_timeout=2"],
            "did not become ready in 2 s",
        ),
        (["--set", "fail_completions=true"], "smoke test: HTTP 500"),
    ],
    ids=["fails-startup", "hangs", "fails-smoke-test"],
)
def test_a_failing_revision_is_rolled_back_and_the_old_one_serves_again(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path, flags: list[str], why: str
) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    d.wait_state("chat", "ready")
    run = labctl("deploy", "chat", *flags, "--url", d.url, home=lab.home)
    assert run.code == 9
    assert why in run.err and "rolled back to revision 1, which serves again" in run.err
    after = d.wait_state("chat", "ready")
    assert after["revision"] == 1 and complete(d)["choices"]
    (record, *_) = labctl("history", "chat", "--url", d.url, "--json", home=lab.home,
                          check=True).json()["deploys"]  # type: ignore[index]  # fmt: skip
    assert record["outcome"] == "rolled_back"
    assert [s["name"] for s in record["steps"]][-1] == "rollback"
    assert len(engine_pids(lab.home)) == 2  # the daemon and the one engine: nothing left over


def test_an_orphaned_worker_of_the_old_revision_is_killed_before_the_new_one_starts(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    args = "{ max_model_len = 4096, time_scale = 0.05, load_gbps = 0, orphan_worker = true }"
    d = lab.up("--config", str(lab_toml(tmp_path, args)))
    old = d.wait_state("chat", "ready")
    workers = [p["pid"] for p in d.api("GET", "/api/ps")["processes"] if p["role"] == "worker"]
    (worker,) = workers
    os.kill(old["pid"], signal.SIGKILL)  # the engine dies; its worker keeps the memory
    wait_for(lambda: not alive(old["pid"]), what="the engine to die")
    assert alive(worker)
    labctl("deploy", "chat", "--model", "Qwen/Qwen3-8B", "--set", "max_model_len=4096",
           "--set", "orphan_worker=false", "--url", d.url, home=lab.home, check=True)  # fmt: skip
    assert not alive(worker)
    assert d.wait_state("chat", "ready")["model"] == "Qwen/Qwen3-8B"
    history = d.api("GET", "/api/history?deployment=chat")["deploys"]
    stops = [s for r in history for s in r["steps"] if s["name"] == "stop"]
    assert any(str(worker) in s["detail"]["processes"] for s in stops)


def test_a_deploy_after_a_crash_is_not_undone_by_the_pending_restart(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    half = (
        "{ max_model_len = 4096, time_scale = 0.05, load_gbps = 0, gpu_memory_utilization = 0.4 }"
    )
    other = f'[deployments.other]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\nargs = {half}\n'
    d = lab.up("--config", str(lab_toml(tmp_path, half, other)))
    old = d.wait_state("chat", "ready")
    d.wait_state("other", "ready")

    # a slow deploy of `other` holds the GPU; chat's deploy waits behind it, and chat's
    # engine dies meanwhile: its restart is queued behind the deploy that replaces it
    def deploy(name: str, settings: dict[str, Any]) -> str:
        body = {"set": settings, "wait": False}
        return str(d.api("POST", f"/api/deployments/{name}/deploy", body)["ticket"])

    def done(ticket: str) -> dict[str, Any]:
        doc = wait_for(lambda: (t := d.api("GET", f"/api/deploys/{ticket}"))["state"] == "done"
                       and t, what="the deploy to end", timeout=120)  # fmt: skip
        return dict(doc)

    slow = deploy("other", {"time_scale": 1})
    wait_for(lambda: d.deployment("other")["state"] == "starting", what="the slow deploy")
    ticket = deploy("chat", {"max_model_len": 2048})
    os.kill(old["pid"], signal.SIGKILL)
    assert "error" not in done(ticket) and "error" not in done(slow)
    time.sleep(2)  # a restart queued behind the deploy would have run by now
    now = d.deployment("chat")
    assert (now["revision"], now["state"]) == (2, "ready"), now
    kinds = [r["kind"] for r in d.api("GET", "/api/history?deployment=chat")["deploys"]]
    assert kinds[0] == "deploy", kinds  # nothing ran after the deploy
    assert complete(d)["choices"]


def test_memory_held_by_an_unrelated_process_is_named_in_the_refusal(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    args = (
        "{ max_model_len = 4096, time_scale = 0.05, load_gbps = 0, gpu_memory_utilization = 0.4 }"
    )
    d = lab.up("--config", str(lab_toml(tmp_path, args)))
    d.wait_state("chat", "ready")
    _, holder = lab.hold(0, "8GiB")
    run = labctl("deploy", "chat", "--set", "gpu_memory_utilization=0.9", "--url", d.url,
                 home=lab.home)  # fmt: skip
    assert run.code == 9
    assert f"pid {holder} (" in run.err and "sim hold" in run.err
    assert "holds 8.00 GiB on GPU 0" in run.err
    assert d.deployment("chat")["state"] == "ready"


def test_a_daemon_killed_mid_deploy_reconciles_to_serving_and_journals_it(
    lab: Lab, tmp_path: Path
) -> None:
    config = lab_toml(tmp_path)
    d = lab.up("--config", str(config))
    d.wait_state("chat", "ready")
    slow = lab.start("deploy", "chat", "--set", "time_scale=1", "--url", d.url)

    def spawned() -> int | None:
        deploys = d.api("GET", "/api/history?deployment=chat")["deploys"]
        start = [s for s in deploys[0]["steps"] if s["name"] == "start"]
        return start[0]["detail"].get("pid") if start and deploys[0]["kind"] == "deploy" else None

    new_pid = int(wait_for(spawned, what="the new revision to be spawned"))
    d.proc.kill()  # SIGKILL in the middle of the new revision's startup
    d.proc.wait(10)
    slow.wait(30)
    assert alive(new_pid)  # engines live in their own sessions
    again = lab.up("--config", str(config))
    ready = again.wait_state("chat", "ready")
    assert not alive(new_pid) and complete(again)["choices"]
    history = again.api("GET", "/api/history")["deploys"]
    interrupted = [r for r in history if r["outcome"] == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["to_revision"] == 2
    print(
        "HISTORY",
        json.dumps(
            [
                (
                    r["deployment"],
                    r["kind"],
                    r["outcome"],
                    r["error"],
                    [(s["name"], s["detail"]) for s in r["steps"]],
                )
                for r in history
            ],
            indent=0,
        )[:3000],
    )
    (cleanup,) = [r for r in history if r["kind"] == "reconcile"]
    actions = cleanup["steps"][0]["detail"]["actions"]
    assert any(f"stopped pid {new_pid} (chat)" in a for a in actions)
    assert ready["revision"] == 3  # the configured revision, started afresh


def killed_while_idle(lab: Lab, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A lab whose daemon was SIGKILLed while its engine served; its lab.toml, the engine."""
    config = lab_toml(tmp_path)
    d = lab.up("--config", str(config))
    first = d.wait_state("chat", "ready")
    d.proc.kill()
    d.proc.wait(10)
    return config, first


def test_a_daemon_killed_while_idle_adopts_its_healthy_engine(lab: Lab, tmp_path: Path) -> None:
    config, first = killed_while_idle(lab, tmp_path)
    again = lab.up("--config", str(config))
    adopted = again.wait_state("chat", "ready")
    assert (adopted["pid"], adopted["revision"]) == (first["pid"], 1)
    history = again.api("GET", "/api/history?deployment=chat")["deploys"]
    assert history[0]["kind"] == "reconcile" and history[0]["steps"][0]["name"] == "adopt"


def test_an_adopted_engine_is_replaced_when_lab_toml_changed(lab: Lab, tmp_path: Path) -> None:
    config, first = killed_while_idle(lab, tmp_path)
    config.write_text(config.read_text().replace("max_model_len = 4096", "max_model_len = 2048"))
    again = lab.up("--config", str(config))
    wait_for(lambda: again.deployment("chat")["revision"] == 2, 30, "the new settings to deploy")
    ready = again.wait_state("chat", "ready")
    assert ready["pid"] != first["pid"]
    cmdline = Path(f"/proc/{ready['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"2048" in cmdline


def test_bad_input_is_a_clear_error_and_leaves_deployments_alone(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[deployments.chat]\nengine = "tgi"\nmodel = "m"\n')
    run = labctl("up", "--config", str(bad), home=lab.home)
    assert run.code == 3
    assert run.err.strip() == (
        "labctl: error: deployments.chat.engine = 'tgi': use one of vllm, llamacpp, whispercpp, "
        "openvla, sim, command"
    )
    bad.write_text('[deployments.chat]\nengine = "sim"\nmodel = "m"\ngpus = "0"\n')
    assert (
        "deployments.chat.gpus = '0': give a list of GPU indices"
        in labctl("up", "--config", str(bad), home=lab.home).err
    )
    d = lab.up("--config", str(lab_toml(tmp_path)))
    before = d.wait_state("chat", "ready")
    port = int(d.url.rsplit(":", 1)[1])
    run = labctl("up", "--config", str(lab_toml(tmp_path)), "--listen", f"127.0.0.1:{port}",
                 home=tmp_path / "other")  # fmt: skip
    assert run.code == 3 and f"cannot listen on 127.0.0.1:{port}" in run.err
    run = labctl("deploy", "nope", "--url", d.url, home=lab.home)
    assert run.code == 2 and "no deployment named 'nope'; the lab has: chat" in run.err
    run = labctl("deploy", "chat", "--set", "engine=llamacpp", "--set", "model=/no/such.gguf",
                 "--url", d.url, home=lab.home)  # fmt: skip
    assert run.code == 2 and "model = '/no/such.gguf': no such GGUF file" in run.err
    run = labctl("deploy", "chat", "--set", "port=99999", "--url", d.url, home=lab.home)
    assert run.code == 2 and "port = 99999: use 1–65535, or 0" in run.err
    after = d.deployment("chat")
    assert (after["state"], after["pid"], after["revision"]) == ("ready", before["pid"], 1)
    down = labctl("status", "--url", f"http://127.0.0.1:{free_port()}", home=lab.home)
    assert down.code == 1 and "no lab answers at" in down.err


def test_the_example_lab_toml_documents_a_valid_lab() -> None:
    config = load_config(EXAMPLE, check_host=False)  # it names a vllm binary and /models
    assert {d.engine for d in config.deployments} == set(ENGINES)  # every engine shown
    text = EXAMPLE.read_text()
    from dataclasses import fields

    from labctl.config import DashboardConfig, DeploymentSpec

    for f in [*fields(DeploymentSpec), *fields(DashboardConfig)]:
        if f.name not in ("name", "gpu_names"):  # gpu_names: what gpus holds, as written
            assert f"{f.name} =" in text, f"examples/lab.toml does not document {f.name}"
    for key in ("listen", "gpu_backend", "sim_gpus", "keys", "admin_token", "max_body_bytes",
                "queue_timeout", "swap_timeout", "drain_timeout"):  # fmt: skip
        assert f"{key} =" in text
    assert config.gateway.keys[0].rate_per_minute == 600


def test_an_engine_that_dies_outside_a_deploy_is_restarted(lab: Lab, tmp_path: Path) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    first = d.wait_state("chat", "ready")
    os.kill(first["pid"], signal.SIGKILL)
    d.wait_state("chat", "failed", timeout=10)  # seen, and a restart scheduled after a backoff
    again = d.wait_state("chat", "ready", timeout=20)
    assert again["pid"] != first["pid"] and again["revision"] == 1 and again["restarts"] == 1
    metrics = get(d.url + "/metrics")
    assert 'labctl_engine_restarts_total{deployment="chat",reason="exited"} 1.0' in metrics
    kinds = [r["kind"] for r in d.api("GET", "/api/history?deployment=chat")["deploys"]]
    assert kinds[0] == "restart"


def test_a_deploy_during_a_restart_backoff_serves_at_once(lab: Lab, tmp_path: Path) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    for restarts in (1, 2, 3):  # backoffs of 1, 2 and 4 s: the next one is 8 s
        pid = d.wait_state("chat", "ready", timeout=20)["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda n=restarts: d.deployment("chat")["restarts"] == n, what="a restart")
    pid = d.wait_state("chat", "ready", timeout=20)["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: d.deployment("chat")["restarts"] == 4, what="the fourth restart's backoff")
    begun = time.monotonic()
    d.api("POST", "/api/deployments/chat/deploy", {"set": {"max_model_len": 2048}})
    assert complete(d)["choices"]  # served by the new revision, not held for the backoff
    assert time.monotonic() - begun < 6, "held for the restart's backoff"
    time.sleep(8 - (time.monotonic() - begun))
    now = d.deployment("chat")
    assert (now["revision"], now["state"], now["pid"] != pid) == (2, "ready", True), now


def test_a_start_that_stops_logging_is_stalled_and_rolled_back(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    d.wait_state("chat", "ready")
    run = labctl("deploy", "chat", "--set", "hang_startup=true", "--set", "stall_timeout=3",
                 "--url", d.url, home=lab.home)  # fmt: skip
    assert run.code == 9 and "stalled: no log output for 3 s" in run.err
    assert "loading is stuck" in run.err  # the log's last lines come with the error
    assert d.wait_state("chat", "ready")["revision"] == 1


def test_events_stream_and_labctl_down_stops_everything(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    d.wait_state("chat", "ready")
    events = urllib.request.urlopen(
        urllib.request.Request(
            d.url + "/api/events", headers={"Authorization": f"Bearer {d.token}"}
        ),
        timeout=30,
    )
    hello = json.loads(events.readline().decode().removeprefix("data: "))
    assert hello["type"] == "hello" and hello["deployments"][0]["state"] == "ready"
    labctl("deploy", "chat", "--set", "max_model_len=2048", "--url", d.url, home=lab.home,
           check=True)  # fmt: skip
    seen: list[dict[str, Any]] = []
    while not (seen and seen[-1]["type"] == "deploy" and seen[-1]["phase"] == "committed"):
        line = events.readline().decode().strip()
        if line.startswith("data: "):
            seen.append(json.loads(line[6:]))
    assert [e.get("state") for e in seen if e["type"] == "state"] == [
        "draining", "stopping", "stopped", "starting", "ready"
    ]  # fmt: skip
    # one ticket follows the deploy from its queueing to its end; each step begins and ends
    tickets = {e.get("ticket") for e in seen if e["type"] in ("deploy", "step", "startup")}
    assert len(tickets) == 1 and None not in tickets
    steps = [(e["step"], e["status"]) for e in seen if e["type"] == "step"]
    assert steps[:2] == [("preflight", "begin"), ("preflight", "ok")]
    assert ("switch", "ok") in steps
    assert any(e["type"] == "startup" and e["line"] for e in seen)
    events.close()
    assert "stopping the lab" in labctl("down", "--url", d.url, home=lab.home, check=True).out
    assert d.proc.wait(30) == 0
    assert engine_pids(lab.home) == []


def llama_server_binary() -> str:
    """The cached llama-server that `make test` builds (scripts/build-llama-server.sh)."""
    path = os.environ.get("LABCTL_LLAMA_SERVER")
    if path:
        assert Path(path).is_file(), f"LABCTL_LLAMA_SERVER={path} does not exist"
        return path
    cached = Path.home() / ".cache" / "labctl" / "llama-server-0.3.36-portable" / "llama-server"
    if not cached.is_file():
        pytest.skip("llama-server is not built here: run `make llama-server` (make test does)")
    return str(cached)


def test_a_swap_between_two_real_llama_server_models(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    from tests.tinygguf import write_tiny_llama

    binary = llama_server_binary()
    a = write_tiny_llama(tmp_path / "tiny-a.gguf", seed=1)
    b = write_tiny_llama(tmp_path / "tiny-b.gguf", seed=2, layers=3)
    config = tmp_path / "lab.toml"
    config.write_text(
        '[lab]\ngpu_backend = "sim"\nsim_gpus = "1xrtx-3090"\n\n'
        f'[deployments.small]\nengine = "llamacpp"\nmodel = "{a}"\nbinary = "{binary}"\n'
        "stop_grace = 5\nargs = { ctx_size = 512, threads = 1, parallel = 1 }\n"
    )
    d = lab.up("--config", str(config))
    old = d.wait_state("small", "ready")
    assert complete(d, "small")["choices"]
    record = labctl("deploy", "small", "--set", f"model={b}", "--url", d.url, "--json",
                    home=lab.home, check=True).json()  # fmt: skip
    assert isinstance(record, dict) and record["outcome"] == "committed"
    steps = {s["name"]: s for s in record["steps"]}
    assert list(steps) == ["preflight", "drain", "stop", "verify_release", "start", "smoke_test",
                           "switch"]  # fmt: skip
    assert steps["stop"]["detail"]["graceful"] is True
    assert set(steps["start"]["detail"]["phases"]) == {"load_weights", "api_server"}
    new = d.wait_state("small", "ready")
    assert new["revision"] == 2 and new["model"] == str(b) and not alive(old["pid"])
    reply = complete(d, "small")
    assert reply["model"] == "small" and reply["usage"]["completion_tokens"] == 2  # type: ignore[index]
