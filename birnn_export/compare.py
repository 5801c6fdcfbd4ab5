"""The one comparison of an engine's outputs with the model's, used by export, verify and bench.

By default an output is judged against the model's own floating-point noise
(:class:`NoiseCriterion`): the reference is the model run in float64 on the CPU, and eager
PyTorch in the graph's precision (float32, or float16 for fp16 graphs) is compared with the same
reference. Eager's error is the noise floor: what rounding alone does to this model on these
inputs. Trained weights, deep stacks and attention heads amplify ordinary rounding far past any
fixed tolerance, so an engine passes an output when its error is within
:data:`NOISE_FACTOR` times that floor, plus :data:`FLOOR_ULPS` units in the last place of the
output's magnitude for outputs that are (nearly) exact in eager PyTorch. Fixed tolerances
(:class:`~birnn_export.spec.Tolerance`, ``|a - e| <= atol + rtol * |e|`` element-wise) stay
available as an explicit choice.

Outputs with a class axis (logits, log-probabilities) are also judged by task: top-1 agreement at
every valid position whose float64 margin between the two best classes is decisive (more than
:data:`DECISIVE_MARGIN` thresholds), and, for log-probabilities along time (or an output declared
CTC at export), the greedy CTC decode of every row: reported, and what an int8 graph's declared
CTC output is judged by.

The numbers come from measurements: see README ("How verification judges").

Example:
    >>> import numpy as np
    >>> ref = np.array([1.0, -2.0, 3.0])
    >>> check = compare("y", "values", ref + 1e-7, ref, eager=ref + 2e-7)
    >>> check.passed, round(check.ratio, 2)
    (True, 0.5)

One cohesive module, over 600 lines: the one comparison export, verify and bench use
(element-wise rules, the noise criterion, task agreement, exact tags, tolerance overrides).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from birnn_export.spec import (
    INT8,
    TAG_PADDING,
    GraphSpec,
    TensorSpec,
    Tolerance,
    default_tolerance,
    dim_size,
)

#: An engine may be this many times further from the float64 reference than eager PyTorch in
#: the same precision (README, "How verification judges", has the measurements behind it).
NOISE_FACTOR = 8.0
#: Plus this many units in the last place of the output's largest magnitude (at least 1): the
#: floor for outputs that eager PyTorch happens to compute (nearly) exactly.
FLOOR_ULPS = 8.0
#: A position counts for top-1 agreement when its float64 top-two margin exceeds this many
#: thresholds (each class score may move by one threshold).
DECISIVE_MARGIN = 2.0
#: The CTC blank class for the greedy decode.
CTC_BLANK = 0
#: Greedy CTC decodes holding fewer symbols than this judge an int8 output declared CTC only
#: with its frames' top-1: too few to judge it by alone (a trained model's decodes of the sweep's
#: random features are mostly blanks: 7 symbols in 84 rows, users60's model).
MIN_DECODED_SYMBOLS = 200

_EPS = {"float16": float(np.finfo(np.float16).eps), "float64": float(np.finfo(np.float64).eps)}


def machine_eps(dtype: str) -> float:
    """Unit roundoff of a graph dtype name (float32 for anything unknown)."""
    return _EPS.get(dtype, float(np.finfo(np.float32).eps))


@dataclass(frozen=True)
class NoiseCriterion:
    """Pass when ``max|engine - reference| <= factor * noise + floor``.

    ``noise`` is eager PyTorch's max error against the same reference on the same elements;
    ``floor`` is ``floor_ulps * eps(dtype) * max(1, max|reference|)``.
    """

    factor: float = NOISE_FACTOR
    floor_ulps: float = FLOOR_ULPS

    def threshold(self, noise: float, scale: float, dtype: str) -> float:
        floor = self.floor_ulps * machine_eps(dtype) * max(1.0, scale)
        return self.factor * noise + floor

    def describe(self) -> str:
        return f"error vs float64 <= {self.factor:g} x eager's own error + {self.floor_ulps:g} ulp"


@dataclass(frozen=True)
class QuantizedCriterion:
    """How an int8 graph is judged: by the task, not by rounding.

    Judged over the whole sweep (:func:`sweep_check`), since a case of a few positions cannot
    measure a rate: each output's relative L2 error against the float64 reference, over all its
    valid elements, must stay below ``max_rel_l2``, and for class scores the argmax must agree
    with the reference's at no fewer than ``min_top1`` of all valid positions, or at all but one
    (below 200 positions the share alone refused a graph on one near-tie: bench at B = 1 and
    T = 50 gave 98%, users58 F4). An output declared CTC is judged by its greedy decodes instead:
    their edits (insertions, deletions, substitutions) against the reference's may be no more
    than ``1 - min_top1`` of the reference's symbols, or one (a frame that moves where a symbol
    starts reads the same; one that changes a symbol does not: users60 F4); where they hold
    fewer than :data:`MIN_DECODED_SYMBOLS` symbols, its frames' top-1 must hold too. Each case
    on its own only guards against gross breakage: relative L2 error below ``max_case_rel_l2`` (int8
    noise measured on a one-position case of a trained 3-layer BiLSTM(256) tagger: 0.094).
    """

    max_rel_l2: float = 0.05
    min_top1: float = 0.995
    max_case_rel_l2: float = 0.25
    #: A case's decoded tags (a CRF's) guard against breakage alike: no more than a quarter of
    #: its valid tags (or one) may differ.
    max_case_tags_differ: float = 0.25

    def decodes_kept(self, edits: int, symbols: int) -> bool:
        """Whether greedy CTC decodes with ``edits`` against the reference's ``symbols`` keep the
        task: no more than ``1 - min_top1`` of the symbols, or one."""
        return edits <= 1 or edits <= (1 - self.min_top1) * symbols

    def describe(self) -> str:
        return (
            f"int8: over the sweep, relative L2 error vs float64 < {self.max_rel_l2:g} and "
            f"top-1 agreement (decoded tags: their agreement) >= {100 * self.min_top1:g}% of "
            "valid positions (or all but one; a CTC output's greedy decodes: edits <= "
            f"{100 * (1 - self.min_top1):.2g}% of their symbols, or one, and its top-1 too "
            f"under {MIN_DECODED_SYMBOLS} symbols); < {self.max_case_rel_l2:g} in every case"
        )


Criterion = NoiseCriterion | Tolerance | QuantizedCriterion


#: How a check's note begins where an output came out another shape than the reference's,
#: and what it says where a recurrent layer did (:attr:`Check.other_shape`).
OTHER_SHAPE = "shape "
#: Said where the model's output lacks the graph's batch dim of 1 (users51 F2).
BATCH_DROPPED = (
    ": the model drops the batch dim at batch 1, as squeeze() with no dim does: name the dim "
    "it means (squeeze(-1)), as the graph keeps the batch"
)
#: Said where the model's output holds one row per valid step of every row, as a head applied
#: to a ``PackedSequence``'s ``.data`` returns (review46 F4: it was told as a dropped batch).
PACKED_ROWS = (
    ": the model returns packed rows, one per valid step of each row (a head on a "
    "PackedSequence's .data): apply it to pad_packed_sequence's padded output, as the graph does"
)
#: Said at batch 1 where the row is as long as the batch, and both causes give the shape.
DROPPED_OR_PACKED = (
    ": the model drops the batch dim at batch 1 (squeeze() with no dim: name the dim it means, "
    "squeeze(-1)), or returns packed rows, one per valid step (a head on a PackedSequence's "
    ".data: apply it to pad_packed_sequence's padded output); the graph keeps the batch"
)
LAYER_OTHER_SHAPE = "the layer's output inside the graph has shape "

#: Checks of tensors inside the graph (the layer probe's), and what each is in words: a
#: recurrent layer's output, a CRF's best-path score.
PROBED = {"layer": "layer", "score": "CRF score"}


def beside(value: float, limit: float | None) -> str:
    """``value`` to 3 significant digits, or as many more as it takes not to read as its
    ``limit`` (0.049975 within 0.05 read "0.05 (limit 0.05)": users46)."""
    for digits in (3, 4, 5, 6):
        text = f"{value:.{digits}g}"
        if limit is None or value == limit or float(text) != float(f"{limit:.{digits}g}"):
            return text
    return text


@dataclass(frozen=True)
class Check:
    """One check of one output (or recurrent layer) in one case.

    ``check`` is ``"values"`` (valid time steps, or the whole tensor), ``"padding"`` (positions
    past each row's length), ``"batch-invariance"`` (rows run alone vs in the batch),
    ``"layer"`` (a recurrent layer's own output inside the graph) or ``"score"`` (a CRF's
    best-path score inside the graph, ``name`` its module path). ``max_abs`` is the engine's
    error against the reference; under a :class:`NoiseCriterion`, ``noise`` is eager PyTorch's
    and ``threshold`` the limit ``max_abs`` was held to; under fixed tolerances ``atol`` /
    ``rtol`` (and ``rel_l2_limit``) are. ``top1`` is the share of valid positions whose argmax
    over the last (class) axis agrees with the reference's, ``top1_decisive`` how many of them
    had a decisive margin and ``top1_missed`` how many of those disagree (any fails the check);
    ``greedy`` the share of rows whose greedy CTC decode agrees (``decoded_rows`` rows,
    ``decoded_rows_differ`` of them otherwise; ``decoded_edits`` edits against the reference's
    ``decoded_symbols`` symbols), ``blank`` the CTC blank of an output declared CTC. For decoded
    tags, ``rows`` is how many rows hold a valid tag and ``rows_missed`` how many of them differ
    outside ties.
    """

    name: str
    role: str
    check: str
    max_abs: float
    max_rel: float
    mean_abs: float
    passed: bool
    noise: float | None = None
    threshold: float | None = None
    atol: float | None = None
    rtol: float | None = None
    rel_l2: float | None = None
    rel_l2_limit: float | None = None
    top1: float | None = None
    top1_decisive: int = 0
    top1_missed: int = 0
    greedy: float | None = None
    decoded_rows: int = 0
    decoded_rows_differ: int = 0
    decoded_symbols: int = 0
    decoded_edits: int = 0
    blank: int | None = None
    elements: int = 0
    note: str = ""
    #: The share of positions whose top-1 must agree (a sweep's int8 top-1 check).
    top1_limit: float | None = None
    #: The reference's L2 norm over the compared elements (int8 checks, to pool over a sweep).
    reference_l2: float | None = None
    rows: int = 0
    rows_missed: int = 0
    #: A layer check judged on the layer's input inside the graph: its error on the model's
    #: input, as a share of its limit there (drift from the ops before it, grown through it).
    drifted: float | None = None
    #: A failing layer check whose input inside the graph departs from the model's beyond its
    #: limit: the largest departure, in shares of that limit (the cause lies before the layer).
    input_departs: float | None = None

    @property
    def other_shape(self) -> bool:
        """The engine's output or layer came out another shape than the reference's (the note
        gives both; no values were compared)."""
        return self.note.startswith(OTHER_SHAPE) or LAYER_OTHER_SHAPE in self.note

    @property
    def ratio(self) -> float | None:
        """Engine error over eager's (``None`` without a noise floor)."""
        if self.noise is None:
            return None
        if self.noise == 0:
            return 0.0 if self.max_abs == 0 else math.inf
        return self.max_abs / self.noise

    def describe(self) -> str:
        """This check in words: what, by how much, against what limit."""
        what = (
            f"{PROBED[self.check]} {self.name!r}"
            if self.check in PROBED
            else f"output {self.name!r} {self.check}"
        )
        if self.role == "tags" and self.check == "sweep":
            return (
                f"output {self.name!r} over the sweep ({self.note}): {self.tags_agreement()} "
                f"(limit {100 * (self.top1_limit or 0):g}%)"
            )
        if self.role == "tags":
            return f"{what}: {self.note}"
        if self.check == "sweep":
            text = (
                f"output {self.name!r} over the sweep ({self.note}): relative L2 error "
                f"{self.rel_l2:.3g} (limit {self.rel_l2_limit:g})"
            )
            top1 = "" if self.top1 is None else f"top-1 agreement {100 * self.top1:.2f}%"
            judged = top1 and (
                f"{top1} (limit {100 * (self.top1_limit or 0):g}%; {self.top1_missed} of "
                f"{self.top1_decisive} positions differ)"
            )
            if self.blank is None:  # top-1 judges it; its decodes, if any, are told
                decodes = f"; {self.decodes_agreement()}" if self.decoded_rows else ""
                return text + (f", {judged}" if judged else "") + decodes
            # its decodes judge it, and on few symbols its frames' top-1 too
            text += f", {self.decodes_agreement()}"
            if not top1:
                return text
            if self.decoded_symbols >= MIN_DECODED_SYMBOLS:
                return f"{text}; {top1} of its frames"
            return (
                f"{text}; under {MIN_DECODED_SYMBOLS} symbols its frames are judged too: {judged}"
            )
        if self.threshold is not None:
            against = (
                f" = {self.ratio:.3g}x eager's {self.noise:.3g}" if self.noise is not None else ""
            )
            error = beside(self.max_abs, self.threshold)
            text = f"{what}: error {error}{against} (limit {self.threshold:.3g})"
        elif self.atol is None and self.rel_l2 is not None:
            error = beside(self.rel_l2, self.rel_l2_limit)
            text = f"{what}: relative L2 error {error} (limit {self.rel_l2_limit:g})"
            if self.top1 is not None:
                text += f", top-1 agreement {100 * self.top1:.2f}%"
        elif self.atol is None:
            text = what
        else:
            text = (
                f"{what}: max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g} (atol "
                f"{self.atol:g}, rtol {self.rtol:g})"
            )
        if self.top1_missed and self.reference_l2 is None:
            text += f"; top-1 differs at {self.top1_missed} of {self.top1_decisive} clear positions"
        return text + (f" - {self.note}" if self.note else "")

    def decodes_agreement(self, named: bool = True) -> str:
        """The greedy CTC decodes' agreement in words: edits against the reference's symbols
        (with their limit, where the output is judged by them) and the rows that differ;
        ``named``: led by what they are."""
        share = self.decoded_edits / self.decoded_symbols if self.decoded_symbols else 0.0
        limit = (
            f", limit {100 * (1 - self.top1_limit):.2g}% or 1"
            if self.blank is not None and self.top1_limit is not None
            else ""
        )
        lead = f"greedy CTC decodes (blank {self.blank or CTC_BLANK}): " if named else ""
        return (
            f"{lead}{self.decoded_edits} "
            f"edit{'s' * (self.decoded_edits != 1)} in {self.decoded_symbols} symbols "
            f"({100 * share:.2f}%{limit}), {self.decoded_rows_differ} of {self.decoded_rows} "
            "rows differ"
        )

    def tags_agreement(self) -> str:
        """A tags sweep check's figure in words: the share of valid tags that agree, and in how
        many rows the differing ones lie (a row decoded otherwise is a sentence tagged otherwise:
        99.69% of tags agreed where 2.6% of rows differed, users38)."""
        rows = f", in {self.rows_missed} of {self.rows} rows" if self.rows else ""
        return (
            f"{100 * (self.top1 or 0.0):.2f}% of valid tags agree "
            f"({self.top1_missed} of {self.top1_decisive} differ{rows})"
        )

    @property
    def limit(self) -> str:
        """The criterion as it applied here, for tables."""
        if self.role == "tags" and self.top1_limit is not None:
            return f"agree >= {100 * self.top1_limit:g}%"
        if self.role == "tags":  # an int8 case's valid tags are judged over the sweep
            return "exact" if self.top1 is None else "padding exact, <= 25% differ"
        if self.top1_limit is not None and self.blank is not None:
            share = 100 * (1 - self.top1_limit)
            edits = f"L2 < {self.rel_l2_limit:g}, decode edits <= {share:.2g}% or 1"
            if self.decoded_symbols >= MIN_DECODED_SYMBOLS:
                return edits
            return f"{edits}, top-1 >= {100 * self.top1_limit:g}%"
        if self.top1_limit is not None:
            return f"L2 < {self.rel_l2_limit:g}, top-1 >= {100 * self.top1_limit:g}%"
        if self.threshold is not None:
            return f"<= {self.threshold:.3g}"
        if self.atol is None and self.rel_l2_limit is not None:
            return f"L2 < {self.rel_l2_limit:g}"
        if self.atol is None:  # no criterion applied: the shapes differ, or it is missing
            return "-"
        text = f"{self.atol:g} / {self.rtol:g}"
        return text + (f", L2 < {self.rel_l2_limit:g}" if self.rel_l2_limit is not None else "")


def abs_errors(actual: Any, expected: Any) -> np.ndarray:
    """``|actual - expected|`` in float64, element-wise. NaN on both sides and the same infinity
    on both sides count as equal (error 0); NaN on one side only is an infinite error."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - e)
    both_nan = np.isnan(a) & np.isnan(e)
    same_inf = np.isinf(a) & np.isinf(e) & (np.sign(a) == np.sign(e))
    diff[both_nan | same_inf] = 0.0
    diff[np.isnan(diff)] = np.inf
    return diff


def outside_tolerance(actual: Any, expected: Any, atol: float, rtol: float) -> np.ndarray:
    """Element-wise: the error of :func:`abs_errors` exceeds ``atol + rtol * |expected|``.

    Where ``expected`` is NaN or infinite only an exact match passes (the ``rtol`` term is
    dropped there, so ``rtol * inf`` cannot accept any value).

    Example:
        >>> outside_tolerance([1.0, float("nan"), 5.0], [1.0, float("nan"), float("inf")], 0.1, 0.1)
        array([False, False,  True])
    """
    diff = abs_errors(actual, expected)
    e = np.asarray(expected, dtype=np.float64)
    scale = np.where(np.isfinite(e), np.abs(e), 0.0)
    return ~(diff <= atol + rtol * scale)


def compare(
    name: str,
    check: str,
    actual: Any,
    expected: Any,
    *,
    criterion: Criterion = NoiseCriterion(),
    eager: Any = None,
    mask: Any = None,
    dtype: str = "float32",
    role: str = "sequence",
    threshold: float | None = None,
    classes: bool = False,
    sequences: tuple[int, int, Any] | None = None,
    blank: int | None = None,
    note: str = "",
) -> Check:
    """Compare ``actual`` with ``expected`` (same shape) where ``mask`` is True.

    Args:
        name: The output's (or layer's) name.
        check: What is compared (see :class:`Check`).
        actual: The engine's values.
        expected: The reference's values (float64 under a :class:`NoiseCriterion`).
        criterion: A :class:`NoiseCriterion` (needs ``eager`` or ``threshold``) or a fixed
            :class:`~birnn_export.spec.Tolerance`.
        eager: Eager PyTorch's values in the graph's precision: the noise floor.
        mask: Boolean, broadcastable to the values: the elements that count (default all).
        dtype: The graph's dtype (for the floor's ulp).
        role: The output's role in the graph spec.
        threshold: A limit to use instead of deriving one from ``eager`` (batch invariance
            reuses the values check's).
        classes: The last axis holds class scores: also check top-1 agreement at every position
            (``mask`` must then be the same along that axis).
        sequences: ``(batch_axis, time_axis, lengths)`` of a ``[batch, time, classes]``-like
            output: also compare each row's greedy CTC decode when the reference holds
            log-probabilities, or ``blank`` is given.
        blank: The CTC blank of an output declared CTC (decoded whatever its scores).
        note: Shown with a failure.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = _as_dtype_holds(np.asarray(expected, dtype=np.float64), np.asarray(actual).dtype)
    if a.shape != e.shape:
        raise ValueError(f"{name}: shapes {a.shape} and {e.shape} differ")
    full = np.ones(e.shape, bool) if mask is None else np.broadcast_to(mask, e.shape)
    sel_a, sel_e = a[full], e[full]
    if sel_a.size == 0:
        return Check(name, role, check, 0.0, 0.0, 0.0, True, elements=0, note=note)
    diff = abs_errors(sel_a, sel_e)
    nonzero = np.abs(sel_e) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = diff[nonzero] / np.abs(sel_e[nonzero])
    finite = bool(np.isfinite(diff).all())
    stats = {
        "max_abs": float(diff.max()),
        "max_rel": float(rel.max()) if rel.size else 0.0,
        "mean_abs": float(diff.mean()) if finite else math.inf,
        "elements": int(sel_a.size),
    }
    scale = float(np.abs(sel_e[np.isfinite(sel_e)]).max(initial=0.0))
    extra: dict[str, Any] = {}
    if isinstance(criterion, QuantizedCriterion):
        rel_l2 = _rel_l2(diff, sel_e, finite)
        extra.update(
            rel_l2=rel_l2,
            rel_l2_limit=criterion.max_case_rel_l2,
            reference_l2=float(np.linalg.norm(sel_e)) if finite else math.inf,
        )
        if classes and e.ndim >= 1 and e.shape[-1] >= 2:
            positions = full[..., 0]
            extra.update(top1_agreement(a[positions], e[positions], 0.0))
            extra.update(_decodes(a, e, sequences, positions, blank))
        passed = rel_l2 < criterion.max_case_rel_l2
        return Check(name, role, check, passed=passed, note=note, **stats, **extra)
    if isinstance(criterion, Tolerance):
        passed = not bool(outside_tolerance(sel_a, sel_e, criterion.atol, criterion.rtol).any())
        extra.update(atol=criterion.atol, rtol=criterion.rtol)
        if criterion.rel_l2 is not None:
            rel_l2 = _rel_l2(diff, sel_e, finite)
            passed = passed and rel_l2 < criterion.rel_l2
            extra.update(rel_l2=rel_l2, rel_l2_limit=criterion.rel_l2)
        limit = criterion.atol + criterion.rtol * scale
    else:
        noise = None
        if threshold is None:
            if eager is None:
                raise ValueError(f"{name}: a noise criterion needs eager values or a threshold")
            eager_values = np.broadcast_to(np.asarray(eager, dtype=np.float64), e.shape)[full]
            noise = float(abs_errors(eager_values, sel_e).max())
            threshold = criterion.threshold(noise, scale, dtype)
        passed = finite and stats["max_abs"] <= threshold
        extra.update(noise=noise, threshold=threshold)
        limit = threshold
    if classes and e.ndim >= 1 and e.shape[-1] >= 2:
        positions = full[..., 0]
        extra.update(top1_agreement(a[positions], e[positions], limit))
        passed = passed and extra["top1_missed"] == 0
        extra.update(_decodes(a, e, sequences, positions, blank))
    return Check(name, role, check, passed=passed, note=note, **stats, **extra)


def _as_dtype_holds(values: np.ndarray, dtype: Any) -> np.ndarray:
    """The float64 reference as the engine's output ``dtype`` (float32 or float16) holds it:
    finite values beyond that dtype's range at its largest. A model that fills with
    ``torch.finfo(x.dtype).min`` writes float64's minimum in the float64 reference and
    float32's in a float32 output: the same value to that output."""
    if np.dtype(dtype) not in (np.float32, np.float16):
        return values
    limit = float(np.finfo(dtype).max)
    finite = np.isfinite(values)
    if not (np.abs(values[finite]) > limit).any():
        return values
    return np.where(finite, np.clip(values, -limit, limit), values)


def sweep_check(checks: Sequence[Check], criterion: QuantizedCriterion) -> Check | None:
    """One output over every case of a sweep (``checks``: its values checks under ``criterion``):
    relative L2 error over all the cases' elements, held to ``criterion.max_rel_l2``, and top-1
    agreement over all their positions (class scores), held to ``criterion.min_top1``, or, for
    an output declared CTC, its greedy decodes' edits over all their rows. Exact
    ties in the float64 reference do not count for top-1; any other position does, however
    close its two best classes. ``None`` for no checks."""
    if not checks:
        return None
    norm2 = sum(c.reference_l2**2 for c in checks if c.reference_l2 is not None)
    err2 = sum(
        (c.rel_l2 * c.reference_l2) ** 2
        for c in checks
        if c.rel_l2 is not None and c.reference_l2 is not None
    )
    finite = math.isfinite(norm2) and math.isfinite(err2)
    rel_l2 = math.sqrt(err2 / norm2) if finite and norm2 > 0 else (0.0 if err2 == 0 else math.inf)
    tags = checks[0].role == "tags"  # judged by the share of valid tags that agree alone
    counted = [c for c in checks if c.top1 is not None]
    positions = sum(c.top1_decisive for c in counted)
    missed = sum(c.top1_missed for c in counted)
    top1 = (1.0 - missed / positions if positions else 1.0) if counted else None
    rows, rows_missed = sum(c.rows for c in checks), sum(c.rows_missed for c in checks)
    decoded = {
        key: sum(getattr(c, key) for c in checks)
        for key in ("decoded_rows", "decoded_rows_differ", "decoded_symbols", "decoded_edits")
    }
    blank = checks[0].blank
    task = top1 is None or top1 >= criterion.min_top1 or missed <= 1
    if blank is not None:  # a CTC output: its decodes are its task, its frames' on few symbols
        symbols = decoded["decoded_symbols"]
        task = criterion.decodes_kept(decoded["decoded_edits"], symbols) and (
            task or symbols >= MIN_DECODED_SYMBOLS
        )
    passed = (tags or rel_l2 < criterion.max_rel_l2) and task
    return Check(
        checks[0].name,
        checks[0].role,
        "sweep",
        max_abs=max(c.max_abs for c in checks),
        max_rel=max(c.max_rel for c in checks),
        mean_abs=float(np.mean([c.mean_abs for c in checks])),
        passed=passed,
        rel_l2=None if tags else rel_l2,
        rel_l2_limit=None if tags else criterion.max_rel_l2,
        top1=top1,
        top1_decisive=positions,
        top1_missed=missed,
        elements=sum(c.elements for c in checks),
        note=f"{len(checks)} case{'s' * (len(checks) != 1)}"
        + (f", {positions} positions" if counted else ""),
        top1_limit=criterion.min_top1 if counted else None,
        rows=rows,
        rows_missed=rows_missed,
        greedy=(
            1.0 - decoded["decoded_rows_differ"] / decoded["decoded_rows"]
            if decoded["decoded_rows"]
            else None
        ),
        blank=blank,
        **decoded,
    )


def _rel_l2(diff: np.ndarray, expected: np.ndarray, finite: bool) -> float:
    """``||actual - expected||_2 / ||expected||_2`` (infinite where anything is not finite)."""
    if not finite:
        return math.inf
    norm = float(np.linalg.norm(expected))
    err = float(np.linalg.norm(diff))
    return err / norm if norm > 0 else (0.0 if err == 0 else math.inf)


def top1_agreement(actual: np.ndarray, expected: np.ndarray, limit: float) -> dict[str, Any]:
    """Top-1 agreement of ``[..., classes]`` scores: ``top1`` (share of positions that agree),
    ``top1_decisive`` (positions whose float64 margin exceeds :data:`DECISIVE_MARGIN` x
    ``limit``) and ``top1_missed`` (decisive positions that disagree)."""
    got = actual.reshape(-1, actual.shape[-1])
    want = expected.reshape(-1, expected.shape[-1])
    if not len(want):
        return {"top1": None, "top1_decisive": 0, "top1_missed": 0}
    finite = np.isfinite(got).all(-1) & np.isfinite(want).all(-1)
    best_two = np.sort(want, axis=-1)[:, -2:]
    decisive = finite & (best_two[:, 1] - best_two[:, 0] > DECISIVE_MARGIN * limit)
    agree = got.argmax(-1) == want.argmax(-1)
    return {
        "top1": float(agree.mean()),
        "top1_decisive": int(decisive.sum()),
        "top1_missed": int((decisive & ~agree).sum()),
    }


def _decodes(
    actual: np.ndarray,
    expected: np.ndarray,
    sequences: tuple[int, int, Any] | None,
    positions: np.ndarray,
    blank: int | None,
) -> dict[str, Any]:
    """:func:`decodes_compared` for values along ``sequences``' batch and time axes (the classes
    last), where the output is declared CTC (``blank``) or its valid ``positions`` hold
    log-probabilities; nothing otherwise."""
    if sequences is None or expected.ndim != 3 or {*sequences[:2]} != {0, 1}:
        return {}
    if blank is None and not _log_probabilities(expected[positions]):
        return {}
    batch_axis, time_axis, lengths = sequences
    order = (batch_axis, time_axis, 2)
    return decodes_compared(
        np.transpose(actual, order), np.transpose(expected, order), lengths, blank
    )


def decodes_compared(
    actual: np.ndarray, expected: np.ndarray, lengths: Any = None, blank: int | None = None
) -> dict[str, Any]:
    """The greedy CTC decodes of ``[batch, time, classes]`` scores against the reference's, each
    row cut to its length: ``greedy`` (the share of rows that agree), ``decoded_rows``,
    ``decoded_rows_differ``, ``decoded_symbols`` (the reference's), ``decoded_edits`` (their
    edit distance, summed) and ``blank`` (``None``: undeclared, decoded with :data:`CTC_BLANK`).

    Example:
        >>> want = np.log(np.eye(3)[[[1, 0, 2, 2]]] + 1e-9)
        >>> got = np.log(np.eye(3)[[[1, 1, 0, 2]]] + 1e-9)  # a boundary moved: reads the same
        >>> decodes_compared(got, want)["decoded_edits"]
        0
    """
    got = greedy_decode(actual, lengths, CTC_BLANK if blank is None else blank)
    want = greedy_decode(expected, lengths, CTC_BLANK if blank is None else blank)
    differ = [(g, w) for g, w in zip(got, want, strict=True) if g != w]
    return {
        "greedy": 1.0 - len(differ) / len(want) if want else None,
        "decoded_rows": len(want),
        "decoded_rows_differ": len(differ),
        "decoded_symbols": sum(map(len, want)),
        "decoded_edits": sum(edit_distance(g, w) for g, w in differ),
        "blank": blank,
    }


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions from ``a`` to
    ``b``.

    Example:
        >>> edit_distance((1, 2, 3), (1, 3, 4))
        2
    """
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _log_probabilities(values: np.ndarray) -> bool:
    """Every row of the last axis is a log-softmax: all <= 0 and logsumexp ~ 0."""
    if values.size == 0 or not np.isfinite(values).all() or values.max() > 1e-6:
        return False
    peak = values.max(-1, keepdims=True)
    total = peak[..., 0] + np.log(np.exp(values - peak).sum(-1))
    return bool(np.abs(total).max() < 1e-4)


def _greedy(best: np.ndarray, blank: int) -> tuple[int, ...]:
    """Greedy CTC decode of one row's best classes: collapse repeats, drop the blank."""
    out, previous = [], None
    for symbol in best.tolist():
        if symbol != previous and symbol != blank:
            out.append(symbol)
        previous = symbol
    return tuple(out)


def greedy_decode(
    log_probs: Any, lengths: Any = None, blank: int = CTC_BLANK
) -> list[tuple[int, ...]]:
    """Greedy CTC decode (blank :data:`CTC_BLANK` unless given) of ``[batch, time, classes]``
    scores, each row cut to its length.

    Example:
        >>> scores = np.log(np.eye(3)[[1, 1, 0, 2, 2]][None] + 1e-9)
        >>> greedy_decode(scores)
        [(1, 2)]
    """
    best = np.asarray(log_probs).argmax(-1)
    if lengths is None:
        lengths = [best.shape[1]] * best.shape[0]
    return [_greedy(row[: int(n)], blank) for row, n in zip(best, lengths, strict=True)]


# -- the outputs of a graph ------------------------------------------------------------------


def valid_mask(
    tensor: TensorSpec, shape: tuple[int, ...], lengths: np.ndarray
) -> np.ndarray | None:
    """True at ``t < lengths[b]``, broadcast to ``shape``; ``None`` without batch and time axes."""
    t_axis, b_axis = tensor.time_axis, tensor.batch_axis
    if t_axis is None or b_axis is None or len(shape) != len(tensor.dims):
        return None
    steps = np.arange(shape[t_axis])
    mask = steps[None, :] < np.asarray(lengths).reshape(-1, 1)  # [B, T]
    if b_axis > t_axis:
        mask = mask.T
    expand = [1] * len(shape)
    expand[b_axis], expand[t_axis] = shape[b_axis], shape[t_axis]
    return np.broadcast_to(mask.reshape(expand), shape)


def has_classes(spec: GraphSpec, tensor: TensorSpec) -> bool:
    """Whether ``tensor``'s last axis holds class scores (logits, log-probabilities): a static
    last dim of at least 2 on an output the graph computes with a linear head (recorded at
    export; in older files, any output that is not a bare recurrent layer's own ``output``,
    ``h_n``, ``c_n``)."""
    last = tensor.dims[-1] if tensor.dims else None
    shaped = (
        tensor.role in ("sequence", "other")
        and isinstance(last, int)
        and last >= 2
        and tensor.dtype.startswith("float")
    )
    if tensor.classes is not None:
        return shaped and tensor.classes
    return shaped and not any(t.name == "h_n" for t in spec.outputs)


def _other_shape_cause(
    got: np.ndarray, want: np.ndarray, tensor: TensorSpec, rows: np.ndarray | None
) -> str:
    """Why the reference has another shape than the engine's output, where its shape tells:
    :data:`BATCH_DROPPED` where it is the output without its batch dim of 1 (a model that
    squeezes its batch away at batch 1), :data:`PACKED_ROWS` where its first dim is the sum of
    the rows' lengths and the rest the output's without batch and time, else nothing."""
    b, t = tensor.batch_axis, tensor.time_axis
    if b is None or got.ndim != want.ndim + 1:
        return ""
    dropped = got.shape[b] == 1 and np.squeeze(got, b).shape == want.shape
    packed = False
    if t is not None and rows is not None:
        rest = tuple(n for axis, n in enumerate(got.shape) if axis not in (b, t))
        packed = want.shape == (int(np.sum(rows)), *rest)
    if dropped and packed:
        return DROPPED_OR_PACKED
    return BATCH_DROPPED if dropped else PACKED_ROWS if packed else ""


def compare_outputs(
    spec: GraphSpec,
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    lengths: np.ndarray | None,
    criteria: Mapping[str, Criterion],
    *,
    eager: Mapping[str, np.ndarray] | None = None,
    derived_lengths: np.ndarray | None = None,
    zeroed_noise: bool = False,
) -> list[Check]:
    """``values`` and ``padding`` checks of every output in ``spec``: ``expected`` is the
    reference, ``eager`` eager PyTorch's outputs (the noise floor of a
    :class:`~birnn_export.compare.NoiseCriterion`). ``lengths`` are the graph's input lengths;
    outputs along a time dim derived from the input's (a strided front end) are judged on
    ``derived_lengths`` (the lengths the model's recurrent layers saw) or, without them, on
    each row's length put through the dim's own formula.

    ``zeroed_noise``: the feed holds noise past each row's length and the graph zeroes it there
    (an int8 graph), so where the reference's padding is not the padding value the graph's is
    the model's on zeros, which the reference did not run: that padding is not judged (users63
    F1: a residual over the padded steps was refused as "a mask lost from the graph"). The
    cases without noise judge it."""
    results = []
    input_dims = {d for t in spec.inputs for d in t.dims if isinstance(d, str)}
    for tensor in spec.outputs:
        criterion = criteria[tensor.name]
        common = {"criterion": criterion, "dtype": spec.dtype, "role": tensor.role}
        if tensor.name not in actual:
            results.append(_failed(tensor, "values", "the engine did not return it"))
            continue
        got, want = np.asarray(actual[tensor.name]), np.asarray(expected[tensor.name])
        if tensor.role == "tags":
            noisy = None if eager is None else np.asarray(eager[tensor.name])
            results.append(compare_tags(tensor, got, want, noisy, criterion=criterion))
            continue
        rows = output_lengths(spec, tensor, lengths, derived_lengths)
        got = _cut_to_longest_row(tensor, got, want, rows, input_dims)
        if got.shape != want.shape:
            note = f"{OTHER_SHAPE}{list(got.shape)}, reference {list(want.shape)}"
            cause = _other_shape_cause(got, want, tensor, rows)
            results.append(_failed(tensor, "values", note + cause))
            continue
        noise = None if eager is None else np.asarray(eager[tensor.name])
        mask = valid_mask(tensor, want.shape, rows) if rows is not None else None
        sequences = None
        if tensor.batch_axis is not None and tensor.time_axis is not None and want.ndim == 3:
            full = [want.shape[tensor.time_axis]] * want.shape[tensor.batch_axis]
            sequences = (tensor.batch_axis, tensor.time_axis, rows if rows is not None else full)
        values = compare(
            tensor.name,
            "values",
            got,
            want,
            eager=noise,
            mask=mask,
            classes=has_classes(spec, tensor),
            sequences=sequences,
            blank=tensor.ctc_blank,
            note="valid steps" if mask is not None else "",
            **common,
        )
        results.append(values)
        if mask is None or mask.all():
            continue
        padded = ~mask
        pad = np.float64(spec.padding_value)
        if np.all(want[padded] == pad):
            # The reference writes exactly the padding value: the engine must too.
            reference = np.full(want.shape, pad)
            note = f"must equal padding value {spec.padding_value:g}"
        elif zeroed_noise:
            continue
        else:
            reference = want
            note = "vs reference (the reference does not write the padding value here)"
        results.append(
            compare(
                tensor.name,
                "padding",
                got,
                reference,
                eager=noise,
                mask=padded,
                note=note,
                **common,
            )
        )
    return results


def compare_tags(
    tensor: TensorSpec,
    got: np.ndarray,
    want: np.ndarray,
    eager: np.ndarray | None = None,
    *,
    criterion: Criterion | None = None,
) -> Check:
    """A CRF's decoded tags (``[batch, seq]``, -1 past each row's length) against the
    reference's: equal at every position. A row may differ only where eager PyTorch in the
    graph's precision departs from the (float64) reference in that row too: two paths of
    near-equal score, which rounding decides (reported as ties). The reference's rows may be
    shorter (``torchcrf``'s lists padded to the longest); they are padded with -1 to ``got``'s
    length.

    Under a :class:`QuantizedCriterion` (an int8 graph) the padding must be exact here and no
    more than a quarter of the valid tags (or one) may differ, a guard against breakage: the
    share of valid tags that agree (``top1``, over ``top1_decisive`` valid positions, of which
    ``top1_missed`` differ outside ties) is judged over the whole sweep (:func:`sweep_check`),
    as top-1 is for class scores."""
    batch_axis, time_axis = (
        tensor.batch_axis or 0,
        1 if tensor.time_axis is None else tensor.time_axis,
    )
    if not np.issubdtype(np.asarray(want).dtype, np.integer):  # another model's scores
        note = (
            f"the model's output here is {np.asarray(want).dtype} {list(np.shape(want))}, not "
            "decoded tags: is it the model this graph was exported from?"
        )  # a [B, 5] classifier's logits passed as ties, padded to T (users42)
        return _failed(tensor, "values", note)
    got = np.moveaxis(got, (batch_axis, time_axis), (0, 1)) if got.ndim == 2 else got
    want, eager = (
        None if a is None else _pad_time(np.moveaxis(a, (batch_axis, time_axis), (0, 1)), got)
        for a in (want, eager)
    )
    if got.shape != want.shape:
        note = f"{OTHER_SHAPE}{list(got.shape)}, reference {list(want.shape)}"
        return _failed(tensor, "values", note)
    differ = got != want
    rows = differ.any(axis=1)
    ties = (
        rows & (eager != want).any(axis=1)
        if eager is not None and eager.shape == want.shape
        else rows & False
    )
    wrong = rows & ~ties
    count, total = int(differ.sum()), int(differ.size)
    if not rows.any():
        note = f"exact: all {total} tags equal (padding {TAG_PADDING})"
    else:
        note = f"{count} of {total} tags differ in {int(rows.sum())} of {len(rows)} row(s)"
        if ties.any():
            note += (
                f"; {int(ties.sum())} row(s) are ties: eager in the graph's precision departs "
                "from the reference there too (paths of near-equal score)"
            )
    wrong_tags = int(differ[wrong].sum())
    valid = want != TAG_PADDING
    missed = int((differ & valid)[wrong].sum())
    rows_missed = int(((differ & valid).any(axis=1) & wrong).sum())
    passed, share = not wrong.any(), None
    if isinstance(criterion, QuantizedCriterion):
        allowed = max(1.0, criterion.max_case_tags_differ * int(valid.sum()))
        passed = not (differ & ~valid).any() and missed <= allowed
        share = 1.0 - missed / max(int(valid.sum()), 1)
    return Check(
        tensor.name,
        tensor.role,
        "values",
        float(wrong_tags),
        0.0,
        wrong_tags / max(total, 1),
        passed,
        elements=total,
        note=note,
        top1=share,
        top1_decisive=int(valid.sum()),
        top1_missed=missed,
        rows=int(valid.any(axis=1).sum()),
        rows_missed=rows_missed,
    )


def _pad_time(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    if values.ndim != 2 or like.ndim != 2 or values.shape[1] >= like.shape[1]:
        return values
    pad = np.full((values.shape[0], like.shape[1] - values.shape[1]), TAG_PADDING, values.dtype)
    return np.concatenate([values, pad], axis=1)


def output_lengths(
    spec: GraphSpec,
    tensor: TensorSpec,
    lengths: np.ndarray | None,
    derived: np.ndarray | None = None,
) -> np.ndarray | None:
    """The valid length of each row along ``tensor``'s time axis (``None``: every step is valid).

    Along the graph's time dim: ``lengths``. Along a dim derived from it (``"(time - 1)//2 + 1"``
    after a stride-2 convolution): ``derived`` (the lengths the recurrent layers saw) where
    given, else each length put through the dim's formula.

    Example:
        >>> spec = GraphSpec(inputs=(), outputs=(), example_batch=2, example_seq=5,
        ...                  time_dim="time")
        >>> out = TensorSpec("y", "float32", ("batch", "((time - 1)//2) + 1", 4), "sequence",
        ...                  batch_at=0, time_at=1)
        >>> output_lengths(spec, out, np.array([9, 4])).tolist()
        [5, 2]
    """
    axis = tensor.time_axis
    if lengths is None or axis is None:
        return None
    dim = tensor.dims[axis]
    if dim == spec.time_dim or not isinstance(dim, str):
        return np.asarray(lengths)
    if derived is not None and len(derived) == len(lengths):
        return np.asarray(derived)
    others = spec.sizes(1, 1)
    return np.asarray(
        [max(dim_size(dim, {**others, spec.time_dim: int(n)}, unknown=int(n)), 1) for n in lengths]
    )


def _cut_to_longest_row(
    tensor: TensorSpec,
    got: np.ndarray,
    want: np.ndarray,
    lengths: np.ndarray | None,
    input_dims: Collection[str],
) -> np.ndarray:
    """``got`` cut along time to the reference's length where the reference returns only the
    longest row's steps (``pad_packed_sequence`` without ``total_length``) and the graph the
    input's length, an input's dim (graphs written before they cut to the longest row too).
    An output whose length the graph computes (``((seq - Mod(seq,4))//4) + 1``) is not cut: one
    step more than the model's is a wrong length (review43 F1: `if T % 4:` padding traced away
    gave every length divisible by 4 a step more, cut off in every ragged case)."""
    axis = tensor.time_axis
    if (
        axis is None
        or lengths is None
        or tensor.dims[axis] not in input_dims
        or got.ndim != want.ndim
        or got.shape[axis] <= want.shape[axis]
        or want.shape[axis] != int(np.max(lengths, initial=0))
        or any(
            g != w for i, (g, w) in enumerate(zip(got.shape, want.shape, strict=False)) if i != axis
        )
    ):
        return got
    return np.take(got, np.arange(want.shape[axis]), axis=axis)


def _failed(tensor: TensorSpec, check: str, note: str) -> Check:
    inf = math.inf
    return Check(tensor.name, tensor.role, check, inf, inf, inf, False, note=note)


# -- fixed tolerances: the user's overrides ----------------------------------------------------

#: ``atol`` / ``rtol`` as the user gives them: one number for every output, or a mapping from
#: output name to number (the key ``"*"``: outputs not named).
ToleranceOverride = float | Mapping[str, float] | None


def resolve_tolerance(
    output: TensorSpec,
    engine: str,
    atol: ToleranceOverride,
    rtol: ToleranceOverride,
    *,
    device: str = "cpu",
) -> Tolerance:
    """Default fixed tolerance for ``output`` on ``engine`` (the torch engine on ``device``)
    with the user's overrides applied.

    Example:
        >>> out = TensorSpec("y", "float32", ("batch", "seq", 4), "sequence")
        >>> resolve_tolerance(out, "ort-cpu", {"y": 1e-3}, None).atol
        0.001
    """
    base = default_tolerance(output.dtype, engine, device=device if engine == "torch" else "cpu")
    return Tolerance(
        _override(atol, output.name, base.atol),
        _override(rtol, output.name, base.rtol),
        base.rel_l2,
    )


def engine_criteria(
    spec: GraphSpec,
    engines: Sequence[str],
    *,
    fixed: bool,
    atol: ToleranceOverride = None,
    rtol: ToleranceOverride = None,
    device: str = "cpu",
) -> dict[str, dict[str, Criterion]]:
    """What verify and bench judge each engine's outputs by: int8's criterion for the int8
    engine or an int8 graph; else fixed tolerances where ``fixed`` (:func:`resolve_tolerance`,
    the torch engine on ``device``); else the noise criterion against the float64 reference.
    """

    def one(engine: str) -> dict[str, Criterion]:
        if engine == "ort-int8" or spec.quantization == INT8:
            return {t.name: QuantizedCriterion() for t in spec.outputs}
        if fixed:
            return {
                t.name: resolve_tolerance(t, engine, atol, rtol, device=device)
                for t in spec.outputs
            }
        return {t.name: NoiseCriterion() for t in spec.outputs}

    return {engine: one(engine) for engine in engines}


def layer_tolerance(dtype: str, atol: ToleranceOverride, rtol: ToleranceOverride) -> Tolerance:
    """Fixed tolerance for the recurrent layers' own outputs inside the graph: the default for
    the graph's ``dtype`` with the user's overrides for every output (a plain number, or the
    key ``"*"``); one output's own override is that output's alone.

    Example:
        >>> layer_tolerance("float32", 1e-9, None).atol
        1e-09
    """
    base = default_tolerance(dtype, "ort-cpu")
    return Tolerance(_override(atol, "*", base.atol), _override(rtol, "*", base.rtol), base.rel_l2)


def _override(value: ToleranceOverride, name: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, Mapping):
        return float(value.get(name, value.get("*", default)))
    return float(value)


def check_overrides(spec: GraphSpec, **overrides: ToleranceOverride) -> None:
    """Every override names an output of ``spec`` and is a finite number >= 0.

    Raises:
        BiRNNExportError: naming the option and what is wrong.
    """
    from birnn_export.errors import BiRNNExportError

    names = {t.name for t in spec.outputs}
    for option, value in overrides.items():
        if value is None:
            continue
        items = value.items() if isinstance(value, Mapping) else [("*", value)]
        for key, number in items:
            if key != "*" and key not in names:
                raise BiRNNExportError(
                    f"{option}: the graph has no output {key!r}; its outputs are "
                    f"{', '.join(sorted(names))}"
                )
            if (
                isinstance(number, bool)
                or not isinstance(number, (int, float))
                or not math.isfinite(number)
                or number < 0
            ):
                raise BiRNNExportError(f"{option}: expected a finite number >= 0, got {number!r}")
