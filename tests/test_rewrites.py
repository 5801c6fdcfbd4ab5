"""birnn_export._rewrites: graph edits that work around engine behaviour, results unchanged."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort

from birnn_export._rewrites import drop_noop_squeezes, sink_batch_transposes


def run_ort(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def _transpose_matmul_fp16() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((3, 5)).astype(np.float16), "W")
    bias = onnx.numpy_helper.from_array(rng.standard_normal(5).astype(np.float16), "b")
    nodes = [
        onnx.helper.make_node("Relu", ["x"], ["r"], name="relu"),
        onnx.helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0, 2], name="to_batch_first"),
        onnx.helper.make_node("MatMul", ["t", "W"], ["m"], name="head"),
        onnx.helper.make_node("Add", ["m", "b"], ["y"], name="bias"),
    ]
    f16 = onnx.TensorProto.FLOAT16
    graph = onnx.helper.make_graph(
        nodes,
        "g",
        [onnx.helper.make_tensor_value_info("x", f16, ["seq", "batch", 3])],
        [onnx.helper.make_tensor_value_info("y", f16, ["batch", "seq", 5])],
        [weight, bias],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])


def _loads_in_a_subprocess(path) -> int:
    code = (
        "import onnxruntime as ort, sys\n"
        f"ort.InferenceSession({str(path)!r}, providers=['CPUExecutionProvider'])\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode


def test_fp16_transpose_before_matmul_is_sunk_below_it(tmp_path):
    """ONNX Runtime 1.32's CPU provider crashes creating a session for an fp16 batch-axis
    Transpose feeding a MatMul (its MatmulTransposeFusion, across the Casts it inserts): the
    head of every batch-first model. The export moves the Transpose after the MatMul."""
    original = _transpose_matmul_fp16()
    before = tmp_path / "before.onnx"
    onnx.save(original, before)
    if ort.__version__.startswith("1.32."):
        assert _loads_in_a_subprocess(before) != 0  # the crash this works around
    fixed = _transpose_matmul_fp16()
    assert sink_batch_transposes(fixed) == 1
    onnx.checker.check_model(fixed, full_check=True)
    assert [n.op_type for n in fixed.graph.node] == ["Relu", "MatMul", "Transpose", "Add"]
    after = tmp_path / "after.onnx"
    onnx.save(fixed, after)
    assert _loads_in_a_subprocess(after) == 0
    x = np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float16)
    (got,) = run_ort(after, {"x": x}).values()
    w = onnx.numpy_helper.to_array(original.graph.initializer[0]).astype(np.float32)
    b = onnx.numpy_helper.to_array(original.graph.initializer[1]).astype(np.float32)
    want = np.maximum(x.astype(np.float32), 0).transpose(1, 0, 2) @ w + b
    np.testing.assert_allclose(got.astype(np.float32), want, atol=2e-2, rtol=1e-2)
    # Left alone: a batched (rank-3) right operand, a Transpose that swaps the last two axes.
    batched = _transpose_matmul_fp16()
    batched.graph.initializer[0].CopyFrom(
        onnx.numpy_helper.from_array(np.zeros((2, 3, 5), np.float16), "W")
    )
    assert sink_batch_transposes(batched) == 0
    last_two = _transpose_matmul_fp16()
    last_two.graph.node[1].attribute[0].ints[:] = [0, 2, 1]
    assert sink_batch_transposes(last_two) == 0


def test_fp16_transpose_before_a_product_with_a_vector_is_sunk_below_it(tmp_path):
    """The same crash for ``h @ q`` (an attention query, a vector): the product has no last
    axis, so the Transpose after it swaps the axes before it."""

    def model() -> onnx.ModelProto:
        proto = _transpose_matmul_fp16()
        query = np.random.default_rng(2).standard_normal(3).astype(np.float16)
        proto.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(query, "W"))
        del proto.graph.node[-1]  # no bias: y = MatMul(Transpose(relu(x)), q)
        proto.graph.node[-1].output[0] = "y"
        proto.graph.output[0].CopyFrom(
            onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, ["batch", "seq"])
        )
        return proto

    before = tmp_path / "before.onnx"
    onnx.save(model(), before)
    if ort.__version__.startswith("1.32."):
        assert _loads_in_a_subprocess(before) != 0
    fixed = model()
    assert sink_batch_transposes(fixed) == 1
    onnx.checker.check_model(fixed, full_check=True)
    assert [list(n.attribute[0].ints) for n in fixed.graph.node if n.op_type == "Transpose"] == [
        [1, 0]
    ]
    after = tmp_path / "after.onnx"
    onnx.save(fixed, after)
    assert _loads_in_a_subprocess(after) == 0
    x = np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float16)
    (got,) = run_ort(after, {"x": x}).values()
    q = onnx.numpy_helper.to_array(model().graph.initializer[0]).astype(np.float32)
    want = np.maximum(x.astype(np.float32), 0).transpose(1, 0, 2) @ q
    np.testing.assert_allclose(got.astype(np.float32), want, atol=2e-2, rtol=1e-2)


def test_sinking_keeps_other_readers_and_names_unique(tmp_path):
    """Two unnamed MatMuls on one Transpose, which is also a graph output and read inside an
    If branch: both MatMuls move, their new nodes get distinct names, the Transpose stays, and
    the graph still loads and computes the same."""
    model = _transpose_matmul_fp16()
    graph = model.graph
    f16 = onnx.TensorProto.FLOAT16
    for node in graph.node:
        node.name = ""
    second = onnx.helper.make_node("MatMul", ["t", "W"], ["m2"])
    graph.node.insert(3, second)
    graph.node.append(onnx.helper.make_node("Add", ["y", "m2"], ["y2"]))
    branch = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["t"], ["inner"])],
        "branch",
        [],
        [onnx.helper.make_tensor_value_info("inner", f16, ["batch", "seq", 3])],
    )
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(True), "flag"))
    graph.node.append(
        onnx.helper.make_node("If", ["flag"], ["chosen"], then_branch=branch, else_branch=branch)
    )
    del graph.output[:]
    graph.output.extend(
        [
            onnx.helper.make_tensor_value_info("y2", f16, ["batch", "seq", 5]),
            onnx.helper.make_tensor_value_info("chosen", f16, ["batch", "seq", 3]),
        ]
    )
    before = tmp_path / "before.onnx"
    onnx.save(model, before)
    assert sink_batch_transposes(model) == 2
    onnx.checker.check_model(model, full_check=True)
    names = [n.name for n in model.graph.node if n.name]
    assert len(names) == len(set(names)) == 2
    assert [n.op_type for n in model.graph.node].count("Transpose") == 3  # kept + 2 new
    after = tmp_path / "after.onnx"
    onnx.save(model, after)
    assert _loads_in_a_subprocess(after) == 0
    x = np.random.default_rng(2).standard_normal((4, 2, 3)).astype(np.float16)
    got = run_ort(after, {"x": x})
    w = onnx.numpy_helper.to_array(graph.initializer[0]).astype(np.float32)
    b = onnx.numpy_helper.to_array(graph.initializer[1]).astype(np.float32)
    t = np.maximum(x.astype(np.float32), 0).transpose(1, 0, 2)
    np.testing.assert_allclose(got["y2"].astype(np.float32), 2 * (t @ w) + b, atol=3e-2, rtol=1e-2)
    np.testing.assert_allclose(got["chosen"].astype(np.float32), t, atol=1e-2)


def test_sinking_drops_the_dead_transposes_value_info():
    model = _transpose_matmul_fp16()
    model = onnx.shape_inference.infer_shapes(model)
    assert "t" in {v.name for v in model.graph.value_info}
    assert sink_batch_transposes(model) == 1
    assert "t" not in {v.name for v in model.graph.value_info}
    assert "t" not in {o for n in model.graph.node for o in n.output}


def test_a_layer_called_twice_gets_distinct_node_names(tmp_path):
    """Two calls of one layer in forward emit two sets of nodes: the second is ``name#2`` (one
    name twice makes an invalid model that ONNX Runtime refuses to load)."""
    import torch
    from torch import nn

    from birnn_export.pipeline import export_onnx

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(4, 4, batch_first=True, bidirectional=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(self.rnn(x)[0][..., :4])[0]

    export_onnx(Twice().eval(), tmp_path / "m.onnx", input_size=4, layout="fused")
    names = [n.name for n in onnx.load(str(tmp_path / "m.onnx")).graph.node if n.op_type == "GRU"]
    assert names == ["rnn/l0", "rnn/l0#2"]


def test_split_reversals_are_named_after_their_backward_node(tmp_path):
    """The split layout's ReverseSequence nodes carry their layer's name (the exporter's are
    node__symbolic_N): the one feeding a backward node, and the one after its output."""
    import torch
    from torch import nn

    from birnn_export.pipeline import export_onnx

    torch.manual_seed(0)
    model = nn.LSTM(4, 5, num_layers=2, batch_first=True, bidirectional=True).eval()
    export_onnx(model, tmp_path / "m.onnx", layout="split", verify=False)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    names = sorted(n.name for n in graph.node if n.op_type == "ReverseSequence")
    assert names == [
        f"<root>/l{k}/backward/reverse_{side}" for k in (0, 1) for side in ("in", "out")
    ]
    recurrent = {n.name for n in graph.node if n.op_type == "LSTM"}
    assert "<root>/l1/backward" in recurrent


def test_every_initializer_is_used_so_onnx_runtime_loads_quietly(tmp_path):
    """An initializer no node reads makes ONNX Runtime warn at every session start. The empty
    batch guard of a time-major graph (no input with axes after its batch axis) made one."""
    from birnn_export.pipeline import export_onnx
    from birnn_export.spec import all_nodes
    from tests.realistic_models import TutorialEncoder

    inputs = ["src:int64[seq,batch]", "src_len:int64[batch]:lengths(seq)"]
    result = export_onnx(TutorialEncoder().eval(), tmp_path / "t.onnx", inputs=inputs)
    assert result.verification.passed, result.verification.summary()
    graph = onnx.load(str(tmp_path / "t.onnx")).graph
    used = {name for node in all_nodes(graph) for name in node.input}
    assert {t.name for t in graph.initializer} <= used


def _squeezes(axes: list[list[int]]) -> onnx.ModelProto:
    """x [1, 4, 'time'] through one Squeeze per axes list, each output a graph output."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, "time"])
    nodes, outputs, constants = [], [], []
    for index, which in enumerate(axes):
        constants.append(onnx.numpy_helper.from_array(np.asarray(which, np.int64), f"axes{index}"))
        nodes.append(onnx.helper.make_node("Squeeze", ["x", f"axes{index}"], [f"y{index}"]))
        outputs.append(
            onnx.helper.make_tensor_value_info(f"y{index}", onnx.TensorProto.FLOAT, None)
        )
    graph = onnx.helper.make_graph(nodes, "g", [x], outputs, constants)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])


def test_squeezes_of_axes_whose_size_is_not_one_squeeze_nothing_as_in_torch(tmp_path):
    """torch.onnx writes x.squeeze(1) as Squeeze(axes=[1]) where dim 1 is 4 (SpeechBrain's
    Conv2d): torch leaves x as it is, and ONNX refuses the graph."""
    proto = _squeezes([[1], [0, 1], [-1], [0]])
    try:
        onnx.shape_inference.infer_shapes(proto, strict_mode=True)
        refused = False
    except onnx.shape_inference.InferenceError:
        refused = True
    assert refused
    assert drop_noop_squeezes(proto) == 2
    assert [n.op_type for n in proto.graph.node] == ["Identity", "Squeeze", "Squeeze", "Squeeze"]
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(proto, strict_mode=True))
    path = tmp_path / "s.onnx"
    onnx.save(proto, str(path))
    x = np.random.default_rng(0).standard_normal((1, 4, 1)).astype(np.float32)
    got = run_ort(path, {"x": x})
    # torch's squeeze: axes of size 1 only; the symbolic one stays as the exporter wrote it
    want = [x, x.squeeze(0), x.squeeze(-1), x.squeeze(0)]
    for index, value in enumerate(want):
        np.testing.assert_array_equal(got[f"y{index}"], value)
