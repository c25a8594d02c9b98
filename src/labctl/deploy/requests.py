"""A deploy asked for through the admin API: its body read, its spec checked, its reach limited.

The body is ``{"model": …, "set": {…}, "dry_run": …}``; ``set`` takes a top-level
setting, ``args.X`` or ``env.X``, anything else being an engine flag (``--set``
semantics). The resulting spec is checked as lab.toml would check it (its model
files and binary on this machine, its names and ports against the other
deployments). What an API call may change is narrower than what lab.toml may: what
runs (the engine kind ``command``, its command line, the binary) and what loads code
into it (the dynamic loader's and Python's search paths, remote model code) change
only where lab.toml sets ``lab.api_commands = true``.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import re
from typing import Any

from labctl.config import DeploymentSpec, LabConfig, check_host, check_lab
from labctl.errors import ConfigError, DeployError

#: Settings that only lab.toml may change (unless it sets ``lab.api_commands``).
COMMAND_SETTINGS = ("binary", "command")
LOADER_ENV = re.compile(r"^(LD_\w+|DYLD_\w+|PYTHON\w*|PATH|PERL5?LIB|NODE_OPTIONS|RUBYOPT)$")
CODE_ARGS = ("trust_remote_code",)
#: What a deploy request's body may hold.
DEPLOY_BODY = frozenset({"model", "set", "dry_run"})


class RequestRefused(DeployError):
    """A deploy request that is malformed (400) or not allowed through the API (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def requested_spec(
    current: DeploymentSpec, body: dict[str, Any], config: LabConfig,
    others: Sequence[DeploymentSpec],
) -> DeploymentSpec:  # fmt: skip
    """The spec a deploy request asks for, from ``current`` and the request's ``body``.

    Raises:
        RequestRefused: 400 (malformed, or invalid as lab.toml would say), 403 (a change
            only lab.toml may make).
    """
    name = current.name
    unknown = sorted(set(body) - DEPLOY_BODY)
    if unknown:
        raise RequestRefused(400, f"{str(unknown[0])[:60]!r} is not part of a deploy request; "
                             "send model, set and dry_run")  # fmt: skip
    model, changes, dry_run = body.get("model"), body.get("set"), body.get("dry_run", False)
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise RequestRefused(400, f"model = {str(model)[:100]!r}: give a model id or path")
    if changes is not None and not isinstance(changes, dict):
        raise RequestRefused(400, 'set must be an object of settings, e.g. {"max_model_len": 8192}')
    if not isinstance(dry_run, bool):
        raise RequestRefused(400, "dry_run must be true or false")
    doc = current.to_dict()
    if model:
        doc["model"] = model
    for key, value in (changes or {}).items():
        if not key:
            raise RequestRefused(400, "set: every setting needs a name")
        try:
            _apply(doc, key, value)
        except (AttributeError, TypeError):
            raise RequestRefused(
                400, f"set: {key[:100]!r} cannot be set to {str(value)[:100]!r}"
            ) from None
    doc.pop("name", None)
    try:
        spec = DeploymentSpec.from_dict(name, doc, where=f"deploy {name}")
    except ConfigError as exc:
        raise RequestRefused(400, str(exc)) from None
    if not config.api_commands and (why := command_change(current, spec)):
        raise RequestRefused(403, f"{name}: {why} through the admin API is off; set "
                             "lab.api_commands = true in lab.toml to allow it, or change lab.toml")  # fmt: skip
    try:
        check_host(spec, f"deploy {name}")
        check_lab(dataclasses.replace(config, deployments=(*others, spec)))
    except ConfigError as exc:
        raise RequestRefused(400, str(exc)) from None
    return spec


def command_change(old: DeploymentSpec, new: DeploymentSpec) -> str | None:
    """What ``new`` changes that only lab.toml may (None: nothing of the kind)."""
    if new.engine == "command" and old.engine != "command":
        return "switching to engine 'command'"
    for key in COMMAND_SETTINGS:
        if getattr(new, key) != getattr(old, key):
            return f"changing {key}"
    for var in sorted(set(new.env) | set(old.env)):
        if LOADER_ENV.match(var) and new.env.get(var) != old.env.get(var):
            return f"changing env.{var}"
    for arg in CODE_ARGS:
        if new.args.get(arg) != old.args.get(arg):
            return f"changing args.{arg}"
    return None


def _apply(doc: dict[str, Any], key: str, value: Any) -> None:
    """``--set`` semantics: a top-level setting, ``args.X``, ``env.X``, or else an engine flag."""
    head, _, rest = key.partition(".")
    if rest and head in ("args", "env"):
        table = doc.setdefault(head, {})
        if not isinstance(table, dict):
            raise TypeError(f"{head} is not a table")
        table[rest] = value
    elif key in doc and key not in ("args", "env"):
        doc[key] = value
    else:
        doc.setdefault("args", {})[key.replace("-", "_")] = value
