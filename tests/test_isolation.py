"""Tests for ``birnn_export/_isolation.py``: an engine run in a child process answers as it
would here, its errors arrive with their own type, and the child goes on after one."""

from __future__ import annotations

import functools
import multiprocessing
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from birnn_export import errors
from birnn_export._isolation import IsolatedRunner, _answer, _rebuild, _serve
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


def _runs_done(wanted: int, runs: int, elapsed: float) -> bool:  # picklable, for the child
    return runs >= wanted


def test_timed_runs_loop_in_the_child_in_one_request(
    graph: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench times an engine in a child by one request: the child runs the warm-up and the
    timed runs back to back, as a serving process calls the engine. A request per run let
    ONNX Runtime's threads fall asleep between runs, ~0.05 ms each (users52 F2)."""
    asked: list[str] = []
    receive = IsolatedRunner._receive

    def counted(self: IsolatedRunner, doing: str) -> tuple[str, object]:
        asked.append(doing)
        return receive(self, doing)

    feed = {"x": np.ones((2, 3), dtype=np.float32)}
    with make_runner("ort-cpu", str(graph), isolate=True) as runner:
        monkeypatch.setattr(IsolatedRunner, "_receive", counted)
        times = runner.timed_runs(feed, warmup=3, done=functools.partial(_runs_done, 7))
        assert len(asked) == 1 and len(times) == 7 and all(t > 0 for t in times)
        two = functools.partial(_runs_done, 2)
        with pytest.raises(RuntimeError, match="InvalidArgument"):  # the engine's own error
            runner.timed_runs({"x": np.ones((2, 4), dtype=np.float32)}, warmup=0, done=two)
        assert len(runner.timed_runs(feed, warmup=0, done=two)) == 2
    # stopped: refused, where a child started here would outlive deactivate() (review32)
    with pytest.raises(RuntimeError, match="call activate"):
        runner.timed_runs(feed, warmup=0, done=two)
    assert runner._proc is None


class _Counting(BaseRunner):  # counts its runs, class-wide: _answer makes the instance
    engine = "count"
    calls = 0

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, feed):
        type(self).calls += 1
        return {"y": np.asarray(feed["x"])}


def test_the_child_runs_the_warm_up_it_is_asked_for() -> None:
    """The child's loop runs the warm-up, untimed, before the timed runs: a child that dropped
    it timed a cold engine (review33 M05). In this process: the loop the child runs."""
    _Counting.calls = 0
    parent, child = multiprocessing.Pipe()
    feed = {"x": np.ones((2, 3), dtype=np.float32)}
    parent.send(("time", (feed, {"warmup": 4, "done": functools.partial(_runs_done, 5)})))
    parent.send(("stop", None))
    _answer(child, _Counting)
    assert parent.recv()[0] == "ready"
    kind, times = parent.recv()
    assert kind == "ok" and len(times) == 5 and _Counting.calls == 4 + 5


def test_an_interrupt_while_the_child_starts_leaves_no_child(
    graph: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """users47 F1: SIGTERM (raised as KeyboardInterrupt) while the child loaded the graph left
    it running past the command, which then printed tracebacks on the staged graph removed."""

    def interrupted(self: IsolatedRunner, doing: str) -> None:
        raise KeyboardInterrupt

    runner = make_runner("ort-cpu", str(graph), isolate=True)
    before = set(multiprocessing.active_children())
    monkeypatch.setattr(IsolatedRunner, "_receive", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.activate()
    assert runner._proc is None
    assert not set(multiprocessing.active_children()) - before


def test_a_child_whose_parent_is_gone_ends_without_a_traceback() -> None:
    """Its answer finds the pipe closed: it returns (a BrokenPipeError printed a traceback)."""
    here, there = multiprocessing.Pipe()
    here.close()
    _serve(there, functools.partial(OrtRunner, "missing.onnx"))  # fails, and cannot say so


def test_every_error_of_the_hierarchy_comes_back_as_itself() -> None:
    """An error raised in an engine's child is rebuilt by its class name in the parent; five of
    the ten came back as a RuntimeError, outside the hierarchy: a traceback (review34 R14)."""
    kinds = [
        kind
        for kind in vars(errors).values()
        if isinstance(kind, type) and issubclass(kind, errors.BiRNNExportError)
    ]
    assert len(kinds) >= 10
    for kind in kinds:
        rebuilt = _rebuild((kind.__name__, "the message"))
        assert type(rebuilt) is kind and str(rebuilt) == "the message"
    assert type(_rebuild(("ZeroDivisionError", "x"))) is RuntimeError
