"""The admin API as a hostile web page, a careless operator and a log reader would meet it.

The lab starts processes on the operator's machine, so its admin API is guarded even on
loopback: a token (generated at first start when lab.toml sets none), same-origin JSON for
anything that changes state, a ``Host`` that names the lab, and no new commands or binaries
through the API unless lab.toml allows them.
"""

from __future__ import annotations

from collections.abc import Callable
import json
from pathlib import Path
import re
import sqlite3
import stat
import time
from typing import Any
import urllib.error

import pytest

from tests.integration.conftest import Run
from tests.integration.lab import Daemon, Lab, get, lab_toml, raw, wait_for


def token_of(home: Path) -> str:
    return (home / "admin-token").read_text().strip()


def test_a_cross_origin_page_cannot_run_a_command_or_stop_the_lab(lab: Lab, tmp_path: Path) -> None:
    d = lab.up()  # the embedded default: no token in any file
    marker = tmp_path / "pwned"
    body = json.dumps({"set": {"engine": "command",
                               "command": ["/bin/sh", "-c", f"touch {marker}; sleep 60"]}}).encode()  # fmt: skip
    # What a browser sends from http://evil.example without a preflight: text/plain, no token.
    evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    status, _, _ = raw(d, "POST", "/api/deployments/chat/deploy", body, evil)
    assert status in (401, 403), status
    status, _, _ = raw(d, "POST", "/api/shutdown", b"{}", evil)
    assert status in (401, 403), status
    time.sleep(1)
    assert not marker.exists()
    assert d.proc.poll() is None  # still running
    token = token_of(lab.home)
    auth = {"Authorization": f"Bearer {token}"}
    # Even with the token: a foreign origin, a non-JSON body and a command are each refused.
    for headers, why in (
        ({**auth, "Origin": "http://evil.example", "Content-Type": "application/json"}, "origin"),
        ({**auth, "Referer": "http://evil.example/x", "Content-Type": "application/json"},
         "origin"),
        ({**auth, "Origin": "null", "Content-Type": "application/json"}, "origin"),
        ({**auth, "Content-Type": "text/plain"}, "application/json"),
        ({**auth, "Content-Type": "application/x-www-form-urlencoded"}, "application/json"),
        ({**auth, "Content-Type": "application/json"}, "lab.api_commands"),
    ):  # fmt: skip
        status, _, reply = raw(d, "POST", "/api/deployments/chat/deploy", body, headers)
        assert status in (403, 415), (headers, status, reply)
        assert why in json.loads(reply)["error"]["message"], (headers, reply)
    for change in ({"binary": "/bin/sh"}, {"command": ["/bin/sh"]},
                   {"env.LD_PRELOAD": "/tmp/x.so"}):  # fmt: skip
        status, _, reply = raw(d, "POST", "/api/deployments/chat/deploy",
                               json.dumps({"set": change}).encode(),
                               {**auth, "Content-Type": "application/json"})  # fmt: skip
        assert status == 403 and b"lab.api_commands" in reply, (change, reply)
    time.sleep(0.5)
    assert not marker.exists()
    # The same origin, JSON and the token: allowed.
    same = {**auth, "Origin": d.url, "Content-Type": "application/json"}
    status, _, reply = raw(d, "POST", "/api/deployments/chat/deploy",
                           json.dumps({"dry_run": True}).encode(), same)  # fmt: skip
    assert status == 200, reply


@pytest.mark.parametrize("path", ["/api/status", "/v1/models", "/metrics", "/", "/healthz"])
def test_a_foreign_host_header_is_refused(lab: Lab, path: str) -> None:
    d = lab.up()
    token = token_of(lab.home)
    auth = {"Authorization": f"Bearer {token}"}
    status, _, reply = raw(d, "GET", path, None, {**auth, "Host": "attacker.example:8080"})
    assert status == 403 and b"lab.allowed_hosts" in reply, (status, reply)
    for host in ("localhost", "127.0.0.1", f"127.0.0.1:{d.url.rsplit(':', 1)[1]}"):
        status, _, reply = raw(d, "GET", path, None, {**auth, "Host": host})
        assert status == 200, (host, status, reply)


def test_a_configured_host_name_is_allowed(lab: Lab, tmp_path: Path) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path, lab='allowed_hosts = ["gpu-box.lan"]')))
    assert raw(d, "GET", "/healthz", None, {"Host": "gpu-box.lan:8080"})[0] == 200
    assert raw(d, "GET", "/healthz", None, {"Host": "other.lan"})[0] == 403


def test_the_admin_token_is_generated_once_and_the_cli_uses_it(
    lab: Lab, labctl: Callable[..., Run]
) -> None:
    d = lab.up()
    path = lab.home / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(lab.home.stat().st_mode) == 0o700
    token = token_of(lab.home)
    assert len(token) >= 32
    assert raw(d, "GET", "/api/status")[0] == 401  # the default lab is guarded too
    assert raw(d, "GET", "/dashboard/state")[0] == 401
    assert raw(d, "GET", "/api/status", None, {"Authorization": f"Bearer {token}"})[0] == 200
    run = labctl("status", "--url", d.url, "--json", home=lab.home, check=True)
    assert isinstance(run.json(), dict)
    run = labctl("status", "--url", d.url, home=lab.home.parent / "elsewhere")
    assert run.code == 2 and "admin token" in run.err and "LABCTL_TOKEN" in run.err
    d.proc.terminate()
    d.proc.wait(30)
    lab.up()
    assert token_of(lab.home) == token  # kept across starts


def test_the_one_time_link_logs_the_page_in_with_a_strict_http_only_cookie(lab: Lab) -> None:
    d = lab.up()
    assert d.proc.stdout is not None
    link = next(line for line in d.printed if "/login?code=" in line)
    path = "/" + link.split(d.url + "/", 1)[1].split()[0]
    status, headers, _ = raw(d, "GET", path)
    assert status in (302, 303), status
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    value = re.search(r"labctl_session=([^;]+)", cookie)
    assert value
    session = {"Cookie": f"labctl_session={value.group(1)}"}
    assert raw(d, "GET", "/dashboard/state", None, session)[0] == 200
    assert raw(d, "GET", "/api/status", None, session)[0] == 200
    assert raw(d, "GET", path)[0] == 403  # the code works once
    # The cookie changes nothing from another origin (SameSite aside, the origin is checked).
    status, _, _ = raw(d, "POST", "/api/shutdown", b"{}",
                       {**session, "Origin": "http://evil.example",
                        "Content-Type": "application/json"})  # fmt: skip
    assert status == 403 and d.proc.poll() is None


def test_api_commands_lets_lab_toml_allow_command_changes(lab: Lab, tmp_path: Path) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path, lab="api_commands = true")))
    d.wait_state("chat", "ready")
    status, _, reply = raw(d, "POST", "/api/deployments/chat/deploy",
                           json.dumps({"set": {"binary": "/bin/true"}, "dry_run": True}).encode(),
                           {"Authorization": f"Bearer {token_of(lab.home)}",
                            "Content-Type": "application/json"})  # fmt: skip
    assert status == 200, reply


def _log_text(d: Daemon) -> str:
    return "".join(d.printed) + "".join(d.errors())


def test_secrets_never_reach_the_log_or_the_journal(lab: Lab, tmp_path: Path) -> None:
    secret = "hf_" + "Q" * 34
    d = lab.up("--config", str(lab_toml(tmp_path, extra=f'env = {{ HF_TOKEN = "{secret}" }}\n')))
    d.wait_state("chat", "ready")
    bearer = "sk-live-" + "Z" * 24
    for header in (f"Bearer {bearer}\rX-Injected: 1", f"Bearer {bearer}\nX: y", f"Bearer {bearer}"):
        host, port = d.url.removeprefix("http://").rsplit(":", 1)
        import socket

        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: {header}\r\n"
                      "Connection: close\r\n\r\n".encode())  # fmt: skip
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
    d.api("POST", "/api/deployments/chat/deploy", {"set": {"max_model_len": 2048}})
    hidden = {"api_key": "SEKRIT-plain-pass", "api-key2": ["sk-SECRETlistVALUE1234567"],
              "token": 12345678901234, "password": "hunter2hunter2"}  # fmt: skip
    try:  # the twin refuses flags it does not know: the deploy rolls back, its start is logged
        d.api("POST", "/api/deployments/chat/deploy",
              {"set": {f"args.{k}": v for k, v in hidden.items()}})  # fmt: skip
    except urllib.error.HTTPError as exc:
        exc.close()
    d.proc.terminate()
    d.proc.wait(30)
    text = _log_text(d)
    assert bearer not in text and secret not in text
    assert "\rX-Injected" not in text
    logs = "".join(p.read_text(errors="replace") for p in (lab.home / "logs").glob("*"))
    assert bearer not in logs and "--api-key [redacted]" in logs
    db = sqlite3.connect(lab.home / "journal.db")
    dump = "\n".join(db.iterdump())
    db.close()
    assert secret not in dump
    for value in ("SEKRIT-plain-pass", "sk-SECRETlistVALUE1234567", "12345678901234", "hunter2"):
        assert value not in logs and value not in dump and value not in text, value
    assert "HF_TOKEN" in dump  # the name and a fingerprint are kept
    for p in [lab.home / "journal.db", *lab.home.glob("journal.db-*"), *(lab.home / "logs").glob("*"),
              lab.home / "owners.json"]:  # fmt: skip
        if p.exists():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_a_restarted_lab_still_has_the_secret_env_it_was_given(lab: Lab, tmp_path: Path) -> None:
    """The journal keeps a fingerprint; the value comes back from lab.toml on the next start."""
    config = lab_toml(tmp_path, extra='env = { API_KEY = "abcdefghijklmnop1234" }\n')
    d = lab.up("--config", str(config))
    d.wait_state("chat", "ready")
    d.api("POST", "/api/deployments/chat/deploy", {"set": {"max_model_len": 2048}})
    pid = d.wait_state("chat", "ready")["pid"]
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"API_KEY=abcdefghijklmnop1234" in env
    d.proc.terminate()
    d.proc.wait(30)
    again = lab.up("--config", str(config))
    again.wait_state("chat", "ready")
    record = again.api("POST", "/api/deployments/chat/rollback", {})
    assert record["outcome"] == "committed"
    pid = again.wait_state("chat", "ready")["pid"]
    assert b"API_KEY=abcdefghijklmnop1234" in Path(f"/proc/{pid}/environ").read_bytes()


def test_the_state_directory_is_private(lab: Lab) -> None:
    d = lab.up()
    wait_for(lambda: (lab.home / "journal.db").exists())
    assert stat.S_IMODE(lab.home.stat().st_mode) == 0o700
    get_status: Any = d.api("GET", "/api/status")
    assert get_status["deployments"]
    assert get(d.url + "/healthz") == "ok\n"


def test_an_engine_port_answers_only_the_lab(lab: Lab) -> None:
    """Each engine takes a key of its own that only the gateway sends: a page or a local
    process that finds the engine's port gets 401, and so does a foreign Host there."""
    d = lab.up()
    dep = d.wait_state("chat", "ready", timeout=20)
    body = json.dumps({"model": dep["served_model"], "prompt": "hi", "max_tokens": 2}).encode()
    engine = Daemon(d.proc, dep["url"])
    for headers in ({"Content-Type": "application/json"},
                    {"Content-Type": "text/plain", "Origin": "http://evil.example"}):  # fmt: skip
        status, _, _ = raw(engine, "POST", "/v1/completions", body, headers)
        assert status == 401, status
    status, _, reply = raw(d, "POST", "/v1/completions", body, {"Content-Type": "application/json"})
    assert status == 200 and json.loads(reply)["choices"], reply
    assert raw(engine, "GET", "/metrics")[0] == 200  # as vLLM: metrics stay open
    # Prometheus scrapes an engine through the lab, which holds its key.
    (target,) = json.loads(get(d.url + "/sd/engines"))
    assert target["labels"]["__metrics_path__"] == "/engines/chat/metrics"
    assert "vllm:num_requests_running" in get(d.url + "/engines/chat/metrics")


def test_the_cli_sends_this_labs_token_to_this_lab_only(
    lab: Lab, labctl: Callable[..., Run]
) -> None:
    import http.server
    import threading

    d = lab.up()
    seen: list[str | None] = []

    class Capture(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run = labctl("status", "--url", f"http://127.0.0.1:{server.server_port}", home=lab.home)
    finally:
        server.shutdown()
        server.server_close()
    assert run.code != 0 and seen == [None], seen
    assert labctl("status", "--url", d.url, home=lab.home).code == 0


def test_a_state_directory_that_is_not_yours_is_refused(
    labctl: Callable[..., Run], tmp_path: Path
) -> None:
    import os

    if os.getuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    home = tmp_path / "shared"
    home.mkdir()
    os.chown(home, 65534, 65534)  # nobody's
    run = labctl("up", "--listen", "127.0.0.1:0", home=home)
    assert run.code == 3 and "belongs to uid 65534" in run.err and run.err.count("\n") == 1
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "admin-token").write_text("attacker-chosen-token-0001\n")
    (mine / "admin-token").chmod(0o644)
    run = labctl("up", "--listen", "127.0.0.1:0", home=mine)
    assert run.code == 3 and "may be read by others" in run.err, run.err


def test_a_second_lab_on_the_same_home_changes_nothing(
    lab: Lab, labctl: Callable[..., Run], tmp_path: Path
) -> None:
    d = lab.up("--config", str(lab_toml(tmp_path)))
    d.wait_state("chat", "ready")
    devices = (lab.home / "sim-gpus" / "devices.json").read_text()
    other = tmp_path / "other.toml"
    other.write_text('[lab]\ngpu_backend = "sim"\nsim_gpus = "2xh100-sxm"\n')
    run = labctl("up", "--config", str(other), "--listen", "127.0.0.1:0", home=lab.home)
    assert run.code == 3 and "another `labctl up`" in run.err, run.err
    assert (lab.home / "sim-gpus" / "devices.json").read_text() == devices


def test_odd_authorization_bytes_and_framing(lab: Lab) -> None:
    import socket

    d = lab.up()
    host, port = d.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET /api/status HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()
                  + b"Authorization: Bearer \xe9\xff\xfe\r\nConnection: close\r\n\r\n")  # fmt: skip
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 401") and b'"error"' in data, data[:300]
    status, headers, _ = raw(d, "GET", "/")
    assert status == 200 and headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
