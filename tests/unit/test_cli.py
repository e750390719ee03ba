"""The command line answers without a Docker engine for what needs none."""

from __future__ import annotations

from typer.testing import CliRunner

from watcher import __version__
from watcher.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__


def test_help_lists_the_testbed_and_demo() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "testbed" in result.stdout and "demo" in result.stdout


def test_bad_option_is_a_usage_error_not_a_traceback() -> None:
    result = runner.invoke(app, ["testbed", "up", "--replicas", "0"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
