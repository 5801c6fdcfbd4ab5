"""birnn_export._case: one case of the sweep judged output by output (rows alone included)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from birnn_export._case import (
    SINGLE_ROWS,
    CaseLayers,
    _layer_checks,
    batch_invariance_checks,
    blame_one_step,
)
from birnn_export._report import CaseResult
from birnn_export._sweep import Case, case_feed
from birnn_export.compare import Check, NoiseCriterion
from birnn_export.runners import BaseRunner, OrtRunner
from birnn_export.spec import GraphSpec, TensorSpec, Tolerance


class Transformed(BaseRunner):
    """ONNX Runtime CPU on ``path``, its outputs then put through ``transform(feed, out)``: an
    engine with a planted defect."""

    engine = "ort-cpu"

    def __init__(self, path: Path, transform: Callable[..., dict[str, np.ndarray]]) -> None:
        super().__init__()
        self.inner, self.transform = OrtRunner(str(path)), transform

    def activate_impl(self) -> None:
        self.inner.activate()

    def infer_impl(self, feed):
        return self.transform(feed, self.inner.infer(feed))


def test_batch_invariance_catches_batch_dependent_rows(split_lstm_graph: Path) -> None:
    spec = GraphSpec.from_onnx(split_lstm_graph)

    def batch_dependent(feed, out):  # correct in a batch of one, off by 1e-3 per extra row
        extra = 1e-3 * (len(feed["lengths"]) - 1)
        return {k: v + np.float32(extra) for k, v in out.items()}

    case = Case(4, 6, "ragged", 1.0, 0)
    feed = case_feed(spec, case)
    tol = {t.name: Tolerance(1e-5, 1e-4) for t in spec.outputs}
    with Transformed(split_lstm_graph, batch_dependent) as runner:
        results = batch_invariance_checks(
            runner, spec, feed, runner.infer(feed), feed["lengths"], case, tol
        )
    assert {r.name for r in results} == {"output", "h_n", "c_n"}
    assert all(r.check == "batch-invariance" and not r.passed for r in results)
    assert max(r.max_abs for r in results) == pytest.approx(3e-3, rel=1e-3)
    with OrtRunner(str(split_lstm_graph)) as good:
        results = batch_invariance_checks(
            good, spec, feed, good.infer(feed), feed["lengths"], case, tol
        )
    assert all(r.passed for r in results)


def test_rows_alone_must_have_the_batched_rows_extent(split_lstm_graph: Path) -> None:
    """A row alone is cut only along time (and a dim cut to the longest row): an engine whose
    rows alone come back short on another axis is an error, not a pass on fewer elements."""
    spec = GraphSpec.from_onnx(split_lstm_graph)

    def truncating(feed, out):  # rows alone lose all but two of their last axis
        return out if len(feed["lengths"]) > 1 else {k: v[..., :2] for k, v in out.items()}

    case = Case(3, 6, "ragged", 1.0, 0)
    feed = case_feed(spec, case)
    tol = {t.name: Tolerance(1e-5, 1e-4) for t in spec.outputs}
    with (
        Transformed(split_lstm_graph, truncating) as runner,
        pytest.raises(RuntimeError, match="alone has shape"),
    ):
        batch_invariance_checks(runner, spec, feed, runner.infer(feed), feed["lengths"], case, tol)


def test_a_layer_run_over_other_steps_in_the_graph_fails_its_check():
    """A graph that took another branch on the length (the model pads short inputs to a
    chunk) runs a layer over fewer steps than the model: a failed check saying so, where a
    ValueError from the comparison stopped verification with a traceback."""
    graph = {"lstm/l0": np.zeros((1, 1, 10))}
    model = {"lstm/l0": np.zeros((1, 8, 10))}
    layers = CaseLayers(graph=graph, reference=model, lengths={"lstm": np.array([1])})
    (check,) = _layer_checks(layers, NoiseCriterion(), "float32")
    assert not check.passed and "has shape [1, 1, 10], the model's [1, 8, 10]" in check.note


def test_one_step_is_blamed_only_where_the_failing_row_has_one_step() -> None:
    """Every ragged case of batch 2 or more has a row of 1 step: a row of 23 steps that differs
    alone, or a row alone of 5 steps that fails to run, was blamed on 1 step (review15)."""
    spec = GraphSpec(
        inputs=(
            TensorSpec("x", "float32", ("batch", "seq", 5), "features"),
            TensorSpec("lengths", "int64", ("batch",), "lengths"),
        ),
        outputs=(TensorSpec("y", "float32", ("batch", "seq", 8), "sequence", batch_at=0),),
        example_batch=7,
        example_seq=11,
    )
    ok = Check("y", "sequence", "values", 0.0, 0.0, 0.0, True)
    differs = Check("y", "sequence", "batch-invariance", 0.5, 0.5, 0.1, False)
    cases = [Case(3, 11, "equal", 1.0, 0), Case(3, 44, "ragged", 1.0, 1)]
    cases += [Case(16, 11, "ragged", 1.0, 2)] * 2

    def fails(row: int) -> str:
        return f"{SINGLE_ROWS}RuntimeError: output y: row {row} alone has shape [1, 5, 9]"

    lengths = (11, 1, 5) + (7,) * 13
    results = [
        CaseResult("ort-cpu", 3, 11, "equal", 1.0, 0, (11, 11, 11), (ok,)),
        CaseResult("ort-cpu", 3, 44, "ragged", 1.0, 1, (44, 1, 23), (ok, differs)),
        CaseResult("ort-cpu", 16, 11, "ragged", 1.0, 2, lengths, (ok,), error=fails(2)),
    ]
    assert all(r.diagnosis is None for r in blame_one_step(results, cases, spec))
    one = [
        results[0],
        CaseResult("ort-cpu", 16, 11, "ragged", 1.0, 2, lengths, (ok,), error=fails(1)),
    ]
    blamed = blame_one_step(one, [cases[0], cases[2]], spec)
    assert blamed[1].diagnosis.startswith("only cases of 1 step fail")


def test_an_int8_sweep_failing_only_top1_says_scores_none() -> None:
    """An encoder's 128-wide projection held to top-1 agreement was refused at relative L2
    0.017 (limit 0.05), with no way out (users22): the diagnosis names --scores."""
    from birnn_export._case import sweep_checks
    from birnn_export.compare import QuantizedCriterion

    def case(top1_missed: int, err: float) -> CaseResult:
        values = Check(
            "proj", "sequence", "values", err, err, err, True,
            rel_l2=err, reference_l2=1.0, top1=0.9, top1_decisive=100, top1_missed=top1_missed,
        )  # fmt: skip
        return CaseResult("ort-cpu", 3, 11, "ragged", 1.0, 0, (11, 4, 1), (values,))

    criteria = {"ort-cpu": {"proj": QuantizedCriterion()}}
    (swept,) = sweep_checks([case(2, 0.01), case(1, 0.01)], criteria, seed=0)
    assert not swept.passed and "--scores none" in (swept.diagnosis or "")
    (both,) = sweep_checks([case(2, 0.2), case(1, 0.2)], criteria, seed=0)
    assert not both.passed and both.diagnosis is None  # the values are off too
