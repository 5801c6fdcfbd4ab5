"""The ``packed`` layout (:mod:`birnn_export._packed`): recurrent nodes that run only the rows
still going, checked against torch's own layers on a PackedSequence (in float64), ONNX
Runtime's own nodes, and TensorRT-RTX's parser and builder."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from birnn_export._packed import CHUNKS, is_packed_layer, pack_recurrent_nodes, packed_info
from birnn_export.check import check_compatibility
from birnn_export.describe import describe_onnx
from birnn_export.models import SequenceTagger, TaggerConfig
from birnn_export.pipeline import export_onnx
from birnn_export.spec import GraphSpec
from tests.test_modules import reference as packed_reference
from tests.test_verification import export_trained


def tagger(cell: str, layers: int = 1) -> SequenceTagger:
    """A small tagger that takes lengths (without them nothing is packed)."""
    torch.manual_seed(0)
    config = TaggerConfig(cell=cell, input_size=8, hidden_size=12, output_size=5,
                          num_layers=layers, uses_lengths=True)  # fmt: skip
    return SequenceTagger(config).eval()


def run_ort(model, feed):
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


@pytest.mark.parametrize(
    ("cell", "layers", "bidirectional"),
    [(nn.LSTM, 2, True), (nn.GRU, 1, True), (nn.LSTM, 1, False)],
)
def test_packed_layout_equals_the_packed_builtin_layer_in_float64(
    tmp_path, cell, layers, bidirectional
):
    """Outputs at every position (zeros past each length) and final states, against the layer
    in float64 on a PackedSequence: ragged lengths with 1 and the full length, and a batch
    shorter than the number of time spans (spans past the longest row run zero steps)."""
    torch.manual_seed(0)
    layer = cell(6, 5, num_layers=layers, batch_first=True, bidirectional=bidirectional).eval()
    path = tmp_path / "packed.onnx"
    result = export_onnx(layer, path, layout="packed", seq_range=(1, 8, 40))
    assert result.verification is not None and result.verification.passed
    model = onnx.load(str(path))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    directions = 2 if bidirectional else 1
    assert ops[cell.__name__] == layers * directions * CHUNKS, ops
    assert not ops["Loop"] and not ops["If"] and not ops["Scan"], ops
    marked = [n for n in model.graph.node if is_packed_layer(n)]
    assert [n.name.split("/")[-1] for n in marked] == [f"l{k}" for k in range(layers)]
    assert packed_info(marked[0])["op"] == cell.__name__
    assert GraphSpec.from_onnx(model).layout == "packed"
    reference = layer.double()
    for lengths in ([11, 1, 7, 4], [2, 1, 2, 1]):
        x = np.random.default_rng(1).standard_normal((4, 11, 6))
        got = run_ort(path, {"x": x.astype(np.float32), "lengths": np.array(lengths)})
        with torch.no_grad():
            want, state = packed_reference(reference, torch.from_numpy(x), torch.tensor(lengths))
        np.testing.assert_allclose(got["output"], want.numpy(), atol=2e-6)
        h_n, c_n = state if cell is nn.LSTM else (state, None)
        np.testing.assert_allclose(got["h_n"], h_n.numpy(), atol=2e-6)
        if c_n is not None:
            np.testing.assert_allclose(got["c_n"], c_n.numpy(), atol=2e-6)


def _node_graph(
    op: str, gates: int, direction: str = "bidirectional", initial: bool = True, **attrs
) -> onnx.ModelProto:
    """One node with lengths, initial states (and LSTM's peepholes) as in ONNX, with behaviour
    torch's layers do not have (peepholes, GRU's linear_before_reset=0)."""
    rng = np.random.default_rng(0)
    hidden, size, d = 3, 2, 2 if direction == "bidirectional" else 1
    arrays = {
        "W": (d, gates * hidden, size),
        "R": (d, gates * hidden, hidden),
        "B": (d, 2 * gates * hidden),
        **({"P": (d, 3 * hidden)} if op == "LSTM" else {}),
    }
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in arrays.items()
    ]
    states = (["h0", "c0"] if op == "LSTM" else ["h0"]) if initial else []
    inputs = ["X", "W", "R", "B", "L", *(states or ["", ""][: 2 if op == "LSTM" else 0])]
    inputs += ["P"] if op == "LSTM" else []
    outputs = ["Y", "Y_h", *(["Y_c"] if op == "LSTM" else [])]
    node = helper.make_node(op, inputs, outputs, name="layer", hidden_size=hidden,
                            direction=direction, **attrs)  # fmt: skip
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], "g",
        [value("X", TensorProto.FLOAT, ["T", "B", size]), value("L", TensorProto.INT32, ["B"])]
        + [value(s, TensorProto.FLOAT, [d, "B", hidden]) for s in states],
        [value(o, TensorProto.FLOAT, None) for o in outputs],
        weights,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _assert_rewrite_matches_the_node(model: onnx.ModelProto, batches, steps_past: int = 1):
    """Rewrite ``model``'s node and compare every output with ONNX Runtime's own node on each
    batch of lengths (``steps_past``: padding steps beyond the longest row)."""
    original = model.SerializeToString()
    assert pack_recurrent_nodes(model) == 1
    session = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
    states = {i.name: i.shape[0] for i in session.get_inputs() if i.name in ("h0", "c0")}
    rng = np.random.default_rng(3)
    for lengths in batches:
        batch = len(lengths)
        feed = {
            "X": rng.standard_normal((max(max(lengths) + steps_past, 1), batch, 2)).astype(
                np.float32
            ),
            "L": np.array(lengths, np.int32),
            **{s: rng.standard_normal((d, batch, 3)).astype(np.float32) for s, d in states.items()},
        }
        want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed),
                        strict=True))  # fmt: skip
        got = run_ort(model, feed)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, atol=1e-6, err_msg=f"{name} {lengths}")


@pytest.mark.parametrize(
    ("op", "gates", "attrs"),
    [
        ("LSTM", 4, {}),
        ("LSTM", 4, {"input_forget": 1}),
        ("GRU", 3, {"linear_before_reset": 0}),
        ("GRU", 3, {"activations": ["Sigmoid", "Tanh", "HardSigmoid", "Tanh"]}),
    ],
)
def test_the_rewrite_computes_what_the_node_computes(op, gates, attrs):
    """ONNX Runtime's own node is the reference for what torch's layers lack: peepholes,
    initial states, GRU's linear_before_reset=0 and different activations per direction."""
    rng = np.random.default_rng(3)
    batches = [[9, 1, 5, 9, 2], [1, 1], [3, 2, 3], [4], [2, 1, 2, 1, 1, 2], [9] * 6]
    batches += [rng.integers(1, 10, rng.integers(1, 12)).tolist() for _ in range(20)]
    # ties, B = 1, B < CHUNKS, equal rows, spans that are empty
    _assert_rewrite_matches_the_node(_node_graph(op, gates, **attrs), batches)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("initial", [True, False])
def test_rows_of_length_zero_one_direction_and_no_initial_states(op, direction, initial):
    """Rows of length 0 (torch refuses to pack them; ONNX's node gives zero outputs and zero
    states), also where they make the first span empty, and the whole batch of them; a node
    of one direction; nodes without initial states; no padding past the longest row."""
    model = _node_graph(op, 4 if op == "LSTM" else 3, direction=direction, initial=initial)
    batches = [[4, 0, 2], [4, 3, 2, 0], [3, 3, 0, 3], [5, 0, 0, 0, 0, 1], [0], [0, 0, 0]]
    batches += [[7, 2, 7, 1, 3], [1]]
    _assert_rewrite_matches_the_node(model, batches, steps_past=0)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_onnx_reference_evaluator_runs_the_rewrite(op):
    """The rewrite keeps to the ONNX spec (users54 F3: CumSum's axis was a 1-D [0], where the
    spec takes a 0-D tensor; ONNX Runtime took it, ONNX's reference evaluator refused the
    graph). Every span the rewrite runs is as long as its rows, so the evaluator, which
    ignores sequence_lens, gives ONNX Runtime's outputs of the node."""
    from onnx.reference import ReferenceEvaluator

    model = _node_graph(op, 4 if op == "LSTM" else 3, direction="bidirectional", initial=False)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert pack_recurrent_nodes(model) == 1
    rng = np.random.default_rng(0)
    feed = {"X": rng.standard_normal((6, 4, 2)).astype(np.float32), "L": np.int32([6, 4, 4, 2])}
    for want, got in zip(
        session.run(None, feed), ReferenceEvaluator(model).run(None, feed), strict=True
    ):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_nodes_without_lengths_are_kept():
    """Without sequence_lens every row runs to the end: there is nothing to skip."""
    model = _node_graph("GRU", 3)
    node = model.graph.node[0]
    node.input[4] = ""
    assert pack_recurrent_nodes(model) == 0
    assert [n.op_type for n in model.graph.node] == ["GRU"]


def test_activation_alpha_is_refused():
    activations = ["Sigmoid", "Tanh", "Tanh"] * 2
    model = _node_graph("GRU", 3, activations=activations, activation_alpha=[1.0])
    with pytest.raises(ValueError, match="activation_alpha"):
        pack_recurrent_nodes(model)


def test_rnn_layers_are_written_as_scan_loops(tmp_path):
    """A packed RNN node was slower than the scan layout's loop on ragged batches: the packed
    layout keeps RNN layers as loops, and packs the LSTM layers beside them."""
    torch.manual_seed(0)

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(6, 5, batch_first=True, bidirectional=True)
            self.lstm = nn.LSTM(10, 4, batch_first=True, bidirectional=True)

        def forward(self, x, lengths):
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            packed = self.lstm(self.rnn(packed)[0])[0]
            return pad_packed_sequence(packed, batch_first=True, total_length=x.shape[1])[0]

    result = export_onnx(Mixed().eval(), tmp_path / "m.onnx", layout="packed")
    assert result.verification.passed
    ops = result.op_counts
    assert ops.get("Scan") == 1 and "RNN" not in ops and ops.get("LSTM") == 2 * CHUNKS, ops


def test_tagger_verifies_layer_by_layer_and_inspect_lists_each_layer_once(tmp_path):
    model = tagger("gru", layers=2)
    result = export_onnx(model, tmp_path / "m.onnx", layout="packed")
    layers = {c.name for case in result.verification.cases for c in case.outputs}
    assert {"rnn/l0", "rnn/l1"} <= layers, layers
    recurrent = describe_onnx(tmp_path / "m.onnx")["recurrent_nodes"]
    assert [(n["name"], n["op"]) for n in recurrent] == [
        ("rnn/l0", "GRU (packed)"),
        ("rnn/l1", "GRU (packed)"),
    ]
    assert recurrent[0]["attributes"] == {
        "hidden_size": 12, "direction": "bidirectional", "chunks": CHUNKS
    }  # fmt: skip
    # the replaced node's inputs: the layer's x, its weights, the lengths
    assert recurrent[1]["inputs"][0] != recurrent[0]["inputs"][0]
    assert recurrent[0]["inputs"][4] == recurrent[1]["inputs"][4], recurrent


def test_packed_layout_in_float16(tmp_path):
    model = tagger("lstm")
    result = export_onnx(model, tmp_path / "m.onnx", layout="packed", dtype="float16")
    assert result.verification.passed and result.op_counts.get("LSTM") == 2 * CHUNKS


def test_int8_of_a_trained_model_passes_the_task_like_the_fused_graph(tmp_path):
    """Every span's LSTM has weights of its own in the quantizer's eyes (it corrupts shared
    ones: quantize._shared_lstm_weights); the int8 graph agrees with the model as the fused
    graph's int8 does, and identical int8 weights are stored once."""
    name = "time_major_ctc"  # a trained CTC model whose int8 graph passes (test_quantize)
    _, packed = export_trained(name, tmp_path / "p.onnx", layout="packed", quantize="int8")
    _, fused = export_trained(name, tmp_path / "f.onnx", layout="fused", quantize="int8")
    assert packed.verification.passed
    nodes = packed.quantization.quantized["DynamicQuantizeLSTM"]
    assert nodes == CHUNKS * fused.quantization.quantized["DynamicQuantizeLSTM"] * 2
    packed_error, fused_error = (
        max(o.rel_l2 for c in result.verification.cases for o in c.outputs if o.rel_l2)
        for result in (packed, fused)
    )
    assert packed_error < 2 * fused_error, (packed_error, fused_error)
    int8_bytes = [
        sum(len(t.raw_data) for t in onnx.load(str(r.path)).graph.initializer if t.data_type == 3)
        for r in (packed, fused)
    ]
    assert int8_bytes[0] <= int8_bytes[1] + 64, int8_bytes  # the same weights, once each


@pytest.mark.tensorrt_rtx
def test_tensorrt_parses_and_builds_the_packed_layout(tmp_path):
    """No Loop or If around the nodes: TensorRT's builder fails on recurrent nodes inside
    either (measured with a Loop and an If form of this rewrite)."""
    model = tagger("lstm", layers=2)
    export_onnx(model, tmp_path / "m.onnx", layout="packed", verify=False)
    report = check_compatibility(tmp_path / "m.onnx", target="tensorrt")
    assert report.ok and report.checked_with, report.lines()
    notes = [f for f in report.findings if "packed layout" in f.message]
    assert [f.severity for f in notes] == ["info", "info"]  # one per layer: speed unmeasured
    cuda = check_compatibility(tmp_path / "m.onnx", target="ort-cuda")
    assert cuda.ok and len([f for f in cuda.findings if "packed layout" in f.message]) == 2


@pytest.mark.tensorrt_rtx
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_tensorrt_builds_the_packed_layout_for_one_row_at_a_time(tmp_path, cell):
    """A profile of max batch 1 (Triton's max_batch_size 1, a streaming server): TensorRT's
    builder takes the sort's indices, which it cannot bound, as 1, and Gather's index 1 past
    one row failed every such build, while the recorded profile built (users56 F1)."""
    from birnn_export.trt import build_engine

    export_onnx(tagger(cell), tmp_path / "m.onnx", layout="packed", verify=False)
    build = build_engine(tmp_path / "m.onnx", batch=(1, 1, 1))
    assert build.ok, build.build_error


@pytest.mark.tensorrt_rtx
@pytest.mark.slow
def test_tensorrt_builds_the_packed_layout_of_a_character_layer_per_word(tmp_path):
    """The char layer's rows are batch x words: TensorRT refused its Squeeze without axes
    ("requires dimension 0 to not be 1 at runtime"); the rewrite names the axis."""
    from tests.realistic_models import CharWordTagger

    torch.manual_seed(0)
    result = export_onnx(CharWordTagger().eval(), tmp_path / "m.onnx", layout="packed")
    assert result.verification.passed, result.verification.summary()
    report = check_compatibility(tmp_path / "m.onnx", target="tensorrt")
    assert report.ok and report.build is not None and report.build.ok, report.lines()


@pytest.mark.tensorrt_rtx
@pytest.mark.slow
def test_tensorrt_builds_the_packed_layout_of_layers_given_initial_states(tmp_path):
    """Learned initial states, gathered into the sorted rows' order and sliced per direction:
    TensorRT's parser refused that Slice without its axes ("starts.size() == axes.size()")."""
    from tests.realistic_models import LearnedStatesLSTM

    torch.manual_seed(0)
    result = export_onnx(LearnedStatesLSTM().eval(), tmp_path / "m.onnx", layout="packed")
    assert result.verification.passed, result.verification.summary()
    report = check_compatibility(tmp_path / "m.onnx", target="tensorrt")
    assert report.ok and report.build is not None and report.build.ok, report.lines()
