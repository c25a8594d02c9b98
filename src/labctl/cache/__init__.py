"""The local model cache: what is on disk, where, and how fast the disk reads it.

The Hugging Face hub cache (the layout vLLM, ``hf`` and llama.cpp's ``-hf`` share) is read
and written through ``huggingface_hub``'s own API; loose GGUF files and directories come from
``lab.toml``'s ``[models] paths``, and Ollama's store is read, never written. Whether a model
fits a GPU is composed above this layer, from these entries and the planner.
"""
