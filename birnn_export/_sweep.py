"""Verification's sweep: which shapes and lengths it runs (:func:`plan_cases`), the inputs of
each case (:func:`case_feed`, :func:`row_feed`) and the memory budget that bounds them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from birnn_export._files import size_text
from birnn_export.errors import BiRNNExportError, UsageError
from birnn_export.spec import (
    GraphSpec,
    dim_size,
    largest_tensor_bytes,
    make_feed,
    tensor_shapes,
)

#: Batch sizes of the default sweep.
DEFAULT_BATCH_SIZES = (1, 3, 16)
#: Scale of the large-magnitude feature case (N(0, 1) times this).
LARGE_SCALE = 10.0


# -- the sweep -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One input shape of the sweep; :func:`case_feed` turns it into arrays."""

    batch: int
    seq: int
    lengths_mode: str
    scale: float
    seed: int
    #: Which of their declared (min, opt, max) the graph's other named dims take (0, 1 or 2).
    others: int = 1
    #: Sizes given for other named dims (``--dim``), which they take instead.
    dims: tuple[tuple[str, int], ...] = ()
    #: Noise instead of padding past the lengths (:func:`~birnn_export.spec.make_feed`): a
    #: graph reading it where the model masks it (a dropped ``masked_fill``) fails here only.
    noise: bool = False

    def sizes(self, spec: GraphSpec) -> dict[str, int]:
        """Every named input dim's size in this case."""
        return spec.sizes(self.batch, self.seq, which=self.others, dims=dict(self.dims))

    @property
    def rows_alone(self) -> bool:
        """Whether the case's rows also run alone (batch invariance): ragged or full rows at
        the unit scale, padded (a row alone has no noise past its length to compare)."""
        return self.scale == 1.0 and self.lengths_mode in ("ragged", "full") and not self.noise


#: The batch size the default sweep runs a length at where the model may branch another way.
UNTRACED_BATCH = 3


def _probe_batch(spec: GraphSpec) -> int:
    """The batch of a case run at a chosen point: :data:`UNTRACED_BATCH` within the declared
    range."""
    low, _, high = spec.batch_range
    return min(max(UNTRACED_BATCH, low), high)


def _modes(spec: GraphSpec) -> tuple[str, ...]:
    """The lengths modes of the sweep: ragged and equal rows where the graph tells each row's
    length (lengths, a mask, token padding), else full rows."""
    ragged = spec.length_source is not None or spec.token_padding is not None
    return ("ragged", "equal") if ragged else ("full",)


def takes_noise(spec: GraphSpec) -> bool:
    """Whether a case with noise past the lengths tells anything: some features or ids have a
    dim whose lengths an input or a mask tells."""
    told = set(spec.length_sources()) | set(spec.nested_sources())
    return any(
        t.role in ("features", "tokens") and t.batch_axis is not None and told & set(t.dims)
        for t in spec.inputs
    )


def untraced_cases(spec: GraphSpec, mode: str) -> list[Case]:
    """A case at each of the graph's :attr:`~GraphSpec.untraced` points: its sizes, the batch
    at :data:`UNTRACED_BATCH` (within the declared range) and the time dim at the example's
    length where the point does not give them."""
    batch = _probe_batch(spec)
    cases = []
    for point in spec.untraced:
        others = tuple(sorted((d, s) for d, s in point.items() if d in spec.dim_ranges))
        seq = point.get(spec.time_dim, within(spec, spec.example_seq))
        cases.append(Case(point.get(spec.batch_dim, batch), seq, mode, 1.0, 0, dims=others))
    return cases


def example_probes(
    spec: GraphSpec, cases: Sequence[Case], given: Mapping[str, int], seed: int
) -> list[Case]:
    """Cases that find the other named dims a graph holds only at the sizes it was traced at
    (an adaptive pooling written as index tables for the example's height): one at the
    example's sizes of every other named dim that ``given`` (``--dim``) leaves free, then one
    per such dim at another declared size with the rest at the example's. None where there is
    no such dim or a case of ``cases`` already runs at the example's sizes. Verification runs
    them only where a case failed."""
    free = [d for d in spec.dim_ranges if d not in given and d in spec.example_sizes]
    base = {
        d: min(max(spec.example_sizes[d], spec.dim_ranges[d][0]), spec.dim_ranges[d][2])
        for d in free
    }
    if not free or any(all(c.sizes(spec)[d] == size for d, size in base.items()) for c in cases):
        return []
    batch, seq = _probe_batch(spec), within(spec, spec.example_seq)
    mode = _modes(spec)[0]
    points = [base]
    for dim in free:
        low_d, opt_d, high_d = spec.dim_ranges[dim]
        other = next((s for s in (opt_d, low_d, high_d) if s != base[dim]), None)
        if other is not None:
            points.append({**base, dim: other})
    return [
        Case(batch, seq, mode, 1.0, seed + i, dims=tuple(sorted({**given, **point}.items())))
        for i, point in enumerate(points)
    ]


def default_seq_lens(spec: GraphSpec) -> tuple[int, ...]:
    """T in {1, 2, example_seq, 4 x example_seq, the declared maximum ``seq_range[2]``}, each
    kept within the declared range of the time dim."""
    steps = {within(spec, t) for t in (1, 2, spec.example_seq, 4 * spec.example_seq)}
    return tuple(sorted(steps | {spec.seq_range[2]}))


def within(spec: GraphSpec, steps: int) -> int:
    low, _, high = spec.seq_range
    return min(max(steps, low), high)


def plan_cases(
    spec: GraphSpec,
    *,
    batch_sizes: Sequence[int] | None = None,
    seq_lens: Sequence[int] | None = None,
    seed: int = 0,
    large_scale: float | None = LARGE_SCALE,
    dims: Mapping[str, int] | None = None,
) -> list[Case]:
    """The sweep (other named dims at the sizes ``dims`` gives, where it gives them).

    Given ``batch_sizes`` or ``seq_lens``: every batch size x length, each with ragged and
    equal lengths (when the graph takes lengths) and a large-magnitude ragged case (when it
    takes float features), the graph's other named dims (not in ``dims``) at their declared opt;
    and each length once more with those at their min and at their max (at the largest
    batch). By default a covering set of those shapes instead, so the cost grows with the
    model and not with a product: batch sizes {1, 3, 16} and lengths {1, 2,
    T0, 4 x T0, the declared maximum} (T0 = the export's example length) each appear, ragged
    and equal lengths and the large scale each appear at several shapes, and the longest length
    runs at batch 3 (its rows alone at batch 1); so do the lengths where the model may take
    another branch than the traced one (:func:`untraced_cases`).
    """
    given = tuple(sorted(spec.check_dims(dims or {}).items()))
    cases = _planned_cases(spec, batch_sizes, seq_lens, seed, large_scale, given)
    return [dataclasses.replace(c, dims=given) for c in cases] if given else cases


def _planned_cases(
    spec: GraphSpec,
    batch_sizes: Sequence[int] | None,
    seq_lens: Sequence[int] | None,
    seed: int,
    large_scale: float | None,
    given: tuple[tuple[str, int], ...],
) -> list[Case]:
    modes = _modes(spec)
    floats = any(t.role == "features" and t.dtype.startswith("float") for t in spec.inputs)
    large = float(large_scale) if floats and large_scale else None
    varied = set(spec.dim_ranges) - {name for name, _ in given}
    if batch_sizes is None and seq_lens is None:
        return _default_cases(spec, modes, large, seed, others=bool(varied))
    batches = _check_sizes(
        "batch_sizes", DEFAULT_BATCH_SIZES if batch_sizes is None else batch_sizes
    )
    seqs = _check_sizes("seq_lens", default_seq_lens(spec) if seq_lens is None else seq_lens)
    low = spec.seq_range[0]
    if min(seqs) < low:
        raise BiRNNExportError(
            f"seq_lens: {min(seqs)} is below the time dim's declared minimum {low}, the shortest "
            f"row the graph serves; ask for lengths of at least {low}"
        )
    cases = []
    for batch in batches:
        for seq in seqs:
            variants = [(mode, 1.0) for mode in modes]
            if large:
                variants.append((modes[0], large))
            for mode, scale in variants:
                cases.append(Case(batch, seq, mode, scale, seed + len(cases)))
    if varied:  # the other named dims (a second sequence's) at their min and max too
        for seq in seqs:
            for which in (0, 2):
                cases.append(Case(max(batches), seq, modes[0], 1.0, seed + len(cases), which))
    if takes_noise(spec):  # noise past the lengths, at the largest batch
        for seq in seqs:
            cases.append(Case(max(batches), seq, modes[0], 1.0, seed + len(cases), noise=True))
    return cases


def _default_cases(
    spec: GraphSpec, modes: Sequence[str], large: float | None, seed: int, others: bool
) -> list[Case]:
    t0, longest = spec.example_seq, spec.seq_range[2]
    ragged, equal = modes[0], modes[-1]
    shapes: list[tuple[int, int, str, float]] = [
        (1, 1, ragged, 1.0),
        (3, 2, ragged, 1.0),
        (1, t0, ragged, 1.0),
        (3, t0, ragged, 1.0),
        (3, t0, equal, 1.0),
        (16, t0, ragged, 1.0),
        (3, 4 * t0, ragged, 1.0),
        (16, 4 * t0, equal, 1.0),
        (3, longest, ragged, 1.0),
    ]
    if large:
        shapes += [(3, t0, ragged, large), (16, 2, ragged, large)]
    unique = list(dict.fromkeys((b, within(spec, t), m, x) for b, t, m, x in shapes))
    cases = [Case(b, t, mode, scale, seed + i) for i, (b, t, mode, scale) in enumerate(unique)]
    if takes_noise(spec):  # many rows of many lengths: the packed layout's later spans too
        cases.append(Case(16, within(spec, 4 * t0), ragged, 1.0, seed + len(cases), noise=True))
    for case in untraced_cases(spec, ragged):  # where a branch may part from the traced one
        if (case.batch, case.seq, ragged, 1.0) not in unique or case.dims:
            cases.append(dataclasses.replace(case, seed=seed + len(cases)))
    if others:  # the other named dims (not given) at their declared min and max too
        cases += [
            Case(3, within(spec, t0), ragged, 1.0, seed + len(cases) + i, others=which)
            for i, which in enumerate((0, 2))
        ]
    return cases


#: The default memory budget of verify and bench: bytes the largest tensor of one case may
#: take in float64 (``--memory-budget`` in GiB).
DEFAULT_MEMORY_BUDGET = 1 << 30


def past_declared(
    spec: GraphSpec, batch_sizes: Sequence[int] | None, seq_lens: Sequence[int] | None
) -> list[str]:
    """Notes for asked batch sizes and lengths past the largest the graph declares (the sizes
    recorded at export to be served): the graph runs them, a TensorRT engine built on that
    profile does not (users39)."""
    notes = []
    asked = (
        ("batch size", batch_sizes, spec.batch_range[2], "--batch-range"),
        ("length", seq_lens, spec.seq_range[2], "--seq-range"),
    )
    for what, sizes, high, option in asked:
        over = sorted({int(s) for s in sizes or () if s > high})
        if over:
            notes.append(
                f"{what} {', '.join(map(str, over))} past the graph's declared maximum {high} "
                f"({option} at export): verified as asked, but a TensorRT engine built on the "
                "graph's recorded profile refuses it"
            )
    return notes


def sweep_arguments(
    engines: str | Sequence[str], batch_sizes: Any, seq_lens: Any
) -> tuple[tuple[str, ...], tuple[int, ...] | None, tuple[int, ...] | None]:
    """``engines``, ``batch_sizes`` and ``seq_lens`` as :func:`~birnn_export.verify` and
    :func:`~birnn_export.benchmark` take them, checked before a model loads: engines as a
    sequence or one comma-separated string (``"ort-cpu"`` was read letter by letter: users50
    F5), each size list as a sequence, an array or one int, and ``None`` for the default."""
    from birnn_export.runners import ENGINES

    if isinstance(engines, str):
        engines = [name.strip() for name in engines.split(",") if name.strip()]
    engines = tuple(dict.fromkeys(engines))
    if not engines:
        raise UsageError(f"engines: expected at least one of {', '.join(ENGINES)}")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise UsageError(f"engines: unknown {unknown}; choose from {', '.join(ENGINES)}")

    def sizes(name: str, values: Any) -> tuple[int, ...] | None:
        if values is None:
            return None
        if isinstance(values, (bool, float, np.floating)):  # a TypeError before (review30 L3)
            raise UsageError(f"{name}: expected positive integers, got {values!r}")
        if isinstance(values, (int, np.integer)):
            return _check_sizes(name, (values,))
        if isinstance(values, np.ndarray):  # an array of sizes (a 0-d one: one size)
            values = values.reshape(-1).tolist() if values.ndim <= 1 else values.tolist()
        return _check_sizes(name, list(values))

    return engines, sizes("batch_sizes", batch_sizes), sizes("seq_lens", seq_lens)


def _check_sizes(option: str, values: Sequence[int]) -> tuple[int, ...]:
    if not values or any(
        not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1 for v in values
    ):
        raise UsageError(f"{option}: expected positive integers, got {list(values)}"[:200])
    return tuple(dict.fromkeys(int(v) for v in values))


def case_feed(spec: GraphSpec, case: Case) -> dict[str, np.ndarray]:
    """The inputs of ``case``, reproducible from its seed."""
    return make_feed(
        spec,
        case.batch,
        case.seq,
        seed=case.seed,
        lengths=case.lengths_mode,
        scale=case.scale,
        which=case.others,
        dims=dict(case.dims),
        noise=case.noise,
    )


def row_feed(
    spec: GraphSpec, feed: Mapping[str, np.ndarray], row: int, length: int | None
) -> dict[str, np.ndarray]:
    """Row ``row`` of ``feed`` alone (batch 1), cut to ``length`` time steps (``None``: as it is
    in the batch, its padding kept)."""
    single, lengths_input = {}, spec.lengths_input
    for tensor in spec.inputs:
        value = feed[tensor.name]
        if tensor.batch_axis is not None:
            value = np.take(value, [row], axis=tensor.batch_axis)
        if length is None:
            single[tensor.name] = np.ascontiguousarray(value)
            continue
        if tensor.time_axis is not None:
            value = np.take(value, np.arange(length), axis=tensor.time_axis)
        if tensor is lengths_input:  # a second sequence keeps its padded width and lengths
            value = np.full_like(value, length)
        single[tensor.name] = np.ascontiguousarray(value)
    return single


# -- memory ----------------------------------------------------------------------------------


def fit_budget(
    cases: list[Case],
    proto: Any,
    spec: GraphSpec,
    budget: int,
    explicit: bool,
    *,
    instead: str = "choose smaller --batch/--seq",
) -> tuple[list[Case], list[str]]:
    """Drop (default sweep) or refuse (explicit sizes, ``instead`` saying what else to do)
    cases whose largest tensor exceeds the memory budget."""
    kept, notes, shapes = [], [], tensor_shapes(proto)
    unreadable = has_unreadable_dims(shapes, spec)
    for case in cases:
        sizes = {"which": case.others, "dims": dict(case.dims)}
        need = largest_tensor_bytes(shapes, spec, case.batch, case.seq, **sizes)
        if need > budget and unreadable:  # counted at the largest size: measure instead
            need = measured_bytes(proto, spec, case.batch, case.seq, **sizes) or need
        if need <= budget:
            kept.append(case)
            continue
        text = (
            f"batch {case.batch}, seq {case.seq}: its largest tensor would take "
            f"{size_text(need)} in float64, over the memory budget of {size_text(budget)}"
        )
        if explicit:
            raise BiRNNExportError(
                f"{text}; {instead} or raise --memory-budget (Python: batch_sizes, seq_lens, "
                "memory_budget)"
            )
        notes.append(f"skipped {text} (raise --memory-budget to run it)")
    if not kept:
        raise BiRNNExportError(
            "memory budget: no case of the sweep fits; raise --memory-budget or pass "
            "smaller --batch/--seq"
        )
    return kept, list(dict.fromkeys(notes))


def has_unreadable_dims(shapes: Sequence[tuple[int | str, ...]], spec: GraphSpec) -> bool:
    """Whether some dim of the graph's tensors is neither a size nor an expression of the
    inputs' dims (a chunked model's Reshapes after a Pad by a computed amount)."""
    sizes = spec.sizes(2, 3)
    for shape in shapes:
        for dim in shape:
            if isinstance(dim, str):
                try:
                    dim_size(dim, sizes)
                except BiRNNExportError:
                    return True
    return False


def measured_bytes(
    proto: Any,
    spec: GraphSpec,
    batch: int,
    seq: int,
    which: int = 1,
    dims: Mapping[str, int] | None = None,
) -> int | None:
    """The largest tensor at ``batch`` x ``seq`` in bytes at float64, measured (other named
    dims as :func:`~birnn_export.spec.largest_tensor_bytes` takes them): the graph runs on ONNX
    Runtime at one row of two short lengths, every intermediate tensor an output, and each
    tensor's size is carried to ``batch`` and ``seq`` by the power of the length it
    grew with (1 for a recurrent layer's output, 2 for attention weights; at most 3).

    For graphs whose dims symbolic shape inference cannot follow, each counted at the case's
    largest size: a dual-path separator's [batch, 64, chunks, chunk] was 244 GiB at batch 3,
    800 steps, where it takes 5 MiB. ``None`` where it cannot be measured.
    """
    import math

    import onnx
    import onnxruntime as ort

    first = max(spec.seq_range[0], 16)
    second = 2 * first
    if second >= seq:  # a short case: measured at its own length
        first = second = seq
    try:
        probe = onnx.shape_inference.infer_shapes(proto)
        named = {o.name for o in probe.graph.output}
        made = {out for node in probe.graph.node for out in node.output}
        probe.graph.output.extend(
            v
            for v in probe.graph.value_info
            if v.name in made and v.name not in named and v.type.tensor_type.elem_type
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        runs = [
            session.run(None, make_feed(spec, 1, steps, lengths="equal", which=which, dims=dims))
            for steps in (first, second)
        ]
    except Exception:  # any failure (a graph over 2 GB, external weights): the estimate stands
        return None
    largest = 0.0
    for short, long in zip(*runs, strict=True):
        power = min(max(math.log2(max(np.size(long), 1) / max(np.size(short), 1)), 0.0), 3.0)
        largest = max(largest, np.size(long) * batch * (seq / second) ** power)
    return int(largest) * 8
