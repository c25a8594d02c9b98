"""labctl: operate LLM, speech and vision-language-action inference on GPUs you own."""

__version__ = "0.1.0"
