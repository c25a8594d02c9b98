"""Hugging Face repo ids as MODEL names them: ``owner/name``, or ``owner/name:QUANT``.

Kept apart from :mod:`labctl.cache.hub` so that telling a repo id from a catalog id or a
path costs no import of ``huggingface_hub``.
"""

from __future__ import annotations

from dataclasses import dataclass
import re

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_QUANT_TAG = re.compile(r"[A-Za-z0-9_]{1,40}")


@dataclass(frozen=True)
class RepoRef:
    """A hub model as MODEL names it: ``owner/name`` and, for a GGUF repo, ``:QUANT``."""

    repo_id: str
    revision: str = "main"
    quant: str | None = None


def parse_ref(text: str, revision: str | None = None) -> RepoRef | None:
    """``owner/name`` or ``owner/name:QUANT`` (llama.cpp's ``-hf`` form) as a :class:`RepoRef`;
    None when ``text`` is not a repo id."""
    repo, _, quant = text.strip().partition(":")
    if not _REPO_ID.fullmatch(repo) or ".." in repo or "--" in repo or repo.endswith(".git"):
        return None
    if quant and not _QUANT_TAG.fullmatch(quant):
        return None
    return RepoRef(repo, revision or "main", quant or None)
