"""birnn_export.trt_plan: profiles, engine cache keys and build plans, without TensorRT."""

from __future__ import annotations

from pathlib import Path

import pytest

from birnn_export._sweep import Case
from birnn_export.errors import BiRNNExportError, EngineUnavailableError
from birnn_export.spec import GraphSpec, TensorSpec
from birnn_export.trt_plan import (
    BuildPlan,
    build_plan,
    cache_dir,
    cache_key,
    derive_profile,
    generic_profile,
    sweep_profile,
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


def test_generic_profile() -> None:
    profile = generic_profile({"x": ("T", "N", 40), "lens": ("N",), "m": (None, None)})
    assert profile["x"] == ((1, 1, 40), (64, 8, 40), (256, 32, 40))
    assert profile["lens"] == ((1,), (8,), (32,))
    assert profile["m"] == ((1, 1), (8, 8), (256, 256))  # unnamed: one range for all


def test_sweep_profile_spans_the_sweep() -> None:
    cases = [Case(64, 300, "ragged", 1.0, 0), Case(4, 8, "equal", 1.0, 1)]
    # Single rows run at batch 1 and T = their own length, down to 1.
    assert sweep_profile(cases) == ((1, 64, 64), (1, 300, 300))
    assert sweep_profile(cases, batch_invariance=False) == ((4, 64, 64), (8, 300, 300))
    # With the graph's declared ranges: the declared profile, widened to the sweep.
    declared = ((1, 8, 32), (1, 64, 256))
    assert sweep_profile(cases, declared=declared) == ((1, 8, 64), (1, 64, 300))
    small = [Case(3, 9, "ragged", 1.0, 0)]
    assert sweep_profile(small, declared=declared) == declared


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
