"""Shared test configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# GPU tests compare fp32 strictly: no TF32 in cuBLAS, cuDNN or TensorRT (read when they load).
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")

# CI runs the same examples every time (a failure there is reproducible); local runs explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="module")
def split_lstm_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small 2-layer BiLSTM taking lengths, exported in the split layout."""
    import torch

    from birnn_export.modules import BiRNN
    from birnn_export.pipeline import export_onnx

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("graph") / "split.onnx"
    export_onnx(BiRNN(5, 8, cell="lstm", num_layers=2).eval(), path, layout="split")
    return path
