"""Typed, error-naming access to config.json dictionaries, and a weight list builder.

Shared by the decoder builder and the tower builders.
"""

from __future__ import annotations

from collections.abc import Mapping
import math
from typing import Any

from labctl.catalog.arch import Role, WeightSpec
from labctl.catalog.formats import DTYPE_BYTES
from labctl.catalog.limits import LAYERS, POSITIONS, bound_for, show, whole
from labctl.errors import ModelFormatError

Config = Mapping[str, Any]


class ConfigView:
    """Typed access to one config dictionary, naming the file and key on errors."""

    def __init__(self, data: Config, where: str) -> None:
        self.data = data
        self.where = where

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def window(self, key: str) -> int | None:
        """A window or chunk size in tokens; absent, null, false or 0 mean none."""
        value = self.data.get(key)
        if value is None or value is False or (not isinstance(value, bool) and value == 0):
            return None
        return whole(value, f"field {key!r}", self.where, 1, bound_for(key))

    def number(self, key: str, default: float, low: float, high: float) -> float:
        """A real-valued field in ``(low, high]``."""
        value = self.data.get(key)
        if value is None:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (low < value <= high)
            or not math.isfinite(value)
        ):
            raise ModelFormatError(
                f"{self.where}: field {key!r} must be a number above {low:g} and at most "
                f"{high:g}, got {show(value)}; check it against the model's published config.json"
            )
        return float(value)

    def indices(self, key: str) -> frozenset[int]:
        """A list of layer indices (``mlp_only_layers``, ``cross_attention_layers``)."""
        value = self.data.get(key)
        if value is None:
            return frozenset()
        if not isinstance(value, list):
            raise ModelFormatError(
                f"{self.where}: field {key!r} must be a list of layer indices, got {show(value)}"
            )
        return frozenset(
            whole(v, f"an entry of field {key!r}", self.where, 0, LAYERS) for v in value
        )

    def names(self, key: str) -> list[str] | None:
        """A list of strings (``layer_types``); None when absent."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ModelFormatError(
                f"{self.where}: field {key!r} must be a list of strings, got {show(value)}"
            )
        return value

    def int(self, key: str, default: int | None = None, minimum: int = 0) -> int:
        """A count field, between ``minimum`` and the field's bound (see ``limits``);
        ``default`` when absent or null (required when ``default`` is None)."""
        value = self.data.get(key)
        if value is None:
            if default is None:
                raise ModelFormatError(
                    f"{self.where}: required field {key!r} is missing; "
                    "check that the file is a Hugging Face config.json for a supported model"
                )
            return default
        return whole(value, f"field {key!r}", self.where, minimum, bound_for(key))

    def bool(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ModelFormatError(
                f"{self.where}: field {key!r} must be true or false, got {show(value)}"
            )
        return value

    def sub(self, key: str) -> ConfigView | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ModelFormatError(
                f"{self.where}: field {key!r} must be an object, got {show(value)}"
            )
        return ConfigView(value, f"{self.where} {key}")


class WeightList:
    """Accumulates WeightSpecs with checkpoint-style names."""

    def __init__(self) -> None:
        self.items: list[WeightSpec] = []

    def mat(
        self, name: str, role: Role, out: int, inp: int, layer: int | None = None, count: int = 1
    ) -> None:
        if out and inp and count:
            self.items.append(WeightSpec(name, role, (out, inp), count=count, layer=layer))

    def vec(
        self, name: str, n: int, role: Role = Role.NORM, layer: int | None = None, count: int = 1
    ) -> None:
        if n and count:
            self.items.append(WeightSpec(name, role, (n,), count=count, layer=layer))

    def blob(self, name: str, role: Role, numel: int, layer: int | None = None) -> None:
        if numel:
            self.items.append(WeightSpec(name, role, (numel,), layer=layer))


def model_type_of(cfg: ConfigView) -> str:
    mt = cfg.get("model_type")
    if isinstance(mt, str) and mt:
        return mt
    arch = cfg.get("architectures")
    if isinstance(arch, list) and arch and isinstance(arch[0], str):
        return str(arch[0]).removesuffix("ForCausalLM").lower()
    raise ModelFormatError(
        f"{cfg.where}: neither 'model_type' nor 'architectures' is set; "
        "a Hugging Face config.json names the model type"
    )


def derived_max_model_len(text: ConfigView) -> int:
    """The context length an engine uses by default: the model's position limit,
    stretched by a RoPE scaling factor for scaling types that extend it."""
    base = 0
    for key in (
        "max_position_embeddings",
        "n_positions",
        "max_seq_len",
        "seq_length",
        "max_sequence_length",
    ):
        if text.has(key):
            base = text.int(key, minimum=1)
            break
    if not base:
        base = 2048
    scaling = text.get("rope_scaling") or {}
    if isinstance(scaling, Mapping):
        rtype = scaling.get("rope_type", scaling.get("type"))
        factor = scaling.get("factor")
        if (
            rtype in ("yarn", "dynamic", "linear")
            and isinstance(factor, int | float)
            and not isinstance(factor, bool)
            and math.isfinite(factor)
            and factor > 1
        ):
            original = scaling.get("original_max_position_embeddings")
            if rtype == "yarn" and isinstance(original, int) and not isinstance(original, bool):
                base = int(original * factor)
            else:
                base = int(base * factor)
            whole(base, "field 'rope_scaling' (factor times positions)", text.where, 1, POSITIONS)
    return base


def dtype_of(cfg: ConfigView, text: ConfigView) -> str:
    for c in (text, cfg):
        value = c.get("torch_dtype") or c.get("dtype")
        if isinstance(value, str):
            name = value.removeprefix("torch.")
            # Engines serve other dtypes (float8 checkpoints, "auto") in bfloat16.
            return name if name in DTYPE_BYTES else "bfloat16"
    return "bfloat16"
