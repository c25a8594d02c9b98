"""A deploy asked for through the admin API: its body read, its spec checked, its reach limited.

The body is ``{"model": …, "set": {…}, "dry_run": …}``; ``set`` takes a top-level
setting, ``args.X`` or ``env.X``, anything else being an engine flag (``--set``
semantics). The resulting spec is checked as lab.toml would check it (its model
files and binary on this machine, its names and ports against the other
deployments). What an API call may change is narrower than what lab.toml may: what
runs (the engine kind ``command``, its command line, the binary, a command's
``{model}``), its environment (which can load code: the dynamic loader, OpenSSL,
plugins), any vLLM or llama-server flag beyond those that set capacity and performance
(``SAFE_ARGS``), and ``sleep`` for vLLM (its development mode, whose endpoints take no key)
change only where lab.toml sets ``lab.api_commands = true``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
import dataclasses
from typing import Any, TypeVar

from labctl.config import DeploymentSpec, LabConfig, check_host, check_lab
from labctl.errors import ConfigError, DeployError

#: Settings that only lab.toml may change (unless it sets ``lab.api_commands``).
COMMAND_SETTINGS = ("binary", "command", "image", "runtime")
#: Engine flags the API may change, by engine: capacity and performance only. Flags that load
#: code or touch files (vLLM's --trust-remote-code, --config, --middleware, tool-parser
#: plugins, --allowed-local-media-path; llama-server's --log-file, --path, --slot-save-path)
#: are not among them. Engines not named here (the twin, whose flags are labctl's own; a
#: command engine, which takes no flags) may change any.
SAFE_ARGS = {
    "vllm": frozenset({
        "max_model_len", "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens",
        "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size",
        "kv_cache_dtype", "kv_cache_memory_bytes", "quantization", "dtype", "block_size",
        "enable_prefix_caching", "no_enable_prefix_caching", "enable_chunked_prefill",
        "no_enable_chunked_prefill", "enforce_eager", "swap_space", "cpu_offload_gb", "seed",
        "max_logprobs", "async_scheduling", "scheduling_policy", "long_prefill_token_threshold",
        "max_num_partial_prefills", "max_long_partial_prefills", "disable_log_stats",
        "enable_log_requests", "disable_log_requests",
    }),
    "llamacpp": frozenset({
        "ctx_size", "n_gpu_layers", "gpu_layers", "parallel", "threads", "threads_batch",
        "batch_size", "ubatch_size", "cache_type_k", "cache_type_v", "flash_attn",
        "cont_batching", "no_cont_batching", "mlock", "no_mmap", "n_predict", "defrag_thold",
        "cache_reuse", "split_mode", "tensor_split", "main_gpu", "kv_unified", "swa_full",
        "seed", "rope_scaling", "rope_freq_base", "rope_freq_scale", "no_kv_offload",
    }),
    "whispercpp": frozenset({
        "threads", "processors", "beam_size", "best_of", "no_fallback", "audio_ctx", "language",
        "flash_attn", "no_flash_attn", "temperature_inc", "entropy_thold", "logprob_thold",
    }),
    "openvla": frozenset({"load_in_8bit", "load_in_4bit"}),
}  # fmt: skip
T = TypeVar("T")
#: What a deploy request's body may hold.
DEPLOY_BODY = frozenset({"model", "set", "dry_run"})


class RequestRefused(DeployError):
    """A deploy request that is malformed (400) or not allowed through the API (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def in_thread(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` (these checks read files) in a worker thread, given 10 s: a model or a
    binary on a mount that does not answer must not hold up the event loop.

    Raises:
        RequestRefused: 400 when the 10 s ran out.
    """
    try:
        return await asyncio.wait_for(asyncio.to_thread(func, *args), 10)
    except TimeoutError:
        raise RequestRefused(400, "checking the deployment's files took more than 10 s; is "
                             "its model or binary on a mount that does not answer?") from None  # fmt: skip


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
    _allowed(current, spec, config, others, "deploy", "")
    return spec


def check_restore(
    current: DeploymentSpec, earlier: DeploymentSpec, config: LabConfig,
    others: Sequence[DeploymentSpec],
) -> None:  # fmt: skip
    """Whether the API may bring ``earlier`` back (a rollback): what it may not change
    directly it may not change by restoring either, and the revision must still be valid.

    Raises:
        RequestRefused: 403 or 400, as :func:`requested_spec`.
    """
    _allowed(current, earlier, config, others, "rollback", "rolling back to a revision means ")


def _allowed(
    current: DeploymentSpec, new: DeploymentSpec, config: LabConfig,
    others: Sequence[DeploymentSpec], action: str, lead: str,
) -> None:  # fmt: skip
    """``new`` replacing ``current`` through the API: allowed by lab.toml, valid here."""
    if not config.api_commands and (why := command_change(current, new)):
        raise RequestRefused(403, f"{current.name}: {lead}{why} through the admin API is off; "
                             "set lab.api_commands = true in lab.toml to allow it, or change "
                             "lab.toml")  # fmt: skip
    try:
        check_host(new, f"{action} {current.name}")
        check_lab(dataclasses.replace(config, deployments=(*others, new)))
    except ConfigError as exc:
        raise RequestRefused(400, str(exc)) from None


def command_change(old: DeploymentSpec, new: DeploymentSpec) -> str | None:
    """What ``new`` changes that only lab.toml may (None: nothing of the kind): what runs,
    what it loads, and what a command's placeholders put into its command line."""
    if new.engine == "command" and old.engine != "command":
        return "switching to engine 'command'"
    for key in COMMAND_SETTINGS:
        if getattr(new, key) != getattr(old, key):
            return f"changing {key}"
    if new.env != old.env:  # the loader, the TLS library, plugins: the environment loads code
        changed = sorted(k for k in set(new.env) | set(old.env) if new.env.get(k) != old.env.get(k))
        return f"changing env.{changed[0]}"
    if new.engine == "command" and (new.model != old.model or new.name != old.name):
        return "changing the model of a command engine (its command line takes it)"
    if new.engine == "vllm" and new.sleep and not (old.engine == "vllm" and old.sleep):
        return "turning on sleep for vLLM (its development endpoints, /collective_rpc among them)"
    old_args = {_flag(k): v for k, v in old.args.items()}
    for key, value in new.args.items():
        name = _flag(key)
        if old_args.get(name) == value:
            continue
        if any(isinstance(v, str) and v.startswith("-") for v in _items(value)):
            return f"passing {str(value)[:60]!r} (a flag, not a value) in args.{key}"
        safe = SAFE_ARGS.get(new.engine)
        if safe is not None and name not in safe:
            return f"changing args.{key} (the API may change {', '.join(sorted(safe)[:6])}, …)"
    return None


def _flag(name: str) -> str:
    """A flag's name as engines' parsers see it: ``trust-remote-code`` is ``trust_remote_code``."""
    return name.strip().lstrip("-").replace("-", "_").lower()


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


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
