"""Numerical verification of an exported graph against eager PyTorch, across shapes.

:func:`verify` reads the graph's contract (:class:`~birnn_export.spec.GraphSpec`) from the ONNX
file, builds valid inputs for a sweep of batch sizes and sequence lengths (ragged and equal
lengths, unit-scale and large-magnitude features), runs every requested engine and the
reference, and judges each output with :mod:`birnn_export.compare`:

* by default against the model run in float64 on the CPU, within a factor of eager PyTorch's own
  error on the same inputs (the model's noise floor), plus top-1 agreement for class scores and
  the greedy CTC decode for log-probabilities; fixed ``atol`` / ``rtol`` when asked for;
* each output at its valid time steps (``t < lengths[b]``) when the graph takes lengths, the
  whole tensor otherwise; final states (role ``"state"``) in full;
* the padded positions separately: if the reference writes exactly the padding value there, the
  engine must too, otherwise the engine must match the reference there;
* batch invariance: every row run alone (batch 1, its own length) equals its row in the batch;
* every recurrent layer's own output inside the graph (ONNX Runtime CPU) against the same layer
  of the reference, rerun with torch's own single-layer modules (:mod:`birnn_export._layers`),
  so a defect in a lower layer is found and located.

On a mismatch, the first failing recurrent layer (or a bare bidirectional layer's own outputs) is
split into its forward and backward halves, with the first diverging step of every row, so a
reversal bug reads differently from wrong weights or numeric drift.

Example:
    >>> report = verify("model.onnx", model, engines=("ort-cpu",))  # doctest: +SKIP
    >>> report.passed, report.summary()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birnn_export import _interop
from birnn_export._diagnose import diagnose_directions, diagnose_layers
from birnn_export._files import check_output_path
from birnn_export._layers import (
    GraphLayers,
    LayersUnavailable,
    graph_layers,
    one_line,
)
from birnn_export._references import (
    GOLDEN_EAGER,
    GOLDEN_REFERENCE,
    References,
    float64_fails,
    reference_module,
    resolve_models,
    root_bidirectional_hidden,
)
from birnn_export._report import environment, json_safe
from birnn_export._report import render_report as render_report
from birnn_export._sweep import (
    LARGE_SCALE,
    Case,
    case_feed,
    fit_budget,
    plan_cases,
    row_feed,
)
from birnn_export.compare import (
    Check,
    Criterion,
    NoiseCriterion,
    QuantizedCriterion,
    ToleranceOverride,
    check_overrides,
    compare,
    compare_outputs,
    resolve_tolerance,
    sweep_check,
)
from birnn_export.errors import BiRNNExportError, VerificationError
from birnn_export.quantize import INT8
from birnn_export.spec import (
    GraphSpec,
    TensorSpec,
    Tolerance,
    covering_range,
    default_tolerance,
    dim_size,
    load_onnx,
)

logger = logging.getLogger(__name__)

#: The default memory budget: the largest tensor one case may allocate (bytes, float64).
DEFAULT_MEMORY_BUDGET = 1 << 30

#: One check of one output in one case (see :class:`birnn_export.compare.Check`).
OutputResult = Check


# -- results ---------------------------------------------------------------------------------


#: ``lengths_mode`` of the result that judges every case together (int8 graphs).
WHOLE_SWEEP = "whole sweep"


@dataclass(frozen=True)
class CaseResult:
    """One engine at one input shape: the outputs' checks, or the error the engine raised."""

    engine: str
    batch: int
    seq: int
    lengths_mode: str
    scale: float
    seed: int
    lengths: tuple[int, ...] | None
    outputs: tuple[Check, ...]
    error: str | None = None
    diagnosis: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(o.passed for o in self.outputs)

    @property
    def label(self) -> str:
        if self.lengths_mode == WHOLE_SWEEP:
            return f"{self.engine} {WHOLE_SWEEP}"
        scale = f" x{self.scale:g}" if self.scale != 1.0 else ""
        return f"{self.engine} B={self.batch} T={self.seq} {self.lengths_mode}{scale}"


@dataclass(frozen=True)
class VerifyReport:
    """Everything :func:`verify` compared; ``passed`` only if every case and check passed.

    ``criterion`` says how outputs were judged; ``reference_dtype`` is the reference's
    precision and ``eager_dtype`` that of the eager run whose error is the noise floor (``None``
    under fixed tolerances).
    """

    onnx_path: str
    reference: str
    reference_dtype: str
    engines: tuple[str, ...]
    providers: dict[str, tuple[str, ...]]
    cases: tuple[CaseResult, ...]
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    environment: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    saved_inputs: str | None = None
    criterion: str = ""
    eager_dtype: str | None = None
    saved_outputs: str | None = None

    @property
    def passed(self) -> bool:
        return not self.problems and all(c.passed for c in self.cases)

    @property
    def failures(self) -> tuple[CaseResult, ...]:
        return tuple(c for c in self.cases if not c.passed)

    def worst_ratio(self) -> float | None:
        """The largest finite engine-to-eager error ratio of any values or layer check (where
        eager PyTorch is exact the ulp floor judges instead)."""
        ratios = [
            o.ratio
            for c in self.cases
            for o in c.outputs
            if o.ratio is not None and math.isfinite(o.ratio) and o.check in ("values", "layer")
        ]
        return max(ratios, default=None)

    def worst_use(self) -> float | None:
        """The largest error over its threshold of any check (below 1 passes)."""
        uses = [
            o.max_abs / o.threshold
            for c in self.cases
            for o in c.outputs
            if o.threshold and math.isfinite(o.max_abs)
        ]
        return max(uses, default=None)

    def summary(self) -> str:
        """One line: PASS/FAIL, counts, and the worst failing check."""
        total, failed = len(self.cases), self.failures
        if self.passed:
            ratio, use = self.worst_ratio(), self.worst_use()
            margin = " within tolerance"
            if ratio is not None:
                margin = f": error vs float64 at most {ratio:.2g}x eager {self.eager_dtype}'s own"
            if use is not None:
                margin += f" ({use:.2g} of the limit)"
            engines = ", ".join(self.engines)
            return f"PASS: {total} case(s) on {engines} match {self.reference}{margin}"
        parts = []
        if failed:
            parts.append(f"{len(failed)} of {total} case(s) failed")
            first = failed[0]
            if first.error is not None:
                parts.append(f"first: {first.label}: engine error: {first.error}")
            else:
                bad = max(
                    (o for o in first.outputs if not o.passed),
                    key=lambda o: o.max_abs if math.isfinite(o.max_abs) else math.inf,
                )
                parts.append(f"first: {first.label}: {bad.describe()}")
        if self.problems:
            parts.append(f"graph problems: {'; '.join(self.problems)}")
        return "FAIL: " + "; ".join(parts)

    def raise_for_failure(self) -> None:
        """Raise :class:`~birnn_export.errors.VerificationError` (exit code 1) unless passed."""
        if self.passed:
            return
        message = self.summary()
        diagnosis = self.diagnosis()
        if diagnosis:
            message += " | " + " ".join(diagnosis.splitlines()[0].split())
        raise VerificationError(message, report=self)

    def diagnosed_failures(self) -> tuple[CaseResult, ...]:
        """Failing cases that carry a diagnosis, most telling first: ragged lengths with a
        full-length row and a batch above one, since they separate reversal from weights."""

        def rank(case: CaseResult) -> tuple[bool, bool, bool]:
            full = case.lengths is not None and case.seq in case.lengths
            return (case.lengths_mode != "ragged", not full, case.batch == 1)

        return tuple(sorted((c for c in self.failures if c.diagnosis), key=rank))

    def diagnosis(self) -> str | None:
        """The diagnosis of the most telling failing case (see :meth:`diagnosed_failures`)."""
        ranked = self.diagnosed_failures()
        return ranked[0].diagnosis if ranked else None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["passed"] = self.passed
        for case, result in zip(data["cases"], self.cases, strict=True):
            case["passed"] = result.passed
            for out, check in zip(case["outputs"], result.outputs, strict=True):
                out["ratio"] = check.ratio
        return json_safe(data)

    def to_json(self, indent: int | None = 2) -> str:
        """The report as strict JSON (non-finite numbers become ``null``)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


# -- comparison ------------------------------------------------------------------------------


def _layer_checks(
    graph: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    eager: Mapping[str, np.ndarray] | None,
    lengths: Mapping[str, np.ndarray],
    criterion: Criterion,
    dtype: str,
) -> list[Check]:
    """Every recurrent layer's output in the graph against the reference's, at valid steps."""
    checks = []
    for name, want in reference.items():
        steps = want.shape[1]
        got = graph[name][:, :steps]
        rows = lengths[name.rsplit("/", 1)[0]]
        mask = (np.arange(steps)[None, :] < rows[:, None])[..., None]
        noise = None if eager is None else eager[name]
        checks.append(
            compare(
                name,
                "layer",
                got,
                want,
                criterion=criterion,
                eager=noise,
                mask=mask,
                dtype=dtype,
                role="layer",
                note="the layer's own output inside the graph",
            )
        )
    return checks


# -- one case --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layers:
    """Per-case layer outputs for the layer checks and the diagnosis (or why there are none)."""

    infos: tuple[Any, ...] = ()
    graph: Mapping[str, np.ndarray] | None = None
    reference: Mapping[str, np.ndarray] | None = None
    eager: Mapping[str, np.ndarray] | None = None
    lengths: Mapping[str, np.ndarray] | None = None
    hooked: str = ""
    reason: str | None = None

    @property
    def ready(self) -> bool:
        return self.reason is None and self.graph is not None and self.reference is not None


def _run_case(
    engine: str,
    runner: Any,
    spec: GraphSpec,
    case: Case,
    feed: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    eager: Mapping[str, np.ndarray] | None,
    lengths: np.ndarray | None,
    criteria: Mapping[str, Criterion],
    *,
    batch_invariance: bool,
    hidden: int | None,
    layers: _Layers,
    check_layers: bool,
    reference: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]] | None = None,
    derived_lengths: np.ndarray | None = None,
) -> CaseResult:
    common = dict(
        engine=engine,
        batch=case.batch,
        seq=case.seq,
        lengths_mode=case.lengths_mode,
        scale=case.scale,
        seed=case.seed,
        lengths=tuple(int(v) for v in lengths) if lengths is not None else None,
    )
    try:
        actual = runner.infer(feed)
    except Exception as exc:  # an engine rejecting valid input is a verification failure
        return CaseResult(**common, outputs=(), error=one_line(exc))
    outputs = compare_outputs(
        spec, actual, expected, lengths, criteria, eager=eager, derived_lengths=derived_lengths
    )
    outputs += _shape_checks(spec, case, actual)
    layer_checks: list[Check] = []
    if check_layers and layers.ready:
        criterion = next(iter(criteria.values()))
        if isinstance(criterion, Tolerance):
            criterion = default_tolerance(spec.dtype, "ort-cpu")
        layer_checks = _layer_checks(
            layers.graph, layers.reference, layers.eager, layers.lengths, criterion, spec.dtype
        )
        outputs += layer_checks
    error = None
    if batch_invariance and case.scale == 1.0 and case.lengths_mode in ("ragged", "full"):
        limits = {
            o.name: o.threshold if o.threshold is not None else criteria[o.name]
            for o in outputs
            if o.check == "values"
        }
        try:
            outputs += _batch_invariance(
                runner,
                spec,
                feed,
                actual,
                lengths,
                case,
                limits,
                expected=expected,
                reference=reference,
            )
        except BiRNNExportError:
            raise
        except Exception as exc:
            error = f"running single rows: {one_line(exc)}"
    diagnosis = None
    if any(not o.passed for o in outputs):
        diagnosis = _diagnose(
            engine, spec, case, actual, expected, lengths, outputs, hidden, layers, layer_checks
        )
    return CaseResult(**common, outputs=tuple(outputs), error=error, diagnosis=diagnosis)


def _diagnose(
    engine: str,
    spec: GraphSpec,
    case: Case,
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    lengths: np.ndarray | None,
    outputs: Sequence[Check],
    hidden: int | None,
    layers: _Layers,
    layer_checks: Sequence[Check],
) -> str | None:
    failing = [o for o in outputs if not o.passed and o.check in ("values", "layer")]
    if not failing:
        return None
    if all(o.threshold is None and o.atol is None for o in failing):  # an int8 graph
        return (
            "the int8 graph departs from the model beyond the task criterion; its quantized "
            "kernels change results by design, so no direction split applies: compare the float "
            "graph (ort-cpu) to tell an export defect from quantization"
        )
    rows = lengths if lengths is not None else np.full(case.batch, case.seq)
    if hidden is None and layers.ready:
        if not layer_checks:  # another engine: the layers as ONNX Runtime CPU computes them
            criterion = NoiseCriterion() if layers.eager is not None else Tolerance(1e-5, 1e-4)
            layer_checks = _layer_checks(
                layers.graph, layers.reference, layers.eager, layers.lengths, criterion, spec.dtype
            )
        return diagnose_layers(
            layer_checks,
            layers.graph,
            layers.reference,
            layers.lengths,
            layers.infos,
            engine=engine,
            hooked=layers.hooked,
            takes_lengths=spec.lengths_input is not None,
        )
    texts = []
    sequence_ok = not any(o.role == "sequence" for o in failing)
    for result in failing:
        tensor = next((t for t in spec.outputs if t.name == result.name), None)
        if tensor is None or np.shape(actual.get(tensor.name)) != np.shape(expected[tensor.name]):
            continue
        limit = result.threshold if result.threshold is not None else None
        tol = Tolerance(limit, 0.0) if limit is not None else Tolerance(result.atol, result.rtol)
        texts.append(
            diagnose_directions(
                tensor,
                np.asarray(actual[tensor.name]),
                np.asarray(expected[tensor.name]),
                rows,
                hidden,
                tol,
                steps=case.seq,
                sequence_ok=sequence_ok,
                why=layers.reason,
            )
        )
    return "\n".join(texts) or None


def _shape_checks(spec: GraphSpec, case: Case, actual: Mapping[str, np.ndarray]) -> list[Check]:
    """Output dims derived from the input dims (``(width//4)``) against the relation recorded in
    the spec, at this case's sizes: only the ones that disagree."""
    sizes = spec.sizes(case.batch, case.seq)
    checks = []
    for tensor in spec.outputs:
        value = actual.get(tensor.name)
        if value is None or np.ndim(value) != len(tensor.dims):
            continue
        for axis, dim in enumerate(tensor.dims):
            if not isinstance(dim, str) or dim in sizes:
                continue
            want = dim_size(dim, sizes, unknown=-1)
            if want >= 0 and np.shape(value)[axis] != want:
                inf = math.inf
                note = (
                    f"dim {axis} is {np.shape(value)[axis]}, the graph's relation {dim!r} gives "
                    f"{want} at {spec.time_dim}={case.seq}"
                )
                checks.append(
                    Check(tensor.name, tensor.role, "shape", inf, inf, inf, False, note=note)
                )
    return checks


def _batch_invariance(
    runner: Any,
    spec: GraphSpec,
    feed: Mapping[str, np.ndarray],
    batched: Mapping[str, np.ndarray],
    lengths: np.ndarray | None,
    case: Case,
    limits: Mapping[str, Criterion | float],
    *,
    expected: Mapping[str, np.ndarray] | None = None,
    reference: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]] | None = None,
) -> list[Check]:
    """Each row alone (batch 1, T = its length) vs its row of the batched run (valid part).

    ``limits`` per output: a criterion, or the threshold its values check was held to. Where
    rows differ and ``reference`` (the reference model on one feed) and ``expected`` (its
    batched outputs) are given, the reference is run on the same rows: a model that itself
    depends on the batch (it flips the padded tensor, say) has its rows alone judged against the
    reference alone instead."""
    if case.batch == 1 and (lengths is None or int(lengths[0]) == case.seq):
        return []  # the single row is the batch
    outs = [t for t in spec.outputs if t.batch_axis is not None and t.name in batched]
    singles = []
    for row in range(case.batch):
        length = int(lengths[row]) if lengths is not None else case.seq
        single = row_feed(spec, feed, row, length)
        singles.append((row, length, single, runner.infer(single)))

    def steps(row: int, tensor: TensorSpec) -> int:
        # A row alone has as many steps as its output along time (a strided front end
        # shortens them): the batched row is cut to that.
        return np.asarray(singles[row][3][tensor.name]).shape[tensor.time_axis]

    def rows_of(source: Mapping[str, np.ndarray], tensor: TensorSpec) -> np.ndarray:
        parts = []
        for row, _, _, _ in singles:
            whole = np.take(np.asarray(source[tensor.name]), [row], axis=tensor.batch_axis)
            if tensor.time_axis is not None:
                whole = np.take(whole, np.arange(steps(row, tensor)), axis=tensor.time_axis)
            parts.append(whole.ravel())
        return np.concatenate(parts)

    def alone(outputs: Sequence[Mapping[str, np.ndarray]], tensor: TensorSpec) -> np.ndarray:
        parts = []
        for (row, _, _, _), out in zip(singles, outputs, strict=True):
            value = np.asarray(out[tensor.name])
            within = tensor.time_axis is None or (
                value.shape[tensor.time_axis] == steps(row, tensor)
                and steps(row, tensor) <= np.shape(batched[tensor.name])[tensor.time_axis]
            )
            if value.shape[tensor.batch_axis] != 1 or not within:
                raise RuntimeError(
                    f"output {tensor.name}: row {row} alone has shape {list(value.shape)}"
                )
            parts.append(value.ravel())
        return np.concatenate(parts)

    engine_alone = [out for _, _, _, out in singles]
    reference_alone: list[Mapping[str, np.ndarray]] | None = None
    results = []
    for tensor in outs:
        limit = limits[tensor.name]
        kwargs: dict[str, Any] = {"criterion": limit}
        if isinstance(limit, (int, float)):
            kwargs = {"threshold": float(limit)}
        elif isinstance(limit, NoiseCriterion):  # no noise floor for engine vs engine
            kwargs = {"threshold": limit.threshold(0.0, 1.0, spec.dtype)}
        common = {"dtype": spec.dtype, "role": tensor.role, **kwargs}
        got = alone(engine_alone, tensor)
        check = compare(
            tensor.name,
            "batch-invariance",
            got,
            rows_of(batched, tensor),
            note="each row alone vs in the batch",
            **common,
        )
        if not check.passed and reference is not None and expected is not None:
            if reference_alone is None:
                reference_alone = [reference(single) for _, _, single, _ in singles]
            want = alone(reference_alone, tensor)
            own = float(np.max(np.abs(want - rows_of(expected, tensor)), initial=0.0))
            if not compare(tensor.name, "", want, rows_of(expected, tensor), **common).passed:
                check = compare(
                    tensor.name,
                    "batch-invariance",
                    got,
                    want,
                    note=(
                        f"the model itself depends on the batch (its rows alone differ by "
                        f"{own:.3g}): each row alone vs the reference alone"
                    ),
                    **common,
                )
        results.append(check)
    return results


def _graph_problems(proto: Any, spec: GraphSpec) -> list[str]:
    """Inputs and outputs of the spec that the graph lacks or declares with a static batch/seq;
    recurrent nodes fed no ``sequence_lens`` in a graph that takes lengths."""
    problems = []
    infos = {i.name: i for i in [*proto.graph.input, *proto.graph.output]}
    for tensor in (*spec.inputs, *spec.outputs):
        info = infos.get(tensor.name)
        if info is None:
            problems.append(f"{tensor.name}: in the metadata but not a graph input or output")
            continue
        dims = info.type.tensor_type.shape.dim
        for axis in (tensor.batch_axis, tensor.time_axis):
            if axis is None:
                continue
            if axis < len(dims) and dims[axis].HasField("dim_value"):
                problems.append(
                    f"{tensor.name}: dim {axis} should be symbolic '{tensor.dims[axis]}', the "
                    f"graph declares {dims[axis].dim_value} (a size baked in at export)"
                )
    if spec.lengths_input is not None:
        for node in proto.graph.node:
            if node.op_type in ("LSTM", "GRU", "RNN") and not (
                len(node.input) > 4 and node.input[4]
            ):
                problems.append(
                    f"recurrent node {node.name!r} takes no sequence_lens although the graph "
                    "takes lengths: its backward direction would start in the padding of every "
                    "short row"
                )
    return problems


# -- inputs and outputs to files ---------------------------------------------------------------


def _saved_cases(
    saved: Sequence[tuple[Case, dict[str, np.ndarray], dict[str, Any], bool]],
) -> list[tuple[Case, dict[str, np.ndarray], dict[str, Any]]]:
    """The failing cases (all cases if none failed)."""
    chosen = [(c, f, r) for c, f, r, ok in saved if not ok]
    return chosen or [(c, f, r) for c, f, r, _ in saved]


def _loaded_cases(
    spec: GraphSpec, feeds: Sequence[Mapping[str, np.ndarray]]
) -> list[tuple[Case, dict[str, np.ndarray]]]:
    """Cases from saved inputs: each feed checked against the graph's inputs."""
    names = [t.name for t in spec.inputs]
    cases = []
    for index, feed in enumerate(feeds):
        if sorted(feed) != sorted(names):
            raise BiRNNExportError(
                f"load_inputs: case {index} has inputs {sorted(feed)}, the graph takes {names}"
            )
        shape = {t.name: feed[t.name].shape for t in spec.inputs}
        first = spec.inputs[0]
        batch = shape[first.name][first.batch_axis] if first.batch_axis is not None else 1
        seq = max(
            (shape[t.name][t.time_axis] for t in spec.inputs if t.time_axis is not None), default=1
        )
        mode = "loaded"
        cases.append((Case(int(batch), int(seq), mode, 1.0, index), dict(feed)))
    return cases


def trt_profile(
    cases: Sequence[Case],
    *,
    batch_invariance: bool = True,
    declared: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None,
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(min, opt, max) batch sizes and sequence lengths for the TensorRT engines' optimisation
    profile: the graph's ``declared`` ranges (so the engine verified is the one that would be
    served), widened to cover every run of the sweep. Without ``declared``: the sweep's bounds,
    with ``opt`` the largest shape.

    The batch-invariance runs feed each row alone (batch 1, T = its own length, down to 1), so
    with them the minimum batch and length are 1.

    Example:
        >>> trt_profile([Case(64, 300, "ragged", 1.0, 0), Case(4, 8, "ragged", 1.0, 1)])
        ((1, 64, 64), (1, 300, 300))
        >>> trt_profile([Case(3, 9, "ragged", 1.0, 0)], declared=((1, 8, 32), (1, 64, 256)))
        ((1, 8, 32), (1, 64, 256))
    """
    batches = [c.batch for c in cases] + ([1] if batch_invariance else [])
    seqs = [c.seq for c in cases] + ([1] if batch_invariance else [])
    if declared is not None:
        return covering_range(declared[0], batches), covering_range(declared[1], seqs)
    return (min(batches), max(batches), max(batches)), (min(seqs), max(seqs), max(seqs))


def _engine_runner(
    engine: str,
    onnx_path: str,
    converted: Any,
    spec: GraphSpec,
    profile: tuple[tuple[int, int, int], tuple[int, int, int]],
    *,
    isolate: bool = True,
) -> Any:
    from birnn_export import runners
    from birnn_export.errors import EngineUnavailableError

    reason = runners.unavailable_reason(engine)
    if reason:  # refuse before the sweep starts, not once per case
        raise EngineUnavailableError(reason)
    # Every engine but torch in a child process: a crash there is a failed case, not a dead
    # command.
    return runners.make_runner(
        engine,
        onnx_path,
        model=copy.deepcopy(converted) if engine == "torch" else None,
        input_names=[t.name for t in spec.inputs],
        output_names=[t.name for t in spec.outputs],
        profile_batch=profile[0],
        profile_seq=profile[1],
        isolate=isolate,
    )


# -- progress --------------------------------------------------------------------------------


class _Progress:
    """A rich progress bar that appears only once the sweep has run for more than a second."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.done = total, enabled, 0
        self.start = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None

    def advance(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is None and time.perf_counter() - self.start > 1.0:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("verify"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=self.total, completed=self.done)
        elif self._bar is not None:
            self._bar.update(self._task, advance=1, description=label)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# -- the entry point -------------------------------------------------------------------------


def verify(
    onnx_path: str | os.PathLike[str],
    model: Any = None,
    *,
    engines: Sequence[str] = ("ort-cpu",),
    batch_sizes: Sequence[int] | None = None,
    seq_lens: Sequence[int] | None = None,
    seed: int = 0,
    atol: ToleranceOverride = None,
    rtol: ToleranceOverride = None,
    fp64_reference: bool = False,
    reference: Any = None,
    progress: bool = False,
    batch_invariance: bool = True,
    large_scale: float | None = LARGE_SCALE,
    layers: bool = True,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    save_inputs: str | os.PathLike[str] | None = None,
    save_outputs: str | os.PathLike[str] | None = None,
    load_inputs: str | os.PathLike[str] | None = None,
    load_outputs: str | os.PathLike[str] | None = None,
    isolate: bool = True,
) -> VerifyReport:
    """Compare engines running ``onnx_path`` with the model across a sweep of shapes.

    Args:
        onnx_path: A graph written by :func:`birnn_export.export_onnx` (its metadata drives the
            inputs).
        model: The model that was exported: a :class:`~birnn_export.checkpoint.LoadedModel`
            (then the reference is its ``original``, before conversion, where there is one) or
            an ``nn.Module`` (called with the graph's inputs, positionally, in order). May be
            omitted with ``load_outputs``.
        engines: Engines to check, from :data:`birnn_export.runners.ENGINES`. ``"torch"`` runs
            the converted model eagerly (a check of the conversion itself).
        batch_sizes: Batch sizes of a product sweep (see :func:`plan_cases`; default: a
            covering set of (1, 3, 16)).
        seq_lens: Lengths of a product sweep; default {1, 2, example_seq, 4 x example_seq,
            seq_range[2]}.
        seed: Seed of the first case; case ``i`` uses ``seed + i``.
        atol: Judge by fixed tolerances instead of the model's noise floor: a number, or
            ``{output name: number}`` (key ``"*"`` for the rest). Defaults per dtype and engine:
            :func:`default_tolerance`.
        rtol: Relative tolerance, like ``atol`` (either one selects fixed tolerances).
        fp64_reference: Under fixed tolerances, run the reference in float64 (the noise
            criterion always does).
        reference: A module to use as the reference instead of the one derived from ``model``.
        progress: Show a progress bar on stderr if the sweep runs longer than a second.
        batch_invariance: Also run every row of each ragged case alone and compare.
        large_scale: Scale of the extra large-magnitude cases; ``None`` skips them.
        layers: Also compare every recurrent layer's own output (on ``ort-cpu``).
        memory_budget: Bytes the largest tensor of one case may take in float64: default-sweep
            cases over it are skipped (with a note), explicit sizes over it refused.
        save_inputs: Write the inputs of the failing cases (all cases if none failed) to this
            ``.json`` (Polygraphy's ``--load-inputs`` format) or ``.npz``.
        save_outputs: Write the same cases' reference outputs (and eager PyTorch's) to this
            ``.json`` as Polygraphy ``RunResults`` (``--load-outputs``); needs ``save_inputs``.
        load_inputs: Run these saved inputs instead of a sweep.
        load_outputs: Compare against these saved outputs instead of running a model (needs
            ``load_inputs``).
        isolate: Run every engine but ``torch`` in a child process, so that an engine crash
            (a segfault inside ONNX Runtime or TensorRT) fails its case instead of ending this
            process. ``False`` runs them here (a faster start; for tests that patch runners).

    Returns:
        A :class:`VerifyReport`; call :meth:`VerifyReport.raise_for_failure` to turn a mismatch
        into :class:`~birnn_export.errors.VerificationError`.

    Raises:
        BiRNNExportError: unusable input (no birnn-export metadata, bad sweep or tolerance
            options, a reference model that does not accept the graph's inputs, a case over
            the memory budget).
        EngineUnavailableError: a requested engine cannot run here (the message says why).

    Example:
        >>> report = verify("tagger.onnx", loaded, batch_sizes=(1, 4))  # doctest: +SKIP
        >>> report.raise_for_failure()  # doctest: +SKIP
    """
    from birnn_export.base_runner import forbid_tf32

    forbid_tf32()
    start = time.perf_counter()
    onnx_path = str(onnx_path)
    if not Path(onnx_path).is_file():
        raise BiRNNExportError(f"{onnx_path}: no such ONNX file")
    proto = load_onnx(onnx_path)
    spec = GraphSpec.from_onnx(proto)
    engines = tuple(dict.fromkeys(engines))
    if not engines:
        raise BiRNNExportError("engines: name at least one engine")
    check_overrides(spec, atol=atol, rtol=rtol)
    _check_files(save_inputs, save_outputs, load_inputs, load_outputs, model)
    notes: list[str] = []
    if load_inputs is not None:
        loaded_cases = _loaded_cases(spec, _interop.load_feeds(load_inputs))
        cases = [c for c, _ in loaded_cases]
        feeds = dict(zip(range(len(cases)), (f for _, f in loaded_cases), strict=True))
    else:
        cases = plan_cases(
            spec, batch_sizes=batch_sizes, seq_lens=seq_lens, seed=seed, large_scale=large_scale
        )
        explicit = batch_sizes is not None or seq_lens is not None
        cases, skipped = fit_budget(cases, proto, spec, memory_budget, explicit)
        notes += skipped
        feeds = {}
    problems = tuple(_graph_problems(proto, spec))

    golden = _interop.load_outputs(load_outputs) if load_outputs is not None else None
    fixed = atol is not None or rtol is not None
    converted = ref_module = None
    sha = None
    if golden is None:
        converted, ref_module, how, sha = resolve_models(model, reference)
        ref_module, layer_paths = reference_module(ref_module, spec)
        why_not64 = None if fixed and not fp64_reference else float64_fails(ref_module, spec)
        if why_not64 is not None:
            notes.append(
                f"the model cannot run in float64 ({why_not64}): judged by fixed tolerances "
                "against it in float32 instead"
            )
            fixed, fp64_reference = True, False
        ref_dtype = "float64" if not fixed or fp64_reference else "float32"
        eager_dtype = None if fixed else spec.dtype
    else:
        how, layer_paths = f"the saved outputs in {load_outputs}", {}
        ref_name = GOLDEN_REFERENCE if GOLDEN_REFERENCE in golden else next(iter(golden))
        ref_dtype = str(next(iter(golden[ref_name][0].values())).dtype) if golden[ref_name] else ""
        eager_dtype = spec.dtype if GOLDEN_EAGER in golden and not fixed else None
        fixed = fixed or eager_dtype is None
        _check_golden(golden, ref_name, len(cases), spec)
    if sha and spec.source_sha256 and sha != spec.source_sha256:
        notes.append(
            f"the graph was exported from a file with sha256 {spec.source_sha256[:12]}..., the "
            f"model given has {sha[:12]}...: they may not be the same weights"
        )
    criteria: dict[str, Criterion] = {t.name: NoiseCriterion() for t in spec.outputs}
    quantized = {t.name: QuantizedCriterion() for t in spec.outputs}
    per_engine = {
        engine: quantized
        if engine == "ort-int8" or spec.quantization == INT8
        else {t.name: resolve_tolerance(t, engine, atol, rtol) for t in spec.outputs}
        if fixed
        else criteria
        for engine in engines
    }
    criterion_text = (
        f"fixed tolerances against the reference in {ref_dtype}"
        if fixed
        else f"float64 reference; {NoiseCriterion().describe()} ({eager_dtype})"
    )
    if any(c is quantized for c in per_engine.values()):
        criterion_text += f"; {QuantizedCriterion().describe()}"

    hidden = None if golden is not None else root_bidirectional_hidden(converted, ref_module)
    profile = trt_profile(
        cases, batch_invariance=batch_invariance, declared=(spec.batch_range, spec.seq_range)
    )
    runners_ = {
        engine: _engine_runner(engine, onnx_path, converted, spec, profile, isolate=isolate)
        for engine in engines
    }
    lengths_name = spec.lengths_input.name if spec.lengths_input is not None else None
    references = None
    if golden is None:
        references = References(ref_module, spec, ref_dtype=ref_dtype, eager_dtype=eager_dtype)
    layer_state = _layer_setup(proto, spec, references, layer_paths, layers and golden is None)

    results: list[CaseResult] = []
    saved: list[tuple[Case, dict[str, np.ndarray], dict[str, Any], bool]] = []
    providers: dict[str, tuple[str, ...]] = {}
    bar = _Progress(len(cases) * (1 + len(engines)), progress)
    with contextlib.ExitStack() as stack:
        if references is not None:
            stack.enter_context(references)
        active = {e: stack.enter_context(r) for e, r in runners_.items()}
        providers = {e: tuple(r.providers()) for e, r in active.items()}
        try:
            for index, case in enumerate(cases):
                feed = feeds.get(index) if load_inputs is not None else case_feed(spec, case)
                lengths = feed[lengths_name].astype(np.int64) if lengths_name else None
                if references is not None:
                    ran = references.run(feed, case)
                else:
                    ran = {
                        "reference": golden[ref_name][index],
                        "eager": golden[GOLDEN_EAGER][index] if eager_dtype else None,
                    }
                case_layers = _case_layers(layer_state, references, ran, feed)
                bar.advance(f"B={case.batch} T={case.seq} reference")
                case_ok = True
                for engine, runner in active.items():
                    result = _run_case(
                        engine,
                        runner,
                        spec,
                        case,
                        feed,
                        ran["reference"],
                        ran.get("eager"),
                        lengths,
                        per_engine[engine],
                        batch_invariance=batch_invariance,
                        hidden=hidden,
                        layers=case_layers,
                        check_layers=engine == "ort-cpu" and spec.quantization is None,
                        reference=references.reference_only if references else None,
                        derived_lengths=_last_lengths(spec, case_layers),
                    )
                    results.append(result)
                    case_ok = case_ok and result.passed
                    bar.advance(f"B={case.batch} T={case.seq} {engine}")
                saved.append((case, feed, ran, case_ok))
        finally:
            bar.close()
            if layer_state.graph is not None:
                layer_state.graph.close()
    results += _sweep_checks(results, per_engine, seed)
    if spec.quantization is not None:
        pass  # int8 nodes are renamed: the layers were not compared, and need no note
    elif layer_state.reason is not None and layers and golden is None:
        notes.append(f"recurrent layers not compared one by one: {layer_state.reason}")
    elif references is not None and references.layer_reason is not None:
        notes.append(f"recurrent layers not compared one by one: {references.layer_reason}")

    saved_inputs = saved_outputs_path = None
    if save_inputs is not None:
        chosen = _saved_cases(saved)
        saved_inputs = _interop.save_feeds(
            save_inputs,
            [f for _, f, _ in chosen],
            cases=[{"case": cases.index(c), **dataclasses.asdict(c)} for c, _, _ in chosen],
        )
        if save_outputs is not None:
            runs = {
                GOLDEN_REFERENCE if ref_dtype == "float64" else f"reference-{ref_dtype}": [
                    r["reference"] for _, _, r in chosen
                ]
            }
            if eager_dtype is not None:
                runs[GOLDEN_EAGER] = [r["eager"] for _, _, r in chosen]
            saved_outputs_path = _interop.save_outputs(save_outputs, runs)
    return VerifyReport(
        onnx_path=onnx_path,
        reference=how,
        reference_dtype=ref_dtype,
        engines=engines,
        providers=providers,
        cases=tuple(results),
        problems=problems,
        notes=tuple(notes),
        environment=environment(onnx_path),
        elapsed_s=time.perf_counter() - start,
        saved_inputs=saved_inputs,
        criterion=criterion_text,
        eager_dtype=eager_dtype,
        saved_outputs=saved_outputs_path,
    )


def _sweep_checks(
    results: Sequence[CaseResult], per_engine: Mapping[str, Mapping[str, Criterion]], seed: int
) -> list[CaseResult]:
    """Per engine judged by a :class:`QuantizedCriterion`: each output's relative error and top-1
    agreement over all its cases (:func:`~birnn_export.compare.sweep_check`), as one result."""
    swept = []
    for engine, criteria in per_engine.items():
        checks = []
        for name, criterion in criteria.items():
            if not isinstance(criterion, QuantizedCriterion):
                continue
            values = [
                o
                for r in results
                if r.engine == engine
                for o in r.outputs
                if o.name == name and o.check == "values"
            ]
            check = sweep_check(values, criterion)
            if check is not None:
                checks.append(check)
        if checks:
            swept.append(
                CaseResult(engine, 0, 0, WHOLE_SWEEP, 1.0, seed, None, outputs=tuple(checks))
            )
    return swept


def _last_lengths(spec: GraphSpec, layers: _Layers) -> np.ndarray | None:
    """The lengths the graph's last recurrent layer saw in the reference (after any front end
    that shortens the time axis), where the layers were captured."""
    if layers.lengths is None or not spec.recurrent_layers:
        return None
    return layers.lengths.get(str(spec.recurrent_layers[-1].get("path", "")))


def _check_files(
    save_inputs: Any, save_outputs: Any, load_inputs: Any, load_outputs: Any, model: Any
) -> None:
    for option, path in (("save_inputs", save_inputs), ("save_outputs", save_outputs)):
        if path is not None:
            _interop.check_format(option, path)
            check_output_path(option, path)
    for option, path in (("load_inputs", load_inputs), ("load_outputs", load_outputs)):
        if path is not None and not Path(path).is_file():
            raise BiRNNExportError(f"{option}: no such file: {path}")
    if save_outputs is not None and save_inputs is None:
        raise BiRNNExportError(
            "save_outputs: also give save_inputs (the outputs belong to those inputs)"
        )
    if load_outputs is not None and load_inputs is None:
        raise BiRNNExportError(
            "load_outputs: also give load_inputs (the inputs the outputs were made from)"
        )
    if load_outputs is None and model is None:
        raise BiRNNExportError("model: give the model the graph was exported from, or load_outputs")


def _check_golden(
    golden: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
    ref_name: str,
    cases: int,
    spec: GraphSpec,
) -> None:
    names = sorted(t.name for t in spec.outputs)
    for runner, outputs in golden.items():
        if len(outputs) != cases:
            raise BiRNNExportError(
                f"load_outputs: runner {runner!r} has {len(outputs)} results for {cases} inputs"
            )
        for index, out in enumerate(outputs):
            if sorted(out) != names:
                raise BiRNNExportError(
                    f"load_outputs: runner {runner!r} case {index} has outputs {sorted(out)}, "
                    f"the graph returns {names}"
                )


@dataclass
class _LayerState:
    """What the layer checks need for the whole sweep: the graph's layers, the session that
    reads their outputs, and how graph paths map to the reference's modules."""

    infos: tuple[Any, ...] = ()
    graph: GraphLayers | None = None
    hooked: str = ""
    reason: str | None = None
    paths: dict[str, str] = field(default_factory=dict)


def _layer_setup(
    proto: Any,
    spec: GraphSpec,
    references: References | None,
    paths: Mapping[str, str],
    enabled: bool,
) -> _LayerState:
    if not enabled or references is None:
        return _LayerState(reason="off")
    try:
        infos = graph_layers(proto, spec)
        mapped = [paths.get(layer.path, layer.path) for layer in infos]
        references.attach_layers(mapped)
    except LayersUnavailable as exc:
        return _LayerState(reason=str(exc))
    kinds = {
        type(side.layers.modules[p]).__name__ for side in references.sides.values() for p in mapped
    }
    hooked = f"a hook on the reference's {'/'.join(sorted(kinds))} at " + ", ".join(
        repr(p) for p in dict.fromkeys(layer.path for layer in infos)
    )
    return _LayerState(
        tuple(infos),
        GraphLayers(proto, infos, spec.dtype),
        hooked,
        paths={layer.path: mapped[i] for i, layer in enumerate(infos)},
    )


def _case_layers(
    state: _LayerState,
    references: References | None,
    ran: Mapping[str, Any],
    feed: Mapping[str, np.ndarray],
) -> _Layers:
    if state.reason is not None or state.graph is None:
        return _Layers(reason=state.reason)
    if references is not None and references.layer_reason is not None:
        return _Layers(reason=references.layer_reason)
    inverse = {v: k for k, v in state.paths.items()}

    def graph_names(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, value in values.items():
            path, _, layer = name.rpartition("/")
            out[f"{inverse.get(path, path)}/{layer}"] = value
        return out

    lengths = {inverse.get(p, p): v for p, v in ran["layer_lengths"].items()}
    try:
        graph = state.graph.run(feed, lengths)
    except LayersUnavailable as exc:
        state.reason = str(exc)
        return _Layers(reason=state.reason)
    return _Layers(
        infos=state.infos,
        graph=graph,
        reference=graph_names(ran["reference_layers"]),
        eager=graph_names(ran["eager_layers"]) if "eager_layers" in ran else None,
        lengths=lengths,
        hooked=state.hooked,
    )
