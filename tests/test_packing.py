"""Swapping the packing functions where a model's forward finds them
(:mod:`birnn_export._packing`)."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn
from torch.nn.utils import rnn as rnn_utils
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from birnn_export._packing import PackingSwap, any_order_packing


class SortedPacking(nn.Module):
    """Packs with torch's default enforce_sorted=True: callers must sort rows by length."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 5, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True)
        out = self.gru(packed)[0]
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


def test_any_order_packing_gives_each_row_its_sorted_result_and_restores() -> None:
    """Against the model's own enforce_sorted=True path on the same rows sorted longest first."""
    torch.manual_seed(0)
    model = SortedPacking().eval()
    x, lengths = torch.randn(4, 9, 4), torch.tensor([3, 9, 1, 6])
    with pytest.raises(RuntimeError, match="enforce_sorted"):
        model(x, lengths)
    order = torch.argsort(lengths, descending=True)
    want = torch.empty(4, 9, 10)
    with torch.no_grad():
        want[order] = model(x[order], lengths[order])
        swap = any_order_packing(model)
        for _ in range(2):  # one swap, entered once per call
            with swap:
                got = model(x, lengths)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert globals()["pack_padded_sequence"] is rnn_utils.pack_padded_sequence
    with pytest.raises(RuntimeError, match="enforce_sorted"):
        model(x, lengths)  # put back


def test_swap_reaches_closures_and_decorated_forwards_and_restores_on_error() -> None:
    from torch.nn.utils.rnn import pad_packed_sequence as pad

    marker = torch.zeros(3)  # a closure cell holding a tensor: compared by identity only

    def decorate(forward):
        def wrapper(*args):
            return forward(*args)

        wrapper.__wrapped__ = forward
        return wrapper

    class Local(nn.Module):
        @decorate
        def forward(self, x: torch.Tensor) -> object:
            return pad, marker

    calls = []

    def fake(*args: object, **kwargs: object) -> None:
        calls.append(args)

    swap = PackingSwap(Local(), {pad: fake})
    elsewhere: list[object] = []
    with pytest.raises(KeyError), swap:
        swapped = Local()(None)[0]
        swapped("here")
        assert calls == [("here",)]  # this thread's calls reach the swapped-in function
        # another thread's reach torch's (users59 F1): pad(None) fails as torch's own does
        thread = threading.Thread(target=lambda: elsewhere.append(_raised(swapped, None)))
        thread.start()
        thread.join()
        assert calls == [("here",)] and elsewhere == [AttributeError]
        raise KeyError("inside the block")
    assert Local()(None)[0] is pad and rnn_utils.pad_packed_sequence is pad


def _raised(function: object, *args: object) -> type[BaseException] | None:
    try:
        function(*args)  # type: ignore[operator]
    except Exception as exc:
        return type(exc)
    return None


def _doubled(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return x * 2


class _Pads(nn.Module):
    def forward(self, x: torch.Tensor) -> object:
        return pad_packed_sequence(x)  # type: ignore[arg-type]


def test_swapped_functions_trace_in_torch_exports_strict_mode() -> None:
    """torch.onnx.export falls back to strict mode (dynamo), which cannot trace the thread's
    identity: there the swapped-in function is traced (review38 R5)."""
    with PackingSwap(_Pads(), {pad_packed_sequence: _doubled}):
        program = torch.export.export(_Pads(), (torch.ones(2),), strict=True)
    assert torch.equal(program.module()(torch.ones(2)), torch.full((2,), 2.0))
