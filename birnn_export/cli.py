"""``birnn-export``: a thin click layer over the library.

``birnn-export MODEL.pt`` exports (the default command); ``inspect``, ``verify``, ``bench`` and
``check`` are subcommands. Every command parses options, calls one library function and prints
its result. Heavy imports (torch, onnx, onnxruntime) happen inside the commands so ``--help`` and
``--version`` stay fast. User errors (:class:`~birnn_export.errors.BiRNNExportError`) print one
line and exit 2 (bad input) or 1 (verification failed); other exceptions are bugs and keep their
traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from birnn_export._version import __version__

DEFAULT_COMMAND = "export"


class _DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to ``export``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "MODEL.pt [OPTIONS] | COMMAND [ARGS]...")


class UserError(click.ClickException):
    """A :class:`BiRNNExportError` on its way out: one line, the error's exit code."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library user errors into one-line messages with the right exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from birnn_export.errors import BiRNNExportError

        try:
            return func(*args, **kwargs)
        except BiRNNExportError as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise UserError(message, exc.exit_code) from None

    return wrapper


def loader_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options of :func:`birnn_export.load_model`, shared by every command that loads one."""
    options = [
        click.option(
            "--model-class",
            metavar="MODULE:CLASS",
            help="Your model class, e.g. 'mypkg.models:Tagger'; weights come from the file.",
        ),
        click.option(
            "--model-kwargs",
            metavar="JSON",
            help='Keyword arguments for --model-class, as JSON, e.g. \'{"vocab_size": 100}\'.',
        ),
        click.option(
            "--state-key",
            help="Key of the state_dict inside a nested checkpoint (e.g. 'model_state_dict').",
        ),
        click.option(
            "--nonlinearity",
            type=click.Choice(["tanh", "relu"]),
            default="tanh",
            show_default=True,
            help="nn.RNN nonlinearity for bare state_dicts (weights do not reveal it).",
        ),
        click.option(
            "--trust-pickle",
            is_flag=True,
            help="Allow whole pickled modules. This RUNS CODE from the file: only for files you trust.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def parse_model_kwargs(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--model-kwargs: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise UserError(f"--model-kwargs: expected a JSON object, got {type(value).__name__}")
    return value


def load_for_cli(path: Path, **options: Any) -> Any:
    """Call :func:`birnn_export.load_model` with the CLI's loader options."""
    from birnn_export.checkpoint import load_model

    options["model_kwargs"] = parse_model_kwargs(options.get("model_kwargs"))
    return load_model(path, **options)


@click.group(cls=_DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="birnn-export")
def main() -> None:
    """Export bidirectional RNN/LSTM/GRU models to ONNX with dynamic batch and sequence axes.

    \b
    birnn-export MODEL.pt            export MODEL.onnx beside it and verify it
    birnn-export inspect MODEL.onnx  describe an exported graph
    birnn-export verify MODEL.onnx --model MODEL.pt
    birnn-export bench MODEL.onnx --model MODEL.pt
    birnn-export check MODEL.onnx --target tensorrt
    """


# --- export (the default command) --------------------------------------------------------


@main.command(DEFAULT_COMMAND)
@click.argument("model_path", metavar="MODEL.pt", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output ONNX file.")
@loader_options
@user_errors
def export_command(model_path: Path, output: Path | None, **loader: Any) -> None:
    """Load MODEL.pt and convert its recurrent layers (export lands in a later step)."""
    from birnn_export.convert import conversion_report

    loaded = load_for_cli(model_path, **loader)
    click.echo(f"Loaded {model_path} ({loaded.source})")
    for replacement in conversion_report(loaded.model):
        click.echo(f"  {replacement}")


# --- inspect -----------------------------------------------------------------------------

# --- verify (issue 4) --------------------------------------------------------------------

# --- bench (issue 5) ---------------------------------------------------------------------

# --- check (issue 5) ---------------------------------------------------------------------


def run() -> None:
    """Entry point for ``python -m birnn_export``."""
    main(prog_name="birnn-export")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
