"""``labctl export systemd``: the lab as a systemd service that survives reboots."""

from __future__ import annotations

import os
from pathlib import Path
import pwd
import sys

import click

from labctl.cache.location import hub_cache_dir
from labctl.cli.export import make_out
from labctl.config import LabConfig, load_config, state_dir
from labctl.doctor.finding import ignored_checks
from labctl.errors import UsageError
from labctl.export.systemd import DROPIN, UNIT, Host, files, search_path


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="lab.toml, as `labctl up` takes it (default: the embedded default lab)")  # fmt: skip
@click.option("--out", "out", default=".", show_default=True,
              type=click.Path(path_type=Path), help="folder to write")  # fmt: skip
def systemd(config_path: Path | None, out: Path) -> None:
    """A systemd unit that runs `labctl up` at boot (Type=notify: ready once the deployments
    are), and a drop-in with your account and paths (labctl.service.d/paths.conf); check it
    with `systemd-analyze verify OUT/labctl.service`."""
    config = load_config(config_path)  # validated whole, as `labctl up` would
    ignored_checks(config)
    if config_path is not None:
        if not config_path.is_file():  # a pipe, e.g. <(…): gone by the next boot
            raise UsageError(f"--config {config_path}: not a regular file; the unit reads it at "
                             "every start, so give a lab.toml that stays")  # fmt: skip
        config_path = config_path.resolve()
    make_out(out)
    host = Host(
        command=(*_labctl(), "up", *(("--config", str(config_path)) if config_path else ())),
        home=state_dir().absolute(),
        user=None if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name,
        env=_env(config, str(hub_cache_dir(config.models).absolute())),
    )
    for name, text in files(config, host):
        path = out / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    where = out.absolute()
    click.echo(f"wrote {where}/{UNIT} and {where}/{DROPIN}; install them with")
    click.echo(f"  sudo cp {where}/{UNIT} /etc/systemd/system/ && "
               f"sudo cp -r {where}/{UNIT}.d /etc/systemd/system/")  # fmt: skip
    click.echo("  sudo systemctl daemon-reload && sudo systemctl enable --now labctl")
    click.echo("  then: systemctl status labctl, journalctl -u labctl -f")


def _labctl() -> tuple[str, ...]:
    """This labctl, absolute: the ``labctl`` script beside this Python (its venv or pipx
    install), else this Python with ``-m labctl``."""
    python = Path(sys.executable).absolute()
    script = python.parent / "labctl"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (str(python), "-m", "labctl")


def _env(config: LabConfig, hub_cache: str) -> dict[str, str]:
    """The drop-in's environment: the model cache the lab reads, Ollama's store when set,
    and ``PATH`` (the engines' binaries)."""
    env = {"HF_HUB_CACHE": hub_cache}
    if config.models.ollama is None and os.environ.get("OLLAMA_MODELS"):
        env["OLLAMA_MODELS"] = str(Path(os.environ["OLLAMA_MODELS"]).expanduser().absolute())
    if path := search_path(os.environ.get("PATH", "")):
        env["PATH"] = path
    return env
