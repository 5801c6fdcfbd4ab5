"""One runner contract for every inference engine.

A runner takes ``{input name: numpy array}`` and returns ``{output name: numpy array}``. It is a
context manager (``activate`` builds the session or engine, ``deactivate`` frees it) and times
each call. Subclasses implement ``activate_impl`` and ``infer_impl`` only. Heavy libraries
(onnxruntime, tensorrt) are imported inside the runner, so this module imports without them.

``unavailable_reason(engine)`` says, without building anything, whether an engine can run here
and if not exactly why (``None`` when it can).

Example:
    >>> with OrtRunner("model.onnx") as runner:  # doctest: +SKIP
    ...     outputs = runner.infer({"x": x, "lengths": lengths})

One cohesive module, over 600 lines: the torch and ONNX Runtime runners, the one runner
factory and engine availability (TensorRT's runner is in :mod:`birnn_export.trt`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from birnn_export._packing import any_order_packing
from birnn_export.base_runner import BaseRunner
from birnn_export.errors import BiRNNExportError, EngineError, EngineUnavailableError, UsageError
from birnn_export.spec import RECURRENT_OPS

if TYPE_CHECKING:
    from birnn_export.spec import GraphSpec

#: Engine names, as accepted by ``--engines`` and :func:`make_runner`.
ENGINES = ("torch", "ort-cpu", "ort-int8", "ort-cuda", "ort-trt", "trt", "trt-rtx")

_ORT_PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    # ONNX Runtime CPU on the graph's int8 form (birnn_export.quantize), quantized on activate.
    "ort-int8": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}


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

    On CUDA, TF32 is off in cuDNN (its recurrent kernels included: torch allows it there by
    default) and in matmuls while active, so fp32 compares strictly; the previous settings come
    back on :meth:`deactivate`.
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
        self._packing: Any = None
        self._saved_threads: int | None = None
        self._saved_tf32: tuple[bool, bool] | None = None
        self._modes: contextlib.ExitStack | None = None

    def activate_impl(self) -> None:
        import torch

        from birnn_export.conversion import modes_kept

        reason = self.unavailable_reason()
        if reason is not None:
            raise EngineUnavailableError(reason)
        model = self.model
        dtype = None if self.dtype is None else getattr(torch, self.dtype)
        tensors = [*model.parameters(), *model.buffers()]
        if any(
            t.device != torch.device(self.device)
            or (dtype is not None and t.is_floating_point() and t.dtype != dtype)
            for t in tensors
        ):
            # Module.to() works in place: copy so the caller's (reference) model is untouched.
            from birnn_export.conversion import copied

            model = copied(model).to(self.device)
            if dtype is not None:
                model = model.to(dtype)
        modes = contextlib.ExitStack()  # run in eval mode; the caller's modes come back
        modes.enter_context(modes_kept(self.model))
        try:
            model = model.eval()
            self._fn = torch.compile(model) if self.compile else model
            # Rows in any order, also for a model that packs with enforce_sorted=True.
            self._packing = any_order_packing(model)
        except BaseException:
            modes.close()
            raise
        self._modes = modes
        # Process-wide settings last: nothing after them can fail, so deactivate restores them.
        if self.threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        if self.device.startswith("cuda"):
            backends = torch.backends
            self._saved_tf32 = (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
            backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = False

    def deactivate_impl(self) -> None:
        import torch

        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
        if self._saved_tf32 is not None:
            backends = torch.backends
            backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = self._saved_tf32
            self._saved_tf32 = None
        if self._modes is not None:
            self._modes.close()
            self._modes = None
        self._fn = None

    @property
    def running(self) -> Any:
        """The module :meth:`infer` runs while active (the model, or its copy in ``dtype`` or on
        ``device``); ``None`` otherwise."""
        return self._fn

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from birnn_export.crf import flatten_returned

        args = []
        for name in self.input_names:
            tensor = torch.from_numpy(np.ascontiguousarray(feed[name])).to(self.device)
            if self.dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(getattr(torch, self.dtype))
            args.append(tensor)
        with torch.inference_mode(), self._packing:
            result = self._fn(*args)
            flat = flatten_returned(result)
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
        if len(flat) != len(self.output_names):
            raise EngineError(
                f"model returned {len(flat)} tensors, expected {len(self.output_names)} "
                f"({', '.join(self.output_names)})"
            )
        return {n: t.detach().cpu().numpy() for n, t in zip(self.output_names, flat, strict=True)}

    def providers(self) -> list[str]:
        return [f"torch-{self.device}{'-compiled' if self.compile else ''}"]

    def unavailable_reason(self) -> str | None:
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                return f"torch on {self.device}: no CUDA device visible to torch"
        return None


#: Values ``cudnn_conv_algo_search`` accepts (ONNX Runtime CUDA EP).
CUDNN_CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
#: Values ``arena_extend_strategy`` accepts (ONNX Runtime CUDA / TensorRT EP).
ARENA_EXTEND_STRATEGIES = ("kNextPowerOfTwo", "kSameAsRequested")


def cuda_provider_options(
    *,
    device_id: int = 0,
    cudnn_conv_algo_search: str = "EXHAUSTIVE",
    use_tf32: bool = False,
    gpu_mem_limit: int | None = None,
    arena_extend_strategy: str | None = None,
    do_copy_in_default_stream: bool = True,
) -> dict[str, str]:
    """Options for ``CUDAExecutionProvider`` as the strings ONNX Runtime parses.

    ``use_tf32`` is off by default, but it reaches only ONNX Runtime's matmuls and convolutions:
    its cuDNN recurrent kernels use cuDNN's default math, which allows TF32 on Ampere and newer
    GPUs. Only ``NVIDIA_TF32_OVERRIDE=0`` in the environment before CUDA loads forbids TF32
    there (and in TensorRT); the ``birnn-export`` command sets it unless it is already set.

    Example:
        >>> cuda_provider_options(device_id=1)["device_id"]
        '1'
    """
    if cudnn_conv_algo_search not in CUDNN_CONV_ALGO_SEARCH:
        raise UsageError(
            f"cudnn_conv_algo_search: expected one of {', '.join(CUDNN_CONV_ALGO_SEARCH)}, "
            f"got {cudnn_conv_algo_search!r}"
        )
    if device_id < 0:
        raise UsageError(f"device_id: expected a CUDA device index >= 0, got {device_id}")
    options = {
        "device_id": str(device_id),
        "cudnn_conv_algo_search": cudnn_conv_algo_search,
        "use_tf32": "1" if use_tf32 else "0",
        "do_copy_in_default_stream": "1" if do_copy_in_default_stream else "0",
    }
    if gpu_mem_limit is not None:
        options["gpu_mem_limit"] = str(int(gpu_mem_limit))
    if arena_extend_strategy is not None:
        if arena_extend_strategy not in ARENA_EXTEND_STRATEGIES:
            raise UsageError(
                f"arena_extend_strategy: expected one of {', '.join(ARENA_EXTEND_STRATEGIES)}, "
                f"got {arena_extend_strategy!r}"
            )
        options["arena_extend_strategy"] = arena_extend_strategy
    return options


def tf32_cache_folder() -> str:
    """``"strict-fp32"`` when ``NVIDIA_TF32_OVERRIDE=0`` forbids TF32, else ``"tf32-allowed"``:
    the sub-folder of the TensorRT EP's engine cache."""
    return "strict-fp32" if os.environ.get("NVIDIA_TF32_OVERRIDE") == "0" else "tf32-allowed"


def format_profile_shapes(profile: Mapping[str, Sequence[Sequence[int]]], which: int) -> str:
    """One of a profile's shapes (0 min, 1 opt, 2 max) in the TensorRT EP's string format,
    ``"x:1x1x10,lengths:1"`` (the format of trtexec's ``--minShapes``)."""
    return ",".join(
        f"{name}:{'x'.join(str(int(d)) for d in shapes[which])}" for name, shapes in profile.items()
    )


def tensorrt_provider_options(
    spec: GraphSpec | None = None,
    *,
    device_id: int = 0,
    fp16: bool | None = None,
    batch: Sequence[int] | None = None,
    seq: Sequence[int] | None = None,
    cache: str | os.PathLike[str] | None = None,
    engine_cache: bool = True,
    timing_cache: bool = True,
    max_workspace_size: int | None = None,
) -> dict[str, str]:
    """Options for ``TensorrtExecutionProvider`` as the strings ONNX Runtime parses.

    Args:
        spec: The graph's spec: gives the explicit profile (``trt_profile_min/opt/max_shapes``
            for every dynamic input) and, when ``fp16`` is ``None``, the precision.
        device_id: CUDA device index.
        fp16: ``trt_fp16_enable``; ``None``: on when the graph is fp16.
        batch: (min, opt, max) batch sizes of the profile; ``None``: the graph's declared
            ``batch_range``.
        seq: (min, opt, max) sequence lengths of the profile; ``None``: its ``seq_range``.
        cache: Cache root (default :func:`birnn_export.trt_plan.cache_dir`); the EP's engines and
            timing cache go under ``ort-trt/strict-fp32`` there (``ort-trt/tf32-allowed``
            unless ``NVIDIA_TF32_OVERRIDE=0``).
        engine_cache: ``trt_engine_cache_enable``.
        timing_cache: ``trt_timing_cache_enable``.
        max_workspace_size: ``trt_max_workspace_size`` in bytes.
    """
    from birnn_export.trt_plan import cache_dir, derive_profile

    if device_id < 0:
        raise UsageError(f"device_id: expected a CUDA device index >= 0, got {device_id}")
    if fp16 is None:
        fp16 = spec is not None and spec.dtype == "float16"
    options = {"device_id": str(device_id), "trt_fp16_enable": "True" if fp16 else "False"}
    # The EP names cached engines after the graph and profile only: keep engines built with and
    # without TF32 (NVIDIA_TF32_OVERRIDE) apart, so a strict fp32 run never reuses a TF32 one.
    directory = str(cache_dir(cache) / "ort-trt" / tf32_cache_folder())
    if engine_cache:
        options["trt_engine_cache_enable"] = "True"
        options["trt_engine_cache_path"] = directory
    if timing_cache:
        options["trt_timing_cache_enable"] = "True"
        options["trt_timing_cache_path"] = directory
    if max_workspace_size is not None:
        options["trt_max_workspace_size"] = str(int(max_workspace_size))
    if spec is not None:
        profile = derive_profile(spec, batch=batch, seq=seq)
        if profile:
            options["trt_profile_min_shapes"] = format_profile_shapes(profile, 0)
            options["trt_profile_opt_shapes"] = format_profile_shapes(profile, 1)
            options["trt_profile_max_shapes"] = format_profile_shapes(profile, 2)
    return options


class OrtRunner(BaseRunner):
    """ONNX Runtime with one execution provider; fails if that provider is not really active.

    Args:
        path: The ONNX file.
        engine: ``"ort-cpu"``, ``"ort-int8"`` (the CPU provider on the graph dynamically
            quantized to int8, unless it already is), ``"ort-cuda"`` or ``"ort-trt"``.
        threads: Intra-op threads (``None``: ONNX Runtime's default). Inter-op is 1.
        spinning: Whether idle intra-op threads spin waiting for work
            (``session.intra_op.allow_spinning``): ``None`` keeps ONNX Runtime's default (on).
            Spinning lowers latency at small batches and holds the cores between calls.
        provider_options: Options for the provider; ``None`` builds defaults with
            :func:`cuda_provider_options` / :func:`tensorrt_provider_options` (the latter from
            the graph's spec metadata, when the file has one).
        io_binding: Bind inputs and outputs on the provider's device (``OrtValue`` buffers,
            outputs copied to host after the run). ``None``: on for CUDA and TensorRT.
        device_id: CUDA device for the default provider options and device buffers.

    With IO binding, the binding is rebuilt on every call and the inputs are copied host ->
    device and the outputs device -> host inside :meth:`infer`: a GPU provider's
    :attr:`last_inference_time_s` (and so its bench timings) includes those transfers, while
    ``ort-cpu`` and torch on the CPU have no comparable copies.

    Attributes:
        session: The ``onnxruntime.InferenceSession`` while active.
        provider: The requested provider's ONNX Runtime name.
        placement: After :meth:`activate`, ``{provider: {op_type: node count}}``: where ONNX
            Runtime put each node (``None`` where this onnxruntime cannot tell, before 1.23).
        cpu_recurrent_nodes: Names of the LSTM/GRU/RNN nodes a GPU provider left to the CPU
            (e.g. a relu RNN on the CUDA EP): the provider is active, but these run slowly.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        engine: str = "ort-cpu",
        threads: int | None = None,
        provider_options: Mapping[str, Any] | None = None,
        io_binding: bool | None = None,
        device_id: int = 0,
        spinning: bool | None = None,
    ) -> None:
        super().__init__()
        if engine not in _ORT_PROVIDERS:
            raise UsageError(f"engine: expected one of {sorted(_ORT_PROVIDERS)}, got {engine!r}")
        self.engine = engine
        self.provider = _ORT_PROVIDERS[engine]
        self.path = str(path)
        self.threads = threads
        self.provider_options = None if provider_options is None else dict(provider_options)
        cpu = self.provider == "CPUExecutionProvider"
        self.io_binding = not cpu if io_binding is None else io_binding
        self.device_id = device_id
        self.spinning = spinning
        self.quantized: Any = None  # the QuantizeReport of ort-int8
        self._folder: Any = None
        self.session: Any = None
        self.placement: dict[str, dict[str, int]] | None = None
        self.cpu_recurrent_nodes: tuple[str, ...] = ()
        self._output_names: list[str] = []
        self._run_options: Any = None  # ONNX Runtime's RunOptions, set on activate

    def default_provider_options(self) -> dict[str, str]:
        """What ``provider_options=None`` means for this engine."""
        if self.engine == "ort-cuda":
            return cuda_provider_options(device_id=self.device_id)
        if self.engine == "ort-trt":
            return tensorrt_provider_options(_spec_or_none(self.path), device_id=self.device_id)
        return {}

    def activate_impl(self) -> None:
        reason = unavailable_reason(self.engine)
        if reason:
            raise EngineUnavailableError(reason)
        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry(_RECORD_ASSIGNMENT, "1")  # for self.placement
        if self.spinning is not None:
            flag = "1" if self.spinning else "0"
            options.add_session_config_entry("session.intra_op.allow_spinning", flag)
            options.add_session_config_entry("session.inter_op.allow_spinning", flag)
        path = self._int8_path() if self.engine == "ort-int8" else self.path
        provider_options = (
            self.default_provider_options()
            if self.provider_options is None
            else dict(self.provider_options)
        )
        providers: list[Any] = [(self.provider, provider_options)]
        available = ort.get_available_providers()
        if self.engine == "ort-trt" and "CUDAExecutionProvider" in available:
            # Nodes TensorRT does not take go to CUDA rather than CPU.
            providers.append(
                ("CUDAExecutionProvider", cuda_provider_options(device_id=self.device_id))
            )
        if self.provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")  # for nodes the provider does not take
        if self.engine == "ort-trt":
            for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
                if key in provider_options:
                    os.makedirs(provider_options[key], exist_ok=True)
        try:
            session = ort.InferenceSession(path, sess_options=options, providers=providers)
        except Exception as exc:
            if type(exc).__module__.startswith("onnxruntime"):
                text = ort_reason(exc)
                if _TOO_NEW.search(text):  # not the graph's fault: this runtime's (review44 F3)
                    raise EngineUnavailableError(
                        f"{self.engine}: onnxruntime {ort.__version__} cannot load {self.path}: "
                        f"{text}: {_TOO_NEW_HINT}"
                    ) from None
                raise EngineError(
                    f"{self.engine}: onnxruntime could not load {self.path}: {text}"
                ) from None
            raise
        active = session.get_providers()
        if self.provider not in active:
            # ONNX Runtime drops an unusable provider with only a warning: refuse to time CPU
            # under a GPU label.
            raise EngineUnavailableError(
                f"{self.engine}: onnxruntime did not activate {self.provider} (active: {active})"
            )
        self.session = session
        self._output_names = [o.name for o in session.get_outputs()]
        # a run that fails raises, with the node and its message: not also a log line of
        # ONNX Runtime's on stderr, one per failing case of a sweep (users64 F1)
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4
        assignment = _assignment(session)
        if assignment is not None:
            self.placement = placement_counts(assignment)
            if self.provider != "CPUExecutionProvider":
                self.cpu_recurrent_nodes = recurrent_nodes_on_cpu(assignment)

    def _int8_path(self) -> str:
        """The graph in its int8 form: as given if it already is, else quantized into a
        temporary folder kept while active."""
        import tempfile

        from birnn_export.quantize import INT8, quantize_int8, quantized_path

        spec = _spec_or_none(self.path)
        if spec is not None and spec.quantization == INT8:
            return self.path
        self._folder = tempfile.TemporaryDirectory(prefix="birnn-export-int8-")
        target = quantized_path(self._folder.name, self.path)
        self.quantized = quantize_int8(self.path, target)
        return str(target)

    def deactivate_impl(self) -> None:
        self.session = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.io_binding:
            return self._infer_bound(feed)
        names = self._output_names
        ran = self.session.run(names, dict(feed), self._run_options)
        return dict(zip(names, ran, strict=True))

    def _infer_bound(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """IOBinding: inputs copied into device ``OrtValue``s, outputs allocated on the device
        by ONNX Runtime and copied to host after the run."""
        import onnxruntime as ort

        device = "cpu" if self.provider == "CPUExecutionProvider" else "cuda"
        device_id = 0 if device == "cpu" else self.device_id
        binding = self.session.io_binding()
        values = []  # keep the device buffers alive until the run is over
        for name, array in feed.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, device_id)
            binding.bind_ortvalue_input(name, value)
            values.append(value)
        for name in self._output_names:
            binding.bind_output(name, device, device_id)
        self.session.run_with_iobinding(binding, self._run_options)
        return dict(zip(self._output_names, binding.copy_outputs_to_cpu(), strict=True))

    def unavailable_reason(self) -> str | None:
        return unavailable_reason(self.engine)

    def providers(self) -> list[str]:
        return list(self.session.get_providers()) if self.session is not None else []


_RECORD_ASSIGNMENT = "session.record_ep_graph_assignment_info"


#: ONNX Runtime's refusal of a graph newer than it: an opset past its own, or an IR version.
_TOO_NEW = re.compile(r"official support for domain \S+ is till opset|IR version", re.I)
_NEWEST_OPSET = re.compile(r"Current official support for domain \S+ is till opset \d+")
_TOO_NEW_HINT = (
    "upgrade onnxruntime, or export with a lower --opset (README, 'Which ONNX Runtime loads "
    "the graph')"
)


def ort_reason(exc: BaseException, limit: int = 400) -> str:
    """ONNX Runtime's message on one line, without the C++ source place and signature it
    starts with (``/onnxruntime_src/...h:46 void onnxruntime::...(...) Opset 22 is ...``),
    which took the 300 characters kept before the reason (review44 F3)."""
    text = " ".join(str(exc).split())
    text = re.sub(r"/onnxruntime_src/\S+:\d+ .*?\) (?=[A-Z])", "", text, count=1)
    newest = _NEWEST_OPSET.search(text)  # said last, after three sentences of disclaimer
    if newest:
        return f'"{newest[0]}"'
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def ort_refuses_opset(opset: int) -> str | None:
    """Why the installed ONNX Runtime cannot load graphs of ``opset`` (``None``: it can): a
    one-node graph of that opset and its lowest IR version is loaded, since each release runs
    opsets only up to its own (1.20: 21; 1.21: 22; 1.23: 23)."""
    import onnx
    import onnxruntime as ort

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    opsets = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(graph, opset_imports=opsets)
    model.ir_version = onnx.helper.find_min_ir_version_for(opsets)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own types: its message is the answer
        return f"onnxruntime {ort.__version__} here cannot load it: {ort_reason(exc)}"
    return None


def _assignment(session: Any) -> list[tuple[str, str, str]] | None:
    """``(provider, node name, op_type)`` for every node, or ``None`` where onnxruntime cannot
    report it (``get_provider_graph_assignment_info`` arrived in 1.23)."""
    get = getattr(session, "get_provider_graph_assignment_info", None)
    if get is None:
        return None
    try:
        return [(sub.ep_name, n.name, n.op_type) for sub in get() for n in sub.get_nodes()]
    except Exception:  # recording not supported by this build: placement stays unknown
        return None


def placement_counts(assignment: Sequence[tuple[str, str, str]]) -> dict[str, dict[str, int]]:
    """``{provider: {op_type: count}}`` from ``(provider, node, op_type)`` triples.

    Example:
        >>> placement_counts([("CUDAExecutionProvider", "l0", "LSTM"),
        ...                   ("CPUExecutionProvider", "s", "Shape")])
        {'CPUExecutionProvider': {'Shape': 1}, 'CUDAExecutionProvider': {'LSTM': 1}}
    """
    counts: dict[str, dict[str, int]] = {}
    for provider, _, op_type in assignment:
        ops = counts.setdefault(provider, {})
        ops[op_type] = ops.get(op_type, 0) + 1
    return {p: dict(sorted(ops.items())) for p, ops in sorted(counts.items())}


def recurrent_nodes_on_cpu(assignment: Sequence[tuple[str, str, str]]) -> tuple[str, ...]:
    """Names of the LSTM/GRU/RNN nodes assigned to ONNX Runtime's CPU provider."""
    return tuple(
        name
        for provider, name, op_type in assignment
        if provider == "CPUExecutionProvider" and op_type in RECURRENT_OPS
    )


def eager_dtype(model: Any, graph_dtype: str) -> str | None:
    """The dtype the ``"torch"`` engine runs ``model`` in beside a graph of ``graph_dtype``:
    float32 for a float16 graph (torch's float16 kernels are the GPU's) or for a model in
    float64 (``model.double()``, exported in float32: it failed on the graph's inputs, review30
    M4), else the model's own (``None``)."""
    import torch

    doubled = any(p.dtype == torch.float64 for p in model.parameters())
    return "float32" if graph_dtype == "float16" or doubled else None


def make_runner(
    engine: str,
    onnx_path: str | os.PathLike[str] | None = None,
    *,
    model: Any = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    threads: int | None = None,
    device: str | None = None,
    compile: bool = False,
    profile_batch: tuple[int, int, int] | None = None,
    profile_seq: tuple[int, int, int] | None = None,
    spinning: bool | None = None,
    dtype: str | None = None,
    isolate: bool = False,
) -> BaseRunner:
    """A runner for any of :data:`ENGINES`, not yet activated: the one factory.

    Args:
        engine: One of :data:`ENGINES`.
        onnx_path: The ONNX file (every engine but ``"torch"``).
        model: The eager module (``"torch"`` only).
        input_names: Feed keys in ``forward``'s order (``"torch"``; default: the spec's inputs
            when ``onnx_path`` carries one).
        output_names: Names of the flattened outputs (``"torch"``; same default).
        threads: CPU threads (torch, ort-cpu; also ort's intra-op threads on GPU providers).
        device: ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` for torch (default ``"cpu"``); for the
            GPU engines the CUDA device (``"cuda:N"``, default ``cuda:0``).
        compile: ``torch.compile`` the model (``"torch"`` only).
        profile_batch: (min, opt, max) batch sizes of the TensorRT optimisation profile
            (``"trt"``, ``"trt-rtx"`` and ``"ort-trt"``; ignored by the other engines).
            ``None``: the graph's declared ``batch_range`` (set at export; default (1, 8, 32)).
            Inputs outside the profile fail at run time, so cover every batch size you run.
        profile_seq: (min, opt, max) sequence lengths of that profile, likewise (``seq_range``,
            default (1, 64, 256)).
        spinning: ONNX Runtime engines: idle threads spin (``True``), sleep (``False``), or
            ONNX Runtime's default (``None``: spin).
        dtype: ``"torch"`` only: run the model in this dtype (``"float64"`` for a reference).
        isolate: Every engine but ``"torch"``: run it in a child process
            (:class:`~birnn_export._isolation.IsolatedRunner`), so a crash in the engine is an
            :class:`~birnn_export.errors.EngineError`, not a dead process.

    Example:
        >>> with make_runner("ort-cpu", "model.onnx", threads=2) as runner:  # doctest: +SKIP
        ...     outputs = runner.infer(feed)
    """
    if engine not in ENGINES:
        raise UsageError(f"engine: unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "torch":
        if model is None:
            raise UsageError("engine 'torch' needs model= (the eager PyTorch module)")
        if input_names is None or output_names is None:
            spec = _spec_or_none(onnx_path) if onnx_path is not None else None
            if spec is None:
                raise UsageError(
                    "engine 'torch' needs input_names= and output_names= (or an onnx_path whose "
                    "birnn_export.spec metadata names them)"
                )
            input_names = input_names or [t.name for t in spec.inputs]
            output_names = output_names or [t.name for t in spec.outputs]
        return TorchRunner(
            model,
            list(input_names),
            list(output_names),
            device=device or "cpu",
            compile=compile,
            threads=threads,
            dtype=dtype,
        )
    if onnx_path is None:
        raise UsageError(f"engine {engine!r} needs onnx_path= (the exported ONNX file)")
    if compile:
        raise UsageError(f"compile=True applies to engine 'torch' only, not {engine!r}")
    if isolate:
        from birnn_export._isolation import IsolatedRunner

        factory = functools.partial(
            make_runner,
            engine,
            str(onnx_path),
            threads=threads,
            device=device,
            profile_batch=profile_batch,
            profile_seq=profile_seq,
            spinning=spinning,
        )
        return IsolatedRunner(engine, factory)
    device_id = _cuda_index(device, engine)
    if engine in ("trt", "trt-rtx", "ort-trt"):
        from birnn_export.trt import LIBRARIES, TrtRunner

        if engine in LIBRARIES:
            return TrtRunner(
                onnx_path,
                library=LIBRARIES[engine],
                device=device_id,
                batch=profile_batch,
                seq=profile_seq,
            )
        if profile_batch is not None or profile_seq is not None:
            options = tensorrt_provider_options(
                _spec_or_none(onnx_path), device_id=device_id, batch=profile_batch, seq=profile_seq
            )
            return OrtRunner(
                onnx_path,
                engine=engine,
                threads=threads,
                device_id=device_id,
                provider_options=options,
                spinning=spinning,
            )
    return OrtRunner(
        onnx_path, engine=engine, threads=threads, device_id=device_id, spinning=spinning
    )


def _cuda_index(device: str | None, engine: str) -> int:
    if device is None or device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    if device == "cpu" and engine in ("ort-cpu", "ort-int8"):
        return 0
    raise UsageError(f"device: engine {engine!r} expects 'cuda' or 'cuda:N', got {device!r}")


def _spec_or_none(path: str | os.PathLike[str]) -> GraphSpec | None:
    """The file's :class:`GraphSpec`, or ``None`` if it has no birnn-export metadata."""
    from birnn_export.spec import GraphSpec

    try:
        return GraphSpec.from_onnx(str(path))
    except BiRNNExportError:
        return None


def unavailable_reason(engine: str) -> str | None:
    """``None`` if ``engine`` can run here, otherwise the exact reason it cannot."""
    if engine not in ENGINES:
        return f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}"
    if engine == "torch":
        return None
    if engine in _ORT_PROVIDERS:
        warn_if_both_onnxruntimes()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return f"{engine}: onnxruntime is not importable ({exc}); pip install onnxruntime"
        from birnn_export.base_runner import no_nvidia_gpu

        provider = _ORT_PROVIDERS[engine]
        if provider not in ort.get_available_providers():
            hint = "pip install onnxruntime-gpu (replacing onnxruntime)"
            return (
                f"{engine}: {no_nvidia_gpu()}this onnxruntime build has no {provider} "
                f"(available: {', '.join(ort.get_available_providers())}); {hint}"
            )
        if provider != "CPUExecutionProvider" and no_nvidia_gpu():
            # onnxruntime-gpu without a GPU: a session would drop the provider after pages of
            # warnings about CUDA libraries, which are not what is missing (review39 F1)
            return f"{engine}: {no_nvidia_gpu()}this onnxruntime build's {provider} runs on one"
        return None
    from birnn_export import trt

    return trt.unavailable_reason(trt.LIBRARIES[engine])


def installed_onnxruntimes() -> list[str]:
    """Distributions that provide the ``onnxruntime`` module (normally exactly one)."""
    from importlib import metadata

    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        found.append(dist)
    return found


_warned_both = False


def warn_if_both_onnxruntimes() -> None:
    """Warn once when two onnxruntime builds are installed: they overwrite the same module, and
    whichever was installed last decides which providers exist."""
    global _warned_both
    found = installed_onnxruntimes()
    if len(found) > 1 and not _warned_both:
        _warned_both = True
        import warnings

        warnings.warn(
            f"several onnxruntime builds are installed ({', '.join(found)}) and share one module; "
            "keep one: pip uninstall -y " + " ".join(found) + " && pip install onnxruntime-gpu "
            "(GPU) or onnxruntime (CPU)",
            RuntimeWarning,
            stacklevel=2,
        )
