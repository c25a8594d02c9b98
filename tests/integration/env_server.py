"""A tiny OpenAI-shaped server that records the environment the lab started it with.

It writes ``os.environ`` as JSON to ``--out`` before it listens, answers ``/health``,
``/v1/models`` and a one-word completion (the lab's smoke test). With ``--hold-gpu N`` it
first takes memory on simulated GPU ``N`` in the ledger under ``$LABCTL_HOME``, whatever
``CUDA_VISIBLE_DEVICES`` says: an engine that picks its own device. With ``--cuda`` (the GPU
tier) it takes a CUDA context and a tensor on the device CUDA gives it, as an engine would;
with ``--burn`` as well, it keeps that device busy with bf16 matmuls while it serves.

    python env_server.py --host H --port P --out FILE [--hold-gpu N] [--cuda [--burn]]
"""

from __future__ import annotations

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import os
from pathlib import Path
import threading


class Handler(BaseHTTPRequestHandler):
    def _send(self, doc: object) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send({"data": [{"id": "env", "object": "model"}]} if self.path == "/v1/models"
                   else {"status": "ok"})  # fmt: skip

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send({"choices": [{"index": 0, "text": "ok", "finish_reason": "length"}]})

    def log_message(self, format: str, *args: object) -> None:
        pass


def _burn() -> None:
    """bf16 matmuls on the CUDA device, back to back, until the process ends."""
    import torch

    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn_like(a)
    while True:
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--hold-gpu", type=int)
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--burn", action="store_true")
    args = parser.parse_args()
    if args.cuda:
        import torch

        torch.zeros(1, device="cuda")  # its CUDA context and cached block stay while it serves
        torch.cuda.synchronize()
        if args.burn:
            threading.Thread(target=_burn, daemon=True).start()
    if args.hold_gpu is not None:
        from labctl.gpu.sim import SimMachine

        SimMachine(Path(os.environ["LABCTL_HOME"])).allocate(args.hold_gpu, 2**30, os.getpid())
    Path(args.out).write_text(json.dumps(dict(os.environ)))
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
