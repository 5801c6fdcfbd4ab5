"""birnn-export: bidirectional RNN/LSTM/GRU models from PyTorch to ONNX Runtime and TensorRT.

The public API; importing it imports torch, nothing heavier (onnxruntime, tensorrt and
matplotlib load where they are used).
"""

from __future__ import annotations

import importlib
from typing import Any

from birnn_export._version import __version__
from birnn_export.convert import conversion_report, convert, find_recurrent_layers
from birnn_export.errors import (
    BiRNNExportError,
    ConversionError,
    EngineUnavailableError,
    ExportError,
    ModelLoadError,
    VerificationError,
)
from birnn_export.models import SequenceTagger, TaggerConfig
from birnn_export.modules import BiRNN, padding_mask, reverse_padded

# Loaded on first use, so that `import birnn_export` stays light.
_LAZY = {
    "load_model": "birnn_export.checkpoint",
    "save_checkpoint": "birnn_export.checkpoint",
    "LoadedModel": "birnn_export.checkpoint",
    "export_onnx": "birnn_export.export",
    "ExportResult": "birnn_export.export",
    "verify": "birnn_export.verify",
    "VerifyReport": "birnn_export.verify",
    "benchmark": "birnn_export.bench",
    "BenchReport": "birnn_export.bench",
    "check_compatibility": "birnn_export.check",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'birnn_export' has no attribute {name!r}")


__all__ = [
    "BiRNN",
    "BiRNNExportError",
    "ConversionError",
    "EngineUnavailableError",
    "ExportError",
    "ModelLoadError",
    "SequenceTagger",
    "TaggerConfig",
    "VerificationError",
    "__version__",
    "conversion_report",
    "convert",
    "find_recurrent_layers",
    "padding_mask",
    "reverse_padded",
    *_LAZY,
]
