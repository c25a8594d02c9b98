"""A deployment's model files: whole in the hub cache before the engine starts, or pulled.

An engine that reads a Hugging Face repo from disk (vLLM, given ``owner/name``) must find
it whole in the hub cache: config, tokenizer and every weight shard
(:func:`labctl.cache.pull.serving_snapshot`). When it is not, preflight refuses the deploy
and names the ``labctl models pull`` to run; with ``[models] pull = true`` in lab.toml the
pull is a deploy step of its own (``pull``, journaled, its progress sent as ``startup``
events) before the rest of preflight. The twin (``sim``) reads no weights; llama.cpp and
whisper.cpp take a file path, which lab.toml's checks already require to exist.

The check and the pull run in worker threads: they read the disk and the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labctl.cache.location import hub_cache_dir
from labctl.cache.repoid import RepoRef, parse_ref
from labctl.config import DeploymentSpec, ModelsConfig
from labctl.deploy.journal import Journal
from labctl.errors import DeployError, LabError

if TYPE_CHECKING:
    from labctl.cache.pull import Progress

#: Engines that read their model from the hub cache when it names a repo.
READS_HUB = ("vllm",)


def hub_model(spec: DeploymentSpec) -> RepoRef | None:
    """The hub repo (and revision, vLLM's ``--revision``) whose files the engine reads; None
    when it reads none (another engine, a local path, no model)."""
    if spec.engine not in READS_HUB or not spec.model:
        return None
    if Path(spec.model).expanduser().exists():
        return None
    revision = spec.args.get("revision")
    ref = parse_ref(spec.model, str(revision) if revision else None)
    return ref if ref is not None and ref.quant is None else None


def pull_command(ref: RepoRef) -> str:
    revision = f" --revision {ref.revision}" if ref.revision != "main" else ""
    return f"labctl models pull {ref.repo_id}{revision}"


class ModelFiles:
    """Checks (and, where lab.toml lets it, pulls) the model files of a deploy."""

    def __init__(
        self,
        journal: Journal,
        progress: Callable[[str, dict[str, Any]], None],
        models: ModelsConfig | None = None,
    ) -> None:
        self.journal = journal
        #: Told of a pull's progress: (deployment, event fields), as engine startups are.
        self.progress = progress
        self.models = models or ModelsConfig()

    async def prepare(self, spec: DeploymentSpec, deploy_id: int) -> None:
        """Return once ``spec``'s model files are whole in the hub cache.

        Raises:
            DeployError: they are not and lab.toml does not allow a pull (the command to
                run is named), or the pull failed.
        """
        ref = hub_model(spec)
        if ref is None:
            return
        from labctl.cache.pull import pull, serving_snapshot  # huggingface_hub: only when needed

        cache = hub_cache_dir(self.models)
        snap = await asyncio.to_thread(serving_snapshot, ref.repo_id, ref.revision, cache)
        if snap.complete:
            return
        if not self.models.pull:
            with self.journal.step(deploy_id, "preflight", repo=ref.repo_id):
                raise DeployError(
                    f"{spec.name}: {ref.repo_id} {snap.why}; run `{pull_command(ref)}` first, or "
                    "set pull = true under [models] in lab.toml to pull it as a deploy step"
                )
        loop = asyncio.get_running_loop()

        def report(p: Progress) -> None:
            doc = {"phase": "pull", "repo": p.repo_id, "pulled_bytes": p.done_bytes,
                   "pull_bytes": p.total_bytes, "files_done": p.files_done,
                   "files": p.files_total, "rate": p.rate, "elapsed": p.seconds,
                   "line": p.note}  # fmt: skip
            loop.call_soon_threadsafe(self.progress, spec.name, doc)

        with self.journal.step(deploy_id, "pull", repo=ref.repo_id, revision=ref.revision) as step:
            try:
                result = await asyncio.to_thread(
                    pull, ref.repo_id, cache, revision=ref.revision, serving=True, report=report
                )
            except LabError as exc:
                raise DeployError(f"{spec.name}: pulling {ref.repo_id} failed: {exc}") from exc
            step.detail |= {"commit": result.commit, "files": len(result.files),
                            "bytes": result.bytes, "downloaded_bytes": result.downloaded_bytes,
                            "seconds": round(result.seconds, 3)}  # fmt: skip
