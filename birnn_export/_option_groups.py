"""The option groups the commands share, each the keyword arguments of one library function.

Like Polygraphy's argument groups, these are declared once and added to every command that
takes them: :data:`loader_options` (:func:`birnn_export.load_model`), :data:`graph_options`
(the graph's inputs, ranges and form: :func:`birnn_export.pipeline.export_model`),
:func:`sweep_options` (the engines, shapes and tolerances of :func:`birnn_export.verify` and
:func:`birnn_export.benchmark`) and :data:`timing_options` (how ``benchmark`` times);
:func:`json_option` is every command's ``--json``.
:func:`option_group` hands a group to its command as one dict, named after the library
function's keyword arguments, which goes to that function as it is. Option text is read by
:mod:`birnn_export.options`, in click callbacks (:func:`parsed`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from birnn_export import options as options_


class FilePath(click.Path):
    """``click.Path`` refusing an empty value, which it would make ``Path(".")`` (review41 F7:
    ``-o ""`` was told ". is a directory")."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and not value:
            self.fail("an empty path; give a file name", param, ctx)
        return super().convert(value, param, ctx)


def parsed(parse: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    """A click callback that reads an option's text with ``parse`` (from
    :mod:`birnn_export.options`); its :class:`~birnn_export.errors.UsageError` exits 2."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        return None if value is None or value == () else parse(value, *args)

    return callback


def option_group(into: str, options: list[Callable[..., Any]]) -> Callable[..., Any]:
    """Add ``options`` to a command and hand their values to it as one dict, the keyword argument
    ``into``: the keyword arguments of the library function the options are for."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            group = {name: kwargs.pop(name) for name in names}
            return func(*args, **{into: group}, **kwargs)

        before = len(getattr(command, "__click_params__", []))
        for option in reversed(options):
            command = option(command)
        names = [param.name for param in command.__click_params__[before:]]
        return command

    return decorate


def range_option(flag: str, help: str) -> Callable[..., Any]:
    """An option taking ``MIN,OPT,MAX`` (:func:`birnn_export.options.parse_range`)."""
    return click.option(
        flag, callback=parsed(options_.parse_range, flag), metavar="MIN,OPT,MAX", help=help
    )


def sizes_option(flag: str, alias: str, metavar: str, help: str) -> Callable[..., Any]:
    """A comma-separated list of positive sizes (:func:`birnn_export.options.parse_sizes`),
    also spelt ``alias``; it sets the keyword argument named after ``flag``."""
    return click.option(
        flag,
        alias,
        flag[2:].replace("-", "_"),
        callback=parsed(options_.parse_sizes, flag),
        metavar=metavar,
        help=help,
    )


def json_option(what: str) -> Callable[..., Any]:
    """``--json PATH`` (keyword ``json_path``): where a command writes ``what`` as JSON."""
    return click.option(
        "--json",
        "json_path",
        type=FilePath(dir_okay=False, path_type=Path),
        help=f"Write {what} as JSON ('-': to standard output, the rest to standard error).",
    )


def tolerance_option(flag: str, help: str) -> Callable[..., Any]:
    """A repeatable ``VALUE|NAME:VALUE`` option (:func:`birnn_export.options.parse_tolerance`)."""
    return click.option(
        flag,
        multiple=True,
        callback=parsed(options_.parse_tolerance, flag),
        metavar="VALUE|NAME:VALUE",
        help=help,
    )


#: The options of :func:`birnn_export.load_model`, for every command that loads a model.
loader_options = option_group(
    "loader",
    [
        click.option(
            "--model-class",
            metavar="MODULE:CLASS",
            help="Your model class, e.g. 'mypkg.models:Tagger'; weights come from the file. "
            "Importing the module RUNS ITS CODE; it must be importable as it is (installed, or "
            "on PYTHONPATH: the working directory is not added).",
        ),
        click.option(
            "--model-kwargs",
            callback=parsed(options_.parse_model_kwargs),
            metavar="JSON",
            help="Keyword arguments for --model-class, as JSON, e.g. '{\"vocab_size\": 100}'.",
        ),
        click.option(
            "--state-key",
            help="Key of the state_dict inside a nested checkpoint (e.g. 'model_state_dict'), "
            "or the prefix of one network's weights in it (e.g. 'sed_teacher').",
        ),
        click.option(
            "--nonlinearity",
            type=click.Choice(["tanh", "relu"]),
            help="nn.RNN nonlinearity for bare state_dicts (weights do not reveal it; tanh, "
            "torch's default, is taken where not given, and the load line says so).",
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
    ],
)


#: The options of :func:`birnn_export.export_model` that shape the graph (its inputs and their
#: ranges, then :func:`birnn_export.export_onnx`'s graph options).
graph_options = option_group(
    "graph",
    [
        click.option(
            "--input",
            "inputs",
            multiple=True,
            metavar="NAME:DTYPE[DIMS]",
            help="Declare a graph input, repeatable, in forward's order: a name for a dynamic "
            "dim, a number for a fixed one; the batch dim is 'batch'; a lengths input ends in "
            "':lengths(DIM)', a [batch,TIME] mask in ':mask' (1 at valid steps) or "
            "':padding_mask' (1 past each row's end); integers that index another dim's steps "
            "(each subword's word) end in ':index(DIM)'. E.g. --input "
            "'image:float32[batch,1,64,width]', or --input 'x:float32[batch,40,time]' --input "
            "'x_lens:int64[batch]:lengths(time)'. "
            "[default: inferred from the model]",
        ),
        click.option(
            "--range",
            "ranges",
            multiple=True,
            callback=parsed(options_.parse_named_ranges),
            metavar="DIM=MIN,OPT,MAX",
            help="Serving range of a named dim, repeatable, e.g. --range width=32,256,1024: the "
            "TensorRT profile, the lengths verification runs and the bounds the model is traced "
            "for.",
        ),
        range_option(
            "--batch-range",
            "Batch sizes the graph will serve, recorded in it: the default TensorRT profile. The "
            "graph itself takes any size. [default: 1,8,32]",
        ),
        range_option(
            "--seq-range",
            "Lengths of the time dim the graph will serve, likewise; 'birnn-export verify' also "
            "runs at MAX. [default: 1,64,256]",
        ),
        click.option(
            "--output-names",
            callback=parsed(options_.parse_names, "--output-names"),
            metavar="NAME,...",
            help="Names of the graph's outputs, in the order forward returns them, e.g. "
            "'log_probs,lengths' [default: a returned dict's keys or NamedTuple's fields, else "
            "output, output_0, output_1, ...].",
        ),
        click.option("--opset", type=int, help="ONNX opset [default: 18; 18-23 accepted]."),
        click.option(
            "--layout",
            type=click.Choice(["split", "fused", "scan", "packed"]),  # spec.LAYOUTS
            help="split: forward node + forward node between two ReverseSequence; fused: one "
            "bidirectional node per layer; scan: fused, with RNN nodes as exact Scan loops "
            "(faster on ONNX Runtime's CPU); packed: scan, with LSTM and GRU nodes that run "
            "only the rows still going, as a PackedSequence does (faster for ragged batches on "
            "ONNX Runtime's CPU, slower at B = 1; without a lengths input it is scan). "
            "[default: by measurement, split for LSTM and GRU, scan for RNN of hidden size 128 or "
            "more]",
        ),
        click.option(
            "--dtype",
            type=click.Choice(["float32", "float16"]),
            default="float32",
            show_default=True,
            help="Precision of the graph's weights and float tensors.",
        ),
        click.option(
            "--lengths/--no-lengths",
            default=None,
            help="Whether the graph takes a lengths input [default: inferred from the model; "
            "bare state_dicts get one].",
        ),
        click.option(
            "--input-size",
            type=click.IntRange(min=1),
            help="Features N of a float [batch, seq, N] input, for models whose first layer "
            "does not tell (a Conv1d front-end, say).",
        ),
        click.option(
            "--quantize",
            type=click.Choice(["int8"]),
            help="int8: write the graph dynamically quantized by ONNX Runtime (int8 LSTM and "
            "MatMul kernels; GRU/RNN and LSTMs with proj_size stay float32), verified by top-1 "
            "agreement and relative error. Runs on ONNX Runtime CPU only.",
        ),
        click.option(
            "--scores",
            callback=parsed(options_.parse_scores),
            metavar="NAME,...|none",
            help="The outputs that hold class scores, whose top-1 an int8 graph must keep "
            "(recorded in the graph), e.g. 'logits'; 'none' for an encoder's projection or a "
            "regression. [default: each output a linear head makes]",
        ),
        click.option(
            "--ctc",
            callback=parsed(options_.parse_ctc),
            metavar="NAME[=BLANK],...",
            help="The outputs that hold CTC scores along time, [batch, time, classes] (blank "
            "class 0 unless given; recorded in the graph): an int8 graph is judged by their "
            "greedy decodes (edits <= 0.5% of the symbols, or one) instead of each frame's "
            "top-1, and by both where the decodes hold under 200 symbols.",
        ),
    ],
)


#: The options of :func:`birnn_export.benchmark` that say how it times.
timing_options = option_group(
    "timing",
    [
        click.option(
            "--warmup",
            type=click.IntRange(min=0),
            default=5,
            show_default=True,
            help="Untimed runs.",
        ),
        click.option("--iters", type=click.IntRange(min=1), help="Timed runs per shape."),
        click.option(
            "--duration",
            type=click.FloatRange(min=0, min_open=True),
            help="Seconds of timed runs per shape (at least 3 runs). Default: >= 10 runs and ~1 s.",
        ),
        click.option(
            "--threads",
            type=click.IntRange(min=1),
            help="Threads for every CPU engine (torch and ONNX Runtime). Default: torch's count.",
        ),
        click.option(
            "--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N (torch)."
        ),
        click.option("--compile", is_flag=True, help="Time the torch engine under torch.compile."),
        click.option(
            "--ort-spinning",
            type=click.Choice(["on", "off"]),
            callback=lambda ctx, param, value: None if value is None else value == "on",
            help="ONNX Runtime's idle threads spin (on: its default, as a serving process runs "
            "it) or sleep (off). Engines are timed each in its own block either way.",
        ),
    ],
)


def sweep_options(default_engines: str, *, default_sweep: bool = False) -> Callable[..., Any]:
    """The options verify and bench share, in one form, parsed into their keyword arguments
    (engines, shapes, tolerances, the seed and the memory budget) and handed over as ``sweep``.
    ``default_sweep``: the command runs a default sweep when no shapes are given (verify)."""
    options = [
        click.option(
            "--engines",
            multiple=True,
            default=[default_engines],
            show_default=True,
            callback=parsed(options_.parse_engines),
            metavar="ENGINE[,ENGINE]",
            help="Engines, comma-separated or repeated: torch, ort-cpu, ort-int8 (the graph "
            "quantized to int8 on ONNX Runtime CPU), ort-cuda, ort-trt, trt, trt-rtx.",
        ),
        sizes_option("--batch-sizes", "--batch", "B,B,...", "Batch sizes, comma-separated."),
        sizes_option("--seq-lens", "--seq", "T,T,...", "Lengths of the time dim, comma-separated."),
        click.option(
            "--dim",
            "dims",
            multiple=True,
            callback=parsed(options_.parse_dims),
            metavar="DIM=SIZE",
            help="Size of another named dim of the graph, repeatable: a sentence pair's second "
            "sequence (hypothesis_seq=32), a character dim. Default: its declared opt.",
        ),
        tolerance_option(
            "--atol",
            "Judge by fixed tolerances instead of the model's own float32 noise: absolute "
            "tolerance, for all outputs or one output; repeatable. [default: per dtype]",
        ),
        tolerance_option(
            "--rtol", "Relative tolerance, like --atol (either selects fixed tolerances)."
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
            default=1.0,  # GiB: _sweep.DEFAULT_MEMORY_BUDGET
            show_default=True,
            callback=lambda ctx, param, gib: int(gib * 2**30),
            metavar="GIB",
            help="GiB the largest tensor of one case may take in float64: larger explicit "
            "shapes are refused"
            + (" (default cases over it are skipped)." if default_sweep else "."),
        ),
    ]
    return option_group("sweep", options)
