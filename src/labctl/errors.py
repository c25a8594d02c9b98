"""Errors that reach users.

Every error the project raises on purpose derives from :class:`LabError`. Each
subsystem has its own root, and each root also inherits the builtin exception
that callers already catch, so ``except ValueError`` keeps working around
config parsing. The message is the whole user-facing story: it names the bad
value, what is allowed, and how to fix it. The CLI prints it as one line and
exits with :attr:`LabError.exit_code`.
"""

from __future__ import annotations

from collections.abc import Iterable
import difflib


class LabError(Exception):
    """Root of every error labctl raises deliberately."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(LabError, ValueError):
    """A command-line flag or argument has a value that cannot work."""

    exit_code = 2


class ConfigError(LabError, ValueError):
    """A configuration file or value is invalid."""

    exit_code = 3


class CatalogError(LabError, LookupError):
    """A model, GPU or file could not be found or read."""

    exit_code = 4


class ModelFormatError(CatalogError, ValueError):
    """A model file (config.json, safetensors header, GGUF) is malformed."""


class FitError(LabError, ValueError):
    """The planner was asked something it cannot compute."""

    exit_code = 5


class GpuError(LabError, RuntimeError):
    """A GPU backend failed."""

    exit_code = 6


class GpuUnavailable(GpuError):
    """No GPU backend can be opened (library missing, driver not loaded)."""


class EngineError(LabError, RuntimeError):
    """A serving engine (real or the twin) cannot start or serve."""

    exit_code = 7


class DeployError(LabError, RuntimeError):
    """A deployment cannot be made, or its journal cannot be read or written."""

    exit_code = 9


class BenchError(LabError, RuntimeError):
    """A benchmark run in which no request succeeded (the most common reason is named)."""

    exit_code = 8


_SUFFIXES = ("-instruct", "-it", "-chat", "-hf", "-base")


def _normal(name: str) -> str:
    tail = name.lower().rsplit("/", 1)[-1]
    for suffix in _SUFFIXES:
        tail = tail.removesuffix(suffix)
    return tail


def close_matches(word: str, candidates: Iterable[str], limit: int = 3) -> list[str]:
    """Return up to ``limit`` candidates that look like ``word``.

    Matching ignores case, the organisation prefix and suffixes such as
    ``-Instruct``, so that ``qwen3-8b-instruct`` finds ``Qwen/Qwen3-8B``.
    """
    pool = list(dict.fromkeys(candidates))
    key, normal = word.lower(), _normal(word)
    scored = []
    for c in pool:
        ratio = max(
            difflib.SequenceMatcher(None, key, c.lower()).ratio(),
            difflib.SequenceMatcher(None, normal, _normal(c)).ratio(),
        )
        if normal and normal == _normal(c):
            ratio = 2.0
        scored.append((ratio, c))
    scored.sort(key=lambda rc: -rc[0])
    return [c for ratio, c in scored[:limit] if ratio >= 0.6]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Phrase close matches for an error message ('' when there are none)."""
    matches = close_matches(word, candidates)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"
