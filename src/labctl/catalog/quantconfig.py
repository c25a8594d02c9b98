"""Read a checkpoint's ``quantization_config`` into a :class:`QuantInfo`.

Covers the layouts vLLM loads: native FP8 (per-tensor or block scales),
compressed-tensors (FP8, INT8, W4A16, NVFP4), GPTQ, AWQ, AutoRound,
bitsandbytes, MXFP4 (gpt-oss) and ModelOpt (FP8, NVFP4).
"""

from __future__ import annotations

from collections.abc import Mapping
import re
from typing import Any

from labctl.catalog.arch import QuantInfo, Role
from labctl.catalog.limits import MAX_NAME, Bound, show, whole
from labctl.errors import ModelFormatError

#: Module patterns of one config: real ignore lists name a few hundred modules.
MAX_PATTERNS = 65_536
#: Pattern-name comparisons one plan may make: plain substrings, and the wildcard or
#: regular-expression patterns (each a regex search).
MAX_PLAIN_PAIRS = 2**21
MAX_REGEX_PAIRS = 2**15
#: Quantization blocks and groups: 128 in published checkpoints.
BLOCK = Bound(65_536, "128 (DeepSeek-V3's FP8 blocks, GPTQ groups)")
BITS = Bound(64, "8")
#: Regular-expression constructs that can backtrack for seconds on one name: a
#: repeated group and a back-reference.
_REPEATED_GROUP = re.compile(r"\)[*+{]")
_BACKREF = re.compile(r"\\[1-9]|\(\?P=")
_OPEN_REPEAT = re.compile(r"\{\d*,\}")
#: Unbounded repeats (``*``, ``+``, ``{n,}``) one pattern may hold.
MAX_REPEATS = 3


def _backtracks(body: str) -> bool:
    """Whether a regular expression could backtrack for long on a short module name.

    Python's engine backtracks over every way unbounded repeats can split a string:
    ``.*.*.*X`` takes milliseconds on a 70-character name. A literal between repeats
    pins each split to the literal's few occurrences, so the patterns real ignore
    lists use (``.*mlp.*experts.*``) stay cheap; repeats side by side, more than
    three repeats, repeated groups and back-references are refused.
    """
    if _REPEATED_GROUP.search(body) or _BACKREF.search(body):
        return True
    repeats, literal = 0, True
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            literal |= i + 1 < len(body) and not body[i + 1].isalpha()  # \. yes, \w no
            i += 2
            continue
        if c == "[":
            end = body.find("]", i + 2)
            i = len(body) if end < 0 else end + 1
            continue
        open_repeat = _OPEN_REPEAT.match(body, i)
        if c in "*+" or open_repeat:
            repeats += 1
            if not literal or repeats > MAX_REPEATS:
                return True
            literal = False
            i = open_repeat.end() if open_repeat else i + 1
            continue
        if c.isalnum() or c in "_-/@#%&~'\",;":  # not ?:=<>! (group syntax)
            literal = True
        i += 1
    return False


def _where(where: str, key: str) -> str:
    return f"{where}: quantization_config.{key}"


def _pattern(value: object, key: str, where: str) -> str:
    """One module pattern of an ignore list, checked so that matching it stays cheap."""
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise ModelFormatError(
            f"{_where(where, key)} holds {show(value)}; entries are module names or patterns "
            f"of at most {MAX_NAME} characters"
        )
    if value.startswith("re:"):
        body = value[3:]
        if _backtracks(body):
            raise ModelFormatError(
                f"{_where(where, key)} pattern {show(value)} repeats a group, refers back, puts "
                f"repeats side by side or has more than {MAX_REPEATS}, which can take seconds "
                "per name to match; write it with a literal between repeats (.*mlp.*gate)"
            )
        try:
            re.compile(body)
        except re.error as exc:
            raise ModelFormatError(
                f"{_where(where, key)} pattern {show(value)} is not a regular expression ({exc})"
            ) from None
    return value


def _skip_list(qc: Mapping[str, Any], where: str, *keys: str) -> tuple[str, ...]:
    out: list[str] = []
    for key in keys:
        value = qc.get(key)
        if isinstance(value, list):
            if len(value) + len(out) > MAX_PATTERNS:
                raise ModelFormatError(
                    f"{_where(where, key)} lists {len(value):,} modules, beyond the limit of "
                    f"{MAX_PATTERNS:,}; real configs list a few hundred"
                )
            out.extend(_pattern(v, key, where) for v in value)
    return tuple(out)


def _int(qc: Mapping[str, Any], key: str, default: int, where: str, bound: Bound) -> int:
    """A positive whole-number setting (bits, group or block size)."""
    value = qc.get(key)
    if value is None:
        return default
    return whole(value, f"quantization_config.{key}", where, 1, bound)


def _group(value: object, key: str, where: str, default: int) -> int | None:
    """A group size: -1 means per channel (None); unset, null or 0 mean ``default``."""
    if value is None or (not isinstance(value, bool) and value == 0):
        return default
    if not isinstance(value, bool) and value == -1:
        return None
    return whole(value, f"quantization_config.{key}", where, 1, BLOCK)


def _block(value: object, key: str, where: str) -> tuple[int, int] | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise ModelFormatError(
            f"{_where(where, key)} is {show(value)}; it must be two block sizes such as [128, 128]"
        )
    label = f"quantization_config.{key}"
    return (whole(value[0], label, where, 1, BLOCK), whole(value[1], label, where, 1, BLOCK))


def check_pattern_work(quant: QuantInfo | None, weights: int, where: str) -> None:
    """Refuse ignore lists whose matching against ``weights`` tensors would run too long.

    Every plan matches each module pattern against each weight's name; a regular
    expression is a search, a plain name a substring test.

    Raises:
        ModelFormatError: more pattern-name pairs than a plan should try.
    """
    if quant is None:
        return
    patterns = [*quant.skip, *(p for p, _ in quant.overrides)]
    regex = sum(1 for p in patterns if p.startswith("re:") or any(c in p for c in "*?["))
    plain = len(patterns) - regex
    if plain * weights > MAX_PLAIN_PAIRS or regex * weights > MAX_REGEX_PAIRS:
        raise ModelFormatError(
            f"{where}: quantization_config lists {len(patterns):,} module patterns ({regex:,} "
            f"with wildcards or regular expressions) for {weights:,} weight tensors; labctl "
            f"matches at most {MAX_PLAIN_PAIRS:,} pattern-name pairs ({MAX_REGEX_PAIRS:,} with "
            "wildcards); real configs list a few hundred plain names"
        )


def _compressed_tensors(qc: Mapping[str, Any], where: str) -> QuantInfo:
    groups = qc.get("config_groups") or {}
    skip = _skip_list(qc, where, "ignore")
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
    fmt = str(qc.get("format", ""))
    if bits == 4 and (wtype == "float" or "nvfp4" in fmt):
        return QuantInfo("nvfp4", group_size=16, skip=skip)
    if bits == 8 and wtype == "float":
        if strategy == "block":
            block = _block(weights.get("block_structure"), "block_structure", where)
            return QuantInfo("fp8-block", skip=skip, block=block or (128, 128))
        if strategy == "channel":
            return QuantInfo("fp8-channel", skip=skip)
        return QuantInfo("fp8", skip=skip)
    if bits == 8:
        return QuantInfo("int8", skip=skip)
    if bits == 4:
        symmetric = bool(weights.get("symmetric", True))
        group = _group(weights.get("group_size"), "group_size", where, 128)
        return QuantInfo(
            "gptq" if symmetric else "awq",
            group_size=group or 128,
            symmetric=symmetric,
            skip=skip,
        )
    raise ModelFormatError(
        f"{where}: compressed-tensors scheme with num_bits={show(bits)} type={show(wtype)} is not supported; "
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
        raise ModelFormatError(f"{where}: quantization_config must be an object, got {show(qc)}")
    method = str(qc.get("quant_method") or qc.get("quant_algo") or "").lower()
    if not method and isinstance(qc.get("quantization"), Mapping):
        return parse_quantization_config({"quant_method": "modelopt", **qc["quantization"]}, where)
    if method == "fp8":
        block = _block(qc.get("weight_block_size"), "weight_block_size", where)
        skip = _skip_list(qc, where, "ignored_layers", "modules_to_not_convert")
        if block:
            return QuantInfo("fp8-block", skip=skip, block=block)
        return QuantInfo("fp8", skip=skip)
    if method == "fbgemm_fp8":
        return QuantInfo("fp8-channel", skip=_skip_list(qc, where, "modules_to_not_convert"))
    if method == "compressed-tensors":
        return _compressed_tensors(qc, where)
    if method in ("gptq", "awq", "auto-round", "intel/auto-round", "autoround", "auto_round"):
        bits = _int(qc, "bits", 4, where, BITS)
        group = _group(qc.get("group_size"), "group_size", where, 128)
        if bits not in (4, 8):
            raise ModelFormatError(
                f"{where}: {method} with {bits} bits is not supported; use 4 or 8"
            )
        if bits == 8:
            return QuantInfo("int8", skip=_skip_list(qc, where, "modules_to_not_convert"))
        name = {"gptq": "gptq", "awq": "awq"}.get(method, "autoround")
        sym = bool(qc.get("sym", qc.get("zero_point") is not True))
        if method == "awq":
            sym = not bool(qc.get("zero_point", True))
        skip = _skip_list(qc, where, "modules_to_not_convert", "extra_config_skip")
        return QuantInfo(name, group_size=group, symmetric=sym, skip=skip)
    if method == "bitsandbytes":
        if qc.get("load_in_8bit"):
            return QuantInfo("bnb-int8", skip=_skip_list(qc, where, "llm_int8_skip_modules"))
        return QuantInfo("bnb-nf4", skip=_skip_list(qc, where, "llm_int8_skip_modules"))
    if method == "mxfp4":
        skip = _skip_list(qc, where, "modules_to_not_convert")
        # gpt-oss converts only the routed experts; the rest stays bf16.
        return QuantInfo("mxfp4", skip=skip, scope=frozenset({Role.EXPERT}))
    if method in ("modelopt", "modelopt_fp4", "nvfp4"):
        algo = str(qc.get("quant_algo", "NVFP4" if method != "modelopt" else "FP8")).upper()
        skip = _skip_list(qc, where, "exclude_modules", "ignore")
        layers = qc.get("quantized_layers")
        if algo == "MIXED_PRECISION" and isinstance(layers, Mapping) and layers:
            if len(layers) > MAX_PATTERNS:
                raise ModelFormatError(
                    f"{_where(where, 'quantized_layers')} lists {len(layers):,} modules, beyond "
                    f"the limit of {MAX_PATTERNS:,}; real configs list a few patterns"
                )
            overrides = tuple(
                (
                    _pattern(name, "quantized_layers", where),
                    "nvfp4" if "FP4" in str(spec.get("quant_algo", "")).upper() else "fp8",
                )
                for name, spec in layers.items()
                if isinstance(spec, Mapping)
            )
            if not overrides:
                raise ModelFormatError(
                    f"{_where(where, 'quantized_layers')} names no module with a quant_algo; "
                    'each entry maps a module pattern to {"quant_algo": "NVFP4"} or "FP8"'
                )
            main = max({m for _, m in overrides}, key=lambda m: sum(o == m for _, o in overrides))
            # Only the listed layers are quantized; everything else stays 16-bit.
            return QuantInfo(
                main, group_size=16, skip=skip, overrides=overrides, scope=frozenset({Role.MTP})
            )
        if "FP4" in algo:
            return QuantInfo(
                "nvfp4",
                group_size=_group(qc.get("group_size"), "group_size", where, 16) or 16,
                skip=skip,
            )
        return QuantInfo("fp8", skip=skip)
    if method == "gguf":
        return None
    raise ModelFormatError(
        f"{where}: quantization_config.quant_method {show(method or '(empty)')} is not supported; "
        "supported: fp8, compressed-tensors, gptq, awq, auto-round, bitsandbytes, mxfp4, modelopt"
    )
