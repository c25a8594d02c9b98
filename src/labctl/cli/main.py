"""The ``labctl`` command line.

Every reporting command takes ``--json`` and then prints exactly one JSON
document on stdout. Errors are one line on stderr naming the problem and the
fix, with a non-zero exit code; a :class:`LabError` never becomes a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
import sys
from typing import Any

import click

from labctl import __version__
from labctl.errors import LabError, UsageError


class _Group(click.Group):
    """Click group whose usage errors are one line too."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("standalone_mode", False)
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(0)
        except click.UsageError as exc:
            hint = (
                f" (see 'labctl {exc.ctx.command_path.split(' ', 1)[-1]} --help')"
                if exc.ctx and " " in exc.ctx.command_path
                else " (see 'labctl --help')"
            )
            click.echo(f"labctl: error: {exc.format_message()}{hint}", err=True)
            sys.exit(UsageError.exit_code)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("labctl: aborted", err=True)
            sys.exit(130)
        except LabError as exc:
            click.echo(f"labctl: error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(
    cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="labctl")
def cli() -> None:
    """Operate LLM, speech and VLA inference on GPUs you own."""


def _register() -> None:
    from labctl.cli import bench as bench_cmd
    from labctl.cli import doctor as doctor_cmd
    from labctl.cli import export as export_cmd
    from labctl.cli import exporter as exporter_cmd
    from labctl.cli import exportk8s, exportsystemd, modeldisk, modelpull
    from labctl.cli import fit as fit_cmd
    from labctl.cli import gpus as gpus_cmd
    from labctl.cli import lab as lab_cmd
    from labctl.cli import models as models_cmd
    from labctl.cli import report as report_cmd
    from labctl.cli import sim as sim_cmd

    cli.add_command(fit_cmd.fit)
    cli.add_command(bench_cmd.bench)
    cli.add_command(export_cmd.export)
    export_cmd.export.add_command(exportsystemd.systemd)
    export_cmd.export.add_command(exportk8s.kubernetes)
    for command in (lab_cmd.up, lab_cmd.down, lab_cmd.status, lab_cmd.ps, lab_cmd.deploy,
                    lab_cmd.cancel, lab_cmd.rollback, lab_cmd.history, lab_cmd.dashboard):  # fmt: skip
        cli.add_command(command)
    cli.add_command(gpus_cmd.gpus)
    cli.add_command(doctor_cmd.doctor)
    cli.add_command(report_cmd.report)
    models_cmd.models.add_command(modeldisk.disk)
    models_cmd.models.add_command(modelpull.pull)
    cli.add_command(models_cmd.models)
    cli.add_command(exporter_cmd.exporter)
    cli.add_command(sim_cmd.sim)


_register()


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="labctl")
