"""Typed, error-naming access to config.json dictionaries, and a weight list builder.

Shared by the decoder builder and the tower builders.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labctl.catalog.arch import Role, WeightSpec
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

    def int(self, key: str, default: int | None = None) -> int:
        value = self.data.get(key)
        if value is None:
            if default is None:
                raise ModelFormatError(
                    f"{self.where}: required field {key!r} is missing; "
                    "check that the file is a Hugging Face config.json for a supported model"
                )
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ModelFormatError(
                f"{self.where}: field {key!r} must be a whole number, got {value!r}"
            )
        if value < 0:
            raise ModelFormatError(f"{self.where}: field {key!r} must not be negative, got {value}")
        return int(value)

    def bool(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ModelFormatError(
                f"{self.where}: field {key!r} must be true or false, got {value!r}"
            )
        return value

    def sub(self, key: str) -> ConfigView | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ModelFormatError(f"{self.where}: field {key!r} must be an object, got {value!r}")
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
            base = text.int(key)
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
            and factor > 1
        ):
            original = scaling.get("original_max_position_embeddings")
            if rtype == "yarn" and isinstance(original, int):
                base = int(original * factor)
            else:
                base = int(base * factor)
    return base


def dtype_of(cfg: ConfigView, text: ConfigView) -> str:
    for c in (text, cfg):
        value = c.get("torch_dtype") or c.get("dtype")
        if isinstance(value, str):
            return value.removeprefix("torch.")
    return "bfloat16"
