"""birnn-export: bidirectional RNN/LSTM/GRU models from PyTorch to ONNX Runtime and TensorRT.

The public API. Names load on first use (PEP 562), so ``import birnn_export`` and
``birnn-export --help`` import neither torch nor onnx; using :class:`BiRNN` imports torch, and
onnxruntime, tensorrt and matplotlib load only in the functions that need them.

Example:
    >>> import torch, birnn_export
    >>> layer = birnn_export.BiRNN(10, 20, cell="gru")
    >>> out, h = layer(torch.randn(2, 5, 10), torch.tensor([5, 3]))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from birnn_export._version import __version__

_LAZY = {
    "BiRNN": "birnn_export.modules",
    "reverse_padded": "birnn_export.modules",
    "padding_mask": "birnn_export.modules",
    "CRFDecoder": "birnn_export.crf",
    "convert": "birnn_export.conversion",
    "conversion_report": "birnn_export.conversion",
    "find_recurrent_layers": "birnn_export.conversion",
    "SequenceTagger": "birnn_export.models",
    "TaggerConfig": "birnn_export.models",
    "BiRNNExportError": "birnn_export.errors",
    "CompatibilityError": "birnn_export.errors",
    "ConversionError": "birnn_export.errors",
    "EngineBuildError": "birnn_export.errors",
    "EngineError": "birnn_export.errors",
    "EngineUnavailableError": "birnn_export.errors",
    "ExportError": "birnn_export.errors",
    "ModelLoadError": "birnn_export.errors",
    "UsageError": "birnn_export.errors",
    "VerificationError": "birnn_export.errors",
    "load_model": "birnn_export.checkpoint",
    "save_checkpoint": "birnn_export.checkpoint",
    "LoadedModel": "birnn_export.checkpoint",
    "export_onnx": "birnn_export.pipeline",
    "describe_onnx": "birnn_export.describe",
    "export_model": "birnn_export.pipeline",
    "ExportReport": "birnn_export.pipeline",
    "ExportResult": "birnn_export.pipeline",
    "GraphSpec": "birnn_export.spec",
    "verify": "birnn_export.verification",
    "VerifyReport": "birnn_export.verification",
    "benchmark": "birnn_export.bench",
    "BenchReport": "birnn_export.bench",
    "check_compatibility": "birnn_export.check",
}

if TYPE_CHECKING:
    from birnn_export.bench import BenchReport, benchmark
    from birnn_export.check import check_compatibility
    from birnn_export.checkpoint import LoadedModel, load_model, save_checkpoint
    from birnn_export.conversion import conversion_report, convert, find_recurrent_layers
    from birnn_export.crf import CRFDecoder
    from birnn_export.describe import describe_onnx
    from birnn_export.errors import (
        BiRNNExportError,
        CompatibilityError,
        ConversionError,
        EngineBuildError,
        EngineError,
        EngineUnavailableError,
        ExportError,
        ModelLoadError,
        UsageError,
        VerificationError,
    )
    from birnn_export.models import SequenceTagger, TaggerConfig
    from birnn_export.modules import BiRNN, padding_mask, reverse_padded
    from birnn_export.pipeline import ExportReport, ExportResult, export_model, export_onnx
    from birnn_export.spec import GraphSpec
    from birnn_export.verification import VerifyReport, verify


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'birnn_export' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["__version__", *_LAZY]
