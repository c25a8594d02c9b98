"""The memory planner: pure functions from a model architecture and a request to bytes.

``weights`` sizes weights per GPU; ``kv`` lays out the paged KV cache;
``vllm`` holds vLLM's accounting rules by version; ``plan`` puts them
together with suggestions; ``encdec`` is vLLM's encoder-decoder (Whisper)
accounting; ``llamacpp`` is llama.cpp's accounting; ``whispercpp`` is
whisper.cpp's, on ``ggmlgraph``'s replay of ggml's graph allocator; ``openvla``
is OpenVLA's own server (Hugging Face transformers, bf16 or bitsandbytes weights, one
request at a time); ``records`` compares plans with logged vLLM startups.
"""
