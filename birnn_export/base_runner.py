"""The runner contract every engine implements (Polygraphy's ``BaseRunner``).

A runner takes ``{input name: numpy array}`` and returns ``{output name: numpy array}``; it is a
context manager (``activate`` builds the session or engine, ``deactivate`` frees it) and times
itself. Subclasses implement ``activate_impl`` and ``infer_impl``. The engines' runners live in
:mod:`birnn_export.runners` (torch, ONNX Runtime) and :mod:`birnn_export.trt` (TensorRT), both
below this module, so imports run one way.
"""

from __future__ import annotations

import abc
import os
import time
from collections.abc import Callable, Mapping

import numpy as np

#: The environment variable that forbids TF32 in cuBLAS, cuDNN and TensorRT.
TF32_ENV = "NVIDIA_TF32_OVERRIDE"


def no_nvidia_gpu() -> str:
    """Where Linux shows no NVIDIA device node, the words saying so first, for the reason a
    GPU engine cannot run (users52 F7: the advice to install onnxruntime-gpu would have
    replaced a working onnxruntime on a machine with no GPU); else ``""``."""
    import glob
    import sys

    # WSL 2 reaches the GPU through /dev/dxg, with no /dev/nvidia* node
    nodes = glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/dxg")
    if sys.platform.startswith("linux") and not nodes:
        return "there is no NVIDIA GPU here (no /dev/nvidia* device), which it needs first; "
    return ""


def forbid_tf32() -> None:
    """Compare fp32 strictly on a GPU: set ``NVIDIA_TF32_OVERRIDE=0`` unless it is set. cuBLAS,
    cuDNN and TensorRT read it when they load, so before any GPU work; it is the only switch
    that reaches ONNX Runtime's cuDNN recurrent kernels (its ``use_tf32`` option does not).
    :func:`~birnn_export.verify`, :func:`~birnn_export.benchmark` and the command call it."""
    os.environ.setdefault(TF32_ENV, "0")


class BaseRunner(abc.ABC):
    """Polygraphy-style runner: ``activate`` / ``infer`` / ``deactivate``; times itself."""

    #: Engine name, one of :data:`birnn_export.runners.ENGINES`.
    engine: str = ""

    def __init__(self) -> None:
        self.is_active = False
        self.activate_time_s: float | None = None
        self.last_inference_time_s: float | None = None

    @property
    def name(self) -> str:
        return self.engine

    def activate(self) -> None:
        """Build the session or engine (timed in :attr:`activate_time_s`)."""
        if self.is_active:
            return
        start = time.perf_counter()
        self.activate_impl()
        self.activate_time_s = time.perf_counter() - start
        self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; outputs are host numpy arrays. The time is in :attr:`last_inference_time_s`."""
        self._require_active("infer")
        start = time.perf_counter()
        outputs = self.infer_impl(feed)
        self.last_inference_time_s = time.perf_counter() - start
        return outputs

    def _require_active(self, what: str) -> None:
        if not self.is_active:
            raise RuntimeError(
                f"{self.engine} runner: call activate() (or use 'with') before {what}()"
            )

    def timed_runs(
        self,
        feed: Mapping[str, np.ndarray],
        *,
        warmup: int,
        done: Callable[[int, float], bool],
    ) -> list[float]:
        """Run ``feed`` back to back, as a serving process calls the engine; the timed runs.

        An engine in a child process loops there: a call at a time over the pipe let the
        engine's threads fall asleep between runs, which added ~0.05 ms to each (users52 F2).

        Args:
            feed: The inputs, as :meth:`infer` takes them.
            warmup: Runs first, untimed.
            done: ``done(runs, seconds)`` is true once ``runs`` timed runs, begun
                ``seconds`` ago, are enough. It must pickle for an engine in a child process.

        Returns:
            Each timed run's seconds, as :attr:`last_inference_time_s` gives them.
        """
        self._require_active("timed_runs")
        for _ in range(warmup):
            self.infer(feed)
        times: list[float] = []
        began = time.perf_counter()
        while not done(len(times), time.perf_counter() - began):
            self.infer(feed)
            times.append(self.last_inference_time_s)
        return times

    def __enter__(self) -> BaseRunner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def deactivate_impl(self) -> None:  # noqa: B027 - optional hook
        pass

    def providers(self) -> list[str]:
        """What actually executes the model (ONNX Runtime providers, device names)."""
        return [self.engine]

    def unavailable_reason(self) -> str | None:
        """``None`` if this runner can run here, else the exact reason; builds nothing.
        Runners of engines that may be missing override it (the torch runner always runs)."""
        return None
