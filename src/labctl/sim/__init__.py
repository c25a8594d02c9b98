"""The twin: a simulated vLLM-compatible engine (perf model, scheduler, server, offline runner)."""
