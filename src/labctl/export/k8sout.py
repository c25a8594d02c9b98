"""The whole export: every object, one YAML file each, the kustomization, and the offline
check against Kubernetes's own schemas (with ``kubernetes-validate``, where installed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
import re
from typing import Any

from labctl.errors import ConfigError, LabError
from labctl.export.k8s import Manifest, Options, Workload, engines, namespace
from labctl.export.k8smonitor import kustomization, monitoring
from labctl.export.k8syaml import dump

#: The oldest Kubernetes the export targets (the oldest kubernetes-validate checks).
OLDEST = (1, 25)
_VERSION = re.compile(r"v?([0-9]{1,3})\.([0-9]{1,3})(\.[0-9]{1,4})?")


def parse_version(text: str) -> str:
    """``1.30``, ``v1.30`` or ``1.30.2`` → ``1.30``.

    Raises:
        ConfigError: not a version, or older than :data:`OLDEST`.
    """
    m = _VERSION.fullmatch(text.strip())
    if m is None:
        raise ConfigError(f"--k8s-version {text!r} is not a version; give e.g. 1.30")
    major, minor = int(m[1]), int(m[2])
    if (major, minor) < OLDEST:
        raise ConfigError(f"--k8s-version {text}: the export targets Kubernetes "
                          f"{OLDEST[0]}.{OLDEST[1]} or newer; give e.g. 1.30")  # fmt: skip
    return f"{major}.{minor}"


def manifests(
    workloads: Sequence[Workload], groups: Sequence[Mapping[str, Any]],
    dashboard: Mapping[str, Any], opts: Options,
) -> list[Manifest]:  # fmt: skip
    """Every object of the export, in the order ``kubectl apply`` wants them."""
    return [*namespace(opts), *engines(workloads, opts),
            *monitoring(workloads, groups, dashboard, opts)]  # fmt: skip


def write(out: Path, objects: Sequence[Manifest], opts: Options, header: str) -> list[str]:
    """One file per object and ``kustomization.yaml`` listing them, in ``out``; ``header``
    (a comment) heads each. The files written, kustomization last."""
    lead = "".join(f"# {line}\n" for line in header.splitlines())
    files = [m.file for m in objects]
    for m in objects:
        (out / m.file).write_text(lead + dump(m.doc))
    (out / "kustomization.yaml").write_text(lead + dump(kustomization(files, opts)))
    return [*files, "kustomization.yaml"]


def validate(objects: Sequence[Manifest], version: str) -> bool:
    """Check every object that Kubernetes itself defines against its schema for ``version``,
    strictly (unknown fields fail); the operator's objects have no bundled schema and are
    left out. False: ``kubernetes-validate`` is not installed, nothing was checked.

    Raises:
        LabError: an object does not validate (its file, the field and why).
    """
    try:
        import kubernetes_validate
    except ImportError:
        return False
    for m in objects:
        if m.doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        try:
            kubernetes_validate.validate(m.doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise LabError(f"{m.file} does not validate for Kubernetes {version}: "
                           f"{'.'.join(map(str, exc.path))}: {exc.message}") from None  # fmt: skip
        except kubernetes_validate.utils.VersionNotSupportedError:
            raise ConfigError(f"--k8s-version {version} is newer than the schemas "
                              "kubernetes-validate holds; upgrade it, or give an older "
                              "version") from None  # fmt: skip
    return True
