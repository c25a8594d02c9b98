"""The small pieces of lab.toml's validation: limits, patterns, and checks of one value.

Each check raises :class:`~labctl.errors.ConfigError` with a one-line message that names
the dotted key, shows the bad value (:func:`_show`, :func:`_key`: one line, bounded) and
says what is allowed. Nothing here imports the dataclasses, so :mod:`labctl.config.model`
and :mod:`labctl.config.load` both build on it.
"""

from __future__ import annotations

from collections.abc import Mapping
import ipaddress
import json
import math
import re
import socket
import string
from typing import Any

from labctl.errors import ConfigError

ENGINES = ("vllm", "llamacpp", "whispercpp", "openvla", "sim", "command")
#: The engines with a sleep mode (a deployment's ``sleep``); their adapters say ``sleeps``.
#: Container runtimes a deployment may run its engine through (``runtime``).
RUNTIMES = ("podman", "docker")
SLEEP_ENGINES = ("vllm", "sim")
#: The API families a ``command`` engine may say it serves (``serves``); the engines layer
#: routes each by its registry.
FAMILIES = ("chat", "completions", "embeddings", "transcriptions", "translations", "actions")
GPU_BACKENDS = ("auto", "nvml", "sim")
DEFAULT_LISTEN = "127.0.0.1:8080"
#: What one lab may hold; beyond these a file is a mistake (or an attack), not a lab.
MAX_DEPLOYMENTS, MAX_KEYS, MAX_GPUS, MAX_FILE_BYTES = 64, 1000, 64, 2**20
DAY, WEEK = 86400.0, 7 * 86400.0
#: Placeholders a ``command`` may use.
PLACEHOLDERS = ("host", "port", "model", "name")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_FLAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
_SECRET = re.compile(r"[!-~]+")  # printable ASCII without spaces: it travels in a header
_HEALTH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,255}")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]{1,80}")
#: A doctor check's code: kebab-case (``fabric-manager``).
_CHECK_CODE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+){0,15}")


def parse_listen(value: object, key: str = "lab.listen") -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) → (host, port).

    Raises:
        ConfigError: not HOST:PORT with a host name or IP address and a port in 0–65535.
    """
    if isinstance(value, str) and len(value) <= 300:
        host, sep, port = value.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            ok = _ip(host) is not None and ":" in host
        else:
            ok = _ip(host) is not None or bool(len(host) <= 253 and _HOSTNAME.fullmatch(host))
        if sep and ok and re.fullmatch(r"[0-9]{1,5}", port) and int(port) <= 65535:
            return host, int(port)
    raise ConfigError(f"{key} = {_show(value)}: use HOST:PORT, e.g. 127.0.0.1:8080")


def is_loopback(host: str) -> bool:
    """Whether ``host`` reaches this machine only: an address in 127.0.0.0/8 or ::1 (also
    as ``::ffff:127.x``), ``localhost``, or a name whose every address is one of those.

    A name that does not resolve is not loopback. Resolving a name can take as long as
    the system's resolver does; callers check what needs no lookup first.
    """
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    addr = _ip(name)
    if addr is not None:
        return _loopback_ip(addr)
    if name.lower().rstrip(".") == "localhost":
        return True
    if len(name) > 253 or not _HOSTNAME.fullmatch(name):
        return False
    try:
        infos = socket.getaddrinfo(name, None)
    except (OSError, UnicodeError, ValueError):
        return False
    found = [_ip(str(info[4][0])) for info in infos]
    return bool(found) and all(a is not None and _loopback_ip(a) for a in found)


def check_flag(name: object, value: object, at: str = "args") -> None:
    """One engine flag: a name that makes ``--name`` and a value that makes argv words.

    Raises:
        ConfigError: a bad name, a table or nested list, NaN or infinity, or a NUL byte.
    """
    if not isinstance(name, str) or not _FLAG.fullmatch(name):
        raise ConfigError(
            f"{at}.{_key(name)} is not a flag name; use letters, digits, '_' and '-', starting "
            "with a letter or digit"
        )
    scalar = (str, int, float)  # bool is an int: true is a bare flag
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list):
        ok = len(value) <= 256 and all(
            isinstance(v, scalar) and not isinstance(v, bool) for v in value
        )
    else:
        ok = value is None or isinstance(value, scalar)
    if not ok:
        raise ConfigError(
            f"{at}.{name} = {_show(value)}: engine flags take a string, number, boolean or list "
            "of strings and numbers"
        )
    for v in items:
        if isinstance(v, float) and not math.isfinite(v):
            what = "finite numbers" if isinstance(value, list) else "a finite number"
            raise ConfigError(f"{at}.{name} = {_show(value)}: give {what}")
        if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 63:
            raise ConfigError(f"{at}.{name} = {_show(value)}: give numbers that fit in 64 bits")
        if isinstance(v, str) and ("\0" in v or len(v) > 65536):
            raise ConfigError(
                f"{at}.{name}: the value contains a NUL byte; remove it"
                if "\0" in v
                else f"{at}.{name}: give at most 65536 characters"
            )


def sim_gpu_ids(text: str, prefix: str) -> list[str]:
    """``rtx-3090,h100-sxm`` or ``8xh100-sxm`` → the catalog ids, one per simulated GPU.

    ``prefix`` starts each message (``lab.sim_gpus = '…'``, ``--sim-gpus``). Ids are not
    looked up here.

    Raises:
        ConfigError: an empty list, a bad count, more than 64 GPUs in all.
    """
    ids: list[str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        count = 1
        counted = re.fullmatch(r"([0-9]{1,9})x(.*)", item)
        if counted:
            count, item = int(counted[1]), counted[2]
            if not 1 <= count <= MAX_GPUS:
                raise ConfigError(f"{prefix}: {raw.strip()!r} asks for {count} GPUs; use 1 to 64")
        ids.extend([item] * count)
        if len(ids) > MAX_GPUS:
            raise ConfigError(f"{prefix}: {len(ids)} GPUs in all; use 1 to 64")
    if not ids:
        raise ConfigError(
            f"{prefix} is empty; name catalog GPUs, e.g. rtx-3090,h100-sxm or 8xh100-sxm"
        )
    return ids


#: A GPU named by UUID, as ``nvidia-smi -L`` prints it (``GPU-3f2a…``; a MIG instance
#: ``MIG-…``, or the older ``MIG-GPU-…/gi/ci``): a unique prefix is enough, as ``nvidia-smi
#: -i`` takes one.
_GPU_UUID = re.compile(r"(?:GPU-|MIG-(?:GPU-)?)[0-9a-f][0-9a-f/-]{0,99}", re.IGNORECASE)
#: A GPU named by PCI bus id: ``0000:01:00.0``, or NVML's form with an 8-digit domain.
_PCI_BUS_ID = re.compile(r"([0-9a-f]{4}|[0-9a-f]{8}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])",
                         re.IGNORECASE)  # fmt: skip


def gpu_key(name: str) -> str | None:
    """A GPU's UUID (or its prefix) or PCI bus id as the lab compares them: lower case, a bus
    id in NVML's form (``00000000:01:00.0``), so any spelling of one GPU is one key (None:
    ``name`` is neither)."""
    if m := _PCI_BUS_ID.fullmatch(name):
        return f"{int(m[1], 16):08x}:{m[2]}:{m[3]}.{m[4]}".lower()
    return name.lower() if _GPU_UUID.fullmatch(name) else None


def gpu_list(value: object, at: str) -> tuple[tuple[int, ...], tuple[int | str, ...]]:
    """A deployment's ``gpus``: NVML indices, UUIDs or PCI bus ids, each GPU once.

    Returns the indices (-1 for a GPU named by UUID or bus id, until the lab resolves it
    against its GPUs) and, where any entry is such a name, the entries as given (else ``()``).

    Raises:
        ConfigError: not a list of 1 to 64 of them, an entry of neither shape, or a repeat.
    """
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_GPUS
        or not all((_whole(g) and 0 <= g < MAX_GPUS) or isinstance(g, str) for g in value)
    ):
        raise ConfigError(
            f"{at}.gpus = {_show(value)}: give a list of GPU indices (0 to {MAX_GPUS - 1}), "
            'e.g. [0] or [0, 1], or of UUIDs ("GPU-3f2a…") or PCI bus ids ("0000:01:00.0")'
        )
    keys: list[int | str] = []
    for g in value:
        key = g if isinstance(g, int) else gpu_key(g)
        if key is None:
            raise ConfigError(
                f"{at}.gpus = {_show(value)}: {_show(g)} is not a GPU index, UUID or PCI bus id; "
                f"give an index (0 to {MAX_GPUS - 1}), a UUID as `nvidia-smi -L` prints it "
                '("GPU-…", a '
                'unique prefix will do; "MIG-…" for a MIG instance) or a bus id ("0000:01:00.0")'
            )
        keys.append(key)
    if len(set(keys)) != len(keys):
        twice = next(g for g, k in zip(value, keys, strict=True) if keys.count(k) > 1)
        raise ConfigError(
            f"{at}.gpus = {value}: GPU {_show(twice)} is listed twice; list each GPU once"
        )
    named = not all(isinstance(g, int) for g in value)
    return tuple(g if isinstance(g, int) else -1 for g in value), tuple(value) if named else ()


def _check_placeholders(part: str, at: str) -> None:
    """``{host}``, ``{port}``, ``{model}``, ``{name}`` and ``{{ }}``, nothing else."""
    problem = None
    try:
        parsed = list(string.Formatter().parse(part))
    except ValueError as exc:
        text = str(exc)
        problem = (
            "a lone '}'" if text.startswith("Single '}'")
            else "a lone '{'" if text.startswith(("Single '{'", "expected '}'"))
            else f"a malformed placeholder ({text})"
        )  # fmt: skip
        parsed = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            problem = f"unknown placeholder {{{name}}}"
        elif spec or conversion:
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            problem = f"a conversion or format spec in {{{shown}}}"
        if problem:
            break
    if problem:
        raise ConfigError(
            f"{at} = {_show(part)}: {problem}; use {{host}}, {{port}}, {{model}} or {{name}} "
            "(and {{ }} for literal braces)"
        )


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _loopback_ip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(doc: Mapping[str, Any], key: str, at: str, low: int, high: int,
           default: int | None = None) -> int | None:  # fmt: skip
    """``doc[key]``, a whole number from ``low`` to ``high`` (``default`` when absent).

    Raises:
        ConfigError: naming the key, the value and the range.
    """
    value = doc.get(key, default)
    if value is not None and (not _whole(value) or not low <= value <= high):
        raise ConfigError(f"{at}.{key} = {_show(value)}: give a whole number from {low} to {high}")
    return None if value is None else int(value)


def _secret(value: object, least: int) -> bool:
    return isinstance(value, str) and least <= len(value) <= 1024 and bool(_SECRET.fullmatch(value))


def _model_id(value: str) -> bool:
    return len(value) <= 256 and value.isprintable() and bool(value.strip())


def _text(doc: Mapping[str, Any], key: str, at: str, what: str, longest: int) -> str | None:
    """An optional non-empty string without control characters, not starting with '-'."""
    value = doc.get(key)
    if value is not None and (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > longest
        or not value.isprintable()
        or value.startswith("-")
    ):
        raise ConfigError(
            f"{at}.{key} = {_show(value)}: give {what} without control characters (at most "
            f"{longest} characters, not starting with '-')"
        )
    return value


def _str_list(doc: Mapping[str, Any], key: str, at: str, longest: int) -> list[str]:
    value = doc.get(key, [])
    if (
        not isinstance(value, list)
        or len(value) > longest
        or not all(isinstance(v, str) and v and "\0" not in v and len(v) <= 4096 for v in value)
    ):
        raise ConfigError(
            f"{at}.{key} = {_show(value)}: give a list of at most {longest} non-empty strings"
        )
    return value


def _seconds(
    doc: Mapping[str, Any], key: str, at: str, default: float, low: float = 0.0,
    high: float = DAY,
) -> float:  # fmt: skip
    value = doc.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or not low <= value <= high
    ):
        span = f"from {low:g} to {high:g}" if low else f"up to {high:g}"
        unit = {DAY: " (1 day)", WEEK: " (7 days)", 3600.0: " (1 hour)"}.get(high, "")
        raise ConfigError(
            f"{at}.{key} = {_show(value)}: give a positive number of seconds {span}{unit}"
        )
    return float(value)


def _show(value: object, longest: int = 80) -> str:
    """``repr`` on one line, cut to ``longest`` characters (and safe on huge or deep values)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an integer past str()'s limit, or nesting
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= longest else text[: longest - 1] + "…"


def _kind(value: object) -> str:
    """What a value is, for messages that must not show it (a secret may be inside)."""
    if isinstance(value, bool):
        return "a boolean"
    kinds = ((str, "a string"), (int, "an integer"), (float, "a number"), (list, "a list"),
             (Mapping, "a table"))  # fmt: skip
    return next((k for t, k in kinds if isinstance(value, t)), f"a {type(value).__name__}")


def _key(name: object) -> str:
    """A key as TOML writes it: bare where it can be, else quoted; one line, bounded."""
    if isinstance(name, str) and _BARE_KEY.fullmatch(name):
        return name
    text = json.dumps(name) if isinstance(name, str) else _show(name)
    return text if len(text) <= 80 else text[:78] + '…"'
