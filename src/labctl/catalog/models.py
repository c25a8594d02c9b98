"""The built-in model catalog, and resolution of whatever a user types as MODEL.

MODEL may be a catalog id (``google/gemma-4-31B-it``), a quantized repo id
that names its format (``RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic``
resolves to the base architecture in FP8), a local Hugging Face directory,
or a ``.gguf`` file.

The catalog stores each model's real ``config.json`` fields (checked against
public copies of the files; ``source`` says where) in
``data/models.json``; the same builder reads them as it reads a local file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import functools
import importlib.resources
import json
from pathlib import Path
import re
from typing import Any

from labctl.catalog.arch import ModelArch, QuantInfo, Role
from labctl.catalog.builder import build_arch
from labctl.catalog.gguf import arch_from_gguf, read_gguf
from labctl.catalog.hf import load_hf_dir
from labctl.catalog.limits import show
from labctl.errors import CatalogError, ModelFormatError, did_you_mean

#: Longest MODEL text worth comparing with the catalog for suggestions (ids are short).
_SUGGEST_MAX = 200


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    config: dict[str, Any]
    aliases: tuple[str, ...] = ()
    family: str = ""
    source: str = ""
    notes: str = ""
    seed: bool = False


@dataclass(frozen=True)
class Variant:
    """A published quantized checkpoint of a catalog model."""

    id: str
    base: str
    quantization_config: dict[str, Any]
    notes: str = ""


@functools.cache
def _data() -> tuple[dict[str, CatalogEntry], dict[str, Variant]]:
    raw = json.loads(
        importlib.resources.files("labctl.catalog").joinpath("data/models.json").read_text("utf-8")
    )
    entries = {}
    for m in raw["models"]:
        e = CatalogEntry(
            id=m["id"],
            config=m["config"],
            aliases=tuple(m.get("aliases", ())),
            family=m.get("family", ""),
            source=m.get("source", ""),
            notes=m.get("notes", ""),
            seed=bool(m.get("seed", False)),
        )
        entries[e.id] = e
    variants = {
        v["id"]: Variant(v["id"], v["base"], v["quantization_config"], v.get("notes", ""))
        for v in raw["variants"]
    }
    return entries, variants


def catalog() -> list[CatalogEntry]:
    return list(_data()[0].values())


def variants() -> list[Variant]:
    return list(_data()[1].values())


def _index() -> dict[str, str]:
    entries, variants_ = _data()
    idx: dict[str, str] = {}
    for e in entries.values():
        idx[e.id.lower()] = e.id
        for a in e.aliases:
            idx[a.lower()] = e.id
    for v in variants_.values():
        idx[v.id.lower()] = v.id
    return idx


def catalog_arch(model_id: str) -> ModelArch:
    """Build the architecture of a catalog entry or published variant by exact id."""
    entries, variants_ = _data()
    if model_id in variants_:
        v = variants_[model_id]
        base = entries[v.base]
        config = dict(base.config)
        config["quantization_config"] = v.quantization_config
        arch = build_arch(config, v.id, f"catalog entry {v.id}")
        return replace(
            arch, notes=(*arch.notes, f"architecture of {v.base}", *((v.notes,) if v.notes else ()))
        )
    e = entries[model_id]
    arch = build_arch(e.config, e.id, f"catalog entry {e.id}")
    return replace(arch, notes=(*arch.notes, *((e.notes,) if e.notes else ())))


# Format tokens that quantized repo names carry, most specific first.
_NAME_FORMATS: tuple[tuple[str, str], ...] = (
    (r"fp8[-_.]?dynamic", "fp8-channel"),
    (r"fp8[-_.]?block", "fp8-block"),
    (r"(?:quantized[-_.])?w8a8(?:[-_.]fp8)?", "int8"),
    (r"(?:quantized[-_.])?w4a16(?:[-_.]g\d+)?", "gptq"),
    (r"gptq(?:[-_.]int4)?", "gptq"),
    (r"awq(?:[-_.]4bit)?", "awq"),
    (r"(?:int4[-_.])?auto[-_]?round(?:[-_.]int4)?", "autoround"),
    (r"(?:unsloth[-_.])?bnb[-_.]?4bit", "bnb-nf4"),
    (r"nf4", "bnb-nf4"),
    (r"nvfp4", "nvfp4"),
    (r"mxfp4", "mxfp4"),
    (r"int8", "int8"),
    (r"int4", "gptq"),
    (r"fp8", "fp8-block"),
)


def _name_format(name: str) -> tuple[str, str] | None:
    """Split a quantized repo name into (base name, format), or None."""
    tail = name.rsplit("/", 1)[-1]
    for pattern, fmt in _NAME_FORMATS:
        m = re.search(rf"(?:^|[-_.]){pattern}(?:[-_.]4bit)?(?=$|[-_.])", tail, re.IGNORECASE)
        if m:
            base = (tail[: m.start()] + tail[m.end() :]).strip("-_.")
            base = re.sub(
                r"[-_.](unsloth|quantized|dynamic|4bit|8bit)$", "", base, flags=re.IGNORECASE
            )
            return base, fmt
    return None


def _norm(name: str) -> str:
    tail = name.rsplit("/", 1)[-1].lower()
    return re.sub(r"^meta-", "", tail)


def _find_base(base: str) -> str | None:
    entries, _ = _data()
    want = _norm(base)
    for e in entries.values():
        for candidate in (e.id, *e.aliases):
            if _norm(candidate) == want:
                return e.id
    return None


def _quant_for(fmt: str, base_arch: ModelArch) -> QuantInfo:
    if fmt == "mxfp4":
        return QuantInfo("mxfp4", scope=frozenset({Role.EXPERT}))
    if fmt == "fp8-block":
        return QuantInfo("fp8-block", block=(128, 128))
    if fmt in ("gptq", "autoround"):
        return QuantInfo(fmt, group_size=128)
    if fmt == "awq":
        return QuantInfo("awq", group_size=128, symmetric=False)
    return QuantInfo(fmt)


def resolve(text: str) -> ModelArch:
    """Resolve MODEL as typed on the command line.

    Raises:
        CatalogError: nothing by that name; the message suggests close matches.
        ModelFormatError: a local file or directory is malformed.
    """
    text = text.strip()
    if not text:
        raise CatalogError(
            "MODEL is empty; pass a catalog id, a Hugging Face model directory or a .gguf file"
        )
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        raise CatalogError(
            f"MODEL {show(text)} holds control characters; pass a catalog id, a Hugging Face "
            "model directory or a .gguf file"
        )
    path = Path(text).expanduser()
    local = False
    try:
        local = path.exists()
        if local:
            return _resolve_path(path)
    except OSError as exc:
        if local:
            raise ModelFormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        raise CatalogError(
            f"MODEL {show(text)} is not a usable path ({exc.strerror or exc}); pass a catalog "
            "id, a Hugging Face model directory or a .gguf file"
        ) from exc
    idx = _index()
    if text.lower() in idx:
        return catalog_arch(idx[text.lower()])
    split = _name_format(text)
    if split is not None:
        base_name, fmt = split
        base_id = _find_base(base_name)
        if base_id is not None:
            arch = catalog_arch(base_id)
            quant = _quant_for(fmt, arch)
            return replace(
                arch,
                name=text,
                quant=quant,
                notes=(
                    *arch.notes,
                    f"architecture of {base_id}; format {quant.method} read from the name",
                ),
            )
    bare = _find_base(text)
    if bare is not None:
        return catalog_arch(bare)
    if text.startswith((".", "/", "~")) or text.endswith((".gguf", ".json")):
        raise CatalogError(f"{show(text, 300)[1:-1]}: no such file or directory")
    known = [e.id for e in catalog()] + [v.id for v in variants()]
    hint = did_you_mean(text, known) if len(text) <= _SUGGEST_MAX else ""
    raise CatalogError(
        f"unknown model {show(text, 120)}.{hint} "
        "Pass a catalog id (see 'labctl models --catalog'), a Hugging Face model directory or a .gguf file"
    )


def _resolve_path(path: Path) -> ModelArch:
    if path.is_dir():
        return load_hf_dir(path)
    if not path.is_file():  # a FIFO or a device would block or never end
        raise CatalogError(
            f"{path}: not a regular file; MODEL is a catalog id, a Hugging Face model "
            "directory or a .gguf file"
        )
    if path.suffix.lower() == ".gguf" or _is_gguf(path):
        return arch_from_gguf(read_gguf(path))
    if path.name == "config.json":
        return load_hf_dir(path.parent)
    raise CatalogError(
        f"{path}: not a model; MODEL is a catalog id, a Hugging Face model directory or a .gguf file"
    )


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False
