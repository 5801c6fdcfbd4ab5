"""``birnn-export``: a thin click layer over the library.

``birnn-export MODEL.pt`` exports (the default command); ``inspect``, ``verify``, ``bench`` and
``check`` are subcommands. Every command parses options, calls one library function and prints
its result. The options that reach a library function as its keyword arguments are declared in
groups (:mod:`birnn_export._option_groups`), their text read by :mod:`birnn_export.options`;
each command here declares only its own files and switches. Heavy imports (torch, onnx,
onnxruntime) happen inside the commands so ``--help`` and ``--version`` stay fast. User errors
(:class:`~birnn_export.errors.BiRNNExportError`) print one line and exit with the error's code: 2
for bad input, 1 for a failed verification, check or engine run; other exceptions are bugs and
keep their traceback.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from birnn_export import options as options_
from birnn_export._files import write_atomic
from birnn_export._option_groups import (
    FilePath,
    graph_options,
    json_option,
    loader_options,
    range_option,
    sweep_options,
    timing_options,
    tolerance_option,
)
from birnn_export._version import __version__
from birnn_export.errors import (
    BiRNNExportError,
    ExportInterrupted,
    ModelLoadError,
    UsageError,
    VerificationError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from birnn_export.compare import ToleranceOverride

DEFAULT_COMMAND = "export"
#: Exit code of :func:`main` after Ctrl-C, as shells report a process ended by SIGINT (128 + 2);
#: the command itself then ends by SIGINT (:func:`run`).
EXIT_INTERRUPTED = 130


#: ``--json -``: the report goes to standard output, and what the command prints to standard
#: error, so that a pipeline reads the JSON alone (``birnn-export check m.onnx --json - | jq``).
JSON_TO_STDOUT = Path("-")
_json_out: list[Any] = []  # where --json - writes: standard output before the redirection
_json_written: list[bool] = []  # whether it wrote there (a refusal writes its error otherwise)


def _json_to_stdout(command: Any) -> Any:
    """Run ``command`` with its printing sent to standard error where ``--json -`` is given."""

    @functools.wraps(command)
    def run_command(*args: Any, json_path: Path | None = None, **kwargs: Any) -> Any:
        if json_path != JSON_TO_STDOUT:
            return command(*args, json_path=json_path, **kwargs)
        _json_out.append(sys.stdout)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return command(*args, json_path=json_path, **kwargs)
        finally:
            _json_out.pop()

    return run_command


def _write_json(json_path: Path, text: str, *, quiet: bool = False) -> None:
    """Write a report: to ``json_path``, or to standard output for ``--json -``; say where
    (:func:`_written`) unless ``quiet``."""
    if json_path == JSON_TO_STDOUT:
        out = _json_out[-1] if _json_out else sys.stdout
        out.write(text if text.endswith("\n") else text + "\n")
        out.flush()
        _json_written.append(True)
        where = "standard output"
    else:
        write_atomic(json_path, text)
        where = str(json_path)
    if not quiet:
        _written("report", where)


def _written(what: str, where: object) -> None:
    """Say where a file went: on standard error, which keeps standard output to the results, in
    one form for every command (users66 F7)."""
    click.echo(f"{what} written to {where}", err=True)


class _DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to ``export``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        own = ("-h", "--help", "--version")  # the group's options
        if args and args[0] not in (*self.commands, *own) and "--" in args:
            args = [DEFAULT_COMMAND, *args]  # birnn-export [OPTIONS] -- -x.pt: a file named -x.pt
        elif args and args[0] not in self.commands and not args[0].startswith("-"):
            self._refuse_misspelled(args[0])
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def _refuse_misspelled(self, word: str) -> None:
        """A first word that is no file and is spelled like a command (``verfy``) is that
        command mistyped, not a model to export."""
        import difflib

        if "." in word or "/" in word or os.path.exists(word):
            return
        close = difflib.get_close_matches(word, list(self.commands), n=1, cutoff=0.6)
        if close:
            raise click.UsageError(f"No such command {word!r}. Did you mean {close[0]!r}?")

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "MODEL.pt [OPTIONS] | COMMAND [ARGS]...")

    def error_line(self, exc: BiRNNExportError) -> str:
        """A user error's message on one line, as the flags name it."""
        return self._as_flags(" ".join(str(exc).split()) or type(exc).__name__)

    def _as_flags(self, message: str) -> str:
        """``message`` with the library's parameter names it begins with (``threads:``, ``iters
        and duration:``) written as the flags that give them (``--threads:``). ``lengths`` is
        left as it is: it names a model's input as often as the option."""
        flags: dict[str, set[str]] = {}
        for command in self.commands.values():
            for param in command.params:
                if isinstance(param, click.Option) and param.name:
                    longs = [o for o in param.opts if o.startswith("--")] or param.opts
                    flags.setdefault(param.name, set()).add(longs[0])
        flags.pop("lengths", None)
        named = re.match(r"(\w+)(?: and (\w+))?:", message)
        if named is None or any(len(flags.get(n, ())) != 1 for n in named.groups() if n):
            return message
        given = " and ".join(next(iter(flags[n])) for n in named.groups() if n)
        return f"{given}{message[named.end() - 1 :]}"

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """:meth:`_run`, and under ``--json -`` a refusal's error as JSON on standard output
        where the command wrote none (users47 F2: a pipe read nothing)."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        argv = kwargs.get("args", args[0] if args else None)
        argv = sys.argv[1:] if argv is None else list(argv)
        _json_written.clear()
        _last_error.clear()
        try:
            self._run(*args, **kwargs)
        except SystemExit as exc:
            if exc.code and _last_error and _json_to_stdout_asked(argv) and not _json_written:
                code = _interrupted_code() if exc.code == EXIT_INTERRUPTED else exc.code
                text = {"written": None, "error": _last_error[-1], "exit_code": code}
                sys.stdout.write(json.dumps(text) + "\n")
                sys.stdout.flush()
            raise

    def _run(self, *args: Any, **kwargs: Any) -> None:
        """click's standalone mode, but every error in one line (click prints usage and a hint
        over three to five): the one place errors become exit codes. A user error
        (:class:`~birnn_export.errors.BiRNNExportError`) exits with its own code."""
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # a usage error: on stderr (review41 F7)
            click.echo(
                exc.ctx.get_help() if exc.ctx is not None else exc.format_message(), err=True
            )
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "birnn-export"
            message = " ".join(exc.format_message().split())
            _fail(f"{message} (see '{where} --help')", exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except BiRNNExportError as exc:
            _fail(self.error_line(exc), exc.exit_code)
        except (click.Abort, KeyboardInterrupt) as exc:
            # a step that finished before it says so (the export's graph, written); click
            # turns the KeyboardInterrupt into Abort
            _fail(f"{exc.__context__ or exc}".strip(), EXIT_INTERRUPTED, "Aborted!")
        sys.exit(result if isinstance(result, int) else 0)


_last_error: list[str] = []  # the error line printed, for a refusal's JSON


def _fail(message: str, code: int, label: str = "Error:") -> None:
    """Print ``label message`` on standard error and exit with ``code``."""
    _last_error.append(message or label.rstrip(":!"))
    click.echo(f"{label} {message}".strip(), err=True)
    sys.exit(code)


#: The signal that interrupted the command, where one did (:func:`run` sets it).
_signalled: list[int] = []


def _interrupted_code() -> int:
    """The exit status an interrupted command ends with: 143 after SIGTERM, else 130 (Ctrl-C),
    as :func:`run` ends the process (review28 L3: a report said 130 after SIGTERM)."""
    return 128 + _signalled[-1] if _signalled else EXIT_INTERRUPTED


def _json_to_stdout_asked(argv: list[str]) -> bool:
    """Whether the command line asks for ``--json -``."""
    return "--json=-" in argv or any(
        a == "--json" and b == "-" for a, b in itertools.pairwise(argv)
    )


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
@click.argument("model_path", metavar="MODEL.pt", type=FilePath(path_type=Path))
@click.option(
    "-o", "--output", type=FilePath(path_type=Path), help="ONNX file [default: MODEL.onnx]."
)
@graph_options
@click.option(
    "--verify/--no-verify", default=True, help="Verify on ONNX Runtime before writing the file."
)
@tolerance_option(
    "--atol",
    "Verify by fixed tolerances instead of the model's own float32 noise (where the model "
    "cannot run in float64 and the defaults per dtype are too strict for it): absolute "
    "tolerance, for all outputs or one output; repeatable.",
)
@tolerance_option("--rtol", "Relative tolerance, like --atol.")
@click.option(
    "--load-inputs",
    metavar="BATCHES.npz",
    type=FilePath(exists=True, dir_okay=False, path_type=Path),
    help="Also verify on these saved inputs (an .npz of one batch's arrays under the inputs' "
    "names, of several under case0/NAME, case1/NAME..., or verify --save-inputs' .json/.npz), "
    "judged on their own: the file is written only if they pass too. Judges an int8 graph on "
    "your data, not only on random features.",
)
@json_option("the summary")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the output path.")
@loader_options
@_json_to_stdout
def export_command(
    model_path: Path,
    output: Path | None,
    verify: bool,
    atol: ToleranceOverride,
    rtol: ToleranceOverride,
    load_inputs: Path | None,
    json_path: Path | None,
    quiet: bool,
    graph: dict[str, Any],
    loader: dict[str, Any],
) -> None:
    """Export MODEL.pt to ONNX (MODEL.onnx beside it), check and verify it.

    Loads the model safely, replaces built-in RNN/LSTM/GRU layers by exportable ones, exports with
    symbolic batch and sequence axes, checks the graph and compares ONNX Runtime with eager
    PyTorch at shapes unlike the example. Exit 0 on success, 1 if verification failed, 2 for bad
    input.

    \b
    birnn-export tagger.pt -o tagger.onnx --range seq=1,128,512
    birnn-export tagger.pt --dtype float16
    birnn-export weights.pt --model-class mypkg.models:Tagger --input-size 80
    """
    from birnn_export.pipeline import default_output, export_model, failure_summary

    if model_path.suffix == ".onnx" and output is None:  # its default output would be itself
        from birnn_export.checkpoint import onnx_named

        raise ModelLoadError(onnx_named(model_path))
    # the default output, beside the model, is told as such (a read-only model folder)
    named = "-o" if output is not None else "-o (default: beside the model)"
    output = output or default_output(model_path)
    options_.check_files(
        {"MODEL.pt": model_path}, {named: output, "--json": json_path}, suffixes={named: ".onnx"}
    )
    try:
        report = export_model(
            model_path,
            output,
            verify=verify,
            atol=atol,
            rtol=rtol,
            progress=not quiet,
            load_options=loader,
            **graph,
            **({"load_inputs": load_inputs} if load_inputs is not None else {}),
        )
    except ExportInterrupted as exc:
        if json_path is not None:  # the graph in place, not the last run's (users47 F5)
            said = f"Aborted! {exc}"
            summary = {"model": str(model_path), "written": exc.written, "error": said}
            summary["exit_code"] = _interrupted_code()
            _write_json(json_path, json.dumps(summary), quiet=True)
        raise
    except BiRNNExportError as exc:
        failed = exc.report if isinstance(exc, VerificationError) else None
        if failed is not None and not quiet:  # quiet: the error line alone
            from birnn_export.verification import render_report

            render_report(failed)
            # the report's title names the path: say it holds no graph of this run (users66 F2)
            kept = "; the file there is the one from before" if Path(output).exists() else ""
            click.echo(f"FAIL     {output}: not written, the graph failed verification{kept}")
        if json_path is not None:  # a pipeline that asked for the summary gets the failure's
            summary = {**failure_summary(model_path, exc), "error": main.error_line(exc)}
            # quiet: the error line alone
            _write_json(json_path, json.dumps(summary, indent=2, default=str), quiet=quiet)
        if failed is not None and not quiet:
            # review41 F5: a graph already at -o is kept, and the re-export must not replace it;
            # --no-verify refuses tolerances, which go to verify
            studied, aside = Path(output), ""
            if studied.exists():
                studied = studied.with_name(f"{studied.stem}.unverified.onnx")
                aside = f" -o {shlex.quote(str(studied))}"
            tolerances = _tolerance_flags("--atol", atol) + _tolerance_flags("--rtol", rtol)
            study = ["birnn-export", "verify", str(studied), "--model", str(model_path)]
            study += tolerances + _loader_flags(loader)
            # what --no-verify refuses goes to verify (review42 R2: --load-inputs too)
            dropped = ["--atol/--rtol"] * bool(tolerances) + ["--load-inputs"] * bool(load_inputs)
            # the saved inputs that failed are replayed as they are
            replay = failed.loaded_inputs
            study += ["--load-inputs", replay] if replay else ["--save-inputs", "cases.json"]
            click.echo(
                f"To study the failure: re-export with --no-verify{aside}"
                + (f" and without {' and '.join(dropped)}" if dropped else "")
                + f", then {shlex.join(study)}",
                err=True,
            )
        raise
    if json_path is not None:
        try:
            _write_json(json_path, report.to_json(), quiet=quiet)
        except BiRNNExportError as exc:  # the graph is in place, whole and verified: say so
            raise BiRNNExportError(f"{exc}; the graph was written: {report.result.path}") from None
    click.echo(str(report.result.path) if quiet else "\n".join(report.lines()))


def _tolerance_flags(flag: str, value: ToleranceOverride) -> list[str]:
    """The command-line flags that give ``value`` (:func:`options.parse_tolerance`'s)."""
    given = {} if value is None else value if isinstance(value, dict) else {"*": value}
    flags = []
    for name, number in given.items():
        flags += [flag, repr(number) if name == "*" else f"{name}:{number!r}"]
    return flags


def _loader_flags(loader: dict[str, Any]) -> list[str]:
    """The command-line flags that load the model as ``loader`` (the loader options) does."""
    flags = []
    for name, value in loader.items():
        flag = "--" + name.replace("_", "-")
        if value in (None, False, {}):
            continue  # the default
        if value is True:
            flags.append(flag)
        else:
            flags += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    return flags


# --- inspect -----------------------------------------------------------------------------


@main.command("inspect")
@click.argument("onnx_path", metavar="MODEL.onnx", type=FilePath(path_type=Path))
@json_option("the description")
@_json_to_stdout
def inspect_command(onnx_path: Path, json_path: Path | None) -> None:
    """Describe an exported graph: inputs, outputs, ops, recurrent nodes, metadata.

    \b
    birnn-export inspect tagger.onnx
    birnn-export inspect tagger.onnx --json - | jq .inputs
    """
    from birnn_export.describe import describe_lines, describe_onnx

    options_.check_files({"MODEL.onnx": onnx_path}, {"--json": json_path})
    info = describe_onnx(onnx_path)
    lines = describe_lines(info)  # raises on unreadable metadata, before anything is written
    if json_path is not None:
        _write_json(json_path, json.dumps(info, indent=2, default=str))
    click.echo("\n".join(lines))


# --- verify ------------------------------------------------------------------------------

_EXISTING = FilePath(exists=True, dir_okay=False, path_type=Path)
_FILE = FilePath(dir_okay=False, path_type=Path)


_LIKE = click.option(
    "--like",
    metavar="EXPORTED.onnx",
    type=_EXISTING,
    help="For a graph birnn-export did not write (torch.onnx.export's): a graph it wrote from "
    "the same model, whose inputs to feed (default: the model's, traced as an export would).",
)


@main.command("verify")
@click.argument("onnx_path", metavar="MODEL.onnx", type=_EXISTING)
@click.option(
    "--model",
    "model_path",
    metavar="MODEL.pt",
    type=_EXISTING,
    help="The model the graph was exported from (the reference is its original, unconverted "
    "form). Required unless --load-outputs gives the reference outputs.",
)
@click.option(
    "--fp64-reference",
    is_flag=True,
    help="With --atol/--rtol: run the reference in float64 (the default criterion always does).",
)
@click.option(
    "--layers/--no-layers",
    default=True,
    help="Also compare every recurrent layer's own output (--no-layers: outputs only, faster).",
)
@json_option("the full report")
@click.option(
    "--save-inputs",
    type=_FILE,
    help="Write the failing cases' inputs (all cases if none failed) to this .json (Polygraphy's "
    "--load-inputs format) or .npz.",
)
@click.option(
    "--save-outputs",
    type=_FILE,
    help="With --save-inputs: write the same cases' reference outputs (float64, and eager "
    "PyTorch's) to this .json, Polygraphy RunResults (--load-outputs).",
)
@click.option(
    "--load-inputs",
    type=_EXISTING,
    help="Run these saved inputs, not a sweep: a .json or .npz of --save-inputs, or an .npz of "
    "one batch's arrays under the inputs' names (several: case0/NAME, case1/NAME...).",
)
@click.option(
    "--load-outputs",
    type=_EXISTING,
    help="With --load-inputs: compare against these saved outputs; no --model needed.",
)
@_LIKE
@sweep_options("ort-cpu", default_sweep=True)
@loader_options
@_json_to_stdout
def verify_command(
    onnx_path: Path,
    model_path: Path | None,
    fp64_reference: bool,
    layers: bool,
    json_path: Path | None,
    save_inputs: Path | None,
    save_outputs: Path | None,
    load_inputs: Path | None,
    load_outputs: Path | None,
    like: Path | None,
    sweep: dict[str, Any],
    loader: dict[str, Any],
) -> None:
    """Compare MODEL.onnx on each engine with the model across batch sizes and lengths.

    Each output is judged against the model run in float64, within a factor of eager PyTorch's
    own error (its float32 noise), with top-1 agreement for class scores; every recurrent
    layer is compared too. Inputs come from the graph's metadata (ragged and equal lengths,
    large-magnitude features; a graph birnn-export did not write, torch.onnx.export's, is
    matched with the model's trace, or --like's); outputs are compared at valid steps, padding
    separately, rows alone against the batch. Exit 0 if all match, 1 on a mismatch (the report
    says where, and which direction), 2 for bad input. The default lengths include the graph's
    declared maximum (--seq-range at export); --seq-lens picks the lengths instead.

    \b
    Defaults: a covering set of batch sizes 1,3,16 and lengths 1,2,T0,4*T0 and the declared
    maximum (T0: the export's example length); --batch-sizes and --seq-lens run their product,
    each shape with ragged and with equal lengths where the graph takes lengths or a mask.

    \b
    birnn-export verify tagger.onnx --model tagger.pt --engines ort-cpu,trt-rtx
    birnn-export verify tagger.onnx --model tagger.pt --seq-lens 7,300 --save-inputs cases.npz
    """
    from birnn_export.verification import render_report, verify

    reads = {
        "MODEL.onnx": onnx_path,
        "--model": model_path,
        "--load-inputs": load_inputs,
        "--like": like,
    }
    writes = {"--json": json_path, "--save-inputs": save_inputs, "--save-outputs": save_outputs}
    options_.check_files({**reads, "--load-outputs": load_outputs}, writes)
    if model_path is None and load_outputs is None:
        raise UsageError("--model: give the model the graph was exported from (or --load-outputs)")
    report = verify(
        onnx_path,
        model_path,
        **sweep,
        fp64_reference=fp64_reference,
        layers=layers,
        progress=True,
        save_inputs=save_inputs,
        save_outputs=save_outputs,
        load_inputs=load_inputs,
        load_outputs=load_outputs,
        load_options=loader,
        like=like,
    )
    render_report(report)
    if json_path is not None:
        _write_json(json_path, report.to_json())
    for what, path in (("inputs", report.saved_inputs), ("outputs", report.saved_outputs)):
        if path:
            _written(what, path)
    report.raise_for_failure()


# --- bench -------------------------------------------------------------------------------


@main.command("bench")
@click.argument("onnx_path", metavar="MODEL.onnx", type=FilePath(path_type=Path))
@click.option(
    "--model",
    "model_path",
    metavar="MODEL.pt",
    required=True,
    type=FilePath(path_type=Path),
    help="The PyTorch model the graph came from: the reference every engine is checked against.",
)
@timing_options
@json_option("the report")
@click.option("--csv", "csv_path", type=_FILE, help="Write a CSV table.")
@click.option(
    "--plot",
    "plot_path",
    type=_FILE,
    callback=lambda ctx, param, value: _plotting(value),
    help="Write a PNG plot (needs matplotlib).",
)
@_LIKE
@sweep_options("torch,ort-cpu")
@loader_options
@_json_to_stdout
def bench_command(
    onnx_path: Path,
    model_path: Path,
    json_path: Path | None,
    csv_path: Path | None,
    plot_path: Path | None,
    like: Path | None,
    sweep: dict[str, Any],
    timing: dict[str, Any],
    loader: dict[str, Any],
) -> None:
    """Time engines on MODEL.onnx; each is checked against eager PyTorch before it is timed.

    An engine whose outputs differ from MODEL.pt is reported as a mismatch (exit 1), never as
    fast. An engine asked for that cannot run here is reported with its reason after the others
    are timed (exit 2); a trt-rtx engine that cannot run here (no RTX-class GPU) is still built
    on the CPU, and its build time and engine size are reported (exit 0 beside engines that
    ran).

    \b
    Defaults: batch sizes from the graph's declared batch range (1,8,32); lengths 16 and the
    declared range's opt and max (16,64,256).

    \b
    birnn-export bench tagger.onnx --model tagger.pt --engines torch,ort-cpu --threads 2
    birnn-export bench tagger.onnx --model tagger.pt --batch-sizes 1,32 --seq-lens 100
    """
    from birnn_export._report import print_table, wide_console
    from birnn_export.bench import benchmark, render_table

    writes = {"--json": json_path, "--csv": csv_path, "--plot": plot_path}
    reads = {"MODEL.onnx": onnx_path, "--model": model_path}
    options_.check_files(reads, writes, suffixes={"--plot": ".png"})  # it writes a PNG
    report = benchmark(
        onnx_path, model_path, **sweep, **timing, load_options=loader, like=like, progress=True
    )
    print_table(wide_console(), render_table(report))
    if json_path is not None:
        _write_json(json_path, report.to_json())
    if csv_path is not None:
        _written("CSV", report.to_csv(csv_path))
    if plot_path is not None:
        _written("plot", report.plot(plot_path))
    report.raise_for_failure()


def _plotting(path: Path | None) -> Path | None:
    """``--plot``'s value, refused before anything loads where matplotlib is missing."""
    import importlib.util

    if path is not None and importlib.util.find_spec("matplotlib") is None:
        raise click.BadParameter("matplotlib is not installed; pip install matplotlib")
    return path


# --- check -----------------------------------------------------------------------------


@main.command("check")
@click.argument("onnx_path", metavar="MODEL.onnx", type=FilePath(path_type=Path))
@click.option(
    "--target",
    type=click.Choice(["tensorrt", "ort-cuda"]),
    required=True,
    help="Engine whose import rules to check against (tensorrt also covers ORT's TensorRT EP).",
)
@json_option("the findings")
@click.option(
    "--tensorrt",
    type=click.Choice(["auto", "static", "tensorrt", "tensorrt_rtx"]),
    default="auto",
    show_default=True,
    help="For --target tensorrt: auto parses and builds with TensorRT where one is installed "
    "(tensorrt with a GPU, else tensorrt_rtx, which needs no GPU); static runs the rules only.",
)
@range_option(
    "--batch-range",
    "For --target tensorrt: build the engine for these batch sizes instead of the graph's "
    "recorded range, e.g. 1,1,1 for a server of one row at a time.",
)
@range_option("--seq-range", "Likewise, the lengths of the time dim.")
@_json_to_stdout
def check_command(
    onnx_path: Path,
    target: str,
    json_path: Path | None,
    tensorrt: str,
    batch_range: tuple[int, int, int] | None,
    seq_range: tuple[int, int, int] | None,
) -> None:
    """Check MODEL.onnx against a GPU engine (no GPU needed).

    For TensorRT, its own ONNX parser and builder judge the graph where a TensorRT package is
    installed (pip install tensorrt-rtx builds without a GPU), with the static rules beside
    them; elsewhere the static rules alone. Prints one line per finding and what checked it;
    exits 1 if any finding is an error (a parser error or failed build included), 0 otherwise.

    \b
    birnn-export check tagger.onnx --target tensorrt --batch-range 1,8,64
    birnn-export check tagger.onnx --target ort-cuda --json -
    """
    from birnn_export.check import check_compatibility

    options_.check_files({"MODEL.onnx": onnx_path}, {"--json": json_path})
    report = check_compatibility(
        onnx_path, target=target, tensorrt=tensorrt, batch=batch_range, seq=seq_range
    )
    for line in report.lines():
        click.echo(line)
    if report.ok:  # else the summary is the error's one line
        click.echo(report.summary())
    if json_path is not None:
        _write_json(json_path, report.to_json())
    report.raise_for_failure()


def _in_words(default: Callable[..., str]) -> Callable[..., str]:
    """``warnings.formatwarning`` that writes birnn-export's own warnings as its notes are
    written, ``warning: MESSAGE``, not as Python's file, line, category and source line
    (review39 F4); every other warning as ``default`` does."""
    package = str(Path(__file__).parent)

    def formatwarning(message: Any, category: Any, filename: str, *args: Any, **kw: Any) -> str:
        if str(filename).startswith(package):
            return f"warning: {message}\n"
        return default(message, category, filename, *args, **kw)

    return formatwarning


def run() -> None:
    """Entry point of the ``birnn-export`` command and ``python -m birnn_export``.

    After Ctrl-C (cleanup done, ``Aborted!`` printed) the process ends by SIGINT, as Python
    ends one on an uncaught KeyboardInterrupt: a calling shell reports 130 and, unlike after a
    plain ``exit 130``, stops its own loop or script too. SIGTERM (``timeout``, ``kill``, a
    cancelled CI job or container) takes the same way out and ends the process by SIGTERM: no
    staging folder or temporary graph is left behind.
    """
    import signal
    import warnings

    # torch says this once per process when any LSTM with proj_size runs on the CPU: about its
    # kernel choice, nothing the user can act on.
    warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
    warnings.formatwarning = _in_words(warnings.formatwarning)
    _signalled.clear()

    def interrupt(signum: int, frame: Any) -> None:
        _signalled.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        main(prog_name="birnn-export")
    except SystemExit as exc:
        if exc.code != EXIT_INTERRUPTED:
            raise
        if _signalled:  # ends the process without atexit, which would end daemon children
            import multiprocessing

            for child in multiprocessing.active_children():  # an engine's (users47 F1)
                child.kill()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        sys.excepthook = _quiet_interrupt
        raise KeyboardInterrupt from None
    finally:
        # The work is over: a Ctrl-C while the interpreter shuts down no longer changes the
        # exit code (Python would end the process by SIGINT instead).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _quiet_interrupt(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    """``sys.excepthook`` that lets an interrupt end the process without a traceback."""
    if not issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
