"""Read a checkpoint's ``quantization_config`` into a :class:`QuantInfo`.

Covers the layouts vLLM loads: native FP8 (per-tensor or block scales),
compressed-tensors (FP8, INT8, W4A16, NVFP4), GPTQ, AWQ, AutoRound,
bitsandbytes, MXFP4 (gpt-oss) and ModelOpt (FP8, NVFP4).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labctl.catalog.arch import QuantInfo, Role
from labctl.errors import ModelFormatError


def _skip_list(qc: Mapping[str, Any], *keys: str) -> tuple[str, ...]:
    out: list[str] = []
    for key in keys:
        value = qc.get(key)
        if isinstance(value, list):
            out.extend(str(v) for v in value)
    return tuple(out)


def _compressed_tensors(qc: Mapping[str, Any], where: str) -> QuantInfo:
    groups = qc.get("config_groups") or {}
    if not isinstance(groups, Mapping) or not groups:
        raise ModelFormatError(
            f"{where}: quantization_config.config_groups is missing; a compressed-tensors "
            "checkpoint lists its weight schemes there"
        )
    scheme = next(iter(groups.values()))
    weights = scheme.get("weights") if isinstance(scheme, Mapping) else None
    if not isinstance(weights, Mapping):
        raise ModelFormatError(
            f"{where}: quantization_config.config_groups has no 'weights' scheme"
        )
    bits = weights.get("num_bits")
    wtype = weights.get("type", "int")
    strategy = weights.get("strategy", "tensor")
    group = weights.get("group_size")
    skip = _skip_list(qc, "ignore")
    fmt = str(qc.get("format", ""))
    if bits == 4 and (wtype == "float" or "nvfp4" in fmt):
        return QuantInfo("nvfp4", group_size=16, skip=skip)
    if bits == 8 and wtype == "float":
        if strategy == "block":
            block = weights.get("block_structure") or [128, 128]
            return QuantInfo("fp8-block", skip=skip, block=(int(block[0]), int(block[1])))
        if strategy == "channel":
            return QuantInfo("fp8-channel", skip=skip)
        return QuantInfo("fp8", skip=skip)
    if bits == 8:
        return QuantInfo("int8", skip=skip)
    if bits == 4:
        symmetric = bool(weights.get("symmetric", True))
        return QuantInfo(
            "gptq" if symmetric else "awq",
            group_size=int(group) if group else 128,
            symmetric=symmetric,
            skip=skip,
        )
    raise ModelFormatError(
        f"{where}: compressed-tensors scheme with num_bits={bits!r} type={wtype!r} is not supported; "
        "supported: 8-bit float/int, 4-bit int (W4A16) and 4-bit float (NVFP4)"
    )


def parse_quantization_config(qc: Any, where: str = "config.json") -> QuantInfo | None:
    """Parse a ``quantization_config`` object; ``None`` when there is none.

    Raises:
        ModelFormatError: the object is malformed or names an unknown method.
    """
    if qc is None:
        return None
    if not isinstance(qc, Mapping):
        raise ModelFormatError(f"{where}: quantization_config must be an object, got {qc!r}")
    method = str(qc.get("quant_method") or qc.get("quant_algo") or "").lower()
    if not method and isinstance(qc.get("quantization"), Mapping):
        return parse_quantization_config({"quant_method": "modelopt", **qc["quantization"]}, where)
    if method == "fp8":
        block = qc.get("weight_block_size")
        skip = _skip_list(qc, "ignored_layers", "modules_to_not_convert")
        if block:
            return QuantInfo("fp8-block", skip=skip, block=(int(block[0]), int(block[1])))
        return QuantInfo("fp8", skip=skip)
    if method == "fbgemm_fp8":
        return QuantInfo("fp8-channel", skip=_skip_list(qc, "modules_to_not_convert"))
    if method == "compressed-tensors":
        return _compressed_tensors(qc, where)
    if method in ("gptq", "awq", "auto-round", "intel/auto-round", "autoround", "auto_round"):
        bits = int(qc.get("bits", 4))
        group = int(qc.get("group_size", 128) or 128)
        if bits not in (4, 8):
            raise ModelFormatError(
                f"{where}: {method} with {bits} bits is not supported; use 4 or 8"
            )
        if bits == 8:
            return QuantInfo("int8", skip=_skip_list(qc, "modules_to_not_convert"))
        name = {"gptq": "gptq", "awq": "awq"}.get(method, "autoround")
        sym = bool(qc.get("sym", qc.get("zero_point") is not True))
        if method == "awq":
            sym = not bool(qc.get("zero_point", True))
        skip = _skip_list(qc, "modules_to_not_convert", "extra_config_skip")
        return QuantInfo(name, group_size=group if group > 0 else None, symmetric=sym, skip=skip)
    if method == "bitsandbytes":
        if qc.get("load_in_8bit"):
            return QuantInfo("bnb-int8", skip=_skip_list(qc, "llm_int8_skip_modules"))
        return QuantInfo("bnb-nf4", skip=_skip_list(qc, "llm_int8_skip_modules"))
    if method == "mxfp4":
        skip = _skip_list(qc, "modules_to_not_convert")
        # gpt-oss converts only the routed experts; the rest stays bf16.
        return QuantInfo("mxfp4", skip=skip, scope=frozenset({Role.EXPERT}))
    if method in ("modelopt", "modelopt_fp4", "nvfp4"):
        algo = str(qc.get("quant_algo", "NVFP4" if method != "modelopt" else "FP8")).upper()
        skip = _skip_list(qc, "exclude_modules", "ignore")
        layers = qc.get("quantized_layers")
        if algo == "MIXED_PRECISION" and isinstance(layers, Mapping) and layers:
            overrides = tuple(
                (str(name), "nvfp4" if "FP4" in str(spec.get("quant_algo", "")).upper() else "fp8")
                for name, spec in layers.items()
                if isinstance(spec, Mapping)
            )
            main = max({m for _, m in overrides}, key=lambda m: sum(o == m for _, o in overrides))
            # Only the listed layers are quantized; everything else stays 16-bit.
            return QuantInfo(
                main, group_size=16, skip=skip, overrides=overrides, scope=frozenset({Role.MTP})
            )
        if "FP4" in algo:
            return QuantInfo("nvfp4", group_size=int(qc.get("group_size", 16) or 16), skip=skip)
        return QuantInfo("fp8", skip=skip)
    if method == "gguf":
        return None
    raise ModelFormatError(
        f"{where}: quantization_config.quant_method {method or '(empty)'!r} is not supported; "
        "supported: fp8, compressed-tensors, gptq, awq, auto-round, bitsandbytes, mxfp4, modelopt"
    )
