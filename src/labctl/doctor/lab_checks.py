"""Checks of the lab itself, from its ``lab.toml``: the engines its deployments run (on PATH,
and their versions), the listen address against the keys, the deployments' models in the
hub cache and the room left there, and the clock against the state directory's files.

Each skips without a lab config. The daemon's own limits (open files, memlock) are the host
checks ``open-files-limit`` and ``memlock-limit``: they read the running daemon's.
"""

from __future__ import annotations

from datetime import UTC, datetime
import os
from pathlib import Path
import re

from labctl.config import (
    DeploymentSpec,
    LabConfig,
    check_exposure,
    is_loopback,
    parse_listen,
    state_dir,
)
from labctl.doctor import modelcache
from labctl.doctor.finding import Context, Finding, Skip, check
from labctl.doctor.say import Say
from labctl.engines import adapter
from labctl.errors import ConfigError, LabError
from labctl.units import GiB, format_bytes

#: How to install each engine's executable (a deployment's ``binary`` names another).
INSTALL = {
    "vllm": "`pip install vllm` in the environment `labctl up` runs in",
    "llamacpp": "install llama.cpp's llama-server (a release build, or `cmake --build build "
    "--target llama-server` in llama.cpp)",
    "whispercpp": "build whisper.cpp's whisper-server (`cmake --build build --target "
    "whisper-server` in whisper.cpp)",
    "openvla": "install Python 3 with OpenVLA's requirements",
    "command": "install it",
}
#: Seconds a state file may seem to come from the future before the clock counts as set back
#: (file systems round times; a network disk's server may differ a little).
CLOCK_SLACK_S = 60.0
#: Entries looked at in the state directory when finding its newest file.
STATE_WALK_LIMIT = 2000
_VERSION = re.compile(r"version", re.IGNORECASE)


def _lab(ctx: Context) -> LabConfig:
    if ctx.lab is None:
        raise Skip("no lab config")
    return ctx.lab


# -- engines --------------------------------------------------------------------------


def executable(spec: DeploymentSpec) -> tuple[str, str | None]:
    """(the executable a deployment's engine runs, OpenVLA's script or None): the first
    item of the command line its adapter builds, as a deploy would start it."""
    # Without the model: the executable does not depend on it, and vLLM's launch would read
    # the hub cache for it.
    settings = {**spec.to_dict(), "model": ""}
    try:
        argv = adapter(spec.engine).launch(settings, "127.0.0.1", 0, spec.gpus).argv
    except (LabError, LookupError, TypeError, ValueError, OSError):
        argv = [spec.binary or (spec.command[0] if spec.command else spec.engine)]
    script = argv[1] if spec.engine == "openvla" and argv[0] == "python" else None
    return argv[0], script


def dist_version(exe: str, package: str) -> tuple[str, Path] | None:
    """The version of ``package`` installed beside its console script, from its
    ``*.dist-info`` folder, without running it (``vllm --version`` imports torch: seconds)."""
    prefixes = [Path(exe).parent.parent, Path(os.path.realpath(exe)).parent.parent]
    try:
        with open(exe, "rb") as fh:
            head = fh.read(256)
    except OSError:
        head = b""
    if head.startswith(b"#!"):
        words = head[2:].split(b"\n", 1)[0].split()
        if words:
            prefixes.append(Path(os.fsdecode(words[0])).parent.parent)
    for prefix in dict.fromkeys(prefixes):
        for info in sorted(prefix.glob(f"lib/python3*/*-packages/{package}-*.dist-info")):
            return info.name[len(package) + 1 : -len(".dist-info")], info
    return None


def _engine(ctx: Context, spec: DeploymentSpec) -> Finding:
    say = Say("engine-missing", f"lab: deployment {spec.name}")
    exe, script = executable(spec)
    name = Path(exe).name
    key = f"deployments.{spec.name}." + ("command[0]" if spec.engine == "command" else "binary")
    path = ctx.host.which(exe)
    if path is None:
        where = "is not an executable file" if "/" in exe else "is not on PATH"
        return say.one(
            "fail",
            f"{exe} (the {spec.engine} engine of deployment {spec.name}) {where}",
            f"which {exe}: not found (PATH {ctx.host.path or ctx.host.env.get('PATH', '')})",
            f"{INSTALL[spec.engine]}, or set {key} to its full path",
        )
    if script is not None and not ctx.host.file(os.path.abspath(script)).is_file():
        return say.one(
            "fail",
            f"OpenVLA's server script {script} (deployment {spec.name}) is not there",
            f"{os.path.abspath(script)}: no such file",
            f"set deployments.{spec.name}.binary to the path of OpenVLA's vla-scripts/deploy.py",
        )
    if spec.engine == "vllm":
        found = dist_version(path, "vllm")
        if found is not None:
            return say.one("ok", f"vllm {found[0]} at {path}", f"{found[1]}")
    if spec.engine not in ("vllm", "llamacpp", "whispercpp"):
        return say.one("ok", f"{name} is at {path}", f"which {exe}: {path}")
    flag = "--help" if spec.engine == "whispercpp" else "--version"
    res = ctx.host.run([exe, flag])
    shown = f"`{name} {flag}`"
    if res is None:
        return say.one(
            "fail",
            f"{path} cannot be started",
            f"{shown}: exec failed",
            f"check that {path} is an executable for this machine, or set {key} to one",
        )
    if res.timed_out:
        return say.one(
            "ok",
            f"{name} is at {path} (its version unknown: {shown} gave no answer in "
            f"{ctx.host.timeout:g} s)",
            f"{shown}: timed out",
        )
    lines = [ln.strip() for ln in (res.stdout + "\n" + res.stderr).splitlines() if ln.strip()]
    if res.returncode != 0:
        error = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
        return say.one(
            "fail",
            f"{path} does not start: {shown} exits {res.returncode} ({error[:120]})",
            f"{shown}: exit {res.returncode}: {error}",
            f"run {shown} to see why; reinstall or rebuild it, or set {key} to a working build",
        )
    version = next((ln for ln in lines if _VERSION.search(ln)), None)
    if version is None:
        return say.one("ok", f"{name} is at {path} (it prints no version)", f"{shown}: exit 0")
    return say.one("ok", f"{name} at {path}: {version}", f"{shown}: {version}")


@check(
    "engine-missing",
    "lab",
    "the deployments' engines on PATH, and their versions",
    """Each deployment's engine must be installed where `labctl up` runs: vllm, llama-server,
    whisper-server, OpenVLA's script (with python) or a command engine's executable, as its
    `binary` (or `command`) names it. Reads PATH, then the version: vLLM's from its installed
    package metadata, `llama-server --version`, `whisper-server --help`. A binary that does
    not start (a missing shared library) fails too. Fix: install the engine, or set the
    deployment's `binary` to its full path.""",
)
def engines(ctx: Context) -> list[Finding]:
    lab = _lab(ctx)
    specs = [
        s
        for s in lab.deployments
        if s.engine != "sim"
        and not s.runtime  # in a container: the image holds it
        and not (s.engine == "command" and "{" in executable(s)[0])
    ]
    if not specs:
        raise Skip("no deployment runs an external engine on the host (the twin is built in, "
                   "a container's is in its image)")  # fmt: skip
    return [_engine(ctx, spec) for spec in specs]


# -- the listener ---------------------------------------------------------------------


@check(
    "listen-exposed",
    "lab",
    "the listen address against API keys and the admin token",
    """A lab that listens beyond loopback takes requests from the network: it then needs API
    keys ([[gateway.keys]]) and an admin token (gateway.admin_token), as `labctl up` insists.
    Reads lab.listen and [gateway]. Fix: add both, or listen on 127.0.0.1.""",
)
def listen_exposed(ctx: Context) -> list[Finding]:
    lab = _lab(ctx)
    say = Say("listen-exposed", "lab")
    host, port = parse_listen(lab.listen)
    keys, token = len(lab.gateway.keys), lab.gateway.admin_token is not None
    evidence = (
        f"{lab.source}: lab.listen = {lab.listen!r}; {keys} API key(s); admin token "
        f"{'set' if token else 'not set'}"
    )
    try:
        check_exposure(host, lab.gateway, "lab.listen")
    except ConfigError as exc:
        return say(
            "fail",
            str(exc),
            evidence,
            f"add [[gateway.keys]] and gateway.admin_token to {lab.source}, or set lab.listen = "
            f'"127.0.0.1:{port}"',
        )
    if keys and token and not is_loopback(host):
        message = f"listens on {host} beyond loopback, with {keys} API key(s) and an admin token"
        return say("ok", message, evidence)
    return say("ok", f"listens on loopback ({host}) only", evidence)


# -- the model cache ------------------------------------------------------------------


def _wanted(ctx: Context, lab: LabConfig) -> tuple[Path, list[modelcache.Wanted]]:
    """The hub cache and each vLLM deployment's repo in it, read once per doctor run."""
    cache = modelcache.cache_dir(lab)
    return cache, ctx.host.memo(f"lab-models:{cache}", lambda: modelcache.wanted(lab, cache))


@check(
    "model-not-cached",
    "lab",
    "a vLLM deployment's model not whole in the hub cache",
    """vLLM given a repo id reads it from the hub cache and downloads what is missing at start,
    where it "hangs downloading" on a slow link; preflight refuses such a deploy unless
    [models] pull = true. Checks each vLLM deployment of a repo id as the deploy does (config,
    tokenizer, every weight shard; huggingface_hub's tree listing where a download left one).
    Fix: `labctl models pull REPO`.""",
    rows=(20,),
)
def model_not_cached(ctx: Context) -> list[Finding]:
    lab = _lab(ctx)
    cache, wanted = _wanted(ctx, lab)
    if not wanted:
        raise Skip(
            "no vllm deployment reads a Hugging Face repo (the twin reads no weights; llama.cpp "
            "and whisper.cpp take files)"
        )
    out = []
    for w in wanted:
        say = Say("model-not-cached", f"lab: deployment {w.spec.name}")
        repo = w.ref.repo_id
        if w.snapshot.complete:
            out.append(say.one("ok", f"{repo} is whole in the hub cache", f"{w.snapshot.path}"))
            continue
        path = w.snapshot.path
        snap = f"snapshot {path.name[:12]} {w.snapshot.why}" if path else "no snapshot"
        evidence = f"hub cache {cache}: {repo} at {w.ref.revision}: {snap}"
        if lab.models.pull:
            message = f"{repo} {w.snapshot.why}, {w.to_download()}: a deploy pulls it first"
            out.append(say.one("info", f"{message} ([models] pull = true)", evidence))
            continue
        out.append(
            say.one(
                "fail",
                f"{repo} {w.snapshot.why}, {w.to_download()}: preflight refuses the deploy",
                evidence,
                f"`{modelcache.pull_command(w.ref)}` (or set pull = true under [models])",
            )
        )
    return out


@check(
    "model-cache-space",
    "lab",
    "free space for the models the lab still has to download",
    """The hub cache's filesystem must hold the models the deployments still lack, and a
    little more: with under 1 GiB free any pull, and an engine's own download, fails.
    Reads statvfs of the cache and the bytes each vLLM deployment's repo still needs (the
    tree listing a download left, else the planner's weight bytes). Fix: `labctl models
    prune`, `labctl models rm REPO`, or point [models] hf_cache at a larger disk.""",
    rows=(21,),
)
def model_cache_space(ctx: Context) -> list[Finding]:
    lab = _lab(ctx)
    say = Say("model-cache-space", "lab")
    cache, wanted = _wanted(ctx, lab)
    at = modelcache.existing(cache)
    try:
        st = ctx.host.statvfs(str(at))
    except OSError as exc:
        raise Skip(f"statvfs({at}): {exc.strerror or exc}") from None
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    evidence = f"statvfs({at}): {format_bytes(free)} free of {format_bytes(total)}"
    short = [w for w in wanted if not w.snapshot.complete]
    need = sum(w.missing_bytes or 0 for w in short)
    repos = ", ".join(f"{w.ref.repo_id}, {w.to_download()}" for w in short)
    remedy = (
        "`labctl models prune` (partial downloads, detached revisions), `labctl models rm REPO` "
        "(models no deployment uses), or point [models] hf_cache at a larger disk"
    )
    if free < GiB:
        return say(
            "fail",
            f"the hub cache's disk has {format_bytes(free)} free: any pull, and an engine's own "
            "download, fails (No space left on device)",
            evidence,
            remedy,
        )
    if need > free:
        return say(
            "warn",
            f"the deployments' models need {format_bytes(need)} more than the hub cache holds, "
            f"and {format_bytes(free)} is free at {at} ({repos})",
            evidence,
            remedy,
        )
    rest = f" (still to come: {repos})" if short else ""
    return say("ok", f"{format_bytes(free)} free for the hub cache at {at}{rest}", evidence)


# -- the clock ------------------------------------------------------------------------


def newest_file(home: Path, limit: int = STATE_WALK_LIMIT) -> tuple[float, Path] | None:
    """The newest file (mtime, path) in ``home`` and its folders one level down."""
    best: tuple[float, Path] | None = None
    folders, seen = [(home, 0)], 0
    while folders:
        folder, depth = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            seen += 1
            if seen > limit:
                return best
            try:
                if e.is_dir(follow_symlinks=False):
                    if depth < 1:
                        folders.append((Path(e.path), depth + 1))
                elif e.is_file(follow_symlinks=False):
                    mtime = e.stat(follow_symlinks=False).st_mtime
                    if best is None or mtime > best[0]:
                        best = (mtime, Path(e.path))
            except OSError:
                continue
    return best


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@check(
    "clock-went-back",
    "lab",
    "the clock against the state directory's newest file",
    """The journal orders deployment steps by time; when the clock goes back (no time sync,
    a VM restored from a snapshot, a wrong RTC at boot) new entries sort before old ones and
    the dashboard's times jump. Compares the clock with the newest modification time in
    $LABCTL_HOME (the journal, logs, the admin token); a file more than a minute in the
    future means the clock went back. Fix: `sudo timedatectl set-ntp true`.""",
)
def clock_went_back(ctx: Context) -> list[Finding]:
    _lab(ctx)
    say = Say("clock-went-back", "lab")
    home = state_dir()
    if not home.is_dir():
        raise Skip(f"no state directory at {home} yet (`labctl up` makes it)")
    newest = newest_file(home)
    if newest is None:
        raise Skip(f"no file in {home} yet")
    mtime, path = newest
    now = ctx.host.clock()
    evidence = f"mtime of {path}: {_iso(mtime)}; clock: {_iso(now)}"
    if mtime - now > CLOCK_SLACK_S:
        return say(
            "warn",
            f"{path.name} in $LABCTL_HOME was written {mtime - now:.0f} s in the future: the "
            "clock went back, so new journal entries sort before older ones",
            evidence,
            "`sudo timedatectl set-ntp true`, then check the time with `timedatectl`",
        )
    return say(
        "ok",
        f"the clock is past the newest file in $LABCTL_HOME ({path.name}, written "
        f"{max(0.0, now - mtime):.0f} s ago)",
        evidence,
    )
