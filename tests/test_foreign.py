"""birnn_export._foreign: verifying graphs birnn-export did not write (torch.onnx.export's).

The graphs here come from torch's legacy exporter (``dynamo=False``), as users' existing
deployments do; the references are the models' own built-in layers on a PackedSequence.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from birnn_export.cli import main
from birnn_export.errors import BiRNNExportError
from birnn_export.pipeline import export_onnx
from birnn_export.verification import verify

SWEEP = {"batch_sizes": (1, 4), "seq_lens": (1, 9), "large_scale": None}


class Tagger(nn.Module):
    """Embedding -> BiLSTM -> Linear over ``(ids, lengths)``: packed, as the model is trained;
    or (``packs=False``) the padded batch run whole and the scores masked after, as a
    deployment copy written without packing does (its backward direction starts in the padding
    of every short row)."""

    def __init__(self, packs: bool = True, vocab: int = 50) -> None:
        super().__init__()
        self.packs = packs
        self.emb = nn.Embedding(vocab, 12)
        self.rnn = nn.LSTM(12, 16, batch_first=True, bidirectional=True)
        self.out = nn.Linear(32, 5)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        if self.packs:
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            y, _ = pad_packed_sequence(
                self.rnn(packed)[0], batch_first=True, total_length=x.shape[1]
            )
        else:
            y = self.rnn(x)[0]
        valid = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        return self.out(y) * valid[..., None]


def _legacy(model: nn.Module, path: Path, batch_axis: bool = True) -> Path:
    """``torch.onnx.export(dynamo=False)`` with dynamic axes (the batch fixed at the example's
    1 where ``batch_axis`` is off), as deployment scripts call it."""
    ids, lengths = torch.tensor([[3, 7, 1, 4, 9, 2]]), torch.tensor([6])
    axes = {"ids": {1: "t"}, "scores": {1: "t"}}
    if batch_axis:
        axes = {"ids": {0: "b", 1: "t"}, "lengths": {0: "b"}, "scores": {0: "b", 1: "t"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (ids, lengths),
            str(path),
            dynamo=False,
            input_names=["ids", "lengths"],
            output_names=["scores"],
            dynamic_axes=axes,
        )
    return path


@pytest.fixture(scope="module")
def tagger() -> Tagger:
    torch.manual_seed(0)
    return Tagger().eval()


@pytest.fixture(scope="module")
def ours(tagger: Tagger, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The graph birnn-export writes from ``tagger``: ``like`` for the tests that are not about
    tracing the model (each trace takes seconds)."""
    return export_onnx(tagger, tmp_path_factory.mktemp("ours") / "ours.onnx", verify=False).path


def test_a_legacy_export_is_verified_against_the_model(
    tagger: Tagger, ours: Path, tmp_path: Path
) -> None:
    path, saved = _legacy(tagger, tmp_path / "legacy.onnx"), tmp_path / "in.json"
    golden = tmp_path / "out.json"
    report = verify(path, tagger, **SWEEP, save_inputs=saved, save_outputs=golden)
    assert report.passed, report.summary()
    assert {c.batch for c in report.cases} == {1, 4}
    assert any("not written by birnn-export" in n for n in report.notes)
    assert not any("recurrent layers not compared" in n for n in report.notes)  # said once
    # the outputs replay without the model where --like says the inputs (review27 L5)
    assert any("replay without the model only with --like" in n for n in report.notes)
    replay = verify(path, None, load_inputs=saved, load_outputs=golden, like=ours)
    assert replay.passed and len(replay.cases) == len(report.cases), replay.summary()


def test_a_copy_that_does_not_pack_fails_on_short_rows(
    tagger: Tagger, ours: Path, tmp_path: Path
) -> None:
    copy = Tagger(packs=False).eval()
    copy.load_state_dict(tagger.state_dict())
    path = _legacy(copy, tmp_path / "unpacked.onnx")
    # the graph holds what the copy does: it runs, and its full rows are right
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.array([[3, 7, 1, 4], [5, 2, 0, 0]])
    got = session.run(None, {"ids": ids, "lengths": np.array([4, 2])})[0]
    with torch.no_grad():
        want = tagger(torch.from_numpy(ids), torch.tensor([4, 2])).numpy()
    assert np.abs(got[0] - want[0]).max() < 1e-5 and np.abs(got[1] - want[1]).max() > 1e-3
    report = verify(path, tagger, like=ours, **SWEEP)
    assert not report.passed
    failed = {c.lengths_mode for c in report.cases if not c.passed}
    assert "ragged" in failed
    # the valid steps head the verdict, and the diagnosis names the node (users45 F4)
    assert "output 'scores' values" in report.summary()
    diagnosis = report.diagnosis() or ""
    assert "node '/rnn/LSTM' takes no sequence_lens although the graph takes lengths" in diagnosis
    assert "keep pack_padded_sequence" in diagnosis


class FlipThenPack(nn.Module):
    """The seed article's Example 3 around ``tagger``'s weights: the backward direction a forward
    LSTM fed the padded batch flipped whole, then packed."""

    def __init__(self, tagger: Tagger) -> None:
        super().__init__()
        self.tagger = tagger
        self.back = nn.LSTM(12, 16, batch_first=True)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(self.back, f"{name}_l0").data.copy_(getattr(tagger.rnn, f"{name}_l0_reverse"))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x, steps = self.tagger.emb(ids), ids.shape[1]

        def run(layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
            packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
            return pad_packed_sequence(layer(packed)[0], batch_first=True, total_length=steps)[0]

        forward = run(self.tagger.rnn, x)[..., :16]
        backward = torch.flip(run(self.back, torch.flip(x, [1])), [1])
        valid = torch.arange(steps)[None, :] < lengths[:, None]
        return self.tagger.out(torch.cat([forward, backward], -1)) * valid[..., None]


def test_flip_then_pack_is_named_in_a_graph_that_does_it(
    tagger: Tagger, ours: Path, tmp_path: Path
) -> None:
    path = _legacy(FlipThenPack(tagger).eval(), tmp_path / "flipped.onnx")
    report = verify(path, tagger, like=ours, **SWEEP)
    assert not report.passed
    assert "ragged" in {c.lengths_mode for c in report.cases if not c.passed}
    diagnosis = report.diagnosis() or ""
    assert "node '/back/LSTM' packs an input reversed whole (Slice '/Slice_1'" in diagnosis
    assert "'Why flip-then-pack is wrong'" in diagnosis


def test_a_fixed_batch_is_a_problem_and_the_sweep_runs_at_it(
    tagger: Tagger, ours: Path, tmp_path: Path
) -> None:
    path = _legacy(tagger, tmp_path / "b1.onnx", batch_axis=False)
    saved = tmp_path / "cases.json"
    report = verify(path, tagger, seq_lens=(1, 9), large_scale=None, like=ours, save_inputs=saved)
    assert {c.batch for c in report.cases} == {1} and {c.seq for c in report.cases} == {1, 9}
    assert all(c.passed for c in report.cases)  # its numbers are right at batch 1
    assert not report.passed
    assert any("should be symbolic 'batch', the graph declares 1" in p for p in report.problems)
    assert any("the graph fixes batch=1" in n for n in report.notes)
    replay = verify(path, tagger, like=ours, load_inputs=saved)  # at the sizes saved
    assert len(replay.cases) == len(report.cases) and not replay.passed
    with pytest.raises(BiRNNExportError, match="batch_sizes: the graph fixes 'batch' at 1"):
        verify(path, tagger, batch_sizes=(4,), seq_lens=(9,), like=ours)


def test_like_takes_the_inputs_from_a_graph_birnn_export_wrote(
    tagger: Tagger, ours: Path, tmp_path: Path
) -> None:
    legacy = _legacy(tagger, tmp_path / "legacy.onnx")
    report = verify(legacy, tagger, like=ours, **SWEEP)
    assert report.passed, report.summary()
    assert any(f"those of {ours}" in n for n in report.notes)
    with pytest.raises(BiRNNExportError, match=r"like: .* was written by birnn-export"):
        verify(ours, tagger, like=ours, **SWEEP)
    # a graph of a model with a larger vocabulary lends ids the model has no rows for: the
    # message names --like's graph, not the verified one's inputs (review27 L4)
    other = export_onnx(Tagger(vocab=5000).eval(), tmp_path / "other.onnx", verify=False).path
    told = r"the inputs .*other.onnx declares \(--like.*is it a graph of this model"
    with pytest.raises(BiRNNExportError, match=told):
        verify(legacy, tagger, like=other, **SWEEP)


def test_mismatched_graphs_are_refused_with_what_differs(
    tagger: Tagger, ours: Path, tmp_path: Path
) -> None:
    path = _legacy(tagger, tmp_path / "legacy.onnx")
    proto = onnx.load(str(path))
    proto.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    onnx.save(proto, str(tmp_path / "float_ids.onnx"))
    with pytest.raises(BiRNNExportError, match=r"input .ids. is float32.*--model-class PKG:WRAP"):
        verify(tmp_path / "float_ids.onnx", tagger, like=ours)
    del proto.graph.input[1]  # what a graph whose code ignores the lengths declares
    onnx.save(proto, str(tmp_path / "no_lengths.onnx"))
    with pytest.raises(BiRNNExportError, match=r"it lacks the model's input.s. 'lengths'"):
        verify(tmp_path / "no_lengths.onnx", tagger, like=ours)


def test_cli_verifies_a_foreign_graph_and_exits_1_on_a_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = Tagger().eval()
    pt = tmp_path / "tagger.pt"
    torch.save(model, pt)
    copy = Tagger(packs=False).eval()
    copy.load_state_dict(model.state_dict())
    path = _legacy(copy, tmp_path / "unpacked.onnx")
    args = ["verify", str(path), "--model", str(pt), "--trust-pickle", "--seq-lens", "9"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "was not written by birnn-export" in result.output
    assert "keep pack_padded_sequence" in result.output  # the diagnosis (review28 L4)
    assert "Traceback" not in result.output


def test_bench_times_a_foreign_graph_beside_the_model(
    tagger: Tagger, ours: Path, tmp_path: Path
) -> None:
    from birnn_export.bench import benchmark

    legacy = _legacy(tagger, tmp_path / "legacy.onnx")
    report = benchmark(
        legacy,
        tagger,
        like=ours,
        batch_sizes=(2,),
        seq_lens=(9,),
        iters=3,
        warmup=0,
        progress=False,
        isolate=False,
    )
    assert [(r.engine, r.status) for r in report.results] == [("torch", "ok"), ("ort-cpu", "ok")]
    assert "not written by birnn-export" in report.settings["foreign"][0]
    # a graph fixed at batch 1 is timed there by default; another batch is refused (users45 F5)
    fixed = _legacy(tagger, tmp_path / "b1.onnx", batch_axis=False)
    timed = benchmark(
        fixed, tagger, like=ours, seq_lens=(9,), iters=2, progress=False, isolate=False
    )
    assert {r.batch for r in timed.results} == {1} and not timed.failed()
    with pytest.raises(BiRNNExportError, match="batch_sizes: the graph fixes 'batch' at 1"):
        benchmark(fixed, tagger, like=ours, batch_sizes=(4,), progress=False)


class _LengthsFirst(nn.Module):
    """A deployment wrapper whose graph takes ``(seq_len, tokens)``: the model's inputs in
    another order, under other names."""

    def __init__(self, tagger: Tagger) -> None:
        super().__init__()
        self.tagger = tagger

    def forward(self, seq_len: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.tagger(tokens, seq_len)


def test_inputs_in_another_order_are_paired_by_dtype_and_rank(
    tagger: Tagger, ours: Path, tmp_path: Path
) -> None:
    path = tmp_path / "swapped.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LengthsFirst(tagger),
            (torch.tensor([6]), torch.tensor([[3, 7, 1, 4, 9, 2]])),
            str(path),
            dynamo=False,
            input_names=["seq_len", "tokens"],
            output_names=["scores"],
            dynamic_axes={
                "tokens": {0: "b", 1: "t"},
                "seq_len": {0: "b"},
                "scores": {0: "b", 1: "t"},
            },
        )
    report = verify(path, tagger, like=ours, **SWEEP)
    assert report.passed, report.summary()
    assert any(
        "ids as 'tokens', lengths as 'seq_len': by dtype and rank" in n for n in report.notes
    )
    proto = onnx.load(str(_legacy(tagger, tmp_path / "legacy.onnx")))
    proto.graph.input.append(
        onnx.helper.make_tensor_value_info("h0", onnx.TensorProto.FLOAT, [2, "b", 16])
    )
    onnx.save(proto, str(tmp_path / "h0.onnx"))
    with pytest.raises(BiRNNExportError, match=r"its input\(s\) 'h0' are not the model's"):
        verify(tmp_path / "h0.onnx", tagger, like=ours)


def test_a_stale_output_length_is_a_note_and_a_float16_graph_is_judged_in_float16(
    tagger: Tagger, ours: Path, tmp_path: Path
) -> None:
    """torch's dynamo exporter declares an LSTM's output at the example's length while its
    inputs stay dynamic (review27 M1); a ``.half()`` model's export is a float16 graph, judged
    against eager float16's noise as birnn-export's own float16 graphs are (M2)."""
    proto = onnx.load(str(_legacy(tagger, tmp_path / "legacy.onnx")))
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 6  # the example's length
    onnx.save(proto, str(tmp_path / "stale.onnx"))
    report = verify(tmp_path / "stale.onnx", tagger, like=ours, **SWEEP)
    assert report.passed and not report.problems, report.summary()
    assert any("declared 6 where the graph's inputs leave 'seq' free" in n for n in report.notes)
    half = _legacy(copy.deepcopy(tagger).half(), tmp_path / "half.onnx")
    report = verify(half, tagger, like=ours, **SWEEP)
    assert report.eager_dtype == "float16" and report.passed, report.summary()


def test_a_foreign_graph_quantized_by_onnx_runtime_is_judged_as_int8(
    tagger: Tagger, ours: Path, tmp_path: Path
) -> None:
    """ONNX Runtime's dynamic quantization of a legacy graph: judged by task agreement and
    relative error, as birnn-export's int8 graphs are, not by float32's noise."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = tmp_path / "int8.onnx"
    quantize_dynamic(
        str(_legacy(tagger, tmp_path / "legacy.onnx")), str(quantized), weight_type=QuantType.QInt8
    )
    report = verify(quantized, tagger, like=ours, **SWEEP)
    assert report.criterion.startswith("float64 reference; int8"), report.criterion
    assert not any(c.error for c in report.cases)


def test_float16_inside_float32_io_and_a_float_mask_are_taken_as_the_graph_has_them(
    tagger: Tagger, ours: Path, tmp_path: Path
) -> None:
    """onnxconverter-common's float16 conversion with ``keep_io_types=True`` (float32 in and
    out, float16 inside) is judged at float16's noise, not float32's (users45 F1)."""
    from onnxconverter_common import float16

    proto = onnx.load(str(_legacy(tagger, tmp_path / "legacy.onnx")))
    # its Casts kept as they are: converted, one of the lengths' Casts mistyped the graph
    blocked = [*float16.DEFAULT_OP_BLOCK_LIST, "Cast"]
    half = float16.convert_float_to_float16(proto, keep_io_types=True, op_block_list=blocked)
    onnx.save(half, str(tmp_path / "h.onnx"))
    report = verify(tmp_path / "h.onnx", tagger, like=ours, **SWEEP)
    assert report.eager_dtype == "float16" and report.passed, report.summary()


class _MaskTagger(nn.Module):
    """A tagger whose deployment graph takes a float 0/1 mask: its lengths are the mask's sums."""

    def __init__(self) -> None:
        super().__init__()
        self.tagger = Tagger()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.tagger(ids, mask.sum(1).long())


def test_a_float_mask_is_fed_as_the_graph_takes_it(tmp_path: Path) -> None:
    """The model's trace takes a bool mask; the graph exported with a float one is fed floats
    (it was refused as another dtype: users45 F3)."""
    torch.manual_seed(2)
    model = _MaskTagger().eval()
    path = tmp_path / "mask.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.tensor([[3, 7, 1, 4]]), torch.ones(1, 4)),
            str(path),
            dynamo=False,
            input_names=["ids", "mask"],
            output_names=["scores"],
            dynamic_axes={
                "ids": {0: "b", 1: "t"},
                "mask": {0: "b", 1: "t"},
                "scores": {0: "b", 1: "t"},
            },
        )
    report = verify(path, model, **SWEEP)
    assert report.passed, report.summary()
    assert {c.lengths_mode for c in report.cases} >= {"ragged"}


def _recurrent_graph(
    direction: str, flip_axis: int | None, lengths: bool = True
) -> onnx.ModelProto:
    """x [B, T, 4] -> (Slice reversing ``flip_axis``) -> Transpose to [T, B, 4] -> LSTM."""
    from onnx import TensorProto, helper

    nodes, source = [], "x"
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [1, 12, 4], [0.0] * 48) for n in ("W", "R")]
    if flip_axis is not None:
        for name, value in (("s", -1), ("e", -(2**62)), ("a", flip_axis), ("k", -1)):
            inits.append(helper.make_tensor(name, TensorProto.INT64, [1], [value]))
        nodes.append(helper.make_node("Slice", ["x", "s", "e", "a", "k"], ["f"], name="/flip"))
        source = "f"
    nodes.append(helper.make_node("Transpose", [source], ["t"], perm=[1, 0, 2]))
    ins = ["t", "W", "R", "", "lengths" if lengths else ""]
    nodes.append(
        helper.make_node("LSTM", ins, ["y"], name="/rnn", hidden_size=3, direction=direction)
    )
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 4]),
            helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph)


def test_short_rows_are_blamed_only_on_what_makes_them_differ() -> None:
    """review28 M1: a forward-only node without sequence_lens was blamed for 'its backward
    direction', a flip of the features for flip-then-pack, and a wrong head that failed full
    rows too for short rows."""
    import types

    from birnn_export._foreign import _reversed_whole, _short_rows_suspect, blame_short_rows
    from birnn_export._graph import constant_tensors
    from birnn_export._report import CaseResult
    from birnn_export.compare import Check

    spec = types.SimpleNamespace(length_source="lengths")
    assert _short_rows_suspect(_recurrent_graph("forward", None, lengths=False), spec) is None
    told = _short_rows_suspect(_recurrent_graph("bidirectional", None, lengths=False), spec)
    assert told is not None and told.startswith("recurrent node '/rnn' takes no sequence_lens")

    def flip_of(proto: onnx.ModelProto) -> str | None:
        made_by = {out: n for n in proto.graph.node for out in n.output}
        return _reversed_whole(proto.graph.node[-1], made_by, constant_tensors(proto))

    time_flip = _recurrent_graph("forward", 1)
    assert flip_of(time_flip) == "/flip"
    assert flip_of(_recurrent_graph("forward", 2)) is None

    from birnn_export._case import LAYERS_OFF

    bad = Check("y", "sequence", "values", max_abs=1.0, max_rel=1.0, mean_abs=1.0, passed=False)

    def case(lengths: tuple[int, ...]) -> CaseResult:
        return CaseResult(
            "ort-cpu", len(lengths), 4, "ragged", 1.0, 0, lengths, (bad,), None, LAYERS_OFF
        )

    short = [case((4, 2))]
    assert blame_short_rows(short, time_flip, spec)[0].diagnosis.startswith("recurrent node '/rnn'")
    both = [case((4, 2)), case((4, 4))]  # full rows fail too: not the short rows' doing
    assert [r.diagnosis for r in blame_short_rows(both, time_flip, spec)] == [LAYERS_OFF] * 2


def test_a_foreign_graphs_fixed_dims_clear_the_sizes_recorded_elsewhere() -> None:
    """A graph that fixes the time dim takes no other length: the points and assumptions a
    birnn-export graph of the model records (at other lengths) are not its own."""
    import dataclasses

    from birnn_export._foreign import _fixed_ranges
    from tests.test_spec import spec

    recorded = {"dims": ["seq"], "words": "w", "note": "n", "sizes": [[100, 100, 1]]}
    given = dataclasses.replace(spec(), untraced=({"seq": 100},), assumed=(recorded,))
    changes = _fixed_ranges(given, {"seq": 50})
    assert changes["untraced"] == () and changes["assumed"] == ()
