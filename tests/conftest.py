"""Shared test configuration."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# GPU tests compare fp32 strictly: no TF32 in cuBLAS, cuDNN or TensorRT (read when they load).
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")

# CI runs the same examples every time (a failure there is reproducible); local runs explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def _reuse_the_exporters_op_registry() -> None:
    """Build torch.onnx's table of ATen-to-ONNX functions once per opset, not once per export.

    ``torch.onnx.export`` rebuilds it from torchlib on every call: about a quarter of a small
    model's export time, and the tests export hundreds of graphs in each process. The export
    only reads it (it adds to it only for a ``custom_translation_table``, which birnn-export
    never passes), so sharing it changes no graph; a user's command exports once per process
    and builds it once either way.
    """
    import functools

    from torch.onnx._internal.exporter import _constants, _registration

    build = _registration.ONNXRegistry.from_torchlib.__func__

    @functools.cache
    def cached(cls: type, opset_version: int) -> object:
        return build(cls, opset_version=opset_version)

    def from_torchlib(cls: type, opset_version: int = _constants.TORCHLIB_OPSET) -> object:
        return cached(cls, opset_version)

    _registration.ONNXRegistry.from_torchlib = classmethod(from_torchlib)


_reuse_the_exporters_op_registry()


def _list_the_dispatchers_composite_ops_once() -> None:
    """Look up torch's CompositeImplicitAutograd ops in its C++ dispatcher once, not at each
    export's decomposition.

    ``torch.export`` walks the dispatcher's whole list (thousands of ops) for each op namespace
    a graph's decomposition meets, to make them attributes of ``torch.ops``: a quarter of a
    small model's export time (0.25 of 1.0 s, measured over 8 exports of a BiRNN). torch does
    not cache it because a custom op library may add ops later; the tests register none, and a
    repeated lookup finds the same ops, so the graphs are the same.
    """
    import functools

    from torch._export import utils

    utils._materialize_cpp_cia_ops = functools.cache(utils._materialize_cpp_cia_ops)


_list_the_dispatchers_composite_ops_once()


def _one_torch_thread_per_worker() -> None:
    """Under pytest-xdist with a worker per core, torch's own intra-op threads (one per core in
    each worker) only contend for the cores the other workers use."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers >= (os.cpu_count() or 1):
        import torch

        torch.set_num_threads(1)


_one_torch_thread_per_worker()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Leave what the test modules imported (torch, ONNX, ONNX Runtime: some 400 thousand
    objects) out of the garbage collector's scans from now on.

    A full collection walks every object: 0.2 s in a process that has exported once, and over
    0.4 s in a test worker, at each TensorRT call (:func:`birnn_export.trt.gc_paused` collects
    before it) and at each of Python's own full collections. Frozen objects stay alive, which
    imported modules do anyway; each test's own objects are collected as before.
    """
    import gc

    gc.collect()
    gc.freeze()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow (the full suite: about 1.7x the default's time)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` are deselected unless ``--run-slow`` is given, ``-m`` names them
    (``-m slow`` runs the slow tier alone) or a test is named by its id; tests marked
    ``tensorrt_rtx`` skip, with the reason, where ``tensorrt_rtx`` does not import (one
    condition for all: the dev extra installs it, so CI runs them)."""
    named = any("::" in arg for arg in config.args)  # a test named by its id runs (review36 R15)
    if not (config.getoption("--run-slow") or named or "slow" in config.getoption("markexpr")):
        slow = [item for item in items if item.get_closest_marker("slow")]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if not item.get_closest_marker("slow")]
    marked = [item for item in items if item.get_closest_marker("tensorrt_rtx")]
    if not marked:
        return
    from birnn_export.trt import library_reason

    reason = library_reason("tensorrt_rtx")
    if reason is not None:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))


@contextlib.contextmanager
def static_tensorrt_rules() -> Iterator[None]:
    """While it lasts, the export's TensorRT step by its static rules only: for tests that
    assert nothing of TensorRT. The parser/builder through the CLI stays asserted in
    test_export.py::test_every_sample_exports_and_verifies, test_readme and test_pipeline's
    TensorRT tests. A module fixture or a hypothesis test (no function fixtures) uses it."""
    import functools

    from birnn_export import check

    with pytest.MonkeyPatch.context() as patch:
        static = functools.partial(check.check_compatibility, tensorrt="static")
        patch.setattr(check, "check_compatibility", static)
        yield


@pytest.fixture
def static_tensorrt() -> Iterator[None]:
    """:func:`static_tensorrt_rules` for one test."""
    with static_tensorrt_rules():
        yield


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
