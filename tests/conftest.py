"""Shared test configuration."""

from __future__ import annotations

import os

from hypothesis import settings

# GPU tests compare fp32 strictly: no TF32 in cuBLAS, cuDNN or TensorRT (read when they load).
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")

# CI runs the same examples every time (a failure there is reproducible); local runs explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
