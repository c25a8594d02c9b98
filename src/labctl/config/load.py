"""Where labctl keeps its state; reading ``lab.toml``; the checks beyond one table.

:func:`check_host` looks at this machine (model files, executables) and
:func:`check_lab` across deployments; both are apart from :func:`load_config` so the
daemon can run them on a spec that comes through the admin API.
"""

from __future__ import annotations

from collections.abc import Mapping
import os
from pathlib import Path
import shutil
import stat
import tomllib
from typing import Any

# The GPU catalog is a table of constants (it imports only errors and units): lab.sim_gpus
# is checked against it here so that a typo is a lab.toml error, not a failed start.
from labctl.catalog.gpus import gpu as catalog_gpu
from labctl.config.model import (
    DashboardConfig,
    DeploymentSpec,
    GatewayConfig,
    LabConfig,
    ModelsConfig,
    _dashboard,
    _gateway,
    _models,
    default_config,
)
from labctl.config.values import (
    _CHECK_CODE,
    _HOSTNAME,
    DEFAULT_LISTEN,
    GPU_BACKENDS,
    MAX_DEPLOYMENTS,
    MAX_FILE_BYTES,
    _ip,
    _key,
    _kind,
    _show,
    is_loopback,
    parse_listen,
    sim_gpu_ids,
)
from labctl.errors import CatalogError, ConfigError


def state_dir() -> Path:
    """``$LABCTL_HOME``, or ``$XDG_STATE_HOME/labctl``, or ``~/.local/state/labctl``."""
    if os.environ.get("LABCTL_HOME"):
        return Path(os.environ["LABCTL_HOME"]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "labctl"


# -- lab.toml -------------------------------------------------------------------------


def check_exposure(host: str, gateway: GatewayConfig, key: str) -> None:
    """Refuse to listen beyond loopback without API keys and an admin token.

    ``key`` names where the host came from (``lab.listen``, ``--listen``).

    Raises:
        ConfigError: ``host`` is not loopback and the gateway lacks keys or a token.
    """
    if (gateway.keys and gateway.admin_token) or is_loopback(host):
        return
    raise ConfigError(
        f"{key}: listening on {host} (beyond loopback) needs API keys ([[gateway.keys]]) "
        "and an admin token (gateway.admin_token); add both, or listen on 127.0.0.1"
    )


def check_gpu_indices(config: LabConfig, count: int) -> None:
    """Every deployment's GPUs exist on a machine with ``count`` GPUs (those named by UUID or
    bus id are checked as they are resolved, in :mod:`labctl.gpu.identity`).

    Raises:
        ConfigError: naming the deployment, its gpus and the indices there are.
    """
    for d in config.deployments:
        for g in d.gpus:
            if g >= count:
                there = (
                    f"the lab's {count} GPU{'' if count == 1 else 's'}; use indices 0 to "
                    f"{count - 1}"
                    if count
                    else "the lab's GPUs: it has none"
                )
                raise ConfigError(
                    f"deployments.{d.name}.gpus = {list(d.gpu_names or d.gpus)}: GPU {g} is "
                    f"beyond {there}"
                )


def check_lab(config: LabConfig) -> None:
    """The checks across deployments: ports, model ids, and simulated GPU indices.

    Run on a lab whose deployments changed (an admin API deploy) as well as at load.

    Raises:
        ConfigError: naming the second of two deployments that clash, and the first.
    """
    _, lab_port = parse_listen(config.listen)
    by_port: dict[int, str] = {}
    for d in config.deployments:
        if d.port and d.port in by_port:
            raise ConfigError(
                f"deployments.{d.name}.port = {d.port}: two deployments use the same port "
                f"(deployments.{by_port[d.port]}.port); give each its own, or 0 to pick a free one"
            )
        by_port[d.port] = d.name
        if lab_port and d.port == lab_port:
            raise ConfigError(
                f"deployments.{d.name}.port = {d.port} is the lab's own port (lab.listen = "
                f"{config.listen!r}); use another port, or 0 to pick a free one"
            )
    owners: dict[str, tuple[str, str, bool]] = {}
    for d in config.deployments:
        at = f"deployments.{d.name}"
        claims = [(d.name, at, "the name", True)]
        if d.served_model_name:
            claims.append((d.served_model_name, f"{at}.served_model_name = {d.served_model_name!r}",
                           "the served model id", True))  # fmt: skip
        elif d.served != d.name:  # the model's id, which two twins of one model may share
            claims.append((d.served, f"{at}.model = {d.served!r}", "the served model id", False))
        claims += [
            (a, f"{at}.aliases = {_show(list(d.aliases))}", "an alias", True) for a in d.aliases
        ]
        for model_id, where, what, explicit in claims:
            owner = owners.get(model_id)
            if owner is None:
                owners[model_id] = (d.name, what, explicit)
            elif owner[0] != d.name and (explicit or owner[2]):
                raise ConfigError(
                    f"{where}: {_show(model_id)} is already {owner[1]} of deployments.{owner[0]}; "
                    "two deployments must not answer to the same model id, so choose another"
                )
    if config.sim_gpus:
        check_gpu_indices(config, len(sim_gpu_ids(config.sim_gpus, "lab.sim_gpus")))


def check_host(spec: DeploymentSpec, at: str) -> None:
    """What a deployment needs on this machine: its model files and its executable.

    ``at`` names the deployment in messages (``deployments.chat``).

    Raises:
        ConfigError: a missing model path or GGUF file, or an executable not found.
    """
    model = spec.model
    if spec.engine == "llamacpp" and model:
        magic = _head(_path(model))
        if magic is None:
            raise ConfigError(
                f"{at}.model = {_show(model)}: no such GGUF file; give the path of a .gguf model"
            )
        if magic != b"GGUF":
            raise ConfigError(
                f"{at}.model = {_show(model)}: not a GGUF file (it does not start with 'GGUF'); "
                "give the path of a .gguf model"
            )
    if spec.engine == "whispercpp" and model:
        magic = _head(_path(model))
        if magic is None:
            raise ConfigError(
                f"{at}.model = {_show(model)}: no such file; give the path of a whisper.cpp ggml "
                "model (e.g. ggml-large-v3.bin)"
            )
        if magic != b"lmgg":  # 0x67676d6c, little-endian
            raise ConfigError(
                f"{at}.model = {_show(model)}: not a whisper.cpp ggml model (no ggml magic); "
                "give the path of a ggml-*.bin file from whisper.cpp's models"
            )
    looks_like_path = model and model.startswith(("/", "./", "../", "~"))
    if spec.engine in ("vllm", "sim") and looks_like_path and not _exists(_path(model or "")):
        raise ConfigError(
            f"{at}.model = {_show(model)}: no such file or directory; give an existing model "
            "directory or file, or a Hugging Face id such as Qwen/Qwen3-8B"
        )
    if spec.runtime:
        return  # its executable is the image's; the runtime and the image are checked at start
    if spec.engine == "openvla" and (spec.binary or _OPENVLA_SCRIPT).endswith(".py"):
        script = spec.binary or _OPENVLA_SCRIPT
        if not _path(script).is_file():
            raise ConfigError(
                f"{at}.binary = {_show(script)}: no such file; give the path of OpenVLA's "
                "vla-scripts/deploy.py (or OpenVLA-OFT's)"
            )
        _check_executable("python", f"{at}.binary = {_show(script)} (run with python)")
    elif spec.engine in _BINARIES:
        default = _BINARIES[spec.engine]
        shown = (
            f"{at}.binary = {_show(spec.binary)}"
            if spec.binary
            else f"{at}.binary (default {default!r})"
        )
        _check_executable(spec.binary or default, shown)
    elif spec.engine == "command" and spec.command and "{" not in spec.command[0]:
        _check_executable(spec.command[0], f"{at}.command[0] = {_show(spec.command[0])}")


_OPENVLA_SCRIPT = "vla-scripts/deploy.py"
#: The executable each engine runs where a deployment names no ``binary``.
_BINARIES = {
    "vllm": "vllm",
    "llamacpp": "llama-server",
    "whispercpp": "whisper-server",
    "openvla": _OPENVLA_SCRIPT,
}

#: ``load_config``'s parameter of the same name hides the function there.
_check_host = check_host


def load_config(path: Path | None, check_host: bool = True) -> LabConfig:
    """Read and validate ``lab.toml`` completely; ``None`` gives the embedded default.

    With ``check_host`` (the default) each deployment's model files and executable must
    be on this machine (:func:`check_host`); without it only the file itself is checked.

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8 TOML, or any key is wrong.
    """
    if path is None:
        return default_config()
    doc = _read(Path(path))
    for key, value in doc.items():
        if key not in ("lab", "gateway", "dashboard", "models", "deployments"):
            raise ConfigError(
                f"{path}: [{_key(key)}] is not a section; use [lab], [gateway], [dashboard], "
                "[models] and [deployments.NAME]"
            )
        if key != "deployments" and not isinstance(value, dict):
            # [gateway] holds secrets: what is there is named, not shown.
            shown = (
                f" is {_kind(value)} (not shown);" if key == "gateway" else f" = {_show(value)}:"
            )
            raise ConfigError(
                f"{key}{shown} [{key}] must be a table, e.g. [{key}] on a line of its own"
            )
    deployments = doc.get("deployments", {})
    if not isinstance(deployments, dict):
        raise ConfigError(
            f"deployments = {_show(deployments)}: give one table per deployment, "
            "[deployments.NAME] on a line of its own"
        )
    if len(deployments) > MAX_DEPLOYMENTS:
        raise ConfigError(
            f"deployments: {len(deployments)} deployments; a lab has at most {MAX_DEPLOYMENTS}"
        )
    specs = [DeploymentSpec.from_dict(name, table) for name, table in deployments.items()]
    config = _lab(doc.get("lab", {}), tuple(specs), str(path), _gateway(doc.get("gateway", {})),
                  _dashboard(doc.get("dashboard", {})), _models(doc.get("models", {})))  # fmt: skip
    check_lab(config)
    check_exposure(parse_listen(config.listen)[0], config.gateway, "lab.listen")
    if check_host:
        for spec in specs:
            _check_host(spec, f"deployments.{spec.name}")
    return config


def _read(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``: at most 1 MiB of UTF-8 (a file, or a pipe such as
    ``<(…)``; ``/dev/zero`` stops at the limit)."""
    where = f"--config {path}"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot be read ({_reason(exc)})") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{where}: is a directory; give the path of a lab.toml file")
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({_reason(exc)})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{where}: is larger than 1 MiB; a lab.toml is a few kilobytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where}: is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables nest too deeply to be a lab.toml") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer too long to convert
        raise ConfigError(f"{path} is not valid TOML: {_one_line(str(exc))}") from exc


def _lab(
    doc: Mapping[str, Any],
    specs: tuple[DeploymentSpec, ...],
    source: str,
    gateway: GatewayConfig,
    dashboard: DashboardConfig,
    models: ModelsConfig,
) -> LabConfig:
    known = {"listen", "gpu_backend", "sim_gpus", "allowed_hosts", "api_commands",
             "disk_read_mbps", "container_global_flags", "container_run_flags",
             "doctor_ignore"}  # fmt: skip
    for key in doc:
        if key not in known:
            raise ConfigError(
                f"lab.{_key(key)} is not a setting; use one of {', '.join(sorted(known))}"
            )
    listen = doc.get("listen", DEFAULT_LISTEN)
    parse_listen(listen)
    sim_gpus = doc.get("sim_gpus")
    backend = doc.get("gpu_backend", "sim" if sim_gpus else "auto")
    if backend not in GPU_BACKENDS:
        raise ConfigError(
            f"lab.gpu_backend = {_show(backend)}: use one of {', '.join(GPU_BACKENDS)}"
        )
    if sim_gpus is not None:
        shown = f"lab.sim_gpus = {_show(sim_gpus)}"
        if not isinstance(sim_gpus, str) or len(sim_gpus) > 1024:
            raise ConfigError(f"{shown}: give a string such as '1xrtx-3090'")
        for gpu_id in dict.fromkeys(sim_gpu_ids(sim_gpus, shown)):
            try:
                catalog_gpu(gpu_id)
            except CatalogError as exc:
                raise ConfigError(f"{shown}: {exc}") from None
        if backend == "nvml":
            raise ConfigError(
                f"{shown} simulates GPUs, but lab.gpu_backend = 'nvml'; drop one of them"
            )
    hosts = doc.get("allowed_hosts", [])
    if not isinstance(hosts, list) or len(hosts) > 256:
        raise ConfigError(
            f"lab.allowed_hosts = {_show(hosts)}: give a list of host names (at most 256), e.g. "
            '["gpu-box.lan", "*.lab.example"]'
        )
    allowed = []
    for i, host in enumerate(hosts):
        name = host[2:] if isinstance(host, str) and host.startswith("*.") else host
        if not isinstance(name, str) or not (
            (len(name) <= 253 and _HOSTNAME.fullmatch(name) and not name.endswith("."))
            or (name.startswith("[") and name.endswith("]") and _ip(name[1:-1]) and host == name)
        ):
            raise ConfigError(
                f"lab.allowed_hosts[{i}] = {_show(host)}: give a host name such as gpu-box.lan or "
                "*.lan (no scheme, port or path), or an address such as 192.168.1.20 or [fe80::1]"
            )
        allowed.append(host.lower())
    api_commands = doc.get("api_commands", False)
    if not isinstance(api_commands, bool):
        raise ConfigError(f"lab.api_commands = {_show(api_commands)}: give true or false")
    rate = doc.get("disk_read_mbps")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not 1 <= rate <= 1e6
    ):
        raise ConfigError(
            f"lab.disk_read_mbps = {_show(rate)}: give the disk's read rate in MB/s, "
            "1 to 1000000 (e.g. 2000 for an NVMe drive, 150 for a hard disk)"
        )
    flags = {}
    for key in ("container_global_flags", "container_run_flags"):
        value = doc.get(key, [])
        if (
            not isinstance(value, list)
            or len(value) > 64
            or not all(isinstance(f, str) and f.isprintable() and 0 < len(f) <= 1024 for f in value)
        ):
            raise ConfigError(f"lab.{key} = {_show(value)}: give a list of the container "
                              'runtime\'s flags, e.g. ["--runtime", "runc"]')  # fmt: skip
        flags[key] = tuple(value)
    ignore = doc.get("doctor_ignore", [])
    if (
        not isinstance(ignore, list)
        or len(ignore) > 64
        or not all(isinstance(c, str) and _CHECK_CODE.fullmatch(c) for c in ignore)
    ):
        raise ConfigError(f"lab.doctor_ignore = {_show(ignore)}: give a list of the doctor's check "
                          'codes whose failures may not refuse deploys, e.g. ["fabric-manager"] '
                          "(`labctl doctor --explain` lists them)")  # fmt: skip
    return LabConfig(
        listen=listen, gpu_backend=backend, sim_gpus=sim_gpus, deployments=specs, source=source,
        gateway=gateway, dashboard=dashboard, allowed_hosts=tuple(allowed),
        api_commands=api_commands, disk_read_mbps=float(rate) if rate is not None else None,
        models=models, containers=(flags["container_global_flags"],
                                   flags["container_run_flags"]),
        doctor_ignore=tuple(dict.fromkeys(ignore)),
    )  # fmt: skip


def _check_executable(name: str, shown: str) -> None:
    if "/" in name:
        path = _path(name)
        try:
            ok = path.is_file() and os.access(path, os.X_OK)
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{shown}: is not an executable file; give the path of one")
        return
    try:
        found = shutil.which(name)
    except (OSError, ValueError):
        found = None
    if found is None:
        raise ConfigError(f"{shown}: not found on PATH; install it, or give its full path")


def _path(text: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~user with no such user
        return Path(text)


def _head(path: Path) -> bytes | None:
    """A regular file's first four bytes (None: no such file, or not a regular one)."""
    try:
        if not path.is_file():
            return None
        with path.open("rb") as fh:
            return fh.read(4)
    except (OSError, ValueError):
        return None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) or str(exc)
