"""Reports: what a verification found (:class:`CaseResult`, :class:`VerifyReport`) and its
terminal rendering, and helpers the verify and bench reports share (JSON safety, the machine
description).

Private: the public entry points are :mod:`birnn_export.verification` and
:mod:`birnn_export.bench`. Heavy libraries (torch, rich) are imported inside functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from birnn_export._files import file_sha256
from birnn_export.errors import VerificationError, outcome

if TYPE_CHECKING:
    from birnn_export.compare import Check

logger = logging.getLogger(__name__)

#: Report key -> distributions that provide it (the first one installed wins).
_PACKAGES = (
    ("torch", ("torch",)),
    ("onnx", ("onnx",)),
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
    ("numpy", ("numpy",)),
    ("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13")),
    ("tensorrt_rtx", ("tensorrt-rtx", "tensorrt_rtx")),
)


# -- verification results ----------------------------------------------------------------


#: ``lengths_mode`` of the result that judges every case together (int8 graphs).
WHOLE_SWEEP = "whole sweep"

#: How a diagnosis that places the difference after the recurrent nodes says so, and how it
#: names the reversal of a backward node's output among the suspects there
#: (:func:`birnn_export._diagnose.diagnose_layers`).
AFTER_NODES = "the difference is after the recurrent nodes"
AFTER_REVERSAL = "the graph's reversal of a backward node's output back into time order"


#: Where only the cases with noise past the lengths failed.
NOISE_ONLY = (
    "only the case(s) with noise past the lengths failed: the graph reads the inputs past each "
    "row's length, where the model does not (a mask or a masked_fill lost from the graph?)"
)


def _numbers_differ(case: CaseResult) -> bool:
    """Whether ``case`` has noise past the lengths and failed on numbers there, which only a
    graph reading the noise does: not an engine crash at its shape, nor decoded tags alone (its
    valid steps are new rows too, and another row of near-equal paths decodes otherwise where a
    CRF's score moved a little: users38)."""
    return (
        case.noise
        and case.error is None
        and any(not o.passed and o.role != "tags" for o in case.outputs)
    )


@dataclass(frozen=True)
class CaseResult:
    """One engine at one input shape: the outputs' checks, or the error the engine raised."""

    engine: str
    batch: int
    seq: int
    lengths_mode: str
    scale: float
    seed: int
    lengths: tuple[int, ...] | None
    outputs: tuple[Check, ...]
    error: str | None = None
    diagnosis: str | None = None
    #: The other named dims' sizes where the case did not take their opt (``chars=1``).
    others: str = ""
    #: Noise instead of padding past the lengths (:attr:`~birnn_export._sweep.Case.noise`).
    noise: bool = False

    @property
    def passed(self) -> bool:
        return self.error is None and all(o.passed for o in self.outputs)

    @property
    def label(self) -> str:
        if self.lengths_mode == WHOLE_SWEEP:
            return f"{self.engine} {WHOLE_SWEEP}"
        scale = f" x{self.scale:g}" if self.scale != 1.0 else ""
        others = f" {self.others}" if self.others else ""
        noise = ", noise past the lengths" if self.noise else ""
        return (
            f"{self.engine} B={self.batch} T={self.seq}{others} {self.lengths_mode}{scale}{noise}"
        )


@dataclass(frozen=True)
class VerifyReport:
    """Everything :func:`verify` compared; ``passed`` only if every case and check passed.

    ``criterion`` says how outputs were judged; ``reference_dtype`` is the reference's
    precision and ``eager_dtype`` that of the eager run whose error is the noise floor (``None``
    under fixed tolerances).
    """

    onnx_path: str
    reference: str
    reference_dtype: str
    engines: tuple[str, ...]
    providers: dict[str, tuple[str, ...]]
    cases: tuple[CaseResult, ...]
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    environment: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    saved_inputs: str | None = None
    criterion: str = ""
    eager_dtype: str | None = None
    saved_outputs: str | None = None
    #: The model file compared against and its sha256 (``None`` for a module given, or saved
    #: outputs); the saved inputs run instead of a sweep, and the saved outputs judged by.
    model_file: str | None = None
    model_sha256: str | None = None
    loaded_inputs: str | None = None
    loaded_outputs: str | None = None
    #: Why the sweep failed, where every failing case ran at a size torch.export assumed away
    #: (:func:`~birnn_export._case.failing_where_assumed`, from the graph's records).
    assumed_away: str | None = None

    def __repr__(self) -> str:  # the dataclass's holds every check of every case
        return f"VerifyReport({self.onnx_path!r}, {self.summary()})"

    @property
    def passed(self) -> bool:
        return not self.problems and all(c.passed for c in self.cases)

    @property
    def failures(self) -> tuple[CaseResult, ...]:
        return tuple(c for c in self.cases if not c.passed)

    def _sweep_margin(self) -> str:
        """An int8 graph's figures over the whole sweep, as its verdict quotes them."""
        from birnn_export.compare import MIN_DECODED_SYMBOLS

        sweeps = [o for c in self.cases for o in c.outputs if o.check == "sweep"]
        values = [o for o in sweeps if o.role != "tags"]
        figures = []
        if values:
            figures.append(f"relative L2 error at most {max(o.rel_l2 or 0.0 for o in values):.3g}")
        top1 = [  # what judged each: top-1, or a CTC output's decodes (top-1 too on few symbols)
            o
            for o in values
            if o.top1 is not None and (o.blank is None or o.decoded_symbols < MIN_DECODED_SYMBOLS)
        ]
        if top1:
            worst = min(top1, key=lambda o: o.top1 or 0.0)
            figures.append(
                f"top-1 agreement at least {100 * (worst.top1 or 0.0):.2f}% ({worst.name!r}, "
                f"{worst.top1_decisive} clear positions)"
            )
        figures += [f"{o.name!r}: {o.decodes_agreement()}" for o in values if o.blank is not None]
        figures += [f"{o.name!r}: {o.tags_agreement()}" for o in sweeps if o.role == "tags"]
        return f": {', '.join(figures)} over the sweep" if figures else ""

    def _worst_ratio_at(self) -> tuple[float, str] | None:
        """The largest finite engine-to-eager error ratio of any values or layer check (where
        eager PyTorch is exact the ulp floor judges instead), and where: the check and its case,
        in words."""
        from birnn_export.compare import PROBED

        ratios = [
            (o.ratio, f"{PROBED.get(o.check, 'output')} {o.name!r}, {c.label}")
            for c in self.cases
            for o in c.outputs
            if o.ratio is not None and math.isfinite(o.ratio) and o.check in ("values", *PROBED)
        ]
        return max(ratios, key=lambda pair: pair[0], default=None)

    def worst_use(self) -> float | None:
        """The largest error over its threshold of any check (below 1 passes)."""
        uses = [
            o.max_abs / o.threshold
            for c in self.cases
            for o in c.outputs
            if o.threshold and math.isfinite(o.max_abs)
        ]
        return max(uses, default=None)

    def summary(self) -> str:
        """One line: PASS/FAIL, counts, and the worst failing check. An int8 sweep's judgement
        over all its cases (:data:`WHOLE_SWEEP`) is not counted as a case (users60 F7)."""
        failed = self.failures
        total = sum(c.lengths_mode != WHOLE_SWEEP for c in self.cases)
        if self.passed:
            worst, use = self._worst_ratio_at(), self.worst_use()
            margin = self._sweep_margin() or " within tolerance"
            if worst is not None:
                from birnn_export.compare import FLOOR_ULPS, NOISE_FACTOR

                margin = (
                    f": error vs float64 at most {worst[0]:.2g}x eager {self.eager_dtype}'s own "
                    f"({worst[1]})"
                )
                if worst[0] > NOISE_FACTOR:  # passed: by the floor (users61 F4: "26x ... PASS")
                    margin += (
                        f" (over {NOISE_FACTOR:g}x within the limit's {FLOOR_ULPS:g}-ulp floor: "
                        "eager's own error there is tiny)"
                    )
            if use is not None:
                margin += f", at most {use:.2g} of the limit"
            engines = ", ".join(self.engines)
            return f"PASS: {total} case(s) on {engines} match {self.reference}{margin}"
        parts = []
        if failed:
            alone = sum(c.lengths_mode != WHOLE_SWEEP for c in failed)
            # users63 F1: "1 of 12 case(s) failed", then why the sweep failed judged together
            together = ", and the sweep fails judged together" * (alone < len(failed))
            sweeps = {c.engine for c in failed if c.lengths_mode == WHOLE_SWEEP}
            judged = sum(  # review43 F11: that engine's cases, not ort-cpu's beside it
                c.lengths_mode != WHOLE_SWEEP and c.engine in sweeps for c in self.cases
            )
            parts.append(
                f"{alone} of {total} case(s) failed{together}"
                if alone
                else f"{judged} case(s) pass one by one and fail judged together"
            )
            first = next((c for c in failed if not _cause_untold(c)), failed[0])
            if first.error is not None:
                parts.append(f"first: {first.label}: engine error: {first.error}")
            else:
                wrong = [o for o in first.outputs if not o.passed]
                values = [o for o in wrong if o.check == "values"]  # before padding (users45)
                bad = max(
                    values or wrong,
                    key=lambda o: o.max_abs if math.isfinite(o.max_abs) else math.inf,
                )
                parts.append(f"first: {first.label}: {bad.describe()}")
            if all(_numbers_differ(case) for case in failed):
                parts.append(NOISE_ONLY)
        if self.problems:
            parts.append(f"graph problems: {'; '.join(self.problems)}")
        return "FAIL: " + "; ".join(parts)

    def raise_for_failure(self) -> None:
        """Raise :class:`~birnn_export.errors.VerificationError` (exit code 1) unless passed."""
        if self.passed:
            return
        message = self.summary()
        diagnosis = self.diagnosis()
        other_file = next((n for n in self.notes if n.startswith(OTHER_FILE_NOTE)), None)
        if other_file:  # the likeliest cause of all: said before any diagnosis (users47 F8)
            message += f" | {other_file}"
        if diagnosis:
            message += " | " + " ".join(diagnosis.splitlines()[0].split())
        if self.assumed_away:
            message += f" | {self.assumed_away}"
        raise VerificationError(message, report=self)

    def diagnosed_failures(self) -> tuple[CaseResult, ...]:
        """Failing cases that carry a diagnosis, most telling first: one where an output or a
        layer came out another shape than the model's (the graph computes a size another way:
        the cause of other cases' wrong values too), then ragged lengths with a full-length row
        and a batch above one, since they separate reversal from weights. Where that one
        suspects the reversal after a backward node among what comes after the recurrent nodes,
        a case of one step that fails there too comes first: no reversal changes one step."""

        def rank(case: CaseResult) -> tuple[bool, bool, bool, bool]:
            full = case.lengths is not None and case.seq in case.lengths
            shaped = any(o.other_shape for o in case.outputs)
            return (not shaped, case.lengths_mode != "ragged", not full, case.batch == 1)

        ranked = sorted((c for c in self.failures if c.diagnosis), key=rank)
        if ranked and AFTER_REVERSAL in (ranked[0].diagnosis or ""):
            one_step = [c for c in ranked if c.seq == 1 and AFTER_NODES in (c.diagnosis or "")]
            ranked = one_step[:1] + [c for c in ranked if c not in one_step[:1]]
        return tuple(ranked)

    def diagnosis(self) -> str | None:
        """The diagnosis of the most telling failing case (see :meth:`diagnosed_failures`)."""
        ranked = self.diagnosed_failures()
        return ranked[0].diagnosis if ranked else None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["passed"] = self.passed
        data.update(outcome(self.raise_for_failure))  # as every report's JSON (users53 F2)
        for case, result in zip(data["cases"], self.cases, strict=True):
            case["passed"] = result.passed
            if result.lengths_mode == WHOLE_SWEEP:  # of every case's shape, not one's
                case["batch"] = case["seq"] = None
            for out, check in zip(case["outputs"], result.outputs, strict=True):
                out["ratio"] = check.ratio
        return json_safe(data)

    def to_json(self, indent: int | None = 2) -> str:
        """The report as strict JSON (non-finite numbers become ``null``)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


# -- JSON ------------------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """``value`` with NaN and +-inf replaced by ``None`` (JSON ``null``), recursively through
    dicts, lists and tuples (tuples become lists), so ``json.dumps(..., allow_nan=False)``
    accepts it.

    Example:
        >>> json_safe({"a": float("nan"), "b": (1.0, float("inf"))})
        {'a': None, 'b': [1.0, None]}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# -- the machine -----------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo``, else what :mod:`platform` knows."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def environment(onnx_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The machine and library versions a report was made with.

    Keys: ``birnn_export`` (the version that made the report), ``cpu``, ``cores``, ``gpu``
    (``None`` without CUDA), ``platform``, ``python`` and the versions of ``torch``, ``onnx``,
    ``onnxruntime`` (either build), ``numpy``, ``tensorrt`` and ``tensorrt_rtx`` (``None``
    when not installed), ``nvidia_tf32_override`` (the environment variable that forbids TF32
    on GPUs; ``None`` when unset); with ``onnx_path`` also ``onnx_file`` and ``onnx_sha256``.
    """
    from importlib import metadata

    from birnn_export._version import __version__

    env: dict[str, Any] = {
        "birnn_export": __version__,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "gpu": None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nvidia_tf32_override": os.environ.get("NVIDIA_TF32_OVERRIDE"),
    }
    try:
        import torch

        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA install must not stop a CPU report
        logger.debug("torch.cuda query failed", exc_info=True)
    for key, dists in _PACKAGES:
        env[key] = None
        for dist in dists:
            try:
                env[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    if onnx_path is not None:
        env["onnx_file"] = str(onnx_path)
        env["onnx_sha256"] = file_sha256(onnx_path)
    return env


# -- terminal rendering of a verification report ---------------------------------------------


def wide_console() -> Any:
    """A rich console; piped output (logs, CI) gets 150 columns instead of rich's 80, so
    tables keep their numbers whole, unless ``COLUMNS`` says otherwise (users53 F5)."""
    import sys

    from rich.console import Console

    columns = os.environ.get("COLUMNS", "")
    chosen = sys.stdout.isatty() or (columns.isdigit() and int(columns) > 0)  # 0: review33
    return Console(width=None if chosen else 150)


def print_table(console: Any, table: Any) -> None:
    """Print ``table``; where ``console`` is too narrow for it without cutting a word (rich
    wraps cells between words, and cuts what still does not fit: a number cut to ``2.93…``
    reads as another number; users66 F1), its rows instead, each a line of ``column=value``
    pairs the console wraps between pairs, a value with a space or ``=`` in quotes."""
    import io

    from rich.console import Console
    from rich.text import Text

    narrowest = Console(file=io.StringIO(), width=100_000).measure(table).minimum
    if narrowest <= console.width:
        console.print(table)
        return
    if table.title:
        console.print(table.title)
    headers = [str(column.header).replace(" ", "_") for column in table.columns]
    for row in zip(*(column.cells for column in table.columns), strict=True):
        cells = [console.render_str(c) if isinstance(c, str) else c for c in row]  # as a table
        pairs = [
            Text.assemble(f"{header}=" if header else "", *_quoted(cell))
            for header, cell in zip(headers, cells, strict=True)
            if cell.plain
        ]
        console.print(Text("  ").join(pairs))
    if table.caption:
        console.print(table.caption)


def _quoted(cell: Any) -> tuple[Any, ...]:
    """``cell`` (a ``rich.text.Text``) in quotes where it holds a space or ``=``, so that its
    words do not read as more pairs (review48 F3)."""
    return ('"', cell, '"') if " " in cell.plain or "=" in cell.plain else (cell,)


def _cause_untold(case: CaseResult) -> bool:
    """Whether ``case``'s other shape could have either of two causes (batch 1, a full row):
    the summary names a case whose shape tells instead (review48 F1: every export of a head on
    ``PackedSequence.data`` was first told as a batch squeezed away)."""
    from birnn_export.compare import DROPPED_OR_PACKED

    return any(o.note.endswith(DROPPED_OR_PACKED) for o in case.outputs)


#: How the note that the graph came from another model file than the one given begins.
OTHER_FILE_NOTE = "the graph was exported from a file with sha256"


#: A number in a diagnosis (``2.5e-07``, ``0.076``, ``16``).
_NUMBER = r"\d+(\.\d+)?(e[+-]?\d+)?"


def render_report(report: VerifyReport, *, console: Any = None, max_failures: int = 20) -> None:
    """Print ``report`` as rich tables: worst error per engine, output and check, then the failing
    cases with their diagnosis."""
    from rich.table import Table
    from rich.text import Text

    # Text, not markup, wherever the words come from data: rich drops a "[lowercase ...]" it
    # reads as a style, such as TensorRT's "[executionContext.cpp::...]" (review34 R2)
    console = console or wide_console()
    table = Table(
        title=Text(
            f"verify {report.onnx_path} vs {report.reference}, run in {report.reference_dtype}"
        ),
        caption="error, eager, ratio and limit: the case nearest its limit (error: the largest "
        "absolute, or L2, relative L2; a top-1 in parentheses is the worst case's, not judged "
        "there: the sweep row judges top-1 over the whole sweep)",
    )
    for column in (
        "engine",
        "output",
        "check",
        "cases",
        "error",
        "eager",
        "ratio",
        "limit",
        "top-1",
        "result",
    ):
        table.add_column(
            column,
            justify="left" if column in ("engine", "output", "check", "result") else "right",
        )
    for *cells, status in _summary_rows(report):  # the status cell is our own markup
        table.add_row(*map(Text, cells), status)
    print_table(console, table)
    if report.criterion:
        console.print(
            f"judged by: {report.criterion}", markup=False, highlight=False, soft_wrap=True
        )
    for engine, providers in report.providers.items():
        console.print(f"{engine}: providers {', '.join(providers)}", markup=False)
    failures = report.failures
    if failures:
        detail = Table(
            title=f"failing cases ({len(failures)}, first {min(len(failures), max_failures)})"
        )
        for column in ("case", "lengths", "output", "check", "error", "ratio", "limit", "note"):
            detail.add_column(column)
        for case in failures[:max_failures]:
            lengths = _short(case.lengths)
            if case.error is not None:
                row = (case.label, lengths, "-", "error", "-", "-", "-", case.error)
                detail.add_row(*map(Text, row))
            for out in case.outputs:
                if not out.passed:
                    row = (
                        case.label,
                        lengths,
                        out.name,
                        out.check,
                        _error_text(out),
                        _ratio(out.ratio),
                        out.limit,
                        out.note,
                    )
                    detail.add_row(*map(Text, row))
        print_table(console, detail)
        # a diagnosis that differs from one shown only in its numbers is counted, not repeated
        # (users66 F5: three 416-character paragraphs, alike but for "at most 2.5e-07")
        alike: dict[str, list[CaseResult]] = {}
        for case in report.diagnosed_failures():
            if case.diagnosis:
                alike.setdefault(re.sub(_NUMBER, "N", case.diagnosis), []).append(case)
        for case, *others in list(alike.values())[:3]:
            more = f", and {len(others)} more case(s) alike" if others else ""
            console.print(
                Text.assemble(
                    ("diagnosis", "bold"),
                    f" ({case.label}, lengths {_short(case.lengths)}{more}):",
                )
            )
            for line in (case.diagnosis or "").splitlines():
                console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    for problem in report.problems:
        console.print(Text.assemble(("graph problem:", "red"), f" {problem}"), soft_wrap=True)
    style = "green" if report.passed else "red"
    # one line each, unwrapped: a log's grep for the verdict finds it whole (users34)
    console.print(
        Text(f"{report.summary()}  ({report.elapsed_s:.1f} s)", style=style), soft_wrap=True
    )


def _short(lengths: tuple[int, ...] | None) -> str:
    if lengths is None:
        return "-"
    text = ",".join(str(v) for v in lengths[:8])
    return text + (",..." if len(lengths) > 8 else "")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}x"


def _nearness(check: Check) -> tuple[bool, float]:
    """How near ``check`` came to its limit: failed first, then error / threshold (or the
    ratio to eager's, or the error, where it has no threshold)."""
    if check.threshold and math.isfinite(check.max_abs):
        return (not check.passed, check.max_abs / check.threshold)
    return (not check.passed, check.ratio if check.ratio is not None else check.max_abs)


def _by_l2(check: Check) -> bool:
    """Whether ``check`` is judged by its relative L2 error (an int8 graph's), not by a
    threshold or fixed tolerances."""
    return check.threshold is None and check.atol is None and check.rel_l2 is not None


def _error_text(check: Check) -> str:
    """The error ``check`` is judged by: relative L2 for int8 checks, else the largest."""
    return f"L2 {check.rel_l2:.3g}" if _by_l2(check) else f"{check.max_abs:.3g}"


def _by_l2_alone(check: Check) -> bool:
    """Whether ``check`` is judged by its relative L2 error alone (an int8 graph's case; the
    whole sweep's check judges top-1 too)."""
    return _by_l2(check) and check.rel_l2_limit is not None and check.top1_limit is None


def _summary_rows(report: VerifyReport) -> Iterator[tuple[str, ...]]:
    groups: dict[tuple[str, str, str], list[Check]] = {}
    errors: dict[str, int] = {}
    for case in report.cases:
        if case.error is not None and not case.outputs:
            errors[case.engine] = errors.get(case.engine, 0) + 1
        for out in case.outputs:
            groups.setdefault((case.engine, out.name, out.check), []).append(out)
    for (engine, name, check), outs in groups.items():
        passed = sum(o.passed for o in outs)
        # error, eager, ratio and limit all of one case: the one nearest its limit (each case
        # has its own; the largest error and another case's limit read as a violated limit)
        worst = max(outs, key=_nearness)
        top1 = [o.top1 for o in outs if o.top1 is not None]
        top1_text = "-" if not top1 else f"{100 * min(top1):.1f}%"
        # an int8 case: top-1 (or a tags output's agreement) is judged over the whole sweep
        if top1 and (_by_l2_alone(worst) or (worst.role == "tags" and worst.top1_limit is None)):
            top1_text = f"({top1_text})"
        greedy = [o.greedy for o in outs if o.greedy is not None]
        if greedy:
            top1_text += f", CTC {100 * min(greedy):.0f}%"
        ok = passed == len(outs)
        yield (
            engine,
            name,
            check,
            f"{passed}/{len(outs)}",
            _error_text(worst),
            f"{worst.noise:.3g}" if worst.noise is not None else "-",
            _ratio(worst.ratio),
            worst.limit,
            top1_text,
            "[green]pass[/green]" if ok else "[red]FAIL[/red]",
        )
    for engine, count in errors.items():
        yield (engine, "-", "run", f"0/{count}", "-", "-", "-", "-", "-", "[red]ERROR[/red]")
