"""The CUDA builds of the engines installed here, read from their files (nothing is imported
or run): torch beside vLLM, the CUDA runtime beside llama-server, Ollama's bundled runtimes.

Paths come from the view's PATH (and the lab's ``binary`` settings) and are read through the
view, so a fixture tree with a fake ``bin/vllm`` and a ``torch/version.py`` stands for an
install. Also the tables these builds are judged by: the driver each CUDA release needs, and
the CUDA release that first (or last) compiles for each compute capability.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
import re

from labctl.config import LabConfig
from labctl.doctor.host import HostView

CudaVersion = tuple[int, int]

#: The Linux driver branch each CUDA release needs (its toolkit's minimum driver).
MIN_DRIVER: dict[CudaVersion, int] = {
    (11, 8): 520, (12, 0): 525, (12, 1): 530, (12, 2): 535, (12, 3): 545, (12, 4): 550,
    (12, 5): 555, (12, 6): 560, (12, 8): 570, (12, 9): 575, (13, 0): 580, (13, 1): 590,
}  # fmt: skip
#: The first CUDA release that compiles for a compute capability.
ARCH_FIRST_CUDA: dict[CudaVersion, CudaVersion] = {
    (8, 0): (11, 0), (8, 6): (11, 1), (8, 7): (11, 4), (8, 9): (11, 8), (9, 0): (11, 8),
    (10, 0): (12, 8), (10, 3): (12, 9), (11, 0): (13, 0), (12, 0): (12, 8), (12, 1): (12, 9),
}  # fmt: skip
#: CUDA 13 compiles for compute capability 7.5 and up (Maxwell, Pascal and Volta are gone);
#: torch's CUDA 12.8+ wheels already leave out Maxwell and Pascal.
ARCH_DROPPED: tuple[tuple[CudaVersion, CudaVersion], ...] = (((13, 0), (7, 5)), ((12, 8), (7, 0)))

#: ``cuda: Optional[str] = '12.8'`` or ``cuda = None`` in torch/version.py.
_TORCH_CUDA = re.compile(r"""^cuda\s*(?::[^=\n]*)?=\s*(?:['"]([\d.]+)['"]|None)""", re.M)
_TORCH_VERSION = re.compile(r"""^__version__\s*(?::[^=\n]*)?=\s*['"]([^'"]+)['"]""", re.M)
_CUDART = re.compile(r"^libcudart\.so\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class Build:
    """One engine install and the CUDA runtime it brings."""

    #: "vllm", "llama-server", "ollama".
    engine: str
    #: What was read (the file), for the evidence.
    where: str
    #: (major, minor); None: a CPU-only build.
    cuda: CudaVersion | None
    #: torch's version ("2.7.0+cu128") where the build is torch's.
    torch: str | None = None

    @property
    def label(self) -> str:
        return f"{self.engine} (torch {self.torch})" if self.torch else self.engine


def cuda_text(v: CudaVersion | None) -> str:
    return f"{v[0]}.{v[1]}" if v else "none (CPU build)"


def min_driver(cuda: CudaVersion) -> int:
    """The driver branch a CUDA release needs (the newest known release's for later ones)."""
    known = [v for v in MIN_DRIVER if v <= cuda]
    return MIN_DRIVER[max(known)] if known else min(MIN_DRIVER.values())


def driver_cuda(driver_major: int) -> CudaVersion | None:
    """The newest CUDA a driver branch runs (None: older than the table)."""
    known = [v for v, d in MIN_DRIVER.items() if d <= driver_major]
    return max(known) if known else None


def decode_cuda(nvml_value: int) -> CudaVersion:
    """NVML's ``13000`` → (13, 0); ``12080`` → (12, 8)."""
    return nvml_value // 1000, (nvml_value % 1000) // 10


def view_path(host: HostView, found: str) -> str:
    """A path ``which`` found, as a path on the viewed machine (under the view's root)."""
    p = PurePosixPath(found)
    root = PurePosixPath(str(host.root))
    if str(root) != "/" and p.is_relative_to(root):
        return "/" + str(p.relative_to(root))
    return str(p)


def resolve(host: HostView, path: str) -> str:
    """``path`` with its symlinks followed (on the viewed machine; at most 8 hops)."""
    for _ in range(8):
        target = host.readlink(path)
        if target is None:
            return path
        p = PurePosixPath(target)
        path = str(p if p.is_absolute() else PurePosixPath(path).parent / p)
    return path


def executables(host: HostView, lab: LabConfig | None, engine: str, name: str) -> list[str]:
    """Where ``name`` (and the lab's ``binary`` for ``engine``) lives, resolved, on the
    viewed machine; each place once."""
    names = [d.binary for d in (lab.deployments if lab else ()) if d.engine == engine and d.binary]
    out: list[str] = []
    for n in [*names, name]:
        found = host.which(n) if "/" not in n else (n if host.exists(n) else None)
        if found is not None:
            path = resolve(host, view_path(host, found))
            if path not in out:
                out.append(path)
    return out


def _site_packages(host: HostView, exe: str) -> list[str]:
    """The site-packages folders of the Python environment a console script belongs to."""
    prefixes = [str(PurePosixPath(exe).parent.parent)]
    first = (host.read(exe, 256) or "").split("\n", 1)[0]
    if first.startswith("#!"):
        interp = first[2:].split()
        if interp and interp[0].startswith("/") and not interp[0].endswith("/env"):
            prefixes.insert(0, str(PurePosixPath(resolve(host, interp[0])).parent.parent))
    out = []
    for prefix in dict.fromkeys(prefixes):
        for lib in ("lib", "lib64"):
            for py in host.listdir(f"{prefix}/{lib}"):
                if py.startswith("python3"):
                    site = f"{prefix}/{lib}/{py}/site-packages"
                    if host.exists(site) and site not in out:
                        out.append(site)
    return out


def torch_builds(host: HostView, lab: LabConfig | None) -> list[Build]:
    """torch as each vLLM on the PATH (or named by the lab) would import it."""
    out = []
    for exe in executables(host, lab, "vllm", "vllm"):
        for site in _site_packages(host, exe):
            where = f"{site}/torch/version.py"
            text = host.read(where, 16384)
            if text is None:
                continue
            m = _TORCH_CUDA.search(text)
            v = _TORCH_VERSION.search(text)
            cuda = None
            if m and m.group(1):
                parts = m.group(1).split(".")
                cuda = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
            out.append(Build("vllm", where, cuda, v.group(1) if v else "unknown"))
            break
    return out


def _cudart(host: HostView, folders: list[str]) -> tuple[str, CudaVersion] | None:
    """The lowest ``libcudart.so.X.Y…`` in ``folders``: (its path, (X, Y))."""
    found = []
    for folder in folders:
        for name in host.listdir(folder):
            m = _CUDART.match(name)
            if m:
                found.append(((int(m.group(1)), int(m.group(2))), f"{folder}/{name}"))
    if not found:
        return None
    version, path = min(found)
    return path, version


def native_builds(host: HostView, lab: LabConfig | None) -> list[Build]:
    """llama-server and Ollama builds that bundle a CUDA runtime (CPU builds are left out)."""
    out = []
    for exe in executables(host, lab, "llamacpp", "llama-server"):
        d = PurePosixPath(exe).parent
        hit = _cudart(host, [str(d), str(d.parent / "lib"), str(d.parent / "lib64")])
        if hit:
            out.append(Build("llama-server", hit[0], hit[1]))
    for exe in executables(host, None, "ollama", "ollama"):
        lib = PurePosixPath(exe).parent.parent / "lib" / "ollama"
        dirs = [str(lib / d) for d in host.listdir(str(lib)) if d.startswith("cuda_v")]
        hit = _cudart(host, dirs)
        if hit:  # Ollama loads the newest bundle the driver runs; its oldest is the floor
            out.append(Build("ollama", hit[0], hit[1]))
    return out


def arch_gap(cc: tuple[int, int], cuda: CudaVersion) -> str | None:
    """Why a build for ``cuda`` has no kernels for compute capability ``cc`` (None: it has)."""
    first = ARCH_FIRST_CUDA.get(cc)
    if first is None:  # between table rows: the nearest lower one of its major
        lower = [k for k in ARCH_FIRST_CUDA if k[0] == cc[0] and k <= cc]
        first = ARCH_FIRST_CUDA[max(lower)] if lower else None
    if first is not None and cuda < first:
        return (f"sm_{cc[0]}{cc[1]} needs a build for CUDA {cuda_text(first)} or newer; "
                f"this one is for CUDA {cuda_text(cuda)}")  # fmt: skip
    for since, floor in ARCH_DROPPED:
        if cuda >= since and cc < floor:
            return (f"builds for CUDA {cuda_text(since)}+ carry no sm_{cc[0]}{cc[1]} kernels "
                    f"(compute capability {cuda_text(floor)} and up only)")  # fmt: skip
    return None
