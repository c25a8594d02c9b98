"""``labctl report`` at the command line: where no lab answers, it says so in one line."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from labctl.cli.main import cli


def test_report_without_a_lab_says_none_answers(tmp_path: Path) -> None:
    env = {"LABCTL_URL": "http://127.0.0.1:9", "LABCTL_HOME": str(tmp_path / "home")}
    result = CliRunner(env=env).invoke(cli, ["report", "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert "no lab answers at http://127.0.0.1:9" in result.output
    assert not (tmp_path / "r").exists()  # nothing written
