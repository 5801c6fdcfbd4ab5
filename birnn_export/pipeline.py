"""What ``birnn-export MODEL.pt`` runs, as one library call: :func:`export_model`.

load (safely) -> convert -> export (symbolic batch and time, checked, verified on ONNX Runtime,
written atomically) -> TensorRT compatibility (TensorRT's own parser and builder where one is
installed). The returned :class:`ExportReport` renders itself as the command prints it
(:meth:`ExportReport.lines`) and as its ``--json`` file (:meth:`ExportReport.to_dict`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from birnn_export.check import CheckReport
    from birnn_export.export import ExportResult


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

    def to_dict(self) -> dict[str, Any]:
        """The report as the ``--json`` file holds it."""
        result, compat = self.result, self.compatibility
        report = result.verification
        return {
            "model": self.model_path,
            "source": self.source,
            "converted": [str(r) for r in result.replaced],
            "inputs": self.inputs,
            "onnx": self.onnx,
            "max_abs_error": result.max_error,
            "verification": None if report is None else json.loads(report.to_json()),
            "quantization": None if result.quantization is None else result.quantization.summary(),
            "tensorrt_check": None
            if compat is None
            else {
                "summary": compat.summary(),
                "findings": compat.lines(),
                "checked_with": compat.checked_with,
                "build": None if compat.build is None else compat.build.to_dict(),
            },
            "seconds": round(self.seconds, 3),
        }

    def lines(self) -> list[str]:
        """The summary the command prints."""
        onnx_info, result = self.onnx, self.result
        out = [f"Loaded   {self.model_path}: {self.source}"]
        out += [f"Converted {r}" for r in result.replaced]
        size_kib = onnx_info["file_size"] / 1024
        opsets = onnx_info["opsets"]
        out.append(f"Wrote    {onnx_info['path']} ({size_kib:.1f} KiB, opset {opsets})")
        for kind in ("inputs", "outputs"):
            for value in onnx_info[kind]:
                dims = "[" + ", ".join(str(d) for d in value["dims"]) + "]"
                out.append(f"  {kind[:-1]:<6} {value['name']:<10} {value['dtype']:<8} {dims}")
            if kind == "inputs" and self.inputs:
                out.append(f"         ({self.inputs})")
        ops = ", ".join(f"{op} x{n}" for op, n in onnx_info["op_counts"].items())
        out.append(f"  ops    {ops}")
        if result.verification is None:
            out.append("Not verified (--no-verify)")
        if result.quantization is not None:
            out.append(f"Quantized {result.quantization.summary()}")
        if result.verification is not None:
            out.append(f"Verified {result.verification.summary()}")
        if self.compatibility is None:
            out.append("Compat   int8 graph: ONNX Runtime CPU only (engine ort-cpu)")
        else:
            out.append(f"Compat   {self.compatibility.summary()}")
            out += [f"  {line}" for line in self.compatibility.lines()]
        out.append(f"Done in {self.seconds:.1f} s")
        return out


def export_model(
    model_path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    inputs: Sequence[str] = (),
    ranges: Mapping[str, Sequence[int]] | None = None,
    seq_range: Sequence[int] | None = None,
    verify: bool = True,
    progress: bool = False,
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
        seq_range: (min, opt, max) of the time dim.
        verify: Verify on ONNX Runtime before the file is written.
        progress: Show verification's progress bar on stderr.
        load_options: Keyword arguments of :func:`birnn_export.load_model` (``model_class``,
            ``model_kwargs``, ``state_key``, ``nonlinearity``, ``time_major``,
            ``trust_pickle``).
        **export_options: Keyword arguments of :func:`birnn_export.export_onnx` (``opset``,
            ``layout``, ``dtype``, ``lengths``, ``input_size``, ``quantize``).

    Raises:
        BiRNNExportError: bad input (exit code 2), or a failed verification or TensorRT build
            (:class:`~birnn_export.errors.VerificationError`, exit code 1; its ``report``
            holds the cases).

    Example:
        >>> report = export_model("sample_models/token_tagger.pt", "tagger.onnx")  # doctest: +SKIP
        >>> print("\\n".join(report.lines()))  # doctest: +SKIP
    """
    from birnn_export.check import check_compatibility
    from birnn_export.checkpoint import load_model
    from birnn_export.describe import describe_onnx
    from birnn_export.export import export_onnx

    start = time.perf_counter()
    model_path = Path(model_path)
    output = Path(output) if output is not None else model_path.with_suffix(".onnx")
    loaded = load_model(model_path, **dict(load_options or {}))
    # What the checkpoint declares (its inputs and ranges), unless the caller says.
    declared = list(inputs) or list(loaded.inputs or ())
    named = dict(ranges or {})
    if not inputs:
        named = {**(loaded.ranges or {}), **named}
    result = export_onnx(
        loaded.model,
        output,
        reference=loaded.original,
        inputs=declared or None,
        ranges=named,
        verify=verify,
        config=loaded.config,
        source_sha256=loaded.sha256,
        progress=progress,
        **({"seq_range": seq_range} if seq_range is not None else {}),
        **export_options,
    )
    quantized = export_options.get("quantize")
    compatibility = None if quantized else check_compatibility(result.path, target="tensorrt")
    if inputs:
        how = "declared with --input"
    elif declared:
        how = "declared by the checkpoint"
    else:
        how = f"{result.inputs}; --input declares them"
    return ExportReport(
        model_path=str(model_path),
        source=loaded.source,
        inputs=how,
        result=result,
        onnx=describe_onnx(result.path),
        compatibility=compatibility,
        seconds=time.perf_counter() - start,
    )
