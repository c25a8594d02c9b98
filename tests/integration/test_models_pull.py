"""`labctl models pull` and `labctl fit REPO` against a hub endpoint on loopback.

The endpoint is ``tests/hubserver.py`` (the hub's routes and headers as huggingface_hub
reads them), run as a process of its own where a test kills it mid-file, in this process
elsewhere. labctl runs as a real command with ``HF_ENDPOINT`` pointing at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
import hashlib
import json
import os
from pathlib import Path
import re
import socket
import subprocess
import sys
import time

import pytest

from tests.hubserver import HubServer
from tests.tinymodels import TINY_LLAMA, write_gguf, write_hf_dir

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
#: A checkpoint past huggingface_hub's 10 MiB download chunk, so a file that breaks off
#: after 12 MB has 10 MiB on disk to resume from.
BIG = dict(TINY_LLAMA, vocab_size=32768, hidden_size=128)
HOLD_AT = 12_000_000
#: What every engine's environment names for gpus = [0] (``engines/base.py`` ``gpu_env``).
GPU0 = {
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    "CUDA_VISIBLE_DEVICES": "0",
    "NVIDIA_VISIBLE_DEVICES": "0",
}


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


def hf_env(tmp: Path, url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    return env | {"HF_ENDPOINT": url, "HF_HOME": str(tmp / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
                  "LABCTL_HOME": str(tmp / "home"), "COLUMNS": "200", **extra}  # fmt: skip


def labctl(env: dict[str, str], *args: str) -> Result:
    proc = subprocess.run([sys.executable, "-m", "labctl", *args], capture_output=True,
                          text=True, env=env, timeout=90)  # fmt: skip
    return Result(proc.returncode, proc.stdout, proc.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubProcess:
    """``python -m tests.hubserver`` serving a folder of repos, killed and restarted at will."""

    def __init__(self, root: Path, log_dir: Path) -> None:
        self.root, self.log_dir, self.port = root, log_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self, *hold: str) -> Path:
        self.runs += 1
        log = self.log_dir / f"hub-{self.runs}.log"
        args = [sys.executable, "-m", "tests.hubserver", str(self.root), "--port", str(self.port)]
        with log.open("wb") as out:
            self.proc = subprocess.Popen([*args, *(f"--hold={h}" for h in hold)], cwd=REPO,
                                         stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        wait_for(log, "listening")
        return log

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def wait_for(log: Path, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"{log.name}: no {text!r} in {log.read_text()!r}"
        time.sleep(0.05)


@pytest.fixture
def hub_process(tmp_path: Path) -> Iterator[HubProcess]:
    root = tmp_path / "repos"
    write_hf_dir(root / "acme" / "tiny", BIG)
    (root / "acme" / "tiny" / "tokenizer.json").write_text('{"version": "1.0"}')
    hub = HubProcess(root, tmp_path)
    try:
        yield hub
    finally:
        hub.kill()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def offline_snapshot(tmp: Path, repo_id: str) -> Path:
    """The snapshot as huggingface_hub itself finds it offline, in a fresh interpreter."""
    code = f"from huggingface_hub import snapshot_download; print(snapshot_download({repo_id!r}))"
    env = hf_env(tmp, "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60, check=True)  # fmt: skip
    return Path(proc.stdout.strip())


def test_a_pull_shows_progress_resumes_after_the_server_is_killed_mid_file_and_leaves_a_snapshot_huggingface_hub_reads_offline(
    tmp_path: Path, hub_process: HubProcess
) -> None:
    first = hub_process.start(f"acme/tiny:model.safetensors:{HOLD_AT}")
    env = hf_env(tmp_path, hub_process.url)
    pull = subprocess.Popen([sys.executable, "-m", "labctl", "models", "pull", "acme/tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        wait_for(first, f"held model.safetensors after {HOLD_AT} bytes")
        hub_process.kill()  # mid-file: 12 MB of 17 sent
        second = hub_process.start()
        out, err = pull.communicate(timeout=60)
    finally:
        pull.kill()
    assert pull.returncode == 0, err
    progress = re.findall(
        r"pulling acme/tiny: ([\d.]+ \w+) of 16\.38 MiB \(\d+%\) at ([\d.]+ \w+)/s", err
    )
    assert len(progress) >= 2 and progress[-1][0] == "16.38 MiB", err
    assert "connection lost" in err and "retrying" in err
    ranges = re.findall(r"GET /acme/tiny/resolve/\w+/model\.safetensors range=bytes=(\d+)-$",
                        second.read_text(), re.MULTILINE)  # fmt: skip
    assert ranges and int(ranges[0]) >= 10 * 2**20, second.read_text()  # resumed, not restarted
    assert "model.safetensors range" not in first.read_text()  # the first try asked from 0
    snapshot = offline_snapshot(tmp_path, "acme/tiny")
    source = hub_process.root / "acme" / "tiny"
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(p.name for p in source.iterdir())
    assert sha256(snapshot / "model.safetensors") == sha256(source / "model.safetensors")
    assert f"snapshot: {snapshot}" in out


def test_a_pull_that_breaks_off_says_so_in_one_line_and_running_it_again_completes(
    tmp_path: Path, hub_process: HubProcess
) -> None:
    first = hub_process.start(f"acme/tiny:model.safetensors:{HOLD_AT}")
    env = hf_env(tmp_path, hub_process.url)
    pull = subprocess.Popen([sys.executable, "-m", "labctl", "models", "pull", "acme/tiny",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    try:
        wait_for(first, "held model.safetensors")
        hub_process.kill()  # and it stays down: huggingface_hub's retries run out
        out, err = pull.communicate(timeout=60)
    finally:
        pull.kill()
    assert pull.returncode == 4 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("labctl: error: the download of acme/tiny broke off")
    assert "run `labctl models pull acme/tiny` again" in lines[0]
    hub_process.start()
    again = labctl(env, "models", "pull", "acme/tiny", "--json")
    assert again.code == 0, again.err
    doc = again.json()
    assert isinstance(doc, dict)
    cached = {f["path"] for f in doc["files"] if f["cached"]}
    assert "config.json" in cached and "model.safetensors" not in cached  # kept / fetched again
    assert doc["bytes"] == sum(p.stat().st_size for p in (hub_process.root / "acme/tiny").iterdir())
    assert again.err == ""  # --json: no progress lines
    got = Path(doc["snapshot"]) / "model.safetensors"
    assert sha256(got) == sha256(hub_process.root / "acme" / "tiny" / "model.safetensors")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    server = HubServer()
    tiny = tmp_path / "src" / "tiny"
    write_hf_dir(tiny, shards=2)
    server.add("acme/tiny", {p.name: p.read_bytes() for p in tiny.iterdir()})
    gg = tmp_path / "src" / "gguf"
    gg.mkdir()
    write_gguf(gg / "tiny-Q8_0.gguf")
    write_gguf(gg / "tiny-Q4_K_M.gguf", layers=3)
    files = {p.name: p.read_bytes() for p in gg.iterdir()} | {"README.md": b"# tiny"}
    server.add("acme/tiny-gguf", files)
    server.add("acme/gated", {p.name: p.read_bytes() for p in tiny.iterdir()})
    server.gate("acme/gated", "hf_accepted")
    with server.serve():
        yield server


def test_dry_run_quant_include_and_offline_choose_files_and_say_what_is_wrong(
    tmp_path: Path, hub: HubServer
) -> None:
    env = hf_env(tmp_path, hub.url)
    dry = labctl(env, "models", "pull", "acme/tiny-gguf", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    doc = dry.json()
    assert isinstance(doc, dict) and doc["dry_run"] is True and doc["snapshot"] is None
    sizes = {f["path"]: f["size"] for f in doc["files"]}
    assert sizes == {
        n: len(b) for n, b in hub.repos["acme/tiny-gguf"].commits[doc["revision"]].items()
    }
    assert not any(m == "GET" and p.endswith(".gguf") for m, p in hub.requests)  # nothing fetched
    text = labctl(env, "models", "pull", "acme/tiny-gguf", "--dry-run")
    assert text.code == 0 and "tiny-Q8_0.gguf" in text.out and "would download" in text.out
    q8 = labctl(env, "models", "pull", "acme/tiny-gguf", "--quant", "q8_0", "--json")
    assert q8.code == 0, q8.err
    q8doc = q8.json()
    assert isinstance(q8doc, dict) and [f["path"] for f in q8doc["files"]] == ["tiny-Q8_0.gguf"]
    assert (Path(q8doc["snapshot"]) / "tiny-Q8_0.gguf").stat().st_size == sizes["tiny-Q8_0.gguf"]
    missing = labctl(env, "models", "pull", "acme/tiny-gguf", "--quant", "Q3_K")
    assert missing.code == 4 and missing.err.strip() == (
        "labctl: error: acme/tiny-gguf has no GGUF file of quantization Q3_K; it has: Q4_K_M, Q8_0"
    )
    no_gguf = labctl(env, "models", "pull", "acme/tiny", "--quant", "Q8_0")
    assert no_gguf.code == 4 and "has no GGUF files" in no_gguf.err
    only = labctl(env, "models", "pull", "acme/tiny", "--include", "*.json", "--json")
    only_doc = only.json()
    assert isinstance(only_doc, dict)
    assert [f["path"] for f in only_doc["files"]] == ["config.json", "model.safetensors.index.json"]
    nothing = labctl(env, "models", "pull", "acme/tiny", "--include", "*.onnx")
    assert (
        nothing.code == 4
        and "no file of acme/tiny matches *.onnx; it has: config.json" in nothing.err
    )
    offline = labctl(hf_env(tmp_path, hub.url, HF_HUB_OFFLINE="1"), "models", "pull", "acme/tiny")
    assert offline.code == 4 and "HF_HUB_OFFLINE is set" in offline.err
    assert len(offline.err.strip().splitlines()) == 1


def test_fit_reads_a_repo_from_headers_online_and_the_same_offline_and_an_unseen_repo_offline_names_the_pull(
    tmp_path: Path, hub: HubServer
) -> None:
    env = hf_env(tmp_path, hub.url)
    online = labctl(env, "fit", "acme/tiny", "--gpu", "rtx-4090", "--json")
    assert online.code == 0, online.err
    local = labctl(env, "fit", str(tmp_path / "src" / "tiny"), "--gpu", "rtx-4090", "--json")
    doc, want = online.json(), local.json()
    assert isinstance(doc, dict) and isinstance(want, dict)
    assert (
        doc["weights_bytes"] == want["weights_bytes"]
        and doc["kv_bytes_per_token"] == want["kv_bytes_per_token"]
    )
    # only the headers were read, with range requests, never a whole weight file
    shards = [(p, r) for p, r in hub.ranges if p.endswith(".safetensors")]
    assert len(shards) == 2 and all(r.startswith("bytes=0-") for _, r in shards)
    gets = [p for m, p in hub.requests if m == "GET" and p.endswith(".safetensors")]
    assert sorted(gets) == sorted(p for p, _ in shards)
    gguf = labctl(env, "fit", "acme/tiny-gguf:Q8_0", "--gpu", "rtx-4090", "--json")
    gguf_local = labctl(env, "fit", str(tmp_path / "src" / "gguf" / "tiny-Q8_0.gguf"), "--gpu",
                        "rtx-4090", "--json")  # fmt: skip
    g, gl = gguf.json(), gguf_local.json()
    assert (
        isinstance(g, dict) and isinstance(gl, dict) and g["weights_bytes"] == gl["weights_bytes"]
    )
    asked = len(hub.requests)
    off = hf_env(tmp_path, "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    again = labctl(off, "fit", "acme/tiny", "--gpu", "rtx-4090", "--json")
    assert again.code == 0, again.err
    assert again.json() == doc and len(hub.requests) == asked
    g_again = labctl(off, "fit", "acme/tiny-gguf:Q8_0", "--gpu", "rtx-4090", "--json")
    assert g_again.code == 0 and g_again.json() == g
    unseen = labctl(off, "fit", "acme/unseen", "--gpu", "rtx-4090")
    assert unseen.code == 4 and len(unseen.err.strip().splitlines()) == 1
    assert (
        "HF_HUB_OFFLINE is set" in unseen.err and "`labctl models pull acme/unseen`" in unseen.err
    )
    # What fit left in the cache is listed as it is: config only, not a model to serve.
    listed = labctl(off, "models", "--json").json()
    tiny = next(m for m in listed["models"] if m["repo_id"] == "acme/tiny")
    assert tiny["complete"] is False and tiny["format"] == "none"
    assert any("`labctl models pull acme/tiny`" in n for n in tiny["notes"])


def test_a_gated_repo_needs_a_token_a_missing_one_is_named_and_a_dead_endpoint_is_said(
    tmp_path: Path, hub: HubServer
) -> None:
    env = hf_env(tmp_path, hub.url)
    gated = labctl(env, "fit", "acme/gated", "--gpu", "rtx-4090")
    assert gated.code == 4 and len(gated.err.strip().splitlines()) == 1
    assert (
        "acme/gated is gated: " in gated.err
        and "Access to model acme/gated is restricted" in gated.err
    )
    assert "HF_TOKEN" in gated.err and "hf auth login" in gated.err and "licence" in gated.err
    token = labctl(hf_env(tmp_path, hub.url, HF_TOKEN="hf_accepted"), "fit", "acme/gated",
                   "--gpu", "rtx-4090", "--json")  # fmt: skip
    assert token.code == 0, token.err
    pull = labctl(env, "models", "pull", "acme/gated")
    assert pull.code == 4 and "acme/gated is gated" in pull.err
    missing = labctl(env, "fit", "acme/nothing-here", "--gpu", "rtx-4090")
    assert missing.code == 4
    assert f"no such repo acme/nothing-here on {hub.url}" in missing.err
    dead = labctl(hf_env(tmp_path, f"http://127.0.0.1:{free_port()}"), "fit", "acme/other")
    assert dead.code == 4 and "cannot reach" in dead.err and "offline use needs" in dead.err


def deploy_probe(env: dict[str, str], tmp: Path, *args: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-m", "tests.integration.modelfiles_probe", "acme/tiny",
                           str(tmp / "journal.db"), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=90)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict)
    return doc


def test_a_vllm_deploy_of_a_repo_not_in_the_cache_is_refused_with_the_pull_to_run_or_pulls_it_as_a_step(
    tmp_path: Path, hub: HubServer
) -> None:
    env = hf_env(tmp_path, hub.url)
    refused = deploy_probe(env, tmp_path)
    assert refused["error"] == (
        f"chat: acme/tiny is not in the hub cache ({tmp_path}/hf/hub); run `labctl models pull "
        "acme/tiny` first, or set pull = true under [models] in lab.toml to pull it as a deploy "
        "step"
    )
    steps = refused["steps"]
    assert isinstance(steps, list)
    assert [(s["name"], s["outcome"]) for s in steps] == [("preflight", "failed")]
    assert refused["env"] == GPU0  # no snapshot: vLLM may go online
    pulled = deploy_probe(env, tmp_path, "--pull")
    assert pulled["error"] is None
    steps = pulled["steps"]
    assert isinstance(steps, list) and [s["name"] for s in steps] == ["pull"]
    size = sum(
        len(b) for b in hub.repos["acme/tiny"].commits[steps[0]["detail"]["commit"]].values()
    )
    assert steps[0]["outcome"] == "ok" and steps[0]["detail"]["bytes"] == size
    events = pulled["events"]
    assert isinstance(events, list) and events and events[-1]["phase"] == "pull"
    assert events[-1]["pulled_bytes"] == events[-1]["pull_bytes"] == size
    assert pulled["env"] == GPU0 | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": f"{tmp_path}/hf/hub"}
    again = deploy_probe(env, tmp_path)  # whole now: nothing to refuse, nothing to pull
    assert again["error"] is None and again["steps"] == []
