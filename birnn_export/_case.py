"""One case of a verification sweep: an engine run on one input, judged output by output.

:func:`run_case` compares the engine's outputs with the reference's (valid steps, padding,
derived shapes), every recurrent layer inside the graph with the reference's own layer
and a CRF's best-path score inside the graph with the reference's decode
(:func:`layer_setup` and :func:`case_layers` capture both sides), each row alone against the
batch (:func:`batch_invariance_checks`), and on a mismatch says which layer and direction departed
(:mod:`birnn_export._diagnose`). :func:`sweep_checks` judges int8 graphs over the whole sweep.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from birnn_export._diagnose import diagnose_directions, diagnose_layers
from birnn_export._layers import (
    GraphLayers,
    LayersUnavailable,
    Rerun,
    graph_layers,
    in_reference_order,
    input_key,
    module_path,
    score_key,
    tie_order,
)
from birnn_export._references import References
from birnn_export._report import WHOLE_SWEEP, CaseResult
from birnn_export._sweep import Case, row_feed, untraced_cases
from birnn_export.compare import (
    BATCH_DROPPED,
    DROPPED_OR_PACKED,
    LAYER_OTHER_SHAPE,
    MIN_DECODED_SYMBOLS,
    PACKED_ROWS,
    PROBED,
    Check,
    Criterion,
    NoiseCriterion,
    QuantizedCriterion,
    compare,
    compare_outputs,
    compare_tags,
    machine_eps,
    sweep_check,
)
from birnn_export.errors import BiRNNExportError, one_line
from birnn_export.spec import (
    TAG_PADDING,
    GraphSpec,
    TensorSpec,
    Tolerance,
    default_tolerance,
    dim_size,
    run_time_dim,
)


def _layer_checks(layers: CaseLayers, criterion: Criterion, dtype: str) -> list[Check]:
    """The probe's checks: every recurrent layer's output in the graph against the
    reference's, at valid steps, then each CRF's best-path score (:func:`_score_checks`)."""
    graph, eager, lengths = layers.graph or {}, layers.eager, layers.lengths or {}
    checks: list[Check] = []
    for name, want in (layers.reference or {}).items():
        steps = want.shape[1]
        got = graph[name][:, :steps]
        if got.shape != want.shape:  # the graph ran the layer on other inputs than the model
            note = (
                f"{LAYER_OTHER_SHAPE}{list(got.shape)}, the "
                f"model's {list(want.shape)}: the graph ran it over other inputs"
            )
            checks.append(_other_shape(name, "layer", note))
            continue
        rows = lengths[name.rsplit("/", 1)[0]]
        mask = (np.arange(steps)[None, :] < rows[:, None])[..., None]
        noise = None if eager is None else eager[name]
        check = compare(
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
        if not check.passed and isinstance(criterion, NoiseCriterion) and layers.own_input:
            own = layers.own_input(name, steps)
            share = None if own is None else _input_drift(own, criterion, mask, dtype)
            if share is not None and share > 1.0:  # its input is off already: not the layer
                check = dataclasses.replace(check, input_departs=share)
            else:
                check = _on_its_own_input(check, own, share, criterion, mask, dtype) or check
        checks.append(check)
    return checks + _score_checks(layers.scores, criterion, dtype)


#: Why no layer output explains a failing output where the layer probe is off (users45: the
#: diagnosis of a graph birnn-export did not write ended in ": off").
LAYERS_OFF = (
    "the layers are not compared (--no-layers, or a graph birnn-export did not write, judged "
    "by its outputs: see the notes)"
)

#: A failing layer is judged on its input inside the graph only where the drift into that input
#: grew through it to at most this many times its limit on the model's input (users40's
#: DeepSpeech2: 1.08); a defect before the layer that its input's check misses moves it further
#: (review25: an embedding table rounded to float16, 8 to 27 times).
REJUDGED_AT_MOST = 4.0


def _on_its_own_input(
    check: Check,
    own: OwnInput | None,
    share: float | None,
    criterion: NoiseCriterion,
    mask: np.ndarray,
    dtype: str,
) -> Check | None:
    """A failed layer check judged again on the layer's own input inside the graph, where that
    input is within the criterion of the model's in every feature (drift, not a defect before
    the layer) and the layer missed its limit by at most :data:`REJUDGED_AT_MOST` times: the
    model's layer in float64 and eager's in the graph's precision run on the input the graph
    fed the layer. Where the graph's layer matches them there, the failure was that drift
    grown through the layer (a DeepSpeech2's convolutions and batch norms put 2.8x eager's
    error into its third GRU's input, which came out at 9.6x: users40), and the check says so
    (:attr:`Check.drifted`); ``None`` where it does not, or cannot be told. ``share``: how far
    that input departs from the model's (:func:`_input_drift`), at most 1 here."""
    threshold = check.threshold
    if own is None or threshold is None or not check.max_abs <= REJUDGED_AT_MOST * threshold:
        return None
    if share is None:
        return None
    again = compare(
        check.name,
        "layer",
        own.graph,
        own.reference,
        criterion=criterion,
        eager=own.eager,
        mask=mask,
        dtype=dtype,
        role="layer",
        note=(
            "the layer's own output inside the graph, on its input there: that input departs "
            f"from the model's within the limit in each feature (at most {share:.2g} of it), "
            "drift from the ops before the layer, which grew through it to "
            f"{check.max_abs:.3g} on the model's input (limit {threshold:.3g})"
        ),
    )
    if not again.passed:
        return None
    return dataclasses.replace(again, drifted=check.max_abs / threshold)


def _input_drift(
    own: OwnInput, criterion: NoiseCriterion, mask: np.ndarray, dtype: str
) -> float | None:
    """The largest share of its limit by which the layer's input inside the graph departs from
    the model's, feature by feature: each held to eager's error in it, or eager's relative
    error over the whole input at its own magnitude where that is more, and to ulp of its own
    magnitude. One large feature beside small ones set the limit for all (review25: an
    embedding table rounded to float16 passed beside ``ids * 37.7``); over 1 beyond it;
    ``None`` where it cannot be told (other shapes, non-finite values)."""
    if own.x.shape != own.x_reference.shape or own.x_eager.shape != own.x.shape:
        return None
    valid = np.broadcast_to(mask, own.x.shape)

    def worst(values: np.ndarray) -> np.ndarray:
        return np.where(valid, values, 0.0).max(axis=(0, 1))

    error = worst(np.abs(own.x - own.x_reference))
    noise = worst(np.abs(own.x_eager - own.x_reference))
    scale = worst(np.abs(own.x_reference))
    if not (np.isfinite(error).all() and np.isfinite(noise).all()) or not error.size:
        return None
    relative = noise.max() / scale.max() if scale.max() > 0 else 0.0
    noise = np.maximum(noise, relative * scale)
    limits = np.array(
        [criterion.threshold(float(n), float(s), dtype) for n, s in zip(noise, scale, strict=True)]
    )
    shares = error / limits
    return float(shares.max(initial=0.0))


def _score_checks(scores: Mapping[str, CRFScores], criterion: Criterion, dtype: str) -> list[Check]:
    """Each CRF's best-path score in the graph against the reference's decoded path's. The
    floor's ulp is the graph's ``dtype``'s: a float16 graph's Viterbi sums in float32, but
    each emission it sums carries float16's rounding, and eager's own error on a few short rows
    is luck (3.8e-4 at one seed, 6.6e-6 at another: users39). A fixed ``atol`` is the outputs'
    per step the row sums (a score of 256 steps is a sum of 256 emissions, each held to
    ``atol``)."""
    checks = []
    for path, score in scores.items():
        if score.graph.shape != score.reference.shape:
            note = (
                f"the best path's score inside the graph has shape {list(score.graph.shape)}, "
                f"the model's {list(score.reference.shape)}"
            )
            checks.append(_other_shape(path, "score", note))
            continue
        judged = criterion
        if isinstance(criterion, Tolerance):
            steps = max(1, int(score.lengths.max(initial=0)))
            judged = dataclasses.replace(criterion, atol=criterion.atol * steps)
        checks.append(
            compare(
                path,
                "score",
                score.graph,
                score.reference,
                criterion=judged,
                eager=score.eager,
                mask=score.lengths > 0,
                dtype=dtype,
                role="score",
                note="the best path's score inside the graph vs the model's decoded path's",
            )
        )
    return checks


def _other_shape(name: str, kind: str, note: str) -> Check:
    """A failed probe check of a tensor the graph computed in another shape than the model."""
    return Check(name, kind, kind, math.inf, math.inf, math.inf, False, note=note)


@dataclass(frozen=True)
class CRFScores:
    """One CRF's best-path score per row ``[batch]``: inside the graph, of the reference's
    decode (float64) and of eager PyTorch's (the noise floor), and each row's length."""

    graph: np.ndarray
    reference: np.ndarray
    eager: np.ndarray | None
    lengths: np.ndarray


# -- one case --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OwnInput:
    """One layer on the input the graph fed it, in float64: the graph's output, the model's
    layer in float64 on that input and eager's in the graph's precision (``[B, T, D * H]``);
    and that input (``x``) with the model's and eager's own inputs to the layer, all in the
    model's row order."""

    graph: np.ndarray
    reference: np.ndarray
    eager: np.ndarray
    x: np.ndarray
    x_reference: np.ndarray
    x_eager: np.ndarray


@dataclass(frozen=True)
class CaseLayers:
    """Per-case layer outputs for the layer checks and the diagnosis (or why there are none)."""

    infos: tuple[Any, ...] = ()
    graph: Mapping[str, np.ndarray] | None = None
    reference: Mapping[str, np.ndarray] | None = None
    eager: Mapping[str, np.ndarray] | None = None
    lengths: Mapping[str, np.ndarray] | None = None
    hooked: str = ""
    reason: str | None = None
    #: Each CRF's best-path scores by its module path.
    scores: Mapping[str, CRFScores] = field(default_factory=dict)
    #: ``own_input(layer name, steps)``: the layer on its input inside the graph (its first
    #: ``steps``), where the graph tells that input.
    own_input: Callable[[str, int], OwnInput | None] | None = None

    @property
    def ready(self) -> bool:
        return self.reason is None and self.graph is not None and self.reference is not None


def run_case(
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
    layers: CaseLayers,
    check_layers: bool,
    layer_criterion: Tolerance | None = None,
    reference: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]] | None = None,
    derived_lengths: np.ndarray | None = None,
    tolerance_given: bool = True,
    zeroes_padding: bool = False,
) -> CaseResult:
    """One engine on one case: its outputs against the reference's, then its shapes, layers and
    batch invariance. ``zeroes_padding``: the graph zeroes its float inputs past each row's
    length (an int8 graph: :func:`~birnn_export.quantize.zeroes_padding`)."""
    common = dict(
        engine=engine,
        batch=case.batch,
        seq=case.seq,
        lengths_mode=case.lengths_mode,
        scale=case.scale,
        seed=case.seed,
        lengths=tuple(int(v) for v in lengths) if lengths is not None else None,
        others=_others(spec, case),
        noise=case.noise,
    )
    try:
        actual = runner.infer(feed)
    except Exception as exc:  # an engine rejecting valid input is a verification failure
        return CaseResult(**common, outputs=(), error=one_line(exc))
    outputs = compare_outputs(
        spec,
        actual,
        expected,
        lengths,
        criteria,
        eager=eager,
        derived_lengths=derived_lengths,
        zeroed_noise=zeroes_padding and case.noise,
    )
    rows = lengths if lengths is not None else derived_lengths
    outputs += _shape_checks(spec, case, actual, rows)
    layer_checks: list[Check] = []
    if check_layers and layers.ready:
        criterion = next(iter(criteria.values()))
        if isinstance(criterion, Tolerance):
            criterion = layer_criterion or default_tolerance(spec.dtype, "ort-cpu")
        layer_checks = _layer_checks(layers, criterion, spec.dtype)
        outputs += layer_checks
    error = None
    if batch_invariance and case.rows_alone:
        limits = {
            o.name: o.threshold if o.threshold is not None else criteria[o.name]
            for o in outputs
            if o.check == "values"
        }
        try:
            outputs += batch_invariance_checks(
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
            error = f"{SINGLE_ROWS}{one_line(exc)}"
    diagnosis = None
    failed = [o for o in outputs if not o.passed]
    # a model that squeezes its batch away or returns packed rows: its note tells, the graph's
    # ops are not to blame
    told = (BATCH_DROPPED, PACKED_ROWS, DROPPED_OR_PACKED)
    if failed and not all(o.note.endswith(told) for o in failed):
        diagnosis = _diagnose(
            engine,
            spec,
            case,
            actual,
            expected,
            lengths,
            outputs,
            hidden,
            layers,
            layer_checks,
            tolerance_given=tolerance_given,
        )
    return CaseResult(**common, outputs=tuple(outputs), error=error, diagnosis=diagnosis)


#: How a case's error begins where running its rows alone failed.
SINGLE_ROWS = "running single rows: "

#: How the diagnosis of an error as small as rounding begins (:func:`_rounding_only`).
ROUNDING_DIAGNOSIS = "every failing check's error is at most"


def _rounding_only(
    dtype: str,
    failing: Sequence[Check],
    expected: Mapping[str, np.ndarray],
    layers: CaseLayers,
    tolerance_given: bool,
) -> str | None:
    """Under fixed tolerances, the diagnosis where every failing check's error is as small as
    rounding in the graph's dtype (at most 1000 ulp, and 1%, of its tensor's largest value; a
    wrong step or row moves values by a share near 1): the tolerance may ask for more than that
    dtype's arithmetic gives. Fixed tolerances measure no eager error to tell rounding from a
    small defect (a slightly wrong weight), so the diagnosis sends the user to the criterion
    that does where the tolerances were the user's choice (``tolerance_given``; where the model
    can run in float64, which is not probed for this), or to looser tolerances; where the
    user gave none (the model cannot run in float64, or saved outputs hold no eager run), to
    looser ones, rather than blame a layer for rounding."""
    if any(o.atol is None for o in failing):
        return None
    share = min(1000 * machine_eps(dtype), 0.01)
    shares = []
    for check in failing:
        source = layers.reference if check.check == "layer" else expected
        values = None if source is None else source.get(check.name)
        if check.check == "score" and check.name in layers.scores:
            values = layers.scores[check.name].reference
        scale = float(np.max(np.abs(values))) if values is not None and np.size(values) else 0.0
        if not scale or not check.max_abs <= share * scale:  # NaN too
            return None
        shares.append(check.max_abs / scale)
    atol, rtol = failing[0].atol, failing[0].rtol
    looser = f"--atol {_looser_atol(failing)}"  # over the whole sweep: advise_over_the_sweep
    instead = (
        f"leave out --atol/--rtol to judge the graph against eager {dtype}'s own error, which "
        "tells rounding from a defect (and says where one is), where the model runs in "
        f"float64; else judge it by looser ones ({looser})"
        if tolerance_given
        else f"no eager {dtype} error could be measured here to tell rounding from a defect; "
        f"if it is rounding, judge the graph by looser ones ({looser})"
    )
    return (
        f"{ROUNDING_DIAGNOSIS} {max(shares):.2g} of its tensor's largest "
        f"value, as small as {dtype} rounding: the fixed tolerance (atol {atol:g}, rtol "
        f"{rtol:g}) may ask for more than {dtype} arithmetic gives; {instead}"
    )


def _looser_atol(failing: Sequence[Check]) -> str:
    """Ten times the largest error of the ``failing`` checks (or their tolerance), up to one
    digit: not ten times the tolerance given, which took seven rounds to pass 6e-8 from 1e-15
    (users24)."""
    worst = max(max(o.atol or 0.0, o.max_abs) for o in failing)
    return f"{_one_digit_up(10 * worst):g}"


#: The looser tolerance a rounding diagnosis advises (:func:`_rounding_only`).
_LOOSER = re.compile(r"\(--atol [0-9.e+-]+\)")


def advise_over_the_sweep(results: Sequence[CaseResult]) -> list[CaseResult]:
    """``results`` with the looser tolerance each rounding diagnosis advises taken from the
    largest error of any case's failing checks, not of its own case: a case at x10 magnitude
    measures ten times a small one's, and the advice failed when followed (review17)."""
    failing = [
        o
        for r in results
        for o in r.outputs
        if not o.passed and o.atol is not None and o.check in ("values", *PROBED)
    ]
    if not failing:
        return list(results)
    advice = f"(--atol {_looser_atol(failing)})"
    return [
        dataclasses.replace(r, diagnosis=_LOOSER.sub(advice, r.diagnosis)) if r.diagnosis else r
        for r in results
    ]


def _padded_tags(tags: Any, want: tuple[int, ...]) -> bool:
    """Whether a graph's ``[batch, T]`` tags are the model's ``want`` shape (its decode's
    lists, padded to the longest row) with more steps of padding only."""
    tags = np.asarray(tags)
    more = tags.ndim == len(want) == 2 and tags.shape[0] == want[0] and tags.shape[1] > want[1]
    return bool(more and (tags[:, want[1] :] == TAG_PADDING).all())


def _one_digit_up(value: float) -> float:
    """``value`` rounded up to one significant digit (1.19e-7 -> 2e-7)."""
    exponent = math.floor(math.log10(value))
    return math.ceil(round(value / 10**exponent, 9)) * 10**exponent


def _diagnose(
    engine: str,
    spec: GraphSpec,
    case: Case,
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    lengths: np.ndarray | None,
    outputs: Sequence[Check],
    hidden: int | None,
    layers: CaseLayers,
    layer_checks: Sequence[Check],
    *,
    tolerance_given: bool,
) -> str | None:
    failing = [o for o in outputs if not o.passed and o.check in ("values", *PROBED)]
    if not failing:
        return None
    if all(o.rel_l2_limit is not None and o.atol is None for o in failing):  # an int8 graph
        return (
            "the int8 graph departs from the model beyond the task criterion; its quantized "
            "kernels change results by design, so no direction split applies: compare the float "
            "graph (ort-cpu) to tell an export defect from quantization"
        )
    for tensor in spec.outputs:  # another length than the model's: another computation
        got, want = np.shape(actual.get(tensor.name)), np.shape(expected[tensor.name])
        at = tensor.time_axis
        if tensor.role == "tags" and not np.issubdtype(
            np.asarray(expected[tensor.name]).dtype, np.integer
        ):
            return (
                f"output {tensor.name!r} holds decoded tags and the model's output there does "
                "not: verify the graph against the model it was exported from"
            )
        if tensor.role == "tags" and _padded_tags(actual.get(tensor.name), want):
            continue  # a decode's lists, padded to the longest row; the graph's to T (users25)
        if at is not None and len(got) == len(want) > at and got[at] != want[at]:
            return (
                f"output {tensor.name!r} has {got[at]} steps where the model's has {want[at]} "
                f"(T = {case.seq}): the graph computes this length another way than the "
                "model, as a branch on the length the export traced at the example's does (odd "
                "lengths padded to even, short inputs padded to a chunk): keep that branch "
                "out of forward (pad with tensor ops), or serve only lengths the example's "
                "branch holds for (--range)"
            )
        differ = [i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w]
        fixed = [  # the graph gives the size it declares (not a batch or time axis the
            # model's code froze): no size of the inputs moves it, 30 classes against 29
            i < len(tensor.dims) and tensor.dims[i] == got[i] and isinstance(got[i], int)
            and i not in (at, tensor.batch_axis)
            for i in differ
        ]  # fmt: skip
        if len(got) == len(want) and differ and all(fixed):  # users64 F4
            return (
                f"output {tensor.name!r} has shape {list(got)} where the model's has "
                f"{list(want)}, in a dim the graph fixes: the model given computes another "
                "output than the one exported; verify the graph against the model it was "
                "exported from"
            )
        ran_elsewhere = any(c.other_shape for c in layer_checks)
        if len(got) == len(want) and got != want and not ran_elsewhere:  # the layers say where
            return (
                f"output {tensor.name!r} has shape {list(got)} where the model's has "
                f"{list(want)} (T = {case.seq}): the graph computes its size another way than "
                "the model: a branch on a size the export traced at the example's (a trim "
                "under `if delta:`), or arithmetic on sizes made Python numbers (math.ceil, "
                "int(), max()) that the trace froze; compute sizes with tensor ops, or serve "
                "only lengths the example's branch holds for (--range)"
            )
    rounding = _rounding_only(spec.dtype, failing, expected, layers, tolerance_given)
    if rounding is not None:
        return rounding
    rows = lengths if lengths is not None else np.full(case.batch, case.seq)
    if hidden is None and layers.ready:
        if not layer_checks:  # another engine: the layers as ONNX Runtime CPU computes them
            criterion = NoiseCriterion() if layers.eager is not None else Tolerance(1e-5, 1e-4)
            layer_checks = _layer_checks(layers, criterion, spec.dtype)
        return diagnose_layers(
            layer_checks,
            layers.graph,
            layers.reference,
            layers.lengths,
            layers.infos,
            engine=engine,
            hooked=layers.hooked,
            takes_lengths=spec.length_source is not None,
            padding_reaches=any(o.check == "batch-invariance" and not o.passed for o in outputs),
            timeless=_timeless_failing(spec, failing),
        )
    if hidden is None:  # neither split into directions nor located at a layer: say why
        names = ", ".join(dict.fromkeys(o.name for o in failing))
        why = (
            f"the layer probe cannot run: {layers.reason}"
            if layers.reason
            else "the layers' outputs were not recorded"
        )
        return f"{names}: not located at a recurrent layer: " + (
            LAYERS_OFF if layers.reason == "off" else why
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
            )
        )
    return "\n".join(texts) or None


def _timeless_failing(spec: GraphSpec, failing: Sequence[Check]) -> tuple[str, ...]:
    """The failing outputs without a time axis (final states, pooled features), where every
    output over time passes: what the layers' outputs are turned into went wrong."""
    names = {o.name for o in failing if o.check == "values"}
    timed = {t.name for t in spec.outputs if t.time_axis is not None}
    if not names or names & timed or not timed:
        return ()
    return tuple(sorted(names))


def _others(spec: GraphSpec, case: Case) -> str:
    """The case's other named dims, where given or not at their opt (``chars=1``), for its
    label."""
    sizes, given = case.sizes(spec), dict(case.dims)
    shown = [name for name in spec.dim_ranges if case.others != 1 or name in given]
    return " ".join(f"{name}={sizes[name]}" for name in shown)


def _shape_checks(
    spec: GraphSpec, case: Case, actual: Mapping[str, np.ndarray], rows: np.ndarray | None
) -> list[Check]:
    """Output dims derived from the input dims (``(width//4)``) against the relation recorded in
    the spec, and a dim named ``longest(time)`` against the case's longest row (``rows``, its
    lengths), at this case's sizes: only the ones that disagree."""
    sizes = case.sizes(spec)
    longest = f"longest({spec.time_dim})"
    checks = []
    for tensor in spec.outputs:
        value = actual.get(tensor.name)
        if value is None or np.ndim(value) != len(tensor.dims):
            continue
        for axis, dim in enumerate(tensor.dims):
            if not isinstance(dim, str) or dim in sizes:
                continue
            if dim == longest:
                want = int(np.clip(rows, 1, case.seq).max()) if rows is not None else -1
                where = "the case's longest row"
            else:
                want = dim_size(dim, sizes, unknown=-1)
                where = f"{spec.time_dim}={case.seq}"
            if want >= 0 and np.shape(value)[axis] != want:
                inf = math.inf
                size = np.shape(value)[axis]
                note = f"dim {axis} is {size}; the graph names it {dim!r}: {want} at {where}"
                checks.append(
                    Check(tensor.name, tensor.role, "shape", inf, inf, inf, False, note=note)
                )
    return checks


def _rows_padded(values: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Rows of ``sizes`` elements laid end to end in ``values``, as ``[rows, longest]`` padded
    with :data:`TAG_PADDING`."""
    out = np.full((len(sizes), max(sizes, default=0)), TAG_PADDING, dtype=values.dtype)
    for i, part in enumerate(np.split(values, np.cumsum(sizes)[:-1])):
        out[i, : len(part)] = part
    return out


#: How a batch-invariance check's note begins where the model's own rows alone differ from
#: the same rows in the batch (:func:`batch_invariance_checks`).
DEPENDS_ON_THE_BATCH = "the model itself depends on the batch"
#: Its beginning where the rows alone differ, but each row alone with the batch's padding after
#: it is as in the batch: the model reads the padding, not the other rows.
DEPENDS_ON_THE_PADDING = "the model itself depends on the padding after each row"


def batch_invariance_checks(
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

    def extent(row: int, tensor: TensorSpec) -> tuple[int, ...]:
        # The batched row's part to compare with the row alone: one row; along time, as many
        # steps as the row alone has (its length; a strided front end shortens it further);
        # along a dim cut to the longest row (pad_packed_sequence: a second sequence's), the
        # row alone's; so along every axis of the time dim (attention weights [batch, seq,
        # seq]); along any other axis, all of it.
        alone, full = np.shape(singles[row][3][tensor.name]), np.shape(batched[tensor.name])
        if len(alone) != len(full):
            return tuple(alone)  # refused by alone()
        time = tensor.dims[tensor.time_axis] if tensor.time_axis is not None else None
        sizes = []
        for axis, size in enumerate(full):
            dim = tensor.dims[axis] if axis < len(tensor.dims) else None
            own = axis == tensor.time_axis or dim == time or run_time_dim(dim)
            sizes.append(1 if axis == tensor.batch_axis else alone[axis] if own else size)
        return tuple(sizes)

    def rows_of(source: Mapping[str, np.ndarray], tensor: TensorSpec) -> np.ndarray:
        parts = []
        for row, _, _, _ in singles:
            whole = np.take(np.asarray(source[tensor.name]), [row], axis=tensor.batch_axis)
            parts.append(whole[tuple(slice(0, n) for n in extent(row, tensor))].ravel())
        return np.concatenate(parts)

    def alone(outputs: Sequence[Mapping[str, np.ndarray]], tensor: TensorSpec) -> np.ndarray:
        parts = []
        full = np.shape(batched[tensor.name])
        for (row, _, _, _), out in zip(singles, outputs, strict=True):
            value = np.asarray(out[tensor.name])
            size = extent(row, tensor)
            within = value.shape == size and len(size) == len(full)
            if value.shape[tensor.batch_axis] != 1 or not within or np.any(np.greater(size, full)):
                raise RuntimeError(
                    f"output {tensor.name}: row {row} alone has shape {list(value.shape)}"
                )
            parts.append(value.ravel())
        return np.concatenate(parts)

    def row_parts(outputs: Sequence[Mapping[str, np.ndarray]], tensor: TensorSpec) -> np.ndarray:
        # each row's part, from outputs of one row each (the batch's padding kept)
        return np.concatenate(
            [
                np.asarray(out[tensor.name])[
                    tuple(slice(0, n) for n in extent(row, tensor))
                ].ravel()
                for (row, *_), out in zip(singles, outputs, strict=True)
            ]
        )

    engine_alone = [out for _, _, _, out in singles]
    reference_alone: list[Mapping[str, np.ndarray]] | None = None
    reference_padded: list[Mapping[str, np.ndarray]] | None = None
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
        if tensor.role == "tags" and isinstance(limit, QuantizedCriterion):
            # an int8 graph's tags: a row alone is quantized by other scales than in the
            # batch; judged as its values check is (padding exact, most tags agree)
            sizes = [math.prod(extent(row, tensor)) for row, _, _, _ in singles]
            flat = dataclasses.replace(tensor, batch_at=0, time_at=1)
            pair = [_rows_padded(v, sizes) for v in (got, rows_of(batched, tensor))]
            tags = compare_tags(flat, *pair, criterion=limit)
            note = f"each row alone vs in the batch: {tags.note}"
            results.append(dataclasses.replace(tags, check="batch-invariance", note=note))
            continue
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
            want, in_batch = alone(reference_alone, tensor), rows_of(expected, tensor)
            own = float(np.max(np.abs(want - in_batch), initial=0.0))
            if not compare(tensor.name, "", want, in_batch, **common).passed:
                padding = False
                if lengths is not None:  # each row alone with the batch's padding after it
                    if reference_padded is None:  # once for all outputs (review22)
                        reference_padded = [
                            reference(row_feed(spec, feed, row, None)) for row, *_ in singles
                        ]
                    kept = row_parts(reference_padded, tensor)
                    padding = compare(tensor.name, "", kept, in_batch, **common).passed
                cause = DEPENDS_ON_THE_PADDING if padding else DEPENDS_ON_THE_BATCH
                check = compare(
                    tensor.name,
                    "batch-invariance",
                    got,
                    want,
                    note=(
                        f"{cause} (its rows alone differ by {own:.3g}): each row alone vs the "
                        "reference alone"
                    ),
                    **common,
                )
        results.append(check)
    return results


def sweep_checks(
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
            why = _task_failed([c for c in checks if not c.passed], criteria)
            swept.append(
                CaseResult(
                    engine, 0, 0, WHOLE_SWEEP, 1.0, seed, None, outputs=tuple(checks), diagnosis=why
                )
            )
    return swept


#: How the note begins where int8 kept top-1 and changed an undeclared output's decodes.
DECODES_CHANGED = "int8 keeps top-1 but changes the greedy CTC decodes "


def undeclared_ctc_note(
    results: Sequence[CaseResult], per_engine: Mapping[str, Mapping[str, Criterion]]
) -> list[str]:
    """A note where an int8 output not declared CTC passed by top-1 while its greedy CTC
    decodes (blank 0) changed more than a declared one's may: what is read changed."""
    notes = []
    for result in results:
        if result.lengths_mode != WHOLE_SWEEP:
            continue
        for c in result.outputs:
            criterion = per_engine[result.engine].get(c.name)
            if (
                c.passed
                and c.blank is None
                and c.decoded_rows
                and isinstance(criterion, QuantizedCriterion)
                and not criterion.decodes_kept(c.decoded_edits, c.decoded_symbols)
            ):
                notes.append(
                    f"{DECODES_CHANGED}({result.engine}, output {c.name!r}, blank 0): "
                    f"{c.decodes_agreement(named=False)}: if it feeds a CTC decoder, export "
                    f"with {_ctc_flag([c])} to judge it by its decodes, which refuses this "
                    "graph where its blank is class 0"
                )
    return notes


#: Where to judge an int8 CTC output on batches of one's own: verify's --load-inputs judges
#: them in place of the sweep's random features (an export's judges them besides the sweep).
_OWN_BATCHES = (
    "birnn-export verify GRAPH --model MODEL --load-inputs BATCHES.npz judges batches of your own "
    "in place of the sweep's random features (an export with --load-inputs judges both: write "
    "the graph with --no-verify first)"
)


def _task_failed(failed: Sequence[Check], criteria: Mapping[str, Criterion]) -> str | None:
    """Why an int8 graph failed, where only the task failed (each output's relative L2 error is
    within its limit): top-1 of outputs that may hold no class scores, or the greedy decodes of
    outputs declared CTC (or their frames' top-1, where the decodes hold few symbols)."""
    if not failed or any(c.rel_l2 is None or c.rel_l2 >= (c.rel_l2_limit or 0) for c in failed):
        return None
    if any(c.blank is not None for c in failed):
        if not all(c.blank is not None for c in failed):
            return None
        read = [c for c in failed if not _decodes_kept(c, criteria)]
        thin = [c for c in failed if _decodes_kept(c, criteria)]  # few symbols: top-1 failed
        parts = []
        if read:
            parts.append(
                f"the greedy CTC decodes of {_names(read)} fail: the int8 graph changes what is "
                "read: keep float32"
            )
        if thin:
            parts.append(
                f"top-1 of {_names(thin)} fails where its decodes hold under "
                f"{MIN_DECODED_SYMBOLS} symbols, too few to judge it by alone: judge it on "
                f"batches of your own that hold more ({_OWN_BATCHES}), or keep float32"
            )
        return "only the task fails (relative L2 error within the limit): " + "; ".join(parts)
    names = _names(failed)
    fails = f"only top-1 agreement fails ({names}; its relative L2 error is within the limit)"
    what = (
        "where it holds class scores, the int8 graph loses the task there: keep float32; where "
        "it holds none (an encoder's projection, a regression), its argmax means nothing: "
        "export with --scores naming the outputs that do, or --scores none (Python: "
        "scores=[...])"
    )
    readable = [c for c in failed if c.decoded_rows and not c.decoded_rows_differ]
    if not readable:
        return f"{fails}: {what}"
    symbols = sum(c.decoded_symbols for c in readable)
    enough = (
        ""
        if symbols >= MIN_DECODED_SYMBOLS
        else f" where they hold {MIN_DECODED_SYMBOLS} symbols or more (these hold {symbols}; "
        f"{_OWN_BATCHES})"
    )
    return (
        f"{fails}, and the greedy CTC decodes (blank 0) of {_names(readable)} agree in all "
        f"{sum(c.decoded_rows for c in readable)} rows: if it feeds a CTC decoder, the frames "
        f"that differ only move where a symbol starts, and {_ctc_flag(readable)} judges it by "
        f"its decodes{enough}; otherwise, {what}"
    )


def _decodes_kept(check: Check, criteria: Mapping[str, Criterion]) -> bool:
    """Whether a failing CTC output's decodes kept the task by its criterion's rule."""
    criterion = criteria[check.name]
    assert isinstance(criterion, QuantizedCriterion)  # only sweeps judge decodes
    return criterion.decodes_kept(check.decoded_edits, check.decoded_symbols)


def _names(checks: Sequence[Check]) -> str:
    return ", ".join(repr(c.name) for c in checks)


def _ctc_flag(checks: Sequence[Check]) -> str:
    """The export option that declares ``checks``' outputs CTC, as advice."""
    names = ",".join(c.name for c in checks)
    return (
        f"--ctc {names} (NAME=BLANK where the blank is not class 0; Python: ctc=[...] or "
        "{NAME: BLANK})"
    )


def last_lengths(spec: GraphSpec, layers: CaseLayers) -> np.ndarray | None:
    """The lengths the graph's last recurrent layer saw in the reference (after any front end
    that shortens the time axis), where the layers were captured."""
    if layers.lengths is None or not spec.recurrent_layers:
        return None
    return layers.lengths.get(str(spec.recurrent_layers[-1].get("path", "")))


@dataclass
class LayerState:
    """What the layer checks need for the whole sweep: the graph's layers, the session that
    reads their outputs, and how graph paths map to the reference's modules."""

    infos: tuple[Any, ...] = ()
    graph: GraphLayers | None = None
    hooked: str = ""
    reason: str | None = None
    paths: dict[str, str] = field(default_factory=dict)
    #: ``(CRF path, tensor)`` of each decode's best-path score in the graph, and why they are
    #: not compared (``None``: they are, or there are none).
    scores: tuple[tuple[str, str], ...] = ()
    score_reason: str | None = None


def scores_note(
    proto: Any,
    results: Sequence[CaseResult],
    state: LayerState,
    engines: Sequence[str],
) -> list[str]:
    """Why no CRF best-path score was compared in a graph that decodes, or in some of its
    cases (empty where every case compared them, or the graph has no decode)."""
    from birnn_export._scan import is_viterbi_scan

    if not any(is_viterbi_scan(node) for node in proto.graph.node):
        return []
    results = [r for r in results if r.engine == "ort-cpu" and r.error is None]  # the probe's
    compared = sum(any(o.check == "score" for o in r.outputs) for r in results)
    why = state.score_reason
    if not compared and why is None:
        if state.reason == "off":
            why = "the layer probe, which reads them, is off"
        elif state.reason is not None:
            why = f"the layer probe, which reads them, cannot run: {state.reason}"
        elif "ort-cpu" not in engines:
            why = "the layer probe reads them on ONNX Runtime CPU, which is not among the engines"
        elif not state.scores:
            why = (
                "no TopK named <CRF>/viterbi/last_top holds a decode's best score (renamed by a "
                "tool?)"
            )
        else:
            why = "the layer probe could not read them"
    if why is None:
        return []
    where = "" if not compared else f" in {len(results) - compared} of {len(results)} case(s)"
    return [f"CRF best-path scores not compared{where}: {why}; the tags were, exactly"]


def layer_setup(
    proto: Any,
    spec: GraphSpec,
    references: References | None,
    paths: Mapping[str, str],
    enabled: bool,
    folder: str | None = None,
) -> LayerState:
    if not enabled or references is None:
        return LayerState(reason="off")
    try:
        infos = graph_layers(proto, spec)
        modules = [module_path(layer.path) for layer in infos]
        mapped = [paths.get(m, m) for m in modules]
        references.attach_layers(mapped)
    except LayersUnavailable as exc:
        return LayerState(reason=str(exc))
    from birnn_export.crf import viterbi_score_tensors

    scores = tuple(viterbi_score_tensors(proto))
    kinds = {
        type(side.layers.modules[p]).__name__ for side in references.sides.values() for p in mapped
    }
    hooked = f"a hook on the reference's {'/'.join(sorted(kinds))} at " + ", ".join(
        repr(p) for p in dict.fromkeys(modules)
    )
    return LayerState(
        tuple(infos),
        GraphLayers(proto, infos, spec.dtype, folder, scores),
        hooked,
        paths={
            layer.path: mapped[i] + layer.path[len(modules[i]) :] for i, layer in enumerate(infos)
        },
        scores=scores,
    )


def case_layers(
    state: LayerState,
    references: References | None,
    ran: Mapping[str, Any],
    feed: Mapping[str, np.ndarray],
) -> CaseLayers:
    if state.reason is not None or state.graph is None:
        return CaseLayers(reason=state.reason)
    if references is not None and references.layer_reason is not None:
        return CaseLayers(reason=references.layer_reason)
    inverse = {v: k for k, v in state.paths.items()}

    def graph_names(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, value in values.items():
            path, _, layer = name.rpartition("/")
            out[f"{inverse.get(path, path)}/{layer}"] = value
        return out

    lengths = {inverse.get(p, p): v for p, v in ran["layer_lengths"].items()}
    reference = graph_names(ran["reference_layers"])
    runs = sorted(set(reference) ^ {layer.name for layer in state.infos})
    if runs:  # a layer run more (or fewer) times in the model than in the graph
        where = "the model" if runs[0] in reference else "the graph"
        state.reason = f"the layer run {runs[0]!r} is only in {where}"
        return CaseLayers(reason=state.reason)
    try:
        graph = state.graph.run(feed, lengths)
    except LayersUnavailable as exc:
        state.reason = str(exc)
        return CaseLayers(reason=state.reason)
    eager = graph_names(ran["eager_layers"]) if "eager_layers" in ran else None
    own_input = None
    if eager is not None and "eager_rerun" in ran:  # a layer's drift needs eager's to judge
        layers = {"reference": reference, "eager": eager}
        reruns = {side: ran[f"{side}_rerun"] for side in layers}
        own_input = _own_input(state, reruns, graph, lengths, layers)
    return CaseLayers(
        infos=state.infos,
        graph=in_reference_order(graph, reference, lengths),
        reference=reference,
        eager=eager,
        lengths=lengths,
        hooked=state.hooked,
        scores=_crf_scores(state, graph, ran),
        own_input=own_input,
    )


def _own_input(
    state: LayerState,
    reruns: Mapping[str, Rerun],
    graph: Mapping[str, np.ndarray],
    lengths: Mapping[str, np.ndarray],
    layers: Mapping[str, Mapping[str, np.ndarray]],
) -> Callable[[str, int], OwnInput | None]:
    """:attr:`CaseLayers.own_input` for this case: each side's layers (``reruns``, the
    reference's and eager's) run again on a layer's input inside the graph, beside that side's
    own input to the layer (the module's, or the layer's below in its stack: ``layers``, each
    side's layer outputs), in the model's row order."""
    infos = {layer.name: layer for layer in state.infos}

    @functools.cache
    def own(name: str, steps: int) -> OwnInput | None:
        x, info = graph.get(input_key(name)), infos.get(name)
        if x is None or info is None:
            return None
        rows, mapped = lengths[info.path], state.paths.get(info.path, info.path)
        x, y = x[:, :steps], graph[name][:, :steps]
        order = tie_order(y, layers["reference"][name], rows)  # a model that sorts its rows
        if order is not None:
            x, y = x[order], y[order]
        ran = {side: rerun.run(mapped, info.index, x, rows) for side, rerun in reruns.items()}
        below = f"{info.path}/l{info.index - 1}"
        fed = {
            side: rerun.input_of(mapped) if info.index == 0 else layers[side].get(below)
            for side, rerun in reruns.items()
        }
        if any(v is None for v in (*ran.values(), *fed.values())):
            return None
        return OwnInput(
            graph=y,
            reference=ran["reference"],
            eager=ran["eager"],
            x=x,
            x_reference=fed["reference"][:, :steps],
            x_eager=fed["eager"][:, :steps],
        )

    return own


def _crf_scores(
    state: LayerState, graph: Mapping[str, np.ndarray], ran: Mapping[str, Any]
) -> dict[str, CRFScores]:
    """Each CRF's scores, the graph's decodes paired with the model's in the order they ran;
    none (and :attr:`LayerState.score_reason` set) where their numbers differ."""
    if not state.scores:
        return {}
    reference, eager = ran.get("reference_decodes", []), ran.get("eager_decodes")
    if len(reference) != len(state.scores) or (eager is not None and len(eager) != len(reference)):
        counted = f"{len(reference)}" + (
            f" (eager: {len(eager)})" if eager is not None and len(eager) != len(reference) else ""
        )
        state.score_reason = (
            f"the graph holds {len(state.scores)} CRF decode(s), the model ran {counted} of a "
            "torchcrf.CRF or CRFDecoder that could be recorded"
        )
        return {}
    out = {}
    for index, (path, _) in enumerate(state.scores):
        want, lengths = np.asarray(reference[index][0], dtype=np.float64), reference[index][1]
        got = graph[score_key(path)]
        if got.shape == want.shape:  # a model that sorts its rows by length, then decodes:
            rows = np.maximum(np.asarray(lengths), 1)  # rows of equal length in another order
            order = tie_order(got[:, None, None], want[:, None, None], rows)
            got = got if order is None else got[order]
        out[path] = CRFScores(
            graph=got,
            reference=want,
            eager=None if eager is None else np.asarray(eager[index][0], dtype=np.float64),
            lengths=np.asarray(lengths),
        )
    return out


def _rounding(result: CaseResult) -> bool:
    """Whether ``result``'s diagnosis says its error is rounding (it keeps that diagnosis)."""
    return (result.diagnosis or "").startswith(ROUNDING_DIAGNOSIS)


#: How the diagnosis of :func:`blame_untraced` begins.
UNTRACED_DIAGNOSIS = "only cases at sizes torch.export assumed away fail"


def blame_untraced(results: Sequence[CaseResult], spec: GraphSpec) -> list[CaseResult]:
    """Where every failing case runs at a point torch.export assumed away
    (:attr:`GraphSpec.untraced`, as :func:`~birnn_export._sweep.untraced_cases` runs it) and a
    case elsewhere passes, the failing cases' diagnosis names that cause: the graph keeps the
    branch traced at the example's sizes, and the model takes another there. A case that fails
    elsewhere too keeps its own diagnosis (a defect, or rounding, shows at the longest length
    first), as does one whose diagnosis says its error is rounding or whose outputs have other
    shapes than the model's (its diagnosis names them, and the branch)."""
    points = {
        (c.batch, c.seq, _others(spec, c)): spec.untraced[i]
        for i, c in enumerate(untraced_cases(spec, "ragged"))
    }
    cases = [r for r in results if r.lengths_mode != WHOLE_SWEEP]

    def point(result: CaseResult) -> dict[str, int] | None:
        return points.get((result.batch, result.seq, result.others))

    failing = [r for r in cases if not r.passed]
    if not failing or any(point(r) is None for r in failing):
        return list(results)
    if not any(r.passed and point(r) is None for r in cases):
        return list(results)
    where = dict.fromkeys(
        ", ".join(f"{d} {s}" for d, s in (point(r) or {}).items()) for r in failing
    )
    why = (
        f"{UNTRACED_DIAGNOSIS} ({'; '.join(where)}): the model "
        "computes another way than the graph there (a branch on a size, as `if delta:` is, or "
        "size arithmetic in Python numbers), and the graph keeps what it traced at the "
        "example's size; compute both ways with tensor ops (torch.where), or never serve "
        "those sizes"
    )
    blamed = {
        id(r) for r in failing if not any(o.other_shape for o in r.outputs) and not _rounding(r)
    }
    return [dataclasses.replace(r, diagnosis=why) if id(r) in blamed else r for r in results]


def failing_where_assumed(
    results: Sequence[CaseResult], spec: GraphSpec, assumed: Sequence[tuple[Any, str]]
) -> str | None:
    """Why a sweep failed, where every failing case ran at a batch or length (or both) that
    one of torch.export's assumptions on those dims leaves out (``assumed``: each
    :class:`~birnn_export._guards.Untraced` with its words; the points it tells, all of one
    dim's, a grid's of two), a row run alone at its own length included, and a case passed:
    the model takes another branch there. The recorded points (:func:`blame_untraced`) are a
    few of those sizes; this reads them all (a pyramid's `if T % 2:` at each level leaves one
    length in 8: users64 F1)."""
    axes = (spec.batch_dim, spec.time_dim)
    away = [  # the points each leaves out, as (batch, seq) pairs read on its dims
        (found.dims, {tuple(p) for p in found.told.reshape(len(found.told), -1).tolist()}, which)
        for found, which in assumed
        if set(found.dims) <= set(axes)
    ]
    cases = [r for r in results if r.lengths_mode != WHOLE_SWEEP]
    if not away or not any(r.passed for r in cases):
        return None
    if any("a branch on" in (r.diagnosis or "") for r in cases):
        return None  # said of each case already (:func:`blame_untraced`, an output's length)
    said: dict[str, None] = {}
    for result in (r for r in cases if not r.passed):
        ran = [(result.batch, result.seq)]
        alone = (result.error or "").startswith(SINGLE_ROWS) or any(
            o.check == "batch-invariance" and not o.passed for o in result.outputs
        )
        ran += [(1, length) for length in result.lengths or ()] if alone else []
        found = [
            which
            for sizes in ran
            for dims, points, which in away
            if tuple(dict(zip(axes, sizes, strict=True))[d] for d in dims) in points
        ]
        if not found:
            return None
        said.update(dict.fromkeys(found))
    return (
        "every failing case ran at a size torch.export assumed away (it assumed "
        f"{' and '.join(said)}), counting its rows run alone at their own lengths, and a case "
        "elsewhere passed: the model computes another way there (a branch on a size, as "
        "`if T % 2:` is, or size arithmetic in Python numbers), and the graph keeps what it "
        "traced at the example's size; compute both ways with tensor ops (slice or pad by a "
        "size computed from the length, as `x[:, : T - T % 2]` does, rather than under an "
        "`if`; torch.where), or serve only the sizes where it holds"
    )


def blame_fixed_dims(
    results: Sequence[CaseResult],
    cases: Sequence[Case],
    spec: GraphSpec,
    probes: Sequence[tuple[Case, bool]],
) -> list[CaseResult]:
    """Where of the :func:`~birnn_export._sweep.example_probes` (each with whether it passed)
    the one at the example's sizes passes and one with a dim at another size fails, the failing
    cases with that dim at another size than the example's (``cases``: the case of each of the
    first results) name it as a size the graph holds only where it was traced. A case whose
    diagnosis says its error is rounding keeps it."""
    if not probes or not probes[0][1]:
        return list(results)
    base = probes[0][0].sizes(spec)
    fixed = [
        d
        for case, passed in probes[1:]
        if not passed
        for d, size in case.sizes(spec).items()
        if size != base[d]
    ]
    if not fixed:
        return list(results)
    fixed = list(dict.fromkeys(fixed))
    traced = ", ".join(f"{d} {base[d]}" for d in fixed)
    names = " and ".join(fixed)
    held = next(t for t in spec.inputs if any(d in t.dims for d in fixed))
    opt = {d: spec.dim_ranges[d][1] for d in fixed}
    dims = ",".join(str(opt.get(str(d), d)) for d in held.dims)
    each = "each fail" if len(fixed) > 1 else "fails"
    why = (
        f"the graph holds only at the sizes the export traced at: a case at the example's "
        f"{traced} passes, and {names} at another size {each} -> an op of the model fixed "
        f"{'them' if len(fixed) > 1 else 'it'} in the graph (adaptive pooling to an output size "
        "the input does not divide is written as index tables for the traced size; so is a "
        "size made a Python number by int() or math.ceil); declare the size you serve as a "
        f"number (--input '{held.name}:{held.dtype}[{dims}]' at the declared opt), or make "
        "that op take any size"
    )
    blamed = {
        id(r)
        for r, case in zip(results, cases, strict=False)
        if not r.passed and not _rounding(r) and any(case.sizes(spec)[d] != base[d] for d in fixed)
    }
    return [dataclasses.replace(r, diagnosis=why) if id(r) in blamed else r for r in results]


def blame_one_step(
    results: Sequence[CaseResult], cases: Sequence[Case], spec: GraphSpec
) -> list[CaseResult]:
    """Where the time dim's range starts at 1 and only cases of one step fail (``cases``: the
    case of each of the first results), their diagnosis says why: torch.export takes a dynamic
    size as at least 2, so what the model does only at a size of 1 (``x.squeeze(1)`` of the
    time dim, AutoVC's encoder) the graph does not. A case whose diagnosis says its error is
    rounding keeps it."""
    low, opt, high = spec.seq_range

    def at_one_step(result: CaseResult, case: Case) -> bool:
        # a case of 1 step, or one that fails only where a row of 1 step runs alone
        row = re.search(r"\brow (\d+) alone\b", result.error or "")
        lengths = result.lengths or ()
        alone = row is not None and int(row[1]) < len(lengths) and lengths[int(row[1])] == 1
        return case.seq == 1 or (alone and all(o.passed for o in result.outputs))

    ran = list(zip(results, cases, strict=False))
    failing = [(r, c) for r, c in ran if not r.passed]
    if low != 1 or not failing or not all(at_one_step(r, c) for r, c in failing):
        return list(results)
    if not any(r.passed for r, c in ran if c.seq != 1):
        return list(results)
    why = (
        "only cases of 1 step fail (or rows of 1 step run alone): torch.export takes a "
        "dynamic size as at least 2, and the model computes another way at 1 step (x.squeeze(1) "
        "or .squeeze() squeezes a time dim only where it is 1; a branch on a size of 1), which "
        "the graph does not -> serve at "
        f"least 2 steps (--range {spec.time_dim}=2,{max(opt, 2)},{high}), or drop that special "
        "case from the model"
    )
    blamed = {id(r) for r, _ in failing if not _rounding(r)}
    return [dataclasses.replace(r, diagnosis=why) if id(r) in blamed else r for r in results]


def drift_note(results: Sequence[CaseResult]) -> list[str]:
    """A note naming the layers judged on their input inside the graph (:attr:`Check.drifted`),
    and how far past its limit each came on the model's input: a pass says so too."""
    worst: dict[str, float] = {}
    for result in results:
        for check in result.outputs:
            if check.drifted is not None:
                worst[check.name] = max(worst.get(check.name, 0.0), check.drifted)
    if not worst:
        return []
    layers = ", ".join(f"{name!r} ({share:.2f}x)" for name, share in worst.items())
    return [
        f"layers judged on their input inside the graph: {layers}, the most their error on the "
        "model's input came to, times its limit there: drift from the ops before the layer "
        "(within the limit of the model's input, feature by feature), which the layer grew; on "
        "the graph's input the layer matches the model's (README, 'Verification')"
    ]


def batch_dependence_note(results: Sequence[CaseResult]) -> list[str]:
    """A note where the model's own rows alone differ from the same rows in a batch: the graph
    does as the model does, and passes, but the model is likely wrong (flipping a padded batch
    before packing gives every short row another answer)."""
    found: dict[str, list[float]] = {DEPENDS_ON_THE_BATCH: [], DEPENDS_ON_THE_PADDING: []}
    for r in results:
        for o in r.outputs:
            for cause, differ in found.items():
                m = re.search(rf"{cause} \(its rows alone differ by (\S+)\)", o.note)
                if o.check == "batch-invariance" and m:
                    differ.append(float(m[1]))
    notes = []
    if found[DEPENDS_ON_THE_BATCH]:
        notes.append(
            f"{DEPENDS_ON_THE_BATCH}: its rows alone differ from the same rows in a batch by up "
            f"to {max(found[DEPENDS_ON_THE_BATCH]):.3g}, so a row's outputs change with the other "
            "rows, as taking the last padded step does (out[:, -1]: the final states are h_n, "
            "and the forward half's last output out[range(B), lengths - 1]) or flipping a padded "
            "batch before packing (README, 'Why flip-then-pack is wrong'); the graph does as the "
            "model does"
        )
    if found[DEPENDS_ON_THE_PADDING]:
        notes.append(
            f"{DEPENDS_ON_THE_PADDING}: its rows alone differ from the same rows in a batch by up "
            f"to {max(found[DEPENDS_ON_THE_PADDING]):.3g}, and alone with the batch's padding "
            "after them they do not: the model reads the padding, so a row's outputs change with "
            "the batch's longest row (taking the last padded step, out[:, -1], does this: the "
            "final states are h_n, and the forward half's last output out[range(B), lengths - "
            "1]; so do a convolution over padding ids that an Embedding without padding_idx "
            "makes vectors of, a mean over every step, flipping the padded batch before "
            "packing (README, 'Why flip-then-pack is wrong'), or a windowed front end whose "
            "last frames reach past a row's end, a centred STFT or a convolution over samples "
            "or pixels, which is often meant); the graph does as the model does"
        )
    return notes
