"""convert(): built-in layers at any depth become BiRNN with identical outputs."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from birnn_export import BiRNN, ConversionError, conversion_report, convert
from birnn_export.seed import (
    ManualBidirectionalLSTM,
    ManualBidirectionalRNN,
    ManualBidirectionalRNNVariableLength,
)
from tests.realistic_models import AttentionClassifier, ConvBiGRUCTC, PackingTagger


def no_builtin_layers(model: nn.Module) -> bool:
    return not any(isinstance(m, nn.RNNBase) for m in model.modules())


def test_attention_classifier():
    torch.manual_seed(0)
    model = AttentionClassifier().eval()
    converted = convert(model)
    assert no_builtin_layers(converted) and isinstance(converted.lstm, BiRNN)
    assert isinstance(model.lstm, nn.LSTM), "the original must be untouched"
    ids = torch.randint(0, 50, (4, 9))
    torch.testing.assert_close(converted(ids), model(ids), atol=1e-6, rtol=0)


def test_conv_bigru_ctc():
    """Conv1d -> packed BiGRU -> log_softmax: the converted model equals the original, whose
    GRU runs on a PackedSequence."""
    torch.manual_seed(0)
    model = ConvBiGRUCTC().eval()
    converted = convert(model)
    assert no_builtin_layers(converted) and isinstance(converted.gru, BiRNN)
    x, lengths = torch.randn(3, 11, 8), torch.tensor([11, 4, 1])
    torch.testing.assert_close(converted(x, lengths), model(x, lengths), atol=1e-6, rtol=0)


def test_packing_model_still_runs_after_conversion():
    torch.manual_seed(0)
    model = PackingTagger().eval()
    converted = convert(model)
    x, lengths = torch.randn(3, 6, 6), torch.tensor([2, 6, 4])
    torch.testing.assert_close(converted(x, lengths), model(x, lengths), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "cls", [ManualBidirectionalRNN, ManualBidirectionalLSTM, ManualBidirectionalRNNVariableLength]
)
def test_seed_classes(cls):
    torch.manual_seed(0)
    model = cls(10, 20, 5).eval()
    converted = convert(model)
    assert no_builtin_layers(converted)
    x = torch.randn(3, 8, 10)
    args = (x, torch.tensor([8, 3, 5])) if cls is ManualBidirectionalRNNVariableLength else (x,)
    torch.testing.assert_close(converted(*args), model(*args), atol=1e-6, rtol=0)


def test_nested_containers_and_report():
    model = nn.Sequential(
        nn.Linear(3, 4), nn.ModuleList([nn.GRU(4, 5, bidirectional=True), nn.RNN(4, 2)])
    )
    report = conversion_report(model)
    assert [(r.path, r.cell, r.bidirectional) for r in report] == [
        ("1.0", "gru", True),
        ("1.1", "rnn_tanh", False),
    ]
    converted = convert(model)
    assert isinstance(converted[1][0], BiRNN) and isinstance(converted[1][1], BiRNN)
    assert conversion_report(converted) == []


def test_bare_layer_and_relu_rnn():
    layer = nn.RNN(3, 4, nonlinearity="relu", num_layers=2, bidirectional=True)
    converted = convert(layer)
    assert isinstance(converted, BiRNN) and converted.cell == "rnn_relu"
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(converted(x)[0], layer(x)[0], atol=1e-6, rtol=0)


def test_training_mode_is_kept():
    model = nn.Sequential(nn.LSTM(3, 4, dropout=0.3, num_layers=2)).train()
    converted = convert(model)
    assert converted[0].training and converted[0].dropout == 0.3


class Wrapper(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.encoder = nn.Sequential(layer)


class MyLSTM(nn.LSTM):
    def forward(self, x, hx=None):
        return super().forward(x * 2, hx)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (MyLSTM(3, 4), r"encoder\.0: MyLSTM subclasses LSTM"),
    ],
)
def test_unconvertible_layers_name_the_path(layer, message):
    with pytest.raises(ConversionError, match=message):
        convert(Wrapper(layer))


def _matches_on_packed_rows(original: nn.Module, converted: nn.Module) -> None:
    """``converted`` (a BiRNN taking lengths) gives ``original``'s outputs on packed rows."""
    x, lengths = torch.randn(4, 7, 3), torch.tensor([7, 3, 1, 5])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        want = pad_packed_sequence(original(packed)[0], batch_first=True)[0]
        got = converted(x, lengths)[0]
    valid = (torch.arange(7)[None, :] < lengths[:, None])[..., None]
    torch.testing.assert_close(got * valid, want * valid, atol=1e-6, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.nn.utils.weight_norm's deprecation
@pytest.mark.parametrize(
    "norm", ["weight_norm", "spectral_norm", "weight_norm hook", "spectral_norm hook", "prune"]
)
def test_parametrized_weights_are_folded_as_eval_mode_computes_them(norm):
    """weight_norm (or spectral_norm) on the recurrent weights, as speech models train them:
    was refused; the copy holds the weights eval mode computes and matches the original on
    packed rows, which keeps its parametrization. The older weight_norm (a hook computing
    weight_hh_l0 from weight_hh_l0_g and _v) was told it was AWD-LSTM's weight drop, and so
    were the older spectral_norm and a pruned layer (weight_orig x weight_mask, users21)."""
    torch.manual_seed(0)
    layer = nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True)
    hooks = {
        "weight_norm hook": nn.utils.weight_norm,
        "spectral_norm hook": nn.utils.spectral_norm,
        "prune": lambda layer, name: prune.l1_unstructured(layer, name, amount=0.4),
    }
    parametrize = hooks.get(norm) or getattr(nn.utils.parametrizations, norm)
    for name in ("weight_hh_l0", "weight_hh_l0_reverse", "weight_ih_l1"):
        parametrize(layer, name)
    model = Wrapper(layer)
    model.train()
    for _ in range(3):  # training-mode passes: spectral_norm's vectors move on
        model.encoder[0](torch.randn(2, 5, 3))
    model.eval()
    converted = convert(model)
    assert isinstance(converted.encoder[0], BiRNN)
    original = model.encoder[0]  # keeps its parametrization
    computed = ("weight_hh_l0_g", "weight_hh_l0_orig")
    assert nn.utils.parametrize.is_parametrized(original) or any(
        hasattr(original, name) for name in computed
    )
    assert not any(hasattr(converted.encoder[0], name) for name in computed)
    _matches_on_packed_rows(model.encoder[0], converted.encoder[0])


@pytest.mark.parametrize("api", ["parametrizations", "hook"])
def test_a_model_in_training_mode_is_converted_without_moving_its_spectral_norm(api):
    """Converted in training mode (a class built from a state_dict is), spectral_norm ran a
    power iteration at each read: the model's own u and v moved and the graph differed from
    the model in eval mode by 50x eager's error (users21)."""
    torch.manual_seed(0)
    layer = nn.GRU(3, 8, batch_first=True, bidirectional=True)
    if api == "hook":
        nn.utils.spectral_norm(layer, "weight_hh_l0")
    else:
        nn.utils.parametrizations.spectral_norm(layer, "weight_hh_l0")
    model = Wrapper(layer)
    for _ in range(3):  # training: u and v move on
        model.encoder[0](torch.randn(2, 5, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = convert(model)  # model still in training mode
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    _matches_on_packed_rows(model.eval().encoder[0], converted.eval().encoder[0])


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_pruned_weight_norm_is_folded_last_hook_first():
    """Pruning weight_norm's _v: the prune hook, registered last, computes what weight_norm's
    reads; folded in registration order it failed with KeyError: 'weight_hh_l0_v' (review16)."""
    torch.manual_seed(0)
    layer = nn.LSTM(3, 4, batch_first=True, bidirectional=True)
    nn.utils.weight_norm(layer, "weight_hh_l0")
    prune.l1_unstructured(layer, "weight_hh_l0_v", amount=0.4)
    model = Wrapper(layer).eval()
    converted = convert(model)
    _matches_on_packed_rows(model.encoder[0], converted.encoder[0])


def _weight_dropped(layer: nn.LSTM) -> nn.LSTM:
    """AWD-LSTM's weight drop: the parameter renamed ``*_raw``, the weight a plain tensor
    assigned in forward (``F.dropout(raw, p, training)``)."""
    weight = layer.weight_hh_l0
    del layer._parameters["weight_hh_l0"]
    layer.register_parameter("weight_hh_l0_raw", nn.Parameter(weight.detach().clone()))
    layer.weight_hh_l0 = weight.detach().clone()
    return layer


def test_weights_assigned_in_forward_are_refused_in_one_line():
    """A weight-dropped layer's weight is no parameter: it was a traceback from load_state_dict,
    it is a refusal naming the layer, the weight and its raw parameter."""
    with pytest.raises(ConversionError) as caught:
        convert(Wrapper(_weight_dropped(nn.LSTM(3, 4, bidirectional=True))))
    message = str(caught.value)
    assert message.startswith("encoder.0: weight_hh_l0 is not a parameter of the layer")
    assert "(its parameters hold weight_hh_l0_raw)" in message and "\n" not in message


def test_public_names_stay_functions_after_submodules_load():
    import types

    import birnn_export
    import birnn_export.conversion
    import birnn_export.verification

    for name in ("convert", "verify", "export_onnx", "load_model", "benchmark"):
        value = getattr(birnn_export, name)
        assert callable(value) and not isinstance(value, types.ModuleType), name


class _WithInitialState(nn.Module):
    """Passes an initial state positionally, as torch's signature allows: ``layer(input, hx)``,
    on a PackedSequence (the model takes lengths) or on a dense tensor (it takes none)."""

    def __init__(self, cell: type[nn.RNNBase], packed: bool) -> None:
        super().__init__()
        self.rnn = cell(6, 5, num_layers=2, batch_first=True, bidirectional=True)
        self.packed, self.lstm = packed, cell is nn.LSTM

    def forward(
        self, x: torch.Tensor, first: torch.Tensor, h0: torch.Tensor | None = None
    ) -> torch.Tensor:
        lengths, h0 = (first, h0) if self.packed else (None, first)
        assert h0 is not None
        hx = (h0, torch.zeros_like(h0)) if self.lstm else h0
        if lengths is None:
            return self.rnn(x, hx)[0]
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths, batch_first=True, enforce_sorted=False
        )
        y, _ = self.rnn(packed, hx)
        return nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])[0]


@pytest.mark.parametrize(
    ("cell", "packed"),
    [
        pytest.param(nn.LSTM, True, id="LSTM-packed"),
        pytest.param(nn.GRU, False, id="GRU-dense"),  # h0 positional where BiRNN takes lengths
        *(
            pytest.param(cell, packed, id=f"{cell.__name__}-{kind}", marks=pytest.mark.slow)
            for cell, packed, kind in [
                (nn.RNN, True, "packed"),
                (nn.RNN, False, "dense"),
                (nn.LSTM, False, "dense"),
                (nn.GRU, True, "packed"),
            ]
        ),
    ],
)
def test_initial_state_passed_positionally(cell, packed, tmp_path):
    """After conversion ``layer(input, h0)`` still means h0 is the initial state (BiRNN's own
    second parameter is ``lengths``), and the export with an h0 input matches the original."""
    import numpy as np
    import onnxruntime as ort

    from birnn_export.pipeline import export_onnx

    torch.manual_seed(0)
    model = _WithInitialState(cell, packed).eval()
    x, lengths, h0 = torch.randn(3, 7, 6), torch.tensor([7, 2, 5]), torch.randn(4, 3, 5)
    args = (x, lengths, h0) if packed else (x, h0)
    with torch.no_grad():
        want = model(*args)
        torch.testing.assert_close(convert(model)(*args), want, atol=1e-6, rtol=0)
    path = tmp_path / "m.onnx"
    lengths_decl = ["lengths:int64[batch]:lengths(seq)"] if packed else []
    inputs = ["x:float32[batch,seq,6]", *lengths_decl, "h0:float32[4,batch,5]"]
    # Not verified: the ORT comparison below is this test's guard; graphs with h0/c0 inputs
    # are verified in test_graph.py::test_states_are_told_by_the_graph_not_by_their_names.
    export_onnx(model, path, inputs=inputs, verify=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    (got,) = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


class _Hooked(nn.Module):
    """An LSTM whose input a pre-hook normalises and whose output a hook scales."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.linspace(-2, 2, 6))
        self.lstm = nn.LSTM(6, 5, batch_first=True, bidirectional=True)
        self.lstm.register_forward_pre_hook(self._normalised)
        self.lstm.register_forward_hook(self._scaled)

    def _normalised(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0] - self.mean, *args[1:])

    def _scaled(self, module: nn.Module, args: tuple, output: tuple) -> tuple:
        return (2 * output[0], output[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


def test_the_layers_forward_hooks_go_with_it(tmp_path) -> None:
    """A pre-hook normalising the LSTM's input, a hook changing its output: conversion dropped
    them, and every case failed with a diagnosis blaming the gates (users30). They are kept,
    and a hook registered and removed later on the layer leaves them, though an unpickled
    module's hooks keep the saving process's ids."""
    from torch.utils.hooks import RemovableHandle

    from birnn_export import export_onnx

    torch.manual_seed(0)
    model = _Hooked().eval()
    for hooks in (model.lstm._forward_pre_hooks, model.lstm._forward_hooks):
        (value,) = hooks.values()
        hooks.clear()
        hooks[RemovableHandle.next_id] = value  # the id this process hands out next
    x = torch.randn(3, 7, 6)
    converted = convert(model)
    converted.lstm.register_forward_pre_hook(lambda *_: None).remove()
    torch.testing.assert_close(converted(x), model(x))
    result = export_onnx(model, tmp_path / "h.onnx")
    assert result.verification.passed, result.verification.summary()


class _HookedEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.lstm = nn.LSTM(8, 12, batch_first=True, bidirectional=True)
        self.emb.register_forward_pre_hook(_folded_ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lstm(self.emb(ids))[0]


def _folded_ids(module: nn.Module, args: tuple) -> tuple:
    return (args[0] % 25,)


def test_hooks_keyed_by_another_process_survive_the_tools_own(tmp_path) -> None:
    """An unpickled model's hooks keep the saving process's ids, which this process hands out
    again: the probe the export registers on an Embedding took its pre-hook's key and removed
    it, and every case failed blaming the gates (a pickled tagger's pre-hook saved with id 0).
    The model keeps its hook, and the graph computes it."""
    from torch.utils.hooks import RemovableHandle

    from birnn_export import export_onnx

    torch.manual_seed(0)
    model = _HookedEmbedding().eval()
    hooks = model.emb._forward_pre_hooks
    (value,) = hooks.values()
    hooks.clear()
    hooks[RemovableHandle.next_id] = value  # the id this process hands out next
    ids = torch.randint(0, 50, (2, 5))
    expected = model(ids)
    result = export_onnx(model, tmp_path / "e.onnx", inputs=["ids:int64[batch,seq]"])
    assert result.verification.passed, result.verification.summary()
    assert list(model.emb._forward_pre_hooks.values()) == [value]
    torch.testing.assert_close(model(ids), expected)


def test_padding_value_reaches_nested_layers():
    """``convert(model, padding_value=-7.0)`` fills every converted layer's padding with it, a
    layer inside a model as a bare one (review29 CV2: dropping it for nested layers passed),
    as pad_packed_sequence(padding_value=-7.0) fills torch's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(3, 4, batch_first=True, bidirectional=True))
    converted = convert(model, padding_value=-7.0)
    x, lengths = torch.randn(2, 5, 3), torch.tensor([5, 2])
    got = converted[0](x, lengths)[0]
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    want = pad_packed_sequence(model[0](packed)[0], batch_first=True, padding_value=-7.0)[0]
    torch.testing.assert_close(got, want)
    assert (got[1, 2:] == -7.0).all()


def test_a_file_given_for_the_model_is_a_usage_error(tmp_path):
    """``convert("model.pt")`` and ``export_onnx("model.pt", ...)``: an AttributeError from
    deep inside before, outside the error hierarchy (users50 F4)."""
    from birnn_export import UsageError, export_onnx

    told = "model: expected a torch.nn.Module, got str 'model.pt'; for a model file, load_model"
    with pytest.raises(UsageError, match=re.escape(told)):
        convert("model.pt")
    with pytest.raises(UsageError, match=re.escape(told)):
        export_onnx("model.pt", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
