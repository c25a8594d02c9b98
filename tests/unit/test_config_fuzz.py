"""lab.toml and deployment bodies as an attacker or a careless operator would write them.

Each case is a mostly valid lab with one or more hostile values (wrong types, NaN and
infinity, huge and negative numbers, long strings with control characters and unicode,
nested tables, unknown keys, clashing names, ports and aliases), written as real TOML
text and loaded the way ``labctl up`` loads it. Whatever the input, the loader returns a
lab or raises ``ConfigError`` with one line that names a key of the document, quickly.
The admin API feeds ``DeploymentSpec.from_dict`` JSON bodies; it gets the same treatment,
and what it accepts must turn into an engine command line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import copy
import datetime
import math
from pathlib import Path
import re
import socket
import sys
import time
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest

from labctl.config import DeploymentSpec, LabConfig, load_config
from labctl.engines import adapter, flags
from labctl.errors import ConfigError

SECTIONS = ("lab", "gateway", "dashboard", "deployments")
#: Every key a section knows, and the vLLM flags the loader checks, to aim values at.
KEYS = {
    "lab": ["listen", "gpu_backend", "sim_gpus", "allowed_hosts", "api_commands"],
    "gateway": ["keys", "admin_token", "max_body_bytes", "queue_timeout", "swap_timeout",
                "drain_timeout", "read_timeout", "idle_timeout"],
    "dashboard": ["interval", "history", "alert_for_scale"],
    "deployment": ["engine", "model", "gpus", "port", "served_model_name", "aliases", "args",
                   "command", "health_path", "env", "binary", "startup_timeout",
                   "stall_timeout", "stop_grace", "max_concurrency", "queue_size", "serves"],
    "args": ["max_model_len", "max_num_seqs", "tensor_parallel_size", "pipeline_parallel_size",
             "max_num_batched_tokens", "gpu_memory_utilization", "max-model-len", "time_scale",
             "load_gbps", "enforce_eager", "ctx_size"],
}  # fmt: skip
ODD_STRINGS = [
    "", " ", "\x00", "a\x00b", "\n", "\r\n", "\t", "\x1b[31m", "\u202e", "\u2028", "é", "日本",
    "{", "}", "{foo}", "{port!r}", "{0}", "{{port}}", "../..", "/", "/dev/zero", "~nobody/x",
    "~", "./x", "127.x.example:80", "0.0.0.0:8080", "[::1]:80", "[::]:0", "localhost:1",
    "127.0.0.1:99999", "*.lan", "http://x", "a" * 300, "-x", "--help", "chat", "Qwen/Qwen3-0.6B",
    "1xrtx-3090", "100xl4", "64xl4,l4", "h100-sx", "2xrtx-3090", "x" * 5000,
]  # fmt: skip
ODD_NUMBERS = [0, -1, 1, 2, 63, 64, 65535, 65536, 2**31, 2**63, -(2**63), 10**30, 0.0, -0.0,
               1e-6, 0.5, 1.5, 1e300, -1e300, math.nan, math.inf, -math.inf]  # fmt: skip

SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(ODD_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(ODD_STRINGS),
    st.dates(),
)
HOSTILE = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
KEY_NAMES = st.one_of(st.text(max_size=12), st.sampled_from(ODD_STRINGS[:20]))


# -- a tiny TOML writer -----------------------------------------------------------------


def toml_key(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_key(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_text(doc: dict[str, Any], path: tuple[str, ...] = ()) -> str:
    """Keys of a table first, then its sub-tables under [headers]: each table once."""
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            sub = (*path, k)
            lines.append("[" + ".".join(toml_key(p) for p in sub) + "]")
            lines.append(toml_text(v, sub))
    return "\n".join(lines)


def test_the_toml_writer_round_trips() -> None:
    import tomllib

    doc = {"a": [1, 2.5, "x\x00\"\\y", {"k": math.inf}], "t": {"u": {"v": True}, "w": -(2**70)},
           "\n": datetime.date(2020, 1, 2)}  # fmt: skip
    assert tomllib.loads(toml_text(doc)) == doc


# -- documents ------------------------------------------------------------------------


def templates(gguf: Path) -> dict[str, dict[str, Any]]:
    """Valid deployments, one per engine, whose files and executables exist here."""
    return {
        "sim": {"engine": "sim", "model": "Qwen/Qwen3-0.6B", "stop_grace": 5,
                "args": {"max_model_len": 4096, "time_scale": 0.05, "load_gbps": 0}},
        "vllm": {"engine": "vllm", "model": "Qwen/Qwen3-8B", "binary": sys.executable,
                 "args": {"max_model_len": 8192, "gpu_memory_utilization": 0.9}},
        "llamacpp": {"engine": "llamacpp", "model": str(gguf), "binary": sys.executable,
                     "args": {"ctx_size": 512, "parallel": 1}},
        "command": {"engine": "command", "command": [sys.executable, "-c", "pass", "{port}"],
                    "health_path": "/healthz"},
    }  # fmt: skip


@st.composite
def lab_docs(draw: st.DrawFn, gguf: Path) -> dict[str, Any]:
    kinds = templates(gguf)
    names = draw(st.lists(st.sampled_from(["chat", "code", "asr", "small"]), min_size=1,
                          max_size=3, unique=True))  # fmt: skip
    doc: dict[str, Any] = {
        "lab": {"gpu_backend": "sim", "sim_gpus": "2xrtx-3090"},
        "deployments": {n: copy.deepcopy(kinds[draw(st.sampled_from(sorted(kinds)))])
                        for n in names},
    }  # fmt: skip
    if draw(st.booleans()):
        doc["gateway"] = {"admin_token": "admin-token-0123456789", "queue_timeout": 1,
                          "keys": [{"key": "key-0123456789", "models": ["chat"]}]}  # fmt: skip
    if draw(st.booleans()):
        doc["dashboard"] = {"interval": 1.0, "history": 600}
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        draw(st.sampled_from(MUTATIONS))(draw, doc)
    return doc


def _deployment(draw: st.DrawFn, doc: dict[str, Any]) -> dict[str, Any]:
    deployments = doc.get("deployments")
    if not isinstance(deployments, dict) or not deployments:
        doc["deployments"] = deployments = {"chat": {"engine": "sim", "model": "m"}}
    name = draw(st.sampled_from(sorted(deployments)))
    if not isinstance(deployments[name], dict):
        deployments[name] = {}
    table: dict[str, Any] = deployments[name]
    return table


def set_setting(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    section = draw(st.sampled_from(["lab", "gateway", "dashboard"]))
    if not isinstance(doc.get(section), dict):
        doc[section] = {}
    key = draw(st.sampled_from(KEYS[section]) | KEY_NAMES)
    doc[section][key] = draw(HOSTILE)


def set_deployment_setting(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    table = _deployment(draw, doc)
    table[draw(st.sampled_from(KEYS["deployment"]) | KEY_NAMES)] = draw(HOSTILE)


def set_arg(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    table = _deployment(draw, doc)
    if not isinstance(table.get("args"), dict):
        table["args"] = {}
    table["args"][draw(st.sampled_from(KEYS["args"]) | KEY_NAMES)] = draw(HOSTILE)


def set_env(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    table = _deployment(draw, doc)
    table["env"] = {draw(KEY_NAMES | st.just("HF_TOKEN")): draw(HOSTILE | st.text(max_size=20))}


def replace_section(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    doc[draw(st.sampled_from([*SECTIONS, "routes"]) | KEY_NAMES)] = draw(HOSTILE)


def hostile_name(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    if not isinstance(doc.get("deployments"), dict):
        doc["deployments"] = {}
    doc["deployments"][draw(KEY_NAMES)] = {"engine": "sim", "model": "m"}


def clash(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    """A second deployment that shares a port, a name as an alias, or a served id."""
    table = copy.deepcopy(_deployment(draw, doc))
    names = sorted(doc["deployments"])
    kind = draw(st.sampled_from(["port", "alias", "served"]))
    if kind == "port":
        port = draw(st.sampled_from([8080, 9000]))
        for other in doc["deployments"].values():
            if isinstance(other, dict):
                other["port"] = port
    elif kind == "alias":
        table["aliases"] = [draw(st.sampled_from(names))]
    else:
        table["served_model_name"] = draw(st.sampled_from([*names, "m", "Qwen/Qwen3-0.6B"]))
    doc["deployments"]["twin"] = table


def gateway_keys(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    entry = st.fixed_dictionaries({"key": st.sampled_from(["key-0123456789", "key-9876543210"])
                                   | HOSTILE}) | HOSTILE  # fmt: skip
    doc["gateway"] = {"admin_token": "admin-token-0123456789",
                      "keys": draw(st.lists(entry, max_size=4))}  # fmt: skip


def drop_key(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    table = _deployment(draw, doc)
    if table:
        del table[draw(st.sampled_from(sorted(table)))]


def listen(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    if not isinstance(doc.get("lab"), dict):
        doc["lab"] = {}
    doc["lab"]["listen"] = draw(st.sampled_from(
        ["0.0.0.0:8080", "[::]:9000", "127.x.example:8080", "gpu-box.lan:80", "localhost:8080",
         "127.0.0.1:9000", "[::ffff:127.0.0.1]:8080", "[::1]:9000"]) | st.text(max_size=30))  # fmt: skip


MUTATIONS: list[Callable[[st.DrawFn, dict[str, Any]], None]] = [
    set_setting, set_deployment_setting, set_deployment_setting, set_arg, set_arg, set_env,
    replace_section, hostile_name, clash, gateway_keys, drop_key, listen,
]  # fmt: skip


# -- the properties -------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    return path


@contextlib.contextmanager
def no_dns() -> Iterator[None]:
    """Names resolve only to what /etc/hosts would say of localhost: no lookups leave."""

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> list[Any]:
        if host == "localhost":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with mock.patch.object(socket, "getaddrinfo", getaddrinfo):
        yield


def assert_one_line_naming_a_key(message: str, path: Path | None = None) -> None:
    assert "\n" not in message and "\r" not in message, message
    assert "is not valid TOML" not in message, message  # the writer above is wrong
    named = re.match(r"\[?(lab|gateway|dashboard|deployments)\b", message)
    assert named or (path is not None and message.startswith(f"{path}: [")), message


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_load_config_returns_a_lab_or_one_line_naming_the_key(
    data: st.DataObject, gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    doc = data.draw(lab_docs(gguf))
    path = tmp_path_factory.getbasetemp() / "fuzz-lab.toml"
    path.write_text(toml_text(doc), encoding="utf-8")
    with no_dns():
        start = time.perf_counter()
        try:
            config = load_config(path)
        except ConfigError as exc:
            assert_one_line_naming_a_key(str(exc), path)
        else:
            assert isinstance(config, LabConfig)
            for spec in config.deployments:
                adapter(spec.engine).launch(spec.to_dict(), "127.0.0.1", 9999, spec.gpus)
        assert time.perf_counter() - start < 1.0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
    | st.sampled_from(ODD_STRINGS[:40]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)  # fmt: skip
NAMES = st.sampled_from(["chat", "a" * 63, "a" * 64, "-x", "x y", "ok.v1_2-3", ""]) | st.text(
    max_size=70
)


@settings(max_examples=400, deadline=None)
@given(
    name=NAMES,
    kind=st.sampled_from(["sim", "vllm", "llamacpp", "command"]),
    changes=st.dictionaries(st.sampled_from(KEYS["deployment"]) | st.text(max_size=10), JSON,
                            max_size=3),
    arg_changes=st.dictionaries(st.sampled_from(KEYS["args"]) | st.text(max_size=10), JSON,
                                max_size=3),
    where=st.booleans(),
)  # fmt: skip
def test_from_dict_takes_any_json_body_or_names_the_key(
    name: str, kind: str, changes: dict[str, Any], arg_changes: dict[str, Any], where: bool
) -> None:
    doc = copy.deepcopy(templates(Path("/models/tiny.gguf"))[kind])
    doc.update(changes)
    if isinstance(doc.get("args"), dict):
        doc["args"].update(arg_changes)
    at = f"deploy {name}" if where else None
    start = time.perf_counter()
    try:
        spec = DeploymentSpec.from_dict(name, doc, where=at)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert message.startswith("deploy " if at else "deployments."), message
    else:
        again = {k: v for k, v in spec.to_dict().items() if k != "name"}
        assert DeploymentSpec.from_dict(spec.name, again) == spec  # the journal's round trip
        flags(spec.args)
        adapter(spec.engine).launch(spec.to_dict(), "127.0.0.1", 9999, spec.gpus)
    assert time.perf_counter() - start < 1.0
