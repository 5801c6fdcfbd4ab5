"""TensorRT: the pure helpers (profile, cache key, build plan) and availability; the parser and
builder for real through TensorRT-RTX, which builds on the CPU (marked ``tensorrt_rtx``); the
data-centre library's GPU-only steps against a recording stand-in; engine execution, which needs
a GPU, marked ``tensorrt`` and skipped with the reason."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from birnn_export import trt
from birnn_export.base_runner import no_nvidia_gpu
from birnn_export.errors import BiRNNExportError, EngineBuildError, EngineUnavailableError
from birnn_export.spec import GraphSpec, make_feed
from birnn_export.trt import TrtRunner, numpy_dtype
from birnn_export.trt_plan import derive_profile, timing_cache_name

#: Why the data-centre TensorRT cannot run here, where it is not installed.
NO_TENSORRT = (
    f"trt: {no_nvidia_gpu()}tensorrt not installed: pip install tensorrt (birnn-export's gpu extra)"
)


def test_file_sha256(tmp_path) -> None:
    import hashlib

    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    assert trt.file_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_numpy_dtype() -> None:
    assert numpy_dtype("FLOAT") == "float32"
    assert numpy_dtype("HALF") == "float16"
    assert numpy_dtype("INT64") == "int64"
    assert numpy_dtype("BOOL") == "bool"
    with pytest.raises(EngineUnavailableError, match="FP8"):
        numpy_dtype("FP8")


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_inside_tensorrt_waits_for_it_to_return(signum: str) -> None:
    """TensorRT catches what a handler raises inside its callbacks: an interrupt (Ctrl-C, or the
    CLI's SIGTERM) is held until the call returns, then given to the handler it had."""
    import os
    import signal

    seen: list[int] = []
    returned: list[bool] = []

    def handler(number: int, frame: Any) -> None:
        seen.append(number)
        raise KeyboardInterrupt

    previous = signal.signal(getattr(signal, signum), handler)
    try:
        with pytest.raises(KeyboardInterrupt), trt.gc_paused():
            os.kill(os.getpid(), getattr(signal, signum))
            for _ in range(100):  # Python runs handlers between bytecodes
                pass
            returned.append(not seen)  # held while TensorRT would run
        assert returned == [True]
        assert seen == [getattr(signal, signum)]
        assert signal.getsignal(getattr(signal, signum)) is handler
    finally:
        signal.signal(getattr(signal, signum), previous)


def test_sigterm_held_after_a_ctrl_c_is_the_one_handed_on() -> None:
    """Ctrl-C, then ``timeout``'s SIGTERM, both inside one TensorRT call: the process must end
    by SIGTERM (143), as it would have outside TensorRT."""
    import os
    import signal

    seen: list[int] = []

    def handler(number: int, frame: Any) -> None:
        seen.append(number)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(KeyboardInterrupt), trt.gc_paused():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):
                pass
        assert seen == [signal.SIGTERM]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def test_a_signal_while_the_builder_works_is_answered_at_once() -> None:
    """users34: under ulimit -v TensorRT's builder hung, and SIGTERM (timeout, a cancelled CI
    job) was held with it for ever. The build runs in a thread the main thread waits on, outside
    any TensorRT call: the handler runs at once and the build is left to end with the process.
    Here the build is a wait of 30 s that no signal ends (the GIL released, as TensorRT's is)."""
    import os
    import signal
    import threading

    seen: list[int] = []
    building: list[bool] = []
    release = threading.Event()

    def handler(number: int, frame: Any) -> None:
        seen.append(number)
        building.append(any(t.name == trt.BUILD_THREAD for t in threading.enumerate()))
        raise KeyboardInterrupt

    def build() -> bool:
        os.kill(os.getpid(), signal.SIGTERM)
        return release.wait(30)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(KeyboardInterrupt), trt.gc_paused():
            trt._waited_for(build)
        assert seen == [signal.SIGTERM] and building == [True]
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        release.set()
        signal.signal(signal.SIGTERM, previous)


def test_an_ignored_signal_stays_ignored_around_tensorrt() -> None:
    import os
    import signal

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with trt.gc_paused():
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- availability -------------------------------------------------------------------------------


def test_availability_without_tensorrt(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ModuleNotFoundError
    assert trt.unavailable_reason() == NO_TENSORRT
    with pytest.raises(EngineUnavailableError, match="tensorrt not installed"):
        TrtRunner("model.onnx").activate()


def test_availability_old_tensorrt(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    assert "too old" in trt.unavailable_reason()


def test_availability_without_cuda(monkeypatch) -> None:
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trt.unavailable_reason() == "trt: no CUDA device (torch.cuda.is_available() is False)"


def test_availability_on_this_machine() -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert trt.unavailable_reason() == NO_TENSORRT
    else:  # pragma: no cover - only where TensorRT is installed
        import torch

        assert (trt.unavailable_reason() is None) == torch.cuda.is_available()


def test_modules_import_without_optional_libraries() -> None:
    """trt, runners, check, verification and bench import with tensorrt and onnxruntime
    hidden."""
    code = (
        "import sys\n"
        "sys.modules['tensorrt'] = None\n"
        "sys.modules['tensorrt_rtx'] = None\n"
        "sys.modules['onnxruntime'] = None\n"
        "import birnn_export.trt, birnn_export.runners, birnn_export.check\n"
        "import birnn_export.verification, birnn_export.bench\n"
        "from birnn_export.runners import unavailable_reason\n"
        "print(unavailable_reason('ort-cpu'))\n"
        "print(unavailable_reason('trt'))\n"
        "print(unavailable_reason('trt-rtx'))\n"
        "from birnn_export.check import check_compatibility\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ort_line, trt_line, rtx_line = proc.stdout.strip().splitlines()
    assert ort_line.startswith("ort-cpu: onnxruntime is not importable")
    assert trt_line == NO_TENSORRT
    assert rtx_line == (
        "trt-rtx: tensorrt_rtx not installed: pip install tensorrt-rtx (birnn-export's "
        "tensorrt-rtx extra)"
    )


# -- GPU + TensorRT -----------------------------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.parametrize("library", ["tensorrt", "tensorrt_rtx"])
def test_trt_runner_matches_ort_cpu_and_caches(tmp_path, library) -> None:  # pragma: no cover
    reason = trt.unavailable_reason(library)
    if reason:
        pytest.skip(reason)
    import onnx
    import torch

    from birnn_export.runners import OrtRunner
    from tests.test_runners import lstm_graph

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 6, batch_first=True, bidirectional=True).eval()
    path = tmp_path / "bilstm.onnx"
    onnx.save(lstm_graph(lstm), path)
    spec = GraphSpec.from_onnx(str(path))
    feed = make_feed(spec, 4, 9, seed=0)
    with OrtRunner(path) as ort_runner:
        expected = ort_runner.infer(feed)
    cache = tmp_path / "cache"
    ranges = {"library": library, "batch": (1, 4, 8), "seq": (1, 16, 32)}
    with TrtRunner(path, cache=cache, **ranges) as runner:
        assert not runner.cache_hit and runner.engine_path.is_file()
        out = runner.infer(feed)
        with pytest.raises(BiRNNExportError, match="outside the engine's profile"):
            runner.infer(make_feed(spec, 16, 9, seed=0))
    np.testing.assert_allclose(out["output"], expected["output"], atol=1e-4, rtol=1e-3)
    assert bool(list(cache.glob("timing-*.cache"))) == (library == "tensorrt")
    with TrtRunner(path, cache=cache, **ranges) as again:
        assert again.cache_hit
        np.testing.assert_allclose(again.infer(feed)["output"], out["output"], atol=0, rtol=0)


# -- the data-centre library's GPU-only steps, against a recording stand-in ----------------------
#
# The data-centre TensorRT cannot be installed on the machines this project is developed on, and
# without a GPU its builder cannot even be created. What only it does is tested against a
# stand-in that implements the documented calls (TensorRT 10/11 Python API) and records them:
# the timing cache saved and reused (TensorRT-RTX's timing-cache calls are no-ops), the FP16
# builder flag on a build without strong typing, and activate()'s deserialization of a cached
# engine, which needs a GPU. The parser, the profile, the builder config, serialization, the
# engine cache and parser failures run for real against TensorRT-RTX further below.


class _Flag(int):
    """A pybind11 enum member: an int with a ``name``."""

    def __new__(cls, value: int, name: str) -> _Flag:
        member = super().__new__(cls, value)
        member.name = name  # type: ignore[attr-defined]
        return member


def fake_tensorrt(
    version: str = "10.9.0",
    *,
    strongly_typed: bool = True,
    parse_errors: tuple[str, ...] = (),
    refuse_stored_timing: bool = False,
) -> types.ModuleType:
    import onnx

    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.calls = []  # (call, details) in order
    calls = module.calls

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class Dims(tuple):
        pass

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, Dims(shape)

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.inputs = flags, []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class Error:
        def __init__(self, text: str) -> None:
            self.text = text

        def desc(self) -> str:
            return self.text

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.errors = [Error(t) for t in parse_errors]

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> Error:
            return self.errors[i]

        def parse_from_file(self, path: str) -> bool:
            graph = onnx.load(path, load_external_data=False).graph
            for value in graph.input:
                dims = value.type.tensor_type.shape.dim
                shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
                self.network.inputs.append(Tensor(value.name, shape))
            calls.append(("parse_from_file", path))
            return not self.errors

    class Profile:
        def __init__(self) -> None:
            self.shapes = {}

        def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class TimingCache:
        def __init__(self, blob: bytes) -> None:
            self.blob = bytes(blob)

        def serialize(self) -> memoryview:
            return memoryview(b"timings+" + self.blob)

    class Config:
        def __init__(self) -> None:
            self.flags = {"TF32"}  # TensorRT's default
            self.profiles, self.timing, self.pool = [], None, {}

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.pool[pool] = size

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def clear_flag(self, flag: str) -> None:
            self.flags.discard(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob: bytes) -> TimingCache:
            calls.append(("create_timing_cache", bytes(blob)))
            return TimingCache(blob)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if refuse_stored_timing and cache.blob:  # a mismatched or damaged cache
                return False
            self.timing = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.timing

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int = 0) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            record = {
                "flags": network.flags,
                "builder_flags": sorted(config.flags),
                "profiles": [p.shapes for p in config.profiles],
                "pool": config.pool,
            }
            calls.append(("build", record))
            names = [t.name for t in network.inputs]
            return json.dumps({"inputs": names, "outputs": ["output"]}).encode()

    class Engine:
        def __init__(self, names: dict) -> None:
            self.names = [*names["inputs"], *names["outputs"]]
            self.inputs = set(names["inputs"])

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> str:
            return module.TensorIOMode.INPUT if name in self.inputs else "OUTPUT"

        def get_tensor_dtype(self, name: str) -> _Flag:
            return _Flag(5 if name == "lengths" else 0, "INT64" if name == "lengths" else "FLOAT")

        def create_execution_context(self) -> object:
            return object()

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, blob: bytes) -> Engine | None:
            calls.append(("deserialize", len(blob)))
            try:
                return Engine(json.loads(blob))
            except ValueError:
                return None  # what TensorRT returns for an unusable plan

    flags = {"STRONGLY_TYPED": _Flag(1, "STRONGLY_TYPED")} if strongly_typed else {}
    module.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)
    module.BuilderFlag = types.SimpleNamespace(TF32="TF32", FP16="FP16")
    module.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    module.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    module.Logger, module.Builder, module.OnnxParser = Logger, Builder, OnnxParser
    module.Runtime = Runtime
    return module


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A BiLSTM tagger exported by birnn-export, fp32 with declared ranges, and fp16."""
    import torch

    from birnn_export.models import SequenceTagger, TaggerConfig
    from birnn_export.pipeline import export_onnx

    torch.manual_seed(0)
    config = TaggerConfig(
        cell="lstm", input_size=5, hidden_size=6, output_size=3, uses_lengths=True
    )
    model = SequenceTagger(config)
    folder = tmp_path_factory.mktemp("trt_build")
    paths = {"fp32": folder / "fp32.onnx", "fp16": folder / "fp16.onnx"}
    export_onnx(model, paths["fp32"], batch_range=(1, 2, 4), seq_range=(3, 50, 100), verify=False)
    export_onnx(model, paths["fp16"], dtype="float16", verify=False)
    return paths


@pytest.fixture
def fake_gpu(monkeypatch) -> Any:
    """torch.cuda as seen on a one-GPU machine, without touching a GPU."""
    import contextlib

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 80GB")
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: object())

    def install(module: types.ModuleType) -> types.ModuleType:
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        return module

    return install


def _calls(module: types.ModuleType, name: str) -> list[Any]:
    return [details for call, details in module.calls if call == name]


def test_build_uses_declared_profile_strong_typing_and_caches(exported, fake_gpu, tmp_path):
    fake = fake_gpu(fake_tensorrt("10.9.0"))
    cache = tmp_path / "cache"
    with TrtRunner(exported["fp32"], cache=cache, workspace_bytes=1 << 28) as runner:
        assert not runner.cache_hit and runner.engine_path.is_file()
        assert runner.engine_path.parent == cache and "Fake_GPU_80GB-trt10.9.0-" in str(
            runner.engine_path
        )
        assert (runner.batch, runner.seq) == ((1, 2, 4), (3, 50, 100))  # the declared ranges
        assert runner._inputs == ["x", "lengths"] and runner._outputs == ["output"]
        assert runner._dtypes == {"x": "float32", "lengths": "int64", "output": "float32"}
    (build,) = _calls(fake, "build")
    assert build["flags"] == 1 << 1  # STRONGLY_TYPED
    assert build["builder_flags"] == []  # TF32 cleared, no precision flag
    assert build["pool"] == {"WORKSPACE": 1 << 28}
    (profile,) = build["profiles"]
    assert profile == {
        "x": ((1, 3, 5), (2, 50, 5), (4, 100, 5)),
        "lengths": ((1,), (2,), (4,)),
    }
    timing = cache / timing_cache_name("Fake GPU 80GB", "10.9.0")
    assert timing.read_bytes() == b"timings+"  # a fresh cache, saved after the build

    # Second activation: the engine comes from the cache; nothing is built.
    with TrtRunner(exported["fp32"], cache=cache, workspace_bytes=1 << 28) as again:
        assert again.cache_hit and again.engine_path == runner.engine_path
    assert len(_calls(fake, "build")) == 1

    # Another profile is another engine; the build starts from the saved timing cache.
    with TrtRunner(exported["fp32"], cache=cache, batch=(1, 1, 1), workspace_bytes=1 << 28) as r:
        assert not r.cache_hit and r.engine_path != runner.engine_path
    assert _calls(fake, "create_timing_cache")[-1] == b"timings+"
    assert len(list(cache.glob("*.engine"))) == 2


def test_unusable_timing_cache_starts_afresh(exported, fake_gpu, tmp_path, caplog) -> None:
    fake = fake_gpu(fake_tensorrt(refuse_stored_timing=True))
    timing = tmp_path / timing_cache_name("Fake GPU 80GB", "10.9.0")
    timing.write_bytes(b"from another TensorRT")
    with (
        caplog.at_level("WARNING", logger="birnn_export.trt"),
        TrtRunner(exported["fp32"], cache=tmp_path) as runner,
    ):
        assert runner.engine_path.is_file()
    assert "unusable; starting a new one" in caplog.text
    assert _calls(fake, "create_timing_cache") == [b"from another TensorRT", b""]
    assert timing.read_bytes() == b"timings+"  # replaced by the new build's


def test_tf32_override_is_part_of_the_engine_key(exported, fake_gpu, tmp_path, monkeypatch):
    """TensorRT honours NVIDIA_TF32_OVERRIDE over the builder flag: an engine built with TF32
    is never reused for a strict fp32 run."""
    fake_gpu(fake_tensorrt())
    paths = []
    for value in ("0", None):
        if value is None:
            monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
        else:
            monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", value)
        with TrtRunner(exported["fp32"], cache=tmp_path) as runner:
            paths.append(runner.engine_path)
    assert paths[0] != paths[1]


def test_unusable_cached_engine_is_rebuilt(exported, fake_gpu, tmp_path) -> None:
    fake = fake_gpu(fake_tensorrt())
    with TrtRunner(exported["fp32"], cache=tmp_path) as runner:
        path = runner.engine_path
    path.write_bytes(b"not a plan")  # e.g. from a TensorRT build the name did not capture
    with TrtRunner(exported["fp32"], cache=tmp_path) as again:
        assert not again.cache_hit
    assert len(_calls(fake, "build")) == 2
    assert path.read_bytes() != b"not a plan"


@pytest.mark.parametrize(
    ("version", "strongly_typed", "flags", "builder_flags"),
    [
        ("10.9.0", True, 1 << 1, []),  # strongly typed: precision from the fp16 graph
        ("11.0.0", True, 1 << 1, []),
        ("10.0.1", False, 0, ["FP16"]),  # a build without the flag: the FP16 builder flag
    ],
)
def test_fp16_graph_precision(exported, fake_gpu, tmp_path, version, strongly_typed, flags,
                              builder_flags) -> None:  # fmt: skip
    fake = fake_gpu(fake_tensorrt(version, strongly_typed=strongly_typed))
    with TrtRunner(exported["fp16"], cache=tmp_path):
        pass
    (build,) = _calls(fake, "build")
    assert build["flags"] == flags and build["builder_flags"] == builder_flags
    # The fp16 graph was exported with the default ranges.
    assert build["profiles"][0]["lengths"] == ((1,), (8,), (32,))


def test_parser_errors_are_one_line_and_leave_no_engine(exported, fake_gpu, tmp_path) -> None:
    fake_gpu(fake_tensorrt(parse_errors=("LSTM: unsupported attribute", "second problem")))
    with pytest.raises(EngineBuildError) as info:
        TrtRunner(exported["fp32"], cache=tmp_path).activate()
    message = str(info.value)
    assert "\n" not in message and "LSTM: unsupported attribute; second problem" in message
    assert "birnn-export check" in message
    assert list(tmp_path.glob("*.engine")) == []


def test_dynamic_input_missing_from_the_spec_is_refused(exported, fake_gpu, tmp_path) -> None:
    import dataclasses

    fake_gpu(fake_tensorrt())
    spec = GraphSpec.from_onnx(str(exported["fp32"]))
    without_lengths = dataclasses.replace(spec, inputs=spec.inputs[:1])
    runner = TrtRunner(exported["fp32"], spec=without_lengths, cache=tmp_path)
    with pytest.raises(BiRNNExportError, match="'lengths' has dynamic dims"):
        runner.activate()


# -- the parser and builder for real: TensorRT-RTX on the CPU ------------------------------------


class _Spy:
    """The real ``tensorrt_rtx`` module, keeping the networks and builder configs it creates so
    a test can read back what the build set on them."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.networks: list[Any] = []
        self.configs: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def Builder(self, logger: Any) -> Any:  # TensorRT's name
        builder, spy = self._real.Builder(logger), self

        class Recorded:
            def __getattr__(self, name: str) -> Any:
                return getattr(builder, name)

            def create_network(self, flags: int) -> Any:
                spy.networks.append(builder.create_network(flags))
                return spy.networks[-1]

            def create_builder_config(self) -> Any:
                spy.configs.append(builder.create_builder_config())
                return spy.configs[-1]

        return Recorded()


def _old_fp16_export(model: Any, path: Path) -> None:
    """The fp16 form before this project computed ragged fp16 nodes in float32 (fp16 LSTM nodes
    with sequence_lens), which TensorRT's parser rejects."""
    from birnn_export import modules
    from birnn_export.pipeline import export_onnx

    original = modules.recurrent_dtype
    modules.recurrent_dtype = lambda dtype, *, ragged: dtype
    try:
        export_onnx(model, path, dtype="float16", verify=False)
    finally:
        modules.recurrent_dtype = original


@pytest.fixture(scope="module")
def tagger() -> Any:
    import torch

    from birnn_export.models import SequenceTagger, TaggerConfig

    torch.manual_seed(0)
    config = TaggerConfig(
        cell="lstm", input_size=5, hidden_size=6, output_size=3, uses_lengths=True
    )
    return SequenceTagger(config)


@pytest.mark.tensorrt_rtx
def test_build_engine_for_real(exported) -> None:
    import tensorrt_rtx

    spy = _Spy(tensorrt_rtx)
    library = trt.TensorRTLibrary("tensorrt_rtx", tensorrt_rtx.__version__, spy)
    build = trt.build_engine(exported["fp32"], library=library, workspace_bytes=1 << 28)
    assert build.ok and build.parsed, build.summary()
    assert build.engine_bytes == len(build.serialized) > 100_000 and build.seconds > 0
    assert build.checked_with == f"tensorrt_rtx {tensorrt_rtx.__version__}"
    # The declared ranges of the graph are the profile.
    assert build.profile == {
        "x": ((1, 3, 5), (2, 50, 5), (4, 100, 5)),
        "lengths": ((1,), (2,), (4,)),
    }
    (network,), (config,) = spy.networks, spy.configs
    assert network.get_flag(tensorrt_rtx.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert config.get_memory_pool_limit(tensorrt_rtx.MemoryPoolType.WORKSPACE) == 1 << 28
    assert not config.get_flag(tensorrt_rtx.BuilderFlag.TF32)
    assert config.num_optimization_profiles == 1
    assert config.num_compute_capabilities == 0  # TensorRT-RTX's default targets
    assert config.progress_monitor.step_complete("phase", 0)  # cancels only when interrupted
    assert json.loads(json.dumps(build.to_dict()))["engine_bytes"] == build.engine_bytes


#: Ctrl-C while a build runs: the build (a stand-in for TensorRT's) calls back into Python until
#: it is cancelled, then a while longer, as TensorRT's builder calls its logger.
_INTERRUPTED_BUILD = """
import os, signal, threading, time
from birnn_export import trt

signal.signal(signal.SIGINT, signal.default_int_handler)  # xdist's workers ignore it
cancel = threading.Event()

def build():
    os.kill(os.getpid(), signal.SIGINT)
    while not cancel.is_set():
        time.sleep(0.01)
    time.sleep(0.3)
    print("build stopped", flush=True)

try:
    trt._waited_for(build, cancel)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_an_interrupted_build_is_cancelled_and_waited_for_at_exit() -> None:
    """review41 F2: after Ctrl-C during a build, TensorRT's builder went on calling its logger
    back into Python while the interpreter shut down; ended there by pthread_exit, the process
    aborted (exit 134, "FATAL: exception not rethrown", 4 of 10 interrupts). The build is
    cancelled and the process waits for it at exit (not by Thread.join: interrupted once, it
    returns at once thereafter)."""
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_BUILD], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "interrupted\nbuild stopped\n", done.stderr[-2000:]


_UNSTOPPABLE_BUILD = """
import os, signal, threading, time
from birnn_export import trt

signal.signal(signal.SIGINT, signal.default_int_handler)
cancel = threading.Event()

def build():
    os.kill(os.getpid(), signal.SIGINT)
    cancel.wait()
    for _ in range(3000):  # the process is at exit, waiting for this build: a second Ctrl-C
        if signal.getsignal(signal.SIGINT) is signal.SIG_DFL:
            break
        time.sleep(0.01)
    print("second Ctrl-C", flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(60)

try:
    trt._waited_for(build, cancel)
except KeyboardInterrupt:
    print("interrupted", flush=True)
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as the CLI leaves it when its work is over
"""


def test_a_second_ctrl_c_ends_the_wait_for_a_build_that_does_not_stop() -> None:
    """review42 R7: the wait at exit for a build that never stops was cut short by nothing but
    SIGKILL (the CLI ignores SIGINT once its work is over); a second Ctrl-C ends it by SIGINT."""
    import signal

    done = subprocess.run(
        [sys.executable, "-c", _UNSTOPPABLE_BUILD], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -signal.SIGINT, done.stderr[-2000:]  # not 0 after a 10 s wait
    assert done.stdout == "interrupted\nsecond Ctrl-C\n", done.stderr[-2000:]


def test_a_build_that_raises_is_raised_and_one_that_cannot_start_leaves_no_wait(
    monkeypatch,
) -> None:
    """The build's own error is raised in the waiting thread (not waited for for ever: review42
    T10); a build thread that cannot start (ulimit -u) registers no wait at exit, which held
    the process 10 s (review42 R5)."""
    import threading

    def one_over_zero() -> float:
        return 1 / 0

    raised: list[BaseException] = []

    def wait() -> None:
        try:
            trt._waited_for(one_over_zero)
        except BaseException as exc:
            raised.append(exc)

    waiting = threading.Thread(target=wait, daemon=True)
    waiting.start()
    waiting.join(30)
    assert not waiting.is_alive() and isinstance(raised[0], ZeroDivisionError)

    class Unstartable(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    registered: list[Any] = []
    monkeypatch.setattr(trt.atexit, "register", lambda *args: registered.append(args))
    monkeypatch.setattr(trt.threading, "Thread", Unstartable)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        trt._waited_for(lambda: None, threading.Event())
    assert registered == []


@pytest.mark.tensorrt_rtx
def test_a_build_is_given_the_cancel_it_is_waited_for_with(exported, monkeypatch) -> None:
    """The event the progress monitor reads is the one an interrupt sets (review42 T7)."""
    made, waited = trt._progress_monitor, trt._waited_for
    events: dict[str, Any] = {}

    def monitor(module: Any, cancel: Any) -> Any:
        events["monitor"] = cancel
        return made(module, cancel)

    def wait(call: Any, cancel: Any = None) -> Any:
        events["waited"] = cancel
        return waited(call, cancel)

    monkeypatch.setattr(trt, "_progress_monitor", monitor)
    monkeypatch.setattr(trt, "_waited_for", wait)
    assert trt.build_engine(exported["fp32"], library="tensorrt_rtx").ok
    assert events["monitor"] is events["waited"] is not None


@pytest.mark.tensorrt_rtx
def test_a_cancelled_build_stops_at_its_progress_monitor(exported, monkeypatch) -> None:
    """The monitor every build gets (:func:`trt._progress_monitor`) cancels a real build."""
    import threading

    made = trt._progress_monitor
    cancelled = threading.Event()
    cancelled.set()
    monkeypatch.setattr(trt, "_progress_monitor", lambda module, cancel: made(module, cancelled))
    build = trt.build_engine(exported["fp32"], library="tensorrt_rtx")
    assert build.parsed and not build.ok and "BuildCanceled" in build.build_error


@pytest.mark.tensorrt_rtx
def test_a_graph_made_static_after_export_builds_at_its_static_shape(exported, tmp_path):
    """onnxsim --overwrite-input-shape keeps the metadata: the build took its dynamic ranges,
    which TensorRT refuses for static dims, and check called a right graph NOT compatible
    (users26). The profile takes the network's static dims."""
    import onnx

    proto = onnx.load(str(exported["fp32"]))
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, (2, 40), strict=False):
            dim.dim_value = size  # batch 2; x's length 40
    path = tmp_path / "static.onnx"
    onnx.save(proto, str(path))
    build = trt.build_engine(path, library="tensorrt_rtx")
    assert build.ok, build.summary()
    assert build.profile == {}  # every input static: no profile entries


@pytest.mark.tensorrt_rtx
def test_build_engine_for_turing_and_tf32(exported) -> None:
    import tensorrt_rtx

    spy = _Spy(tensorrt_rtx)
    library = trt.TensorRTLibrary("tensorrt_rtx", tensorrt_rtx.__version__, spy)
    build = trt.build_engine(
        exported["fp32"], library=library, tf32=True, compute_capability=(7, 5)
    )
    # TensorRT-RTX compiles no fp32 matrix multiply for Turing: the builder says so, in one line.
    assert build.parsed and not build.ok
    assert "Turing (SM75): FP32 GEMM is not supported" in build.build_error
    assert "\n" not in build.build_error
    (config,) = spy.configs
    assert config.num_compute_capabilities == 1
    assert config.get_compute_capability(0) == tensorrt_rtx.ComputeCapability.SM75
    assert config.get_flag(tensorrt_rtx.BuilderFlag.TF32)
    with pytest.raises(BiRNNExportError, match="compute_capability"):
        trt.build_engine(exported["fp32"], library=library, compute_capability=(9, 0))


@pytest.mark.tensorrt_rtx
def test_runner_build_caches_without_a_gpu(exported, tmp_path) -> None:
    cache = tmp_path / "cache"
    runner = TrtRunner(exported["fp32"], library="tensorrt_rtx", cache=cache)
    assert runner.engine == "trt-rtx"
    blob = runner.build()
    assert not runner.cache_hit and runner.engine_path.read_bytes() == blob
    assert runner.build_report.ok and runner.build_report.engine_bytes == len(blob)
    assert f"-rtx{runner.trt_version}-" in runner.engine_path.name
    assert runner.engine_path.name.startswith("rtx_default_targets-")
    # TensorRT-RTX's timing-cache calls are no-ops (and would make the build look for a GPU).
    assert list(cache.glob("timing-*")) == []
    again = TrtRunner(exported["fp32"], library="tensorrt_rtx", cache=cache)
    assert again.build() == blob and again.cache_hit and again.build_report is None
    other = TrtRunner(exported["fp32"], library="tensorrt_rtx", cache=cache, batch=(1, 2, 2))
    other.build()
    assert not other.cache_hit and other.engine_path != runner.engine_path
    assert len(list(cache.glob("*.engine"))) == 2
    # Running it needs a GPU: unavailable here, with the reason.
    if trt.unavailable_reason("tensorrt_rtx") is not None:
        with pytest.raises(EngineUnavailableError, match="trt-rtx: "):
            TrtRunner(exported["fp32"], library="tensorrt_rtx", cache=cache).activate()


@pytest.mark.tensorrt_rtx
def test_a_parser_rejection_told_only_false_names_the_check(tmp_path) -> None:
    """TensorRT's parser describes some rejections by a bare assertion's text, "false": the
    check said "rejected this Unique: false" (users24); it names the parser's check instead."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["y"], name="unique")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    path = tmp_path / "unique.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    build = trt.build_engine(path)
    assert not build.parsed
    (issue,) = build.parser_issues
    assert issue.op == "Unique" and issue.message.strip().lower() != "false"
    assert issue.message.startswith("the parser's check ") and issue.message.endswith(" failed")


@pytest.mark.tensorrt_rtx
def test_parser_rejection_is_one_line_and_leaves_no_engine(tagger, tmp_path) -> None:
    path = tmp_path / "old_fp16.onnx"
    _old_fp16_export(tagger, path)
    build = trt.build_engine(path)
    assert not build.parsed and build.serialized is None
    (issue,) = build.parser_issues
    assert (issue.node, issue.op) == ("rnn/l0/forward", "LSTM")
    assert "ISelectLayer must have `thenInput` and `elseInput` of same types" in issue.message
    assert "cudaError" not in issue.message and "/_src/" not in issue.message
    cache = tmp_path / "cache"
    with pytest.raises(EngineBuildError) as info:
        TrtRunner(path, library="tensorrt_rtx", cache=cache).build()
    assert "\n" not in str(info.value) and "rnn/l0/forward (LSTM)" in str(info.value)
    assert info.value.exit_code == 1
    assert list(cache.glob("*.engine")) == []


@pytest.mark.tensorrt_rtx
def test_fp16_exports_with_lengths_build(tagger, tmp_path) -> None:
    """The fp16 form birnn-export writes: the ragged recurrent nodes compute in float32 between
    Casts, everything else stays float16, and TensorRT builds it."""
    import onnx

    from birnn_export.pipeline import export_onnx

    for layout in ("split", "fused"):
        path = tmp_path / f"{layout}.onnx"
        export_onnx(tagger, path, dtype="float16", layout=layout, verify=False)
        build = trt.build_engine(path)
        assert build.ok, build.summary()
        graph = onnx.load(path).graph
        elem = {i.name: i.type.tensor_type.elem_type for i in graph.output}
        assert elem["output"] == onnx.TensorProto.FLOAT16
        weights = {t.name: t.data_type for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "LSTM":
                assert node.input[4], "the node keeps sequence_lens"
                assert weights[node.input[1]] == onnx.TensorProto.FLOAT  # folded, no Cast


@pytest.mark.tensorrt_rtx
@pytest.mark.parametrize("named", [True, False], ids=["named dims", "unnamed dims"])
def test_graph_without_spec_builds_with_a_guessed_profile(tmp_path, named) -> None:
    """A foreign time-major graph, x [seq, batch, 2] beside lengths [batch]: the guessed
    profile must give the two batch dims the same sizes for TensorRT to build it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    hidden = 3
    inits = [
        numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, 2)).astype(np.float32), "W"),
        numpy_helper.from_array(
            rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "R"
        ),
    ]
    nodes = [
        helper.make_node("Cast", ["lens"], ["lens32"], to=TensorProto.INT32),
        helper.make_node("LSTM", ["x", "W", "R", "", "lens32"], ["Y"], hidden_size=hidden),
    ]
    seq, batch = ("T", "N") if named else (None, None)
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, 2]),
            helper.make_tensor_value_info("lens", TensorProto.INT64, [batch]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        inits,
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    build = trt.build_engine(path)
    assert build.ok and build.guessed_profile, build.summary()
    x_opt, lens_opt = build.profile["x"][1], build.profile["lens"][1]
    assert x_opt[1] == lens_opt[0]  # the batch dims agree
    if named:
        assert build.profile["x"] == ((1, 1, 2), (64, 8, 2), (256, 32, 2))


def test_library_names_and_reasons(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    assert trt.library_reason("tensorrt_rtx") == (
        "trt-rtx: tensorrt_rtx not installed: pip install tensorrt-rtx (birnn-export's "
        "tensorrt-rtx extra)"
    )
    assert trt.unavailable_reason("tensorrt_rtx") == trt.library_reason("tensorrt_rtx")
    with pytest.raises(BiRNNExportError, match="library"):
        TrtRunner("m.onnx", library="tensorrt_llm")
    assert trt.LIBRARIES == {"trt": "tensorrt", "trt-rtx": "tensorrt_rtx"}


def test_rtx_availability_needs_an_rtx_class_gpu(monkeypatch) -> None:
    import torch

    module = types.SimpleNamespace(
        __version__="1.7.1.116",
        ComputeCapability=types.SimpleNamespace(
            __members__={
                "NONE": 0,
                "CURRENT": 1,
                "SM75": 2,
                "SM80": 3,
                "SM86": 4,
                "SM89": 5,
                "SM120": 6,
                "SM121": 7,
            }
        ),
    )
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    reason = trt.unavailable_reason("tensorrt_rtx")
    assert reason.startswith("trt-rtx: NVIDIA H200 has compute capability 9.0;")
    assert "7.5, 8.0, 8.6, 8.9, 12.0, 12.1" in reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert trt.unavailable_reason("tensorrt_rtx") is None
    assert (
        trt.unavailable_reason("tensorrt_rtx", device=1)
        == "trt-rtx: no CUDA device 1 (torch sees 1)"
    )
    assert list(trt.compute_capabilities(module)) == [
        (7, 5),
        (8, 0),
        (8, 6),
        (8, 9),
        (12, 0),
        (12, 1),
    ]


SAMPLES = sorted((Path(__file__).resolve().parent.parent / "sample_models").glob("*.pt"))
#: Built in every run: a CRF tagger, a conv front end with halved lengths; the others with
#: --run-slow.
EVERY_RUN = {"bilstm_crf_tagger", "speech_ctc"}
#: Also slow: the fused float32 build is guarded by [speech_ctc-fused-float32], the CRF
#: tagger's scans are parsed and built by [bilstm_crf_tagger-default-float16].
SLOW_CASES = {("bilstm_crf_tagger", "fused", "float32")}


@pytest.mark.tensorrt_rtx
@pytest.mark.parametrize(
    ("sample", "layout", "dtype"),
    [
        pytest.param(
            p,
            layout,
            dtype,
            id=f"{p.stem}-{layout}-{dtype}",
            marks=(
                ()
                if p.stem in EVERY_RUN and (p.stem, layout, dtype) not in SLOW_CASES
                else pytest.mark.slow
            ),
        )
        for p in SAMPLES
        for layout, dtype in [("default", "float16"), ("fused", "float32")]
    ],
)
def test_every_sample_parses_and_builds(sample: Path, layout: str, dtype: str, tmp_path) -> None:
    """Every shipped sample in its default layout in fp16, and fused: TensorRT's parser takes
    the export and its builder makes an engine, with the profile of the graph's declared ranges.
    (The default fp32 graphs: the main command's check in ``test_export``; the fp16 graphs of
    the other layouts: ``test_fp16_exports_with_lengths_build``.)"""
    from birnn_export.checkpoint import load_model
    from birnn_export.pipeline import export_onnx

    loaded = load_model(sample)
    path = tmp_path / f"{sample.stem}.onnx"
    result = export_onnx(
        loaded.model,
        path,
        inputs=loaded.inputs,
        ranges=loaded.ranges,
        layout=None if layout == "default" else layout,
        dtype=dtype,
        verify=False,
    )
    build = trt.build_engine(path)
    assert build.ok, build.summary()
    assert build.profile == derive_profile(result.spec)
    assert build.engine_bytes > 0


def test_what_native_code_prints_while_building_goes_to_the_debug_log(capfd, caplog):
    """TensorRT's Myelin compiler printed "Internal Error: MyelinCheckException ..." straight
    to file descriptor 2, above the export's own lines, for a failure the build's result (from
    TensorRT's logger) already reports: kept for the debug log, off the console."""
    import logging
    import os

    with caplog.at_level(logging.DEBUG, logger="birnn_export.trt"):
        with trt._native_stderr_logged():
            os.write(2, b"Internal Error: MyelinCheckException: gvn.cpp:325\n")
        os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "MyelinCheckException" not in err and "after" in err  # fd 2 is back
    assert "TensorRT wrote to stderr: Internal Error: MyelinCheckException" in caplog.text
