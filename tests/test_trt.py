"""Native TensorRT: the pure helpers (profile, cache key, build plan) and availability on CPU;
engine build and run are marked ``tensorrt`` and skip with the reason."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from birnn_export import trt
from birnn_export.errors import BiRNNExportError, EngineUnavailableError
from birnn_export.spec import GraphSpec, TensorSpec, make_feed
from birnn_export.trt import (
    BuildPlan,
    TrtRunner,
    build_plan,
    cache_dir,
    cache_key,
    derive_profile,
    numpy_dtype,
    timing_cache_name,
)


def _spec(*, tokens: bool = False, extra_static: bool = False) -> GraphSpec:
    first = (
        TensorSpec("ids", "int64", ("batch", "seq"), "tokens", 0, 99)
        if tokens
        else TensorSpec("x", "float32", ("batch", "seq", 10), "features")
    )
    inputs = [first, TensorSpec("lengths", "int64", ("batch",), "lengths", 1, "seq")]
    if extra_static:
        inputs.append(TensorSpec("scale", "float32", (4,), "other"))
    return GraphSpec(
        inputs=tuple(inputs),
        outputs=(TensorSpec("output", "float32", ("batch", "seq", 5), "sequence"),),
        example_batch=2,
        example_seq=7,
    )


# -- profile ------------------------------------------------------------------------------------


def test_derive_profile_defaults() -> None:
    profile = derive_profile(_spec(extra_static=True))
    assert profile == {
        "x": ((1, 1, 10), (8, 64, 10), (32, 256, 10)),
        "lengths": ((1,), (8,), (32,)),
    }  # the static input needs no profile entry


def test_derive_profile_ranges_and_tokens() -> None:
    profile = derive_profile(_spec(tokens=True), batch=(2, 4, 6), seq=(3, 5, 7))
    assert profile["ids"] == ((2, 3), (4, 5), (6, 7))
    assert profile["lengths"] == ((2,), (4,), (6,))


@pytest.mark.parametrize(
    ("batch", "seq"), [((0, 1, 2), (1, 2, 3)), ((1, 8, 4), (1, 2, 3)), ((1, 2), (1, 2, 3))]
)
def test_derive_profile_rejects_bad_ranges(batch, seq) -> None:
    with pytest.raises(BiRNNExportError, match="min <= opt <= max"):
        derive_profile(_spec(), batch=batch, seq=seq)


def test_derive_profile_rejects_unknown_symbol() -> None:
    spec = GraphSpec(
        inputs=(TensorSpec("x", "float32", ("batch", "time", 3), "features"),),
        outputs=(),
        example_batch=1,
        example_seq=1,
    )
    with pytest.raises(BiRNNExportError, match="'time'"):
        derive_profile(spec)


# -- caches -------------------------------------------------------------------------------------


def test_cache_key_changes_with_every_ingredient() -> None:
    profile = derive_profile(_spec())
    base = dict(onnx_sha256="a" * 64, gpu_name="NVIDIA H100", trt_version="10.3.0", profile=profile)
    key = cache_key(**base, dtype="float32")
    assert key == cache_key(**base, dtype="float32")  # deterministic
    assert Path(key).name == key and "/" not in key and " " not in key
    variants = [
        cache_key(**{**base, "onnx_sha256": "b" * 64}, dtype="float32"),
        cache_key(**{**base, "gpu_name": "NVIDIA A100"}, dtype="float32"),
        cache_key(**{**base, "trt_version": "10.4.0"}, dtype="float32"),
        cache_key(
            **{**base, "profile": derive_profile(_spec(), seq=(1, 64, 512))}, dtype="float32"
        ),
        cache_key(**base, dtype="float16"),
        cache_key(**base, dtype="float32", options={"tf32": True}),
    ]
    assert len({key, *variants}) == len(variants) + 1


def test_timing_cache_name_depends_on_gpu_and_version_only() -> None:
    name = timing_cache_name("NVIDIA H100 80GB HBM3", "10.3.0")
    assert name == "timing-NVIDIA_H100_80GB_HBM3-trt10.3.0.cache"
    assert name != timing_cache_name("NVIDIA A100", "10.3.0")
    assert name != timing_cache_name("NVIDIA H100 80GB HBM3", "11.0.0")


def test_cache_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("BIRNN_EXPORT_CACHE", raising=False)
    assert cache_dir() == Path("~/.cache/birnn-export/trt").expanduser()
    monkeypatch.setenv("BIRNN_EXPORT_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_file_sha256(tmp_path) -> None:
    import hashlib

    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    assert trt.file_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()


# -- build plan ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "dtype", "has_flag", "plan"),
    [
        ("11.0.0", "float16", True, BuildPlan(strongly_typed=True, fp16_flag=False)),
        ("11.2.1", "float32", False, BuildPlan(strongly_typed=True, fp16_flag=False)),
        ("10.0.1", "float16", True, BuildPlan(strongly_typed=True, fp16_flag=False)),
        ("10.8.0", "float16", True, BuildPlan(strongly_typed=True, fp16_flag=False)),
        ("10.8.0", "float16", False, BuildPlan(strongly_typed=False, fp16_flag=True)),
        ("10.8.0", "float32", False, BuildPlan(strongly_typed=False, fp16_flag=False)),
    ],
)
def test_build_plan(version: str, dtype: str, has_flag: bool, plan: BuildPlan) -> None:
    assert build_plan(version, dtype, has_strongly_typed=has_flag) == plan


def test_build_plan_rejects_old_tensorrt() -> None:
    with pytest.raises(EngineUnavailableError, match="too old"):
        build_plan("8.6.1", "float32")


def test_numpy_dtype() -> None:
    assert numpy_dtype("FLOAT") == "float32"
    assert numpy_dtype("HALF") == "float16"
    assert numpy_dtype("INT64") == "int64"
    assert numpy_dtype("BOOL") == "bool"
    with pytest.raises(EngineUnavailableError, match="FP8"):
        numpy_dtype("FP8")


# -- availability -------------------------------------------------------------------------------


def test_availability_without_tensorrt(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ModuleNotFoundError
    assert trt.availability() == "trt: tensorrt not installed: pip install birnn-export[gpu]"
    with pytest.raises(EngineUnavailableError, match="tensorrt not installed"):
        TrtRunner("model.onnx").activate()


def test_availability_old_tensorrt(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    assert "too old" in trt.availability()


def test_availability_without_cuda(monkeypatch) -> None:
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trt.availability() == "trt: no CUDA device (torch.cuda.is_available() is False)"


def test_availability_on_this_machine() -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert trt.availability() == "trt: tensorrt not installed: pip install birnn-export[gpu]"
    else:  # pragma: no cover - only where TensorRT is installed
        import torch

        assert (trt.availability() is None) == torch.cuda.is_available()


def test_modules_import_without_optional_libraries() -> None:
    """trt, runners, check, verification and bench import with tensorrt and onnxruntime
    hidden."""
    code = (
        "import sys\n"
        "sys.modules['tensorrt'] = None\n"
        "sys.modules['onnxruntime'] = None\n"
        "import birnn_export.trt, birnn_export.runners, birnn_export.check\n"
        "import birnn_export.verification, birnn_export.bench\n"
        "from birnn_export.runners import availability\n"
        "print(availability('ort-cpu'))\n"
        "print(availability('trt'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ort_line, trt_line = proc.stdout.strip().splitlines()
    assert ort_line.startswith("ort-cpu: onnxruntime is not importable")
    assert trt_line == "trt: tensorrt not installed: pip install birnn-export[gpu]"


# -- GPU + TensorRT -----------------------------------------------------------------------------


@pytest.mark.tensorrt
def test_trt_runner_matches_ort_cpu_and_caches(tmp_path) -> None:  # pragma: no cover - GPU
    reason = trt.availability()
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
    with TrtRunner(path, cache=cache, batch=(1, 4, 8), seq=(1, 16, 32)) as runner:
        assert not runner.cache_hit and runner.engine_path.is_file()
        out = runner.infer(feed)
        with pytest.raises(BiRNNExportError, match="outside the engine's profile"):
            runner.infer(make_feed(spec, 16, 9, seed=0))
    np.testing.assert_allclose(out["output"], expected["output"], atol=1e-4, rtol=1e-3)
    assert list(cache.glob("timing-*.cache"))
    with TrtRunner(path, cache=cache, batch=(1, 4, 8), seq=(1, 16, 32)) as again:
        assert again.cache_hit
        np.testing.assert_allclose(again.infer(feed)["output"], out["output"], atol=0, rtol=0)
