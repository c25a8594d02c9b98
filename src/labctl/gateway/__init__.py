"""The gateway: one OpenAI-compatible endpoint, admission per deployment, zero-loss swaps."""
