"""Native TensorRT: build an engine from an exported ONNX graph, cache it, run it.

This is the only module that imports ``tensorrt``, and only inside functions, so the package
imports (and its tests run) without it. The pure helpers here need neither TensorRT nor a GPU:

* :func:`derive_profile` turns a graph's :class:`~birnn_export.spec.GraphSpec` into one
  optimisation profile (min / opt / max shape of every dynamic input);
* :func:`cache_key` names a serialized engine after everything that makes it valid (the ONNX
  file's sha256, GPU, TensorRT version, profile, precision and build options);
* :func:`build_plan` decides strong typing and precision flags for a TensorRT build.

:class:`TrtRunner` follows the runner contract of :mod:`birnn_export.runners`. Device memory
comes from torch CUDA tensors, so there is no pycuda / cuda-python dependency.

Example:
    >>> with TrtRunner("model.onnx") as runner:  # doctest: +SKIP
    ...     outputs = runner.infer({"x": x, "lengths": lengths})
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from birnn_export._files import file_sha256, write_atomic
from birnn_export.errors import BiRNNExportError, EngineUnavailableError
from birnn_export.runners import BaseRunner
from birnn_export.spec import BATCH, SEQ, GraphSpec, check_range

logger = logging.getLogger(__name__)

#: Environment variable that overrides :data:`DEFAULT_CACHE_DIR`.
CACHE_ENV = "BIRNN_EXPORT_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/birnn-export/trt")
INSTALL_HINT = "pip install birnn-export[gpu]"

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]

# TensorRT DataType member name -> numpy dtype name (torch has the same names). BF16 is left
# out: numpy has no bfloat16, so such an engine is refused with a reason.
_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


# -- pure helpers (no TensorRT, no GPU) ------------------------------------------------------


def cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Where engines and timing caches live: ``path``, else ``$BIRNN_EXPORT_CACHE``, else
    ``~/.cache/birnn-export/trt``."""
    chosen = path if path is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser()


def derive_profile(
    spec: GraphSpec,
    *,
    batch: Sequence[int] | None = None,
    seq: Sequence[int] | None = None,
) -> Profile:
    """One optimisation profile for every input with a symbolic ``batch`` or ``seq`` dim.

    ``batch`` / ``seq`` are (min, opt, max); ``None`` takes the ranges the graph declares
    (``spec.batch_range`` / ``spec.seq_range``, set at export). Static dims keep their size in
    all three shapes; inputs without symbolic dims are left out (TensorRT needs no profile
    entry for them).

    Example:
        >>> from birnn_export.spec import TensorSpec
        >>> spec = GraphSpec(
        ...     inputs=(TensorSpec("x", "float32", ("batch", "seq", 10), "features"),
        ...             TensorSpec("lengths", "int64", ("batch",), "lengths")),
        ...     outputs=(), example_batch=2, example_seq=5)
        >>> derive_profile(spec)["x"]
        ((1, 1, 10), (8, 64, 10), (32, 256, 10))
    """
    b = check_range("batch", spec.batch_range if batch is None else batch)
    s = check_range("seq", spec.seq_range if seq is None else seq)
    profile: Profile = {}
    for tensor in spec.inputs:
        if BATCH not in tensor.dims and SEQ not in tensor.dims:
            continue
        shapes = []
        for i in range(3):
            sizes = {BATCH: b[i], SEQ: s[i]}
            shape = []
            for dim in tensor.dims:
                if isinstance(dim, str):
                    if dim not in sizes:
                        raise BiRNNExportError(
                            f"input {tensor.name!r}: unknown symbolic dim {dim!r} in the graph "
                            f"spec (expected {BATCH!r} or {SEQ!r}); re-export the model"
                        )
                    shape.append(sizes[dim])
                else:
                    shape.append(int(dim))
            shapes.append(tuple(shape))
        profile[tensor.name] = (shapes[0], shapes[1], shapes[2])
    return profile


def cache_key(
    onnx_sha256: str,
    gpu_name: str,
    trt_version: str,
    profile: Mapping[str, tuple[Shape, Shape, Shape]],
    dtype: str,
    *,
    options: Mapping[str, Any] | None = None,
) -> str:
    """A file-name-safe key that changes with every ingredient of a serialized engine.

    ``options`` holds build options that change the engine (e.g. ``{"tf32": False}``).
    """
    payload = {
        "onnx_sha256": onnx_sha256,
        "gpu": gpu_name,
        "tensorrt": trt_version,
        "profile": {k: [list(s) for s in v] for k, v in sorted(profile.items())},
        "dtype": dtype,
        "options": dict(sorted((options or {}).items())),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"{_slug(gpu_name)}-trt{_slug(trt_version)}-{digest[:32]}"


def timing_cache_name(gpu_name: str, trt_version: str) -> str:
    """Timing caches hold per-layer tactic timings: valid for one GPU and TensorRT version,
    and shared by every model built there (so later builds are faster)."""
    return f"timing-{_slug(gpu_name)}-trt{_slug(trt_version)}.cache"


@dataclass(frozen=True)
class BuildPlan:
    """How to create the network and builder config for one TensorRT version."""

    strongly_typed: bool
    fp16_flag: bool


def build_plan(trt_version: str, dtype: str, *, has_strongly_typed: bool = True) -> BuildPlan:
    """Strongly typed whenever TensorRT has the ``STRONGLY_TYPED`` network flag (every 10.x and
    11.x does: it arrived in 9.x, and 11.x keeps it, ignored, for compatibility, since there
    every network is strongly typed). Precision then comes from the graph, so fp16 needs an fp16
    ONNX graph, and TensorRT refuses precision flags (ONNX Runtime's TensorRT EP likewise sets
    one or the other, never both). ``BuilderFlag.FP16`` is only the fallback for a build that
    lacks the flag.
    """
    major = _major(trt_version)
    if major < 10:
        raise EngineUnavailableError(
            f"trt: TensorRT {trt_version} is too old: need 10 or newer; {INSTALL_HINT}"
        )
    strongly_typed = has_strongly_typed or major >= 11
    return BuildPlan(
        strongly_typed=strongly_typed, fp16_flag=not strongly_typed and dtype == "float16"
    )


def numpy_dtype(trt_dtype_name: str) -> str:
    """numpy / torch dtype name of a TensorRT ``DataType`` member (``"HALF"`` -> ``"float16"``)."""
    try:
        return _DTYPES[trt_dtype_name]
    except KeyError:
        raise EngineUnavailableError(
            f"trt: engine tensor type {trt_dtype_name} has no numpy equivalent"
        ) from None


def _major(version: str) -> int:
    match = re.match(r"\d+", version)
    return int(match.group()) if match else 0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "unknown"


# -- availability ------------------------------------------------------------------------------


def availability() -> str | None:
    """``None`` if native TensorRT can run here, otherwise the exact reason it cannot."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError:
        return f"trt: tensorrt not installed: {INSTALL_HINT}"
    except (ImportError, OSError) as exc:  # a wheel whose shared libraries are missing
        return f"trt: tensorrt is installed but failed to import ({exc}); reinstall: {INSTALL_HINT}"
    version = getattr(trt, "__version__", "0")
    if _major(version) < 10:
        return f"trt: TensorRT {version} is too old: need 10 or newer; {INSTALL_HINT}"
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return "trt: torch is needed for device memory; pip install torch"
    if not torch.cuda.is_available():
        return "trt: no CUDA device (torch.cuda.is_available() is False)"
    return None


# -- runner -------------------------------------------------------------------------------------


class TrtRunner(BaseRunner):
    """Native TensorRT engine built from an ONNX file, cached on disk.

    Args:
        path: The ONNX file (written by birnn-export, so it carries its :class:`GraphSpec`).
        spec: Override the spec read from the file's metadata.
        batch: (min, opt, max) batch sizes of the optimisation profile; ``None``: the ranges
            the graph declares (see :func:`derive_profile`).
        seq: (min, opt, max) sequence lengths of the optimisation profile; likewise.
        cache: Engine / timing-cache directory (default: see :func:`cache_dir`).
        tf32: Allow TF32 in fp32 layers (off by default so fp32 compares strictly).
        workspace_bytes: Builder workspace limit (``None``: TensorRT's default).
        device: CUDA device index.
        rebuild: Ignore a cached engine and build again.

    Attributes:
        engine_path: Where the serialized engine is (after :meth:`activate`).
        cache_hit: Whether :meth:`activate` loaded the engine instead of building it.
    """

    engine = "trt"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        spec: GraphSpec | None = None,
        batch: Sequence[int] | None = None,
        seq: Sequence[int] | None = None,
        cache: str | os.PathLike[str] | None = None,
        tf32: bool = False,
        workspace_bytes: int | None = None,
        device: int = 0,
        rebuild: bool = False,
    ) -> None:
        super().__init__()
        self.path = str(path)
        self.spec = spec
        self.batch = None if batch is None else check_range("batch", batch)
        self.seq = None if seq is None else check_range("seq", seq)
        self.cache = cache_dir(cache)
        self.tf32 = tf32
        self.workspace_bytes = workspace_bytes
        self.device = device
        self.rebuild = rebuild
        self.engine_path: Path | None = None
        self.cache_hit = False
        self.trt_version = ""
        self.gpu_name = ""
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._dtypes: dict[str, str] = {}

    def activate_impl(self) -> None:
        reason = availability()
        if reason:
            raise EngineUnavailableError(reason)
        import tensorrt as trt
        import torch

        spec, profile = self.profile()
        self.trt_version = trt.__version__
        self.gpu_name = torch.cuda.get_device_name(self.device)
        key = cache_key(
            file_sha256(self.path),
            self.gpu_name,
            self.trt_version,
            profile,
            spec.dtype,
            options={
                "tf32": self.tf32,
                # TensorRT honours it over the builder flag: part of what the engine is.
                "tf32_override": os.environ.get("NVIDIA_TF32_OVERRIDE"),
                "workspace_bytes": self.workspace_bytes,
            },
        )
        self.cache.mkdir(parents=True, exist_ok=True)
        self.engine_path = self.cache / f"{key}.engine"
        trt_logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(trt_logger)
        engine = None
        with torch.cuda.device(self.device):
            if self.engine_path.is_file() and not self.rebuild:
                engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
                if engine is None:
                    logger.warning("cached engine %s is unusable; rebuilding", self.engine_path)
            self.cache_hit = engine is not None
            if engine is None:
                serialized = self._build(trt, trt_logger, spec, profile)
                write_atomic(self.engine_path, serialized)
                engine = runtime.deserialize_cuda_engine(serialized)
                if engine is None:
                    raise EngineUnavailableError(
                        "trt: TensorRT could not deserialize the engine it just built from "
                        f"{self.path}"
                    )
            self._engine = engine
            self._context = engine.create_execution_context()
            # A stream of our own: enqueueV3 on the legacy default stream makes TensorRT add
            # synchronisation, which would then be timed too.
            self._stream = torch.cuda.Stream()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._dtypes = {n: numpy_dtype(engine.get_tensor_dtype(n).name) for n in names}

    def profile(self) -> tuple[GraphSpec, Profile]:
        """The graph's spec and the optimisation profile this runner builds with; resolves
        :attr:`batch` / :attr:`seq` from the spec's declared ranges where they were ``None``."""
        if not os.path.isfile(self.path):
            raise BiRNNExportError(f"{self.path}: no such ONNX file")
        spec = self.spec if self.spec is not None else GraphSpec.from_onnx(self.path)
        self.batch = check_range("batch", spec.batch_range if self.batch is None else self.batch)
        self.seq = check_range("seq", spec.seq_range if self.seq is None else self.seq)
        return spec, derive_profile(spec, batch=self.batch, seq=self.seq)

    def _build(self, trt: Any, trt_logger: Any, spec: GraphSpec, profile: Profile) -> bytes:
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        plan = build_plan(trt.__version__, spec.dtype, has_strongly_typed=flag is not None)
        builder = trt.Builder(trt_logger)
        network = builder.create_network(0 if flag is None else 1 << int(flag))
        parser = trt.OnnxParser(network, trt_logger)
        if not parser.parse_from_file(self.path):
            errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
            raise EngineUnavailableError(
                f"trt: TensorRT's ONNX parser rejected {self.path}: {errors}; run "
                f"'birnn-export check {self.path} --target tensorrt' for the static checks"
            )
        config = builder.create_builder_config()
        if self.workspace_bytes is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.workspace_bytes))
        if not self.tf32 and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        if plan.fp16_flag:
            config.set_flag(trt.BuilderFlag.FP16)
        opt_profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            dynamic = any(d < 0 for d in tuple(tensor.shape))
            if dynamic and tensor.name not in profile:
                raise BiRNNExportError(
                    f"trt: input {tensor.name!r} has dynamic dims {tuple(tensor.shape)} but the "
                    "graph spec does not mark it batch/seq; re-export the model"
                )
        for name, (low, opt, high) in profile.items():
            opt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(opt_profile)
        timing_path = self.cache / timing_cache_name(self.gpu_name, self.trt_version)
        stored = timing_path.read_bytes() if timing_path.is_file() else b""
        timing = config.create_timing_cache(stored)
        # set_timing_cache returns False for a cache from another GPU or TensorRT (the name
        # should prevent that) or a damaged file: start afresh rather than fail the build.
        if timing is None or not config.set_timing_cache(timing, ignore_mismatch=False):
            logger.warning("timing cache %s is unusable; starting a new one", timing_path)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        logger.info("building TensorRT engine for %s (%s)", self.path, plan)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineUnavailableError(
                f"trt: TensorRT failed to build an engine from {self.path} (see its log above)"
            )
        write_atomic(timing_path, bytes(config.get_timing_cache().serialize()))
        return bytes(serialized)

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        missing = [n for n in self._inputs if n not in feed]
        if missing:
            raise BiRNNExportError(
                f"trt: feed lacks inputs {missing}; the engine takes {self._inputs}"
            )
        device = torch.device("cuda", self.device)
        # The engine's device and stream are torch's current ones for the whole call, so the
        # copies, the allocations and the launch are ordered on one stream.
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            keep: list[Any] = []  # device buffers must outlive the launch
            for name in self._inputs:
                array = np.ascontiguousarray(feed[name], dtype=self._dtypes[name])
                tensor = torch.from_numpy(array).to(device)
                if not self._context.set_input_shape(name, tuple(array.shape)):
                    raise BiRNNExportError(
                        f"trt: input {name!r} shape {array.shape} is outside the engine's "
                        f"profile (batch {self.batch}, seq {self.seq}); pass wider batch=/seq= "
                        "ranges"
                    )
                self._context.set_tensor_address(name, tensor.data_ptr())
                keep.append(tensor)
            outputs: dict[str, Any] = {}
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise EngineUnavailableError(
                        f"trt: output {name!r} has unresolved shape {shape}"
                    )
                tensor = torch.empty(shape, dtype=getattr(torch, self._dtypes[name]), device=device)
                self._context.set_tensor_address(name, tensor.data_ptr())
                outputs[name] = tensor
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise EngineUnavailableError("trt: execute_async_v3 failed (see TensorRT's log)")
            self._stream.synchronize()
            return {name: t.cpu().numpy() for name, t in outputs.items()}

    def deactivate_impl(self) -> None:
        self._context = None
        self._engine = None
        self._stream = None

    def providers(self) -> list[str]:
        return [f"tensorrt-{self.trt_version}-{self.gpu_name}" if self.trt_version else "tensorrt"]
