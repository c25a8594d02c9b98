"""Generated secrets and private identifiers, one strategy per kind, for the redaction tests.

Every value is drawn at random (characters from the kind's alphabet, seeded by Hypothesis so a
failure replays), in the shape real sources hold: gitleaks' rules for the token kinds, NVML's
formats for the GPU ids. ``planted`` gives the text a source would hold for kinds that only
mean something in context (a port, a home path's owner, a serial, a bare name that a URL or
a home path elsewhere says is a host's or a user's: :data:`TAUGHT_BY`); ``secret_part`` says
what must not survive redaction; ``encodings`` lists the forms it must not survive in either.
``PASSWORD`` is a secret of no shape at all, private only by lab.toml's key for it.
``NON_SECRETS`` are values that look technical but must come through untouched.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
import html
import ipaddress
import json
import random
import string
from urllib.parse import quote, quote_plus, urlsplit

from hypothesis import strategies as st

ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "_-"
B64 = ALNUM + "+/"
HEX = "0123456789abcdef"
LOWER = string.ascii_lowercase

#: Values that must survive redaction as they are: model ids, GPU names, versions, figures,
#: file names, Python modules, quantizations, shortened hashes.
NON_SECRETS = (
    "Qwen/Qwen3-8B", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "google/gemma-3-27b-it", "openai/gpt-oss-20b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
    "mistralai/Mixtral-8x7B-Instruct-v0.1", "NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090",
    "NVIDIA GB10", "0.11.0", "v0.19.1", "570.133.20", "CUDA 12.8", "4096", "0.92", "131072",
    "23.7 GiB", "model-00001-of-00004.safetensors", "config.json", "qwen3-8b-q4_k_m.gguf",
    "vllm.v1.engine.core", "Q4_K_M", "AWQ", "bf16", "3f2a9c1b7d4e", "cuda:0",
    "max_num_batched_tokens=8192", "Qwen2VLForConditionalGeneration",
)  # fmt: skip


def _drawn(make: Callable[[random.Random], str]) -> st.SearchStrategy[str]:
    """A value built by ``make`` from a generator Hypothesis seeds: random characters that
    still replay and shrink by their seed."""
    return st.integers(min_value=0, max_value=2**48).map(lambda seed: make(random.Random(seed)))


def _chars(r: random.Random, alphabet: str, n: int) -> str:
    return "".join(r.choice(alphabet) for _ in range(n))


def _mixed(r: random.Random, alphabet: str, n: int, *need: str) -> str:
    """``n`` characters from ``alphabet`` holding at least one from each of ``need``."""
    chars = list(_chars(r, alphabet, n))
    for i, pool in enumerate(need):
        chars[r.randrange(i, n, len(need))] = r.choice(pool)
    return "".join(chars)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt(r: random.Random) -> str:
    header = {"alg": r.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
    claims = {"sub": _chars(r, ALNUM, 12), "iat": r.randrange(1_600_000_000, 1_800_000_000)}
    sig = _chars(r, URLSAFE, r.choice([43, 86]))
    return f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}.{sig}"


def _pem(r: random.Random) -> str:
    kind = r.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY",
                     "OPENSSH PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "DSA PRIVATE KEY"])  # fmt: skip
    body = base64.b64encode(r.randbytes(r.randrange(96, 400))).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join([f"-----BEGIN {kind}-----", *lines, f"-----END {kind}-----"])


def _uuid(r: random.Random) -> str:
    h = _chars(r, HEX, 32)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _pci(r: random.Random) -> str:
    bus, dev, fn = r.randrange(1, 256), r.randrange(0, 32), r.randrange(0, 8)
    short = f"{bus:02x}:{dev:02x}.{fn}"
    return r.choice([f"0000:{short}", f"00000000:{short}".upper(), short])


def _mac(r: random.Random) -> str:
    sep = r.choice(":-")
    mac = sep.join(f"{b:02x}" for b in r.randbytes(6))
    return mac.upper() if r.random() < 0.5 else mac


def _ipv4(r: random.Random) -> str:
    first = r.choice([10, 172, 192, 100, 34, 52, 141, 203])
    return f"{first}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"


def _ipv6(r: random.Random) -> str:
    top = r.choice([0x2001, 0x2A01, 0x2600, 0xFD12, 0xFE80])
    low = r.getrandbits(112) | 1
    return ipaddress.IPv6Address((top << 112) | low).compressed


def _label(r: random.Random, lo: int = 3, hi: int = 10) -> str:
    return r.choice(LOWER) + _chars(r, LOWER + string.digits, r.randrange(lo, hi) - 1)


def _hostname(r: random.Random) -> str:
    if r.random() < 0.3:
        return f"{_label(r)}.{r.choice(['lan', 'local', 'internal', 'home', 'corp'])}"
    labels = [_label(r) for _ in range(r.randrange(2, 4))]
    return ".".join([*labels, r.choice(["com", "net", "org", "io", "ai", "internal", "lan"])])


def _username(r: random.Random) -> str:
    return r.choice(LOWER) + _chars(r, LOWER, r.randrange(3, 8)) + _chars(r, string.digits, 2)


def _machine(r: random.Random) -> str:
    """A machine's bare name: letters then two digits (``dgx07``)."""
    return _chars(r, LOWER, r.randrange(3, 7)) + _chars(r, string.digits, 2)


def _private_url(r: random.Random) -> str:
    """A private endpoint: an address with a port, a site's own name, or a bare machine name."""
    route = r.choice(["/v1", "/v1/models", "/x", "/metrics", ""])
    pick = r.randrange(3)
    if pick == 0:
        return f"http://{_ipv4(r)}:{r.randrange(1024, 65536)}{route}"
    if pick == 1:
        host = f"{_label(r)}-{_label(r)}.{r.choice(['internal', 'lan', 'local', 'corp'])}"
        return f"https://{host}{route}"
    return f"http://{_machine(r)}:{r.randrange(1024, 65536)}{route}"


def _ipv6_subnet(r: random.Random) -> str:
    groups = _ipv6(r).split("::")[0].split(":")[: r.choice([2, 3, 4])]
    return ":".join(groups) + "::/" + str(r.choice([32, 48, 56, 64]))


def _abs_path(r: random.Random) -> str:
    top = r.choice(["data", "srv", "mnt", "scratch", "opt", "var/lib", "tmp", "workspace"])
    dirs = "/".join(_label(r, 4, 12) for _ in range(r.randrange(1, 4)))
    return f"/{top}/{dirs}/{_label(r, 3, 8)}.{r.choice(['log', 'gguf', 'bin', 'toml'])}"


#: One strategy per kind, each a random value of that kind.
KINDS: dict[str, st.SearchStrategy[str]] = {
    # OpenAI legacy key: sk- + 20 + T3BlbkFJ + 20 (gitleaks' openai-api-key)
    "openai": _drawn(lambda r: f"sk-{_chars(r, ALNUM, 20)}T3BlbkFJ{_chars(r, ALNUM, 20)}"),
    # OpenAI project key: sk-proj- + 58 + T3BlbkFJ + 58, with _ and -
    "openai_proj": _drawn(
        lambda r: f"sk-proj-{_chars(r, URLSAFE, 58)}T3BlbkFJ{_chars(r, URLSAFE, 57)}A"
    ),
    # Anthropic key: sk-ant-api03- + 93 + AA
    "anthropic": _drawn(lambda r: f"sk-ant-api03-{_chars(r, URLSAFE, 93)}AA"),
    # Hugging Face user token: hf_ + 34 letters
    "hf": _drawn(lambda r: "hf_" + _chars(r, string.ascii_letters, 34)),
    # Hugging Face organisation token: api_org_ + 34 letters
    "hf_org": _drawn(lambda r: "api_org_" + _chars(r, string.ascii_letters, 34)),
    # GitHub classic (ghp_ + 36) or fine-grained (github_pat_ 22 _ 59) token
    "github": _drawn(
        lambda r: f"ghp_{_chars(r, ALNUM, 36)}"
        if r.random() < 0.5
        else f"github_pat_{_chars(r, ALNUM, 22)}_{_chars(r, ALNUM, 59)}"
    ),
    # AWS access key id: AKIA/ASIA/ABIA/ACCA + 16 of A-Z2-7
    "aws_key_id": _drawn(
        lambda r: r.choice(["AKIA", "ASIA", "ABIA", "ACCA"]) + _chars(r, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
    ),
    # AWS secret access key: 40 base64 characters, upper, lower and digits mixed
    "aws_secret": _drawn(
        lambda r: _mixed(r, B64, 40, string.ascii_uppercase, string.ascii_lowercase, string.digits)
    ),
    # JWT: base64url JSON header and claims, and a signature
    "jwt": _drawn(_jwt),
    # PEM private key block of any key kind
    "pem": _drawn(_pem),
    # an Authorization header with a bearer token (the token is the secret part)
    "bearer_header": _drawn(
        lambda r: "Authorization: Bearer " + _mixed(r, URLSAFE + ".", r.randrange(24, 64), ALNUM, string.digits)
    ),
    # a random alphanumeric string of 32 to 48 characters, letters and digits mixed
    "high_entropy": _drawn(
        lambda r: _mixed(r, ALNUM, r.randrange(32, 49), string.ascii_letters, string.digits)
    ),
    # a random hex string of 32 to 64 digits (an API secret, a session id)
    "hex_secret": _drawn(lambda r: _mixed(r, HEX, r.randrange(32, 65), "abcdef", string.digits)),
    # an NVML GPU UUID: GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx
    "gpu_uuid": _drawn(lambda r: "GPU-" + _uuid(r)),
    # a MIG device UUID: MIG-<uuid>
    "mig_uuid": _drawn(lambda r: "MIG-" + _uuid(r)),
    # a board serial: 13 digits (NVIDIA's) or letters and digits
    "serial": _drawn(
        lambda r: _chars(r, string.digits, 13)
        if r.random() < 0.5
        else _mixed(r, string.ascii_uppercase + string.digits, 10, string.digits)
    ),
    # a PCI bus id: 0000:01:00.0, 00000000:01:00.0 or 01:00.0
    "pci": _drawn(_pci),
    # a MAC address, colon- or dash-separated, either case
    "mac": _drawn(_mac),
    # an IPv4 address, private or public, never loopback
    "ipv4": _drawn(_ipv4),
    # an IPv4 network in CIDR form
    "ipv4_subnet": _drawn(
        lambda r: f"{_ipv4(r).rpartition('.')[0]}.0/{r.choice([16, 20, 24, 26])}"
    ),
    # an IPv6 address (global, unique local or link-local), compressed
    "ipv6": _drawn(_ipv6),
    # an IPv6 network in CIDR form
    "ipv6_subnet": _drawn(_ipv6_subnet),
    # a private endpoint's URL: http://10.1.2.3:8000/v1, https://gpu-box.internal/x
    "private_url": _drawn(_private_url),
    # a host name: an FQDN (node7.corp.example.com) or a name on a private TLD (gpubox.lan)
    "hostname": _drawn(_hostname),
    # a machine's bare name (dgx07), which only a URL elsewhere in the report says is a host
    "bare_host": _drawn(_machine),
    # a login name standing alone, which only a home path elsewhere says is a user's
    "bare_user": _drawn(_username),
    # a TCP port above the figures a report holds
    "port": _drawn(lambda r: str(r.randrange(10000, 65536))),
    # a login name: letters then two digits
    "username": _drawn(_username),
    # an absolute path outside the system directories
    "abs_path": _drawn(_abs_path),
}  # fmt: skip


def secret_values() -> st.SearchStrategy[tuple[str, str]]:
    """(kind, value) for every kind in :data:`KINDS`."""
    return st.sampled_from(sorted(KINDS)).flatmap(lambda k: KINDS[k].map(lambda v: (k, v)))


#: Kinds private only because the same report says so elsewhere: what says so.
TAUGHT_BY: dict[str, Callable[[str], str]] = {
    "bare_host": lambda v: f"peer http://{v}:8000/v1 joined",
    "bare_user": lambda v: f"/home/{v}/models/x.gguf",
}

#: A password of no known shape: private only because lab.toml holds it under a secret's name.
PASSWORD = _drawn(lambda r: r.choice(string.ascii_uppercase) + _chars(r, LOWER, 7)
                  + _chars(r, string.digits, 2))  # fmt: skip


def planted(kind: str, value: str, taught: bool = True) -> str:
    """The text a source would hold with ``value`` in it; for the kinds of :data:`TAUGHT_BY`,
    with what says it is private first (``taught``), or alone (taught elsewhere)."""
    if kind in TAUGHT_BY:
        bare = f"then {value} went quiet"
        return f"{TAUGHT_BY[kind](value)} ; {bare}" if taught else bare
    if kind == "port":
        return (f"listening on 0.0.0.0:{value}", f"serving on port {value}",
                f"listening on :{value}")[int(value) % 3]  # fmt: skip
    if kind == "username":
        return f"/home/{value}/models/x.gguf"
    if kind == "serial":
        return f"serial {value}"
    return value


def secret_part(kind: str, value: str) -> str:
    """What of ``value`` must not survive: the bearer token, a path's directories, a
    network's address, a private URL's host, otherwise the whole value."""
    if kind == "bearer_header":
        return value.rpartition(" ")[2]
    if kind == "abs_path":
        return value.rpartition("/")[0]
    if kind in ("ipv4_subnet", "ipv6_subnet"):
        return value.partition("/")[0]
    if kind == "private_url":
        return urlsplit(value).hostname or value
    return value


def encodings(value: str) -> list[str]:
    """``value`` as it may appear in a report: raw, URL-quoted, form-quoted, HTML-escaped,
    JSON-escaped."""
    forms = [value, quote(value, safe=""), quote(value), quote_plus(value), html.escape(value),
             json.dumps(value)[1:-1]]  # fmt: skip
    return list(dict.fromkeys(forms))
