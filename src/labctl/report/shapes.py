"""The redactor's credential passes: secrets found by their shape or their randomness.

Each pass finds one kind of credential in free text and hands what it found to ``hide``,
whose answer takes its place: PEM blocks; ``Authorization``, API-key and cookie headers and
``Bearer``/``Basic`` values; ``name=value`` pairs whose name ends in a secret word
(``HF_TOKEN=…``); tokens in the shapes their issuers give them (gitleaks' rules: ``sk-``,
``hf_``, ``gh?_``, Slack, AWS key ids and secret keys, JWTs); and, last, long hex strings and
runs that read as random (:func:`looks_random`). :class:`~labctl.report.redact.Scrubber` runs
them in its fixed order and parks each answer behind a placeholder (characters of
:data:`PARKED`, which no pattern here matches), so a later pass never finds it again.
"""

from __future__ import annotations

from collections.abc import Callable
import math
import re

#: Takes a secret that a pass found and gives the text that stands in its place.
Hide = Callable[[str], str]

#: The private-use range the redactor's placeholders are written in; the negated classes below
#: exclude it, so a value never runs into a replacement parked beside it.
PARKED = "\ue000-\ue1ff"

_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 +]{1,60}-----[\s\S]*?-----END [A-Z0-9 +]{1,60}-----"
    r"|-----BEGIN [A-Z0-9 +]{1,60}-----(?:[A-Za-z0-9+/=:,\s-]|\\[nr])*"
)
_AUTH_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key)(['\"]?\s*[:=]\s*['\"]?)"
    rf"((?:bearer|basic|token|digest)\s+)?([^\s'\",;{PARKED}]+)"
)
_COOKIE = re.compile(rf"(?i)\b((?:set-)?cookie)(['\"]?\s*[:=]\s*['\"]?)()([^\r\n'\"{PARKED}]+)")
_BEARER = re.compile(r"\b(Bearer|bearer|BEARER|Basic|basic|Token)\s+([A-Za-z0-9._~+/=:-]{8,})")
#: ``name=value`` or ``"name": "value"`` where the name ends in a secret word (``HF_TOKEN``).
_NAMED = re.compile(
    r"(?i)(?<![a-z0-9])(token|secret|passw(?:or)?d|passphrase|pwd|api[_-]?key|access[_-]?key|"
    r"secret[_-]?key|private[_-]?key|credentials?|client[_-]?secret)"
    rf"(['\"]?\s*[:=]\s*)(['\"]?)([^\s'\",;&<>{PARKED}]+)"
)
_SHAPE = re.compile(
    r"(?<![\w-])(?:sk-(?:proj-|svcacct-|admin-|ant-(?:api\d\d-)?)?[A-Za-z0-9_-]{20,}"
    r"|hf_[A-Za-z0-9]{30,}|api_org_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{22,}|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}"
    r"|eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)(?![\w-])"
)
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_HEX = re.compile(
    r"(?<![\w+/-])(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{24,}(?![\w+/-])"
)
_RUN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/=_-]{20,}")
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def entropy(s: str) -> float:
    """Shannon entropy of ``s`` in bits per character."""
    n = len(s)
    counts: dict[str, int] = {}
    for ch in s:
        counts[ch] = counts.get(ch, 0) + 1
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def looks_random(run: str) -> bool:
    """Whether a run of ``[A-Za-z0-9+/=_-]`` reads as a random secret, not an identifier.

    Letters and digits mixed and at least 4.0 bits of entropy a character, like
    detect-secrets; but identifiers made of short pieces (``Qwen3-30B-A3B-Instruct-2507``,
    ``max_num_batched_tokens``) and camel-cased words (``Qwen2VLForConditionalGeneration``)
    are names, whatever their entropy.
    """
    if not (re.search(r"[A-Za-z]", run) and re.search(r"\d", run)) or entropy(run) < 4.0:
        return False
    pieces = [p for p in re.split(r"[-_/+=.]+", run) if p]
    if len(pieces) >= 3 and max(map(len, pieces)) <= 12:
        return False
    words = _WORDS.findall(run)
    return sum(map(len, words)) / len(words) <= 4.5


def pem(s: str, hide: Hide) -> str:
    """PEM blocks (keys, certificates), whole, or to the end of the text when cut short."""
    return _PEM.sub(lambda m: hide(m[0]), s)


def auth(s: str, hide: Hide) -> str:
    """The values of authorization, API-key and cookie headers, and ``Bearer``/``Basic``
    credentials wherever they stand (not prose: ``basic configuration``)."""
    low = s.lower()
    if not any(word in low for word in ("auth", "key", "cookie", "bearer", "basic", "token")):
        return s
    for header in (_AUTH_HEADER, _COOKIE):
        s = header.sub(lambda m: m[1] + m[2] + (m[3] or "") + hide(m[4].rstrip()), s)
    return _BEARER.sub(lambda m: _bearer(m, hide), s)


def _bearer(m: re.Match[str], hide: Hide) -> str:
    v = m[2]
    if v.isalpha() and v.islower():  # prose: "basic configuration"
        return m[0]
    return f"{m[1]} {hide(v)}"


def named(s: str, hide: Hide) -> str:
    """The value of ``name=value`` or ``"name": "value"`` where the name ends in a secret word."""
    return _NAMED.sub(lambda m: m[1] + m[2] + m[3] + hide(m[4]), s)


def token_shapes(s: str, hide: Hide) -> str:
    """Tokens in their issuers' shapes (OpenAI and Anthropic ``sk-``, Hugging Face ``hf_`` and
    ``api_org_``, GitHub, Slack, AWS key ids, JWTs), then AWS secret keys (40 base64 characters
    holding a digit, not all of one case)."""
    s = _SHAPE.sub(lambda m: hide(m[0]), s)
    return _AWS_SECRET.sub(lambda m: hide(m[0]) if _mixed(m[0]) else m[0], s)


def randoms(s: str, hide: Hide) -> str:
    """What is left that reads as a secret: hex strings of 24 digits or more (letters and
    digits both) and runs of 20 characters or more that :func:`looks_random` takes for one."""
    s = _HEX.sub(lambda m: hide(m[0]), s)
    return _RUN.sub(lambda m: hide(m[0]) if looks_random(m[0]) else m[0], s)


def _mixed(s: str) -> bool:
    return not (s.isupper() or s.islower()) and any(c.isdigit() for c in s)
