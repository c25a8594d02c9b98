"""Telemetry: one sampler thread reads GPUs and host; collectors serve its last snapshot."""
