"""The memory planner: pure functions from a model architecture and a request to bytes.

``weights`` sizes weights per GPU; ``kv`` lays out the paged KV cache;
``vllm`` holds vLLM's accounting rules by version; ``plan`` puts them
together with suggestions; ``llamacpp`` is llama.cpp's accounting;
``records`` compares plans with logged vLLM startups.
"""
