"""Shared output helpers for commands: JSON documents, tables, error lines."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console


def emit_json(doc: object) -> None:
    """Print one JSON document on stdout and nothing else."""
    click.echo(json.dumps(doc, indent=2, default=str))


def console() -> Console:
    """A console on stdout; plain text when stdout is not a terminal."""
    return Console(
        highlight=False, markup=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160
    )


def warn(message: str) -> None:
    click.echo(f"labctl: warning: {message}", err=True)
