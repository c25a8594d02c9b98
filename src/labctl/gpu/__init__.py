"""GPU backends. ``nvml`` is the only module that imports ``pynvml``."""
