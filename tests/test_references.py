"""birnn_export._references: what verification compares against."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from birnn_export._references import (
    References,
    float64_fails,
    reference_module,
    root_bidirectional_hidden,
)
from birnn_export._sweep import Case
from birnn_export.errors import BiRNNExportError
from birnn_export.modules import BiRNN
from birnn_export.spec import GraphSpec, TensorSpec, make_feed

FEATURES, HIDDEN, PADDING = 3, 4, -7.0


def _spec() -> GraphSpec:
    return GraphSpec(
        inputs=(
            TensorSpec("x", "float32", ("batch", "seq", FEATURES), "features"),
            TensorSpec("lengths", "int64", ("batch",), "lengths", 1, "seq"),
        ),
        outputs=(
            TensorSpec("output", "float32", ("batch", "seq", 2 * HIDDEN), "sequence"),
            TensorSpec("h_n", "float32", (2, "batch", HIDDEN), "state"),
        ),
        example_batch=2,
        example_seq=5,
        padding_value=PADDING,
    )


def test_a_bare_layer_runs_on_packed_input_row_by_row() -> None:
    """Torch's own answer for a padded batch: each row as if run alone, unpadded, and the
    padding value past its length."""
    torch.manual_seed(0)
    lstm = nn.GRU(FEATURES, HIDDEN, batch_first=True, bidirectional=True).eval()
    module, paths = reference_module(lstm, _spec())
    assert module is not lstm and set(paths.values()) <= {"layer"}
    x = torch.randn(3, 6, FEATURES)
    lengths = torch.tensor([6, 2, 4])
    with torch.inference_mode():
        out, h_n = module(x, lengths)
        for row, length in enumerate(lengths.tolist()):
            alone, h_alone = lstm(x[row : row + 1, :length])
            torch.testing.assert_close(out[row, :length], alone[0])
            torch.testing.assert_close(h_n[:, row], h_alone[:, 0])
            assert torch.all(out[row, length:] == PADDING)


class _Around(nn.Module):
    """A small BiGRU with ``before`` applied to its input and ``after`` to its output."""

    def __init__(self, before=lambda x: x, after=lambda out: out) -> None:
        super().__init__()
        self.rnn = BiRNN(FEATURES, HIDDEN, cell="gru", padding_value=PADDING)
        self.before, self.after = before, after

    def forward(self, x, lengths):
        out, h_n = self.rnn(self.before(x), lengths)
        return self.after(out), h_n


def test_float64_fails_names_what_breaks() -> None:
    assert float64_fails(_Around(), _spec()) is None
    reason = float64_fails(_Around(before=lambda x: x.float()), _spec())
    assert reason is not None and "dtype" in reason.lower()


def test_a_model_packing_sorted_rows_runs_in_float64() -> None:
    """enforce_sorted=True packing is run with rows in any order, as the reference runs it, so
    the model keeps its float64 reference (not fixed tolerances)."""

    class SortedPacking(nn.Module):
        def __init__(self, flip: bool) -> None:
            super().__init__()
            self.gru = nn.GRU(FEATURES, HIDDEN, batch_first=True, bidirectional=True)
            self.flip = flip  # one of the two sees the probe's rows unsorted, whatever they are

        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            if self.flip:
                x, lengths = x.flip(0), lengths.flip(0)
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True)
            return nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True)[0]

    assert float64_fails(SortedPacking(flip=False), _spec()) is None
    assert float64_fails(SortedPacking(flip=True), _spec()) is None


def test_references_refuse_a_model_without_a_fixed_answer() -> None:
    spec = _spec()
    case = Case(2, 5, "ragged", 1.0, 0)
    feed = make_feed(spec, 2, 5, seed=0)
    with References(_Around(), spec, ref_dtype="float64", eager_dtype="float32") as refs:
        ran = refs.run(feed, case)
    assert ran["reference"]["output"].dtype == np.float64
    assert ran["eager"]["output"].dtype == np.float32
    noisy = _Around(after=lambda out: out + 1e-3 * torch.rand_like(out))
    with (
        References(noisy, spec, ref_dtype="float64", eager_dtype=None) as refs,
        pytest.raises(BiRNNExportError, match="not deterministic"),
    ):
        refs.run(feed, case)


def test_root_bidirectional_hidden() -> None:
    assert root_bidirectional_hidden(nn.Linear(2, 2), BiRNN(3, 6)) == 6
    assert root_bidirectional_hidden(nn.LSTM(3, 5, bidirectional=True)) == 5
    assert root_bidirectional_hidden(nn.LSTM(3, 5), nn.Sequential()) is None


def test_determinism_is_checked_past_a_first_case_too_small_to_tell(tmp_path) -> None:
    """The determinism check ran on the first case alone: a dropout over its 4 values drops
    the same ones twice one time in five, and the export then failed every case blaming the
    graph (or passed a noisy model). It runs until 1000 values were seen."""
    from birnn_export.pipeline import export_onnx

    class NoisyPastOneStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(4, 5, batch_first=True, bidirectional=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.rnn(x)[0]
            noise = torch.rand_like(out) * (x.abs().sum() > 3.0)  # none on a tiny first case
            return out + noise

    torch.manual_seed(0)
    with pytest.raises(BiRNNExportError, match="not deterministic in eval mode"):
        export_onnx(NoisyPastOneStep().eval(), tmp_path / "n.onnx")


class _PositionTable(nn.Module):
    """Sentence positions looked up in a table of 20 rows (SummaRuNNer's absolute position)."""

    def __init__(self) -> None:
        super().__init__()
        self.position = nn.Embedding(20, 4)
        self.rnn = nn.GRU(4, 5, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(x.shape[1], device=x.device)
        return self.rnn(x + self.position(steps)[None])[0]


def test_a_table_shorter_than_a_dim_is_named_with_the_range_to_declare(tmp_path) -> None:
    """users35: a position table of 100 rows failed verification at seq 256 after minutes, with
    "index out of range in self" and no word of the table; its name, its rows and the range
    to declare are said, and with that range the model exports."""
    from birnn_export.pipeline import export_onnx

    torch.manual_seed(0)
    model = _PositionTable().eval()
    with pytest.raises(BiRNNExportError) as caught:
        export_onnx(model, tmp_path / "p.onnx", inputs=["x:float32[batch,seq,4]"])
    told = str(caught.value)
    assert "IndexError" in told and "nn.Embedding 'position' has 20 rows, fewer than seq's" in told
    assert "--range seq=1,20,20" in told and "is it the model" not in told, told
    assert not (tmp_path / "p.onnx").exists()
    result = export_onnx(
        model, tmp_path / "p.onnx", inputs=["x:float32[batch,seq,4]"], ranges={"seq": (1, 20, 20)}
    )
    assert result.verification.passed


def test_ids_past_a_smaller_vocabulary_are_not_told_as_a_position_table(tmp_path) -> None:
    """review22: verified against a model of another vocabulary, the ids past its table were
    told as a position table capping seq; the table and the id are named instead."""
    from birnn_export.pipeline import export_onnx
    from birnn_export.verification import verify

    class Tagger(nn.Module):
        def __init__(self, vocab: int) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, 4)
            self.rnn = nn.GRU(4, 3, batch_first=True, bidirectional=True)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.rnn(self.emb(ids))[0]

    export_onnx(Tagger(100).eval(), tmp_path / "t.onnx", verify=False)
    with pytest.raises(BiRNNExportError) as caught:
        verify(tmp_path / "t.onnx", Tagger(40).eval(), isolate=False, layers=False)
    told = str(caught.value)
    assert "nn.Embedding 'emb' has 40 rows and was given id" in told, told
    assert "is it the model this graph was exported from?" in told and "--range seq" not in told
