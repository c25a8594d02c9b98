"""Processes the integration tests start against one LABCTL_HOME, and the probes they use.

Everything started through a :class:`Lab` is stopped when the test ends: a process
started in its own session loses its whole group to SIGKILL (engines and the
workers they leave), any other gets SIGTERM, then SIGKILL after 10 s.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import http.client
import json
import os
from pathlib import Path
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any
import urllib.error
import urllib.parse
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError as exc:
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()  # it holds the response's socket
            last_exc = exc
        time.sleep(0.1)
    pytest.fail(
        f"timed out waiting for {what}" + (f" (last error: {last_exc})" if last_exc else "")
    )


class Twin:
    """A running `labctl sim serve`."""

    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url


class Daemon:
    """A running `labctl up`."""

    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url
        #: The lab's admin token, where it has one.
        self.token: str | None = None
        #: What it printed on stdout (up to the end of its banner, and the rest once it exited).
        self.printed: list[str] = []

    def errors(self) -> str:
        """Its stderr, once it has exited."""
        assert self.proc.poll() is not None and self.proc.stderr is not None
        return str(self.proc.stderr.read())

    def output(self) -> str:
        """Its stdout, once it has exited."""
        assert self.proc.poll() is not None and self.proc.stdout is not None
        self.printed.append(self.proc.stdout.read())
        return "".join(self.printed)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            exc.close()  # raised on, but its socket closed now rather than at some gc
            raise

    def login_url(self) -> str:
        """A fresh one-time link that logs a browser in to the dashboard."""
        return str(self.api("POST", "/api/login-link", {})["url"])

    def deployment(self, name: str) -> dict[str, Any]:
        doc = self.api("GET", "/api/status")
        return next(d for d in doc["deployments"] if d["name"] == name)

    def wait_state(self, name: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            try:
                d = self.deployment(name)
            except StopIteration:
                return None
            # a first start is "ready" through its smoke test, before it is switched in and
            # has a revision: ready here means serving
            serving = state != "ready" or d["revision"] is not None
            return d if d["state"] == state and serving else None

        return dict(wait_for(check, timeout, f"{name} to be {state}"))


#: A twin that starts in well under a second.
FAST_TWIN = "{ max_model_len = 4096, time_scale = 0.05, load_gbps = 0 }"


def lab_toml(tmp_path: Path, chat_args: str = FAST_TWIN, extra: str = "", lab: str = "") -> Path:
    """A lab.toml of one simulated RTX 3090 and one twin deployment, ``chat``."""
    path = tmp_path / "lab.toml"
    path.write_text(
        f'[lab]\ngpu_backend = "sim"\nsim_gpus = "1xrtx-3090"\n{lab}\n'
        '[deployments.chat]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\nstop_grace = 5\n'
        f"args = {chat_args}\n{extra}"
    )
    return path


def alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in "ZX"


def raw(
    d: Daemon, method: str, path: str, body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One request with exactly these headers (urllib adds its own; http.client does not)."""
    host, port = d.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        sent = {"Host": f"{host}:{port}", **(headers or {})}
        for k, v in sent.items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def engine_pids(home: Path) -> list[int]:
    """Processes started against ``home`` (LABCTL_HOME in their environment), but this one."""
    me, out = os.getpid(), []
    needle = f"LABCTL_HOME={home}".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            env = Path(f"/proc/{name}/environ").read_bytes()
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        if needle in env.split(b"\0") and stat.rpartition(")")[2].split()[0] not in "ZX":
            out.append(int(name))
    return out


class Lab:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = dict(os.environ, LABCTL_HOME=str(home))
        self.procs: list[tuple[subprocess.Popen[str], bool]] = []
        #: Pids left behind on purpose (orphaned workers) to kill at the end.
        self.stray: list[int] = []

    def start(
        self, *args: str, session: bool = False, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Run ``labctl ARGS`` with piped output (``session``: in its own process group)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "labctl", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env | (env or {}),
            start_new_session=session,
        )
        self.procs.append((proc, session))
        return proc

    def hold(self, gpu: int, memory: str, *flags: str) -> tuple[subprocess.Popen[str], int]:
        """Start `labctl sim hold`; returns the process and the pid holding the memory."""
        proc = self.start("sim", "hold", "--gpu", str(gpu), "--memory", memory, *flags)
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != "READY":
            proc.wait(10)
            pytest.fail(f"sim hold did not start: {proc.stderr.read() if proc.stderr else ''}")
        holder = int(line[2])
        if holder != proc.pid:
            self.stray.append(holder)
        return proc, holder

    def twin(self, *args: str, wait: bool = True) -> Twin:
        """Start `labctl sim serve --port 0 ARGS`; with ``wait``, until it prints its URL."""
        proc = self.start("sim", "serve", "--port", "0", *args, session=True)
        if not wait:
            return Twin(proc, "")
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            proc.wait(30)
            pytest.fail(f"the twin did not start: {proc.stderr.read() if proc.stderr else ''}")
        return Twin(proc, url)

    def up(self, *args: str, wait: bool = True, env: dict[str, str] | None = None) -> Daemon:
        """Start `labctl up --listen 127.0.0.1:PORT ARGS`; with ``wait``, until it listens."""
        port = free_port()
        proc = self.start("up", "--listen", f"127.0.0.1:{port}", *args, env=env)
        daemon = Daemon(proc, f"http://127.0.0.1:{port}")
        if wait:
            assert proc.stdout is not None
            seen = daemon.printed
            while line := proc.stdout.readline():  # reconcile lines may come first
                seen.append(line)
                if "Ctrl-C" in line:  # the banner's last line
                    break
            else:
                proc.wait(30)
                err = proc.stderr.read() if proc.stderr else ""
                pytest.fail(f"labctl up did not start: {''.join(seen)}{err}")
            token = self.home / "admin-token"
            if token.exists():
                daemon.token = token.read_text().strip()
        return daemon

    def prometheus(self, target_url: str, workdir: Path) -> Callable[[str], list[dict[str, Any]]]:
        """Start a real Prometheus scraping ``target_url`` every second; returns a query function."""
        config = workdir / "prometheus.yml"
        target = urllib.parse.urlparse(target_url).netloc
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            f"scrape_configs:\n  - job_name: lab\n    static_configs:\n      - targets: ['{target}']\n"
        )
        return self.prometheus_with(config, workdir)[0]

    def prometheus_with(
        self, config: Path, workdir: Path
    ) -> tuple[Callable[[str], list[dict[str, Any]]], str]:
        """Start a real Prometheus on ``config``; returns a query function and its API base URL."""
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: `make test` installs the Debian package prometheus"
        port = free_port()
        server = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.procs.append((server, False))
        base = f"http://127.0.0.1:{port}/api/v1/"

        def query(expr: str) -> list[dict[str, Any]]:
            if server.poll() is not None:
                pytest.fail(f"prometheus exited: {server.stderr.read() if server.stderr else ''}")
            doc = json.loads(get(base + "query?query=" + urllib.parse.quote(expr)))
            assert doc["status"] == "success", doc
            return list(doc["data"]["result"])

        return query, base

    def stop(self) -> None:
        for proc, session in self.procs:
            if session:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            elif proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        for pid in self.stray + engine_pids(self.home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
