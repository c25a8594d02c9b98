"""Where labctl keeps its state, and the lab's configuration (``lab.toml``).

``$LABCTL_HOME`` (default ``~/.local/state/labctl``) holds the deployment
journal, engine logs, the simulated-GPU ledger and the table of which process
belongs to which deployment.

``lab.toml`` is read whole and validated before anything starts; every error
is one line that names the dotted key, the bad value and what is allowed (a
secret is named, never shown). Without a file the lab runs its embedded
default: a simulated RTX 3090 serving one twin. The checks that look at this
machine (model files, executables) are apart in :func:`check_host`, and the
ones across deployments in :func:`check_lab`, so the daemon can run them on a
spec that comes through the admin API.

The package reads one way: :mod:`~labctl.config.values` (limits, patterns, one
value's checks) ← :mod:`~labctl.config.model` (the frozen dataclasses and one
table's validation) ← :mod:`~labctl.config.load` (the file, the state dir, and
the checks across deployments and on this machine).
"""

from labctl.config.load import (
    check_exposure,
    check_gpu_indices,
    check_host,
    check_lab,
    load_config,
    state_dir,
)
from labctl.config.model import (
    DEFAULT_MODEL,
    ApiKey,
    DashboardConfig,
    DeploymentSpec,
    GatewayConfig,
    LabConfig,
    ModelsConfig,
    default_config,
)
from labctl.config.values import (
    DAY,
    DEFAULT_LISTEN,
    ENGINES,
    FAMILIES,
    GPU_BACKENDS,
    MAX_DEPLOYMENTS,
    MAX_FILE_BYTES,
    MAX_GPUS,
    MAX_KEYS,
    PLACEHOLDERS,
    WEEK,
    check_flag,
    is_loopback,
    parse_listen,
    sim_gpu_ids,
)

__all__ = [
    "DAY",
    "DEFAULT_LISTEN",
    "DEFAULT_MODEL",
    "ENGINES",
    "FAMILIES",
    "GPU_BACKENDS",
    "MAX_DEPLOYMENTS",
    "MAX_FILE_BYTES",
    "MAX_GPUS",
    "MAX_KEYS",
    "PLACEHOLDERS",
    "WEEK",
    "ApiKey",
    "DashboardConfig",
    "DeploymentSpec",
    "GatewayConfig",
    "LabConfig",
    "ModelsConfig",
    "check_exposure",
    "check_flag",
    "check_gpu_indices",
    "check_host",
    "check_lab",
    "default_config",
    "is_loopback",
    "load_config",
    "parse_listen",
    "sim_gpu_ids",
    "state_dir",
]
