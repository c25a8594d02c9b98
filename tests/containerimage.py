"""A container image built here, with no registry: the project's own ``llama-server`` and the
shared libraries it links, imported as a root filesystem (``podman import``)."""

from __future__ import annotations

from pathlib import Path
import re
import shutil
import subprocess
import tarfile

import pytest

from labctl.runtime.container import Runtime

#: What this kind of machine needs (rootful Podman in a container without systemd).
PODMAN = Runtime("podman", ("--runtime", "runc", "--cgroup-manager", "cgroupfs"),
                 ("--ulimit", "nofile=16384:16384", "--ulimit", "nproc=16384:16384"))  # fmt: skip


def podman() -> Runtime:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: `make system-deps` installs it (make test does)")
    return PODMAN


def llama_image(runtime: Runtime, binary: str, tag: str, work: Path, env: dict[str, str]) -> str:
    """Import ``binary`` (at /usr/local/bin/llama-server) and its libraries as ``tag``, with
    ``env`` in the image's configuration; returns the image reference."""
    libs = re.findall(r"(/\S+\.so[.\d]*)", subprocess.run(
        ["ldd", binary], capture_output=True, text=True, check=True).stdout)  # fmt: skip
    archive = work / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(binary, "usr/local/bin/llama-server")
        for lib in libs:
            tar.add(str(Path(lib).resolve()), lib.lstrip("/"))
        for empty in ("tmp", "models"):
            info = tarfile.TarInfo(empty)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777
            tar.addfile(info)
    changes = [x for k, v in env.items() for x in ("--change", f"ENV {k}={v}")]
    changes += ["--change", "ENV PATH=/usr/local/bin:/usr/bin:/bin"]
    ref = f"localhost/{tag}"
    subprocess.run([*runtime.base(), "import", *changes, str(archive), ref], check=True,
                   capture_output=True)  # fmt: skip
    return ref
