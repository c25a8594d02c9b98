"""Engine processes: spawn, log, signal and reap whole trees (the only user of subprocesses)."""
