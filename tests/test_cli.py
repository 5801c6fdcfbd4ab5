"""The command line's own behaviour (birnn_export.cli): every command's help, and library
messages told in the command's flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from birnn_export.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "sample_models" / "token_tagger.pt"


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


SAMPLE = Path(__file__).resolve().parent.parent / "sample_models" / "token_tagger.pt"


@pytest.mark.slow
def test_names_a_script_passes_are_taken_as_files(tmp_path, monkeypatch) -> None:
    """users34: 'birnn-export -- -x.pt' (a script's '--' before a file name) was "No such option
    '-x'"; a Latin-1 name was a TypeError traceback from ONNX Runtime; a deleted working
    directory was a traceback; a read-only model folder was blamed on '-o', never given."""
    import os
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(SAMPLE, tmp_path / "-x.pt")
    result = CliRunner().invoke(main, ["-q", "--no-verify", "--", "-x.pt"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "-x.onnx").is_file()
    latin = os.fsdecode(b"caf\xe9.pt")
    shutil.copy(SAMPLE, tmp_path / latin)
    result = CliRunner().invoke(main, [latin])
    assert result.exit_code == 2 and "is a name that is not UTF-8 text" in result.output
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode)
    )
    result = CliRunner().invoke(main, ["./-x.pt"])
    assert result.exit_code == 2, result.output
    assert "-o (default: beside the model): folder" in result.output, result.output
    monkeypatch.setattr(os, "access", real)

    def gone() -> str:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(os, "getcwd", gone)
    result = CliRunner().invoke(main, [str(SAMPLE), "-o", str(tmp_path / "y.onnx")])
    assert result.exit_code == 2 and "the working directory no longer exists" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "nope.onnx", "--model", "x.pt", "--json", "-"],
        ["inspect", "missing.onnx", "--json=-"],
        ["bench", "x.onnx", "--bogus", "--json", "-"],
        [str(SAMPLE), "-o", "out.txt", "--json", "-"],
        [str(SAMPLE), "--atol", "abc", "--json", "-"],
    ],
)
def test_a_refusal_under_json_to_stdout_writes_its_error_there(args: list[str]) -> None:
    """users47 F2: 12 of 14 refusals left standard output empty, and `| jq` failed on it."""
    import json

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    told = json.loads(result.stdout)
    assert told["exit_code"] == 2 and told["written"] is None
    assert result.stderr.strip() == f"Error: {told['error']}"


def test_a_bare_command_is_a_usage_error_with_its_help_on_stderr() -> None:
    """review41 F7: the help went to stdout with exit 2; ``--help`` asked for keeps stdout."""
    result = CliRunner().invoke(main, [])
    assert result.exit_code == 2 and not result.stdout
    assert "MODEL.pt [OPTIONS] | COMMAND" in result.stderr
    asked = CliRunner().invoke(main, ["--help"])
    assert asked.exit_code == 0 and "MODEL.pt [OPTIONS] | COMMAND" in asked.stdout


def test_a_failed_exports_json_names_the_flag_as_its_error_line_does(tmp_path: Path) -> None:
    """review41 F6: the JSON said ``opset: 99 is not supported``, the error line ``--opset:``."""
    import json

    args = [str(SAMPLE), "-o", str(tmp_path / "o.onnx"), "--opset", "99", "--json", "-"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    told = json.loads(result.stdout)
    assert told["error"].startswith("--opset: 99 is not supported")
    assert result.stderr.strip().endswith(f"Error: {told['error']}")
    assert not (tmp_path / "o.onnx").exists()


def test_the_command_lines_defaults_are_the_librarys() -> None:
    """The CLI names the layouts and the memory budget itself, to keep --help free of numpy:
    the same values as the library's."""
    from birnn_export._sweep import DEFAULT_MEMORY_BUDGET
    from birnn_export.spec import LAYOUTS

    params = {p.name: p for p in main.get_command(None, "export").params}
    assert tuple(params["layout"].type.choices) == LAYOUTS
    verify_params = {p.name: p for p in main.get_command(None, "verify").params}
    assert verify_params["memory_budget"].default * 2**30 == DEFAULT_MEMORY_BUDGET


def test_the_tools_own_warnings_are_written_as_its_notes(monkeypatch) -> None:
    """A warning of birnn-export's own (two onnxruntime builds installed) printed as Python's
    ``runners.py:686: RuntimeWarning: ...`` and its source line (review39 F4); others keep
    Python's form, which names the model's line that raised them."""
    import sys
    import warnings

    import birnn_export.cli as cli
    from birnn_export import runners

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    monkeypatch.setattr(sys, "argv", ["birnn-export", "--version"])
    with pytest.raises(SystemExit):
        cli.run()
    ours = warnings.formatwarning("keep one", RuntimeWarning, runners.__file__, 686)
    assert ours == "warning: keep one\n"
    theirs = warnings.formatwarning("deprecated", UserWarning, "/m/model.py", 3, "x = 1")
    assert theirs.startswith("/m/model.py:3: UserWarning: deprecated")


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "m.onnx", "--save-inputs", ""],
        ["bench", "m.onnx", "--model", "m.pt", "--csv", ""],
        ["check", ""],
    ],
)
def test_an_empty_path_is_refused_as_empty(args: list[str]) -> None:
    """review41 F7: click made "" the path ".", told as a directory."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "an empty path; give a file name" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_failed_exports_hint_keeps_the_graph_at_o_and_drops_what_no_verify_refuses(
    tmp_path: Path,
) -> None:
    """review41 F5: the hint's re-export would write over the graph a failed export kept at -o;
    --no-verify refuses the tolerances (and saved inputs: review42 R2), which go to verify."""
    import numpy as np

    sample = Path(__file__).parents[1] / "sample_models" / "seed_example1_rnn.pt"
    kept = tmp_path / "out.onnx"
    kept.write_bytes(b"a graph verified earlier")
    batch = tmp_path / "b.npz"
    np.savez(batch, x=np.zeros((2, 4, 10), np.float32))
    tolerances = ["--atol", "1e-30", "--rtol", "0"]
    args = [str(sample), "-o", str(kept), *tolerances, "--load-inputs", str(batch)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert kept.read_bytes() == b"a graph verified earlier"
    # stdout, whose report's title names the path, says what is there (users66 F2)
    assert result.stdout.splitlines()[-1] == (
        f"FAIL     {kept}: not written, the graph failed verification; the file there is the one "
        "from before"
    )
    aside = tmp_path / "out.unverified.onnx"
    assert (
        f"re-export with --no-verify -o {aside} and without --atol/--rtol and --load-inputs, "
        f"then birnn-export verify {aside} --model {sample} --atol 1e-30 --rtol 0.0"
    ) in result.output


def test_every_command_says_where_its_report_went_on_standard_error(tmp_path: Path) -> None:
    """users66 F7: verify said it on stdout, bench as "Wrote ...", a failed export on stderr, and
    a successful export, check and inspect not at all."""
    sample = Path(__file__).parents[1] / "sample_models" / "seed_example1_rnn.pt"
    graph = tmp_path / "g.onnx"
    commands = {
        "export": [str(sample), "-o", str(graph), "--no-verify"],
        "check": ["check", str(graph), "--target", "tensorrt", "--tensorrt", "static"],
        "inspect": ["inspect", str(graph)],
    }
    for name, args in commands.items():
        report = tmp_path / f"{name}.json"
        result = CliRunner().invoke(main, [*args, "--json", str(report)])
        assert result.exit_code == 0, result.output
        assert json.loads(report.read_text())
        assert result.stderr.splitlines()[-1] == f"report written to {report}", result.stderr
        assert "written to" not in result.stdout
    quiet = CliRunner().invoke(main, [*commands["export"], "-q", "--json", str(tmp_path / "q")])
    assert quiet.exit_code == 0 and quiet.stdout == f"{graph}\n" and quiet.stderr == ""


def test_the_examples_in_every_help_parse(tmp_path: Path, monkeypatch) -> None:
    """users66 F14: only the group's help and bench's showed examples; each command's now does,
    and each example is a command line its parser takes (the files named exist here)."""
    import shlex
    import warnings

    monkeypatch.chdir(tmp_path)
    for name in ("tagger.pt", "tagger.onnx", "weights.pt", "MODEL.pt", "MODEL.onnx"):
        Path(name).write_bytes(b"")
    examples = 0
    for command in (None, "export", "verify", "check", "inspect", "bench"):
        text = CliRunner().invoke(main, [command, "--help"] if command else ["--help"]).output
        lines = [line for line in text.splitlines() if line.startswith("  birnn-export ")]
        assert lines, f"no example in {command}'s help"
        for line in lines:  # the group's lines end in words after two spaces; a pipe ends some
            words = shlex.split(line.split("|")[0].strip().split("  ")[0])[1:]
            with main.make_context("birnn-export", words) as ctx, warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # click 8.2: protected_args
                name, sub, rest = main.resolve_command(ctx, [*ctx.protected_args, *ctx.args])
                sub.make_context(name, rest, parent=ctx).close()
            examples += 1
    assert examples >= 15


def test_a_head_on_packed_rows_is_told_so_and_nothing_is_written(tmp_path: Path) -> None:
    """review46 F4, review48 F1: the error named a batch squeezed away, from the first case
    (batch 1, one step), whose shape cannot tell the two apart; users66 F2: stdout said nothing
    of the file."""
    import torch

    from birnn_export.compare import DROPPED_OR_PACKED, PACKED_ROWS
    from tests.realistic_models import PackedDataHead

    weights = tmp_path / "m.pt"
    torch.save(PackedDataHead().state_dict(), weights)
    graph = tmp_path / "m.onnx"
    model_class = ["--model-class", "tests.realistic_models:PackedDataHead"]
    args = [str(weights), *model_class, "--input-size", "8", "-o", str(graph), "--seq-range"]
    result = CliRunner().invoke(main, [*args, "1,8,16"])
    assert result.exit_code == 1 and not graph.exists(), result.output
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error: FAIL")]
    assert PACKED_ROWS in error and DROPPED_OR_PACKED not in error, error
    assert "diagnosis (" not in result.stdout  # the note tells: the graph is not to blame
    last = result.stdout.splitlines()[-1]
    assert last == f"FAIL     {graph}: not written, the graph failed verification"
