"""The command line's own behaviour (birnn_export.cli): every command's help, and library
messages told in the command's flags."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from birnn_export.cli import main


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help_that_names_its_usage(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: main {command}") or "Usage:" in result.output
    assert "--help" in result.output and "Traceback" not in result.output


def test_the_groups_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for command in main.commands:
        assert command in result.output


@pytest.mark.parametrize(
    ("message", "told"),
    [
        ("threads: expected 1 or more", "--threads: expected 1 or more"),
        ("iters and duration: give one", "--iters and --duration: give one"),
        ("lengths: the model's input", "lengths: the model's input"),  # an input's name too
        ("no parameter named here", "no parameter named here"),
    ],
)
def test_library_messages_name_the_flags(message: str, told: str) -> None:
    assert main._as_flags(message) == told
