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

from birnn_export._files import file_sha256

if TYPE_CHECKING:
    from birnn_export.compare import Check
    from birnn_export.verification import VerifyReport

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
        "eager",
        "ratio",
        "limit",
        "top-1",
        "",
    ):
        table.add_column(
            column, justify="left" if column in ("engine", "output", "check") else "right"
        )
    for row in _summary_rows(report):
        table.add_row(*row)
    console.print(table)
    if report.criterion:
        console.print(f"judged by: {report.criterion}", markup=False, highlight=False)
    for engine, providers in report.providers.items():
        console.print(f"{engine}: providers {', '.join(providers)}")
    failures = report.failures
    if failures:
        detail = Table(
            title=f"failing cases ({len(failures)}, first {min(len(failures), max_failures)})"
        )
        for column in ("case", "lengths", "output", "check", "max abs", "ratio", "limit", "note"):
            detail.add_column(column)
        for case in failures[:max_failures]:
            lengths = _short(case.lengths)
            if case.error is not None:
                detail.add_row(case.label, lengths, "-", "error", "-", "-", "-", case.error)
            for out in case.outputs:
                if not out.passed:
                    detail.add_row(
                        case.label,
                        lengths,
                        out.name,
                        out.check,
                        f"{out.max_abs:.3g}",
                        _ratio(out.ratio),
                        out.limit,
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


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}x"


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
        worst = max(outs, key=lambda o: o.ratio if o.ratio is not None else o.max_abs)
        noises = [o.noise for o in outs if o.noise is not None]
        ratios = [o.ratio for o in outs if o.ratio is not None]
        top1 = [o.top1 for o in outs if o.top1 is not None]
        top1_text = "-" if not top1 else f"{100 * min(top1):.1f}%"
        greedy = [o.greedy for o in outs if o.greedy is not None]
        if greedy:
            top1_text += f", CTC {100 * min(greedy):.0f}%"
        ok = passed == len(outs)
        yield (
            engine,
            name,
            check,
            f"{passed}/{len(outs)}",
            f"{max(o.max_abs for o in outs):.3g}",
            f"{max(noises):.3g}" if noises else "-",
            _ratio(max(ratios)) if ratios else "-",
            worst.limit,
            top1_text,
            "[green]pass[/green]" if ok else "[red]FAIL[/red]",
        )
    for engine, count in errors.items():
        yield (engine, "-", "run", f"0/{count}", "-", "-", "-", "-", "-", "[red]ERROR[/red]")
