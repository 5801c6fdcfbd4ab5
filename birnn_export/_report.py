"""Helpers shared by the verify and bench reports: JSON safety, the machine description, the
element-wise comparison, and the terminal rendering of a verification report.

Private: the public entry points are :mod:`birnn_export.verification` and
:mod:`birnn_export.bench`. Heavy libraries (torch, rich) are imported inside functions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from birnn_export._files import file_sha256

if TYPE_CHECKING:
    from birnn_export.verification import CaseResult, OutputResult, VerifyReport

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

    Keys: ``cpu``, ``cores``, ``gpu`` (``None`` without CUDA), ``platform``, ``python`` and the
    versions of ``torch``, ``onnx``, ``onnxruntime`` (either build), ``numpy``, ``tensorrt`` and
    ``tensorrt_rtx`` (``None`` when not installed), ``nvidia_tf32_override`` (the environment
    variable that forbids TF32 on GPUs; ``None`` when unset); with ``onnx_path`` also
    ``onnx_file`` and ``onnx_sha256``.
    """
    from importlib import metadata

    env: dict[str, Any] = {
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


# -- element-wise comparison -----------------------------------------------------------------


def abs_errors(actual: Any, expected: Any) -> np.ndarray:
    """``|actual - expected|`` in float64, element-wise. NaN on both sides and the same infinity
    on both sides count as equal (error 0); NaN on one side only is an infinite error."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - e)
    both_nan = np.isnan(a) & np.isnan(e)
    same_inf = np.isinf(a) & np.isinf(e) & (np.sign(a) == np.sign(e))
    diff[both_nan | same_inf] = 0.0
    diff[np.isnan(diff)] = np.inf
    return diff


def outside_tolerance(actual: Any, expected: Any, atol: float, rtol: float) -> np.ndarray:
    """Element-wise: the error of :func:`abs_errors` exceeds ``atol + rtol * |expected|``.

    Where ``expected`` is NaN or infinite only an exact match passes (the ``rtol`` term is
    dropped there, so ``rtol * inf`` cannot accept any value).

    Example:
        >>> outside_tolerance([1.0, float("nan"), 5.0], [1.0, float("nan"), float("inf")], 0.1, 0.1)
        array([False, False,  True])
    """
    diff = abs_errors(actual, expected)
    e = np.asarray(expected, dtype=np.float64)
    scale = np.where(np.isfinite(e), np.abs(e), 0.0)
    return ~(diff <= atol + rtol * scale)


# -- terminal rendering of a verification report ---------------------------------------------


def wide_console() -> Any:
    """A rich console; piped output (logs, CI) gets 150 columns instead of rich's 80, so
    tables keep their numbers whole."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 150)


def render_report(report: VerifyReport, *, console: Any = None, max_failures: int = 20) -> None:
    """Print ``report`` as rich tables: worst error per engine, output and check, then the failing
    cases with their diagnosis."""
    from rich.table import Table

    console = console or wide_console()
    table = Table(
        title=f"verify {report.onnx_path} vs {report.reference} ({report.reference_dtype})"
    )
    for column in (
        "engine",
        "output",
        "check",
        "cases",
        "max abs",
        "max rel",
        "mean abs",
        "tolerance",
        "",
    ):
        table.add_column(
            column, justify="right" if column.startswith(("max", "mean", "cases")) else "left"
        )
    for row in _summary_rows(report):
        table.add_row(*row)
    console.print(table)
    for engine, providers in report.providers.items():
        console.print(f"{engine}: providers {', '.join(providers)}")
    failures = report.failures
    if failures:
        detail = Table(
            title=f"failing cases ({len(failures)}, first {min(len(failures), max_failures)})"
        )
        for column in ("case", "lengths", "output", "check", "max abs", "max rel", "note"):
            detail.add_column(column)
        for case in failures[:max_failures]:
            lengths = _short(case.lengths)
            if case.error is not None:
                detail.add_row(case.label, lengths, "-", "error", "-", "-", case.error)
            for out in case.outputs:
                if not out.passed:
                    detail.add_row(
                        case.label,
                        lengths,
                        out.name,
                        out.check,
                        f"{out.max_abs:.3g}",
                        f"{out.max_rel:.3g}",
                        out.note,
                    )
        console.print(detail)
        shown: set[str] = set()
        for case in report.diagnosed_failures():
            if case.diagnosis and case.diagnosis not in shown and len(shown) < 3:
                shown.add(case.diagnosis)
                console.print(
                    f"[bold]diagnosis[/bold] ({case.label}, lengths {_short(case.lengths)}):"
                )
                for line in case.diagnosis.splitlines():
                    console.print(f"  {line}", markup=False, highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    for problem in report.problems:
        console.print(f"[red]graph problem:[/red] {problem}", highlight=False)
    style = "green" if report.passed else "red"
    console.print(
        f"[{style}]{report.summary()}[/{style}]  ({report.elapsed_s:.1f} s)", highlight=False
    )


def _short(lengths: tuple[int, ...] | None) -> str:
    if lengths is None:
        return "-"
    text = ",".join(str(v) for v in lengths[:8])
    return text + (",..." if len(lengths) > 8 else "")


def _summary_rows(report: VerifyReport) -> Iterator[tuple[str, ...]]:
    groups: dict[tuple[str, str, str], list[tuple[CaseResult, OutputResult]]] = {}
    errors: dict[str, int] = {}
    for case in report.cases:
        if case.error is not None and not case.outputs:
            errors[case.engine] = errors.get(case.engine, 0) + 1
        for out in case.outputs:
            groups.setdefault((case.engine, out.name, out.check), []).append((case, out))
    for (engine, name, check), items in groups.items():
        outs = [o for _, o in items]
        passed = sum(o.passed for o in outs)
        tol = outs[0]
        tol_text = f"{tol.atol:g} / {tol.rtol:g}" + (
            f", L2 < {tol.rel_l2_limit:g}" if tol.rel_l2_limit is not None else ""
        )
        ok = passed == len(outs)
        yield (
            engine,
            name,
            check,
            f"{passed}/{len(outs)}",
            f"{max(o.max_abs for o in outs):.3g}",
            f"{max(o.max_rel for o in outs):.3g}",
            f"{max(o.mean_abs for o in outs):.3g}",
            tol_text,
            "[green]pass[/green]" if ok else "[red]FAIL[/red]",
        )
    for engine, count in errors.items():
        yield (engine, "-", "run", f"0/{count}", "-", "-", "-", "-", "[red]ERROR[/red]")
