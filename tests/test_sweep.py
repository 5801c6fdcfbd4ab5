"""birnn_export._sweep: the shapes and inputs verification sweeps over."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from birnn_export._sweep import Case, case_feed, example_probes, plan_cases, sweep_arguments
from birnn_export.errors import BiRNNExportError, UsageError
from birnn_export.spec import GraphSpec, TensorSpec


def test_default_sweep_covers_issue_shapes(split_lstm_graph: Path) -> None:
    spec = GraphSpec.from_onnx(split_lstm_graph)
    cases = plan_cases(spec)
    t0 = spec.example_seq
    assert {c.batch for c in cases} == {1, 3, 16}
    assert {c.seq for c in cases} == {1, 2, t0, 4 * t0, spec.seq_range[2]}  # declared max
    assert {c.lengths_mode for c in cases} == {"ragged", "equal"}
    assert {c.scale for c in cases} == {1.0, 10.0}
    assert len({c.seed for c in cases}) == len(cases)
    wider = plan_cases(spec, batch_sizes=(2, 64), seq_lens=(300,))
    assert {(c.batch, c.seq) for c in wider} == {(2, 300), (64, 300)}
    with pytest.raises(BiRNNExportError, match="seq_lens"):
        plan_cases(spec, seq_lens=(0, 3))
    # batch sizes alone take the default lengths (`verify --batch-sizes 2` raised a TypeError)
    alone = plan_cases(spec, batch_sizes=(2,))
    assert {(c.batch, c.seq) for c in alone} == {(2, t0), (2, 1), (2, 2), (2, 4 * t0), (2, 256)}


def test_one_case_has_noise_past_the_lengths_and_its_rows_do_not_run_alone(
    split_lstm_graph: Path,
) -> None:
    spec = GraphSpec.from_onnx(split_lstm_graph)
    noisy = [c for c in plan_cases(spec) if c.noise]
    assert [(c.batch, c.seq, c.lengths_mode) for c in noisy] == [
        (16, 4 * spec.example_seq, "ragged")
    ]
    assert not noisy[0].rows_alone and dataclasses.replace(noisy[0], noise=False).rows_alone
    product = plan_cases(spec, batch_sizes=(2, 5), seq_lens=(4, 9))
    assert [(c.batch, c.seq) for c in product if c.noise] == [(5, 4), (5, 9)]
    unmeasured = GraphSpec(  # no lengths nor mask: nothing past a length
        inputs=(TensorSpec("x", "float32", ("batch", "seq", 4), "features"),),
        outputs=(TensorSpec("y", "float32", ("batch", "seq", 16), "sequence"),),
        example_batch=3,
        example_seq=5,
    )
    assert not any(c.noise for c in plan_cases(unmeasured))


def test_sweep_inputs_are_valid(split_lstm_graph: Path) -> None:
    spec = GraphSpec.from_onnx(split_lstm_graph)
    feed = case_feed(spec, Case(16, 9, "ragged", 1.0, 3))
    lengths = feed["lengths"]
    assert lengths.min() == 1 and lengths.max() == 9 and len(set(lengths.tolist())) > 2
    assert not np.all(np.diff(lengths) <= 0)  # unsorted
    equal = case_feed(spec, Case(4, 9, "equal", 1.0, 3))["lengths"]
    assert len(set(equal.tolist())) == 1 and 1 <= equal[0] <= 9
    large = case_feed(spec, Case(16, 9, "ragged", 10.0, 3))["x"]
    assert np.abs(large).max() > 10


def test_no_lengths_input_sweeps_full_rows() -> None:
    spec = GraphSpec(
        inputs=(TensorSpec("x", "float32", ("batch", "seq", 4), "features"),),
        outputs=(TensorSpec("y", "float32", ("batch", "seq", 16), "sequence"),),
        example_batch=3,
        example_seq=5,
    )
    cases = plan_cases(spec, batch_sizes=(2,), seq_lens=(3,))
    assert [(c.lengths_mode, c.scale) for c in cases] == [("full", 1.0), ("full", 10.0)]


def test_asked_lengths_below_the_declared_minimum_are_refused() -> None:
    spec = GraphSpec(
        inputs=(TensorSpec("x", "float32", ("batch", "seq", 4), "features"),),
        outputs=(TensorSpec("y", "float32", ("batch", "seq", 16), "sequence"),),
        example_batch=3,
        example_seq=9,
        seq_range=(7, 20, 80),
    )
    with pytest.raises(BiRNNExportError, match="3 is below the time dim's declared minimum 7"):
        plan_cases(spec, seq_lens=(3, 9))
    assert min(c.seq for c in plan_cases(spec)) == 7  # the default sweep stays inside
    assert {c.seq for c in plan_cases(spec, seq_lens=(7, 9))} == {7, 9}


def test_other_named_dims_are_swept_at_their_declared_min_and_max() -> None:
    spec = GraphSpec(
        inputs=(
            TensorSpec("ids", "int64", ("batch", "seq", "chars"), "tokens", 0, 9, 0, 1),
            TensorSpec("lengths", "int64", ("batch",), "lengths", 1, "seq", 0),
        ),
        outputs=(TensorSpec("y", "float32", ("batch", "seq", 4), "sequence", batch_at=0),),
        example_batch=3,
        example_seq=5,
        dim_ranges={"chars": (2, 12, 30)},
    )
    cases = plan_cases(spec)
    widths = sorted({case_feed(spec, c)["ids"].shape[2] for c in cases})
    assert widths == [2, 12, 30]
    plain = dataclasses.replace(spec, dim_ranges={})
    assert all(c.others == 1 for c in plan_cases(plain))
    # points torch.export assumed away: each a case of its own, at the sizes it gives
    points = ({"chars": 7}, {"seq": 100}, {"batch": 2, "seq": 42}, {"batch": 8})
    branched = dataclasses.replace(spec, untraced=points, batch_range=(1, 2, 2))
    sizes = {(c.batch, c.seq, case_feed(branched, c)["ids"].shape[2]) for c in plan_cases(branched)}
    # the batch a point leaves free is 3 within the declared range: 2 here
    assert {(2, 5, 7), (2, 100, 12), (2, 42, 12), (8, 5, 12)} <= sizes, sizes


def test_probes_of_the_example_sizes_vary_one_free_dim_at_a_time() -> None:
    """One probe at the example's sizes of the other named dims, then each free dim at its
    opt (else its min) with the rest at the example's; a dim given (--dim) stays as given,
    and a sweep that already ran the example's sizes gets none."""
    spec = GraphSpec(
        inputs=(TensorSpec("x", "float32", ("batch", "seq", "h", "w"), "features"),),
        outputs=(TensorSpec("y", "float32", ("batch", "seq", 4), "sequence", batch_at=0),),
        example_batch=7,
        example_seq=11,
        dim_ranges={"h": (16, 64, 128), "w": (8, 17, 32), "c": (2, 3, 5)},
        example_sizes={"batch": 7, "seq": 11, "h": 17, "w": 17, "c": 3},
    )
    probes = example_probes(spec, plan_cases(spec), {}, seed=40)
    sizes = [{d: c.sizes(spec)[d] for d in ("h", "w", "c")} for c in probes]
    assert sizes == [
        {"h": 17, "w": 17, "c": 3},
        {"h": 64, "w": 17, "c": 3},
        {"h": 17, "w": 8, "c": 3},
        {"h": 17, "w": 17, "c": 2},
    ]
    assert {(c.batch, c.seq, c.lengths_mode) for c in probes} == {(3, 11, "full")}
    assert [c.seed for c in probes] == [40, 41, 42, 43]
    given = example_probes(spec, [], {"c": 5}, seed=0)
    assert [c.sizes(spec)["c"] for c in given] == [5, 5, 5]
    at_example = Case(3, 11, "full", 1.0, 0, dims=(("c", 3), ("h", 17), ("w", 17)))
    assert example_probes(spec, [at_example], {}, seed=0) == []
    assert example_probes(dataclasses.replace(spec, dim_ranges={}), [], {}, seed=0) == []


def test_other_dims_given_are_fed_in_every_case(tmp_path: Path) -> None:
    """A sentence pair's second time dim at the size given (verify/bench --dim): every case
    feeds it, and the default sweep's min/max cases of the other dims are not run (none left
    to vary); sizes outside the declared range, and unknown dims, are refused."""
    import torch

    from birnn_export.pipeline import export_onnx
    from tests.realistic_models import SiamesePair

    torch.manual_seed(0)
    path = export_onnx(SiamesePair().eval(), tmp_path / "pair.onnx", verify=False).path
    spec = GraphSpec.from_onnx(path)
    assert len(plan_cases(spec)) - len(plan_cases(spec, dims={"q2_seq": 5})) == 2
    for case in plan_cases(spec, dims={"q2_seq": 5}) + plan_cases(
        spec, batch_sizes=(2,), seq_lens=(3, 9), dims={"q2_seq": 5}
    ):
        assert case.dims == (("q2_seq", 5),) and case.sizes(spec)["q2_seq"] == 5
        feed = case_feed(spec, case)
        assert feed["q2"].shape == (case.batch, 5) and feed["q2_lens"].max() <= 5
    for bad, message in (({"q2_seq": 0}, "outside its declared range"), ({"q3": 2}, "not one")):
        with pytest.raises(BiRNNExportError, match=message):
            plan_cases(spec, dims=bad)
    # --seq-lens without --dim: the second sequence at its min and max too, not only its opt
    low, opt, high = spec.dim_ranges["q2_seq"]
    cases = plan_cases(spec, batch_sizes=(2, 4), seq_lens=(3, 9))
    widths = {(c.seq, case_feed(spec, c)["q2"].shape[1]) for c in cases}
    assert widths == {(t, w) for t in (3, 9) for w in (low, opt, high)}
    assert {c.batch for c in cases if c.others != 1} == {4}


@pytest.mark.slow
def test_a_dual_path_models_longest_case_is_measured_and_run(tmp_path):
    """A dual-path separator pads the time dim to whole chunks, which symbolic shape inference
    cannot follow: each unreadable dim counted at the case's largest size put batch 3 x 512
    steps at hundreds of GiB, and the longest case (the declared maximum) was skipped. The
    tensors are measured on ONNX Runtime instead, and the case runs."""
    import onnx
    import torch

    from birnn_export._sweep import fit_budget, has_unreadable_dims, measured_bytes
    from birnn_export.pipeline import export_onnx
    from birnn_export.spec import largest_tensor_bytes, tensor_shapes
    from tests.realistic_models import DualPathBiLSTM

    torch.manual_seed(0)
    inputs, ranges = ["x:float32[batch,6,time]"], {"time": (8, 64, 512)}
    result = export_onnx(
        DualPathBiLSTM().eval(), tmp_path / "dp.onnx", inputs=inputs, ranges=ranges
    )
    assert result.verification.passed, result.verification.summary()
    assert (3, 512) in {(c.batch, c.seq) for c in result.verification.cases}
    assert not result.verification.notes
    proto, spec = onnx.load(str(result.path)), result.spec
    shapes = tensor_shapes(proto)
    assert has_unreadable_dims(shapes, spec) and largest_tensor_bytes(shapes, spec, 3, 512) > 2**38
    measured = measured_bytes(proto, spec, 3, 512)
    assert 3 * 6 * 512 * 8 <= measured <= 2**20  # the input itself, and about a MiB at most
    kept, notes = fit_budget(plan_cases(spec), proto, spec, 2**30, explicit=False)
    assert (3, 512) in {(c.batch, c.seq) for c in kept} and not notes


def test_a_dual_path_example_of_one_chunk_grows_and_the_graph_holds_for_every_length(tmp_path):
    """Chunks of 20 steps and an example of 11: one chunk, so the inter-chunk LSTM read one step,
    which the exporter fixes; the export was refused and told to give a range. The example now
    grows until every layer reads more than one step, and the graph holds for every length, a
    single chunk included."""
    import torch

    from birnn_export.pipeline import export_onnx
    from tests.realistic_models import DualPathBiLSTM

    torch.manual_seed(0)
    model, inputs = DualPathBiLSTM(chunk=20).eval(), ["x:float32[batch,6,time]"]
    result = export_onnx(model, tmp_path / "dp.onnx", inputs=inputs)
    assert result.spec.example_sizes["time"] > 20
    report = result.verification
    assert report.passed, report.summary()
    assert min(c.seq for c in report.cases) < 20 < max(c.seq for c in report.cases)


def test_a_model_of_one_fixed_length_is_told_birnn_export_needs_one_that_varies(tmp_path):
    """int(x.shape[1]) fixes the only dim besides the batch: declaring it as a number, which the
    refusal advised, is refused in turn (no dim would vary), so the refusal says so."""
    import torch
    from torch import nn

    from birnn_export.errors import ExportError
    from birnn_export.pipeline import export_onnx

    class Window(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 5, batch_first=True, bidirectional=True)

        def forward(self, x):
            return self.rnn(x)[0].reshape(x.shape[0], int(x.shape[1]), 2, 5).sum(2)

    torch.manual_seed(0)
    with pytest.raises(ExportError) as caught:
        export_onnx(Window().eval(), tmp_path / "w.onnx", inputs=["x:float32[batch,time,4]"])
    message = str(caught.value)
    assert "a size made a Python number" in message, message
    assert "declare it as the number 11 and name the dim that does" in message
    assert "does not export a model that takes one fixed length" in message


def test_sweep_arguments_take_what_python_callers_pass() -> None:
    """Sizes as numpy integers or arrays are plain ints (review34 R1: bench refused
    ``[np.int64(2)]`` and an array raised numpy's ValueError in verify and bench); a bad value or
    engine is a UsageError, before any model loads (R3)."""
    engines, batches, seqs = sweep_arguments("torch, ort-cpu,torch", np.arange(1, 3), np.int64(5))
    assert (engines, batches, seqs) == (("torch", "ort-cpu"), (1, 2), (5,))
    assert all(type(v) is int for v in batches + seqs)
    assert sweep_arguments(["ort-cpu"], None, [np.int32(4), 4]) == (("ort-cpu",), None, (4,))
    assert sweep_arguments("ort-cpu", np.array(3), range(2, 4))[1:] == ((3,), (2, 3))
    for engines, sizes, match in [
        ("tvm,ort-cpu", 1, r"engines: unknown \['tvm'\]; choose from torch, ort-cpu"),
        ("", 1, "engines: expected at least one"),
        ("ort-cpu", np.array([[1, 2]]), "batch_sizes: expected positive integers"),
        ("ort-cpu", [0], "batch_sizes: expected positive integers"),
        ("ort-cpu", 2.0, "batch_sizes: expected positive integers"),
        ("ort-cpu", [], "batch_sizes: expected positive integers"),
    ]:
        with pytest.raises(UsageError, match=match):
            sweep_arguments(engines, sizes, None)
