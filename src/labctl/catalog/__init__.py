"""What labctl knows before it touches a GPU: GPU specs and model architectures.

``gpus`` is the GPU catalog; ``arch`` the engine-neutral model architecture;
``hf``, ``safetensors``, ``gguf`` and ``ggml`` (whisper.cpp) read model files
from disk; ``models`` is the built-in model catalog and resolves whatever a user
types as MODEL.
"""
