"""`labctl models disk` against `dd` on the same file, on tmpfs, and on a hub cache."""

from __future__ import annotations

from collections.abc import Callable
import json
import os
from pathlib import Path
import re
import statistics
import subprocess
import sys

from tests.integration.conftest import Run

MiB = 2**20


def dd_rate(path: Path) -> float:
    """Bytes per second `dd` reads ``path`` at, cold: with O_DIRECT, else after dropping the
    file's pages with posix_fadvise (a filesystem that refuses O_DIRECT)."""
    run = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4M", "iflag=direct"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    if run.returncode != 0:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        run = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4M"],
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    m = re.search(r"^(\d+) bytes .* copied, ([0-9.e-]+) s", run.stderr, re.M)
    assert m, run.stderr
    return int(m.group(1)) / float(m.group(2))


def test_the_read_rate_is_within_2x_of_dd_on_the_same_file(
    labctl: Callable[..., Run], tmp_path: Path
) -> None:
    weights = tmp_path / "model-00001-of-00001.safetensors"
    block = os.urandom(16 * MiB)
    with weights.open("wb") as fh:
        for _ in range(16):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    ours, theirs = [], []
    for _ in range(5):  # in pairs, each pair at the disk's pace of the moment
        theirs.append(dd_rate(weights))
        doc = labctl("models", "disk", str(weights), "--json", check=True).json()
        assert isinstance(doc, dict)
        assert doc["file"] == str(weights) and doc["bytes"] == 256 * MiB
        assert doc["method"] in ("o_direct", "fadvise") and doc["temporary"] is False
        ours.append(doc["bytes"] / doc["seconds"])
        assert doc["read_gbps"] == round(ours[-1] / 1e9, 3)
    ratio = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
    assert 0.5 <= ratio <= 2.0, (ours, theirs)
    assert doc["mount"]["mount_point"] and doc["mount"]["fs_type"]
    assert doc["saved"] and Path(doc["saved"]).exists() == doc["cold"]
    text = labctl("models", "disk", str(weights), "--max-bytes", "64MiB", check=True).out
    assert re.search(rf"read 0\.07 GB of {weights.name} in [0-9.]+ s: [0-9.]+ GB/s, cold", text)
    assert "10 GB of weights load in about" in text


def test_tmpfs_is_flagged_as_memory_not_a_disk(labctl: Callable[..., Run]) -> None:
    run = labctl("models", "disk", "/dev/shm", "--max-bytes", "32MiB", "--json", check=True)
    doc = run.json()
    assert isinstance(doc, dict)
    assert doc["mount"]["fs_type"] == "tmpfs" and doc["mount"]["ram"] is True
    assert doc["flags"] == ["tmpfs: RAM, not a disk (the rate is memory's)"]
    assert doc["temporary"] is True and doc["bytes"] == 32 * MiB
    assert doc["cold"] is False and doc["saved"] is None  # memory's rate predicts no start
    assert not Path(doc["file"]).exists()  # the temporary file is gone
    text = labctl("models", "disk", "/dev/shm", "--max-bytes", "32MiB", check=True).out
    assert "from memory" in text and "note: tmpfs: RAM, not a disk" in text


def test_the_hub_cache_is_measured_by_its_largest_blob(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    blobs = hub / "models--org--tiny" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "a1b2").write_bytes(os.urandom(MiB) * 70)
    (blobs / "c3d4").write_bytes(b"{}")
    with (blobs / "e5f6.incomplete").open("wb") as partial:  # larger, but still downloading
        partial.truncate(75 * MiB)
    env = dict(os.environ, HF_HUB_CACHE=str(hub), LABCTL_HOME=str(tmp_path / "home"))

    def disk(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "labctl", "models", "disk", *args],
                              capture_output=True, text=True, env=env, timeout=60)  # fmt: skip

    run = disk("--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["path"] == str(hub) and doc["file"] == str(blobs / "a1b2")
    assert doc["bytes"] == 70 * MiB and doc["temporary"] is False
    if doc["cold"]:
        kept = json.loads((tmp_path / "home" / "disk.json").read_text())["measurements"]
        assert kept[doc["mount"]["mount_point"]]["read_gbps"] == doc["read_gbps"]
    env["HF_HUB_CACHE"] = str(hub / "not-yet")
    text = disk("--max-bytes", "16MiB")
    assert f"the hub cache {hub / 'not-yet'} does not exist yet" in text.stdout
    assert "read 0.02 GB of models--org--tiny/blobs/a1b2" in text.stdout  # the parent's largest
    bad = disk(str(tmp_path / "nowhere"))
    assert bad.returncode != 0 and bad.stdout == ""
    assert bad.stderr.strip() == (f"labctl: error: {tmp_path / 'nowhere'}: no such file or "
                                  "directory; give a path on the disk to measure")  # fmt: skip
    bad = disk("--max-seconds", "0")
    assert bad.stderr.startswith("labctl: error: --max-seconds 0: give a positive number")
