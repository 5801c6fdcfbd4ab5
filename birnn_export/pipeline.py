"""What ``birnn-export MODEL.pt`` runs, as one library call: :func:`export_model`.

load (safely) -> convert -> export (symbolic batch and time, checked, verified on ONNX Runtime,
written atomically) -> TensorRT compatibility (TensorRT's own parser and builder where one is
installed). The returned :class:`ExportReport` renders itself as the command prints it
(:meth:`ExportReport.lines`) and as its ``--json`` file (:meth:`ExportReport.to_dict`).

:func:`export_onnx` is the step in the middle for a model already in memory: the graph traced by
:func:`birnn_export.export.trace_graph`, staged beside the output, quantized if asked, verified
(:func:`birnn_export.verify`) and only then moved into place. It lives here, after verification,
so that imports run one way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from birnn_export._files import (
    check_output_path,
    file_sha256,
    onnx_file_size,
    size_text,
    staged_output,
)
from birnn_export._process import one_at_a_time
from birnn_export.errors import (
    BiRNNExportError,
    EngineUnavailableError,
    ExportError,
    ExportInterrupted,
    VerificationError,
    keywords,
    known_options,
    one_line,
)

if TYPE_CHECKING:
    from torch import nn

    from birnn_export.check import CheckReport
    from birnn_export.compare import ToleranceOverride
    from birnn_export.conversion import Replacement
    from birnn_export.export import TracedGraph
    from birnn_export.quantize import QuantizeReport
    from birnn_export.spec import GraphSpec
    from birnn_export.verification import VerifyReport


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how it checked it.

    ``verification`` is the report of the sweep run on the graph before it was moved into place
    (``None`` with ``verify=False``); ``loaded_verification`` that of the saved inputs given as
    ``load_inputs``, judged on their own (``None`` without them).
    """

    path: Path
    spec: GraphSpec
    op_counts: dict[str, int]
    file_size: int
    replaced: tuple[Replacement, ...]
    verification: VerifyReport | None
    elapsed_s: float
    #: How the inputs came about: declared, or what was inferred from the model.
    inputs: str = ""
    #: What int8 quantization changed, if it was asked for.
    quantization: QuantizeReport | None = None
    #: What the graph is beside what was asked for (:attr:`TracedGraph.notes`).
    notes: tuple[str, ...] = ()
    loaded_verification: VerifyReport | None = None

    def __repr__(self) -> str:  # the dataclass's holds every check of every case (~30 KB)
        verdict = "not verified" if self.verification is None else self.verification.summary()
        return f"ExportResult({str(self.path)!r}, {verdict})"

    @property
    def max_error(self) -> float | None:
        """The largest error of any output against the reference over the sweep."""
        if self.verification is None:
            return None
        errors = [
            o.max_abs
            for case in self.verification.cases
            for o in case.outputs
            if o.check == "values"
        ]
        return max(errors, default=None)


#: What :func:`export_model` passes :func:`export_onnx` itself: not among its export_options.
_GIVEN_BY_EXPORT_MODEL = (
    "model", "path", "reference", "inputs", "ranges", "verify", "atol", "rtol", "config",
    "source_sha256", "progress", "seq_range", "batch_range",
)  # fmt: skip


@one_at_a_time
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    verify: bool = True,
    progress: bool = False,
    quantize: str | None = None,
    atol: ToleranceOverride = None,
    rtol: ToleranceOverride = None,
    load_inputs: str | os.PathLike[str] | None = None,
    **options: Any,
) -> ExportResult:
    """Export ``model`` to ONNX with symbolic ``batch`` and ``seq`` axes.

    Args:
        model: Any module holding ``BiRNN`` layers or torch's built-in ``nn.RNN/LSTM/GRU``
            (converted first, on a copy).
        path: Output ``.onnx`` file; written atomically, nothing is left on failure.
        verify: Run :func:`birnn_export.verify`'s default sweep on ONNX Runtime CPU before the
            file is moved into place; without onnxruntime the export fails
            (:class:`~birnn_export.errors.EngineUnavailableError`) unless ``verify=False``.
        progress: Show verification's progress bar on stderr on long runs.
        quantize: ``"int8"``: write the graph dynamically quantized by ONNX Runtime
            (:func:`birnn_export.quantize.quantize_int8`; int8 LSTM and MatMul kernels, GRU and
            RNN left in float32), verified by task agreement and relative error
            (:class:`~birnn_export.compare.QuantizedCriterion`) instead of float tolerances.
            Runs on ONNX Runtime's CPU provider; needs a float32 graph.
        atol: Verify by fixed tolerances, as :func:`birnn_export.verify`'s ``atol`` (a number,
            or one per output), instead of the model's own float32 noise: for a model that
            cannot run in float64, whose fixed defaults may be too strict for it.
        rtol: Relative tolerance, like ``atol``.
        load_inputs: Saved inputs (an ``.npz`` of one batch's arrays under the inputs' names, or
            verify's ``--save-inputs`` file) to verify the graph on as well, judged on their own
            before the sweep (:func:`birnn_export.verify`'s ``load_inputs``): the graph is
            written only if both pass. An int8 graph is then judged on your data, not only on
            the sweep's random features.
        **options: How the graph is traced: the keyword arguments of
            :func:`birnn_export.export.trace_graph` (``example_inputs``, ``inputs``, ``ranges``,
            ``opset``, ``layout``, ``lengths``, ``input_size``, ``dtype``, ``input_names``,
            ``output_names``, ``reference``, ``config``, ``source_sha256``, ``batch_range``,
            ``seq_range``); its docstring says what each means.

    Raises:
        ExportError: the model cannot be exported or the graph failed a structural check.
        VerificationError: ONNX Runtime's outputs differ from eager at a shape unlike the example.
        EngineUnavailableError: ``verify`` was asked for and ONNX Runtime does not import.

    Example:
        >>> layer = nn.LSTM(10, 20, batch_first=True, bidirectional=True)
        >>> result = export_onnx(layer, "m.onnx")  # doctest: +SKIP
        >>> result.spec.inputs[0].dims  # doctest: +SKIP
        ('batch', 'seq', 10)
    """
    from birnn_export.conversion import require_module
    from birnn_export.export import trace_graph
    from birnn_export.spec import GraphSpec, load_onnx, onnx_bytes, op_counts

    start = time.perf_counter()
    require_module(model)
    known_options(
        "export_onnx",
        options,
        keywords(export_onnx, leaving=("model", "path"))
        + keywords(trace_graph, leaving=("model",)),
    )
    path = Path(path)
    if quantize not in (None, "int8"):
        raise ExportError(f"quantize: expected int8 or nothing, got {quantize!r}")
    dtype = options.get("dtype", "float32")
    if quantize and dtype != "float32":
        raise ExportError(
            f"quantize: int8 quantizes a float32 graph; drop --dtype {dtype} or --quantize "
            f"(Python: dtype={dtype!r} or quantize='int8')"
        )
    if (atol is not None or rtol is not None) and (not verify or quantize):
        why = "--no-verify (verify=False) skips verification" if not verify else _INT8_JUDGED
        raise ExportError(f"atol/rtol: tolerances judge the verification, but {why}; drop them")
    if load_inputs is not None and not verify:
        raise ExportError(
            "load_inputs: the saved inputs are verified on, but --no-verify (verify=False) skips "
            "verification; drop one of them"
        )
    if load_inputs is not None and not Path(load_inputs).is_file():  # before the export runs
        raise ExportError(f"load_inputs: {load_inputs}: no such file")
    check_output_path("path", path, suffix=".onnx")  # not the checkpoint beside it (users59 F5)
    if verify:
        _runtime_takes(options.get("opset"))
    graph = trace_graph(model, **options)
    if graph.large and quantize:
        raise ExportError(
            f"quantize: the graph is over 2 GB ({onnx_bytes(graph.proto) / 2**30:.1f} GiB); int8 "
            "quantization of graphs with external weights is not supported"
        )
    proto, spec = graph.proto, graph.spec
    report = quantized = loaded = None
    with staged_output(path) as staging, _told_with_the_exports_notes(graph):
        graph.save(staging)
        if quantize:
            quantized = _quantize_staged(staging)
            proto = load_onnx(staging)
            spec = GraphSpec.from_onnx(proto)
        if verify:
            check = functools.partial(
                _verify_staged,
                staging,
                path,
                graph.model,
                graph.reference,
                progress,
                atol=atol,
                rtol=rtol,
            )
            # the user's own batches first: a file that does not fit the graph is said at once
            loaded = None if load_inputs is None else check(load_inputs=load_inputs)
            try:
                report = check(judged_on_inputs=load_inputs is not None)
            except VerificationError as exc:  # the saved inputs' verdict kept (users60 F3)
                if loaded is None:
                    raise
                said = str(exc).removesuffix(_NOTHING_WRITTEN)
                raise VerificationError(
                    f"{said}; on the saved inputs {load_inputs}: {loaded.summary()}"
                    f"{_NOTHING_WRITTEN}",
                    report=exc.report,
                    loaded_report=loaded,
                ) from None
    return ExportResult(
        path=path,
        spec=spec,
        op_counts=op_counts(proto),
        file_size=onnx_file_size(path),
        replaced=graph.replaced,
        verification=report,
        elapsed_s=time.perf_counter() - start,
        inputs=graph.inputs,
        quantization=quantized,
        notes=graph.notes,
        loaded_verification=loaded,
    )


def _runtime_takes(opset: Any) -> None:
    """The installed ONNX Runtime, which verifies the export, loads graphs of ``opset``; else
    the export stops before it runs (review44 F3: it exported, then every case failed on a
    message cut before its reason, exit 1).

    Raises:
        EngineUnavailableError: naming the runtime, its reason and the ways out.
    """
    from birnn_export.export import DEFAULT_OPSET, SUPPORTED_OPSETS

    opset = DEFAULT_OPSET if opset is None else opset
    if opset not in SUPPORTED_OPSETS:
        return  # the export's own check says so
    try:
        from birnn_export.runners import ort_refuses_opset

        why = ort_refuses_opset(opset)
    except ImportError:
        return  # said where the verification starts
    if why:
        raise EngineUnavailableError(
            f"--opset {opset}: the export is verified on ONNX Runtime, and {why}: export with a "
            "lower --opset (18, the default, loads on onnxruntime 1.16 and later; 1.17 for float16 "
            "graphs with a log-softmax), upgrade "
            "onnxruntime, or pass --no-verify (verify=False) to write it unverified; nothing "
            "was written"
        )


@contextlib.contextmanager
def _told_with_the_exports_notes(graph: TracedGraph) -> Iterator[None]:
    """A failed verification's report with the export's notes first (a success prints them,
    a failure did not: the one that explained it, an assumption of torch.export's, went
    unsaid; users64 F1), and its message with why, where every failing case ran at a size
    torch.export assumed away (:func:`~birnn_export._case.failing_where_assumed`)."""
    from birnn_export._case import failing_where_assumed

    try:
        yield
    except VerificationError as exc:
        if exc.report is None:
            raise
        own = tuple(n for n in exc.report.notes if n not in graph.notes)  # the graph's own
        report = dataclasses.replace(exc.report, notes=(*graph.notes, *own))
        loaded = report if exc.loaded_report is exc.report else exc.loaded_report
        said = str(exc).removesuffix(_NOTHING_WRITTEN)
        why = None  # said already where the graph records its assumptions (every one but
        if not exc.report.assumed_away:  # those with over MAX_RECORDED runs of sizes)
            why = failing_where_assumed(exc.report.cases, graph.spec, graph.assumed)
        said += f" | {why}" if why else ""
        raise VerificationError(
            said + _NOTHING_WRITTEN, report=report, loaded_report=loaded
        ) from None


_INT8_JUDGED = "an int8 graph is judged by task agreement and relative error"
_NOTHING_WRITTEN = "; nothing was written"


def _quantize_staged(staging: Path) -> QuantizeReport:
    """Replace the staged float32 graph with its int8 form; the float graph is not kept."""
    from birnn_export.quantize import quantize_int8

    float_graph = staging.with_name("float32-" + staging.name)
    os.replace(staging, float_graph)
    try:
        return quantize_int8(float_graph, staging)
    except BiRNNExportError as exc:
        raise ExportError(str(exc)) from None


def default_output(model_path: Path) -> Path:
    """Where the export of ``model_path`` goes by default: beside it, as ``MODEL.onnx`` (a
    saved folder ``DIR`` as ``DIR.onnx``, its whole name kept: ``tagger.v1.onnx``; a
    ``MODEL.pth.tar`` checkpoint as ``MODEL.onnx``)."""
    name = model_path.name
    if model_path.is_dir():
        output = model_path.parent / f"{name}.onnx"
    elif name.endswith((".pth.tar", ".pt.tar")) and not name.startswith("."):
        output = model_path.parent / f"{name.rsplit('.', 2)[0]}.onnx"
    else:
        output = model_path.with_suffix(".onnx")
    if output.is_symlink():  # a folder of downloaded files may hold one, leading anywhere
        raise ExportError(
            f"{output}: is a link (to {os.readlink(output)}), and the default output is not "
            "written through one; give it as the output (-o) to write there, or remove it"
        )
    return output


def _verify_staged(
    staging: Path,
    path: Path,
    model: nn.Module,
    reference: nn.Module,
    progress: bool,
    *,
    atol: ToleranceOverride,
    rtol: ToleranceOverride,
    load_inputs: str | os.PathLike[str] | None = None,
    judged_on_inputs: bool = False,
) -> VerifyReport | None:
    """:func:`birnn_export.verify`'s default sweep on the staged graph (or the saved
    ``load_inputs``), before it is moved into place; the report names ``path``. A sweep whose
    graph was ``judged_on_inputs`` too drops the note that an int8 graph was judged on random
    features alone.

    Raises:
        VerificationError: the graph failed (carrying the report); nothing is written.
        EngineUnavailableError: ONNX Runtime does not import; nothing is written.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:  # a verification asked for that cannot run fails (users53 F1)
        raise EngineUnavailableError(
            f"the export is verified on ONNX Runtime, which did not import ({one_line(exc)}): "
            "pip install onnxruntime (or onnxruntime-gpu, not both), or pass --no-verify "
            "(verify=False) to write the graph unverified; nothing was written"
        ) from None
    from birnn_export.quantize import SWEEP_INPUTS_NOTE
    from birnn_export.verification import verify

    report = verify(
        staging,
        model,
        reference=reference,
        progress=progress,
        atol=atol,
        rtol=rtol,
        load_inputs=load_inputs,
    )
    # the file it will be, not the staged copy (users42: a deleted staging path in the JSON)
    environment = {**report.environment, "onnx_file": str(path)}
    notes = tuple(n for n in report.notes if not (judged_on_inputs and n == SWEEP_INPUTS_NOTE))
    report = dataclasses.replace(report, onnx_path=str(path), environment=environment, notes=notes)
    try:
        report.raise_for_failure()
    except VerificationError as exc:  # verify's own message, as its JSON has it
        on = "" if load_inputs is None else f"on the saved inputs {load_inputs}: "
        raise VerificationError(
            f"{on}{exc}{_NOTHING_WRITTEN}",
            report=report,
            loaded_report=report if load_inputs is not None else None,
        ) from None
    return report


def _compared_with(report: VerifyReport, model_path: Path, sha256: str | None) -> VerifyReport:
    """``report`` naming the model file it compared against, as verify's does (users53 F2)."""
    return dataclasses.replace(report, model_file=str(model_path), model_sha256=sha256)


@dataclass(frozen=True)
class ExportReport:
    """The outcome of :func:`export_model`: what was loaded, the export (with its
    verification), the graph as written, and TensorRT's verdict (``None`` for int8 graphs,
    which hold ONNX Runtime's own quantized ops)."""

    model_path: str
    source: str
    inputs: str
    result: ExportResult
    onnx: dict[str, Any]
    compatibility: CheckReport | None
    seconds: float
    #: The model file's sha256, as the graph's metadata records it.
    model_sha256: str | None = None

    def __repr__(self) -> str:  # short in a notebook; lines() is the readable whole
        return f"ExportReport({self.model_path!r} -> {self.result!r})"

    def to_dict(self) -> dict[str, Any]:
        """The report as the ``--json`` file holds it."""
        result, compat = self.result, self.compatibility
        report = result.verification
        return {
            "model": self.model_path,
            "model_sha256": self.model_sha256,
            # as a failure's (failure_summary) and a refusal's: one verdict to read (users47 F3)
            "written": str(result.path),
            "error": None,
            "exit_code": 0,
            "source": self.source,
            "converted": [str(r) for r in result.replaced],
            "notes": list(result.notes),
            "inputs": self.inputs,
            "onnx": self.onnx,
            "max_abs_error": result.max_error,
            "verification": None if report is None else json.loads(report.to_json()),
            "verification_on_loaded_inputs": None
            if result.loaded_verification is None
            else json.loads(result.loaded_verification.to_json()),
            "quantization": None if result.quantization is None else result.quantization.summary(),
            # check --json's object, its verdict in "ok" (users47 F4)
            "tensorrt_check": None if compat is None else compat.to_dict(),
            "seconds": round(self.seconds, 3),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text (the ``--json`` file), as every report's ``to_json``
        (users59 F6)."""
        from birnn_export._report import json_safe

        return json.dumps(json_safe(self.to_dict()), indent=2, default=str)

    def lines(self) -> list[str]:
        """The summary the command prints."""
        onnx_info, result = self.onnx, self.result
        out = [f"Loaded   {self.model_path}: {self.source}"]
        out += [f"Converted {r}" for r in result.replaced]
        from birnn_export.describe import dims_text, opset_text

        opsets = opset_text(onnx_info["opsets"])
        size = size_text(onnx_info["file_size"])
        out.append(f"Wrote    {onnx_info['path']} ({size}, opset {opsets})")
        width = max(10, *(len(v["name"]) for v in (*onnx_info["inputs"], *onnx_info["outputs"])))
        for kind in ("inputs", "outputs"):
            for value in onnx_info[kind]:
                dims = dims_text(value["dims"])
                out.append(f"  {kind[:-1]:<6} {value['name']:<{width}} {value['dtype']:<8} {dims}")
            if kind == "inputs" and self.inputs:
                out.append(f"         ({self.inputs})")
        ops = ", ".join(f"{op} x{n}" for op, n in onnx_info["op_counts"].items())
        out.append(f"  ops    {ops}")
        out += [f"  note: {note}" for note in result.notes]
        if result.verification is None:
            out.append("Not verified (--no-verify)")
        if result.quantization is not None:
            out.append(f"Quantized {result.quantization.summary()}")
        if result.verification is not None:
            from birnn_export._case import (
                DECODES_CHANGED,
                DEPENDS_ON_THE_BATCH,
                DEPENDS_ON_THE_PADDING,
            )
            from birnn_export.quantize import SWEEP_INPUTS_NOTE
            from birnn_export.verification import FLOAT64_FAILS

            out.append(f"Verified {result.verification.summary()}")
            out += [  # what the verdict was judged against, where not the model in float64
                f"  note: {note}"
                for note in result.verification.notes
                if note.startswith(
                    (FLOAT64_FAILS, DEPENDS_ON_THE_BATCH, DEPENDS_ON_THE_PADDING, DECODES_CHANGED)
                )
                or note == SWEEP_INPUTS_NOTE
            ]
            loaded = result.loaded_verification
            if loaded is not None:
                out.append(f"Verified on {loaded.loaded_inputs}: {loaded.summary()}")
                out += [  # how the file's arrays were fed (users60 F5)
                    f"  note: {note}"
                    for note in loaded.notes
                    if note.startswith("saved input ") or "past the graph's declared" in note
                ]
            skipped = [n for n in result.verification.notes if n.startswith("skipped ")]
            out += [f"  note: {note}" for note in skipped]
            if skipped:
                out.append(
                    f"  ('birnn-export verify {result.path} --model ... --memory-budget GIB' "
                    "runs them)"
                )
        if self.compatibility is None:
            out.append("Compat   int8 graph: ONNX Runtime CPU only (engine ort-cpu)")
        else:
            out.append(f"Compat   {self.compatibility.summary()}")
            out += [f"  {line}" for line in self.compatibility.lines()]
        out.append(self.verdict_line())
        return out

    def verdict_line(self) -> str:
        """The last line: the verdict and the file first, as a log is read and grepped
        (Polygraphy's ``PASSED``; users66 F3): ``PASS``, ``WARN`` where TensorRT refuses the
        graph (review48 F4), ``Done`` where it was not verified."""
        verified = self.result.verification
        said = (
            ["not verified"] if verified is None else [f"verified on {', '.join(verified.engines)}"]
        )
        compat = self.compatibility
        if compat is None:
            said.append("ONNX Runtime CPU only (int8)")
        else:
            said.append(f"{'compatible' if compat.ok else 'NOT compatible'} with {compat.target}")
        refused = compat is not None and not compat.ok
        verdict = "Done" if verified is None else "WARN" if refused else "PASS"
        return f"{verdict:<8} {self.onnx['path']}: {', '.join(said)}; {self.seconds:.1f} s"


def _identity(path: Path) -> tuple[int, int, int]:
    """The file at ``path`` now: device, inode, modification time."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns


def failure_summary(model_path: str | os.PathLike[str], error: BiRNNExportError) -> dict[str, Any]:
    """What ``--json`` holds where :func:`export_model` failed: the model, no graph written, the
    error and its exit code, and a failed verification's whole report."""
    summary: dict[str, Any] = {
        "model": str(model_path),
        # the sha256 of the file read, as a success's summary has it (review32: a failure's had
        # none; review33: a save_pretrained folder's is its weights file's)
        "model_sha256": error.model_sha256
        or (file_sha256(model_path) if Path(model_path).is_file() else None),
        "written": None,
        "error": str(error),
        "exit_code": error.exit_code,
    }
    if isinstance(error, VerificationError):  # the keys a success's summary has (review38 R2)
        loaded = error.loaded_report
        if error.report is not None and error.report is not loaded:
            summary["verification"] = json.loads(error.report.to_json())
        if loaded is not None:
            summary["verification_on_loaded_inputs"] = json.loads(loaded.to_json())
    return summary


def _stages(progress: bool, count: int) -> Callable[[str], None]:
    """Say each step of the main command as it begins, on stderr where it is a terminal (with
    ``progress``): an export printed nothing until it finished, and one interrupted showed only
    "Aborted!" (users24). Off a terminal nothing is said: the summary at the end is the log."""
    if not progress or not sys.stderr.isatty():
        return lambda what: None
    begun = iter(range(1, count + 1))

    def stage(what: str) -> None:
        print(f"[{next(begun)}/{count}] {what} ...", file=sys.stderr, flush=True)

    return stage


@one_at_a_time
def export_model(
    model_path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    inputs: Sequence[str] = (),
    ranges: Mapping[str, Sequence[int]] | None = None,
    batch_range: Sequence[int] | None = None,
    seq_range: Sequence[int] | None = None,
    verify: bool = True,
    progress: bool = False,
    atol: ToleranceOverride = None,
    rtol: ToleranceOverride = None,
    load_options: Mapping[str, Any] | None = None,
    **export_options: Any,
) -> ExportReport:
    """Load ``model_path``, export it to ``output`` (default: beside it, ``.onnx``), verify it
    and ask TensorRT about it: what ``birnn-export MODEL.pt`` does.

    Args:
        model_path: A ``.pt`` file (:func:`birnn_export.load_model` reads it safely).
        output: The ``.onnx`` file; written atomically, nothing is left when a step fails.
        inputs: Declared graph inputs (``"NAME:DTYPE[DIMS]"``); default: what the checkpoint
            declares, else inferred from the model.
        ranges: (min, opt, max) per named dim (``{"batch": (1, 8, 32)}``), over the
            checkpoint's own where ``inputs`` are not given.
        batch_range: (min, opt, max) batch sizes the graph will serve: ``ranges["batch"]``, over
            the checkpoint's.
        seq_range: (min, opt, max) of the time dim.
        verify: Verify on ONNX Runtime before the file is written.
        progress: Say each step on stderr and show verification's progress bar.
        atol: Verify by fixed tolerances (:func:`export_onnx`'s ``atol``).
        rtol: Relative tolerance, like ``atol``.
        load_options: Keyword arguments of :func:`birnn_export.load_model` (``model_class``,
            ``model_kwargs``, ``state_key``, ``nonlinearity``, ``time_major``,
            ``trust_pickle``).
        **export_options: Keyword arguments of :func:`birnn_export.export_onnx` (``opset``,
            ``layout``, ``dtype``, ``lengths``, ``input_size``, ``quantize``, ``load_inputs``).

    Raises:
        BiRNNExportError: bad input (exit code 2), or a failed verification
            (:class:`~birnn_export.errors.VerificationError`, exit code 1; its ``report``
            holds the cases). A TensorRT rejection is not raised: it is in the report's
            ``compatibility`` (``.ok`` False).

    Example:
        >>> report = export_model("sample_models/token_tagger.pt", "tagger.onnx")  # doctest: +SKIP
        >>> print("\\n".join(report.lines()))  # doctest: +SKIP
    """
    from birnn_export.check import check_compatibility
    from birnn_export.checkpoint import load_if_path
    from birnn_export.describe import describe_onnx

    start = time.perf_counter()
    from birnn_export.export import trace_graph

    passed_on = keywords(export_onnx) + keywords(trace_graph)
    known_options(
        "export_model",
        export_options,
        list(
            dict.fromkeys(
                keywords(export_model, leaving=("model_path", "output"))
                + [n for n in passed_on if n not in _GIVEN_BY_EXPORT_MODEL]
            )
        ),
    )
    model_path = Path(model_path)
    output = Path(output) if output is not None else default_output(model_path)
    quantized = export_options.get("quantize")
    stage = _stages(progress, 2 if quantized else 3)
    stage(f"loading {model_path}")
    loaded = load_if_path(model_path, load_options)
    # What the checkpoint declares (its inputs and ranges), unless the caller says.
    declared = list(inputs) or list(loaded.inputs or ())
    named = dict(ranges or {})
    for dim, given in (("batch", batch_range), ("seq", seq_range)):
        if given is not None and dim in named:
            raise ExportError(
                f"ranges: --range {dim}=... and --{dim}-range both give the range of "
                f"{dim!r}; give one"
            )
    if batch_range is not None:
        named["batch"] = tuple(batch_range)
    if not inputs:
        named = {**(loaded.ranges or {}), **named}
    stage("exporting with torch.export" + (", then verifying on ONNX Runtime" if verify else ""))
    try:
        result = export_onnx(
            loaded.model,
            output,
            reference=loaded.original,
            inputs=declared or None,
            ranges=named,
            verify=verify,
            atol=atol,
            rtol=rtol,
            config=loaded.config,
            source_sha256=loaded.sha256,
            progress=progress,
            **({"seq_range": seq_range} if seq_range is not None else {}),
            **export_options,
        )
    except BiRNNExportError as exc:  # the file read, for the --json (a folder's weights file)
        exc.model_sha256 = loaded.sha256
        if isinstance(exc, VerificationError):
            same = exc.loaded_report is exc.report  # the saved inputs failed: one report
            for name in ("report", "loaded_report"):
                failed = getattr(exc, name)
                if failed is not None:
                    setattr(exc, name, _compared_with(failed, loaded.path, loaded.sha256))
            if same:
                exc.loaded_report = exc.report
        raise
    written = _identity(result.path)  # what the checks below read is this graph
    if result.verification is not None:
        checked = _compared_with(result.verification, loaded.path, loaded.sha256)
        result = dataclasses.replace(result, verification=checked)
    if result.loaded_verification is not None:
        checked = _compared_with(result.loaded_verification, loaded.path, loaded.sha256)
        result = dataclasses.replace(result, loaded_verification=checked)
    if not quantized:
        stage("checking TensorRT compatibility (its parser and builder)")
    try:
        compatibility = None if quantized else check_compatibility(result.path, target="tensorrt")
        described = describe_onnx(result.path)
    except KeyboardInterrupt:  # the graph is in place, whole and verified: say so (users42)
        raise ExportInterrupted(
            f"{result.path} was written{' and verified' if verify else ''} before the "
            f"interrupt; its TensorRT check did not finish: birnn-export check {result.path} "
            "--target tensorrt",
            written=str(result.path),
        ) from None
    if _identity(result.path) != written:  # another export wrote the file meanwhile (users34)
        raise ExportError(
            f"{result.path}: another process replaced it while this export checked it; the "
            "graph there is not this export's: export again, or to another -o"
        )
    if inputs:
        how = "declared with --input"
    elif declared:
        how = "declared by the checkpoint"
    else:
        how = f"{result.inputs}; --input declares them"
    if (inputs or declared) and result.spec.container is not None:
        from birnn_export._container import Container

        how += f"; {Container.from_dict(result.spec.container).describe()}"
    return ExportReport(
        model_path=str(model_path),
        source=loaded.source,
        inputs=how,
        result=result,
        onnx=described,
        compatibility=compatibility,
        seconds=time.perf_counter() - start,
        model_sha256=loaded.sha256,
    )
