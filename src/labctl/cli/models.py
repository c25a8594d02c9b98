"""``labctl models``: the models on disk (the Hugging Face hub cache, ``[models] paths``,
Ollama's store), what fits where, and ``rm``, ``prune``, ``verify``; ``--catalog`` is the
built-in model catalog."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
import sys
import time
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table
from rich.text import Text

from labctl.catalog.models import catalog, catalog_arch, variants
from labctl.cli.output import console, emit_json, warn
from labctl.config import LabConfig, load_config
from labctl.errors import UsageError
from labctl.units import format_bytes, parse_duration, parse_size

if TYPE_CHECKING:
    from labctl.cache.entry import CacheEntry
    from labctl.cache.inventory import Inventory
    from labctl.cache.verify import Progress, Verification
    from labctl.cli.modelfit import Fit, LabGpu

#: Files at least this large show hashing progress on stderr.
PROGRESS_BYTES = 64 << 20

_config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path),
    help="lab.toml: its [models] places and deployments (default: the embedded default lab)",
)  # fmt: skip
_json_option = click.option("--json", "as_json", is_flag=True, help="print one JSON document")


@click.group(invoke_without_command=True)
@click.option("--catalog", "show_catalog", is_flag=True,
              help="the built-in model catalog instead of what is on disk")  # fmt: skip
@_config_option
@click.option("--gpu", "gpu_ids", multiple=True, metavar="ID",
              help="plan 'fits on' for these catalog GPUs instead of the lab's, e.g. rtx-4090, "
              "t4,h200 or 4xh100-sxm (repeatable)")  # fmt: skip
@click.option("--format", "fmt", metavar="FORMAT",
              help="only this weights format: safetensors, gguf, pytorch-bin, pytorch, onnx, none")  # fmt: skip
@click.option(
    "--min-size", metavar="SIZE", help="only models at least this big, e.g. 1GB or 500MiB"
)
@click.option("--unused", is_flag=True, help="only models no deployment of the lab uses")
@_json_option
@click.pass_context
def models(
    ctx: click.Context,
    show_catalog: bool,
    config_path: Path | None,
    gpu_ids: tuple[str, ...],
    fmt: str | None,
    min_size: str | None,
    unused: bool,
    as_json: bool,
) -> None:
    """The models on disk: the Hugging Face hub cache (HF_HUB_CACHE, HF_HOME), lab.toml's
    [models] paths and Ollama's store, with format, quantization, size, whether each is
    complete, which deployments use it and which of the lab's GPUs it fits at its own
    context length (`labctl fit`'s plan).

    `--json` entries: repo_id, revision, source (hf-cache, gguf, local, ollama), format,
    quantization, size_bytes (partial downloads included, in partial_bytes; a blob two
    revisions of a repo share counts once, in main's revision), complete, missing_files,
    last_accessed (ISO 8601, UTC), used_by (deployment names), fits_on (GPU labels such as
    "0: rtx-3090"), notes. Nothing is read from the network.
    """
    listing = (config_path, gpu_ids, fmt, min_size, unused)
    if ctx.invoked_subcommand is not None:
        if show_catalog or as_json or any(v for v in listing):
            raise UsageError(
                f"options go after the subcommand: labctl models {ctx.invoked_subcommand} [OPTIONS]"
            )
        return
    if show_catalog:
        if any(v for v in listing):
            raise UsageError(
                "--catalog shows the built-in catalog; --config, --gpu, --format, --min-size "
                "and --unused apply to the models on disk (drop --catalog)"
            )
        _catalog_view(as_json)
        return
    _inventory_view(config_path, gpu_ids, fmt, min_size, unused, as_json)


def _lab(config_path: Path | None) -> LabConfig:
    """lab.toml, read for its [models] and deployments (model files need not exist)."""
    return load_config(config_path, check_host=False)


# -- the listing ---------------------------------------------------------------------------


def _inventory_view(
    config_path: Path | None,
    gpu_ids: Sequence[str],
    fmt: str | None,
    min_size: str | None,
    unused: bool,
    as_json: bool,
) -> None:
    from labctl.cache.entry import FORMATS
    from labctl.cli.modelfit import lab_gpus

    if fmt is not None and fmt.lower() not in FORMATS:
        raise UsageError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    floor = 0
    if min_size is not None:
        try:
            floor = parse_size(min_size)
        except ValueError as exc:
            raise UsageError(f"--min-size: {exc}") from None
    config = _lab(config_path)
    gpus = lab_gpus(config, gpu_ids)

    def keep(e: CacheEntry, users: list[str]) -> bool:
        return not ((fmt and e.format != fmt.lower()) or e.size_bytes < floor or (unused and users))

    inv, rows, fits = disk_models(config, gpus, keep)
    if as_json:
        emit_json(inventory_doc(config, gpus, inv, rows, fits))
        return
    for w in inv.warnings:
        warn(w)
    _render(inv, rows, fits, [g.label for g in gpus])


def disk_models(
    config: LabConfig,
    gpus: Sequence[LabGpu],
    keep: Callable[[CacheEntry, list[str]], bool] = lambda e, users: True,
) -> tuple[Inventory, list[tuple[CacheEntry, list[str]]], list[Fit]]:
    """The models on disk that ``keep`` keeps, the deployments using each, and where each fits."""
    from labctl.cache.inventory import scan, used_by
    from labctl.cli.modelfit import fits_on

    inv = scan(config.models)
    rows = []
    for e in inv.entries:
        users = used_by(e, config.deployments)
        if keep(e, users):
            rows.append((e, users))
    return inv, rows, fits_on([e for e, _ in rows], gpus)


def inventory_doc(
    config: LabConfig,
    gpus: Sequence[LabGpu],
    inv: Inventory,
    rows: Sequence[tuple[CacheEntry, list[str]]],
    fits: Sequence[Fit],
) -> dict[str, Any]:
    """``labctl models --json``'s document."""
    return {
        "models": [_entry_doc(e, users, f) for (e, users), f in zip(rows, fits, strict=True)],
        "cache_dir": str(inv.cache_dir),
        "ollama": [str(p) for p in inv.ollama],
        "paths": list(inv.paths),
        "lab": config.source,
        "gpus": [g.label for g in gpus],
        "warnings": list(inv.warnings),
    }


def _entry_doc(e: CacheEntry, users: list[str], fit: Fit) -> dict[str, Any]:
    doc = e.to_json()
    doc["used_by"] = users
    doc["fits_on"] = list(fit.fits_on)
    if fit.note:
        doc["notes"].append(fit.note)
    return doc


def _render(
    inv: Inventory, rows: list[tuple[CacheEntry, list[str]]], fits: list[Fit], gpus: list[str]
) -> None:
    out = console()
    if not inv.entries:
        out.print(f"no models on disk (looked in {inv.looked_in()})")
        out.print(
            "pull one with `labctl models pull REPO`, e.g. labctl models pull Qwen/Qwen3-0.6B"
        )
        return
    total = sum(e.size_bytes for e, _ in rows)
    t = Table(title=f"models on disk · {len(rows)} · {format_bytes(total)} · "
                    f"GPUs {', '.join(gpus) or 'none'}")  # fmt: skip
    for col in ("model", "revision", "source", "format", "quant", "size", "complete",
                "last access", "used by", "fits on"):  # fmt: skip
        t.add_column(col, justify="right" if col == "size" else "left")
    notes = []
    for (e, users), fit in zip(rows, fits, strict=True):
        complete = "yes" if e.complete else (
            f"no: {len(e.missing)} missing" if e.missing else "no: partial" if e.partial_bytes
            else "no")  # fmt: skip
        t.add_row(
            e.repo_id,
            _revision(e),
            e.source,
            e.format,
            e.quantization or "—",
            format_bytes(e.size_bytes),
            complete,
            _when(e.last_accessed),
            ", ".join(users) or "—",
            _indices(fit.fits_on) or ("?" if fit.note else "none"),
        )
        notes += [f"{e.repo_id}: {n}" for n in (*e.notes, *((fit.note,) if fit.note else ()))]
    out.print(t)
    if not rows:
        out.print(f"no models match the filters ({len(inv.entries)} on disk)")
    for n in notes:
        out.print(Text(f"note: {n}", style="dim"))


def _indices(labels: Sequence[str]) -> str:
    """GPU labels ("0: rtx-3090", …) as their indices, runs joined: ``0-3, 6``."""
    nums = sorted(int(label.split(":", 1)[0]) for label in labels)
    runs: list[list[int]] = []
    for n in nums:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def _revision(e: CacheEntry) -> str:
    if e.revision is None:
        return "—"
    if e.source != "hf-cache":
        return e.revision
    return e.revision[:8] + (f" ({', '.join(e.refs)})" if e.refs else " (detached)")


def _when(ts: float | None) -> str:
    from labctl.cache.entry import iso_time

    text = iso_time(ts)
    return text[:16].replace("T", " ") if text else "—"


def _catalog_view(as_json: bool) -> None:
    """The built-in model catalog and the quantized variants it knows by name."""
    entries = [(e, catalog_arch(e.id)) for e in catalog()]
    quantized = [(v, catalog_arch(v.id)) for v in variants()]
    if as_json:
        emit_json(
            {
                "models": [
                    {
                        "id": e.id,
                        "family": e.family,
                        "params": a.param_count,
                        "active_params": a.active_param_count,
                        "max_position_embeddings": a.max_position_embeddings,
                        "aliases": list(e.aliases),
                        "seed": e.seed,
                        "source": e.source,
                    }
                    for e, a in entries
                ],
                "variants": [
                    {"id": v.id, "base": v.base, "format": a.quant.method if a.quant else None}
                    for v, a in quantized
                ],
            }
        )
        return
    out = console()
    t = Table(
        title="model catalog (* seed models; repo ids that name a format also resolve, e.g. ...-FP8, ...-AWQ)"
    )
    for col in ("id", "family", "params", "active", "context"):
        t.add_column(col, justify="right" if col in ("params", "active", "context") else "left")
    for e, a in entries:
        t.add_row(
            e.id + (" *" if e.seed else ""),
            e.family,
            f"{a.param_count / 1e9:.1f}B",
            f"{a.active_param_count / 1e9:.1f}B",
            f"{a.max_position_embeddings:,}",
        )
    out.print(t)
    v_t = Table(title="published quantized variants")
    for col in ("id", "base", "format"):
        v_t.add_column(col)
    for v, a in quantized:
        v_t.add_row(v.id, v.base, a.quant.method if a.quant else "-")
    out.print(v_t)


# -- rm, prune, verify ---------------------------------------------------------------------


def _confirm(question: str, yes: bool, command: str) -> None:
    """Ask before deleting, on a terminal; elsewhere ``--yes`` must say so.

    Raises:
        UsageError: no terminal to ask on and no ``--yes``.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{command} deletes files: pass --yes, or --dry-run to see what it "
                         "would delete")  # fmt: skip
    click.confirm(question, abort=True, err=True)


@models.command()
@click.argument("target", metavar="REPO")
@click.option(
    "--revision", help="only this revision: a commit (or its first 7+ characters) or a ref"
)
@click.option(
    "--dry-run", is_flag=True, help="say what would go and the space it frees; delete nothing"
)
@click.option("--yes", "-y", is_flag=True, help="delete without asking")
@click.option("--force", is_flag=True, help="delete even what a deployment of the lab uses")
@_config_option
@_json_option
def rm(target: str, revision: str | None, dry_run: bool, yes: bool, force: bool,
       config_path: Path | None, as_json: bool) -> None:  # fmt: skip
    """Delete a model from the hub cache (all its revisions, or --revision), or a loose GGUF
    file of [models] paths (REPO is then its name or path). Ollama's models are left to
    `ollama rm`, and model folders to their owner."""
    from labctl.cache.inventory import scan, select
    from labctl.cache.maintain import check_unused, execute, plan_removal

    config = _lab(config_path)
    inv = scan(config.models)
    entries = select(inv, target, revision)
    if not force:
        check_unused(entries, config.deployments, config.source)
    removal = plan_removal(inv, entries)
    doc: dict[str, Any] = {
        "target": target,
        "removed": [
            {"repo_id": e.repo_id, "revision": e.revision, "source": e.source, "path": str(e.path)}
            for e in removal.entries
        ],
        "freed_bytes": removal.freed_bytes,
        "partial_bytes": removal.partial_bytes,
        "paths": [str(p) for p in removal.paths()],
        "dry_run": dry_run,
        "errors": [],
    }
    revs = [e.revision[:12] for e in removal.entries if e.source == "hf-cache" and e.revision]
    what = f"{target} ({', '.join(revs)})" if revs else target
    if not dry_run:
        _confirm(f"delete {what}, freeing {format_bytes(removal.freed_bytes)}?", yes, "rm")
        doc["errors"] = execute(removal)
    if as_json:
        emit_json(doc)
    else:
        verb = "would free" if dry_run else "freed"
        click.echo(f"{what}: {verb} {format_bytes(removal.freed_bytes)} "
                   f"({removal.freed_bytes:,} bytes)")  # fmt: skip
        for p in removal.paths():
            click.echo(f"  {'would delete' if dry_run else 'deleted'} {p}")
    for line in doc["errors"]:
        warn(f"not deleted: {line}")
    if doc["errors"]:
        sys.exit(1)


@models.command()
@click.option(
    "--dry-run", is_flag=True, help="say what would go and the space it frees; delete nothing"
)
@click.option("--grace", default="1h", show_default=True, metavar="DURATION",
              help="leave partial downloads written within this long (one may still be running)")  # fmt: skip
@click.option("--yes", "-y", is_flag=True, help="delete without asking")
@_config_option
@_json_option
def prune(dry_run: bool, grace: str, yes: bool, config_path: Path | None, as_json: bool) -> None:
    """Delete partial downloads and hub revisions no ref points to any more (the branch
    moved on), except those a deployment of the lab uses."""
    from labctl.cache.inventory import scan
    from labctl.cache.maintain import execute_prune, plan_prune

    try:
        grace_s = parse_duration(grace)
    except ValueError as exc:
        raise UsageError(f"--grace: {exc}") from None
    config = _lab(config_path)
    inv = scan(config.models)
    p = plan_prune(inv, config.deployments, grace_s)
    errors: list[str] = []
    if not dry_run and (p.revisions or p.partial_files):
        _confirm(f"delete {len(p.revisions)} revision(s) and {len(p.partial_files)} partial "
                 f"download(s), freeing {format_bytes(p.freed_bytes)}?", yes, "prune")  # fmt: skip
        errors = execute_prune(p)
    if as_json:
        emit_json({
            "revisions": [{"repo_id": e.repo_id, "revision": e.revision, "path": str(e.path)}
                          for e in p.revisions],
            "partial_files": [{"path": str(f), "size_bytes": n} for f, n in p.partial_files],
            "kept": list(p.kept), "freed_bytes": p.freed_bytes, "dry_run": dry_run,
            "errors": errors,
        })  # fmt: skip
    else:
        verb = "would free" if dry_run else "freed"
        click.echo(f"{len(p.revisions)} detached revision(s), {len(p.partial_files)} partial "
                   f"download(s): {verb} {format_bytes(p.freed_bytes)} ({p.freed_bytes:,} bytes)")  # fmt: skip
        for e in p.revisions:
            click.echo(f"  {e.repo_id} {e.revision}")
        for f, n in p.partial_files:
            click.echo(f"  {f} ({format_bytes(n)})")
        for k in p.kept:
            click.echo(f"  kept: {k}")
    for line in errors:
        warn(f"not deleted: {line}")
    if errors:
        sys.exit(1)


@models.command()
@click.argument("target", metavar="[REPO]", required=False)
@click.option(
    "--revision", help="only this revision: a commit (or its first 7+ characters) or a ref"
)
@_config_option
@_json_option
def verify(
    target: str | None, revision: str | None, config_path: Path | None, as_json: bool
) -> None:
    """Check sizes and hashes of a model's files (every model's without REPO) against the
    metadata its store kept: hub blobs are named by their sha256 (weights) or git sha1 and
    the tree listing gives sizes; Ollama's blobs by their sha256. Offline. Exits 1 when a
    file is corrupt or missing."""
    from labctl.cache.inventory import scan, select
    from labctl.cache.verify import verify as run_verify

    if revision is not None and target is None:
        raise UsageError("--revision needs a REPO: labctl models verify REPO --revision REV")
    config = _lab(config_path)
    inv = scan(config.models)
    entries = select(inv, target, revision) if target else list(inv.entries)
    result = run_verify(inv, entries, _progress())
    if as_json:
        emit_json(_verify_doc(result))
    else:
        _render_verify(result)
    if result.bad:
        sys.exit(1)


def _progress() -> Progress:
    """Hashing progress for big files, on stderr, about twice a second."""
    last = [0.0]

    def show(label: str, done: int, total: int) -> None:
        if total < PROGRESS_BYTES:
            return
        now = time.monotonic()
        if done < total and now - last[0] < 0.5:
            return
        last[0] = now
        click.echo(f"\rverifying {label}: {format_bytes(done)} of {format_bytes(total)}",
                   err=True, nl=done >= total)  # fmt: skip

    return show


def _verify_doc(r: Verification) -> dict[str, Any]:
    return {
        "ok": not r.bad,
        "checked": [
            {
                "repo_id": c.repo_id,
                "revision": c.revision,
                "source": c.source,
                "files": c.files,
                "bytes_hashed": c.bytes,
            }
            for c in r.checked
        ],
        "bad": [
            {
                "repo_id": b.repo_id,
                "revision": b.revision,
                "file": b.file,
                "problem": b.problem,
                "expected": b.expected,
                "found": b.found,
            }
            for b in r.bad
        ],
        "skipped": list(r.skipped),
    }


def _render_verify(r: Verification) -> None:
    for c in r.checked:
        bad = [b for b in r.bad if (b.repo_id, b.revision) == (c.repo_id, c.revision)]
        rev = f" {c.revision[:12]}" if c.revision else ""
        state = f"{len(bad)} bad" if bad else "ok"
        click.echo(f"{c.repo_id}{rev}: {state} ({c.files} file(s), "
                   f"{format_bytes(c.bytes)} hashed)")  # fmt: skip
        for b in bad:
            click.echo(f"  {b.file}: {b.problem}: expected {b.expected}, found {b.found}")
    for s in r.skipped:
        click.echo(f"skipped: {s}")
    if not r.checked:
        click.echo("nothing to verify")
