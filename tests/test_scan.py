"""The ``scan`` layout (:mod:`birnn_export._scan`): RNN nodes as Scan loops, checked against
torch's own layers on a PackedSequence, ONNX Runtime, and TensorRT-RTX's parser and builder."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from birnn_export._scan import is_rnn_scan, rnn_scan_info, scan_rnn_nodes
from birnn_export.check import check_compatibility
from birnn_export.describe import describe_onnx
from birnn_export.models import SequenceTagger, TaggerConfig
from birnn_export.pipeline import export_onnx
from birnn_export.spec import GraphSpec
from tests.test_modules import reference as packed_reference


def run_ort(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


@pytest.mark.parametrize(
    ("nonlinearity", "layers", "bidirectional"),
    [("tanh", 2, True), ("relu", 1, True), ("tanh", 1, False)],
)
def test_scan_layout_equals_the_packed_builtin_layer(tmp_path, nonlinearity, layers, bidirectional):
    """Outputs at every position (zeros past each length) and final states, ragged lengths
    including 1 and the full length, against nn.RNN on a PackedSequence."""
    torch.manual_seed(0)
    layer = nn.RNN(
        6, 5, num_layers=layers, nonlinearity=nonlinearity, batch_first=True,
        bidirectional=bidirectional,
    ).eval()  # fmt: skip
    path = tmp_path / "scan.onnx"
    result = export_onnx(layer, path, layout="scan", seq_range=(1, 8, 40))
    assert result.verification is not None and result.verification.passed
    graph = onnx.load(str(path)).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert ops["RNN"] == 0 and ops["Scan"] == layers, ops
    scans = [n for n in graph.node if is_rnn_scan(n)]
    assert [n.name.split("/")[-1] for n in scans] == [f"l{k}" for k in range(layers)]
    assert all(rnn_scan_info(n)["lengths"] for n in scans)
    # The replaced nodes' W, R, B are gone: only their loop-ready forms remain.
    used = {i for n in graph.node for i in n.input} | {
        i
        for n in graph.node
        for a in n.attribute
        if a.HasField("g")
        for m in a.g.node
        for i in m.input
    }
    assert {t.name for t in graph.initializer} <= used
    x = np.random.default_rng(1).standard_normal((4, 11, 6)).astype(np.float32)
    lengths = np.array([11, 1, 7, 4])
    got = run_ort(path, {"x": x, "lengths": lengths})
    with torch.no_grad():
        want, h_n = packed_reference(layer, torch.from_numpy(x), torch.from_numpy(lengths))
    np.testing.assert_allclose(got["output"], want.numpy(), atol=2e-6)
    np.testing.assert_allclose(got["h_n"], h_n.numpy(), atol=2e-6)
    assert GraphSpec.from_onnx(onnx.load(str(path))).layout == "scan"


def test_scan_layout_keeps_lstm_and_gru_nodes_and_verifies_every_layer(tmp_path):
    """A tagger whose RNN becomes a Scan verifies layer by layer (the layer check finds the
    Scan's Y); LSTM and GRU nodes are left as ONNX Runtime's own kernels."""
    torch.manual_seed(0)
    rnn = SequenceTagger(TaggerConfig(cell="rnn_tanh", input_size=8, hidden_size=12,
                                      output_size=5, num_layers=2))  # fmt: skip
    result = export_onnx(rnn.eval(), tmp_path / "rnn.onnx", layout="scan")
    layers = {c.name for case in result.verification.cases for c in case.outputs}
    assert {"rnn/l0", "rnn/l1"} <= layers, layers
    recurrent = describe_onnx(tmp_path / "rnn.onnx")["recurrent_nodes"]
    loops = [(n["name"], n["attributes"]) for n in recurrent if n["op"] == "RNN (scan)"]
    expected = {"hidden_size": 12, "direction": "bidirectional"}
    assert loops == [("rnn/l0", expected), ("rnn/l1", expected)], recurrent
    gru = SequenceTagger(TaggerConfig(cell="gru", input_size=8, hidden_size=12, output_size=5))
    export_onnx(gru.eval(), tmp_path / "gru.onnx", layout="scan", verify=False)  # ops only
    ops = {n.op_type for n in onnx.load(str(tmp_path / "gru.onnx")).graph.node}
    assert "GRU" in ops and "Scan" not in ops


def test_scan_layout_in_float16(tmp_path):
    torch.manual_seed(0)
    model = SequenceTagger(TaggerConfig(cell="rnn_relu", input_size=8, hidden_size=12,
                                        output_size=5))  # fmt: skip
    result = export_onnx(model.eval(), tmp_path / "m.onnx", layout="scan", dtype="float16")
    assert result.verification.passed and result.op_counts.get("Scan") == 1


def _rnn_node_graph(**attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in (("W", (1, 3, 2)), ("R", (1, 3, 3)))
    ]
    node = helper.make_node("RNN", ["X", "W", "R"], ["Y"], hidden_size=3, name="r", **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        weights,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("attrs", "message"),
    [({"clip": 1.0}, "clip"), ({"activations": ["Sigmoid"]}, "activations")],
)
def test_nodes_the_loop_cannot_express_exactly_are_refused(attrs, message):
    with pytest.raises(ValueError, match=message):
        scan_rnn_nodes(_rnn_node_graph(**attrs))


def test_a_reverse_node_without_lengths_runs_every_row_whole(tmp_path):
    """No sequence_lens: every row is the whole sequence, as in the node (ONNX Runtime's RNN
    node is the reference here: the rewrite must not change what the graph computes)."""
    model = _rnn_node_graph(direction="reverse")
    onnx.save(model, tmp_path / "node.onnx")
    assert scan_rnn_nodes(model) == 1
    onnx.save(model, tmp_path / "scan.onnx")
    x = np.random.default_rng(2).standard_normal((5, 3, 2)).astype(np.float32)
    np.testing.assert_allclose(
        run_ort(tmp_path / "scan.onnx", {"X": x})["Y"],
        run_ort(tmp_path / "node.onnx", {"X": x})["Y"],
        atol=1e-6,
    )


@pytest.mark.tensorrt_rtx
def test_tensorrt_parses_and_builds_the_scan_layout(tmp_path):
    torch.manual_seed(0)
    model = SequenceTagger(TaggerConfig(cell="rnn_tanh", input_size=8, hidden_size=12,
                                        output_size=5, num_layers=2))  # fmt: skip
    export_onnx(model.eval(), tmp_path / "m.onnx", layout="scan", verify=False)
    report = check_compatibility(tmp_path / "m.onnx", target="tensorrt")
    assert report.ok and report.checked_with, report.lines()
    assert not [f for f in report.findings if "Scan loop" in f.message]


def test_onnx_runtime_cuda_is_told_what_the_loop_gives_up(tmp_path):
    model = SequenceTagger(TaggerConfig(cell="rnn_tanh", input_size=8, hidden_size=12,
                                        output_size=5))  # fmt: skip
    export_onnx(model.eval(), tmp_path / "m.onnx", layout="scan", verify=False)
    report = check_compatibility(tmp_path / "m.onnx", target="ort-cuda")
    infos = [f for f in report.findings if f.severity == "info" and "Scan loop" in f.message]
    assert report.ok and len(infos) == 1 and "--layout fused" in infos[0].message


def test_int8_keeps_the_rnn_loop_in_float32_as_it_kept_the_node(tmp_path):
    """ONNX Runtime has no int8 RNN kernel, so the RNN node stayed float32; its Scan form keeps
    its input projection out of the quantizer too (only the head is quantized)."""
    torch.manual_seed(0)
    model = SequenceTagger(TaggerConfig(cell="rnn_tanh", input_size=8, hidden_size=12,
                                        output_size=5))  # fmt: skip
    result = export_onnx(model.eval(), tmp_path / "q.onnx", layout="scan", quantize="int8")
    assert result.quantization.left_float == {"RNN": 1}
    assert result.quantization.quantized == {"MatMulInteger": 1}
    nodes = onnx.load(str(tmp_path / "q.onnx")).graph.node
    assert [n.name for n in nodes if is_rnn_scan(n)] == ["rnn/l0"]  # the quantizer kept the record


@pytest.mark.parametrize("names", [["y", "h"], ["valid", "xw"]])
def test_output_names_cannot_clash_with_the_loop_body(tmp_path, names):
    """The step's own tensors are prefixed with the layer's name: graph outputs called ``y`` or
    ``h`` would otherwise be shadowed inside the body, an invalid graph."""
    torch.manual_seed(0)
    layer = nn.RNN(4, 3, batch_first=True, bidirectional=True).eval()
    result = export_onnx(layer, tmp_path / "m.onnx", layout="scan", output_names=names)
    assert result.verification.passed
    assert [o.name for o in onnx.load(str(tmp_path / "m.onnx")).graph.output] == names


# -- LSTM with proj_size: a Scan in every layout ----------------------------------------------


@pytest.mark.parametrize(
    "layout",
    ["scan", "packed", *(pytest.param(x, marks=pytest.mark.slow) for x in ("split", "fused"))],
)
def test_lstm_with_projection_is_a_scan_equal_to_the_packed_builtin_layer(tmp_path, layout):
    """ONNX's LSTM has no projection: every layout writes the layer as Scan loops of standard
    ops. Outputs at every position, h_n (proj_size units) and c_n (hidden_size), ragged
    lengths including 1, against nn.LSTM(proj_size=...) on a PackedSequence in float64."""
    torch.manual_seed(0)
    layer = nn.LSTM(6, 9, proj_size=4, num_layers=2, batch_first=True, bidirectional=True)
    path = tmp_path / "lstmp.onnx"
    result = export_onnx(layer.eval(), path, layout=layout, seq_range=(1, 8, 40))
    report = result.verification
    assert report is not None and report.passed, report.summary()
    checked = {c.name for case in report.cases for c in case.outputs if c.check == "layer"}
    assert checked == {"<root>/l0", "<root>/l1"} or checked == set(), checked
    proto = onnx.load(str(path))
    assert not [n for n in proto.graph.node if n.op_type in ("LSTM", "LSTMP")]
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    scans = [n for n in proto.graph.node if is_rnn_scan(n)]
    assert len(scans) == (2 if layout in ("fused", "scan", "packed") else 4)
    assert all(
        rnn_scan_info(n)["op"] == "LSTM" and rnn_scan_info(n)["proj_size"] == 4 for n in scans
    )
    x = np.random.default_rng(1).standard_normal((4, 11, 6))
    lengths = np.array([11, 1, 7, 4])
    got = run_ort(path, {"x": x.astype(np.float32), "lengths": lengths})
    with torch.no_grad():
        want, (h_n, c_n) = packed_reference(
            layer.double(), torch.from_numpy(x), torch.from_numpy(lengths)
        )
    np.testing.assert_allclose(got["output"], want.numpy(), atol=2e-6)
    np.testing.assert_allclose(got["h_n"], h_n.numpy(), atol=2e-6)
    np.testing.assert_allclose(got["c_n"], c_n.numpy(), atol=2e-6)
    recurrent = describe_onnx(path)["recurrent_nodes"]
    loops = [n for n in recurrent if n["op"] == "LSTM (scan)"]
    assert loops and all(n["attributes"]["proj_size"] == 4 for n in loops), recurrent


class _ProjectedTagger(nn.Module):
    """An LSTMP acoustic-model shape: packed BiLSTM with projection, then a CTC-style head."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 24, proj_size=6, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(12, 7)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                   enforce_sorted=False)  # fmt: skip
        y = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True,
                                             total_length=x.shape[1])[0]  # fmt: skip
        return self.out(y).log_softmax(-1)


@pytest.mark.slow
def test_lstm_with_projection_inside_a_model_float16_and_int8(tmp_path):
    torch.manual_seed(0)
    model = _ProjectedTagger().eval()
    result = export_onnx(model, tmp_path / "p.onnx")
    checked = {c.name for case in result.verification.cases for c in case.outputs}
    assert {"rnn/l0", "rnn/l1"} <= checked, checked  # layer by layer, too
    half = export_onnx(model, tmp_path / "half.onnx", dtype="float16")
    assert half.verification.passed, half.verification.summary()
    int8 = export_onnx(model, tmp_path / "q.onnx", quantize="int8", verify=False)
    assert int8.quantization.left_float.get("LSTM") == 2  # the loops stay float; the head not
    assert int8.quantization.quantized


@pytest.mark.tensorrt_rtx
@pytest.mark.slow
def test_lstm_with_projection_inside_a_model_builds_in_tensorrt(tmp_path):
    torch.manual_seed(0)
    model = _ProjectedTagger().eval()
    export_onnx(model, tmp_path / "p.onnx", verify=False)
    export_onnx(model, tmp_path / "half.onnx", dtype="float16", verify=False)
    for name in ("p.onnx", "half.onnx"):
        report = check_compatibility(tmp_path / name, target="tensorrt")
        assert report.ok and report.checked_with, report.lines()
        assert [f for f in report.findings if "proj_size as a Scan loop" in f.message]
