"""TensorRT: parse and build an exported ONNX graph into an engine, cache it, run it.

Two Python packages provide TensorRT's API, and both are accepted wherever the project needs
"a TensorRT":

* ``tensorrt`` (10.x, 11.x), the data-centre library: engine ``"trt"``. Building and running
  both need an NVIDIA GPU.
* ``tensorrt_rtx`` (TensorRT for RTX, ``pip install tensorrt-rtx``): engine ``"trt-rtx"``. Its
  builder runs ahead of time on a CPU-only machine (engines for compute capability 8.0, 8.6, 8.9
  and 12.x, portable across those GPUs); running an engine needs an RTX-class GPU. Its ONNX
  parser is the same onnx-tensorrt importer as TensorRT 10/11's, so its parse verdict is
  TensorRT's.

This is the only module that imports either, and only inside functions, so the package imports
(and its tests run) without them. What needs neither TensorRT nor a GPU (profiles, the engine
cache's keys and folder, precision flags) is :mod:`birnn_export.trt_plan`.

:func:`build_engine` parses and builds (no GPU needed with ``tensorrt_rtx``) and returns an
:class:`EngineBuild` saying what the parser and builder said. :class:`TrtRunner` follows the
runner contract of :mod:`birnn_export.base_runner`; device memory comes from torch CUDA tensors, so
there is no pycuda / cuda-python dependency.

Example:
    >>> build = build_engine("model.onnx", library="tensorrt_rtx")  # doctest: +SKIP
    >>> build.ok, build.engine_bytes, build.seconds  # doctest: +SKIP
    >>> with TrtRunner("model.onnx") as runner:  # doctest: +SKIP
    ...     outputs = runner.infer({"x": x, "lengths": lengths})

One cohesive module by design, over 600 lines: everything that touches TensorRT (both
packages, building, running) lives here and nowhere else.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birnn_export._files import file_sha256, write_atomic
from birnn_export.base_runner import BaseRunner
from birnn_export.errors import BiRNNExportError, EngineBuildError, EngineUnavailableError
from birnn_export.spec import GraphSpec, check_range
from birnn_export.trt_plan import (
    INSTALL_HINTS,
    Profile,
    Shape,
    build_plan,
    cache_dir,
    cache_key,
    derive_profile,
    generic_profile,
    major_version,
    timing_cache_name,
)

logger = logging.getLogger(__name__)


#: The Python package each TensorRT engine runs on.
LIBRARIES = {"trt": "tensorrt", "trt-rtx": "tensorrt_rtx"}
#: Search order when any TensorRT will do (:func:`find_library`): the data-centre library is
#: what ``trt`` and ONNX Runtime's TensorRT EP run, so its verdict comes first.
SEARCH_ORDER = ("tensorrt", "tensorrt_rtx")


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


def numpy_dtype(trt_dtype_name: str) -> str:
    """numpy / torch dtype name of a TensorRT ``DataType`` member (``"HALF"`` -> ``"float16"``)."""
    try:
        return _DTYPES[trt_dtype_name]
    except KeyError:
        raise EngineUnavailableError(
            f"trt: engine tensor type {trt_dtype_name} has no numpy equivalent"
        ) from None


def compute_capabilities(module: Any) -> dict[tuple[int, int], Any]:
    """TensorRT-RTX's build targets: ``{(major, minor): ComputeCapability member}`` from the
    module's ``ComputeCapability`` enum (``SM80`` -> (8, 0), ``SM120`` -> (12, 0))."""
    members = getattr(getattr(module, "ComputeCapability", None), "__members__", {})
    targets = {}
    for name, member in members.items():
        match = re.fullmatch(r"SM(\d)(\d)|SM(\d\d)(\d)", name)
        if match:
            major, minor = (match.group(1), match.group(2)) if match.group(1) else match.group(3, 4)
            targets[int(major), int(minor)] = member
    return dict(sorted(targets.items()))


#: Compute capabilities TensorRT-RTX engines target unless told otherwise (its docs: 8.0, 8.6,
#: 8.9, 12.0 and later; Turing, 7.5, only when asked for).
RTX_DEFAULT_MIN_CAPABILITY = (8, 0)


# -- the libraries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorRTLibrary:
    """An imported TensorRT package: ``name`` (``"tensorrt"`` or ``"tensorrt_rtx"``), its
    version and the module."""

    name: str
    version: str
    module: Any = field(repr=False, compare=False)

    @property
    def rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def engine(self) -> str:
        """The engine name that runs on it: ``"trt"`` or ``"trt-rtx"``."""
        return "trt-rtx" if self.rtx else "trt"

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def import_library(name: str) -> TensorRTLibrary:
    """Import ``tensorrt`` or ``tensorrt_rtx``.

    Raises:
        EngineUnavailableError: not installed, unimportable, or too old; the message says which
            and how to install it.
    """
    import importlib

    if name not in INSTALL_HINTS:
        raise BiRNNExportError(f"library: expected one of {', '.join(INSTALL_HINTS)}, got {name!r}")
    engine = "trt-rtx" if name == "tensorrt_rtx" else "trt"
    hint = INSTALL_HINTS[name]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError:
        raise EngineUnavailableError(f"{engine}: {name} not installed: {hint}") from None
    except (ImportError, OSError) as exc:  # a wheel whose shared libraries are missing
        raise EngineUnavailableError(
            f"{engine}: {name} is installed but failed to import ({exc}); reinstall: {hint}"
        ) from None
    version = str(getattr(module, "__version__", "0"))
    if name == "tensorrt" and major_version(version) < 10:
        raise EngineUnavailableError(
            f"trt: TensorRT {version} is too old: need 10 or newer; {hint}"
        )
    return TensorRTLibrary(name, version, module)


def library_reason(name: str) -> str | None:
    """``None`` if ``name`` imports, otherwise why not (:func:`import_library`'s message)."""
    try:
        import_library(name)
    except EngineUnavailableError as exc:
        return str(exc)
    return None


def find_library(names: Sequence[str] = SEARCH_ORDER) -> TensorRTLibrary | None:
    """The first of ``names`` that imports, or ``None`` when none does."""
    for name in names:
        try:
            return import_library(name)
        except EngineUnavailableError:
            continue
    return None


def unavailable_reason(library: str = "tensorrt", *, device: int = 0) -> str | None:
    """``None`` if engines of ``library`` can run here, otherwise the exact reason they cannot.

    ``tensorrt`` needs a CUDA device; ``tensorrt_rtx`` a CUDA device of a compute capability
    its engines target (RTX-class: 7.5, 8.0, 8.6, 8.9, 12.x; not 9.0 or 10.x data-centre GPUs).
    Building a TensorRT-RTX engine needs no GPU: see :func:`build_engine`.
    """
    try:
        lib = import_library(library)
    except EngineUnavailableError as exc:
        from birnn_export.base_runner import no_nvidia_gpu

        engine, _, why = str(exc).partition(": ")
        gpu = no_nvidia_gpu() if library == "tensorrt" else ""  # TensorRT-RTX builds without
        return f"{engine}: {gpu}{why}" if gpu and why else str(exc)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return f"{lib.engine}: torch is needed for device memory; pip install torch"
    if not torch.cuda.is_available():
        return f"{lib.engine}: no CUDA device (torch.cuda.is_available() is False)"
    if device >= torch.cuda.device_count():
        return f"{lib.engine}: no CUDA device {device} (torch sees {torch.cuda.device_count()})"
    if lib.rtx:
        capability = tuple(torch.cuda.get_device_capability(device))
        targets = compute_capabilities(lib.module)
        if capability not in targets:
            listed = ", ".join(f"{a}.{b}" for a, b in targets)
            return (
                f"trt-rtx: {torch.cuda.get_device_name(device)} has compute capability "
                f"{capability[0]}.{capability[1]}; {lib} engines run on RTX-class GPUs of "
                f"compute capability {listed}"
            )
    return None


# -- parse and build -------------------------------------------------------------------------


@dataclass(frozen=True)
class ParserIssue:
    """One error of TensorRT's ONNX parser: the node (name, or op when unnamed), its op and
    what the parser said (its description and the layer error behind it, in one line)."""

    node: str
    op: str
    message: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op}): {self.message}" if self.op else self.message


@dataclass(frozen=True)
class EngineBuild:
    """What TensorRT's parser and builder said of one ONNX graph.

    ``ok`` when the graph parsed and an engine was built. ``seconds`` is the builder's time
    (parsing excluded), ``engine_bytes`` the serialized engine's size; ``serialized`` holds the
    engine itself (left out of ``repr`` and :meth:`to_dict`). ``guessed_profile``: the graph
    declares no serving ranges (not written by birnn-export), so the profile is
    :func:`generic_profile`'s guess and a failed build may be the guess's fault.
    """

    library: str
    version: str
    source: str
    profile: Profile
    strongly_typed: bool
    parser_issues: tuple[ParserIssue, ...] = ()
    build_error: str | None = None
    seconds: float | None = None
    engine_bytes: int | None = None
    guessed_profile: bool = False
    serialized: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def parsed(self) -> bool:
        return not self.parser_issues

    @property
    def ok(self) -> bool:
        return self.parsed and self.build_error is None and self.engine_bytes is not None

    @property
    def checked_with(self) -> str:
        """``"tensorrt_rtx 1.7.1.116"``."""
        return f"{self.library} {self.version}"

    def summary(self) -> str:
        if not self.parsed:
            issues = "; ".join(str(i) for i in self.parser_issues)
            return f"{self.checked_with}'s ONNX parser rejected {self.source}: {issues}"
        if not self.ok:
            return (
                f"{self.checked_with} parsed {self.source} but failed to build: {self.build_error}"
            )
        return (
            f"{self.checked_with} parsed {self.source} and built a "
            f"{self.engine_bytes / 1e6:.1f} MB engine in {self.seconds:.2f} s"
        )

    def raise_for_failure(self) -> None:
        """Raise :class:`~birnn_export.errors.EngineBuildError` (exit 1) unless :attr:`ok`."""
        if not self.ok:
            raise EngineBuildError(
                f"{self.summary()}; run 'birnn-export check {self.source} --target tensorrt' "
                "for the rules behind it"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "library": self.library,
            "version": self.version,
            "source": self.source,
            "profile": {k: [list(s) for s in v] for k, v in self.profile.items()},
            "strongly_typed": self.strongly_typed,
            "parsed": self.parsed,
            "built": self.ok,
            "parser_issues": [
                {"node": i.node, "op": i.op, "message": i.message} for i in self.parser_issues
            ],
            "build_error": self.build_error,
            "seconds": self.seconds,
            "engine_bytes": self.engine_bytes,
            "guessed_profile": self.guessed_profile,
        }


@contextlib.contextmanager
def _native_stderr_logged() -> Iterator[None]:
    """While inside, what native code writes to the process's stderr (file descriptor 2) goes
    to the debug log: TensorRT's Myelin compiler prints its failures there ("Internal Error:
    MyelinCheckException: ...") besides telling the logger, whose errors the build's result
    already carries, and the line landed above the command's own output."""
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 to redirect: leave it
        saved = None
    if saved is None:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                logger.debug("TensorRT wrote to stderr: %s", text)


def _pinned(profile: Profile, inputs: Mapping[str, tuple[int, ...]]) -> Profile:
    """``profile`` with each dim the parsed network declares static at that size in all three
    shapes, and inputs static throughout left out: a graph another tool made static after
    export (``onnxsim --overwrite-input-shape``) keeps the spec's ranges, which TensorRT refuses
    for static dims."""
    pinned: Profile = {}
    for name, shapes in profile.items():
        shape = inputs.get(name)
        if shape is None or len(shape) != len(shapes[0]):
            pinned[name] = shapes
        elif any(d < 0 for d in shape):
            fix = tuple(
                tuple(s if d < 0 else d for s, d in zip(one, shape, strict=True)) for one in shapes
            )
            pinned[name] = (fix[0], fix[1], fix[2])
    return pinned


def _log_class(module: Any) -> Any:
    """A TensorRT logger that keeps every message (the parser and builder explain failures
    there) and passes them to Python logging at debug level."""
    base = getattr(module, "ILogger", None)

    class _Log(base if base is not None else object):  # type: ignore[misc]
        def __init__(self) -> None:
            if base is not None:
                base.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity: Any, message: str) -> None:
            level = getattr(severity, "name", str(severity))
            self.messages.append((level, message))
            logger.debug("TensorRT %s: %s", level, message)

        def errors(self, since: int = 0) -> list[str]:
            return [m for level, m in self.messages[since:] if level in _ERRORS]

    return _Log


_ERRORS = ("ERROR", "INTERNAL_ERROR")


def _progress_monitor(module: Any, cancel: threading.Event) -> Any:
    """A TensorRT progress monitor that cancels the build at its next step once ``cancel`` is
    set (:func:`_waited_for`); ``None`` where the library has no progress monitors."""
    base = getattr(module, "IProgressMonitor", None)
    if base is None:
        return None

    class _Progress(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)

        def phase_start(self, *args: Any) -> None:
            pass

        def phase_finish(self, *args: Any) -> None:
            pass

        def step_complete(self, *args: Any) -> bool:
            return not cancel.is_set()

    return _Progress()


def _without_noise(text: str) -> str:
    """One line from a TensorRT message: its lines joined, without the CUDA-runtime errors a
    machine without a (new enough) GPU driver adds to every failure, and source paths."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    kept = [line for line in lines if line and "cudaError 35" not in line]
    joined = "; ".join(kept or lines)
    return re.sub(r" In \w+ at /_src/\S+", "", joined)


#: The name of the thread TensorRT's builder runs in (:func:`_waited_for`).
BUILD_THREAD = "tensorrt-build"
#: Seconds the process waits at exit for an interrupted build to stop (:func:`_waited_for`).
BUILD_STOP_WAIT_S = 10.0
#: Set while the main thread waits on the builder's thread (:func:`_waited_for`).
_MAIN_WAITS = threading.Event()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Around a call into TensorRT: collect garbage now and none during the call, and hold
    Ctrl-C until it returns (but while the main thread waits on the builder's own thread,
    :func:`_waited_for`, outside any TensorRT call: then at once).

    Freeing an old TensorRT object (a builder left in a reference cycle) from inside one of
    TensorRT's own callbacks into Python (the logger) takes a lock that call already holds, and
    the process hangs (seen with TensorRT-RTX 1.7 in ``Builder()``). A KeyboardInterrupt raised
    inside such a callback is caught and logged by TensorRT, so Ctrl-C (or the CLI's SIGTERM)
    would be lost: it is recorded instead and handed to its own handler when TensorRT returns
    (SIGTERM where both came, so a ``timeout`` after a Ctrl-C still ends the process by SIGTERM).
    """
    import signal
    import threading

    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    interrupted: list[int] = []
    previous: dict[int, Any] = {}

    def hold(signum: int, frame: Any) -> None:
        if _MAIN_WAITS.is_set():  # waiting on the builder's thread, not inside TensorRT
            previous[signum](signum, frame)
        else:
            interrupted.append(signum)

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            if callable(signal.getsignal(signum)):  # a Python handler, which could raise
                previous[signum] = signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if enabled:
            gc.enable()
    if interrupted:  # a termination request outranks a Ctrl-C held before it
        signum = signal.SIGTERM if signal.SIGTERM in interrupted else interrupted[0]
        previous[signum](signum, None)


def _without_gc(func: Any) -> Any:
    """Run ``func`` inside :func:`gc_paused`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with gc_paused():
            return func(*args, **kwargs)

    return wrapper


@_without_gc
def build_engine(
    path: str | os.PathLike[str],
    *,
    library: str | TensorRTLibrary = "tensorrt_rtx",
    spec: GraphSpec | None = None,
    batch: Sequence[int] | None = None,
    seq: Sequence[int] | None = None,
    tf32: bool = False,
    workspace_bytes: int | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    compute_capability: tuple[int, int] | None = None,
) -> EngineBuild:
    """Parse ``path`` with TensorRT's ONNX parser and build a serialized engine.

    Parser errors and builder failures are reported in the returned :class:`EngineBuild`, not
    raised (``build.raise_for_failure()`` raises them). With ``tensorrt_rtx`` no GPU is needed.

    Args:
        path: The ONNX file.
        library: ``"tensorrt"``, ``"tensorrt_rtx"`` or an imported :class:`TensorRTLibrary`.
        spec: The graph's spec (default: read from the file; a graph without one gets
            :func:`generic_profile`).
        batch: (min, opt, max) batch sizes of the profile; ``None``: the graph's declared range.
        seq: (min, opt, max) sequence lengths, likewise.
        tf32: Allow TF32 in fp32 layers (cleared by default).
        workspace_bytes: Builder workspace limit (``None``: TensorRT's default).
        timing_cache: A timing-cache file to start from and save to (``tensorrt`` only:
            TensorRT-RTX's timing-cache calls are no-ops, and using one makes its ahead-of-time
            build look for a GPU).
        compute_capability: ``tensorrt_rtx`` only: build for this one GPU generation (e.g.
            ``(7, 5)`` for Turing) instead of the default targets.

    Raises:
        EngineUnavailableError: the library is not importable.
        BiRNNExportError: a dynamic input the spec does not describe; a bad range.
    """
    from birnn_export.spec import load_onnx

    lib = library if isinstance(library, TensorRTLibrary) else import_library(library)
    trt = lib.module
    source = str(path)
    if not os.path.isfile(source):
        raise BiRNNExportError(f"{source}: no such ONNX file")
    proto = load_onnx(source)
    if spec is None:
        try:
            spec = GraphSpec.from_onnx(proto)
        except BiRNNExportError:
            spec = None  # not written by birnn-export: a generic profile below
    log = _log_class(trt)()
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    dtype = spec.dtype if spec is not None else "float32"
    plan = build_plan(lib.version, dtype, has_strongly_typed=flag is not None, library=lib.name)

    def failed(message: str, profile: Profile | None = None) -> EngineBuild:
        return EngineBuild(
            lib.name,
            lib.version,
            source,
            profile or {},
            plan.strongly_typed,
            build_error=message,
            guessed_profile=spec is None,
        )

    try:
        builder = trt.Builder(log)
    except Exception as exc:  # the data-centre library without a GPU: CUDA initialisation
        return failed(f"TensorRT could not create a builder ({_without_noise(str(exc))})")
    if builder is None:
        return failed("TensorRT could not create a builder: " + "; ".join(log.errors()))
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(source):
        issues = tuple(_parser_issue(parser.get_error(i)) for i in range(parser.num_errors))
        return EngineBuild(
            lib.name,
            lib.version,
            source,
            {},
            plan.strongly_typed,
            parser_issues=issues or (ParserIssue("graph", "", "; ".join(log.errors())),),
        )
    inputs = {
        network.get_input(i).name: tuple(network.get_input(i).shape)
        for i in range(network.num_inputs)
    }
    if spec is not None:
        profile = _pinned(derive_profile(spec, batch=batch, seq=seq), inputs)
        for name, shape in inputs.items():
            if any(d < 0 for d in shape) and name not in profile:
                raise BiRNNExportError(
                    f"trt: input {name!r} has dynamic dims {shape} but the graph spec does not "
                    "mark it batch/seq; re-export the model"
                )
    else:
        profile = generic_profile(_onnx_dims(proto, inputs), batch=batch, seq=seq)
    config = builder.create_builder_config()
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if lib.rtx and compute_capability is not None:
        targets = compute_capabilities(trt)
        if tuple(compute_capability) not in targets:
            raise BiRNNExportError(
                f"compute_capability: {lib} builds for {sorted(targets)}, not "
                f"{tuple(compute_capability)}"
            )
        config.num_compute_capabilities = 1
        config.set_compute_capability(targets[tuple(compute_capability)], 0)
    if profile:
        opt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.items():
            opt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(opt_profile)
    timing_path = Path(timing_cache) if timing_cache is not None and not lib.rtx else None
    if timing_path is not None:
        stored = timing_path.read_bytes() if timing_path.is_file() else b""
        timing = config.create_timing_cache(stored)
        # set_timing_cache returns False for a cache from another GPU or TensorRT (the name
        # should prevent that) or a damaged file: start afresh rather than fail the build.
        if timing is None or not config.set_timing_cache(timing, ignore_mismatch=False):
            logger.warning("timing cache %s is unusable; starting a new one", timing_path)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    logger.info("building a %s engine for %s (%s)", lib, source, plan)
    before = len(log.messages)
    start = time.perf_counter()
    cancel = threading.Event()
    monitor = _progress_monitor(trt, cancel)
    if monitor is not None and hasattr(config, "progress_monitor"):
        config.progress_monitor = monitor  # kept alive by the config
    with _native_stderr_logged():
        serialized = _waited_for(lambda: builder.build_serialized_network(network, config), cancel)
    seconds = time.perf_counter() - start
    if serialized is None:
        errors = [_without_noise(m) for m in log.errors(before)]
        return failed("; ".join(e for e in errors if e) or "no message from TensorRT", profile)
    if timing_path is not None:
        write_atomic(timing_path, bytes(config.get_timing_cache().serialize()))
    blob = bytes(serialized)
    return EngineBuild(
        lib.name,
        lib.version,
        source,
        profile,
        plan.strongly_typed,
        seconds=seconds,
        engine_bytes=len(blob),
        guessed_profile=spec is None,
        serialized=blob,
    )


def _wait_at_exit(finished: threading.Event) -> None:
    """Wait up to :data:`BUILD_STOP_WAIT_S` for an interrupted build to stop, at exit; a second
    Ctrl-C ends the wait and the process by SIGINT (the CLI ignores signals once its work is
    over: review42 R7, a build that never stopped held the process 10 s)."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    finished.wait(BUILD_STOP_WAIT_S)


def _waited_for(call: Callable[[], Any], cancel: threading.Event | None = None) -> Any:
    """``call()`` run in a daemon thread and waited for here. TensorRT's builder works without
    the GIL, but Python runs a signal's handler only in the main thread, between bytecodes:
    SIGTERM (``timeout``, a cancelled CI job) and Ctrl-C went unanswered until a build ended,
    or for ever where the builder hung (users34: under ``ulimit -v``). Waiting here, the main
    thread is in no TensorRT call, so :func:`gc_paused` hands it a signal at once.

    The interrupted build is then cancelled (``cancel`` set: :func:`_progress_monitor` stops it
    at its next step, within about 1.5 s here) and the process waits for it at exit, up to
    :data:`BUILD_STOP_WAIT_S`: a builder still calling TensorRT's logger back into Python while
    the interpreter shuts down is ended by ``pthread_exit``, which TensorRT's own handler turns
    into an abort (review41 F2: ``FATAL: exception not rethrown``, exit 134 after Ctrl-C in 4 of
    10 runs). The wait is on an event the thread sets, not ``Thread.join``: an interrupted join
    marks the thread ended while it still runs (CPython 3.11), and a later join returns at once.
    """
    done: list[tuple[bool, Any]] = []
    finished = threading.Event()

    def run() -> None:
        try:
            done.append((True, call()))
        except BaseException as exc:  # handed to the waiting thread
            done.append((False, exc))
        finally:
            finished.set()

    thread = threading.Thread(target=run, name=BUILD_THREAD, daemon=True)
    main = threading.current_thread() is threading.main_thread()
    try:
        if main:
            _MAIN_WAITS.set()  # a signal's handler now runs at once (gc_paused)
        thread.start()
        while not finished.wait(0.1):
            pass
    except BaseException:  # an interrupt: the build is stopped and outlived by no interpreter
        if cancel is not None:
            cancel.set()
        if thread.is_alive():  # not a thread that could not start (review42 R5)
            atexit.register(_wait_at_exit, finished)
        raise
    finally:
        if main:
            _MAIN_WAITS.clear()
    ok, value = done[0]
    if not ok:
        raise value
    return value


def _onnx_dims(proto: Any, inputs: Mapping[str, Shape]) -> dict[str, list[int | str | None]]:
    """The ONNX dims (int, dim_param or None) of the network's inputs."""
    declared = {}
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        declared[value.name] = [
            int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None) for d in dims
        ]
    return {
        name: declared.get(name) or [d if d >= 0 else None for d in shape]
        for name, shape in inputs.items()
    }


def _parser_issue(error: Any) -> ParserIssue:
    """A :class:`ParserIssue` from an ``IParserError`` (node name and op where the binding
    has them: TensorRT 10.x and TensorRT-RTX do)."""

    def call(name: str) -> str:
        method = getattr(error, name, None)
        try:
            return str(method()) if method is not None else ""
        except Exception:  # an older binding without the field
            return ""

    op, name = call("node_operator"), call("node_name")
    message = _without_noise(call("desc"))
    # The description starts "Invalid Node - <name>": the node is named separately.
    message = re.sub(rf"^Invalid Node - {re.escape(name)};\s*", "", message) if name else message
    if message.strip().lower() in ("", "false") and call("func"):  # a bare assertion's text
        message = f"the parser's check {call('func')} failed"
    return ParserIssue(name or op or "graph", op, message)


# -- runner -------------------------------------------------------------------------------------


class TrtRunner(BaseRunner):
    """A TensorRT engine built from an ONNX file, cached on disk.

    Args:
        path: The ONNX file (written by birnn-export, so it carries its :class:`GraphSpec`).
        library: ``"tensorrt"`` (engine ``trt``) or ``"tensorrt_rtx"`` (engine ``trt-rtx``).
        spec: Override the spec read from the file's metadata.
        batch: (min, opt, max) batch sizes of the optimisation profile; ``None``: the ranges
            the graph declares (see :func:`derive_profile`).
        seq: (min, opt, max) sequence lengths of the optimisation profile; likewise.
        cache: Engine / timing-cache directory (default: see :func:`cache_dir`).
        tf32: Allow TF32 in fp32 layers (off by default so fp32 compares strictly).
        workspace_bytes: Builder workspace limit (``None``: TensorRT's default).
        device: CUDA device index.
        rebuild: Ignore a cached engine and build again.

    :meth:`build` needs no GPU with ``tensorrt_rtx`` (ahead-of-time build); :meth:`activate`
    builds (or loads the cached engine), then deserializes it on the GPU.

    Attributes:
        engine_path: Where the serialized engine is (after :meth:`build`).
        cache_hit: Whether the engine came from the cache instead of being built.
        build_report: The :class:`EngineBuild` of the last build (``None`` after a cache hit).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        library: str = "tensorrt",
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
        if library not in INSTALL_HINTS:
            raise BiRNNExportError(
                f"library: expected one of {', '.join(INSTALL_HINTS)}, got {library!r}"
            )
        self.library = library
        self.engine = "trt-rtx" if library == "tensorrt_rtx" else "trt"
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
        self.build_report: EngineBuild | None = None
        self.trt_version = ""
        self.gpu_name = ""
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._dtypes: dict[str, str] = {}

    def unavailable_reason(self) -> str | None:
        return unavailable_reason(self.library, device=self.device)

    def build(self) -> bytes:
        """The serialized engine: from the cache, or built (and cached). No GPU is needed with
        ``tensorrt_rtx``.

        Raises:
            EngineUnavailableError: the library is not importable.
            EngineBuildError: TensorRT's parser or builder failed (one line, no engine file).
        """
        lib = import_library(self.library)
        if not lib.rtx:  # the data-centre builder needs the GPU it builds for
            reason = unavailable_reason(self.library, device=self.device)
            if reason:
                raise EngineUnavailableError(reason)
        spec, profile = self.profile()
        self.trt_version = lib.version
        self.gpu_name = self._target_name(lib)
        key = cache_key(
            file_sha256(self.path),
            self.gpu_name,
            lib.version,
            profile,
            spec.dtype,
            library=lib.name,
            options={
                "tf32": self.tf32,
                # TensorRT honours it over the builder flag: part of what the engine is.
                "tf32_override": os.environ.get("NVIDIA_TF32_OVERRIDE"),
                "workspace_bytes": self.workspace_bytes,
            },
        )
        self.cache.mkdir(parents=True, exist_ok=True)
        self.engine_path = self.cache / f"{key}.engine"
        if self.engine_path.is_file() and not self.rebuild:
            self.cache_hit, self.build_report = True, None
            return self.engine_path.read_bytes()
        self.cache_hit = False
        timing = None if lib.rtx else self.cache / timing_cache_name(self.gpu_name, lib.version)
        capability = self._turing_target(lib)
        report = build_engine(
            self.path,
            library=lib,
            spec=spec,
            batch=self.batch,
            seq=self.seq,
            tf32=self.tf32,
            workspace_bytes=self.workspace_bytes,
            timing_cache=timing,
            compute_capability=capability,
        )
        self.build_report = report
        report.raise_for_failure()
        assert report.serialized is not None
        write_atomic(self.engine_path, report.serialized)
        return report.serialized

    def _target_name(self, lib: TensorRTLibrary) -> str:
        """What the engine is specific to: the GPU for ``tensorrt``; for ``tensorrt_rtx`` its
        targets (portable across them), so a build on a CPU-only machine is reused on a GPU."""
        if not lib.rtx:
            import torch

            return torch.cuda.get_device_name(self.device)
        capability = self._turing_target(lib)
        return "rtx-sm75" if capability else "rtx-default-targets"

    def _turing_target(self, lib: TensorRTLibrary) -> tuple[int, int] | None:
        """(7, 5) on a Turing GPU, which TensorRT-RTX builds for only when asked; else None."""
        if not lib.rtx:
            return None
        import torch

        if torch.cuda.is_available():
            capability = tuple(torch.cuda.get_device_capability(self.device))
            if capability < RTX_DEFAULT_MIN_CAPABILITY:
                return (capability[0], capability[1])
        return None

    @_without_gc
    def activate_impl(self) -> None:
        reason = unavailable_reason(self.library, device=self.device)
        if reason:
            raise EngineUnavailableError(reason)
        import torch

        lib = import_library(self.library)
        trt = lib.module
        log = _log_class(trt)()
        runtime = trt.Runtime(log)
        with torch.cuda.device(self.device):
            engine = None
            serialized = self.build()
            if self.cache_hit:
                engine = runtime.deserialize_cuda_engine(serialized)
                if engine is None:
                    logger.warning(
                        "cached engine %s is unusable (%s); rebuilding",
                        self.engine_path,
                        "; ".join(_without_noise(m) for m in log.errors()) or "no message",
                    )
                    self.rebuild, rebuild = True, self.rebuild
                    try:
                        serialized = self.build()
                    finally:
                        self.rebuild = rebuild
            if engine is None:
                before = len(log.messages)
                engine = runtime.deserialize_cuda_engine(serialized)
                if engine is None:
                    why = "; ".join(_without_noise(m) for m in log.errors(before))
                    raise EngineUnavailableError(
                        f"{self.engine}: {lib} could not load the engine it just built from "
                        f"{self.path} ({why or 'no message'}); tensorrt-rtx's CUDA 13 build "
                        "needs an NVIDIA driver for CUDA 13"
                        if lib.rtx
                        else f"{self.engine}: {lib} could not load the engine it just built from "
                        f"{self.path} ({why or 'no message'})"
                    )
            self._engine = engine
            self._context = engine.create_execution_context()
            # A stream of our own: enqueueV3 on the legacy default stream makes TensorRT add
            # synchronisation, which would then be timed too.
            self._stream = torch.cuda.Stream()
        self.gpu_name = torch.cuda.get_device_name(self.device)
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

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        missing = [n for n in self._inputs if n not in feed]
        if missing:
            raise BiRNNExportError(
                f"{self.engine}: feed lacks inputs {missing}; the engine takes {self._inputs}"
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
                        f"{self.engine}: input {name!r} shape {array.shape} is outside the "
                        f"engine's profile (batch {self.batch}, seq {self.seq}); pass wider "
                        "batch=/seq= ranges"
                    )
                self._context.set_tensor_address(name, tensor.data_ptr())
                keep.append(tensor)
            outputs: dict[str, Any] = {}
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise EngineUnavailableError(
                        f"{self.engine}: output {name!r} has unresolved shape {shape}"
                    )
                tensor = torch.empty(shape, dtype=getattr(torch, self._dtypes[name]), device=device)
                self._context.set_tensor_address(name, tensor.data_ptr())
                outputs[name] = tensor
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise EngineUnavailableError(
                    f"{self.engine}: execute_async_v3 failed (see TensorRT's log)"
                )
            self._stream.synchronize()
            return {name: t.cpu().numpy() for name, t in outputs.items()}

    def deactivate_impl(self) -> None:
        self._context = None
        self._engine = None
        self._stream = None

    def providers(self) -> list[str]:
        if not self.trt_version:
            return [self.library]
        where = f"-{self.gpu_name}" if self.gpu_name else ""
        return [f"{self.library}-{self.trt_version}{where}"]
