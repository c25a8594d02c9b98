"""On a machine with an NVIDIA GPU: the CUDA process the lab starts for GPU 0 is the one NVML
shows on GPU 0.

The lab runs a small CUDA server (``torch.zeros(1, device="cuda")``, then stdlib HTTP) as a
``command`` deployment that names GPU 0 by its UUID, so it goes through the lab's own start
path: the UUID resolved to NVML's index, the adapter's environment (``CUDA_DEVICE_ORDER=
PCI_BUS_ID``, ``CUDA_VISIBLE_DEVICES``), the identity check after ready. NVML must then list
the engine's pid on the device with that UUID and on no other, and the journal must say the
revision ran on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from labctl.gpu.nvml import read_devices

pytestmark = pytest.mark.gpu

SERVER = """
import http.server, json, os, sys
import torch
x = torch.zeros(1, device="cuda")
torch.cuda.synchronize()
with open(sys.argv[2], "w") as f:
    json.dump({k: v for k, v in os.environ.items() if "DEVICE" in k}, f)

class H(http.server.BaseHTTPRequestHandler):
    def _send(self, doc):
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "cuda", "object": "model"}]}
                   if self.path == "/v1/models" else {"status": "ok"})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send({"choices": [{"index": 0, "text": "x", "finish_reason": "length"}]})
    def log_message(self, *a):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_the_cuda_process_started_for_gpu_0_is_the_one_nvml_shows_on_gpu_0(
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch")
    gpu0 = read_devices()[0]
    script, seen = tmp_path / "cuda_server.py", tmp_path / "env.json"
    script.write_text(SERVER)
    config = tmp_path / "lab.toml"
    config.write_text(
        '[lab]\ngpu_backend = "nvml"\n\n[deployments.cuda]\nengine = "command"\n'
        f'command = ["{sys.executable}", "{script}", "{{port}}", "{seen}"]\n'
        f'gpus = ["{gpu0.uuid[:12]}"]\nserved_model_name = "cuda"\nstop_grace = 10\n'
    )
    port = 19080 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, LABCTL_HOME=str(tmp_path / "home"))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "labctl", "up", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the CUDA engine did not become ready")
        engine_env = json.loads(seen.read_text())
        assert engine_env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert engine_env["CUDA_VISIBLE_DEVICES"] == "0"  # GPU 0's UUID, resolved by the lab
        out = subprocess.run(
            [sys.executable, "-m", "labctl", "history", "cuda", "--url", url, "--json"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        record = json.loads(out.stdout)["deploys"][0]
        assert record["outcome"] == "committed" and record["gpu_uuids"] == [gpu0.uuid]
        token = (tmp_path / "home" / "admin-token").read_text().strip()
        req = urllib.request.Request(url + "/api/status",
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            pid = next(d["pid"] for d in json.loads(r.read())["deployments"] if d["name"] == "cuda")
        on = {d.uuid: [p.pid for p in d.processes] for d in read_devices()}
        assert pid in on[gpu0.uuid], on  # NVML shows the lab's engine on GPU 0, by UUID
        assert not [u for u, pids in on.items() if pid in pids and u != gpu0.uuid], on
    finally:
        daemon.send_signal(signal.SIGINT)
        daemon.wait(60)
