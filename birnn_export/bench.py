"""Benchmark inference engines against eager PyTorch, never timing an engine that is wrong.

:func:`benchmark` builds inputs from the :class:`~birnn_export.spec.GraphSpec` stored in the ONNX
file, runs every requested engine at every (batch, sequence length) shape and, before any of an
engine's runs count, compares its outputs at that shape with the eager PyTorch model. An engine
whose outputs differ beyond tolerance is reported as ``"mismatch"`` with its max abs error and is
not timed. Warm-up runs are excluded; GPU runners synchronise before their clock stops.

How many timed runs:

* ``iters=N``: exactly ``N`` runs per shape.
* ``duration=S``: run until ``S`` seconds have passed, and at least 3 runs.
* neither (the default): adaptive: at least 10 runs and about 1 s per shape; a shape whose runs
  are slow stops after 10 s once it has 3 runs; never more than 1000 runs.

Example:
    >>> report = benchmark("model.onnx", model, engines=("torch", "ort-cpu"))  # doctest: +SKIP
    >>> report.to_csv("bench.csv")  # doctest: +SKIP

One cohesive module, over 600 lines: timing, the output check before timing, statistics,
reports (table, JSON, CSV, plot).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from birnn_export import _report
from birnn_export._files import write_atomic
from birnn_export._foreign import read_spec
from birnn_export._process import one_at_a_time
from birnn_export._sweep import DEFAULT_MEMORY_BUDGET, Case, fit_budget, sweep_arguments
from birnn_export.compare import (
    Check,
    NoiseCriterion,
    QuantizedCriterion,
    ToleranceOverride,
    check_overrides,
    compare_outputs,
    engine_criteria,
    resolve_tolerance,
    sweep_check,
)
from birnn_export.errors import (
    BiRNNExportError,
    EngineError,
    EngineUnavailableError,
    UsageError,
    VerificationError,
    one_line,
    outcome,
)
from birnn_export.spec import (
    GraphSpec,
    Tolerance,
    covering_range,
    load_onnx,
    make_feed,
    refuse_data_outside,
)

logger = logging.getLogger(__name__)

Status = Literal["ok", "mismatch", "unavailable", "error"]

#: ``threads`` may be at most this many per core of the machine.
MAX_THREADS_PER_CORE = 4

#: Adaptive timing (neither ``iters`` nor ``duration``): see the module docstring.
ADAPTIVE_MIN_RUNS = 10
ADAPTIVE_TARGET_S = 1.0
ADAPTIVE_SLOW_LIMIT_S = 10.0
ADAPTIVE_MAX_RUNS = 1000
DURATION_MIN_RUNS = 3
#: A row whose middle half of run times (the interquartile range) spans more than this percent
#: of their median is named under the table: its median and ratios are less certain (other work
#: took the cores for a good part of the runs). On a quiet 2-core machine it stayed within 13%
#: for calls of a millisecond or less (eager torch's own jitter; ONNX Runtime's within 10%),
#: and the standard deviation did not (one stalled run in 1000 puts it over 30% and moves the
#: median by nothing); with a busy process beside ONNX Runtime, 4% to 36%.
UNSTABLE_IQR_PCT = 25.0

#: Columns of :meth:`BenchReport.to_csv` (and keys of each JSON result), in order.
CSV_COLUMNS = (
    "engine",
    "batch",
    "seq",
    "median_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "runs",
    "seq_per_s",
    "tokens_per_s",
    "first_run_ms",
    "build_s",
    "engine_bytes",
    "speedup_vs_torch",
    "speedup_vs_ort_cpu",
    "status",
    "reason",
    "max_abs_error",
    "iqr_pct",
)


@dataclass(frozen=True)
class BenchResult:
    """One engine at one shape.

    Times are per call of the runner (host arrays in, host arrays out). ``speedup_vs_torch`` is
    eager torch's median divided by this engine's median at the same shape (> 1: faster than torch),
    ``None`` when torch was not measured there; ``speedup_vs_ort_cpu`` (``ort-int8`` rows only) the
    ``ort-cpu`` median over this one at the same shape: the int8 graph against the float graph on
    the same provider, the figure a serving team weighs (users58 F3). For ``status != "ok"`` the
    timing fields are ``None`` and ``runs`` is 0; ``reason`` says why. ``max_abs_error`` is the
    largest absolute difference from eager torch over all outputs (``None`` if never compared).
    ``build_s`` is the runner's set-up time (session creation, engine build or load);
    ``engine_bytes`` the TensorRT engine's size (``trt``, ``trt-rtx``). ``iqr_pct`` is the run
    times' interquartile range in percent of their median: above :data:`UNSTABLE_IQR_PCT` the table
    names the row as unstable. A ``trt-rtx`` engine that cannot run here (no RTX-class GPU) is still
    built ahead of time on the CPU: its rows are ``"unavailable"`` with ``build_s`` (the builder's
    time) and ``engine_bytes``.
    """

    engine: str
    batch: int
    seq: int
    status: Status
    reason: str = ""
    median_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    iqr_pct: float | None = None
    runs: int = 0
    seq_per_s: float | None = None
    tokens_per_s: float | None = None
    first_run_ms: float | None = None
    build_s: float | None = None
    engine_bytes: int | None = None
    speedup_vs_torch: float | None = None
    speedup_vs_ort_cpu: float | None = None
    max_abs_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CSV_COLUMNS}


@dataclass(frozen=True)
class BenchReport:
    """All results of one :func:`benchmark` call, with the machine and settings they came from."""

    results: tuple[BenchResult, ...]
    environment: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    #: The model file the engines were checked against and its sha256 (``None`` for a module
    #: given) (users52 F4).
    model_file: str | None = None
    model_sha256: str | None = None
    #: Each engine judged by the task over every shape measured together (an int8 engine's
    #: outputs: relative L2 error and top-1 agreement, as verify judges its sweep), passed or
    #: not: one sweep :class:`~birnn_export.compare.Check` per output (users58 F3).
    judged: dict[str, tuple[Check, ...]] = field(default_factory=dict)

    @property
    def engines(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.engine for r in self.results))

    def result(self, engine: str, batch: int, seq: int) -> BenchResult | None:
        """The row for one engine and shape, or ``None``."""
        return next(
            (r for r in self.results if (r.engine, r.batch, r.seq) == (engine, batch, seq)), None
        )

    def unstable(self) -> tuple[BenchResult, ...]:
        """Timed rows whose run times spread by more than :data:`UNSTABLE_IQR_PCT` percent."""
        return tuple(r for r in self.results if (r.iqr_pct or 0.0) > UNSTABLE_IQR_PCT)

    def failed(self) -> tuple[BenchResult, ...]:
        """Rows whose engine ran but was wrong or crashed (``"mismatch"`` or ``"error"``)."""
        return tuple(r for r in self.results if r.status in ("mismatch", "error"))

    def raise_for_failure(self) -> None:
        """Raise if a measurement failed: :class:`VerificationError` for outputs beyond
        tolerance, :class:`EngineError` for engines that crashed (both exit 1); else if an
        engine asked for could not run here (:class:`EngineUnavailableError`, exit 2, as
        ``verify`` refuses it: users47 F7), the others' rows timed and reported all the same;
        one built here ahead of time (``trt-rtx`` without its GPU) reports its build instead."""
        absent = [r for r in self.results if r.status == "unavailable"]
        if self.results and len(absent) == len(self.results):
            reasons = "; ".join(dict.fromkeys(r.reason or "" for r in self.results))
            raise EngineUnavailableError(f"no engine could run here: {reasons}")
        failed = self.failed()
        # an engine built here that cannot run here reports its build: a result (review28 L2)
        absent = [r for r in absent if r.engine_bytes is None]
        if not failed and absent:
            reasons = "; ".join(dict.fromkeys(r.reason or "" for r in absent))
            raise EngineUnavailableError(
                f"{', '.join(dict.fromkeys(r.engine for r in absent))} could not run here, the "
                f"other engines were timed: {reasons}"
            )
        if not failed:
            return
        first = failed[0]
        message = (
            f"{len(failed)} of {len(self.results)} measurements failed (first: {first.engine} "
            f"at batch {first.batch}, seq {first.seq}: {first.status}, {first.reason})"
        )
        if any(r.status == "mismatch" for r in failed):
            raise VerificationError(message)
        raise EngineError(message)

    def to_dict(self) -> dict[str, Any]:
        """Environment, settings, the model file timed against and results, with the error and
        exit code the run ends with (:func:`~birnn_export.errors.outcome`), as the export's
        summary has them (users47 F9)."""
        return {
            "environment": self.environment,
            "settings": self.settings,
            "model_file": self.model_file,
            "model_sha256": self.model_sha256,
            "results": [r.to_dict() for r in self.results],
            "judged_over_the_shapes": {
                engine: [_judgement(check) for check in checks]
                for engine, checks in self.judged.items()
            },
            **outcome(self.raise_for_failure),
        }

    def to_json(self) -> str:
        """Environment, settings and results as JSON text, as every report's ``to_json``
        (it wrote a file before, where the others return text: review34 R15)."""
        return json.dumps(_report.json_safe(self.to_dict()), indent=2, sort_keys=False) + "\n"

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write one row per result with :data:`CSV_COLUMNS`; empty cells for missing values."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for result in self.results:
            writer.writerow({k: "" if v is None else v for k, v in result.to_dict().items()})
        return write_atomic(Path(path), buffer.getvalue().encode())

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Latency (median, p90 as error bar) vs sequence length per engine, one panel per batch.

        Needs matplotlib (``pip install matplotlib``, the ``plot`` extra); the y axis is
        logarithmic.
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise BiRNNExportError(
                f"plot: matplotlib is not importable ({exc}); pip install matplotlib"
            ) from None

        batches = sorted({r.batch for r in self.results})
        figure = Figure(figsize=(4.2 * max(1, len(batches)), 3.6), layout="constrained")
        FigureCanvasAgg(figure)  # the Agg canvas, without touching pyplot's global backend
        axes = figure.subplots(1, max(1, len(batches)), squeeze=False)[0]
        for ax, batch in zip(axes, batches, strict=False):
            # before anything is drawn: an untimed engine's empty legend line alone on a linear
            # axis made the switch to log fail when nothing in the panel was timed (review32)
            ax.set_yscale("log")
            for engine in self.engines:
                mine = [r for r in self.results if r.engine == engine and r.batch == batch]
                rows = sorted((r for r in mine if r.status == "ok"), key=lambda r: r.seq)
                untimed = [r for r in mine if r.status != "ok"]
                label = f"{engine} ({_untimed(untimed, whole=not rows)})" if untimed else engine
                if not rows:  # named in the legend all the same, with why (users52 F5)
                    if untimed:
                        ax.plot([], [], linestyle="none", marker="x", color="grey", label=label)
                    continue
                seqs = [r.seq for r in rows]
                medians = [r.median_ms for r in rows]
                upper = [max(0.0, (r.p90_ms or 0.0) - (r.median_ms or 0.0)) for r in rows]
                ax.errorbar(
                    seqs,
                    medians,
                    yerr=[[0.0] * len(rows), upper],
                    marker="o",
                    capsize=3,
                    label=label,
                )
            ax.set_xscale("log", base=2)
            ticks = sorted({r.seq for r in self.results if r.batch == batch})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_title(f"batch {batch}")
            ax.set_xlabel("sequence length")
            ax.set_ylabel("latency, ms (median; bar to p90)")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
        cpu = self.environment.get("cpu", "")
        threads = self.environment.get("threads")
        plural = "" if threads == 1 else "s"
        title = f"{cpu} · {threads} thread{plural}" if cpu else "birnn-export bench"
        figure.suptitle(title, fontsize=9)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        return write_atomic(Path(path), buffer.getvalue())


def _untimed(rows: Sequence[BenchResult], *, whole: bool) -> str:
    """What a plot's legend says of an engine's rows that were not timed: each status, and at
    which lengths where others were timed (``"mismatch at seq 64, 1024; error at seq 256"``)."""
    statuses = dict.fromkeys(r.status for r in rows)
    if whole:
        return ", ".join(statuses)
    return "; ".join(
        f"{status} at seq {', '.join(str(r.seq) for r in rows if r.status == status)}"
        for status in statuses
    )


@one_at_a_time
def benchmark(
    onnx_path: str | os.PathLike[str],
    model: Any,
    *,
    engines: str | Sequence[str] = ("torch", "ort-cpu"),
    batch_sizes: int | Sequence[int] | None = None,
    seq_lens: int | Sequence[int] | None = None,
    warmup: int = 5,
    iters: int | None = None,
    duration: float | None = None,
    threads: int | None = None,
    device: str = "cpu",
    compile: bool = False,
    seed: int = 0,
    atol: ToleranceOverride = None,
    rtol: ToleranceOverride = None,
    progress: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    isolate: bool = True,
    ort_spinning: bool | None = None,
    dims: Mapping[str, int] | None = None,
    load_options: Mapping[str, Any] | None = None,
    like: str | os.PathLike[str] | None = None,
) -> BenchReport:
    """Time each engine at each shape after checking its outputs against eager PyTorch.

    Args:
        onnx_path: An ONNX file written by :func:`birnn_export.export_onnx` (it carries the
            graph spec the inputs are built from).
        model: The model the graph was exported from: the reference, and what the ``"torch"``
            engine times. Its file (read by :func:`birnn_export.load_model` with
            ``load_options``), a :class:`~birnn_export.checkpoint.LoadedModel` or an eager
            ``torch.nn.Module``; of a loaded model, the model as its author wrote it (torch's own
            recurrent layers, where it had them: the eager speed to beat and the most
            independent reference). It is called with the graph's inputs in order.
        engines: Names from :data:`birnn_export.runners.ENGINES` (a sequence, or one
            comma-separated string).
        batch_sizes: Batch sizes to measure; default the graph's declared batch range (min,
            opt, max; 1, 8, 32 unless declared otherwise).
        seq_lens: Padded lengths of the time dim to measure; default its declared range's opt
            and max and 16 (or its min, if larger): 16, 64, 256 unless declared otherwise.
            Inputs with lengths get ragged lengths in ``[1, seq]`` (one full row, one of
            length 1).
        warmup: Untimed runs per shape after the first (checked) run.
        iters: Timed runs per shape. Exclusive with ``duration``.
        duration: Seconds of timed runs per shape (at least 3 runs).
        threads: Threads for every CPU engine (torch and ONNX Runtime intra-op alike);
            ``None``: torch's current count, used for all of them.
        seed: Seed of the random inputs.
        device: Where the ``"torch"`` engine runs: ``"cpu"`` or ``"cuda"`` (the reference
            outputs are always computed on the CPU).
        compile: Time the ``"torch"`` engine under ``torch.compile``.
        atol: Judge the outputs by fixed tolerances instead of the model's noise floor (the
            default: the float64 reference's criterion, as verify's): a number, or ``{output
            name: number}``. Either one of atol and rtol selects fixed tolerances; the other
            then defaults per dtype and device (:func:`~birnn_export.spec.default_tolerance`).
        rtol: Relative tolerance, like ``atol``.
        progress: Show a transient progress bar on stderr.
        memory_budget: Bytes the largest tensor of one shape may take in float64 (the
            reference runs there); shapes over it are refused before anything runs.
        isolate: Run every engine but ``torch`` in a child process (a crash is an error row,
            not the end of the run; timings are taken in the child). ``False`` runs them here.
        ort_spinning: ONNX Runtime's idle threads spin (``True``, its default, as a serving
            process runs it) or sleep (``False``). Engines are timed one after another, each in
            its own block, so a spinning pool never slows another engine's runs.
        dims: Sizes of other named dims (``{"hypothesis_seq": 32}``: a sentence pair's second
            sequence, character dims), each within its declared range; the others are timed at
            their declared opt.
        load_options: Keyword arguments of :func:`birnn_export.load_model` for a ``model``
            given as a file (``model_class``, ``trust_pickle``...).
        like: For a graph birnn-export did not write (``torch.onnx.export``'s, timed beside
            ours): a graph it wrote from the same model, whose spec says the inputs; without
            it the model is traced to learn them (as :func:`birnn_export.verify` does).

    Returns:
        A :class:`BenchReport` with one :class:`BenchResult` per engine and shape.

    Raises:
        EngineUnavailableError: No requested engine can run here (the only one asked for, or
            all of them); the message gives each reason. An unavailable engine among others is
            reported with ``status="unavailable"`` instead.
        BiRNNExportError: Bad arguments (unknown engine, empty or non-positive sizes, both
            ``iters`` and ``duration``, too many threads, a shape over the memory budget).

    Example:
        >>> report = benchmark("tagger.onnx", "tagger.pt", engines=("torch", "ort-cpu"),
        ...                    batch_sizes=(1, 32), seq_lens=(100,))  # doctest: +SKIP
        >>> report.result("ort-cpu", 32, 100).speedup_vs_torch  # doctest: +SKIP
        2.4
    """
    from birnn_export.base_runner import forbid_tf32

    forbid_tf32()
    import torch

    from birnn_export import runners
    from birnn_export._container import fed_as

    load_before = _load_average()

    engines, batch_sizes, seq_lens = sweep_arguments(engines, batch_sizes, seq_lens)
    _check_arguments(warmup, iters, duration, threads, device)
    if "torch" not in engines and (device != "cpu" or compile):  # review41 F3: ignored silently
        given, how = ("device", "on it") if device != "cpu" else ("compile", "under it")
        raise UsageError(
            f"{given} and engines: the torch engine alone runs {how}, and it is not among the "
            "engines: add torch, or leave the option out"
        )
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():  # before a model loads or an engine runs
        raise BiRNNExportError(f"{onnx_path}: no such ONNX file")
    from birnn_export.checkpoint import LoadedModel, load_if_path

    proto = load_onnx(onnx_path)
    spec, foreign, model, load_options = read_spec(proto, str(onnx_path), model, like, load_options)
    if foreign is not None:  # the sizes a foreign graph fixes, only (users45)
        batch_sizes, seq_lens = foreign.sizes(batch_sizes, seq_lens)
    if batch_sizes is None:
        batch_sizes = tuple(dict.fromkeys(spec.batch_range))
    if seq_lens is None:
        low, opt, high = spec.seq_range
        seq_lens = tuple(sorted({min(max(16, low), high), opt, high}))
    check_overrides(spec, atol=atol, rtol=rtol)
    dims = spec.check_dims(dims or {})
    refuse_data_outside(proto, onnx_path)  # ONNX Runtime would refuse it
    sized = tuple(dims.items())
    fit_budget(
        [Case(b, s, "ragged", 1.0, seed, dims=sized) for b in batch_sizes for s in seq_lens],
        proto,
        spec,
        memory_budget,
        explicit=True,
    )
    if threads is None:
        threads = torch.get_num_threads()
    shapes = [(b, s) for b in batch_sizes for s in seq_lens]

    reasons = {engine: runners.unavailable_reason(engine) for engine in engines}
    profile = _served_profile(spec, batch_sizes, seq_lens)
    # TensorRT-RTX builds ahead of time without a GPU: where it cannot run, its build still
    # says whether TensorRT takes the graph, how long the build takes and how big the engine is.
    offline = {
        engine: _offline_build(engine, onnx_path, profile)
        for engine, reason in reasons.items()
        if reason and engine == "trt-rtx"
    }
    offline = {engine: build for engine, build in offline.items() if build is not None}
    if all(reasons.values()) and not offline:
        raise EngineUnavailableError("; ".join(str(r) for r in reasons.values()))

    model = load_if_path(model, load_options)
    model_file = model_sha256 = None
    if isinstance(model, LoadedModel):
        model_file, model_sha256 = str(model.path), model.sha256
        model = model.reference
    model = fed_as(model, spec.container)  # forward(batch) reading batch["ids"]: as exported
    input_names = [t.name for t in spec.inputs]
    output_names = [t.name for t in spec.outputs]
    # fp16 graphs: the torch engine times the model in fp32 (what a user would run).
    torch_dtype = runners.eager_dtype(model, spec.dtype)
    fixed = atol is not None or rtol is not None
    criteria = engine_criteria(spec, engines, fixed=fixed, atol=atol, rtol=rtol, device=device)
    # Checked as verify checks: against the model in float64, within a factor of eager
    # PyTorch's own error in the graph's precision (or fixed tolerances, when given).
    reference = runners.TorchRunner(
        model,
        input_names,
        output_names,
        threads=threads,
        dtype=torch_dtype if fixed else "float64",
    )
    eager = (
        None
        if fixed
        else runners.TorchRunner(
            model, input_names, output_names, threads=threads, dtype=spec.dtype
        )
    )
    timer = _Timer(iters=iters, duration=duration, warmup=warmup)
    feeds: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    expected: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    rows: list[BenchResult] = []
    judged: dict[str, tuple[Check, ...]] = {}  # an int8 engine's outputs over every shape
    placement: dict[str, Any] = {}  # ONNX Runtime engines: where their nodes ran
    cpu_recurrent: dict[str, list[str]] = {}

    with (
        reference,
        eager or contextlib.nullcontext(),
        _progress([b * s for _ in engines for b, s in shapes], enabled=progress) as advance,
    ):
        for engine in engines:
            if reasons[engine]:
                rows += _unavailable_rows(engine, shapes, reasons[engine], offline.get(engine))
                advance(len(shapes), engine)
                continue
            try:
                runner = _make_runner(
                    engine,
                    onnx_path,
                    model,
                    input_names,
                    output_names,
                    threads,
                    torch_dtype,
                    profile,
                    device=device,
                    compile=compile,
                    isolate=isolate,
                    spinning=ort_spinning,
                )
                runner.activate()
            except EngineUnavailableError as exc:
                if len(engines) == 1:
                    raise
                rows += [_row(engine, b, s, "unavailable", str(exc)) for b, s in shapes]
                advance(len(shapes), engine)
                continue
            except Exception as exc:
                logger.debug("%s failed to build", engine, exc_info=True)
                rows += [_row(engine, b, s, "error", one_line(exc)) for b, s in shapes]
                advance(len(shapes), engine)
                continue
            if engine.startswith("ort-"):
                placement[engine] = runner.placement
                if runner.cpu_recurrent_nodes:
                    cpu_recurrent[engine] = list(runner.cpu_recurrent_nodes)
            checked: list[Check] = []  # every shape's checks, for a judgement over them all
            try:
                for batch, seq in shapes:
                    advance(0, f"{engine} b={batch} t={seq}")
                    if (batch, seq) not in feeds:
                        feeds[batch, seq] = make_feed(spec, batch, seq, seed=seed, dims=dims)
                        expected[batch, seq] = (
                            _run_reference(reference, feeds[batch, seq]),
                            None if eager is None else _run_reference(eager, feeds[batch, seq]),
                        )
                    feed = feeds[batch, seq]
                    lengths = spec.feed_lengths(feed)
                    tokens = _valid_tokens(spec, feed) or batch * seq
                    want, noise = expected[batch, seq]
                    check = functools.partial(
                        _recorded,
                        checked,
                        spec,
                        expected=want,
                        lengths=lengths,
                        criteria=criteria[engine],
                        eager=noise,
                    )
                    result = _measure(runner, engine, batch, seq, feed, check, timer, tokens)
                    rows.append(result)
                    advance(1, engine)
            finally:
                runner.deactivate()
            judged[engine] = _judged_over_the_shapes(checked, criteria[engine])
            rows = _refused_by_the_task(rows, engine, judged[engine])

    return BenchReport(
        # an int8 graph's ort-cpu runs int8 too: no float graph to compare with (users60 F1)
        results=_with_speedups(rows, versus_float=spec.quantization is None),
        model_file=model_file,
        model_sha256=model_sha256,
        judged={engine: checks for engine, checks in judged.items() if checks},
        environment={
            **environment(onnx_path, threads=threads),
            "load_average": {"before": load_before, "after": _load_average()},
        },
        settings={
            "engines": list(engines),
            "batch_sizes": list(batch_sizes),
            "seq_lens": list(seq_lens),
            "warmup": warmup,
            "iters": iters,
            "duration": duration,
            "timing": timer.describe(),
            "seed": seed,
            "lengths": "ragged"
            if spec.length_source is not None or spec.token_padding is not None
            else None,
            "other_dims": {
                name: size
                for name, size in spec.sizes(1, 1, dims=dims).items()
                if name not in (spec.batch_dim, spec.time_dim)
            },
            "given_dims": sorted(dims),
            "graph_dtype": spec.dtype,
            "foreign": list(foreign.notes) if foreign is not None else None,
            "torch_device": device,
            "torch_threads": threads,
            "ort": {
                "intra_op_threads": threads,
                "inter_op_threads": 1,
                "execution_mode": "sequential",
                "spinning": "default (on)" if ort_spinning is None else ort_spinning,
            },
            "blocks": "each engine timed in its own block, one after another",
            "torch_compile": compile,
            "criterion": (
                "fixed tolerances against the model in float32"
                if fixed
                else f"float64 reference; {NoiseCriterion().describe()} ({spec.dtype})"
            ),
            "tolerances": (
                {
                    e: {
                        t.name: _atol_rtol(resolve_tolerance(t, e, atol, rtol, device=device))
                        for t in spec.outputs
                    }
                    for e in engines
                }
                if fixed
                else None
            ),
            "placement": placement,
            "cpu_recurrent_nodes": cpu_recurrent,
            "tensorrt": _tensorrt_libraries(engines),
            "offline_builds": {e: b.to_dict() for e, b in offline.items()},
        },
    )


def _served_profile(
    spec: GraphSpec, batch_sizes: Sequence[int], seq_lens: Sequence[int]
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The TensorRT engine that would be served: the graph's declared (min, opt, max) batch and
    sequence ranges (its opt shape included), widened to cover every measured shape."""
    return covering_range(spec.batch_range, batch_sizes), covering_range(spec.seq_range, seq_lens)


def _offline_build(engine: str, onnx_path: Path, profile: Any) -> Any:
    """The ahead-of-time :class:`~birnn_export.trt.EngineBuild` of a TensorRT-RTX engine that
    cannot run here, or ``None`` when ``tensorrt_rtx`` is not importable."""
    from birnn_export import trt

    try:
        library = trt.import_library(trt.LIBRARIES[engine])
    except EngineUnavailableError:
        return None
    return trt.build_engine(onnx_path, library=library, batch=profile[0], seq=profile[1])


def _unavailable_rows(
    engine: str, shapes: Sequence[tuple[int, int]], reason: str, build: Any
) -> list[BenchResult]:
    if build is None:
        return [_row(engine, b, s, "unavailable", reason) for b, s in shapes]
    if build.ok:
        reason += (
            f"; built ahead of time here by {build.checked_with} in {build.seconds:.2f} s "
            f"({build.engine_bytes / 1e6:.1f} MB engine), not run"
        )
        status: Status = "unavailable"
    else:
        reason = f"{engine}: {build.summary()}"
        status = "error"
    return [
        _row(engine, b, s, status, reason, build_s=build.seconds, engine_bytes=build.engine_bytes)
        for b, s in shapes
    ]


def _tensorrt_libraries(engines: Sequence[str]) -> dict[str, str | None]:
    """``{engine: "tensorrt_rtx 1.7.1.116"}`` for the TensorRT engines asked for (``None``
    where the package does not import)."""
    from birnn_export import trt

    found: dict[str, str | None] = {}
    for engine in engines:
        if engine in trt.LIBRARIES:
            try:
                found[engine] = str(trt.import_library(trt.LIBRARIES[engine]))
            except EngineUnavailableError:
                found[engine] = None
    return found


def render_table(report: BenchReport) -> Any:
    """A ``rich.table.Table`` of the report: one row per engine and shape.

    The status column stays short (``ok``, ``mismatch 3.2e-01``, ``error``, ``unavailable``); the
    reasons are listed once per engine in the caption. An engine unavailable at every shape
    gets a single row.
    """
    from rich.table import Table
    from rich.text import Text

    table = Table(title="birnn-export bench", title_justify="left", caption_justify="left")
    labels = {r.engine: _label(r.engine, report.settings) for r in report.results}
    widest = max((len(label) for label in labels.values()), default=6)
    table.add_column("engine", no_wrap=True, min_width=widest)
    for name in ("batch", "seq", "median ms", "p90 ms", "p99 ms", "runs", "tokens/s"):
        table.add_column(name, justify="right")
    versus_torch = any(r.engine == "torch" for r in report.results)
    if versus_torch:  # no empty column where torch did not run (users63 F4)
        table.add_column("vs torch", justify="right")
    versus_float = any(r.speedup_vs_ort_cpu is not None for r in report.results)
    if versus_float:  # int8 beside the float graph (users58 F3)
        table.add_column("vs ort-cpu", justify="right")
    table.add_column("status", no_wrap=True)
    styles = {"ok": "green", "mismatch": "red", "error": "red", "unavailable": "yellow"}
    refused = {e for e, checks in report.judged.items() if not all(c.passed for c in checks)}
    notes: dict[str, str] = {}
    for r in report.results:
        if r.reason and r.engine not in notes:
            prefix = "" if r.reason.startswith(r.engine) else f"{r.engine} "
            notes[r.engine] = f"{prefix}{r.status}: {r.reason}"
        same_engine = [x for x in report.results if x.engine == r.engine]
        if all(x.status == "unavailable" for x in same_engine):
            if r is same_engine[0]:
                built = (
                    f" (built {r.build_s:.2f} s, {r.engine_bytes / 1e6:.1f} MB)"
                    if r.build_s is not None and r.engine_bytes is not None
                    else ""
                )
                table.add_row(
                    labels[r.engine],
                    "all",
                    "all",
                    *[""] * (len(table.columns) - 4),  # up to the status column
                    Text("unavailable" + built, "yellow"),
                )
            continue
        status = r.status
        if r.status == "mismatch" and r.max_abs_error is not None and r.engine not in refused:
            status += f" {r.max_abs_error:.1e}"  # not where the task failed: top-1, say
        table.add_row(
            labels[r.engine],
            str(r.batch),
            str(r.seq),
            _fmt(r.median_ms, ".3f"),
            _fmt(r.p90_ms, ".3f"),
            _fmt(r.p99_ms, ".3f"),
            str(r.runs) if r.runs else "",
            _fmt(r.tokens_per_s, ",.0f"),
            *([_fmt(r.speedup_vs_torch, ".2f", "x")] if versus_torch else []),
            *([_fmt(r.speedup_vs_ort_cpu, ".2f", "x")] if versus_float else []),
            Text(status, styles[r.status]),
        )
    env = report.environment
    lines = [
        f"{env.get('cpu', '?')}, {env.get('cores', '?')} cores, {env.get('threads', '?')} "
        f"thread{'' if env.get('threads') == 1 else 's'}"
        + (f", {env['gpu']}" if env.get("gpu") else "")
        + f"; {report.settings.get('timing', '')}"
        + _ort_spinning(report),
        *(
            [
                f"vs torch = {_baseline(report)} median / engine median at the same shape "
                "(> 1: faster)" + _torch_mode(report)
            ]
            if versus_torch
            else []
        ),
        *(
            ["vs ort-cpu = the float graph's ort-cpu median / ort-int8's at the same shape"]
            if versus_float
            else []
        ),
        "tokens/s = the batch's valid steps per second"
        + (
            " (ragged rows: padding not counted)"
            if report.settings.get("lengths") == "ragged"
            else " (batch x seq)"
        ),
        *_other_dims(report.settings),
        *(report.settings.get("foreign") or ()),
        *notes.values(),
        *(
            f"{engine} judged as verify judges it: {_over_the_shapes(check)}"
            for engine, checks in report.judged.items()
            for check in checks
            if check.passed  # a failed one is the engine's reason, above
        ),
        *_unstable_line(report),
        *_busy_line(report),
        *(
            f"{engine}: recurrent nodes left to the CPU, so timed partly on the CPU: "
            f"{', '.join(nodes)} (see 'birnn-export check --target ort-cuda')"
            for engine, nodes in report.settings.get("cpu_recurrent_nodes", {}).items()
        ),
    ]
    table.caption = Text("\n".join(lines))
    return table


def _unstable_line(report: BenchReport) -> list[str]:
    """One caption line naming the rows whose run times varied too much to trust, if any."""
    rows = report.unstable()
    if not rows:
        return []
    named = ", ".join(
        f"{r.engine} batch {r.batch} seq {r.seq} ({r.iqr_pct:.0f}%)" for r in rows[:4]
    )
    more = f" and {len(rows) - 4} more" if len(rows) > 4 else ""
    return [
        f"unstable timings (the middle half of the run times spans over {UNSTABLE_IQR_PCT:g}% "
        "of their median): "
        f"{named}{more}: their medians and ratios are less certain (was other work running?); "
        "rerun on an idle machine, or longer (--duration)"
    ]


#: The fewest runs p99 is given for: from fewer it is the largest run or two.
P99_MIN_RUNS = 100

#: A load average over the last minute at or above this before the run began: other work ran.
BUSY_LOAD = 1.0


def _load_average() -> float | None:
    """The machine's load average over the last minute (``None`` where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _busy_line(report: BenchReport) -> list[str]:
    """A caption line where other work ran as the benchmark began: engines are timed one
    block after another, so a load that changed between blocks moves the ratios, which no
    spread within a block shows (users52 F1: 3.20x, 0.63x and 40x in three runs)."""
    load = (report.environment.get("load_average") or {}).get("before")
    if load is None or load < BUSY_LOAD:
        return []
    return [
        f"the machine was busy as the run began (load average {load:g} over the last minute, "
        f"{report.environment.get('cores', '?')} cores): each engine is timed in its own block, "
        "so a load that changed between blocks moves the ratios; rerun on an idle machine"
    ]


def environment(
    onnx_path: str | os.PathLike[str] | None = None, *, threads: int | None = None
) -> dict[str, Any]:
    """The machine and library versions a benchmark ran with (and the ONNX file's sha256): the
    keys of :func:`birnn_export._report.environment` plus ``threads``."""
    env = _report.environment(onnx_path)
    env["threads"] = threads
    return env


# -- measuring -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Timer:
    """When to stop timing one shape (see the module docstring)."""

    iters: int | None
    duration: float | None
    warmup: int

    def done(self, runs: int, elapsed: float) -> bool:
        if self.iters is not None:
            return runs >= self.iters
        if self.duration is not None:
            return runs >= DURATION_MIN_RUNS and elapsed >= self.duration
        if runs >= ADAPTIVE_MAX_RUNS:
            return True
        if runs >= ADAPTIVE_MIN_RUNS and elapsed >= ADAPTIVE_TARGET_S:
            return True
        return runs >= DURATION_MIN_RUNS and elapsed >= ADAPTIVE_SLOW_LIMIT_S

    def describe(self) -> str:
        if self.iters is not None:
            return f"{self.iters} runs per shape after {self.warmup} warm-up"
        if self.duration is not None:
            return (
                f"{self.duration:g} s per shape (>= {DURATION_MIN_RUNS} runs) "
                f"after {self.warmup} warm-up"
            )
        return (
            f"adaptive: >= {ADAPTIVE_MIN_RUNS} runs and ~{ADAPTIVE_TARGET_S:g} s per shape "
            f"after {self.warmup} warm-up"
        )


def _measure(
    runner: Any,
    engine: str,
    batch: int,
    seq: int,
    feed: Mapping[str, np.ndarray],
    check: Callable[..., Sequence[Check]],
    timer: _Timer,
    tokens: int,
) -> BenchResult:
    def failed(exc: Exception) -> BenchResult:  # the engine's own failure, told in its row
        logger.debug("%s failed at batch %d seq %d", engine, batch, seq, exc_info=True)
        return _row(engine, batch, seq, "error", one_line(exc), build_s=runner.activate_time_s)

    try:
        start = time.perf_counter()
        first = runner.infer(feed)
        first_s = time.perf_counter() - start
    except Exception as exc:
        return failed(exc)
    checks = check(actual=first)  # outside: a fault of the comparison keeps its traceback
    values = [c.max_abs for c in checks if c.check == "values"]
    max_err = max(values) if values else None
    wrong = [c for c in checks if not c.passed]
    if wrong:
        why = "; ".join(c.describe() for c in wrong[:3])
        return _row(
            engine,
            batch,
            seq,
            "mismatch",
            f"{engine}: {why}; not timed",
            build_s=runner.activate_time_s,
            max_abs_error=max_err,
        )
    try:
        times = runner.timed_runs(feed, warmup=timer.warmup, done=timer.done)
    except Exception as exc:
        return failed(exc)
    ms = np.asarray(times) * 1e3
    median = float(np.median(ms))
    return _row(
        engine,
        batch,
        seq,
        "ok",
        median_ms=median,
        p90_ms=float(np.percentile(ms, 90)),
        # from fewer runs, p99 is the largest run or two, not a percentile (users52 F6)
        p99_ms=float(np.percentile(ms, 99)) if len(ms) >= P99_MIN_RUNS else None,
        mean_ms=float(ms.mean()),
        iqr_pct=float(100 * np.subtract(*np.percentile(ms, [75, 25])) / median)
        if median > 0
        else None,
        runs=len(times),
        seq_per_s=batch / (median / 1e3),
        tokens_per_s=tokens / (median / 1e3),
        first_run_ms=first_s * 1e3,
        build_s=runner.activate_time_s,
        engine_bytes=_engine_bytes(runner),
        max_abs_error=max_err,
    )


def _recorded(checked: list[Check], *args: Any, **kwargs: Any) -> list[Check]:
    """:func:`~birnn_export.compare.compare_outputs`, its checks also added to ``checked``."""
    checks = compare_outputs(*args, **kwargs)
    checked.extend(checks)
    return checks


def _judged_over_the_shapes(
    checked: Sequence[Check], criteria: Mapping[str, Any]
) -> tuple[Check, ...]:
    """Each output judged by the task (an int8 graph's:
    :class:`~birnn_export.compare.QuantizedCriterion`) over every shape measured together, as
    verification judges it over its sweep: a shape alone only guards against breakage."""
    pooled = (
        sweep_check([c for c in checked if c.name == name and c.check == "values"], criterion)
        for name, criterion in criteria.items()
        if isinstance(criterion, QuantizedCriterion)
    )
    return tuple(check for check in pooled if check is not None)


def _refused_by_the_task(
    rows: list[BenchResult], engine: str, judged: Sequence[Check]
) -> list[BenchResult]:
    """``rows`` with ``engine``'s timed rows made mismatches where an output failed its judgement
    over the shapes: an int8 graph that loses top-1 was timed as "ok" (users27)."""
    failed = [check for check in judged if not check.passed]
    if not failed:
        return rows
    why = "; ".join(_over_the_shapes(c) for c in failed)
    return [
        _row(
            engine,
            r.batch,
            r.seq,
            "mismatch",
            f"{engine}: {why}; not reported as fast (verify judges it the same way)",
            build_s=r.build_s,
            max_abs_error=r.max_abs_error,
        )
        if r.engine == engine and r.status == "ok"
        else r
        for r in rows
    ]


def _over_the_shapes(check: Check) -> str:
    """A sweep check in words, said of bench's shapes rather than verify's sweep."""
    return check.describe().replace(" over the sweep", " over the shapes measured")


def _judgement(check: Check) -> dict[str, Any]:
    """A sweep check as the JSON report has it (with its greedy CTC decodes', where read)."""
    decodes = {
        "ctc_blank": check.blank,
        "decoded_rows": check.decoded_rows,
        "decoded_rows_differing": check.decoded_rows_differ,
        "decoded_symbols": check.decoded_symbols,
        "decoded_edits": check.decoded_edits,
    }
    return {
        "output": check.name,
        "passed": check.passed,
        "relative_l2": check.rel_l2,
        "relative_l2_limit": check.rel_l2_limit,
        "top1_agreement": check.top1,
        "top1_limit": check.top1_limit,
        "positions": check.top1_decisive,
        "positions_differing": check.top1_missed,
        **(decodes if check.decoded_rows else {}),
        "text": _over_the_shapes(check),
    }


def _engine_bytes(runner: Any) -> int | None:
    path = getattr(runner, "engine_path", None)
    return path.stat().st_size if path is not None and path.is_file() else None


def _run_reference(reference: Any, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    try:
        return reference.infer(feed)
    except Exception as exc:
        shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in feed.items())
        raise BiRNNExportError(
            f"model: calling it with the graph's inputs ({shapes}) failed: {one_line(exc)}; "
            "pass the model the ONNX file was exported from"
        ) from exc


def _with_speedups(rows: list[BenchResult], *, versus_float: bool) -> tuple[BenchResult, ...]:
    def medians(engine: str) -> dict[tuple[int, int], float | None]:
        return {
            (r.batch, r.seq): r.median_ms for r in rows if r.engine == engine and r.status == "ok"
        }

    def ratio(base: float | None, r: BenchResult) -> float | None:
        return base / r.median_ms if r.status == "ok" and base and r.median_ms else None

    eager, float_graph = medians("torch"), medians("ort-cpu")
    return tuple(
        replace(
            r,
            speedup_vs_torch=ratio(eager.get((r.batch, r.seq)), r),
            speedup_vs_ort_cpu=ratio(float_graph.get((r.batch, r.seq)), r)
            if r.engine == "ort-int8" and versus_float
            else None,
        )
        for r in rows
    )


def _make_runner(
    engine: str,
    onnx_path: Path,
    model: Any,
    input_names: list[str],
    output_names: list[str],
    threads: int,
    torch_dtype: str | None,
    profile: tuple[tuple[int, int, int], tuple[int, int, int]],
    *,
    device: str = "cpu",
    compile: bool = False,
    isolate: bool = True,
    spinning: bool | None = None,
) -> Any:
    from birnn_export import runners

    # ONNX Runtime's intra-op threads: the same count as torch's, GPU providers included.
    # Engines but torch run in a child process (a crash is an error row, not a dead command);
    # their timings are taken there.
    return runners.make_runner(
        engine,
        str(onnx_path),
        model=model if engine == "torch" else None,
        input_names=input_names,
        output_names=output_names,
        threads=threads,
        dtype=torch_dtype,
        device=device if engine == "torch" else None,
        compile=compile and engine == "torch",
        profile_batch=profile[0],
        profile_seq=profile[1],
        spinning=spinning,
        isolate=isolate,
    )


def _atol_rtol(tolerance: Tolerance) -> list[float]:
    return [tolerance.atol, tolerance.rtol]


def _check_arguments(
    warmup: int, iters: int | None, duration: float | None, threads: int | None, device: str
) -> None:
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise UsageError(f"device: expected cpu, cuda or cuda:N, got {device!r}")
    if warmup < 0:
        raise UsageError(f"warmup: expected >= 0, got {warmup}")
    if iters is not None and duration is not None:
        raise UsageError("iters and duration: give one of them, not both")
    if iters is not None and iters < 1:
        raise UsageError(f"iters: expected >= 1, got {iters}")
    if duration is not None and not duration > 0:
        raise UsageError(f"duration: expected seconds > 0, got {duration}")
    cores = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= MAX_THREADS_PER_CORE * cores:
        raise UsageError(
            f"threads: {threads} is not in 1..{MAX_THREADS_PER_CORE * cores} (this machine has "
            f"{cores} cores; more threads than {MAX_THREADS_PER_CORE} per core only slow it down)"
        )


def _row(
    engine: str, batch: int, seq: int, status: Status, reason: str = "", **values: Any
) -> BenchResult:
    return BenchResult(engine=engine, batch=batch, seq=seq, status=status, reason=reason, **values)


@contextmanager
def _progress(weights: list[int], *, enabled: bool) -> Iterator[Callable[[int, str], None]]:
    """Progress over the engines' shapes, each weighing batch x length (a plain line every
    30 s where stderr is not a terminal); yields ``advance(steps, label)``."""
    from birnn_export._progress import Progress

    with Progress("bench", weights, enabled) as bar:
        yield lambda steps, label: bar.advance(label, steps) if steps else bar.now(label)


def _label(engine: str, settings: Mapping[str, Any]) -> str:
    """The table's engine label: ``torch`` says where and how it ran when not plain CPU eager
    (``torch-cuda``, ``torch-compiled``); the JSON and CSV keep the engine name."""
    if engine != "torch":
        return engine
    device = settings.get("torch_device", "cpu")
    return (
        "torch"
        + ("" if device == "cpu" else f"-{device}")
        + ("-compiled" if settings.get("torch_compile") else "")
    )


def _valid_tokens(spec: GraphSpec, feed: Mapping[str, np.ndarray]) -> int:
    """The valid steps of every sequence in ``feed`` (both of a sentence pair), or the tokens
    that are not padding where the graph finds each row's length by its padding token (a CRF
    tagger masking ``ids != 0``); 0 without lengths, masks or a padding token."""
    if not spec.length_sources() and spec.token_padding is not None:
        tokens = [t for t in spec.inputs if t.role == "tokens" and t.time_axis is not None]
        return int((np.asarray(feed[tokens[0].name]) != spec.token_padding).sum()) if tokens else 0
    return sum(int(spec.feed_lengths(feed, dim).sum()) for dim in spec.length_sources())


def _ran(report: BenchReport, prefix: str) -> bool:
    """Whether an engine whose name begins with ``prefix`` was timed at some shape."""
    return any(r.engine.startswith(prefix) and r.status != "unavailable" for r in report.results)


def _baseline(report: BenchReport) -> str:
    """What ``vs torch`` divides by: eager torch, or the torch engine as it ran (review41 F8:
    "eager" though torch.compile ran it)."""
    label = _label("torch", report.settings)
    return "eager torch" if label == "torch" else label


def _torch_mode(report: BenchReport) -> str:
    """Where eager torch ran, where not on the CPU, as it ran (not where it was asked to)."""
    device = report.settings.get("torch_device", "cpu")
    compiled = report.settings.get("torch_compile", False)
    if (device == "cpu" and not compiled) or not _ran(report, "torch"):
        return ""
    return f"; torch ran on {device}" + (" under torch.compile" if compiled else "")


def _ort_spinning(report: BenchReport) -> str:
    """Whether ONNX Runtime's idle threads spun, where it ran (the JSON alone said so)."""
    spinning = report.settings.get("ort", {}).get("spinning")
    if not _ran(report, "ort"):
        return ""
    said = {"default (on)": "spin (its default)", True: "spin"}.get(spinning, "sleep")
    return f"; ONNX Runtime's idle threads {said}"


def _other_dims(settings: Mapping[str, Any]) -> list[str]:
    """The caption line for named dims other than batch and time, timed at one size each: as
    given (``--dim``), else their declared opt."""
    others = settings.get("other_dims") or {}
    given = set(settings.get("given_dims") or ())
    if not others:
        return []
    if not given:
        return ["other dims at their declared opt: " + _sizes(others)]
    rest = {n: v for n, v in others.items() if n not in given}
    line = "other dims as given: " + _sizes({n: v for n, v in others.items() if n in given})
    return [line + (f"; at their declared opt: {_sizes(rest)}" if rest else "")]


def _sizes(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{name}={size}" for name, size in sizes.items())


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "" if value is None else format(value, spec) + unit


__all__ = [
    "CSV_COLUMNS",
    "BenchReport",
    "BenchResult",
    "benchmark",
    "environment",
    "render_table",
]
