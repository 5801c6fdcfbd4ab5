"""Tests for ``birnn_export/_diagnose.py``: what a mismatch of a bidirectional layer's output
says about its cause. The outputs are torch's own: ``nn.LSTM`` on a ``PackedSequence`` is the
truth, and the wrong outputs come from the mistakes users make (the padded batch flipped as a
whole before the backward pass; wrong backward weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from birnn_export._diagnose import diagnose_directions
from birnn_export.spec import TensorSpec, Tolerance

HIDDEN = 6
LENGTHS = torch.tensor([7, 4, 1, 3])  # a full-length row, a row of one step, two in between
TOL = Tolerance(atol=1e-5, rtol=1e-4)
OUTPUT = TensorSpec("output", "float32", ("batch", "seq", 2 * HIDDEN), "output")


def _packed(lstm: nn.LSTM, x: torch.Tensor) -> np.ndarray:
    packed = pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0].numpy()


@pytest.fixture(scope="module")
def truth() -> tuple[nn.LSTM, torch.Tensor, np.ndarray]:
    torch.manual_seed(0)
    lstm = nn.LSTM(5, HIDDEN, batch_first=True, bidirectional=True).eval()
    x = torch.randn(len(LENGTHS), int(LENGTHS.max()), 5)
    with torch.no_grad():
        return lstm, x, _packed(lstm, x)


def _diagnosed(actual: np.ndarray, expected: np.ndarray) -> str:
    steps = expected.shape[1]
    return diagnose_directions(OUTPUT, actual, expected, LENGTHS.numpy(), HIDDEN, TOL, steps=steps)


def test_the_flip_then_pack_workaround_is_told_as_a_reversal_bug(truth) -> None:
    """The common hand-written export: the backward direction run on the padded batch flipped
    as a whole. Only rows shorter than T differ, only in the backward half."""
    lstm, x, expected = truth
    backward = nn.LSTM(5, HIDDEN, batch_first=True).eval()
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        getattr(backward, name).data.copy_(getattr(lstm, f"{name}_reverse"))
    with torch.no_grad():
        flipped = backward(torch.flip(x, dims=[1]))[0].flip(dims=[1]).numpy()
    actual = expected.copy()
    actual[..., HIDDEN:] = flipped
    told = _diagnosed(actual, expected)
    assert "only the backward direction is wrong, and only in rows shorter than T" in told, told
    assert "a reversal bug" in told


def test_wrong_backward_weights_are_told_as_weights_not_the_reversal(truth) -> None:
    lstm, x, expected = truth
    wrong = nn.LSTM(5, HIDDEN, batch_first=True, bidirectional=True).eval()
    wrong.load_state_dict(lstm.state_dict())
    with torch.no_grad():
        wrong.weight_hh_l0_reverse.mul_(1.5)
        actual = _packed(wrong, x)
    told = _diagnosed(actual, expected)
    assert "only the backward direction is wrong, full-length rows included" in told, told
    assert "check the backward weights" in told and "reversal bug" not in told


def test_a_backward_pass_in_time_order_is_told_as_its_unreversed_input(truth) -> None:
    """The backward weights run forward in time: rows of one step match, every longer row
    differs at its last valid step already."""
    lstm, x, expected = truth
    forward_order = nn.LSTM(5, HIDDEN, batch_first=True).eval()
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        getattr(forward_order, name).data.copy_(getattr(lstm, f"{name}_reverse"))
    with torch.no_grad():
        packed = pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)
        out = pad_packed_sequence(forward_order(packed)[0], batch_first=True)[0].numpy()
    actual = expected.copy()
    actual[..., HIDDEN:] = out
    told = _diagnosed(actual, expected)
    assert "the backward node reads its rows in time order, not reversed" in told, told


def test_both_halves_a_little_off_is_told_as_drift_and_matching_halves_point_elsewhere(
    truth,
) -> None:
    _, _, expected = truth
    drift = expected + np.float32(3e-5) * np.sign(expected)
    assert "numeric drift" in _diagnosed(drift, expected)
    assert "both halves match at valid steps" in _diagnosed(expected.copy(), expected)
    told = diagnose_directions(OUTPUT, expected, expected, LENGTHS.numpy(), None, TOL)
    assert "direction split does not apply" in told


def test_one_row_read_at_another_length_is_told_as_that_rows_length(truth) -> None:
    """The graph's reversal read one row's length one step short: only that row's backward
    half differs while a longer row matches; not the weights nor a whole flip (users44 F2)."""
    lstm, x, expected = truth
    short = LENGTHS.clone()
    short[3] -= 1
    packed = pack_padded_sequence(x, short, batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        out = pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=7)[0].numpy()
    actual = expected.copy()
    actual[3, :, HIDDEN:] = out[3, :, HIDDEN:]
    told = _diagnosed(actual, expected)
    assert "the backward direction differs only in row(s) 3 (len 3)" in told, told
    assert "lengths as the graph reads them" in told
    assert "check the backward weights" not in told and "reversal bug" not in told
