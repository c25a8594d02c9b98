"""What names a host, for the public report's redactor: the public hosts a report may name,
the top-level labels that make a dotted word a host's name, the words that precede ``:N``
without being hosts, and which names a URL or ``host:port`` shows are worth learning as a
host's (to replace them wherever they stand alone)."""

from __future__ import annotations

import ipaddress
import re

__all__ = ["DOMAIN", "FQDN", "LOOPBACK", "NOT_HOSTS", "PRIVATE_TLDS", "PUBLIC_HOSTS", "TLDS",
           "fqdn", "is_ip", "learnable"]  # fmt: skip

#: Public hosts a report may name as they are.
PUBLIC_HOSTS = frozenset({
    "huggingface.co", "hf.co", "cdn-lfs.huggingface.co", "cdn-lfs.hf.co", "github.com",
    "raw.githubusercontent.com", "objects.githubusercontent.com", "pypi.org",
    "files.pythonhosted.org", "docs.vllm.ai", "vllm.ai", "blog.vllm.ai", "download.pytorch.org",
    "pytorch.org", "developer.nvidia.com", "docs.nvidia.com", "nvcr.io", "ghcr.io",
    "docker.io", "registry-1.docker.io", "hub.docker.com", "ollama.com", "registry.ollama.ai",
})  # fmt: skip
#: Top-level labels that make a dotted word of 3 or more labels a host name.
TLDS = frozenset({
    "com", "net", "org", "io", "ai", "dev", "app", "cloud", "edu", "gov", "mil", "int", "co",
    "uk", "de", "fr", "nl", "eu", "us", "ca", "jp", "cn", "kr", "in", "ru", "ch", "se", "no",
    "fi", "dk", "pl", "it", "es", "au", "br", "info", "biz", "me", "tech", "xyz", "site",
    "lan", "local", "internal", "home", "corp", "localdomain", "intranet", "private",
})  # fmt: skip
#: Top-level labels private to a site: two labels (``gpubox.lan``) already name a host.
PRIVATE_TLDS = frozenset({
    "lan", "local", "internal", "home", "corp", "localdomain", "intranet", "private",
})  # fmt: skip
#: Names of the loopback host.
LOOPBACK = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
#: Single words that precede ``:N`` without being hosts (``cuda:0``, ``rank:3``).
NOT_HOSTS = frozenset({
    "cuda", "cpu", "gpu", "xpu", "npu", "mps", "device", "rank", "step", "line", "epoch",
    "layer", "worker", "tp", "pp", "dp", "ep", "shard", "http", "https", "tcp", "udp", "unix",
    "file",
})  # fmt: skip
#: A top-level label, longest first.
_TLD = "|".join(sorted(TLDS, key=len, reverse=True))
#: A dotted name ending in a top-level label (``node7.corp.example.com``).
FQDN = re.compile(r"(?<![\w.@-])((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                  rf"(?i:{_TLD}))(?![\w-]|\.[A-Za-z0-9]|\()")  # fmt: skip
#: What may follow a known host's name to make an FQDN of it (``dgx01`` → ``dgx01.lan``).
DOMAIN = (rf"(?:(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?)*\.(?:{_TLD})"
          r"(?![\w-]|\.[A-Za-z0-9]|\())?")  # fmt: skip
#: A name a URL or ``host:port`` shows that is worth learning as a host's.
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def is_ip(s: str) -> bool:
    """Whether ``s`` is an IPv4 or IPv6 address (with any zone: ``fe80::1%eth0``)."""
    try:
        ipaddress.ip_address(s.split("%")[0])
    except ValueError:
        return False
    return True


def fqdn(word: str) -> bool:
    """Whether a dotted word names a host by its top-level label."""
    labels = word.lower().rstrip(".").split(".")
    if len(labels) < 2 or not labels[-1].isalpha():
        return False
    return (len(labels) >= 3 and labels[-1] in TLDS) or labels[-1] in PRIVATE_TLDS


def learnable(name: str) -> bool:
    """Whether a lower-cased name a URL or ``host:port`` shows is a site's own host's, worth
    replacing wherever it stands alone: a host's name with a letter in it, of 3 characters or
    more when it is one word, neither an address, nor loopback, nor public, nor a device's
    (``cuda``)."""
    return (
        bool(_HOST_NAME.fullmatch(name) and re.search("[a-z]", name))
        and not is_ip(name)
        and name not in LOOPBACK
        and name not in PUBLIC_HOSTS
        and name not in NOT_HOSTS
        and ("." in name or len(name) >= 3)
    )
