"""birnn_export._graph: the spec export records and the structural checks its graph must pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from birnn_export._graph import check_graph
from birnn_export.compare import has_classes
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
    out = proto.graph.output[0].name
    sliced = onnx.ModelProto()
    sliced.CopyFrom(proto)
    proto.graph.initializer.append(shape)
    proto.graph.node.append(onnx.helper.make_node("Reshape", [out, "baked_shape"], ["reshaped"]))
    proto.graph.output.append(onnx.helper.make_tensor_value_info("reshaped", 1, ["a", "b", "c"]))
    problems = check_graph(proto, spec)
    assert any("baked" in p for p in problems), problems
    # x[:, :T] frozen at the example's T: shape inference leaves the dim unknown, so only the
    # constants the node takes tell (review31 G2)
    for name, value in (("start", 0), ("end", spec.example_seq), ("axis", 0)):
        sliced.graph.initializer.append(onnx.numpy_helper.from_array(np.int64([value]), name))
    sliced.graph.node.append(
        onnx.helper.make_node("Slice", [out, "start", "end", "axis"], ["cut"], name="cut")
    )
    sliced.graph.output.append(onnx.helper.make_tensor_value_info("cut", 1, ["s0", "s1", "s2"]))
    problems = check_graph(sliced, spec)
    assert any("Slice node cut" in p and "baked" in p for p in problems), problems


def test_check_graph_finds_a_static_example_dim_in_value_info(tmp_path):
    result = export_onnx(BiRNN(3, 4), tmp_path / "ok.onnx")
    proto = onnx.load(str(result.path))
    value = proto.graph.output[0]
    value.type.tensor_type.shape.dim[1].ClearField("dim_param")
    value.type.tensor_type.shape.dim[1].dim_value = result.spec.example_seq
    problems = check_graph(proto, result.spec)
    assert any("length" in p and "baked" in p for p in problems), problems


class _Heads(nn.Module):
    """Every kind of output a model returns: logits, log-probabilities, a masked head, the
    recurrent layer's own output and state, a tanh'd initial state, a residual sum."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 6, batch_first=True, bidirectional=True)
        self.head = nn.Linear(12, 5)
        self.bridge = nn.Linear(12, 6)

    def forward(self, x):
        out, (h_n, _) = self.rnn(x)
        logits = self.head(out)
        masked = logits.masked_fill(x[..., :1] > 3, float("-inf"))
        state = torch.tanh(self.bridge(torch.cat([h_n[0], h_n[1]], -1)))
        scaled = logits * (x[..., :1] > 0).to(x.dtype) / 2.0
        return logits, torch.log_softmax(logits, -1), masked, scaled, out, h_n, state, out + out


def test_class_scores_are_read_from_the_graph(tmp_path):
    result = export_onnx(_Heads().eval(), tmp_path / "h.onnx", verify=False)
    classes = [o.classes for o in result.spec.outputs]
    assert classes == [True, True, True, True, False, False, False, False]
    scored = [has_classes(result.spec, o) for o in result.spec.outputs]
    assert scored == [True, True, True, True, False, False, False, False]
    old = dataclasses.replace(result.spec.outputs[4], classes=None)  # a file from before
    assert has_classes(result.spec, old)


class _Autoencoder(nn.Module):
    """An anomaly detector: a BiLSTM encoder, a BiLSTM decoder and a Linear back to the input's
    12 sensor channels, whose argmax means nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.LSTM(12, 6, batch_first=True, bidirectional=True)
        self.decoder = nn.LSTM(12, 6, batch_first=True, bidirectional=True)
        self.out = nn.Linear(12, 12)

    def forward(self, x):
        return self.out(self.decoder(self.encoder(x)[0])[0])


def test_a_reconstruction_of_the_input_is_not_class_scores(tmp_path):
    """The int8 export of an LSTM autoencoder was refused by top-1 agreement over its sensor
    channels; an output of the input's own per-step shape is its reconstruction."""
    result = export_onnx(_Autoencoder().eval(), tmp_path / "ae.onnx", verify=False)
    (output,) = result.spec.outputs
    assert output.dims[-1] == 12 and output.classes is False
    assert not has_classes(result.spec, output)


@pytest.mark.slow
def test_a_frozen_length_is_reported_briefly_with_its_cause(tmp_path):
    """A slice at the largest length made a Python number: the graph keeps the example's length
    in many values; the error shows three and says what freezes a size."""
    from birnn_export.errors import ExportError

    class Cut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(4, 5, batch_first=True, bidirectional=True)

        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return self.gru(x)[0][:, : int(lengths.max())].flip(1)

    with pytest.raises(ExportError, match=r"more\); a size the model computes in Python") as e:
        export_onnx(Cut().eval(), tmp_path / "c.onnx", input_size=4)
    assert str(e.value).count("; ") <= 5


@pytest.mark.slow
def test_the_lengths_rule_is_recorded_only_where_rows_have_lengths(tmp_path):
    """The rule (lengths clamped into [1, T], padding positions hold the padding value) was
    recorded in every graph, also an image recogniser's without lengths, naming its width."""

    def rules(path) -> list[str]:
        props = onnx.load(str(path)).metadata_props
        return [p.value for p in props if p.key == "birnn_export.lengths_rule"]

    torch.manual_seed(0)
    ragged = export_onnx(BiRNN(3, 4), tmp_path / "ragged.onnx", verify=False)
    assert ragged.spec.lengths_input is not None
    assert rules(ragged.path) == [
        "lengths are clamped into [1, seq] inside the graph; positions at or past a row's "
        "length hold 0.0 in sequence outputs of the recurrent layers"
    ]

    class Tagger(nn.Module):  # forward(x) alone: every row is full length
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.fc = nn.GRU(3, 4, batch_first=True, bidirectional=True), nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.rnn(x)[0])

    full = export_onnx(Tagger().eval(), tmp_path / "full.onnx", verify=False)
    assert full.spec.length_source is None and rules(full.path) == []

    class Pooled(Tagger):  # a mask for pooling only: the layer runs over the padding
        def forward(self, x, mask):
            out = self.fc(self.rnn(x)[0]) * mask.unsqueeze(-1)
            return out.sum(1) / mask.sum(1, keepdim=True)

    inputs = ["x:float32[batch,seq,3]", "mask:float32[batch,seq]:mask"]
    pooled = export_onnx(Pooled().eval(), tmp_path / "p.onnx", inputs=inputs, verify=False)
    assert pooled.spec.length_source is not None and rules(pooled.path) == []

    class Mixed(nn.Module):  # a layer that takes the lengths, then one over the padding
        def __init__(self) -> None:
            super().__init__()
            self.first = BiRNN(3, 4)
            self.second = nn.GRU(8, 4, batch_first=True, bidirectional=True)

        def forward(self, x, lengths):
            return self.second(self.first(x, lengths)[0])[0]

    inputs = ["x:float32[batch,seq,3]", "lengths:int64[batch]:lengths(seq)"]
    mixed = export_onnx(Mixed().eval(), tmp_path / "m.onnx", inputs=inputs, verify=False)
    assert rules(mixed.path) == []


class _Stateful(nn.Module):
    """Initial states as inputs, final states as outputs under names of its own (users22)."""

    def __init__(self, pooled: bool = False) -> None:
        super().__init__()
        self.pooled = pooled
        self.lstm = nn.LSTM(4, 5, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(10, 3)

    def forward(self, x, lengths, h0, c0):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        y, (h, c) = self.lstm(packed, (h0, c0))
        y = pad_packed_sequence(y, batch_first=True, total_length=x.size(1))[0]
        sentence = torch.cat([h[-2], h[-1]], 1)
        return (y, sentence, self.head(sentence)) if self.pooled else (y, h, c)


@pytest.mark.parametrize("layout", ["split", pytest.param("fused", marks=pytest.mark.slow)])
def test_states_are_told_by_the_graph_not_by_their_names(tmp_path, layout):
    """Declared h0/c0 inputs were recorded as features, and final states named other than
    h_n/c_n as other: the roles now follow what the graph does with them."""
    torch.manual_seed(0)
    inputs = [
        "x:float32[batch,seq,4]",
        "lengths:int64[batch]:lengths(seq)",
        "h0:float32[4,batch,5]",
        "c0:float32[4,batch,5]",
    ]
    roles = {}
    for pooled, names in ((False, ["y", "hidden", "cell"]), (True, ["y", "sentence", "logits"])):
        result = export_onnx(
            _Stateful(pooled).eval(),
            tmp_path / f"{pooled}.onnx",
            inputs=inputs,
            output_names=names,
            layout=layout,
            verify=not pooled,
        )
        for tensor in (*result.spec.inputs, *result.spec.outputs):
            roles[tensor.name] = tensor.role
        assert pooled or result.verification.passed, result.verification.summary()
    assert roles == {
        "x": "features",
        "lengths": "lengths",
        "h0": "state",
        "c0": "state",
        "y": "sequence",
        "hidden": "state",
        "cell": "state",
        "sentence": "state",  # both directions' last states, as the model returns them
        "logits": "other",  # a head over them
    }


class _EightTags(nn.Module):
    """A tagger with as many tags as it reads features per step (users25)."""

    def __init__(self, softmax: bool, filled: bool = False) -> None:
        super().__init__()
        self.softmax, self.filled = softmax, filled
        self.rnn = nn.GRU(8, 6, batch_first=True, bidirectional=True)
        self.head = nn.Linear(12, 8)

    def forward(self, x):
        scores = self.head(self.rnn(x)[0])
        scores = scores.log_softmax(-1) if self.softmax else scores
        return scores.masked_fill(x[..., :1] > 3.0, 0.0) if self.filled else scores


@pytest.mark.slow
def test_scores_of_the_inputs_size_are_scores_after_a_softmax_and_noted_before(tmp_path):
    """8 tags over 8 features were taken as the input's reconstruction, silently: with a
    (log-)softmax they are class scores; a bare linear head's output is noted, with --scores."""
    torch.manual_seed(0)
    logits = export_onnx(_EightTags(False).eval(), tmp_path / "a.onnx", verify=False)
    (output,) = logits.spec.outputs
    assert not output.classes
    assert any("judged as its reconstruction" in n and "--scores output" in n for n in logits.notes)
    softmaxed = export_onnx(_EightTags(True).eval(), tmp_path / "b.onnx", verify=False)
    assert softmaxed.spec.outputs[0].classes
    assert not any("reconstruction" in n for n in softmaxed.notes)
    filled = export_onnx(_EightTags(True, filled=True).eval(), tmp_path / "f.onnx", verify=False)
    assert filled.spec.outputs[0].classes  # a masked_fill after it (review17)
    scored = export_onnx(
        _EightTags(False).eval(), tmp_path / "c.onnx", verify=False, scores=["output"]
    )
    assert scored.spec.outputs[0].classes and not any("reconstruction" in n for n in scored.notes)


class PadMaskedRegressor(nn.Module):
    """A SMILES-style regressor: token ids only, each row's length and mask found by ``ids !=
    0`` (the Embedding's padding_idx), attention pooling over the valid steps."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(42, 16, padding_idx=0)
        self.rnn = nn.LSTM(16, 12, batch_first=True, bidirectional=True)
        self.att = nn.Linear(24, 1)
        self.head = nn.Linear(24, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != 0
        packed = pack_padded_sequence(
            self.emb(ids), mask.sum(1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True)
        scores = self.att(out).squeeze(-1).masked_fill(~mask[:, : out.shape[1]], -1e9)
        pooled = torch.bmm(torch.softmax(scores, -1).unsqueeze(1), out).squeeze(1)
        return self.head(pooled).squeeze(-1)


def test_a_model_finding_its_lengths_by_the_pad_id_is_swept_on_rows_padded_with_it(tmp_path):
    """Not a CRF tagger alone: any model of token ids without lengths finds its rows by its
    Embedding's padding_idx. Drawn from every id, rows held the pad id inside them, and a model
    that masks by it was told it depends on the batch (users37)."""
    from birnn_export._case import DEPENDS_ON_THE_BATCH

    torch.manual_seed(0)
    result = export_onnx(PadMaskedRegressor().eval(), tmp_path / "smiles.onnx")
    assert result.spec.token_padding == 0
    report = result.verification
    assert report.passed, report.summary()
    assert {c.lengths_mode for c in report.cases} == {"ragged", "equal"}
    assert not any(DEPENDS_ON_THE_BATCH in note for note in report.notes), report.notes
