"""The public report's redactor: what identifies the machine, its network or its owner goes.

``labctl report --public`` must be safe to paste into a GitHub issue, yet still readable:
``host-1`` talks to ``net-1.5:port-1`` on ``gpu-0`` reads better than a wall of ``[redacted]``.
So each private value is replaced by a stable, numbered stand-in (the same original, the same
stand-in, everywhere in one report, numbered in order of first appearance), in the manner of
``sos clean``; the map back to the originals is written only to a private file.

The passes run in a fixed order over each string. Each replacement is parked behind a
placeholder (private-use characters no pattern matches) until the end, so a stand-in is never
matched again by a later pass. The credential passes (PEM blocks, authorization headers,
``name=value`` secrets, tokens in their issuers' shapes, random-looking runs) are in
:mod:`labctl.report.shapes`, what names a host in :mod:`labctl.report.hosts`; this module holds
the scrubber, the pass order, the pass for the secrets the lab knows by value, and the passes
for what identifies the machine. Kept as they are: loopback and unspecified addresses, the
public hosts a report may name (``huggingface.co``, …), what :class:`Known` says to keep, and
system paths (``/usr``, ``/lib``, ``/lib32``, ``/lib64``, ``/bin``, ``/sbin``, ``/etc``,
``/dev``, ``/proc``, ``/sys``, ``/run``) and API routes (``/v1``, ``/api``, ``/vla``,
``/metrics``, ``/healthz``, …). ``/opt``, ``/var``, ``/tmp``, ``/srv``, ``/data`` and the rest
are mapped: what sits under them is the site's own. Commit and blob hashes of model revisions
(in cache paths, or after ``revision``, ``commit`` or ``sha``) are shortened to 12 hex digits,
never treated as secrets. A name a URL or ``host:port`` shows to be a host's, like a user a
home path names, is replaced wherever it stands alone too, and on a domain (``dgx01.lan``)
by the machine's own stand-in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import html
import ipaddress
import json
from pathlib import Path
import re
from typing import Any
from urllib.parse import quote, quote_plus, unquote

from labctl.home import write_private
from labctl.report import shapes
from labctl.report.hosts import (
    DOMAIN,
    FQDN,
    LOOPBACK,
    NOT_HOSTS,
    PRIVATE_TLDS,
    PUBLIC_HOSTS,
    TLDS,
    fqdn,
    is_ip,
    learnable,
)  # fmt: skip
from labctl.report.shapes import PARKED, entropy, looks_random
from labctl.secrets import _SECRET_NAME

__all__ = ["NOUNS", "PRIVATE_TLDS", "PUBLIC_HOSTS", "TLDS", "Known", "Scrubber", "entropy",
           "looks_random"]  # fmt: skip

#: Categories in the order the summary names them, with the noun for one of each.
NOUNS = {
    "hostname": "hostname", "address": "address", "mac": "MAC address", "port": "port",
    "user": "username", "path": "path", "gpu": "GPU id", "serial": "serial",
    "pci": "PCI bus id", "token": "token",
}  # fmt: skip

_SYSTEM_DIRS = frozenset({
    "usr", "lib", "lib32", "lib64", "bin", "sbin", "etc", "dev", "proc", "sys", "run",
})  # fmt: skip
_ROUTES = frozenset({
    "v1", "api", "vla", "metrics", "healthz", "readyz", "health", "ping", "version",
    "tokenize",
})  # fmt: skip
_HASH_KEYS = frozenset({
    "revision", "commit", "sha", "commit_hash", "blob", "blob_hash", "etag",
})  # fmt: skip
#: JSON keys the secret-name rule would take for secret although their values are figures
#: or model ids (``max_tokens``, ``tokenizer``, ``author``).
_NOT_SECRET_KEY = re.compile(r"(?i)tokeni[sz]|tokens|author")

# Placeholders: U+E000, the index in U+E100..U+E1FF digits, U+E001, all in PARKED. No pattern
# here or in shapes matches these characters (they are not word characters, and every negated
# class excludes them).
_PH_RE = re.compile("\ue000([\ue100-\ue1ff]+)\ue001")
_PH_CHARS = re.compile(f"[{PARKED}]")

_KEEP_EDGE = (r"(?<![\w-])", r"(?![\w-])")
_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
_PERCENT = re.compile(r"[\w.~!*'()+/:?=&@\[\]%-]+")  # a URL-ish run; decoded when it holds %XX
_GPU_ID = re.compile(r"\b(?:MIG-GPU-|MIG-|GPU-)[0-9a-fA-F]{8,}(?:-[0-9a-fA-F]{1,12}){0,4}"
                     r"(?:/\d+/\d+)?(?![\w-])")  # fmt: skip
#: A revision's commit or blob hash: in a cache path, or named as one in free text.
_HASHES = re.compile(r"\b(snapshots/|blobs/|sha256[:-]|(?i:revision|commit|sha)(?:_?hash|_id)?"
                     r"['\"]?\s*[:=]?\s*['\"]?)([0-9a-f]{64}|[0-9a-f]{40})\b")  # fmt: skip
_PATH = re.compile(r"(?<![\w\]).~/%-])/(?=[\w@+~-])[\w.@+~-]+(?:/[\w.@+~-]+)*/?")
_HOME_USER = re.compile(r"(?<![\w\]).~/%-])/(home|Users)/([A-Za-z_][\w.-]{0,31})(?=/|\b)")
_URL = re.compile(
    rf"\b([A-Za-z][A-Za-z0-9+.-]{{1,15}})://(?:([^\s/@?#\"'<>]+)@)?"
    rf"(\[[0-9A-Fa-f:.]+(?:%\w+)?\]|[^\s/:?#\"'<>\[\]\\{PARKED}]+)(?::(\d{{1,5}}))?"
)
_MAC = re.compile(r"(?<![\w:-])[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}(?![\w:-])")
_PCI = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{4,8}:)?[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7](?![\w.:])"
)
_HOST_PORT = re.compile(
    r"(?<![\w.:/-])(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253}[A-Za-z0-9])?)"
    r":(\d{1,5})(?![\w.:])"
)
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f:]*::|(?:[0-9A-Fa-f]{1,4}:){2})"
                   r"((?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|\d{1,3}(?:\.\d{1,3}){3}))"
                   r"(/\d{1,3})?(?![\w:.])")  # fmt: skip
_IPV4 = re.compile(r"(?<![\w.])((?:\d{1,3}\.){3}\d{1,3})(/\d{1,2})?(?![\w]|\.\d)")
_PORT = re.compile(r"(?i)(--port[= ]|\bport(?:['\"]?\s*[:=]\s*['\"]?|\s+))(\d{1,5})\b")
#: ``:N`` standing alone (``listening on :8000``): not a time's or a ratio's (``12:30``).
_BARE_PORT = re.compile(r"(?<![\w:.\])\[-])(:)(\d{4,5})(?![\w:.]|/\d)")
_SERIAL = re.compile(r"(?i)\b(serial(?:[ _]?number)?['\"]?[ :=#]+['\"]?)"
                     r"(?=[A-Za-z]*\d)([A-Za-z0-9]{6,})\b")  # fmt: skip
_HEX_VALUE = re.compile(r'"?([0-9a-f]{64}|[0-9a-f]{40})"?')


@dataclass
class Known:
    """What the lab knows is private or must be kept, gathered from its sources."""

    hostnames: set[str] = field(default_factory=set)  # the machine's names, lab.toml hosts
    usernames: set[str] = field(default_factory=set)  # the user running the lab, home owners
    secrets: set[str] = field(default_factory=set)  # exact secret values (tokens, keys)
    keep: set[str] = field(default_factory=set)  # never touched: model ids, GPU names, …
    gpu_uuids: dict[str, int] = field(default_factory=dict)  # "GPU-…" → its index: gpu-<index>
    cache_roots: dict[str, str] = field(default_factory=dict)  # absolute dir → shown name


def _ph_index(i: int) -> str:
    digits = []
    while True:
        i, d = divmod(i, 256)
        digits.append(chr(0xE100 + d))
        if not i:
            return "\ue000" + "".join(reversed(digits)) + "\ue001"


class _Parked:
    """The replacements of one string, parked behind placeholders until the last pass."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def park(self, shown: str) -> str:
        self.parts.append(shown)
        return _ph_index(len(self.parts) - 1)

    def resolve(self, text: str) -> str:
        def back(m: re.Match[str]) -> str:
            i = 0
            for ch in m[1]:
                i = i * 256 + ord(ch) - 0xE100
            return self.parts[i]

        return _PH_RE.sub(back, text)


def _hiding(find: Callable[[str, shapes.Hide], str]) -> Callable[[Scrubber, str, _Parked], str]:
    """A pass of :mod:`labctl.report.shapes` as a scrubber's step: each secret it finds is
    replaced by its token stand-in, parked."""

    def step(self: Scrubber, s: str, p: _Parked) -> str:
        return find(s, lambda v: p.park(self._token(v)))

    return step


class Scrubber:
    """Replaces what is private in a report by consistent stand-ins and remembers the map."""

    def __init__(self, known: Known, credentials_only: bool = False) -> None:
        self.known = known
        #: Only credentials (the operator's own report keeps hosts, addresses and paths).
        self.steps = self._credential_steps if credentials_only else self._steps
        self._map: dict[str, dict[str, str]] = {c: {} for c in NOUNS}
        self._keys: dict[str, dict[str, str]] = {c: {} for c in NOUNS}  # normalised → shown
        self._nets: dict[str, int] = {}  # IPv4 /24 network → N of net-N
        self._nets6: dict[str, int] = {}  # IPv6 address → N of ip6-N
        self._users = {u for u in known.usernames if _usable_user(u)}
        self._users_re: re.Pattern[str] | None = None
        self._paths_seen: dict[str, str] = {}  # path → shown: a path's stand-in, once
        self._gpu_next = max(known.gpu_uuids.values(), default=-1) + 1
        self._gpus = {u.lower(): i for u, i in known.gpu_uuids.items()}
        self._roots = sorted(known.cache_roots.items(), key=lambda kv: -len(kv[0]))
        self._keep = _alternation(known.keep, *_KEEP_EDGE)
        self._secrets = _alternation(
            {e for s in known.secrets if len(s) >= 4 for e in _encodings(s)}, "", ""
        )
        self._host_names = {h.lower() for h in known.hostnames if h and not is_ip(h)}
        self._hosts_re: re.Pattern[str] | None = None

    # -- public ---------------------------------------------------------------------------

    def text(self, s: str) -> str:
        """One free-text string, scrubbed."""
        self._learn(s)
        return self._scrub(s, decode=True)

    def learn(self, obj: Any) -> None:
        """Learn the hosts and users a tree names (URLs, ``host:port``, home paths) without
        scrubbing it: a report's sources, so a name said only where the report cuts a text
        short is still replaced where the report shows it."""
        self._learn_tree(obj)

    def value(self, obj: Any) -> Any:
        """A JSON-like tree, scrubbed into a new tree: strings as text, dict keys too, and the
        values of keys whose names say what they hold (ports, serials, bus ids, secrets,
        revision hashes) by that name."""
        self._learn_tree(obj)
        return self._value(obj)

    def counts(self) -> dict[str, int]:
        """Category → how many distinct values were replaced so far (categories with none left out)."""
        return {c: len(m) for c, m in self._map.items() if m}

    def mapping(self) -> dict[str, dict[str, str]]:
        """Category → {original: replacement}: private, it undoes the redaction."""
        return {c: dict(m) for c, m in self._map.items() if m}

    def summary(self) -> str:
        """One line for the report: ``redacted 2 hostnames, 1 address, 3 tokens``."""
        parts = [f"{n} {_plural(NOUNS[c], n)}" for c, n in self.counts().items()]
        return "redacted " + ", ".join(parts) if parts else "nothing to redact"

    def write_map(self, path: Path) -> None:
        """The mapping as JSON, readable by its owner only (it holds the originals)."""
        write_private(path, json.dumps(self.mapping(), indent=2, sort_keys=True) + "\n")

    # -- the tree -------------------------------------------------------------------------

    def _learn_tree(self, obj: Any) -> None:
        if isinstance(obj, str):
            self._learn(obj)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                self._learn_tree(k)
                self._learn_tree(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                self._learn_tree(v)

    def _value(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self._scrub(obj, decode=True)
        if isinstance(obj, list | tuple):
            return [self._value(v) for v in obj]
        if isinstance(obj, dict):
            return {
                self._scrub(str(k), decode=True): self._keyed(str(k), v) for k, v in obj.items()
            }
        return obj

    def _keyed(self, key: str, v: Any) -> Any:
        name = key.lower()
        scalar = isinstance(v, str | int) and not isinstance(v, bool)
        if scalar and (name == "port" or name.endswith("_port")) and str(v).strip().isdigit():
            return self._stand("port", str(int(v)), str(v), lambda n: f"port-{n}")
        if scalar and (name == "serial" or name.endswith("_serial")) and str(v).strip():
            return self._stand("serial", str(v), str(v), lambda n: f"serial-{n}")
        if isinstance(v, str) and name in ("pci_bus_id", "bus_id") and v.strip():
            return self._stand("pci", v.lower(), v, lambda n: f"pci-{n}")
        if isinstance(v, str) and name in _HASH_KEYS and (m := _HEX_VALUE.fullmatch(v)):
            return m[1][:12]
        if (
            isinstance(v, str) and v and v not in self.known.keep
            and _SECRET_NAME.search(key) and not _NOT_SECRET_KEY.search(key)
        ):  # fmt: skip
            return self._token(v)
        return self._value(v)

    # -- the passes -----------------------------------------------------------------------

    def _learn(self, s: str) -> None:
        """Users named by home paths and hosts named by URLs or ``host:port`` anywhere are
        replaced everywhere, as words too."""
        for t in (s, unquote(s)) if _ENCODED.search(s) else (s,):
            for m in _HOME_USER.finditer(t):
                if _usable_user(m[2]) and m[2] not in self._users:
                    self._users.add(m[2])
                    self._users_re = None
            for m in _URL.finditer(t):
                self._learn_host(m[3].rstrip(".,;)"))
            for m in _HOST_PORT.finditer(t):  # a word before a port: a host's name only if
                if self._hostlike(m[1]) and (
                    "." in m[1]
                    or (  # it looks like a machine's
                        1024 <= int(m[2]) < 65536 and any(c.isdigit() for c in m[1])
                    )
                ):
                    self._learn_host(m[1])

    def _learn_host(self, host: str) -> None:
        low = host.lower().rstrip(".")
        if low in self._host_names or host in self.known.keep or not learnable(low):
            return
        self._host_names.add(low)
        self._hosts_re = None

    def _hosts(self) -> re.Pattern[str] | None:
        """The hosts known or learned, with any domain after them (``dgx01.lan``)."""
        if self._hosts_re is None and self._host_names:
            self._hosts_re = _alternation(self._host_names, r"(?<![\w-])",
                                          rf"{DOMAIN}(?![\w-])", re.IGNORECASE)  # fmt: skip
        return self._hosts_re

    def _scrub(self, s: str, decode: bool) -> str:
        s = _PH_CHARS.sub("\ufffd", s)
        p = _Parked()
        if decode and _ENCODED.search(s):
            s = _PERCENT.sub(lambda m: self._percent(m[0], p), s)
        if self._keep:
            s = self._keep.sub(lambda m: p.park(m[0]), s)
        for step in self.steps:
            s = step(self, s, p)
        return p.resolve(s)

    def _percent(self, run: str, p: _Parked) -> str:
        if not _ENCODED.search(run):
            return run
        plain = unquote(run)
        scrubbed = self._scrub(plain, decode=False)
        if scrubbed == plain:
            return run
        literal = "".join(set(_ENCODED.sub("", run)))  # encoded as it was
        return p.park(quote(scrubbed, safe=literal))

    def _known_secrets(self, s: str, p: _Parked) -> str:
        return self._secrets.sub(lambda m: p.park(self._token(m[0])), s) if self._secrets else s

    # the credential passes of shapes, each secret they find hidden as a token
    _pem = _hiding(shapes.pem)
    _auth = _hiding(shapes.auth)
    _named = _hiding(shapes.named)
    _shapes = _hiding(shapes.token_shapes)

    def _gpu_ids(self, s: str, p: _Parked) -> str:
        return _GPU_ID.sub(lambda m: p.park(self._gpu(m[0])), s)

    def _paths(self, s: str, p: _Parked) -> str:
        return _PATH.sub(lambda m: p.park(self._path(m[0])), s)

    def _hashes(self, s: str, p: _Parked) -> str:
        return _HASHES.sub(lambda m: p.park(m[1] + m[2][:12]), s)

    def _home_users(self, s: str, p: _Parked) -> str:
        s = _HOME_USER.sub(lambda m: self._home(m, p), s)
        if self._users and self._users_re is None:
            self._users_re = _alternation(self._users, r"(?<![\w-])", r"(?![\w-])")
        if self._users_re is None:
            return s
        return self._users_re.sub(lambda m: p.park(self._user(m[0])), s)

    def _home(self, m: re.Match[str], p: _Parked) -> str:
        if not _usable_user(m[2]):
            return m[0]
        return f"/{m[1]}/" + p.park(self._user(m[2]))

    def _urls(self, s: str, p: _Parked) -> str:
        return _URL.sub(lambda m: self._url(m, p), s)

    def _url(self, m: re.Match[str], p: _Parked) -> str:
        out = m[1] + "://"
        if m[2]:
            out += (m[2] if not _PH_CHARS.sub("", m[2]) else p.park(self._token(m[2]))) + "@"
        out += p.park(self._host(m[3], strict=False))
        if m[4]:
            out += ":" + p.park(self._port(m[4]))
        return out

    def _host_ports(self, s: str, p: _Parked) -> str:
        return _HOST_PORT.sub(lambda m: self._host_port(m, p), s)

    def _host_port(self, m: re.Match[str], p: _Parked) -> str:
        host, port = m[1], m[2]
        bare = host.strip("[]")
        if host.startswith("[") and not is_ip(bare):
            return m[0]
        if not (is_ip(bare) or self._hostlike(host)) or not 0 < int(port) < 65536:
            return m[0]
        if "." not in host and not host.startswith("[") and int(port) < 10:
            return m[0]
        shown = self._host(bare, strict=False)
        if host.startswith("["):
            shown = f"[{shown}]"
        return p.park(shown) + ":" + p.park(self._port(port))

    def _hostlike(self, host: str) -> bool:
        if "." in host:
            return (
                fqdn(host)
                or host.lower() in PUBLIC_HOSTS
                or bool((known := self._hosts()) and known.fullmatch(host))
            )
        return (
            not host.isdigit()
            and host.lower() not in NOT_HOSTS
            and not re.fullmatch(r"[0-9A-Fa-f]+", host)
        )

    def _macs(self, s: str, p: _Parked) -> str:
        return _MAC.sub(lambda m: p.park(self._stand("mac", m[0].lower().replace("-", ":"),
                                                      m[0], lambda n: f"mac-{n}")), s)  # fmt: skip

    def _pcis(self, s: str, p: _Parked) -> str:
        return _PCI.sub(lambda m: p.park(self._stand("pci", m[0].lower(), m[0],
                                                     lambda n: f"pci-{n}")), s)  # fmt: skip

    def _ipv6s(self, s: str, p: _Parked) -> str:
        return _IPV6.sub(lambda m: self._ip(m, p), s)

    def _ipv4s(self, s: str, p: _Parked) -> str:
        return _IPV4.sub(lambda m: self._ip(m, p), s)

    def _ip(self, m: re.Match[str], p: _Parked) -> str:
        if not is_ip(m[1]):
            return m[0]
        return p.park(self._address(m[1], m[2] or ""))

    def _ports(self, s: str, p: _Parked) -> str:
        s = _PORT.sub(lambda m: m[1] + p.park(self._port(m[2])), s)
        return _BARE_PORT.sub(
            lambda m: m[1] + p.park(self._port(m[2])) if 1024 <= int(m[2]) < 65536 else m[0], s
        )

    def _serials(self, s: str, p: _Parked) -> str:
        return _SERIAL.sub(
            lambda m: m[1] + p.park(self._stand("serial", m[2], m[2], lambda n: f"serial-{n}")), s
        )

    def _hostnames(self, s: str, p: _Parked) -> str:
        if known := self._hosts():
            s = known.sub(lambda m: p.park(self._host(m[0], strict=False)), s)
        return FQDN.sub(lambda m: p.park(self._host(m[1], strict=True)), s)

    _randoms = _hiding(shapes.randoms)

    _steps: tuple[Callable[[Scrubber, str, _Parked], str], ...] = (
        _known_secrets, _pem, _auth, _named, _shapes, _gpu_ids, _paths, _hashes, _home_users,
        _urls, _macs, _pcis, _host_ports, _ipv6s, _ipv4s, _ports, _serials, _hostnames, _randoms,
    )  # fmt: skip
    _credential_steps: tuple[Callable[[Scrubber, str, _Parked], str], ...] = (
        _known_secrets, _pem, _auth, _named, _shapes, _randoms,
    )  # fmt: skip

    # -- the stand-ins --------------------------------------------------------------------

    def _stand(self, cat: str, key: str, original: str, make: Callable[[int], str]) -> str:
        keys = self._keys[cat]
        if key not in keys:
            keys[key] = make(len(keys) + 1)
        self._map[cat].setdefault(original, keys[key])
        return keys[key]

    def _token(self, v: str) -> str:
        return self._stand("token", v, v, lambda n: f"[secret-{n}]")

    def _port(self, v: str) -> str:
        return self._stand("port", str(int(v)), v, lambda n: f"port-{n}")

    def _user(self, v: str) -> str:
        return self._stand("user", v, v, lambda n: f"user-{n}")

    def _gpu(self, v: str) -> str:
        low = v.lower()
        index = self._gpus.get(low)
        if index is None:
            index = next((i for u, i in self._gpus.items() if u.startswith(low)), None)
        if index is None:
            index = self._gpu_next
            self._gpu_next += 1
            self._gpus[low] = index
        shown = f"gpu-{index}"
        self._map["gpu"].setdefault(v, shown)
        return shown

    def _address(self, ip: str, prefix: str) -> str:
        addr = ipaddress.ip_address(ip.split("%")[0])
        if addr.is_loopback or addr.is_unspecified:
            return ip + prefix
        if addr.version == 6:
            return self._stand("address", addr.compressed + prefix, ip + prefix,
                               lambda _: f"ip6-{_number(self._nets6, addr.compressed)}{prefix}")  # fmt: skip
        net, _, last = ip.rpartition(".")
        return self._stand("address", ip + prefix, ip + prefix,
                           lambda _: f"net-{_number(self._nets, net)}.{last}{prefix}")  # fmt: skip

    def _host(self, host: str, strict: bool) -> str:
        """A host's stand-in; ``strict`` (a bare word, not a URL's or ``host:port``'s host)
        also lets through what does not look like a host name after all."""
        low = host.lower().rstrip(".")
        if is_ip(host.strip("[]")):
            return self._address(host.strip("[]"), "")
        if low in LOOPBACK or low in PUBLIC_HOSTS or host in self.known.keep:
            return host
        if strict and not (fqdn(host) or ((known := self._hosts()) and known.fullmatch(host))):
            return host
        first = low.partition(".")[0]  # a known machine's FQDN: the machine's stand-in
        key = first if first != low and first in self._host_names else low
        return self._stand("hostname", key, host, lambda n: f"host-{n}")

    def _path(self, path: str) -> str:
        if path not in self._paths_seen:
            self._paths_seen[path] = self._new_path(path)
        return self._paths_seen[path]

    def _new_path(self, path: str) -> str:
        for root, shown in self._roots:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return shown + _HASHES.sub(
                    lambda m: m[1] + m[2][:12], path[len(root.rstrip("/")) :]
                )
        trail = "/" if path.endswith("/") and len(path) > 1 else ""
        parts = path.rstrip("/").split("/")[1:]
        if parts[0] in _SYSTEM_DIRS or parts[0] in _ROUTES:
            return path
        if len(parts) == 1:
            return "/" + self._scrub(parts[0], decode=False) + trail
        base = self._scrub(parts[-1], decode=False)
        if len(parts) == 2 and parts[0] == "root":
            return path
        if len(parts) <= 3 and parts[0] in ("home", "Users") and _usable_user(parts[1]):
            user = self._user(parts[1])
            return f"/{parts[0]}/{user}" + (f"/{base}" if len(parts) == 3 else "") + trail
        directory = "/" + "/".join(parts[:-1])
        return self._stand("path", directory, directory, lambda n: f"dir-{n}") + f"/{base}{trail}"


def _number(numbers: dict[str, int], key: str) -> int:
    return numbers.setdefault(key, len(numbers) + 1)


def _usable_user(name: str) -> bool:
    return len(name) >= 3 and name != "root"


def _plural(noun: str, n: int) -> str:
    if n == 1:
        return noun
    return noun + ("es" if noun.endswith("ss") else "s")


def _encodings(s: str) -> set[str]:
    return {s, quote(s, safe=""), quote(s), quote_plus(s), html.escape(s), json.dumps(s)[1:-1]}


def _alternation(
    values: set[str], before: str, after: str, flags: int = 0
) -> re.Pattern[str] | None:
    if not values:
        return None
    words = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
    return re.compile(f"{before}(?:{words}){after}", flags)
