"""``labctl models pull``: download a model repo into the Hugging Face hub cache."""

from __future__ import annotations

from pathlib import Path
import sys
import time
from typing import TYPE_CHECKING

import click
from rich.table import Table

from labctl.cache.location import hub_cache_dir
from labctl.cli.output import console, emit_json
from labctl.config import load_config
from labctl.units import format_bytes

if TYPE_CHECKING:
    from labctl.cache.pull import Progress, PullResult

#: Seconds between progress lines when stderr is not a terminal (a log, a CI job).
LINE_EVERY_S = 1.0


class _Meter:
    """One progress line on stderr: redrawn in place on a terminal, else a line a second."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.width = 0

    def __call__(self, p: Progress) -> None:
        if p.note:
            self._line(f"labctl: pull: {p.note}", keep=True)
        now = time.monotonic()
        final = p.total_bytes and p.done_bytes >= p.total_bytes
        if self.tty or final or now - self.last >= LINE_EVERY_S:
            self.last = now
            self._line(self.text(p), keep=not self.tty)

    @staticmethod
    def text(p: Progress) -> str:
        share = f" ({100 * p.done_bytes / p.total_bytes:.0f}%)" if p.total_bytes else ""
        return (
            f"pulling {p.repo_id}: {format_bytes(p.done_bytes)} of "
            f"{format_bytes(p.total_bytes)}{share} at {format_bytes(p.rate)}/s, "
            f"{p.files_done} of {p.files_total} files"
        )

    def _line(self, text: str, keep: bool) -> None:
        if self.tty:
            pad = " " * max(0, self.width - len(text))
            sys.stderr.write(f"\r{text}{pad}" + ("\n" if keep else ""))
            self.width = 0 if keep else len(text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty and self.width:
            sys.stderr.write("\n")
            sys.stderr.flush()


@click.command()
@click.argument("repo", metavar="REPO")
@click.option("--revision", metavar="REV", help="a branch, tag or commit (default: main)")
@click.option("--include", multiple=True, metavar="PATTERN",
              help="only the files matching this glob, e.g. '*.safetensors' (repeatable)")  # fmt: skip
@click.option("--quant", metavar="QUANT",
              help="in a GGUF repo, the file(s) of this quantization, e.g. Q4_K_M")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="list the files and sizes; download nothing")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="lab.toml whose [models] hf_cache is the cache to fill")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def pull(
    repo: str,
    revision: str | None,
    include: tuple[str, ...],
    quant: str | None,
    dry_run: bool,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Download REPO (owner/name) from the Hugging Face hub into the hub cache, where vLLM,
    `hf` and llama.cpp read it, through huggingface_hub: HF_ENDPOINT, HF_TOKEN and
    HF_HUB_OFFLINE apply. A connection that drops mid-file is resumed with a range request;
    a pull that fails keeps the files it completed, and running it again fetches the rest.

    `--json`: repo, revision (the commit), ref, files (path, size, cached), bytes (all the
    files), downloaded_bytes, seconds, snapshot (its folder), dry_run, notes.
    """
    from labctl.cache.pull import pull as pull_repo  # huggingface_hub: imported when it is used

    models = load_config(config_path, check_host=False).models if config_path else None
    cache = hub_cache_dir(models)
    meter = _Meter()
    try:
        result = pull_repo(repo, cache, revision=revision, include=include, quant=quant,
                           dry_run=dry_run, report=(lambda p: None) if as_json else meter)  # fmt: skip
    finally:
        meter.done()
    if as_json:
        emit_json(result.to_json())
    else:
        _render(result, cache)


def _render(r: PullResult, cache: Path) -> None:
    out = console()
    if r.dry_run:
        fetch = sum(f.size for f in r.files if not f.cached)
        out.print(
            f"{r.repo_id} at {r.commit[:12]} ({r.revision}): {len(r.files)} files, "
            f"{format_bytes(r.bytes)}; would download {format_bytes(fetch)} into {cache}"
        )
        t = Table()
        for col in ("file", "size", "in the cache"):
            t.add_column(col, justify="right" if col == "size" else "left")
        for f in r.files:
            t.add_row(f.path, format_bytes(f.size), "yes" if f.cached else "no")
        out.print(t)
        return
    rate = r.downloaded_bytes / r.seconds if r.seconds > 0 else 0.0
    out.print(
        f"{r.repo_id} at {r.commit[:12]} ({r.revision}): {len(r.files)} files, "
        f"{format_bytes(r.bytes)}; downloaded {format_bytes(r.downloaded_bytes)} in "
        f"{r.seconds:.1f} s ({format_bytes(rate)}/s)"
    )
    out.print(f"snapshot: {r.snapshot}")
