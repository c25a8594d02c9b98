"""Secrets: what looks like one, how to name one without revealing it, and log redaction.

The lab handles API keys, its admin token and engine environment values such as
``HF_TOKEN``. None of them may reach a log line, the journal, a metric or a
report. Two nets catch them: by *name* (a header such as ``Authorization``, an
environment variable called ``…_TOKEN``) and by *shape* (``Bearer …``,
``sk-…``, ``hf_…``, JWTs, long random-looking strings), plus the exact values
the lab knows it holds. A secret is then shown only as its fingerprint, which
tells two values apart without revealing either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
import hashlib
import hmac
import re

#: Environment variable and header names whose values are secrets whatever they look like.
_SECRET_NAME = re.compile(
    r"(?i)(token|secret|passw(or)?d|passphrase|credential|private[_-]?key|api[_-]?key|"
    r"access[_-]?key|auth|session|cookie|^pass$|_pass$|_key$|^key$)"
)
#: Values that are secrets by their shape alone.
_SHAPES = (
    r"sk-[A-Za-z0-9_-]{8,}",  # OpenAI-style keys (and many gateways')
    r"hf_[A-Za-z0-9]{16,}",  # Hugging Face
    r"gh[pousr]_[A-Za-z0-9]{20,}",  # GitHub
    r"github_pat_[A-Za-z0-9_]{20,}",
    r"xox[abprs]-[A-Za-z0-9-]{10,}",  # Slack
    r"AKIA[0-9A-Z]{16}",  # AWS access key ids
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWTs
)
_SHAPE = re.compile("|".join(f"(?:{s})" for s in _SHAPES))
#: Long random-looking strings: letters and digits mixed, 32 or more characters.
_RANDOM = re.compile(r"(?<![A-Za-z0-9_/+=-])(?=[A-Za-z0-9_+/=-]*\d)(?=[A-Za-z0-9_+/=-]*[A-Za-z])"
                     r"[A-Za-z0-9_+/=-]{32,}(?![A-Za-z0-9_/+=-])")  # fmt: skip
#: ``Name: value`` or ``name=value`` where the name says the value is secret.
_NAMED = re.compile(
    r"(?i)\b(authorization|proxy-authorization|cookie|set-cookie|x-api-key|"
    r"(?:[a-z0-9]+[_-])*(?:token|secret|password|passwd|api[_-]?key))\b"
    r"(\s*[:=]\s*)(['\"]?)([^\s'\",;]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+([^\s'\",;\\]+)")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|\n")
REDACTED = "[redacted]"


def looks_secret(name: str, value: str) -> bool:
    """Whether an environment variable (or header) holds a secret, by its name or its value."""
    return bool(_SECRET_NAME.search(name) or _SHAPE.search(value) or _RANDOM.fullmatch(value))


def fingerprint(value: str) -> str:
    """A short, stable name for a secret: equal values, equal fingerprints; nothing more."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


class SecretArg:
    """A command-line item that holds a secret: the value a secret-looking flag takes
    (``--api-key VALUE``), or the whole ``--api-key=VALUE``; ``shown`` is how a log shows it."""

    def __init__(self, value: str, shown: str = REDACTED) -> None:
        self.value = value
        self.shown = shown


def secret_argv(argv: Iterable[str]) -> list[str | SecretArg]:
    """``argv`` with each item that holds the value of a secret-looking flag marked (the
    flag's name decides, as for environment variables); the items stay as many."""
    out: list[str | SecretArg] = []
    after_secret = False
    for arg in argv:
        if after_secret and not arg.startswith("-"):
            out.append(SecretArg(arg))
            after_secret = False
            continue
        after_secret = False
        name, eq, _ = arg.partition("=")
        if arg.startswith("-") and _SECRET_NAME.search(name.lstrip("-")):
            if eq:
                out.append(SecretArg(arg, f"{name}={REDACTED}"))
                continue
            after_secret = True
        out.append(arg)
    return out


def redact_argv(argv: Iterable[str], redact: Callable[[str], str] | None = None) -> str:
    """``argv`` as one line for a log, each secret (by flag name or by shape) redacted."""
    redact = redact or Redactor()
    return one_line(" ".join(
        item.shown if isinstance(item, SecretArg) else redact(item) for item in secret_argv(argv)
    ))  # fmt: skip


def derive(secret: str, purpose: str) -> str:
    """A secret of its own for ``purpose``, derived from ``secret`` (HMAC-SHA256): nothing to
    store, the same after a restart, and no way back to ``secret`` from it."""
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def one_line(text: str) -> str:
    """Control characters (CR and LF included) shown escaped, so a line stays one line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class Redactor:
    """Removes secrets from text: those it was told about, and any by name or shape."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self.known: set[str] = set()
        self.add(known)

    def add(self, values: Iterable[str]) -> None:
        self.known |= {v for v in values if len(v) >= 4}

    def __call__(self, text: str) -> str:
        for value in sorted(self.known, key=len, reverse=True):
            if value in text:
                text = text.replace(value, REDACTED)
        text = _NAMED.sub(lambda m: f"{m[1]}{m[2]}{m[3]}{REDACTED}", text)
        text = _BEARER.sub(lambda m: f"{m[1]} {REDACTED}", text)
        text = _SHAPE.sub(REDACTED, text)
        return _RANDOM.sub(REDACTED, text)
