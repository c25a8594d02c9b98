"""A daemon killed (SIGKILL) at every journaled step of a deploy, then started again.

After the restart exactly one revision serves, every process of the lab's belongs to it (none
is left running unowned, however far the deploy got), and the journal has no open deploy.
``LABCTL_FAULT_KILL_AT=STEP[@SECONDS]`` makes the daemon kill itself when STEP has begun.
"""

from __future__ import annotations

from pathlib import Path
import sqlite3

import pytest

from tests.integration.lab import Daemon, Lab, wait_for

ARGS = "{ max_model_len = 4096, time_scale = 0.05, load_gbps = 0, IGNORE }"

#: (kill at, the deploy's extra settings, the engine ignores SIGTERM)
CASES = [
    ("preflight", [], False),
    ("drain", [], False),
    ("stop", [], False),
    ("stop@1", [], True),  # during the grace period of an engine that ignores SIGTERM
    ("verify_release", [], False),
    ("start", [], False),
    ("start@0.5", ["load_gbps=0.2"], False),  # the new engine spawned, loading its weights
    ("smoke_test", [], False),
    ("switch", [], False),
    ("rollback", ["fail_completions=true"], False),  # the new revision failed its smoke test
    ("rollback@0.3", ["fail_completions=true"], False),
]


def lab_toml(tmp_path: Path, deaf: bool) -> Path:
    args = ARGS.replace("IGNORE", f"ignore_sigterm = {'true' if deaf else 'false'}")
    path = tmp_path / "lab.toml"
    path.write_text(
        '[lab]\ngpu_backend = "sim"\nsim_gpus = "1xrtx-3090"\n\n'
        '[deployments.chat]\nengine = "sim"\nmodel = "Qwen/Qwen3-0.6B"\n'
        f"stop_grace = {10 if deaf else 5}\nargs = {args}\n"
    )
    return path


def marked(home: Path) -> set[int]:
    """Every living process started as one of this lab's engines (or forked by one)."""
    out = set()
    needle = f"LABCTL_ENGINE_OF={home}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if needle in env and state not in "ZX":
            out.add(int(entry.name))
    return out


def open_deploys(home: Path) -> list[tuple[int, str, str]]:
    db = sqlite3.connect(f"file:{home / 'journal.db'}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT id, deployment, kind FROM deploys WHERE finished IS NULL"
        ).fetchall()
    finally:
        db.close()


def one_revision_serves(d: Daemon, home: Path) -> dict[str, object]:
    ready = d.wait_state("chat", "ready", timeout=60)
    engines = [p for p in d.api("GET", "/api/ps")["processes"] if p["role"] == "engine"]
    assert [p["pid"] for p in engines] == [ready["pid"]], engines
    owned = {p["pid"] for p in d.api("GET", "/api/ps")["processes"]}
    wait_for(lambda: marked(home) <= owned, 15, "leftover engine processes to be gone")
    return ready


@pytest.mark.parametrize(("kill_at", "settings", "deaf"), CASES, ids=[c[0] for c in CASES])
def test_a_daemon_killed_at_a_deploy_step_restarts_to_one_serving_revision(
    lab: Lab, tmp_path: Path, kill_at: str, settings: list[str], deaf: bool
) -> None:
    config = lab_toml(tmp_path, deaf)
    d = lab.up("--config", str(config), env={"LABCTL_FAULT_KILL_AT": kill_at})
    first = d.wait_state("chat", "ready", timeout=30)
    flags = [x for s in [*settings, "max_model_len=2048"] for x in ("--set", s)]
    if deaf:
        flags += ["--set", "ignore_sigterm=false"]
    client = lab.start("deploy", "chat", *flags, "--url", d.url)
    assert d.proc.wait(60) == -9, "the daemon was to kill itself at " + kill_at
    client.wait(30)
    assert open_deploys(lab.home), "the deploy was left open by the killed daemon"
    again = lab.up("--config", str(config))
    ready = one_revision_serves(again, lab.home)
    assert open_deploys(lab.home) == []
    if kill_at.split("@")[0] in ("stop", "verify_release", "start", "smoke_test", "rollback"):
        assert ready["pid"] != first["pid"]  # the old engine was stopped (or was being)
    history = again.api("GET", "/api/history?deployment=chat")["deploys"]
    assert all(r["outcome"] is not None for r in history)
    # the restarted lab deploys cleanly again
    again.api("POST", "/api/deployments/chat/deploy", {"set": {"max_model_len": 3072}})
    one_revision_serves(again, lab.home)
