"""One runner contract for every inference engine.

A runner takes ``{input name: numpy array}`` and returns ``{output name: numpy array}``. It is a
context manager (``activate`` builds the session or engine, ``deactivate`` frees it) and times
each call. Subclasses implement ``activate_impl`` and ``infer_impl`` only. Heavy libraries
(onnxruntime, tensorrt) are imported inside the runner, so this module imports without them.

``availability(engine)`` says, without building anything, whether an engine can run here and if
not exactly why.

Example:
    >>> with OrtRunner("model.onnx") as runner:  # doctest: +SKIP
    ...     outputs = runner.infer({"x": x, "lengths": lengths})
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from birnn_export.errors import EngineUnavailableError

#: Engine names, as accepted by ``--engines`` and :func:`make_runner`.
ENGINES = ("torch", "ort-cpu", "ort-cuda", "ort-trt", "trt")

_ORT_PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}


class BaseRunner(abc.ABC):
    """Polygraphy-style runner: ``activate`` / ``infer`` / ``deactivate``; times itself."""

    #: Engine name, one of :data:`ENGINES`.
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
        if not self.is_active:
            raise RuntimeError(f"{self.engine} runner: call activate() (or use 'with') before infer()")
        start = time.perf_counter()
        outputs = self.infer_impl(feed)
        self.last_inference_time_s = time.perf_counter() - start
        return outputs

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


class TorchRunner(BaseRunner):
    """Eager PyTorch (optionally ``torch.compile``) on CPU or CUDA.

    Args:
        model: The module to run. Called positionally with the feed's arrays, in
            ``input_names`` order.
        input_names: Feed keys in the order ``forward`` takes them.
        output_names: Names for the flattened outputs (tuples and nested tuples are flattened).
        device: ``"cpu"`` or ``"cuda"``.
        compile: Wrap the model in ``torch.compile``.
        threads: ``torch.set_num_threads`` while active (CPU).
        dtype: Cast floating inputs (and the model) to this torch dtype name, e.g. ``"float64"``.
    """

    engine = "torch"

    def __init__(
        self,
        model: Any,
        input_names: list[str],
        output_names: list[str],
        *,
        device: str = "cpu",
        compile: bool = False,
        threads: int | None = None,
        dtype: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.device = device
        self.compile = compile
        self.threads = threads
        self.dtype = dtype
        self._fn: Any = None
        self._saved_threads: int | None = None

    def activate_impl(self) -> None:
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailableError(f"torch on {self.device}: no CUDA device visible to torch")
        model = self.model.to(self.device).eval()
        if self.dtype is not None:
            model = model.to(getattr(torch, self.dtype))
        if self.threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        self._fn = torch.compile(model) if self.compile else model

    def deactivate_impl(self) -> None:
        import torch

        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
        self._fn = None

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = []
        for name in self.input_names:
            tensor = torch.from_numpy(np.ascontiguousarray(feed[name])).to(self.device)
            if self.dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(getattr(torch, self.dtype))
            args.append(tensor)
        with torch.inference_mode():
            result = self._fn(*args)
            flat = _flatten(result)
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
        if len(flat) != len(self.output_names):
            raise RuntimeError(
                f"model returned {len(flat)} tensors, expected {len(self.output_names)} "
                f"({', '.join(self.output_names)})"
            )
        return {n: t.detach().cpu().numpy() for n, t in zip(self.output_names, flat, strict=True)}

    def providers(self) -> list[str]:
        return [f"torch-{self.device}{'-compiled' if self.compile else ''}"]


class OrtRunner(BaseRunner):
    """ONNX Runtime with one execution provider; fails if that provider is not really active.

    Args:
        path: The ONNX file.
        engine: ``"ort-cpu"``, ``"ort-cuda"`` or ``"ort-trt"``.
        threads: Intra-op threads (``None``: ONNX Runtime's default). Inter-op is 1.
        graph_optimization_level: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"``.
        provider_options: Extra options for the provider (e.g. ``{"device_id": 0}``).
    """

    def __init__(
        self,
        path: str,
        *,
        engine: str = "ort-cpu",
        threads: int | None = None,
        graph_optimization_level: str = "all",
        provider_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if engine not in _ORT_PROVIDERS:
            raise ValueError(f"engine: expected one of {sorted(_ORT_PROVIDERS)}, got {engine!r}")
        self.engine = engine
        self.path = str(path)
        self.threads = threads
        self.graph_optimization_level = graph_optimization_level
        self.provider_options = dict(provider_options or {})
        self.session: Any = None

    def activate_impl(self) -> None:
        reason = availability(self.engine)
        if reason:
            raise EngineUnavailableError(reason)
        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if self.graph_optimization_level not in levels:
            raise ValueError(
                f"graph_optimization_level: expected one of {sorted(levels)}, "
                f"got {self.graph_optimization_level!r}"
            )
        options.graph_optimization_level = levels[self.graph_optimization_level]
        provider = _ORT_PROVIDERS[self.engine]
        providers: list[Any] = [(provider, self.provider_options)]
        if provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")  # for nodes the provider does not take
        self.session = ort.InferenceSession(self.path, sess_options=options, providers=providers)
        active = self.session.get_providers()
        if provider not in active:
            # ONNX Runtime drops an unusable provider with only a warning: refuse to time CPU
            # under a GPU label.
            self.session = None
            raise EngineUnavailableError(
                f"{self.engine}: onnxruntime did not activate {provider} (active: {active})"
            )

    def deactivate_impl(self) -> None:
        self.session = None

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, dict(feed)), strict=True))

    def providers(self) -> list[str]:
        return list(self.session.get_providers()) if self.session is not None else []


def availability(engine: str) -> str | None:
    """``None`` if ``engine`` can run here, otherwise the exact reason it cannot."""
    if engine not in ENGINES:
        return f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}"
    if engine == "torch":
        return None
    if engine in _ORT_PROVIDERS:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return f"{engine}: onnxruntime is not importable ({exc}); pip install onnxruntime"
        provider = _ORT_PROVIDERS[engine]
        if provider not in ort.get_available_providers():
            hint = "pip install onnxruntime-gpu (replacing onnxruntime)"
            return (
                f"{engine}: this onnxruntime build has no {provider} "
                f"(available: {', '.join(ort.get_available_providers())}); {hint}"
            )
        return None
    from birnn_export import trt

    return trt.availability()


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _flatten(item)]
    return [value]
