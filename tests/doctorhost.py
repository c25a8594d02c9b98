"""Fixture machines for the doctor's tests: files under a tmp root, fake commands on a tmp
PATH, a lab.toml, and a hub cache written in the layout huggingface_hub reads (blobs,
refs, a snapshot of links, ``.incomplete`` blobs, a tree listing)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from labctl.config import LabConfig, load_config
from labctl.doctor.finding import Context, Finding, Skip, checks
from labctl.doctor.host import HostView

NOW = 1_800_000_000.0
COMMIT = "c0ffee" + "0" * 34


def write(root: Path, path: str, content: str | bytes) -> Path:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    return p


def fake_exe(bindir: Path, name: str, body: str) -> Path:
    """A shell script on the fake PATH (``body`` is its text after the shebang)."""
    bindir.mkdir(parents=True, exist_ok=True)
    p = bindir / name
    p.write_text(f"#!/bin/sh\n{body}\n")
    p.chmod(0o755)
    return p


def lab_toml(tmp_path: Path, text: str) -> LabConfig:
    path = tmp_path / "lab.toml"
    path.write_text(text)
    return load_config(path, check_host=False)


def hub_repo(
    cache: Path, repo: str, files: dict[str, bytes], partial: bytes | None = None,
    tree: dict[str, int] | None = None,
) -> Path:  # fmt: skip
    """A repo in the hub cache as huggingface_hub writes one: blobs, refs/main, a snapshot
    of links, an ``.incomplete`` blob, and a tree listing when given."""
    d = cache / ("models--" + repo.replace("/", "--"))
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text(COMMIT)
    snap = d / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (d / "blobs").mkdir()
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (d / "blobs" / blob).write_bytes(data)
        (snap / name).symlink_to(f"../../blobs/{blob}")
    if partial is not None:
        (d / "blobs" / ("f" * 64 + ".incomplete")).write_bytes(partial)
    if tree is not None:
        listing = {n: {"size": s, "blob_id": "0" * 40} for n, s in tree.items()}
        (d / "trees").mkdir()
        (d / "trees" / f"{COMMIT}.json").write_text(
            json.dumps({"format_version": 1, "files": listing})
        )
    return d


class Runs:
    """A fixture machine's checks, run one code at a time (``view()`` is the machine)."""

    def view(self) -> HostView:
        raise NotImplementedError

    def run(self, code: str, lab: LabConfig | None = None) -> list[Finding]:
        found = list(checks()[code].run(Context(self.view(), lab)))
        assert found and all(f.code == code for f in found)
        return found

    def one(self, code: str, lab: LabConfig | None = None) -> Finding:
        (f,) = self.run(code, lab)
        return f

    def skip(self, code: str, lab: LabConfig | None = None) -> str:
        with pytest.raises(Skip) as info:
            checks()[code].run(Context(self.view(), lab))
        return str(info.value)
