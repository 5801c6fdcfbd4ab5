"""birnn_export._graph: the spec export records and the structural checks its graph must pass."""

from __future__ import annotations

import numpy as np
import onnx

from birnn_export._graph import check_graph
from birnn_export.modules import BiRNN
from birnn_export.pipeline import export_onnx


def test_check_graph_finds_a_baked_length(tmp_path):
    result = export_onnx(BiRNN(3, 4), tmp_path / "ok.onnx")
    proto = onnx.load(str(result.path))
    assert check_graph(proto, result.spec) == []
    spec = result.spec
    shape = onnx.numpy_helper.from_array(
        np.array([spec.example_batch, spec.example_seq, -1], dtype=np.int64), "baked_shape"
    )
    proto.graph.initializer.append(shape)
    out = proto.graph.output[0].name
    proto.graph.node.append(onnx.helper.make_node("Reshape", [out, "baked_shape"], ["reshaped"]))
    proto.graph.output.append(onnx.helper.make_tensor_value_info("reshaped", 1, ["a", "b", "c"]))
    problems = check_graph(proto, spec)
    assert any("baked" in p for p in problems), problems


def test_check_graph_finds_a_static_example_dim_in_value_info(tmp_path):
    result = export_onnx(BiRNN(3, 4), tmp_path / "ok.onnx")
    proto = onnx.load(str(result.path))
    value = proto.graph.output[0]
    value.type.tensor_type.shape.dim[1].ClearField("dim_param")
    value.type.tensor_type.shape.dim[1].dim_value = result.spec.example_seq
    problems = check_graph(proto, result.spec)
    assert any("length" in p and "baked" in p for p in problems), problems
