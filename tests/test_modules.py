"""BiRNN against torch's own layers, on PackedSequence, in fp32 and fp64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from birnn_export.modules import BiRNN, reverse_padded

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def builtin(cell: str, input_size: int, hidden_size: int, **kwargs) -> nn.RNNBase:
    if cell == "lstm":
        return nn.LSTM(input_size, hidden_size, **kwargs)
    if cell == "gru":
        return nn.GRU(input_size, hidden_size, **kwargs)
    return nn.RNN(input_size, hidden_size, nonlinearity=cell.removeprefix("rnn_"), **kwargs)


def reference(layer: nn.RNNBase, x, lengths, hx=None):
    """torch's layer on a PackedSequence, padded back to x's time dimension."""
    steps = x.shape[1 if layer.batch_first else 0]
    packed = pack_padded_sequence(x, lengths, batch_first=layer.batch_first, enforce_sorted=False)
    out, hidden = layer(packed, hx)
    out, _ = pad_packed_sequence(out, batch_first=layer.batch_first, total_length=steps)
    return out, hidden


def states(hidden):
    return list(hidden) if isinstance(hidden, tuple) else [hidden]


def assert_close(actual, expected, atol):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


@st.composite
def configs(draw):
    cell = draw(st.sampled_from(CELLS))
    batch = draw(st.integers(1, 5))
    steps = draw(st.integers(1, 9))
    lengths = draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch))
    return {
        "cell": cell,
        "num_layers": draw(st.integers(1, 3)),
        "batch_first": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "bidirectional": draw(st.booleans()),
        "input_size": draw(st.integers(1, 7)),
        "hidden_size": draw(st.integers(1, 6)),
        "batch": batch,
        "steps": steps,
        "lengths": lengths,
        "use_hx": draw(st.booleans()),
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
    }


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_equals_builtin_on_packed_sequence(cfg):
    torch.manual_seed(0)
    ref = builtin(
        cfg["cell"],
        cfg["input_size"],
        cfg["hidden_size"],
        num_layers=cfg["num_layers"],
        bias=cfg["bias"],
        batch_first=cfg["batch_first"],
        bidirectional=cfg["bidirectional"],
    ).to(cfg["dtype"])
    ours = BiRNN.from_torch(ref)
    batch, steps = cfg["batch"], cfg["steps"]
    shape = (batch, steps) if cfg["batch_first"] else (steps, batch)
    x = torch.randn(*shape, cfg["input_size"], dtype=cfg["dtype"])
    lengths = torch.tensor(cfg["lengths"])
    hx = None
    if cfg["use_hx"]:
        dirs = 2 if cfg["bidirectional"] else 1
        size = (cfg["num_layers"] * dirs, batch, cfg["hidden_size"])
        hx = torch.randn(size, dtype=cfg["dtype"])
        hx = (hx, torch.randn(size, dtype=cfg["dtype"])) if cfg["cell"] == "lstm" else hx
    atol = 1e-5 if cfg["dtype"] == torch.float32 else 1e-10

    want_out, want_hidden = reference(ref, x, lengths, hx)
    got_out, got_hidden = ours(x, lengths, hx)
    assert_close(got_out, want_out, atol)
    for got, want in zip(states(got_hidden), states(want_hidden), strict=True):
        assert_close(got, want, atol)

    # Without lengths: equal to the layer on the plain padded tensor.
    want_out, want_hidden = ref(x, hx)
    got_out, got_hidden = ours(x, None, hx)
    assert_close(got_out, want_out, atol)
    for got, want in zip(states(got_hidden), states(want_hidden), strict=True):
        assert_close(got, want, atol)


@pytest.mark.parametrize("cell", CELLS)
def test_edge_cases_fp64(cell):
    """Unsorted lengths, a full-length row, length 1, batch 1 and T = 1, to 1e-10 in fp64."""
    torch.manual_seed(1)
    ref = builtin(cell, 4, 3, num_layers=2, batch_first=True, bidirectional=True).double()
    ours = BiRNN.from_torch(ref)
    for lengths, steps in [([3, 6, 1, 6, 2], 6), ([1], 1), ([4], 4), ([1, 1, 1], 1)]:
        x = torch.randn(len(lengths), steps, 4, dtype=torch.float64)
        lens = torch.tensor(lengths)
        want_out, want_hidden = reference(ref, x, lens)
        got_out, got_hidden = ours(x, lens)
        assert_close(got_out, want_out, 1e-10)
        for got, want in zip(states(got_hidden), states(want_hidden), strict=True):
            assert_close(got, want, 1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_packed_sequence_input_and_output(cell):
    torch.manual_seed(2)
    ref = builtin(cell, 5, 4, num_layers=2, batch_first=True, bidirectional=True)
    ours = BiRNN.from_torch(ref)
    x = torch.randn(4, 7, 5)
    packed = pack_padded_sequence(
        x, torch.tensor([2, 7, 5, 1]), batch_first=True, enforce_sorted=False
    )
    got, got_hidden = ours(packed)
    want, want_hidden = ref(packed)
    assert isinstance(got, type(want))
    assert_close(got.data, want.data, 1e-5)
    for a, b in zip(states(got_hidden), states(want_hidden), strict=True):
        assert_close(a, b, 1e-5)


def test_padding_value_fills_positions_past_each_length():
    layer = BiRNN(3, 4, cell="gru", padding_value=-7.0)
    out, _ = layer(torch.randn(3, 5, 3), torch.tensor([5, 2, 1]))
    assert torch.all(out[1, 2:] == -7.0) and torch.all(out[2, 1:] == -7.0)
    assert not torch.any(out[0] == -7.0)


def test_directions_have_separate_weights():
    """The seed article claims both directions share weights; torch's layer does not."""
    ref = nn.LSTM(3, 4, bidirectional=True)
    ours = BiRNN.from_torch(ref)
    assert not torch.equal(ours.weight_ih_l0, ours.weight_ih_l0_reverse)
    assert set(ours.state_dict()) == set(ref.state_dict())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_round_trip_to_torch(cell, bidirectional):
    ours = BiRNN(5, 6, cell=cell, num_layers=2, bidirectional=bidirectional, batch_first=False)
    back = ours.to_torch()
    assert type(back) is type(builtin(cell, 5, 6))
    assert getattr(back, "nonlinearity", None) in (None, cell.removeprefix("rnn_"))
    x = torch.randn(7, 2, 5)
    assert_close(back(x)[0], ours(x)[0], 0.0)


def test_flip_is_not_per_row_reversal():
    x = torch.arange(8.0).view(2, 4, 1)
    lengths = torch.tensor([4, 2])
    rev = reverse_padded(x, lengths)
    assert rev[:, :, 0].tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]
    assert reverse_padded(rev, lengths).equal(x)
    assert not torch.flip(x, [1]).equal(rev)
    time_major = reverse_padded(x.transpose(0, 1), lengths, time_dim=0)
    assert time_major.transpose(0, 1).equal(rev)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.randn(2, 5),), "x: expected a 3-D tensor"),
        ((torch.randint(0, 3, (2, 5, 3)),), "x: expected a floating-point tensor"),
        ((torch.randn(2, 5, 4),), "x: expected 3 features"),
        ((torch.randn(2, 5, 3).double(),), "does not match the layer's weights"),
        ((torch.randn(2, 5, 3), torch.tensor([5.0, 2.0])), "lengths: expected an integer tensor"),
        ((torch.randn(2, 5, 3), torch.tensor([5, 2, 1])), r"lengths: expected shape \[2\]"),
        ((torch.randn(2, 5, 3), torch.tensor([6, 2])), r"lie in \[1, 5\].*max 6"),
        ((torch.randn(2, 5, 3), torch.tensor([0, 2])), r"lie in \[1, 5\].*min 0"),
        ((torch.randn(2, 5, 3), None, torch.zeros(2, 2, 4)), "hx: expected a tuple"),
    ],
)
def test_bad_input_names_the_argument(args, message):
    layer = BiRNN(3, 4, cell="lstm")
    with pytest.raises(ValueError, match=message):
        layer(*args)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="cell: expected one of"):
        BiRNN(3, 4, cell="transformer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hidden_size"):
        BiRNN(3, 0)
    with pytest.raises(ValueError, match=r"proj_size: expected an int in \[0, hidden_size=4\)"):
        BiRNN(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="only an LSTM projects its state, not cell 'gru'"):
        BiRNN(3, 4, cell="gru", proj_size=2)


@pytest.mark.parametrize(
    ("layers", "bidirectional", "batch_first", "use_hx"),
    [(2, True, True, False), (1, True, False, True), (3, False, True, True)],
)
def test_lstm_with_projection_equals_builtin_fp64(layers, bidirectional, batch_first, use_hx):
    """``nn.LSTM(proj_size=...)``: outputs and h_n of proj_size units, c_n of hidden_size,
    to 1e-10 against torch's layer on a PackedSequence."""
    torch.manual_seed(2)
    ref = nn.LSTM(4, 7, proj_size=3, num_layers=layers, bidirectional=bidirectional,
                  batch_first=batch_first).double()  # fmt: skip
    ours = BiRNN.from_torch(ref)
    assert ours.proj_size == 3 and ours.output_size == 3
    lengths = torch.tensor([6, 1, 4, 6, 2])
    x = torch.randn(*((5, 6) if batch_first else (6, 5)), 4, dtype=torch.float64)
    dirs = 2 if bidirectional else 1
    hx = None
    if use_hx:
        h0 = torch.randn(layers * dirs, 5, 3, dtype=torch.float64)
        hx = (h0, torch.randn(layers * dirs, 5, 7, dtype=torch.float64))
    want_out, want_hidden = reference(ref, x, lengths, hx)
    got_out, got_hidden = ours(x, lengths, hx)
    assert got_out.shape[-1] == 3 * dirs and got_hidden[1].shape[-1] == 7
    assert_close(got_out, want_out, 1e-10)
    for got, want in zip(got_hidden, want_hidden, strict=True):
        assert_close(got, want, 1e-10)
    back = ours.to_torch()
    assert back.proj_size == 3 and back.state_dict().keys() == ref.state_dict().keys()
    with pytest.raises(ValueError, match=r"hx: expected shape \(\d+, 5, 3\)"):
        ours(x, lengths, (torch.zeros(layers * dirs, 5, 7), torch.zeros(layers * dirs, 5, 7)))


def test_dropout_only_in_training():
    layer = BiRNN(3, 8, cell="gru", num_layers=2, dropout=0.5)
    x = torch.randn(2, 6, 3)
    layer.eval()
    assert layer(x)[0].equal(layer(x)[0])
    layer.train()
    torch.manual_seed(0)
    a = layer(x)[0]
    torch.manual_seed(1)
    assert not a.equal(layer(x)[0])
