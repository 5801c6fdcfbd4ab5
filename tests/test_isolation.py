"""Tests for ``birnn_export/_isolation.py``: an engine run in a child process answers as it
would here, its errors arrive with their own type, and the child goes on after one."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from birnn_export._isolation import IsolatedRunner
from birnn_export.base_runner import BaseRunner
from birnn_export.errors import EngineUnavailableError
from birnn_export.runners import OrtRunner, make_runner


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = relu(x) + 1, x float32 [batch, 3]."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "one"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], [one]), opset_imports=[helper.make_opsetid("", 18)]
    )
    path = tmp_path_factory.mktemp("isolation") / "g.onnx"
    onnx.save(model, str(path))
    return path


def test_the_child_answers_as_the_engine_does_here(graph: Path) -> None:
    feed = {"x": np.array([[-1.0, 0.5, 2.0]], dtype=np.float32)}
    with OrtRunner(graph) as here:
        expected = here.infer(feed)
    runner = make_runner("ort-cpu", str(graph), isolate=True)
    assert isinstance(runner, IsolatedRunner)
    with runner:
        assert runner.providers() == ["CPUExecutionProvider"]
        got = runner.infer(feed)
        child = runner._proc.pid
        assert child != os.getpid()
        assert runner.last_inference_time_s is not None and runner.last_inference_time_s >= 0
    assert got.keys() == expected.keys() and np.array_equal(got["y"], expected["y"])
    assert runner._proc is None  # the child was stopped


def test_an_engine_error_arrives_in_one_piece_and_the_child_goes_on(graph: Path) -> None:
    """ONNX Runtime's own error class does not exist here: it arrives as a RuntimeError naming
    it, with ORT's message; birnn-export's errors keep their type."""
    with make_runner("ort-cpu", str(graph), isolate=True) as runner:
        child = runner._proc.pid
        with pytest.raises(RuntimeError, match=r"(?s)^InvalidArgument: .*Got: 4 Expected: 3"):
            runner.infer({"x": np.zeros((2, 4), dtype=np.float32)})  # 4 features, not 3
        out = runner.infer({"x": np.ones((2, 3), dtype=np.float32)})
        assert runner._proc.pid == child  # the same child answered
    assert np.array_equal(out["y"], np.full((2, 3), 2.0, dtype=np.float32))
    runner = make_runner("ort-cuda", str(graph), isolate=True)
    if runner.unavailable_reason() is None:
        pytest.skip("ONNX Runtime's CUDA provider is available here")
    with pytest.raises(EngineUnavailableError, match="ort-cuda"):
        runner.activate()  # refused in the child, told here as the same error


class WhereRunner(BaseRunner):
    """Answers with where its process is: the working folder, a variable, its process id."""

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "cwd": np.array(os.getcwd()),
            "mark": np.array(os.environ.get("BIRNN_EXPORT_TEST_MARK", "")),
            "pid": np.array(os.getpid()),
        }


def test_a_child_works_where_the_parent_is_when_it_starts(tmp_path: Path, monkeypatch) -> None:
    """Children fork from a server started with the first of them: each still takes the
    working folder and the environment the parent has when that child starts, as a spawned
    one does (a relative graph path, a cache folder set meanwhile)."""
    monkeypatch.delenv("BIRNN_EXPORT_TEST_MARK", raising=False)
    with IsolatedRunner("where", WhereRunner) as first:
        before = first.infer({})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIRNN_EXPORT_TEST_MARK", "set later")
    with IsolatedRunner("where", WhereRunner) as second:
        after = second.infer({})
    assert str(before["mark"]) == "" and str(after["mark"]) == "set later"
    assert str(after["cwd"]) == str(tmp_path) and str(before["cwd"]) != str(tmp_path)
    assert int(after["pid"]) not in (os.getpid(), int(before["pid"]))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc (Linux)")
def test_the_fork_server_holds_no_thread_to_fork(graph: Path) -> None:
    """Forking a process that holds threads can deadlock the child (and warns from Python
    3.12): the server imports numpy, whose OpenBLAS starts a thread pool unless told not to."""
    from multiprocessing import forkserver

    blas = os.environ.get("OPENBLAS_NUM_THREADS")
    with make_runner("ort-cpu", str(graph), isolate=True) as runner:
        runner.infer({"x": np.ones((1, 3), dtype=np.float32)})
    server = forkserver._forkserver._forkserver_pid
    assert server is not None, "no fork server: children were spawned"
    assert len(os.listdir(f"/proc/{server}/task")) == 1
    assert os.environ.get("OPENBLAS_NUM_THREADS") == blas  # the parent's own, as it was
