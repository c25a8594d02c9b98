"""On a machine with an NVIDIA GPU: a swap between two real CUDA engines, release verified by NVML.

Each engine is a small OpenAI-compatible server (stdlib HTTP) that holds a share
of GPU 0 with PyTorch and forks a worker holding more, as vLLM's engine core
does. The lab swaps them through `labctl deploy`; the journal's release step
must show NVML seeing every process of the old tree gone before the new one
started.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys
import time

import pytest

from labctl.gpu.nvml import read_devices
from tests.gpu.conftest import running_lab

pytestmark = pytest.mark.gpu

SERVER = """
import http.server, json, os, sys, time
import torch
port, gib, name = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
r, w = os.pipe()
# the worker is forked before the parent touches CUDA (a child forked after cannot use it)
if os.fork() == 0:  # a worker holding the other half, in the same session
    extra = torch.empty(int(gib / 2 * 2**30), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    os.write(w, b"ok")
    time.sleep(3600)
    os._exit(0)
if os.read(r, 2) != b"ok":
    sys.exit("the worker did not take its GPU memory")
held = torch.empty(int(gib / 2 * 2**30), dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("Application startup complete.", flush=True)

class H(http.server.BaseHTTPRequestHandler):
    def _send(self, code, doc):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(200, {"object": "text_completion", "model": name,
                         "choices": [{"index": 0, "text": "x", "finish_reason": "length"}]})
    def log_message(self, *a):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_a_swap_of_two_cuda_engines_waits_for_nvml_to_show_the_memory_free(tmp_path: Path) -> None:
    lab_dir = tmp_path
    pytest.importorskip("torch")
    total = read_devices()[0].memory_total_bytes or 0
    share = max(1.0, round(total / 2**30 * 0.3, 1))  # each revision holds 30% of the card
    script = lab_dir / "cuda_server.py"
    script.write_text(SERVER)
    config = lab_dir / "lab.toml"
    config.write_text(
        '[lab]\ngpu_backend = "nvml"\n\n[deployments.cuda]\nengine = "command"\n'
        f'command = ["{sys.executable}", "{script}", "{{port}}", "{share}", "cuda"]\n'
        'served_model_name = "cuda"\nstop_grace = 10\n'
    )
    with running_lab(config, lab_dir / "home", 18080 + os.getpid() % 1000) as (url, env):
        before = read_devices()[0].memory_used_bytes or 0
        t0 = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "labctl", "deploy", "cuda", "--set", "stop_grace=5", "--url",
             url, "--json"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        swap_s = time.monotonic() - t0
        record = json.loads(out.stdout)
        steps = {s["name"]: s for s in record["steps"]}
        assert record["outcome"] == "committed"
        assert len(steps["stop"]["detail"]["processes"]) == 2  # the engine and its worker
        release = steps["verify_release"]
        assert release["freed_bytes"] >= share * 0.9 * 2**30
        after = read_devices()[0].memory_used_bytes or 0
        assert abs(after - before) < 0.2 * share * 2**30  # one revision's worth, not two
        print(f"\nswap {swap_s:.2f} s; NVML showed {release['freed_bytes'] / 2**30:.2f} GiB free "
              f"{release['detail']['release_seconds'] * 1000:.0f} ms after the old engine exited")  # fmt: skip
