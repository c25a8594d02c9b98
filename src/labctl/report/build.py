"""A report from the lab's sources: assembled, then redacted for the public or kept whole.

What the redactor must know comes from the same sources (:func:`known_from`): the machine's
names and the lab's hosts, the user and the owner of ``$LABCTL_HOME``, every secret lab.toml
and the environment hold, the GPUs' UUIDs (shown as ``gpu-<index>``), the model cache's
places (shown as ``<hf-cache>``…), and what must survive (model ids, GPU model names,
deployment names). A private report keeps everything but credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import re
import tomllib
from typing import Any
from urllib.parse import urlsplit

from labctl.report.document import assemble, short_hashes
from labctl.report.redact import Known, Scrubber
from labctl.secrets import looks_secret

#: Environment variables whose values are secrets however they are named (besides those
#: :func:`labctl.secrets.looks_secret` finds).
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "LABCTL_TOKEN",
              "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")  # fmt: skip


def build(
    src: dict[str, Any],
    models: dict[str, Any] | None,
    plans: Sequence[dict[str, Any]],
    *,
    public: bool,
    env: Mapping[str, str] | None = None,
    hosts: Iterable[str] = (),
    users: Iterable[str] = (),
) -> tuple[dict[str, Any], Scrubber | None]:
    """The report's document, and the scrubber that redacted it (None: a private report).

    ``env`` is the environment the report runs in (its secret values are redacted too);
    ``hosts`` and ``users`` are names this machine also goes by (the CLI's own).
    """
    doc = short_hashes(assemble(src, models, plans, public=public))
    known = known_from(src, models, env or {}, hosts, users)
    if not public:  # credentials only: a path or a host is the operator's to see
        return Scrubber(known, credentials_only=True).value(doc), None
    scrubber = Scrubber(known)
    scrubber.learn([src, models])  # what the report cuts short may still name a host
    out = scrubber.value(doc)
    out["redaction"] = {"summary": scrubber.summary(), "counts": scrubber.counts()}
    return out, scrubber


def known_from(
    src: dict[str, Any],
    models: dict[str, Any] | None,
    env: Mapping[str, str],
    hosts: Iterable[str] = (),
    users: Iterable[str] = (),
) -> Known:
    """What the redactor must replace and must keep, read from the report's sources."""
    lab = src.get("lab") or {}
    k = Known()
    for name in (lab.get("hostname"), lab.get("fqdn"), *hosts):
        if isinstance(name, str) and name and name not in ("localhost", "localhost.localdomain"):
            k.hostnames.add(name)
            k.hostnames.add(name.split(".")[0])
    k.usernames |= {u for u in (lab.get("user"), *users) if isinstance(u, str) and u}
    home = str(lab.get("home") or "")
    if m := re.match(r"/(?:home|Users)/([^/]+)", home):
        k.usernames.add(m.group(1))
    for url in (lab.get("url"), *(d.get("url") for d in src.get("deployments") or [])):
        host = urlsplit(str(url or "")).hostname
        if host and not _loopback(host):
            k.hostnames.add(host)
    config = _toml(str(lab.get("config_text") or ""))
    for host in (config.get("lab") or {}).get("allowed_hosts") or []:
        if isinstance(host, str) and not _loopback(host):
            k.hostnames.add(host.split(":")[0])
    k.secrets |= set(_secret_values(config))
    for name, value in env.items():
        if len(value) >= 8 and (name in SECRET_ENV or looks_secret(name, "")):
            k.secrets.add(value)
    for g in src.get("gpus") or []:
        if isinstance(g.get("uuid"), str) and isinstance(g.get("index"), int):
            k.gpu_uuids[g["uuid"]] = g["index"]
        if isinstance(g.get("name"), str):
            k.keep.add(g["name"])
    for d in src.get("deployments") or []:  # a model given as a path is no id to keep
        k.keep |= {str(v) for v in (d.get("name"), d.get("model"), d.get("served_model"))
                   if v and not str(v).startswith(("/", "~", "."))}  # fmt: skip
    if models:
        for m in models.get("models") or []:
            if isinstance(m.get("repo_id"), str) and not m["repo_id"].startswith("/"):
                k.keep.add(m["repo_id"])
        roots = {str(models.get("cache_dir") or ""): "<hf-cache>"}
        roots |= {str(p): "<ollama>" for p in models.get("ollama") or []}
        roots |= {str(p): f"<models-{i}>" for i, p in enumerate(models.get("paths") or [], 1)}
        k.cache_roots |= {r: n for r, n in roots.items() if r.startswith("/")}
    if home.startswith("/"):
        k.cache_roots[home] = "<labctl-home>"
    k.keep = {v for v in k.keep if v and v not in k.secrets}
    return k


def _loopback(host: str) -> bool:
    return host in ("localhost", "0.0.0.0", "::", "::1") or host.startswith("127.")


def _toml(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}


def _secret_values(obj: Any, name: str = "") -> Iterable[str]:
    """String values in lab.toml that are secrets by their key's name (their shapes are the
    redactor's to find)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _secret_values(v, str(k))
    elif isinstance(obj, list):
        for v in obj:
            yield from _secret_values(v, name)
    elif isinstance(obj, str) and len(obj) >= 4 and looks_secret(name, ""):
        yield obj
