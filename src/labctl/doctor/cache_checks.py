"""Checks of the model cache on this host: a Hugging Face token for gated repos, partial
downloads, and the filesystem the cache and the deployments' model files are on.

The hub cache is read with huggingface_hub at the path the lab names (``[models]
hf_cache``), as the engines read it; the mount table and the token file through the
context's :class:`~labctl.doctor.host.HostView`.
"""

from __future__ import annotations

from pathlib import Path

from labctl.doctor import modelcache
from labctl.doctor.finding import Context, Finding, Skip, check
from labctl.doctor.host import HostView
from labctl.doctor.say import Say
from labctl.secrets import fingerprint
from labctl.units import format_bytes

#: A partial download younger than this may belong to a download still running (as
#: ``labctl models prune``'s default ``--grace``).
PARTIAL_GRACE_S = 3600.0


def hf_token(host: HostView) -> tuple[str, str] | None:
    """(token, where) as huggingface_hub finds it: ``HF_TOKEN``, else the token file
    (``HF_TOKEN_PATH``, else ``$HF_HOME/token``, else ``~/.cache/huggingface/token``)."""
    env = host.env
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = env.get(name, "").strip()
        if value:
            return value, f"${name}"
    cache = env.get("XDG_CACHE_HOME") or f"{env.get('HOME') or Path.home()}/.cache"
    path = env.get("HF_TOKEN_PATH") or f"{env.get('HF_HOME') or cache + '/huggingface'}/token"
    text = (host.read(path, 4096) or "").strip()
    return (text, path) if text else None


@check(
    "hf-token-missing",
    "host",
    "a Hugging Face token for gated repos",
    """A gated repo (Llama, Gemma, …) answers 401 "Cannot access gated repo … You must have
    access to it and be authenticated" without the token of an account that accepted its
    licence. Reads HF_TOKEN and the token file (HF_TOKEN_PATH, $HF_HOME/token,
    ~/.cache/huggingface/token); shows only that a token is set, never its value. Whether a
    repo is gated cannot be known offline. Fix: `hf auth login` (or HF_TOKEN), and accept the
    licence on the model's page.""",
    rows=(19,),
)
def hf_token_missing(ctx: Context) -> list[Finding]:
    say = Say("hf-token-missing")
    found = hf_token(ctx.host)
    if found is not None:
        token, where = found
        prefix = "hf_…" if token.startswith("hf_") else "…"
        shown = f"{prefix} ({len(token)} characters, {fingerprint(token)})"
        return say("ok", f"a Hugging Face token is set ({where})", f"{where}: {shown}")
    readers = [s.name for s, _ in modelcache.hub_deployments(ctx.lab)] if ctx.lab else None
    evidence = "HF_TOKEN unset; no token file ($HF_HOME/token, ~/.cache/huggingface/token)"
    if readers == []:
        return say("ok", "no Hugging Face token, and no deployment reads a hub repo", evidence)
    who = f"deployment(s) {', '.join(readers)} read hub repos; " if readers else ""
    return say(
        "info",
        f'no Hugging Face token: {who}a gated repo (Llama, Gemma, …) answers 401 "Cannot '
        'access gated repo" without one',
        evidence,
        "`hf auth login` (or set HF_TOKEN where `labctl up` runs), and accept the model's "
        "licence on its Hugging Face page",
    )


def _repo_of(path: Path) -> str:
    """``…/models--org--name/blobs/x.incomplete`` → ``org/name``."""
    return path.parent.parent.name.split("--", 1)[-1].replace("--", "/")


@check(
    "partial-downloads",
    "host",
    "partial downloads in the model cache",
    """A download that broke off (or an engine that fetched its model at start and was
    stopped) leaves `.incomplete` blobs in the hub cache; vLLM then "hangs downloading" at
    serve time. Read with huggingface_hub's cache scan; a blob written within the hour may
    belong to a download still running. Fix: `labctl models pull REPO` finishes it, `labctl
    models prune` removes the leftovers.""",
    rows=(20,),
)
def partial_downloads(ctx: Context) -> list[Finding]:
    from labctl.cache.hfcache import scan_hub

    say = Say("partial-downloads")
    cache = modelcache.cache_dir(ctx.lab)
    if not cache.is_dir():
        raise Skip(f"no hub cache at {cache}")
    scan = scan_hub(cache)
    files = sorted(scan.info.incomplete_files if scan.info else (), key=lambda f: f.file_path)
    if not files:
        return say(
            "ok",
            "no partial downloads in the hub cache",
            f"huggingface_hub scan_cache_dir({cache}): no .incomplete blobs",
        )
    now = ctx.host.clock()
    stale = []
    for f in files:
        try:
            if now - f.file_path.stat().st_mtime >= PARTIAL_GRACE_S:
                stale.append(f)
        except OSError:
            continue
    shown = stale or files
    repos = sorted({_repo_of(f.file_path) for f in shown})
    size = format_bytes(sum(f.size_on_disk for f in shown))
    evidence = f"{shown[0].file_path}: {len(shown)} .incomplete blob(s), {size}"
    if not stale:
        return say(
            "info",
            f"{len(files)} partial download(s) of {', '.join(repos)} written within the hour: a "
            "download may still be running",
            evidence,
            f"let it finish, or `labctl models pull {repos[0]}` to resume it",
        )
    return say(
        "warn",
        f"{len(stale)} partial download(s) of {', '.join(repos)} ({size}) in the hub cache: a "
        "download broke off",
        evidence,
        f"`labctl models pull {repos[0]}` finishes it; `labctl models prune` removes the leftovers",
    )


@check(
    "model-cache-network-fs",
    "host",
    "model cache on a network filesystem or in RAM",
    """Engines read weights through mmap's small reads; on NFS, SMB, Lustre or a FUSE mount
    of an object store a cold start reads at the network's rate (43 minutes for 894 GiB on
    EFS), and on tmpfs the models take RAM and are gone after a reboot. Reads
    /proc/self/mountinfo for the hub cache and the deployments' model files. Fix: copy the
    models to a local NVMe disk; for vLLM on a network disk, `--safetensors-load-strategy
    eager`.""",
    rows=(21,),
)
def model_cache_fs(ctx: Context) -> list[Finding]:
    from labctl.cache.disk import mount_of, parse_mountinfo

    say = Say("model-cache-network-fs")
    text = ctx.host.read("/proc/self/mountinfo")
    if text is None:
        raise Skip("no /proc/self/mountinfo to read")
    mounts = parse_mountinfo(text)
    cache = modelcache.cache_dir(ctx.lab)
    places = [("the hub cache", str(cache))]
    for spec in ctx.lab.deployments if ctx.lab is not None else ():
        path = modelcache.local_model(spec)
        if path:
            places.append((f"deployments.{spec.name}.model", path))
    out = []
    for what, path in places:
        m = mount_of(Path(path), mounts)
        if m is None or not (m.network or m.ram):
            continue
        evidence = f"/proc/self/mountinfo: {m.mount_point} {m.fs_type} {m.source}"
        if m.ram:
            message = f"{what} {path} is on {m.fs_type}: the models take RAM beside the engines"
            remedy = "point [models] hf_cache (or the model's path) at a local disk"
        else:
            message = (
                f"{what} {path} is on {m.fs_type} ({m.source}), a network filesystem: a cold "
                "start reads the weights at the network's rate"
            )
            remedy = (
                "copy the models to a local NVMe disk and point [models] hf_cache there; for "
                "vLLM meanwhile, `--safetensors-load-strategy eager` (args = { "
                'safetensors_load_strategy = "eager" })'
            )
        out.append(say.one("warn", message, evidence, remedy))
    if out:
        return out
    m = mount_of(cache, mounts)
    if m is None:
        raise Skip(f"no mount in /proc/self/mountinfo holds {cache}")
    return say(
        "ok",
        f"the hub cache {cache} is on {m.fs_type} ({m.mount_point}), a local filesystem",
        f"/proc/self/mountinfo: {m.mount_point} {m.fs_type} {m.source}",
    )
