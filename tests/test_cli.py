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


def test_a_pytorch_file_named_onnx_is_told_as_one(tmp_path) -> None:
    """A model file named .onnx was called an ONNX graph by the export (by its suffix), and
    "not an ONNX model (DecodeError); expected a .onnx file" by inspect and verify."""
    import torch

    path = tmp_path / "model.onnx"
    torch.save({"w": torch.ones(2)}, path)
    result = CliRunner().invoke(main, [str(path)])
    assert result.exit_code == 2
    assert (
        "a PyTorch model file named .onnx, which its graph would be written over" in result.output
    )
    assert "give -o GRAPH.onnx" in result.output
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 2 and "not an ONNX model but a PyTorch file" in result.output
    result = CliRunner().invoke(main, [str(tmp_path / "absent.onnx")])
    assert result.exit_code == 2 and "absent.onnx: no such file" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
