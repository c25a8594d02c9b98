"""Deploys that lose their client, daemons killed mid-step, bad model files, bad state.

Whatever the client or the daemon does, a deployment ends serving one revision, the journal
says how every deploy ended, and no process of the lab's is left running unowned.
"""

from __future__ import annotations

from collections.abc import Callable
import json
import os
from pathlib import Path
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.conftest import Run
from tests.integration.lab import Daemon, Lab, alive, engine_pids, get, lab_toml, wait_for


def history(d: Daemon, name: str = "chat") -> list[dict[str, object]]:
    return list(d.api("GET", f"/api/history?deployment={name}")["deploys"])


def started_step(d: Daemon, step: str) -> bool:
    deploys = history(d)
    return (
        bool(deploys)
        and deploys[0]["kind"] == "deploy"
        and any(
            s["name"] == step
            for s in deploys[0]["steps"]  # type: ignore[attr-defined]
        )
    )


def unfinished(home: Path) -> list[tuple[int, str]]:
    db = sqlite3.connect(f"file:{home / 'journal.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT id, kind FROM deploys WHERE finished IS NULL").fetchall()
    finally:
        db.close()


def test_a_cli_deploy_interrupted_after_the_old_revision_stopped_still_ends_serving(
    lab: Lab, tmp_path: Path
) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    d.wait_state("chat", "ready")
    # A start slow enough to interrupt: weights load at 0.2 GB/s (about 6 s).
    client = lab.start("deploy", "chat", "--set", "load_gbps=0.2", "--url", d.url)
    wait_for(lambda: started_step(d, "start"), 30, "the new revision to be starting")
    client.send_signal(signal.SIGINT)  # Ctrl-C on the CLI
    assert client.wait(10) != 0
    assert client.stderr is not None
    err = client.stderr.read()
    assert "goes on in the lab" in err and "labctl cancel chat" in err, err
    # It runs to its commit without the client (waited for by revision: a status read in the
    # instant between the start step's journal entry and the new owner's first state can
    # still show the old revision's).
    ready = wait_for(lambda: (r := d.deployment("chat"))["state"] == "ready"
                     and r["revision"] == 2 and r, 60, "revision 2 to be ready")  # fmt: skip
    assert ready["revision"] == 2
    (last, *_) = history(d)
    assert last["outcome"] == "committed"
    assert unfinished(lab.home) == []


def test_a_client_that_disconnects_mid_deploy_does_not_abort_it(lab: Lab, tmp_path: Path) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    d.wait_state("chat", "ready")
    body = json.dumps({"set": {"load_gbps": 0.2}}).encode()
    host, port = d.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            f"POST /api/deployments/chat/deploy HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {d.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_for(lambda: started_step(d, "start"), 30, "the new revision to be starting")
    # waited for by revision, as above: right after the start step's journal entry a status
    # read can still show the old revision ready
    ready = wait_for(lambda: (r := d.deployment("chat"))["state"] == "ready"
                     and r["revision"] == 2 and r, 60, "revision 2 to be ready")  # fmt: skip
    assert ready["revision"] == 2 and history(d)[0]["outcome"] == "committed"
    assert unfinished(lab.home) == []


def test_a_cancel_is_an_explicit_request_and_rolls_back(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    first = d.wait_state("chat", "ready")
    client = lab.start("deploy", "chat", "--set", "load_gbps=0.1", "--url", d.url)
    wait_for(lambda: started_step(d, "start"), 30, "the new revision to be starting")
    run = labctl("cancel", "chat", "--url", d.url, home=lab.home, check=True)
    assert "cancelled" in run.out
    assert client.wait(60) == 9
    assert client.stderr is not None and "cancelled" in client.stderr.read()
    ready = d.wait_state("chat", "ready", timeout=60)
    assert ready["revision"] == 1 and ready["pid"] != first["pid"]
    (last, *_) = history(d)
    assert last["outcome"] == "rolled_back" and "cancelled" in str(last["error"])
    assert unfinished(lab.home) == []
    run = labctl("cancel", "chat", "--url", d.url, home=lab.home)
    assert run.code == 9 and "no deploy of chat is running" in run.err


def test_a_daemon_killed_while_stopping_a_sigterm_deaf_engine_leaves_no_orphan(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    deaf = "{ max_model_len = 4096, time_scale = 0.05, load_gbps = 0, ignore_sigterm = true }"
    config = lab_toml(tmp_path, deaf).read_text().replace("stop_grace = 5", "stop_grace = 30")
    path = tmp_path / "deaf.toml"
    path.write_text(config)
    d = lab.up("--config", str(path))
    old = d.wait_state("chat", "ready")
    client = lab.start("deploy", "chat", "--set", "ignore_sigterm=false", "--url", d.url)
    wait_for(lambda: started_step(d, "stop"), 30, "the old revision to be stopping")
    time.sleep(0.5)  # SIGTERM sent and ignored
    d.proc.kill()
    d.proc.wait(10)
    client.wait(30)
    assert alive(old["pid"])  # the engine ignored SIGTERM and outlived the daemon
    again = lab.up("--config", str(path))
    try:
        ready = again.wait_state("chat", "ready", timeout=60)
    except BaseException:
        print("DBG", again.deployment("chat"), again.api("GET", "/api/history"))
        raise
    assert not alive(old["pid"]), "the next daemon stops the engine its predecessor was stopping"
    assert ready["pid"] != old["pid"]
    assert unfinished(lab.home) == []
    # Kill this one too, with its engine running: `labctl down` stops what the journal owns.
    again.proc.kill()
    again.proc.wait(10)
    assert alive(ready["pid"])
    run = labctl("down", "--url", again.url, home=lab.home, check=True)
    assert f"stopped pid {ready['pid']}" in run.out
    assert not alive(ready["pid"])
    assert engine_pids(lab.home) == []


def test_a_bad_model_file_is_refused_without_freezing_the_lab(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    from tests.hostile_models import HOSTILE_CASES

    d = lab.up("--config", str(lab_toml(tmp_path)))
    d.wait_state("chat", "ready")
    stop = threading.Event()
    worst = [0.0]

    def watch() -> None:  # /healthz keeps answering while the planner reads each file
        while not stop.is_set():
            t = time.monotonic()
            assert get(d.url + "/healthz") == "ok\n"
            worst[0] = max(worst[0], time.monotonic() - t)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for name, write in HOSTILE_CASES:
            model = write(tmp_path / name)
            t = time.monotonic()
            run = labctl("deploy", "chat", "--model", str(model), "--dry-run", "--url", d.url,
                         home=lab.home)  # fmt: skip
            took = time.monotonic() - t
            assert run.code != 0, (name, run.out)
            assert run.err.count("\n") == 1 and run.err.startswith("labctl: error:"), (
                name,
                run.err,
            )
            assert "Traceback" not in run.err and took < 15, (name, took)
    finally:
        stop.set()
        watcher.join(10)
    assert worst[0] < 1.0, f"/healthz took {worst[0]:.2f} s while a model was read"
    assert d.deployment("chat")["state"] == "ready"


def journal_edited(lab: Lab, tmp_path: Path, statement: str) -> Path:
    """A lab that ran and stopped, its journal then edited by hand; returns its lab.toml."""
    config = lab_toml(tmp_path)
    d = lab.up("--config", str(config))
    d.wait_state("chat", "ready")
    d.proc.terminate()
    d.proc.wait(30)
    db = sqlite3.connect(lab.home / "journal.db")
    db.execute(statement)
    db.commit()
    db.close()
    return config


def test_a_journal_with_a_step_that_is_not_json_is_still_readable(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    config = journal_edited(lab, tmp_path, "UPDATE steps SET detail = 'not json {' WHERE seq = 1")
    d = lab.up("--config", str(config))
    d.wait_state("chat", "ready")
    run = labctl("history", "--url", d.url, home=lab.home)
    assert run.code == 0 and "committed" in run.out, run.err


def test_a_journal_missing_a_table_is_refused_at_start(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    config = journal_edited(lab, tmp_path, "DROP TABLE steps")
    run = labctl("up", "--config", str(config), home=lab.home)
    assert run.code == 9 and run.err.count("\n") == 1, run.err
    assert "journal" in run.err and "steps" in run.err and "move it aside" in run.err


@pytest.mark.parametrize("kind", ["read-only", "a file", "under a file"])
def test_an_unusable_state_directory_is_one_clear_error(
    labctl: Callable[..., Run], tmp_path: Path, kind: str
) -> None:
    home = tmp_path / "home"
    if kind == "read-only":
        home.mkdir()
        home.chmod(0o500)
        if _writable(home):  # root writes anywhere: make the directory immutable instead
            subprocess.run(["chattr", "+i", str(home)], check=False, capture_output=True)
        if _writable(home):
            pytest.skip("cannot make a directory read-only here")
    elif kind == "a file":
        home.write_text("not a directory")
    else:
        (tmp_path / "file").write_text("x")
        home = tmp_path / "file" / "home"
    try:
        run = labctl("up", "--listen", "127.0.0.1:0", home=home)
    finally:
        if kind == "read-only":
            subprocess.run(["chattr", "-i", str(home)], check=False, capture_output=True)
            home.chmod(0o700)
    assert run.code != 0 and "Traceback" not in run.err, run.err
    assert run.err.count("\n") == 1 and "LABCTL_HOME" in run.err, run.err


def _writable(path: Path) -> bool:
    try:
        (path / ".probe").write_text("x")
    except OSError:
        return False
    (path / ".probe").unlink()
    return True


def test_an_engine_killed_under_load_fails_only_its_requests_in_flight(
    lab: Lab, tmp_path: Path
) -> None:
    args = "{ max_model_len = 4096, time_scale = 1, load_gbps = 0, enforce_eager = true }"
    d = lab.up("--config", str(lab_toml(tmp_path, args)))
    first = d.wait_state("chat", "ready")
    results: list[tuple[str, str]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        body = {"model": "Qwen/Qwen3-0.6B", "prompt": "x", "max_tokens": 40, "stream": True,
                "ignore_eos": True}  # fmt: skip
        req = urllib.request.Request(d.url + "/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                text = r.read().decode()
            outcome = "error-event" if '"error"' in text else (
                "ok" if text.rstrip().endswith("data: [DONE]") else "cut")  # fmt: skip
        except urllib.error.HTTPError as exc:
            outcome = f"http-{exc.code}"
            exc.close()
        except OSError as exc:
            outcome = f"oserror-{exc}"
        with lock:
            results.append((time.strftime("%X"), outcome))

    threads = []
    for i in range(80):
        t = threading.Thread(target=one, args=(i,))
        t.start()
        threads.append(t)
        time.sleep(0.03)
        if i == 40:
            os.kill(first["pid"], signal.SIGKILL)
    for t in threads:
        t.join(150)
    outcomes = [o for _, o in results]
    bad = [o for o in outcomes if o not in ("ok", "error-event")]
    assert bad == [], outcomes  # no cut stream, no 502 or 503: held through the restart
    assert outcomes.count("ok") >= 40, outcomes
    assert d.wait_state("chat", "ready")["pid"] != first["pid"]
