"""Write tiny real model files for tests: a Hugging Face directory and GGUF files.

The files are genuine (safetensors written by the ``safetensors`` package, GGUF
by the ``gguf`` package), so readers are checked against independent writers.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def llama_tensors(cfg: dict[str, object], dtype: type = np.float16) -> dict[str, np.ndarray]:
    """Every tensor of a tiny Llama checkpoint, with HF names and (out, in) shapes."""
    h, inter, layers = (
        int(cfg["hidden_size"]),
        int(cfg["intermediate_size"]),
        int(cfg["num_hidden_layers"]),
    )
    heads, kv, vocab = (
        int(cfg["num_attention_heads"]),
        int(cfg["num_key_value_heads"]),
        int(cfg["vocab_size"]),
    )
    hd = h // heads
    rng = np.random.default_rng(0)

    def t(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(dtype)

    out = {
        "model.embed_tokens.weight": t(vocab, h),
        "model.norm.weight": t(h),
        "lm_head.weight": t(vocab, h),
    }
    for i in range(layers):
        p = f"model.layers.{i}"
        out |= {
            f"{p}.input_layernorm.weight": t(h),
            f"{p}.post_attention_layernorm.weight": t(h),
            f"{p}.self_attn.q_proj.weight": t(heads * hd, h),
            f"{p}.self_attn.k_proj.weight": t(kv * hd, h),
            f"{p}.self_attn.v_proj.weight": t(kv * hd, h),
            f"{p}.self_attn.o_proj.weight": t(h, heads * hd),
            f"{p}.mlp.gate_proj.weight": t(inter, h),
            f"{p}.mlp.up_proj.weight": t(inter, h),
            f"{p}.mlp.down_proj.weight": t(h, inter),
        }
    return out


def write_hf_dir(path: Path, cfg: dict[str, object] | None = None, shards: int = 1) -> int:
    """Write a tiny HF model directory; return the sum of its tensor bytes."""
    cfg = dict(cfg or TINY_LLAMA)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    tensors = llama_tensors(cfg, np.float16)
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"))
    else:
        weight_map = {}
        for s in range(shards):
            part = {n: tensors[n] for n in names[s::shards]}
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            save_file(part, str(path / fname))
            weight_map |= dict.fromkeys(part, fname)
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map})
        )
    return sum(int(a.nbytes) for a in tensors.values())


#: ggml types the tiny GGUF uses for its 2-D tensors, one per tensor in turn.
GGUF_TYPES = (
    gguf.GGMLQuantizationType.F16,
    gguf.GGMLQuantizationType.Q8_0,
    gguf.GGMLQuantizationType.Q4_0,
    gguf.GGMLQuantizationType.Q4_K,
    gguf.GGMLQuantizationType.Q6_K,
    gguf.GGMLQuantizationType.Q5_K,
    gguf.GGMLQuantizationType.IQ4_XS,
    gguf.GGMLQuantizationType.BF16,
    gguf.GGMLQuantizationType.Q2_K,
    gguf.GGMLQuantizationType.MXFP4,
)


def write_gguf(
    path: Path, hidden: int = 256, layers: int = 2, vocab: int = 512, context: int = 4096
) -> int:
    """Write a tiny llama GGUF whose 2-D tensors cycle through many ggml types.

    Returns the sum of the tensor data bytes. Quantized tensors hold random
    bytes of the right size: the reader sizes tensors, it does not decode them.
    """
    heads, kv, ff = 4, 2, 2 * hidden
    hd = hidden // heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(context)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hd)
    w.add_file_type(15)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(vocab)])
    rng = np.random.default_rng(1)
    shapes = {
        "token_embd.weight": (vocab, hidden),
        "output.weight": (vocab, hidden),
        "output_norm.weight": (hidden,),
    }
    for i in range(layers):
        p = f"blk.{i}"
        shapes |= {
            f"{p}.attn_norm.weight": (hidden,),
            f"{p}.ffn_norm.weight": (hidden,),
            f"{p}.attn_q.weight": (heads * hd, hidden),
            f"{p}.attn_k.weight": (kv * hd, hidden),
            f"{p}.attn_v.weight": (kv * hd, hidden),
            f"{p}.attn_output.weight": (hidden, heads * hd),
            f"{p}.ffn_gate.weight": (ff, hidden),
            f"{p}.ffn_up.weight": (ff, hidden),
            f"{p}.ffn_down.weight": (hidden, ff),
        }
    total = 0
    k = 0
    for name, shape in shapes.items():
        if len(shape) == 1:
            arr = rng.standard_normal(shape).astype(np.float32)
            w.add_tensor(name, arr)
            total += arr.nbytes
            continue
        qtype = GGUF_TYPES[k % len(GGUF_TYPES)]
        k += 1
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        rows, cols = shape
        row_bytes = cols // block * type_size
        raw = rng.integers(0, 256, size=(rows, row_bytes), dtype=np.uint8)
        if qtype in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16):
            raw = raw.view(np.uint8)
        w.add_tensor(name, raw, raw_dtype=qtype)
        total += raw.nbytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return total
