"""`labctl deploy` follows the deploy it starts: a live display on a terminal (a pty here),
plain lines on a pipe, the record with --json; Ctrl-C leaves the deploy running."""

from __future__ import annotations

from collections.abc import Callable
import fcntl
import json
import os
from pathlib import Path
import re
import select
import struct
import subprocess
import sys
import termios
import time
from typing import Any
import urllib.error
import urllib.request

import pytest

from labctl.catalog.gpus import gpu
from labctl.catalog.models import resolve
from labctl.fit.plan import FitRequest, plan
from tests.integration.conftest import Run
from tests.integration.lab import Daemon, Lab, lab_toml, raw, wait_for

#: The lab's twin runs at time_scale 0.05 (lab_toml's FAST_TWIN): a load_gbps that makes its
#: weights take 20 s of real time to load.
LOAD_S = 20.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-B]")


def slow_load() -> list[str]:
    weights = plan(resolve("Qwen/Qwen3-0.6B"),
                   FitRequest.on_gpu(gpu("rtx-3090"), max_model_len=4096)).weights_bytes  # fmt: skip
    return ["--set", f"load_gbps={weights * 0.05 / LOAD_S / 1e9:.6f}"]


class Terminal:
    """``labctl ARGS`` on a pseudo-terminal of its own (its controlling terminal, so that a
    Ctrl-C typed there reaches it as it would from a shell)."""

    def __init__(self, home: Path, *args: str) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        env |= {"LABCTL_HOME": str(home), "TERM": "xterm-256color"}

        def controlling_tty() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "labctl", *args], stdin=slave, stdout=slave, stderr=slave,
            env=env, preexec_fn=controlling_tty,
        )  # fmt: skip
        os.close(slave)
        self.master = master
        self.raw = b""
        #: (seconds since start, the screen's text so far without control codes)
        self.seen: list[tuple[float, str]] = []
        self.began = time.monotonic()

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace")).replace("\r", "")

    def read(self, timeout: float = 0.1) -> bool:
        """Whatever it wrote within ``timeout``; False once it closed the terminal."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every writer is gone
            return False
        self.raw += chunk
        self.seen.append((time.monotonic() - self.began, self.text))
        return bool(chunk)

    def until(self, predicate: Callable[[str], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.text):
            if time.monotonic() > deadline or not self.read():
                pytest.fail(f"timed out waiting for {what}; the terminal shows:\n{self.text}")

    def finish(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.read() and time.monotonic() < deadline:
            pass
        try:
            return self.proc.wait(max(1.0, deadline - time.monotonic()))
        finally:
            os.close(self.master)


@pytest.fixture
def terminals() -> Any:
    started: list[Terminal] = []

    def start(home: Path, *args: str) -> Terminal:
        t = Terminal(home, *args)
        started.append(t)
        return t

    yield start
    for t in started:
        if t.proc.poll() is None:
            t.proc.kill()
            t.proc.wait()


def loading(text: str) -> list[int]:
    """The weight percentages the display has shown, e.g. "0.30 / 1.11 GiB (27%)" → 27."""
    return [int(p) for p in re.findall(r"[\d.]+ / [\d.]+ GiB \((\d+)%\)", text)]


def newest(d: Daemon) -> dict[str, Any]:
    return dict(d.api("GET", "/api/history?deployment=chat")["deploys"][0])


def test_deploy_shows_its_progress_live_on_a_terminal(
    lab: Lab, tmp_path: Path, terminals: Callable[..., Terminal]
) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    d.wait_state("chat", "ready")
    t = terminals(lab.home, "deploy", "chat", *slow_load(), "--url", d.url)
    assert t.finish(LOAD_S + 40) == 0, t.text
    end = t.seen[-1][0]
    # while the weights loaded: the step, the engine's log line and the bytes, redrawn as they grew
    during = [(at, text) for at, text in t.seen if at < end - 2]
    shown = {p for _, text in during for p in loading(text) if 0 < p < 100}
    assert len(shown) >= 3, t.text
    last = during[-1][1]
    assert "… start" in last and "Loading safetensors checkpoint shards" in last
    assert "✓ verify_release" in last and "loading weights" in last
    first = next(at for at, text in during if any(0 < p < 100 for p in loading(text)))
    assert end - first > LOAD_S / 2  # seen early in the load, not only at its end
    assert "#2 chat deploy r1 → r2: committed" in t.text
    assert "phases: load_weights ✓" in t.text  # after the weights, the phases it went through
    assert d.wait_state("chat", "ready")["revision"] == 2


def test_ctrl_c_detaches_and_the_deploy_still_commits(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path, terminals: Callable[..., Terminal]
) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    first = d.wait_state("chat", "ready")
    t = terminals(lab.home, "deploy", "chat", *slow_load(), "--url", d.url)
    t.until(lambda text: "… start" in text and bool(loading(text)), 30, "the start step to show")
    os.write(t.master, b"\x03")  # Ctrl-C, typed on the terminal
    assert t.finish(10) == 130, t.text
    assert newest(d)["outcome"] is None  # it left while the deploy was still loading
    assert (
        "detached: the deploy goes on in the lab; follow it with `labctl history chat`, "
        "cancel it with `labctl deploy --cancel chat`"
    ) in " ".join(t.text.split())  # (the terminal may wrap the line)

    def committed() -> dict[str, Any] | None:
        doc = labctl("history", "chat", "--url", d.url, "--json", home=lab.home, check=True)
        (record, *_) = doc.json()["deploys"]  # type: ignore[index]
        return dict(record) if record["outcome"] else None

    record = wait_for(committed, LOAD_S + 40, "the deploy to end")
    assert record["outcome"] == "committed" and record["error"] is None
    ready = d.wait_state("chat", "ready")
    assert ready["revision"] == 2 and ready["pid"] != first["pid"]


def test_json_prints_only_the_record_and_a_pipe_gets_plain_lines(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    d.wait_state("chat", "ready")
    run = labctl("deploy", "chat", "--set", "max_model_len=2048", "--url", d.url, "--json",
                 home=lab.home, check=True)  # fmt: skip
    record = json.loads(run.out)  # one document, nothing else
    assert isinstance(record, dict) and run.err == ""
    assert record["outcome"] == "committed" and record["to_revision"] == 2
    assert [s["name"] for s in record["steps"]] == ["preflight", "drain", "stop",
                                                   "verify_release", "start", "smoke_test",
                                                   "switch"]  # fmt: skip
    assert all(s["outcome"] == "ok" for s in record["steps"])
    run = labctl("deploy", "chat", "--set", "max_model_len=3072", "--url", d.url, home=lab.home,
                 check=True)  # fmt: skip
    assert "\x1b" not in run.out and run.err == ""
    lines = run.out.splitlines()
    assert any(line.endswith("start …") for line in lines)
    assert any(re.search(r"start ok \(\d+\.\d+ s\)$", line) for line in lines)
    assert any("engine: load_weights done at" in line for line in lines)
    assert "#3 chat deploy r2 → r3: committed" in run.out
    run = labctl("rollback", "chat", "--url", d.url, home=lab.home, check=True)
    assert "#4 chat rollback r3 → r2: committed" in run.out
    assert d.wait_state("chat", "ready")["revision"] == 2
    run = labctl("deploy", "--cancel", "chat", "--url", d.url, home=lab.home)
    assert run.code == 9 and "no deploy of chat is running" in run.err


def test_the_api_answers_202_with_a_ticket_and_the_ticket_gives_the_record(
    lab: Lab, tmp_path: Path
) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    d.wait_state("chat", "ready")
    assert d.token
    admin = {"Authorization": f"Bearer {d.token}", "Content-Type": "application/json"}

    def post(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, _, data = raw(d, "POST", path, json.dumps(body).encode(), admin)
        return status, json.loads(data)

    def done(ticket: str) -> dict[str, Any]:
        doc = wait_for(lambda: (t := d.api("GET", f"/api/deploys/{ticket}"))["state"] == "done"
                       and t, 30, "the deploy to end")  # fmt: skip
        return dict(doc)

    status, accepted = post("/api/deployments/chat/deploy",
                            {"set": {"max_model_len": 2048}, "wait": False})  # fmt: skip
    assert status == 202 and accepted["deployment"] == "chat" and accepted["ticket"]
    doc = done(accepted["ticket"])
    assert doc["record"]["outcome"] == "committed" and "error" not in doc
    assert doc["record"]["to_revision"] == 2 and doc["kind"] == "deploy"
    # refused by the request's checks: at once, as before
    status, body = post("/api/deployments/chat/deploy", {"set": {"port": 99999}, "wait": False})
    assert status == 400 and "port = 99999" in body["error"]["message"]
    status, body = post("/api/deployments/chat/deploy", {"wait": "no"})
    assert status == 400 and body["error"]["message"] == "wait must be true or false"
    # refused at preflight: the deploy's own record says so
    status, accepted = post("/api/deployments/chat/deploy", {"model": "Qwen/Qwen3-8B",
                            "set": {"max_model_len": 40960}, "wait": False})  # fmt: skip
    assert status == 202
    doc = done(accepted["ticket"])
    assert doc["record"]["outcome"] == "refused" and "does not fit" in doc["error"]
    status, accepted = post("/api/deployments/chat/rollback", {"wait": False})
    assert status == 202
    doc = done(accepted["ticket"])
    assert doc["kind"] == "rollback" and doc["record"]["outcome"] == "committed"
    status, _, data = raw(d, "GET", "/api/deploys/nope", headers=admin)
    assert status == 404 and "no deploy with ticket 'nope'" in json.loads(data)["error"]["message"]
    req = urllib.request.Request(d.url + "/api/deploys/nope")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(req, timeout=5)
    denied.value.close()
    assert denied.value.code == 401  # behind the guard like the rest of /api
