"""The GPU tier: real NVIDIA GPUs through NVML. Skipped, with the reason, where NVML cannot open."""

from __future__ import annotations

import pytest

from labctl.errors import GpuUnavailable


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        from labctl.gpu.nvml import read_devices

        devices = read_devices()
        reason = "" if devices else "NVML opened but reports no GPU"
    except GpuUnavailable as exc:
        reason = str(exc)
    for item in items:
        if "gpu" in item.keywords and reason:
            item.add_marker(pytest.mark.skip(reason=f"no GPU: {reason}"))
