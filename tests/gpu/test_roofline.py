"""On a machine with an NVIDIA GPU: the bottleneck answer's roofline stands on what the card does.

The lab's ``roofline_fraction`` divides live tokens/s by the twin's limits, which rest on the
catalog's datasheet bandwidth and bf16 rate times the twin's achievable shares
(``sim/perf.BW_EFFICIENCY``, ``MFU``). Measured here with PyTorch on the card itself: the
datasheet is an upper bound the card comes near, and the twin's achievable figures sit below
what a plain copy and a plain matmul reach (else a healthy engine would show more than 100%
of its roofline). The clock event reasons the classifier reads come back decoded, and a busy
card is not reported idle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from labctl.catalog.gpus import match_nvml_name
from labctl.gpu.nvml import read_devices
from labctl.gpu.sample import CLOCK_EVENT_REASONS
from labctl.sim.bottleneck import THROTTLES
from labctl.sim.perf import BW_EFFICIENCY, MFU

pytestmark = pytest.mark.gpu

#: Device-to-device copy bandwidth (bytes read + written per second) and dense bf16 matmul
#: FLOP/s on GPU 0, as JSON; while the matmul loop runs, samples NVML's clock event reasons.
PROBE = """
import json, sys, threading, time
import torch
from labctl.gpu.nvml import read_devices
free, _ = torch.cuda.mem_get_info()
x = torch.empty(min(4 * 2**30, free // 4), dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); t = time.perf_counter(); n = 20
for _ in range(n): y.copy_(x)
torch.cuda.synchronize(); copy = 2 * x.numel() * n / (time.perf_counter() - t)
del x, y
a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda"); b = torch.randn_like(a)
for _ in range(5): a @ b
torch.cuda.synchronize()
busy = []
def sample():
    time.sleep(0.5)
    busy.append(read_devices()[0].clock_event_reasons)
s = threading.Thread(target=sample); s.start()
t = time.perf_counter(); n = 0
while time.perf_counter() - t < 2.0:
    for _ in range(20): a @ b
    n += 20
    torch.cuda.synchronize()
mm = 2 * 8192**3 * n / (time.perf_counter() - t)
s.join()
del a, b; torch.cuda.empty_cache(); time.sleep(1.0)
idle = read_devices()[0].clock_event_reasons
print(json.dumps({"copy": copy, "matmul": mm, "busy": busy[0], "idle": idle}))
"""


def test_the_roofline_rests_on_what_the_card_does() -> None:
    pytest.importorskip("torch")
    d = read_devices()[0]
    spec = match_nvml_name(d.name, d.memory_total_bytes)
    if spec is None:
        pytest.skip(f"{d.name} is not in the catalog")
    env = dict(os.environ, CUDA_DEVICE_ORDER="PCI_BUS_ID")  # CUDA's device 0 is NVML's
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["busy"] is not None and m["idle"] is not None, "NVML gave no clock event reasons"
    sheet_bw, sheet_flops = spec.bandwidth_gbs * 1e9, spec.bf16_tflops * 1e12
    eff = next((v for k, v in BW_EFFICIENCY.items() if k in spec.memory_type.upper()), 0.85)
    names = lambda bits: [n for b, n in CLOCK_EVENT_REASONS if bits and bits & b]  # noqa: E731
    print(f"\n{d.name} ({spec.id}): copy {m['copy'] / 1e12:.2f} TB/s = {m['copy'] / sheet_bw:.0%} of the "
          f"datasheet's {sheet_bw / 1e12:.2f} (twin achieves {eff:.0%}); bf16 matmul "
          f"{m['matmul'] / 1e12:.0f} TFLOP/s = {m['matmul'] / sheet_flops:.0%} of {spec.bf16_tflops:.0f} "
          f"(twin MFU {MFU:.0%}); clock events busy {names(m['busy'])} ({m['busy']:#x}), "
          f"idle {names(m['idle'])} ({m['idle']:#x})")  # fmt: skip
    assert 0.6 * sheet_bw <= m["copy"] <= 1.05 * sheet_bw, (
        "the catalog's bandwidth is not this card's"
    )
    assert 0.45 * sheet_flops <= m["matmul"] <= 1.1 * sheet_flops, (
        "the catalog's bf16 rate is not this card's"
    )
    assert eff * sheet_bw <= m["copy"], "the twin's decode roofline is above what a copy reaches"
    assert MFU * sheet_flops <= m["matmul"], (
        "the twin's prefill roofline is above what a matmul reaches"
    )
    assert not m["busy"] & 0x1, "a card running matmuls was reported idle"
    hot = set(names(m["busy"])) & THROTTLES
    if hot:  # not a failure of the lab: the card really is held back; say so
        print(f"the card was throttled under load: {sorted(hot)}")
