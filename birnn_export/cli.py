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

from birnn_export._files import check_output_path, refuse_same_files, write_atomic
from birnn_export._version import __version__

DEFAULT_COMMAND = "export"
#: Exit code after Ctrl-C, as shells report a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


class _DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to ``export``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "MODEL.pt [OPTIONS] | COMMAND [ARGS]...")

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """click's standalone mode, but usage errors in one line (click prints usage and a
        hint over three to five)."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "birnn-export"
            message = " ".join(exc.format_message().split())
            click.echo(f"Error: {message} (see '{where} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("Aborted!", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(result if isinstance(result, int) else 0)


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
            help="Your model class, e.g. 'mypkg.models:Tagger'; weights come from the file. "
            "Importing the module RUNS ITS CODE; it must be importable as it is (installed, or "
            "on PYTHONPATH: the working directory is not added).",
        ),
        click.option(
            "--model-kwargs",
            metavar="JSON",
            help="Keyword arguments for --model-class, as JSON, e.g. '{\"vocab_size\": 100}'.",
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
            "--time-major",
            is_flag=True,
            help="A bare state_dict's model took [seq, batch, ...] (the weights do not say; "
            "batch-first is assumed).",
        ),
        click.option(
            "--trust-pickle",
            is_flag=True,
            help="Allow whole pickled modules. This RUNS CODE from the file: "
            "only for files you trust.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def sweep_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options verify and bench share, in one form: engines, shapes, tolerances, the seed
    and the memory budget."""
    options = [
        click.option(
            "--engines",
            multiple=True,
            metavar="ENGINE[,ENGINE]",
            help="Engines, comma-separated or repeated: torch, ort-cpu, ort-int8 (the graph "
            "quantized to int8 on ONNX Runtime CPU), ort-cuda, ort-trt, trt, trt-rtx.",
        ),
        click.option(
            "--batch-sizes",
            "--batch",
            "batch_sizes",
            metavar="B,B,...",
            help="Batch sizes, comma-separated.",
        ),
        click.option(
            "--seq-lens",
            "--seq",
            "seq_lens",
            metavar="T,T,...",
            help="Lengths of the time dim, comma-separated.",
        ),
        click.option(
            "--atol",
            multiple=True,
            metavar="VALUE|NAME:VALUE",
            help="Judge by fixed tolerances instead of the model's own float32 noise: absolute "
            "tolerance, for all outputs or one output; repeatable. [default: per dtype]",
        ),
        click.option(
            "--rtol",
            multiple=True,
            metavar="VALUE|NAME:VALUE",
            help="Relative tolerance, like --atol (either selects fixed tolerances).",
        ),
        click.option(
            "--seed",
            type=click.IntRange(0, 2**32 - 1),
            default=0,
            show_default=True,
            help="Seed of the random inputs.",
        ),
        click.option(
            "--memory-budget",
            type=click.FloatRange(min=0, min_open=True),
            default=1.0,
            show_default=True,
            metavar="GIB",
            help="GiB the largest tensor of one case may take in float64: larger explicit "
            "shapes are refused (verify skips its default cases over it).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def parse_sweep(
    engines: tuple[str, ...],
    batch_sizes: str | None,
    seq_lens: str | None,
    atol: tuple[str, ...],
    rtol: tuple[str, ...],
    default_engines: tuple[str, ...],
) -> dict[str, Any]:
    """The shared options as the library's keyword arguments."""
    from birnn_export.compare import parse_tolerance

    return {
        "engines": parse_engines(engines) if engines else default_engines,
        "batch_sizes": parse_ints(batch_sizes, "--batch-sizes") if batch_sizes else None,
        "seq_lens": parse_ints(seq_lens, "--seq-lens") if seq_lens else None,
        "atol": parse_tolerance(atol, "--atol"),
        "rtol": parse_tolerance(rtol, "--rtol"),
    }


def parse_model_kwargs(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        message = f"--model-kwargs: not valid JSON ({exc.msg} at column {exc.colno})"
        raise UserError(message) from None
    except RecursionError:
        raise UserError("--model-kwargs: nested too deeply to read; pass a flat object") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise UserError(f"--model-kwargs: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(value, dict):
        raise UserError(f"--model-kwargs: expected a JSON object, got {type(value).__name__}")
    return value


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)``; anything else is a one-line usage error."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise UserError(
            f"{option}: expected comma-separated positive integers such as '1,8,32', got {text!r}"
        )
    return tuple(dict.fromkeys(values))


def parse_range(text: str, option: str) -> tuple[int, int, int]:
    """``"1,64,256"`` -> ``(1, 64, 256)`` with ``1 <= min <= opt <= max``, or a usage error."""
    from birnn_export.errors import BiRNNExportError
    from birnn_export.spec import check_range

    try:
        return check_range(option, text.split(","))
    except BiRNNExportError as exc:
        if "largest size" in str(exc):
            raise UserError(str(exc)) from None
        raise UserError(
            f"{option}: expected MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX such as '1,64,256', "
            f"got {text[:100]!r}"
        ) from None


def parse_named_ranges(values: tuple[str, ...]) -> dict[str, tuple[int, int, int]]:
    """``("width=32,256,1024",)`` -> ``{"width": (32, 256, 1024)}``, or a usage error."""
    out = {}
    for value in values:
        name, sep, numbers = value.partition("=")
        if not sep or not name.strip().isidentifier():
            raise UserError(
                f"--range: expected DIM=MIN,OPT,MAX such as 'width=32,256,1024', got {value!r}"
            )
        out[name.strip()] = parse_range(numbers, f"--range {name.strip()}")
    return out


def parse_engines(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--engines a,b`` (repeatable) -> ``("a", "b")``, each a known engine."""
    from birnn_export.runners import ENGINES

    names = tuple(dict.fromkeys(p.strip() for v in values for p in v.split(",") if p.strip()))
    unknown = [n for n in names if n not in ENGINES]
    if not names or unknown:
        raise UserError(
            f"--engines: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
            f"expected a comma-separated list from {','.join(ENGINES)}"
        )
    return names


def load_for_cli(path: Path, **options: Any) -> Any:
    """Call :func:`birnn_export.load_model` with the CLI's loader options."""
    from birnn_export.checkpoint import load_model

    options["model_kwargs"] = parse_model_kwargs(options.get("model_kwargs"))
    # The import path is used as it is: a module in the working directory is not importable
    # unless the user puts it there (PYTHONPATH=.), so nothing planted there runs by surprise.
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

    fp32 on a GPU is compared strictly: NVIDIA_TF32_OVERRIDE=0 is set (unless already set) so
    cuDNN and TensorRT do not use TF32.
    """
    from birnn_export.base_runner import forbid_tf32

    forbid_tf32()


# --- export (the default command) --------------------------------------------------------


@main.command(DEFAULT_COMMAND)
@click.argument("model_path", metavar="MODEL.pt", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="ONNX file [default: MODEL.onnx]."
)
@click.option("--opset", type=int, help="ONNX opset [default: 18; 18-23 accepted].")
@click.option(
    "--layout",
    type=click.Choice(["split", "fused"]),
    help="split: forward node + forward node between two ReverseSequence; "
    "fused: one bidirectional node per layer. [default: by measurement, split for LSTM and "
    "GRU, fused for RNN]",
)
@click.option(
    "--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True
)
@click.option(
    "--lengths/--no-lengths",
    default=None,
    help="Whether the graph takes a lengths input [default: inferred from the model; bare "
    "state_dicts get one].",
)
@click.option(
    "--input-size",
    type=click.IntRange(min=1),
    help="Features N of a float [batch, seq, N] input, for models whose first layer does not "
    "tell (a Conv1d front-end, say).",
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME:DTYPE[DIMS]",
    help="Declare a graph input, repeatable, in forward's order: a name for a dynamic dim, a "
    "number for a fixed one; the batch dim is 'batch'; a lengths input ends in ':lengths(DIM)'. "
    "E.g. --input 'image:float32[batch,1,64,width]', or --input 'x:float32[batch,40,time]' "
    "--input 'x_lens:int64[batch]:lengths(time)'. [default: inferred from the model]",
)
@click.option(
    "--range",
    "ranges",
    multiple=True,
    metavar="DIM=MIN,OPT,MAX",
    help="Serving range of a named dim, repeatable, e.g. --range width=32,256,1024: the "
    "TensorRT profile, the lengths verification runs and the bounds the model is traced for.",
)
@click.option(
    "--batch-range",
    metavar="MIN,OPT,MAX",
    help="Batch sizes the graph will serve, recorded in it: the default TensorRT profile. "
    "The graph itself takes any size. [default: 1,8,32]",
)
@click.option(
    "--seq-range",
    metavar="MIN,OPT,MAX",
    help="Lengths of the time dim the graph will serve, likewise; 'birnn-export verify' also "
    "runs at MAX. [default: 1,64,256]",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    help="int8: write the graph dynamically quantized by ONNX Runtime (int8 LSTM and MatMul "
    "kernels; GRU/RNN stay float32), verified by top-1 agreement and relative error. Runs on "
    "ONNX Runtime CPU only.",
)
@click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime checks after export.")
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), help="Write the summary as JSON."
)
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the output path.")
@loader_options
@user_errors
def export_command(
    model_path: Path,
    output: Path | None,
    opset: int | None,
    layout: str | None,
    dtype: str,
    lengths: bool | None,
    input_size: int | None,
    inputs: tuple[str, ...],
    ranges: tuple[str, ...],
    batch_range: str | None,
    seq_range: str | None,
    quantize: str | None,
    no_verify: bool,
    json_path: Path | None,
    quiet: bool,
    **loader: Any,
) -> None:
    """Export MODEL.pt to ONNX (MODEL.onnx beside it), check and verify it.

    Loads the model safely, replaces built-in RNN/LSTM/GRU layers by exportable ones, exports with
    symbolic batch and sequence axes, checks the graph and compares ONNX Runtime with eager
    PyTorch at shapes unlike the example. Exit 0 on success, 1 if verification failed, 2 for bad
    input.
    """
    from birnn_export.errors import VerificationError
    from birnn_export.pipeline import export_model

    output = output or model_path.with_suffix(".onnx")
    refuse_same_files(**{"MODEL.pt": model_path, "-o": output, "--json": json_path})
    check_output_path("-o", output, suffix=".onnx")
    check_output_path("--json", json_path)
    named = parse_named_ranges(ranges)
    if batch_range is not None:
        named["batch"] = parse_range(batch_range, "--batch-range")
    loader["model_kwargs"] = parse_model_kwargs(loader.get("model_kwargs"))
    try:
        report = export_model(
            model_path,
            output,
            inputs=inputs,
            ranges=named,
            seq_range=parse_range(seq_range, "--seq-range") if seq_range is not None else None,
            verify=not no_verify,
            progress=sys.stderr.isatty() and not quiet,
            load_options=loader,
            opset=opset,
            layout=layout,
            dtype=dtype,
            lengths=lengths,
            input_size=input_size,
            quantize=quantize,
        )
    except VerificationError as exc:
        if exc.report is not None:
            from birnn_export.verification import render_report

            render_report(exc.report)
            click.echo(
                f"To study the failure: re-export with --no-verify, then 'birnn-export verify "
                f"{output} --model {model_path} --save-inputs cases.json'",
                err=True,
            )
        raise
    if json_path is not None:
        write_atomic(json_path, json.dumps(report.to_dict(), indent=2, default=str))
    click.echo(str(report.result.path) if quiet else "\n".join(report.lines()))


# --- inspect -----------------------------------------------------------------------------


@main.command("inspect")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(path_type=Path))
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write it as JSON.")
@user_errors
def inspect_command(onnx_path: Path, json_path: Path | None) -> None:
    """Describe an exported graph: inputs, outputs, ops, recurrent nodes, metadata."""
    from birnn_export.describe import describe_lines, describe_onnx

    check_output_path("--json", json_path)
    refuse_same_files(**{"MODEL.onnx": onnx_path, "--json": json_path})
    info = describe_onnx(onnx_path)
    lines = describe_lines(info)  # raises on unreadable metadata, before anything is written
    if json_path is not None:
        write_atomic(json_path, json.dumps(info, indent=2, default=str))
    click.echo("\n".join(lines))


# --- verify (issue 4) --------------------------------------------------------------------


@main.command("verify")
@click.argument(
    "onnx_path", metavar="MODEL.onnx", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--model",
    "model_path",
    metavar="MODEL.pt",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The model the graph was exported from (the reference is its original, unconverted "
    "form). Required unless --load-outputs gives the reference outputs.",
)
@click.option(
    "--fp64-reference",
    is_flag=True,
    help="With --atol/--rtol: run the reference in float64 (the default criterion always does).",
)
@click.option(
    "--no-layers",
    is_flag=True,
    help="Do not compare every recurrent layer's own output (faster; outputs only).",
)
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), help="Write the full report as JSON."
)
@click.option(
    "--save-inputs",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the failing cases' inputs (all cases if none failed) to this .json (Polygraphy's "
    "--load-inputs format) or .npz.",
)
@click.option(
    "--save-outputs",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --save-inputs: write the same cases' reference outputs (float64, and eager "
    "PyTorch's) to this .json, Polygraphy RunResults (--load-outputs).",
)
@click.option(
    "--load-inputs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Run these saved inputs (.json or .npz) instead of a sweep.",
)
@click.option(
    "--load-outputs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --load-inputs: compare against these saved outputs; no --model needed.",
)
@sweep_options
@loader_options
@user_errors
def verify_command(
    onnx_path: Path,
    model_path: Path | None,
    engines: tuple[str, ...],
    batch_sizes: str | None,
    seq_lens: str | None,
    seed: int,
    atol: tuple[str, ...],
    rtol: tuple[str, ...],
    fp64_reference: bool,
    memory_budget: float,
    no_layers: bool,
    json_path: Path | None,
    save_inputs: Path | None,
    save_outputs: Path | None,
    load_inputs: Path | None,
    load_outputs: Path | None,
    **loader: Any,
) -> None:
    """Compare MODEL.onnx on each engine with the model across batch sizes and lengths.

    Each output is judged against the model run in float64, within a factor of eager PyTorch's
    own error (its float32 noise), with top-1 agreement for class scores; every recurrent
    layer is compared too. Inputs come from the graph's metadata (ragged and equal lengths,
    large-magnitude features); outputs are compared at valid steps, padding separately, rows
    alone against the batch. Exit 0 if all match, 1 on a mismatch (the report says where, and
    which direction), 2 for bad input. The default lengths include the graph's declared maximum
    (--seq-range at export); --seq-lens picks the lengths instead.

    \b
    Defaults: --engines ort-cpu; a covering set of batch sizes 1,3,16 and lengths
    1,2,T0,4*T0 and the declared maximum (T0: the export's example length); --batch-sizes
    and --seq-lens run their product instead.
    """
    import sys

    from birnn_export.verification import render_report, verify

    sweep = parse_sweep(engines, batch_sizes, seq_lens, atol, rtol, ("ort-cpu",))
    check_output_path("--json", json_path)
    check_output_path("--save-inputs", save_inputs)
    check_output_path("--save-outputs", save_outputs)
    refuse_same_files(
        **{
            "MODEL.onnx": onnx_path,
            "--model": model_path,
            "--load-inputs": load_inputs,
            "--load-outputs": load_outputs,
            "--json": json_path,
            "--save-inputs": save_inputs,
            "--save-outputs": save_outputs,
        }
    )
    if model_path is None and load_outputs is None:
        raise UserError("--model: give the model the graph was exported from (or --load-outputs)")
    loaded = load_for_cli(model_path, **loader) if model_path is not None else None
    report = verify(
        onnx_path,
        loaded,
        seed=seed,
        fp64_reference=fp64_reference,
        progress=sys.stderr.isatty(),
        layers=not no_layers,
        memory_budget=int(memory_budget * 2**30),
        save_inputs=save_inputs,
        save_outputs=save_outputs,
        load_inputs=load_inputs,
        load_outputs=load_outputs,
        **sweep,
    )
    render_report(report)
    if json_path is not None:
        write_atomic(json_path, report.to_json() + "\n")
        click.echo(f"report written to {json_path}")
    for what, path in (("inputs", report.saved_inputs), ("outputs", report.saved_outputs)):
        if path:
            click.echo(f"{what} written to {path}")
    report.raise_for_failure()


# --- bench (issue 5) ---------------------------------------------------------------------


@main.command("bench")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model_path",
    metavar="MODEL.pt",
    required=True,
    type=click.Path(path_type=Path),
    help="The PyTorch model the graph came from: the reference every engine is checked against.",
)
@click.option(
    "--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed runs."
)
@click.option("--iters", type=click.IntRange(min=1), help="Timed runs per shape.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds of timed runs per shape (at least 3 runs). Default: >= 10 runs and ~1 s.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Threads for every CPU engine (torch and ONNX Runtime). Default: torch's count.",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where the torch engine runs: cpu, cuda or cuda:N.",
)
@click.option("--compile", is_flag=True, help="Time the torch engine under torch.compile.")
@click.option(
    "--ort-spinning",
    type=click.Choice(["on", "off"]),
    help="ONNX Runtime's idle threads spin (on: its default, as a serving process runs it) or "
    "sleep (off). Engines are timed each in its own block either way.",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write a JSON report.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Write a CSV table.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write a PNG plot.")
@sweep_options
@loader_options
@user_errors
def bench_command(
    onnx_path: Path,
    model_path: Path,
    engines: tuple[str, ...],
    batch_sizes: str | None,
    seq_lens: str | None,
    atol: tuple[str, ...],
    rtol: tuple[str, ...],
    warmup: int,
    iters: int | None,
    duration: float | None,
    threads: int | None,
    device: str,
    compile: bool,
    ort_spinning: str | None,
    seed: int,
    memory_budget: float,
    json_path: Path | None,
    csv_path: Path | None,
    plot_path: Path | None,
    **loader: Any,
) -> None:
    """Time engines on MODEL.onnx; each is checked against eager PyTorch before it is timed.

    An engine whose outputs differ from MODEL.pt is reported as a mismatch (exit 1), never as
    fast. An unavailable engine is skipped with its reason (exit 2 if it was the only one); a
    trt-rtx engine that cannot run here (no RTX-class GPU) is still built on the CPU, and its
    build time and engine size are reported.

    \b
    Defaults: --engines torch,ort-cpu; batch sizes from the graph's declared batch range
    (1,8,32); lengths 16 and the declared range's opt and max (16,64,256).

    \b
    birnn-export bench tagger.onnx --model tagger.pt --engines torch,ort-cpu --threads 2
    birnn-export bench tagger.onnx --model tagger.pt --batch-sizes 1,32 --seq-lens 100
    """
    import importlib.util

    sweep = parse_sweep(engines, batch_sizes, seq_lens, atol, rtol, ("torch", "ort-cpu"))
    if not onnx_path.is_file():
        raise UserError(f"MODEL.onnx: no such file: {onnx_path}")
    for option, path in (("--json", json_path), ("--csv", csv_path), ("--plot", plot_path)):
        check_output_path(option, path)
    refuse_same_files(
        **{
            "MODEL.onnx": onnx_path,
            "--model": model_path,
            "--json": json_path,
            "--csv": csv_path,
            "--plot": plot_path,
        }
    )
    if plot_path is not None and importlib.util.find_spec("matplotlib") is None:
        raise UserError("--plot: matplotlib is not installed; pip install matplotlib")

    from birnn_export._report import wide_console
    from birnn_export.bench import benchmark, render_table

    loaded = load_for_cli(model_path, **loader)
    # The model as the user wrote it (torch's own recurrent layers) when it had them: that is
    # the eager speed to beat and the most independent reference.
    report = benchmark(
        onnx_path,
        loaded.reference,
        warmup=warmup,
        iters=iters,
        duration=duration,
        threads=threads,
        device=device,
        compile=compile,
        seed=seed,
        memory_budget=int(memory_budget * 2**30),
        ort_spinning=None if ort_spinning is None else ort_spinning == "on",
        **sweep,
    )
    wide_console().print(render_table(report))
    for path, write in ((json_path, report.to_json), (csv_path, report.to_csv)):
        if path is not None:
            click.echo(f"Wrote {write(path)}")
    if plot_path is not None:
        click.echo(f"Wrote {report.plot(plot_path)}")
    # trt-rtx alone on a machine that cannot run it: its build is reported, nothing timed.
    report.raise_for_failure()


# --- check (issue 5) ---------------------------------------------------------------------


@main.command("check")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(path_type=Path))
@click.option(
    "--target",
    type=click.Choice(["tensorrt", "ort-cuda"]),
    required=True,
    help="Engine whose import rules to check against (tensorrt also covers ORT's TensorRT EP).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the findings to this JSON file.",
)
@click.option(
    "--tensorrt",
    type=click.Choice(["auto", "static", "tensorrt", "tensorrt_rtx"]),
    default="auto",
    show_default=True,
    help="For --target tensorrt: auto parses and builds with TensorRT where one is installed "
    "(tensorrt with a GPU, else tensorrt_rtx, which needs no GPU); static runs the rules only.",
)
@user_errors
def check_command(onnx_path: Path, target: str, json_path: Path | None, tensorrt: str) -> None:
    """Check MODEL.onnx against a GPU engine (no GPU needed).

    For TensorRT, its own ONNX parser and builder judge the graph where a TensorRT package is
    installed (pip install tensorrt-rtx builds without a GPU), with the static rules beside
    them; elsewhere the static rules alone. Prints one line per finding and what checked it;
    exits 1 if any finding is an error (a parser error or failed build included), 0 otherwise.
    """
    from birnn_export.check import check_compatibility

    check_output_path("--json", json_path)
    refuse_same_files(**{"MODEL.onnx": onnx_path, "--json": json_path})
    report = check_compatibility(onnx_path, target=target, tensorrt=tensorrt)
    for line in report.lines():
        click.echo(line)
    if report.ok:  # else the summary is the error's one line
        click.echo(report.summary())
    if json_path is not None:
        write_atomic(json_path, report.to_json() + "\n")
    report.raise_for_failure()


def run() -> None:
    """Entry point of the ``birnn-export`` command and ``python -m birnn_export``."""
    import signal

    try:
        main(prog_name="birnn-export")
    finally:
        # The work is over: a Ctrl-C while the interpreter shuts down no longer changes the
        # exit code (Python would end the process by SIGINT instead).
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
