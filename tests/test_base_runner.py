"""birnn_export.base_runner: the one runner contract, and imports that run one way."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import numpy as np
import pytest

from birnn_export.base_runner import BaseRunner

PACKAGE = Path(__file__).resolve().parent.parent / "birnn_export"


class _Echo(BaseRunner):
    engine = "echo"

    def activate_impl(self) -> None:
        self.activated = True

    def infer_impl(self, feed):
        return {"y": np.asarray(feed["x"]) * 2}


def test_contract_times_itself_and_needs_activation() -> None:
    runner = _Echo()
    with pytest.raises(RuntimeError, match="call activate"):
        runner.infer({"x": 1})
    with runner as active:
        assert active.is_active and active.activate_time_s is not None
        assert active.infer({"x": np.ones(2)})["y"].tolist() == [2, 2]
        assert active.last_inference_time_s is not None
    assert not runner.is_active and runner.unavailable_reason() is None
    assert runner.providers() == ["echo"]


def test_timed_runs_warm_up_then_run_until_done() -> None:
    """The warm-up runs are not timed; ``done`` sees the timed runs so far and their
    seconds; a runner not activated refuses, as infer does."""
    seen: list[tuple[int, float]] = []

    def done(runs: int, seconds: float) -> bool:
        seen.append((runs, seconds))
        return runs >= 4

    runner = _Echo()
    with pytest.raises(RuntimeError, match=r"call activate\(\) .* before timed_runs\(\)"):
        runner.timed_runs({"x": 1}, warmup=0, done=done)
    calls: list[int] = []
    with runner:
        runner.infer_impl = lambda feed: calls.append(1) or {}  # type: ignore[method-assign]
        times = runner.timed_runs({"x": 1}, warmup=2, done=done)
    assert len(times) == 4 and len(calls) == 6 and all(t >= 0 for t in times)
    assert [runs for runs, _ in seen] == [0, 1, 2, 3, 4]
    assert all(a <= b for (_, a), (_, b) in itertools.pairwise(seen))


def _imports(path: Path) -> set[str]:
    """birnn_export modules ``path`` imports anywhere (functions included), but under
    ``if TYPE_CHECKING:`` (annotations only, never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for child in node.body
        for n in ast.walk(child)
    }
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        if node.module == "birnn_export":
            found |= {a.name for a in node.names if a.name in modules}
        elif node.module.startswith("birnn_export."):
            found.add(node.module.split(".")[1])
    return found - {path.stem}


def test_no_import_cycles() -> None:
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph = {name: deps - {"__init__"} for name, deps in graph.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join([*visiting, name])
        visiting.append(name)
        for dep in sorted(graph.get(name, ())):
            visit(dep)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_forbid_tf32_sets_the_switch_unless_the_user_did(monkeypatch) -> None:
    from birnn_export.base_runner import TF32_ENV, forbid_tf32

    monkeypatch.delenv(TF32_ENV, raising=False)
    forbid_tf32()
    import os

    assert os.environ[TF32_ENV] == "0"
    monkeypatch.setenv(TF32_ENV, "1")
    forbid_tf32()
    assert os.environ[TF32_ENV] == "1"


#: The pipeline's stages, in the order data flows (errors -> spec -> modules -> checkpoint ->
#: export -> runners -> verify/bench -> pipeline -> cli), with each private helper at the stage
#: of the public module it serves. A module may import its own stage or earlier ones only.
STAGES = (
    ("errors", "_version", "_files", "_process"),
    ("spec", "compare", "_report"),
    ("modules", "_packing", "crf", "conversion", "models", "seed"),
    ("checkpoint",),
    (
        "export",
        "_inputs",
        "_container",
        "_graph",
        "_guards",
        "_rewrites",
        "_node_rewrite",
        "_scan",
        "_packed",
        "quantize",
        "describe",
    ),
    ("runners", "base_runner", "_isolation", "trt", "trt_plan"),
    (
        "verification",
        "bench",
        "check",
        "_case",
        "_sweep",
        "_references",
        "_layers",
        "_diagnose",
        "_interop",
        "_progress",
        "_foreign",
    ),
    ("pipeline",),
    ("cli", "options", "_option_groups", "__main__"),
)


def test_imports_run_down_the_pipeline() -> None:
    stage = {name: i for i, names in enumerate(STAGES) for name in names}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(stage), "give each module a stage in STAGES"
    upstream = {
        (p.stem, dep)
        for p in PACKAGE.glob("*.py")
        if p.stem != "__init__"
        for dep in _imports(p) - {"__init__"}
        if stage[dep] > stage[p.stem]
    }
    assert not upstream, f"imports that run back up the pipeline: {sorted(upstream)}"


def test_a_gpu_engine_says_first_that_there_is_no_gpu(monkeypatch) -> None:
    """On Linux without an NVIDIA device node a GPU engine's reason says so first: the advice
    to install onnxruntime-gpu alone would have replaced a working onnxruntime (users52 F7)."""
    import glob
    import sys

    from birnn_export.base_runner import no_nvidia_gpu

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    assert no_nvidia_gpu().startswith("there is no NVIDIA GPU here (no /dev/nvidia* device)")
    monkeypatch.setattr(glob, "glob", lambda pattern: ["/dev/nvidia0"])
    assert no_nvidia_gpu() == ""
    monkeypatch.setattr(glob, "glob", lambda pattern: ["/dev/dxg"] if "dxg" in pattern else [])
    assert no_nvidia_gpu() == ""  # WSL 2: the GPU is reached through /dev/dxg


def test_onnxruntime_gpu_without_a_gpu_says_there_is_none(monkeypatch) -> None:
    """onnxruntime-gpu installed on a machine without a GPU lists CUDAExecutionProvider; the
    session then dropped it after ONNX Runtime's warnings about cuDNN and CUDA libraries, and the
    reason given was only that it was not activated (review39 F1)."""
    import glob
    import sys

    import onnxruntime as ort

    from birnn_export.runners import unavailable_reason

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: gpu_build)
    for engine, provider in (("ort-cuda", "CUDA"), ("ort-trt", "Tensorrt")):
        assert unavailable_reason(engine) == (
            f"{engine}: there is no NVIDIA GPU here (no /dev/nvidia* device), which it needs "
            f"first; this onnxruntime build's {provider}ExecutionProvider runs on one"
        )
    assert unavailable_reason("ort-cpu") is None and unavailable_reason("ort-int8") is None
    monkeypatch.setattr(glob, "glob", lambda pattern: ["/dev/nvidia0"])
    assert unavailable_reason("ort-cuda") is None  # a GPU: the session tells the rest
