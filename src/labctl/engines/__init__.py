"""Engine adapters, one module per engine kind, and the API families they serve.

A new engine kind joins the lab by adding a module here (an :class:`Adapter` subclass,
and any new :class:`Family` it serves) and its name to ``lab.toml``'s engines
(``labctl.config``): the gateway routes every registered family, and the deploy
controller starts, probes, sizes and scrapes every registered adapter, without edits.
"""

from __future__ import annotations

from collections.abc import Iterable

from labctl.engines.base import (
    PHASES,
    Adapter,
    Estimate,
    Family,
    Health,
    Launch,
    Route,
    Upstream,
    flags,
)
from labctl.engines.command import CommandAdapter
from labctl.engines.llamacpp import LlamaCppAdapter
from labctl.engines.openvla import OpenVlaAdapter
from labctl.engines.sim import SimAdapter
from labctl.engines.vllm import VllmAdapter
from labctl.engines.whispercpp import WhisperCppAdapter
from labctl.errors import ConfigError

__all__ = ["PHASES", "Adapter", "Estimate", "Family", "Health", "Launch", "Route", "Upstream", "adapter",
           "adapters", "families", "flags", "register", "register_family", "unregister"]  # fmt: skip

_FAMILIES: dict[str, Family] = {}
_ADAPTERS: dict[str, Adapter] = {}


def register_family(family: Family) -> Family:
    """Add an API family (its gateway paths); a name already taken is replaced."""
    _FAMILIES[family.name] = family
    return family


def register(kind: Adapter) -> Adapter:
    """Add an engine kind; every family it serves must be registered first.

    Raises:
        ValueError: it serves a family no one registered.
    """
    unknown = set(kind.families) - set(_FAMILIES)
    if unknown:
        raise ValueError(f"engine {kind.name!r} serves unknown API families {sorted(unknown)}")
    _ADAPTERS[kind.name] = kind
    return kind


def unregister(kind: str, families: Iterable[str] = ()) -> None:
    """Take an engine kind away, and API families that no kind left serves (a test's own,
    once it is done with them).

    Raises:
        ValueError: a family another engine kind still serves.
    """
    _ADAPTERS.pop(kind, None)
    for name in families:
        users = sorted(k.name for k in _ADAPTERS.values() if name in k.families)
        if users:
            raise ValueError(f"API family {name!r} is still served by {', '.join(users)}")
        _FAMILIES.pop(name, None)


def families() -> list[Family]:
    return list(_FAMILIES.values())


def adapters() -> dict[str, Adapter]:
    return dict(_ADAPTERS)


def adapter(engine: str) -> Adapter:
    """Raises:
    ConfigError: an engine labctl has no adapter for.
    """
    try:
        return _ADAPTERS[engine]
    except KeyError:
        raise ConfigError(
            f"engine {engine!r} is unknown; use one of {', '.join(sorted(_ADAPTERS))}"
        ) from None


for _family in (
    Family("chat", ("/v1/chat/completions",), streams=True),
    Family("completions", ("/v1/completions",), streams=True),
    Family("embeddings", ("/v1/embeddings",)),
    Family("transcriptions", ("/v1/audio/transcriptions",), body="multipart", streams=True),
    Family("translations", ("/v1/audio/translations",), body="multipart", streams=True),
    Family("actions", ("/vla/{model}/act",), engine_path="/act"),
):
    register_family(_family)
for _kind in (
    VllmAdapter(),
    SimAdapter(),
    LlamaCppAdapter(),
    WhisperCppAdapter(),
    OpenVlaAdapter(),
    CommandAdapter(),
):
    register(_kind)
