"""``labctl sim``: the simulated GPUs (and, later, the twin engine)."""

from __future__ import annotations

import os
import sys

import click

from labctl.config import state_dir
from labctl.errors import UsageError
from labctl.units import parse_duration, parse_size


@click.group()
def sim() -> None:
    """Simulated GPUs and engines, for labs without a free GPU."""


@sim.command()
@click.option("--gpu", "index", type=int, default=0, show_default=True, help="simulated GPU index")
@click.option("--memory", required=True, help="how much to hold, e.g. 8GiB or 512MiB")
@click.option("--worker", is_flag=True, help="hold the memory in a worker child, as engines do")
@click.option(
    "--orphan-worker",
    is_flag=True,
    help="like --worker, but the worker outlives this process when it is killed",
)
@click.option(
    "--for", "duration", metavar="DURATION", help="release after this long (default: until killed)"
)
def hold(index: int, memory: str, worker: bool, orphan_worker: bool, duration: str | None) -> None:
    """Hold memory on a simulated GPU until killed, as a loaded model does.

    Prints "READY <this pid> <holder pid>" once the memory is held. The memory is
    released when the holding process exits, however it exits.
    """
    from labctl.gpu.sim import SimMachine
    from labctl.gpu.sim import hold as hold_memory

    try:
        nbytes = parse_size(memory)
    except ValueError as exc:
        raise UsageError(f"--memory: {exc}") from exc
    seconds = None
    if duration is not None:
        try:
            seconds = parse_duration(duration)
        except ValueError as exc:
            raise UsageError(f"--for: {exc}") from exc

    def ready(holder: int) -> None:
        click.echo(f"READY {os.getpid()} {holder}")
        sys.stdout.flush()

    try:
        hold_memory(
            SimMachine(state_dir()),
            index,
            nbytes,
            worker=worker or orphan_worker,
            orphan=orphan_worker,
            seconds=seconds,
            on_ready=ready,
        )
    except KeyboardInterrupt:
        sys.exit(130)
