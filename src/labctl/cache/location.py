"""Where the caches are: ``lab.toml``'s ``[models]`` first, then the tools' own defaults."""

from __future__ import annotations

import os
from pathlib import Path

from labctl.config import ModelsConfig


def hub_cache_dir(models: ModelsConfig | None = None) -> Path:
    """The Hugging Face hub cache: ``[models] hf_cache``, else ``HF_HUB_CACHE``, else
    ``HF_HOME``/hub, else ``~/.cache/huggingface/hub`` (read from the environment now, as
    huggingface_hub reads it at import)."""
    if models is not None and models.hf_cache:
        return Path(models.hf_cache).expanduser()
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def ollama_dirs(models: ModelsConfig | None = None) -> list[Path]:
    """Ollama's model store: ``[models] ollama``, else ``OLLAMA_MODELS``, else its default
    places that exist (the Linux service's and the user's)."""
    if models is not None and models.ollama:
        return [Path(models.ollama).expanduser()]
    env = os.environ.get("OLLAMA_MODELS")
    if env:
        return [Path(env).expanduser()]
    places = [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]
    return [p for p in places if p.is_dir()]
