"""The command line answers without a Docker engine for what needs none."""

from __future__ import annotations

from typer.testing import CliRunner

from testbed.cli import app as bed_cli
from watcher import __version__
from watcher.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__


def test_product_help_lists_its_commands_and_not_the_testbed() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "replay", "rules", "incidents"):
        assert command in result.stdout
    assert "testbed" not in result.stdout and "demo" not in result.stdout


def test_testbed_help_lists_the_stack_the_demo_and_the_evaluations() -> None:
    result = runner.invoke(bed_cli, ["--help"])
    assert result.exit_code == 0
    for command in ("up", "images", "clean", "demo", "eval"):
        assert command in result.stdout


def test_bad_option_is_a_usage_error_not_a_traceback() -> None:
    result = runner.invoke(bed_cli, ["up", "--replicas", "0"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
