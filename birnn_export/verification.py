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

Here is the sweep; one case is :mod:`birnn_export._case`, the shapes and feeds
:mod:`birnn_export._sweep`, the references :mod:`birnn_export._references`, and the report
:mod:`birnn_export._report`.

Example:
    >>> report = verify("model.onnx", model, engines=("ort-cpu",))  # doctest: +SKIP
    >>> report.passed, report.summary()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from birnn_export import _interop
from birnn_export._case import (
    advise_over_the_sweep,
    batch_dependence_note,
    blame_fixed_dims,
    blame_one_step,
    blame_untraced,
    case_layers,
    drift_note,
    failing_where_assumed,
    last_lengths,
    layer_setup,
    run_case,
    scores_note,
    sweep_checks,
    undeclared_ctc_note,
)
from birnn_export._files import check_output_path
from birnn_export._foreign import ForeignGraph, blame_short_rows, read_spec
from birnn_export._layers import has_lengths, is_recurrent
from birnn_export._process import one_at_a_time
from birnn_export._progress import Progress
from birnn_export._references import (
    GOLDEN_EAGER,
    GOLDEN_REFERENCE,
    References,
    float64_fails,
    reference_module,
    resolve_models,
    root_bidirectional_hidden,
)
from birnn_export._report import OTHER_FILE_NOTE, CaseResult, VerifyReport, environment
from birnn_export._report import render_report as render_report
from birnn_export._sweep import (
    DEFAULT_MEMORY_BUDGET,
    LARGE_SCALE,
    Case,
    case_feed,
    example_probes,
    fit_budget,
    past_declared,
    plan_cases,
    sweep_arguments,
)
from birnn_export.compare import (
    NoiseCriterion,
    QuantizedCriterion,
    ToleranceOverride,
    check_overrides,
    engine_criteria,
    layer_tolerance,
)
from birnn_export.errors import BiRNNExportError
from birnn_export.quantize import (
    INT8,
    SWEEP_INPUTS_NOTE,
    padding_unread,
    saturation_note,
    zeroes_padding,
)
from birnn_export.spec import (
    MASK_ROLES,
    GraphSpec,
    load_onnx,
    refuse_data_outside,
)
from birnn_export.trt_plan import sweep_profile

logger = logging.getLogger(__name__)

#: The graph problem of an int8 graph that zeroes its float inputs' padding the model reads.
PADDING_ZEROED_BUT_READ = (
    "the int8 graph zeroes its float inputs past each row's length (its int8_padding nodes), "
    "but the model reads that padding (its valid outputs change with it: a convolution across "
    "row ends, a layer run over the padding), so the graph differs from it wherever the "
    "padding is not zero; it was written by a birnn-export that did not check this: export it "
    "again"
)

#: How the note begins where the model cannot run in float64 (the export prints it).
FLOAT64_FAILS = "the model cannot run in float64"


def _graph_problems(
    proto: Any, spec: GraphSpec, foreign: ForeignGraph | None = None
) -> tuple[list[str], list[str]]:
    """The batch and time dims the graph declares static, each with its inputs and outputs;
    and, in a foreign graph, notes on outputs that declare a size for a dim its inputs leave
    free: torch's dynamo exporter writes the example's length into LSTM and GRU outputs, and
    the graph computes any length (review27). The sweep runs other sizes, so a size the
    graph truly fixes fails there."""
    fixed: dict[tuple[str, int], list[str]] = {}
    stale: dict[tuple[str, int], list[str]] = {}
    infos = {i.name: i for i in [*proto.graph.input, *proto.graph.output]}
    for tensor in (*spec.inputs, *spec.outputs):
        info = infos.get(tensor.name)
        if info is None:
            continue  # refused before (spec.refuse_changed)
        dims = info.type.tensor_type.shape.dim
        for axis in (tensor.batch_axis, tensor.time_axis):
            if axis is not None and axis < len(dims) and dims[axis].HasField("dim_value"):
                key = (str(tensor.dims[axis]), dims[axis].dim_value)
                free = foreign is not None and key[0] not in foreign.fixed
                where = (stale if free and tensor in spec.outputs else fixed).setdefault(key, [])
                where.append(f"{tensor.name} (dim {axis})")
    problems = [
        f"{', '.join(where)}: should be symbolic {dim!r}, the graph declares {size} (a size "
        "baked in at export, or fixed by a tool after it)"
        for (dim, size), where in fixed.items()
    ]
    notes = [
        f"{', '.join(where)}: declared {size} where the graph's inputs leave {dim!r} free: a "
        "stale annotation (torch's dynamo exporter writes the example's length into LSTM and "
        "GRU outputs), judged by the sweep's other sizes; ONNX Runtime warns at each ('Expected "
        "shape from model ... does not match actual shape'): make it symbolic for tools that "
        "trust declared shapes"
        for (dim, size), where in stale.items()
    ]
    return problems, notes


def _nodes_without_lengths(proto: Any, spec: GraphSpec) -> list[str]:
    """A note on recurrent nodes fed no ``sequence_lens`` in a graph that takes lengths. Not a
    problem by itself: a model may run a layer on the padded batch and use the lengths
    elsewhere (masked pooling), and the graph must do as it does. Where the model packs, the
    numbers fail and the diagnosis names the node (:mod:`birnn_export._diagnose`)."""
    if spec.length_source is None:
        return []
    nodes = [
        repr(node.name) for node in proto.graph.node if is_recurrent(node) and not has_lengths(node)
    ]
    if not nodes:
        return []
    return [
        f"recurrent node {', '.join(nodes)} takes no sequence_lens although the graph takes "
        "lengths: it runs every row to the full length (a backward direction starts in the "
        "padding of short rows), as the model must do for the values to match"
    ]


# -- inputs and outputs to files ---------------------------------------------------------------


def _saved_cases(
    saved: Sequence[tuple[Case, dict[str, np.ndarray], dict[str, Any], bool]],
) -> list[tuple[Case, dict[str, np.ndarray], dict[str, Any]]]:
    """The failing cases (all cases if none failed)."""
    chosen = [(c, f, r) for c, f, r, ok in saved if not ok]
    return chosen or [(c, f, r) for c, f, r, _ in saved]


#: Saved inputs may run past the graph's declared maximum batch and length by this factor.
LOADED_PAST_MAX = 8


def _loaded_cases(
    spec: GraphSpec,
    feeds: Sequence[Mapping[str, np.ndarray]],
    described: Sequence[Mapping[str, Any]] = (),
) -> tuple[list[tuple[Case, dict[str, np.ndarray]]], list[str]]:
    """Cases from saved inputs: each feed checked against the graph's inputs, and notes on the
    arrays cast to the graph's dtypes. ``described``: what ``--save-inputs`` wrote of each case;
    a case saved with noise past the lengths is such a case again (its label, and the summary
    where only such cases fail)."""
    names = [t.name for t in spec.inputs]
    cases, cast = [], {}
    for index, feed in enumerate(feeds):
        if sorted(feed) != sorted(names):
            raise BiRNNExportError(
                f"load_inputs: case {index} has inputs {sorted(feed)}, the graph takes {names}"
            )
        feed = dict(feed)
        for t in spec.inputs:
            shown = f"[{', '.join(map(str, t.dims))}]"
            if feed[t.name].ndim != len(t.dims) or any(
                isinstance(d, int) and d != size
                for d, size in zip(t.dims, feed[t.name].shape, strict=False)
            ):  # a file's shape, not the graph's nor the model's (users46 F1)
                raise BiRNNExportError(
                    f"load_inputs: case {index}'s {t.name!r} is "
                    f"{list(feed[t.name].shape)}, the graph takes {shown}: save inputs of "
                    "the graph's shape"
                )
            feed[t.name] = _as_declared(index, t, feed[t.name], cast)
        shape = {t.name: feed[t.name].shape for t in spec.inputs}
        first = spec.inputs[0]
        batch = shape[first.name][first.batch_axis] if first.batch_axis is not None else 1
        seq = max(
            (shape[t.name][t.time_axis] for t in spec.inputs if t.time_axis is not None), default=1
        )
        for tensor in spec.inputs:
            _check_loaded_values(index, tensor, feed[tensor.name], shape, spec)
        # past the declared ranges they run, with a note, as asked sizes do (users60 F2: a real
        # batch of 72 rows was refused); far past them, minutes within the budget (users33)
        most = (LOADED_PAST_MAX * spec.batch_range[2], LOADED_PAST_MAX * spec.seq_range[2])
        if batch > most[0] or seq > most[1]:
            raise BiRNNExportError(
                f"load_inputs: case {index} is batch {batch}, seq {seq}, more than "
                f"{LOADED_PAST_MAX}x the graph's declared maximum (batch {spec.batch_range[2]}, "
                f"seq {spec.seq_range[2]}); save smaller inputs, or export with --batch-range / "
                "--seq-range covering them"
            )
        noise = index < len(described) and described[index].get("noise") is True
        cases.append((Case(int(batch), int(seq), "loaded", 1.0, index, noise=noise), feed))
    notes = [
        f"saved input {name!r} is {was}: fed as {now}, the dtype the graph declares"
        for name, (was, now) in cast.items()
    ]
    return cases, notes


def _as_declared(
    index: int, tensor: Any, value: np.ndarray, cast: dict[str, tuple[str, str]]
) -> np.ndarray:
    """A saved input in the dtype the graph declares: integers of another width, floats of
    another precision and a 0/1 mask as the graph takes them (each recorded in ``cast``), what
    numpy saves by default (int32 lengths on some platforms, float64 features: users46 F1);
    another kind, or values the graph's dtype does not hold (an id past int32, a float past
    float16's range: review28 L1), refused."""
    want = np.dtype(tensor.dtype)
    if value.dtype == want:
        return value
    kinds = {value.dtype.kind, want.kind}
    zero_one = bool(np.isin(value, (0, 1)).all())
    mask = zero_one and (
        want.kind == "b" or (value.dtype.kind == "b" and tensor.role in MASK_ROLES)
    )
    if not (kinds <= set("iu") or kinds == {"f"} or mask):
        raise BiRNNExportError(
            f"load_inputs: case {index}'s {tensor.name!r} is {value.dtype}, the graph takes "
            f"{want}: save it as {want}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        fed = value.astype(want)
        if want.kind in "iu":  # wrapped around: another value
            lost = fed.astype(value.dtype) != value
        else:  # past the range: inf
            lost = np.isfinite(value) & ~np.isfinite(fed) if want.kind == "f" else fed != value
    if lost.any():
        raise BiRNNExportError(
            f"load_inputs: case {index}'s {tensor.name!r} is {value.dtype} and holds "
            f"{value[lost].reshape(-1)[0].item()!r}, which the graph's {want} cannot: save values "
            f"the graph takes, as {want}"
        )
    cast[tensor.name] = (str(value.dtype), str(want))
    return fed


def _check_loaded_values(
    index: int,
    tensor: Any,
    value: np.ndarray,
    shapes: Mapping[str, tuple[int, ...]],
    spec: GraphSpec,
) -> None:
    """A saved input's token ids within the graph's vocabulary (an index within the steps it
    indexes) and lengths within the steps they measure (out-of-range values were blamed on the
    declared sequence range)."""
    if value.size == 0 or value.dtype.kind not in "iu":
        return
    low, high = tensor.low, tensor.high
    if tensor.role == "lengths" and isinstance(low, int):
        low = min(low, 0)  # a padding word's characters: 0, which the model masks
    if isinstance(high, str):
        # the steps of the dim they measure or index, in the inputs that have it
        steps = [shapes[t.name][t.dims.index(high)] for t in spec.inputs if high in t.dims]
        high = max(steps, default=None)
        if high is not None and tensor.role == "tokens":
            high -= 1  # an index: up to its dim's size - 1
    if isinstance(low, str) or isinstance(high, str) or tensor.role not in ("tokens", "lengths"):
        return
    least, most = int(value.min()), int(value.max())
    # the bound passed, not the range: 0 is let through for lengths (users63 F3: "(0..17)")
    bound = (
        f"at least {low}" if low is not None and least < low
        else f"at most {high}" if high is not None and most > high
        else None
    )  # fmt: skip
    if bound is not None:
        raise BiRNNExportError(
            f"load_inputs: case {index}'s {tensor.name!r} holds {least}..{most}, outside the "
            f"{'ids' if tensor.role == 'tokens' else 'lengths'} the graph takes ({bound})"
        )


def _zeroes_padding(proto: Any, spec: GraphSpec, runner: Any) -> bool:
    """Whether the graph ``runner`` runs zeroes its float inputs past each row's length: an
    int8 graph's own nodes, or those ``ort-int8`` writes quantizing a float graph."""
    if spec.quantization == INT8:
        return zeroes_padding(proto, spec)
    quantized = getattr(runner, "quantized", None)  # only ONNX Runtime's runners quantize
    return quantized is not None and quantized.padding_zeroed


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
    # command. ONNX Runtime's idle threads sleep: the reference runs here between its calls,
    # and spinning threads would hold the cores it needs (issue 13's interleaved timings).
    return runners.make_runner(
        engine,
        onnx_path,
        model=copy.deepcopy(converted) if engine == "torch" else None,
        input_names=[t.name for t in spec.inputs],
        output_names=[t.name for t in spec.outputs],
        dtype=runners.eager_dtype(converted, spec.dtype) if engine == "torch" else None,
        profile_batch=profile[0],
        profile_seq=profile[1],
        isolate=isolate,
        spinning=False,
    )


# -- the entry point -------------------------------------------------------------------------


@one_at_a_time
def verify(
    onnx_path: str | os.PathLike[str],
    model: Any = None,
    *,
    engines: str | Sequence[str] = ("ort-cpu",),
    batch_sizes: int | Sequence[int] | None = None,
    seq_lens: int | Sequence[int] | None = None,
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
    dims: Mapping[str, int] | None = None,
    load_options: Mapping[str, Any] | None = None,
    like: str | os.PathLike[str] | None = None,
) -> VerifyReport:
    """Compare engines running ``onnx_path`` with the model across a sweep of shapes.

    Args:
        onnx_path: A graph written by :func:`birnn_export.export_onnx` (its metadata drives the
            inputs).
        model: The model that was exported: its file (read by
            :func:`birnn_export.load_model` with ``load_options``), a
            :class:`~birnn_export.checkpoint.LoadedModel` (then the reference is its
            ``original``, before conversion, where there is one) or an ``nn.Module`` (called
            with the graph's inputs, positionally, in order). May be omitted with
            ``load_outputs``.
        engines: Engines to check, from :data:`birnn_export.runners.ENGINES` (a sequence, or
            one comma-separated string). ``"torch"`` runs the converted model eagerly (a check
            of the conversion itself).
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
        dims: Sizes of other named dims (``{"hypothesis_seq": 7}``: a sentence pair's second
            sequence), each within its declared range, in every case; by default they take
            their declared opt, and their min and max in two more cases.
        load_options: Keyword arguments of :func:`birnn_export.load_model` for a ``model``
            given as a file (``model_class``, ``trust_pickle``...).
        like: For a graph birnn-export did not write (``torch.onnx.export``'s, say): a graph it
            wrote from the same model, whose spec says the inputs to feed. Without it the
            model is traced as ``birnn-export MODEL.pt`` traces it to learn them
            (:mod:`birnn_export._foreign`).

    Returns:
        A :class:`VerifyReport`; call :meth:`VerifyReport.raise_for_failure` to turn a mismatch
        into :class:`~birnn_export.errors.VerificationError`.

    Raises:
        BiRNNExportError: unusable input (no birnn-export metadata, bad sweep or tolerance
            options, a reference model that does not accept the graph's inputs, a case over
            the memory budget).
        EngineUnavailableError: a requested engine cannot run here (the message says why).

    Example:
        >>> report = verify("tagger.onnx", "tagger.pt", batch_sizes=(1, 4))  # doctest: +SKIP
        >>> report.raise_for_failure()  # doctest: +SKIP
    """
    from birnn_export.base_runner import forbid_tf32

    forbid_tf32()
    start = time.perf_counter()
    onnx_path = str(onnx_path)
    engines, batch_sizes, seq_lens = sweep_arguments(engines, batch_sizes, seq_lens)
    if not Path(onnx_path).is_file():
        raise BiRNNExportError(f"{onnx_path}: no such ONNX file")
    proto = load_onnx(onnx_path)
    refuse_data_outside(proto, onnx_path)  # ONNX Runtime would refuse it
    spec, foreign, model, load_options = read_spec(proto, onnx_path, model, like, load_options)
    if foreign is not None:  # torch.onnx.export's, say: matched with the model's inputs
        layers = False
        if load_inputs is None:  # saved inputs run at their own sizes
            batch_sizes, seq_lens = foreign.sizes(batch_sizes, seq_lens)
        # its rows cannot run alone at a batch it does not take
        batch_invariance = batch_invariance and foreign.fixed.get(spec.batch_dim, 1) == 1
    engines = tuple(dict.fromkeys(engines))
    if not engines:
        raise BiRNNExportError("engines: name at least one engine")
    check_overrides(spec, atol=atol, rtol=rtol)
    _check_files(save_inputs, save_outputs, load_inputs, load_outputs, model)
    notes: list[str] = list(foreign.notes) if foreign is not None else []
    if load_inputs is not None:
        sizes = {"--dim": dims, "--batch": batch_sizes, "--seq": seq_lens}
        given = [option for option, value in sizes.items() if value]
        if given:  # --batch and --seq were ignored without a word (users24)
            raise BiRNNExportError(
                f"{', '.join(given)}: saved inputs run at the sizes they were saved at; drop "
                f"{' and '.join(given)} with --load-inputs"
            )
        feeds_loaded = _interop.load_feeds(load_inputs)
        loaded_cases, cast = _loaded_cases(spec, feeds_loaded, _interop.load_cases(load_inputs))
        notes += cast
        cases = [c for c, _ in loaded_cases]
        # saved by someone else, they are held to the budget too (a million steps ran for
        # minutes at 4.5 GB)
        fit_budget(cases, proto, spec, memory_budget, True, instead="save smaller inputs")
        notes += past_declared(spec, [c.batch for c in cases], [c.seq for c in cases])
        feeds = dict(zip(range(len(cases)), (f for _, f in loaded_cases), strict=True))
    else:
        cases = plan_cases(
            spec,
            batch_sizes=batch_sizes,
            seq_lens=seq_lens,
            seed=seed,
            large_scale=large_scale,
            dims=dims,
        )
        explicit = batch_sizes is not None or seq_lens is not None
        cases, skipped = fit_budget(cases, proto, spec, memory_budget, explicit)
        notes += skipped + past_declared(spec, batch_sizes, seq_lens)
        feeds = {}
    found, stale = _graph_problems(proto, spec, foreign)
    problems = tuple(found)
    notes += stale
    notes += _nodes_without_lengths(proto, spec)
    notes += saturation_note(proto)

    golden = _interop.load_outputs(load_outputs) if load_outputs is not None else None
    fixed = atol is not None or rtol is not None
    if fp64_reference and not fixed:  # it was taken without a word (users24)
        raise BiRNNExportError(
            "fp64_reference: the default criterion runs the reference in float64 already; "
            "--fp64-reference goes with --atol/--rtol, drop it"
        )
    converted = ref_module = model_file = None
    sha = None
    if golden is None:
        from birnn_export._container import fed_as
        from birnn_export.checkpoint import LoadedModel, load_if_path

        decodes = any(t.role == "tags" for t in spec.outputs)
        model = load_if_path(model, load_options)
        converted, ref_module, how, sha = resolve_models(model, reference, decodes=decodes)
        model_file = model.path if isinstance(model, LoadedModel) else None
        # forward(batch) reading batch["ids"]: given the graph's inputs in the container
        fed = spec.container
        converted, ref_module = fed_as(converted, fed), fed_as(ref_module, fed)
        ref_module, layer_paths = reference_module(ref_module, spec)
        why_not64 = None if fixed and not fp64_reference else float64_fails(ref_module, spec)
        if why_not64 is not None:
            notes.append(
                f"{FLOAT64_FAILS} ({why_not64}): judged by fixed tolerances against it in "
                "float32 instead"
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
            f"{OTHER_FILE_NOTE} {spec.source_sha256[:12]}..., the "
            f"model given has {sha[:12]}...: they may not be the same weights"
        )
    per_engine = engine_criteria(spec, engines, fixed=fixed, atol=atol, rtol=rtol)
    criterion_text = (
        f"fixed tolerances against the reference in {ref_dtype}"
        if fixed
        else f"float64 reference; {NoiseCriterion().describe()} ({eager_dtype})"
    )
    quantized = [
        isinstance(next(iter(c.values()), None), QuantizedCriterion) for c in per_engine.values()
    ]
    if all(quantized):
        criterion_text = f"float64 reference; {QuantizedCriterion().describe()}"
    elif any(quantized):
        criterion_text += f"; {QuantizedCriterion().describe()}"

    hidden = None if golden is not None else root_bidirectional_hidden(converted, ref_module)
    probes = example_probes(spec, cases, dims or {}, seed + len(cases)) if not load_inputs else []
    profile = sweep_profile(
        cases + probes,
        batch_invariance=batch_invariance,
        declared=(spec.batch_range, spec.seq_range),
    )
    runners_ = {
        engine: _engine_runner(engine, onnx_path, converted, spec, profile, isolate=isolate)
        for engine in engines
    }
    references = None
    if golden is None:
        references = References(
            ref_module,
            spec,
            ref_dtype=ref_dtype,
            eager_dtype=eager_dtype,
            like=None if like is None else str(like),
            other_file=next((n for n in notes if n.startswith(OTHER_FILE_NOTE)), None),
        )
    layer_state = layer_setup(
        proto,
        spec,
        references,
        layer_paths,
        layers and golden is None,
        folder=os.path.dirname(os.path.abspath(onnx_path)),
    )

    results: list[CaseResult] = []
    saved: list[tuple[Case, dict[str, np.ndarray], dict[str, Any], bool]] = []
    providers: dict[str, tuple[str, ...]] = {}
    probed: list[tuple[Case, bool]] = []
    ran_cases: list[Case] = []  # each result's case
    weights = [c.batch * c.seq for c in cases for _ in range(1 + len(engines))]
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(Progress("verify", weights, progress))  # its thread ends too
        if references is not None:
            stack.enter_context(references)
        active = {e: stack.enter_context(r) for e, r in runners_.items()}
        providers = {e: tuple(r.providers()) for e, r in active.items()}
        # an int8 graph written before the export asked whether the model reads that padding
        zeroes = {e: _zeroes_padding(proto, spec, r) for e, r in active.items()}
        zeroed = references is not None and any(zeroes.values())
        if zeroed and not padding_unread(spec, references.reference_only):  # users48
            problems += (PADDING_ZEROED_BUT_READ,)
        try:

            def run(case: Case, feed: dict[str, np.ndarray], index: int = -1) -> bool:
                lengths = spec.feed_lengths(feed)
                if references is not None:
                    ran = references.run(feed, case)
                else:
                    ran = {
                        "reference": golden[ref_name][index],
                        "eager": golden[GOLDEN_EAGER][index] if eager_dtype else None,
                    }
                captured = case_layers(layer_state, references, ran, feed)
                bar.advance(f"B={case.batch} T={case.seq} reference")
                case_ok = True
                for engine, runner in active.items():
                    result = run_case(
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
                        layers=captured,
                        check_layers=engine == "ort-cpu" and spec.quantization is None,
                        layer_criterion=layer_tolerance(spec.dtype, atol, rtol) if fixed else None,
                        reference=references.reference_only if references else None,
                        derived_lengths=last_lengths(spec, captured),
                        tolerance_given=atol is not None or rtol is not None,
                        zeroes_padding=zeroes[engine],
                    )
                    results.append(result)
                    ran_cases.append(case)
                    case_ok = case_ok and result.passed
                    bar.advance(f"B={case.batch} T={case.seq} {engine}")
                saved.append((case, feed, ran, case_ok))
                return case_ok

            bar.restart()  # the sweep's own time, sessions started
            for index, case in enumerate(cases):
                feed = feeds[index] if load_inputs is not None else case_feed(spec, case)
                run(case, feed, index)
            if references is not None and not all(r.passed for r in results):
                bar.extend([c.batch * c.seq for c in probes for _ in range(1 + len(engines))])
                probed = [(case, run(case, case_feed(spec, case))) for case in probes]
        finally:
            if layer_state.graph is not None:
                layer_state.graph.close()
    results = blame_untraced(results + sweep_checks(results, per_engine, seed), spec)
    results = blame_fixed_dims(results, ran_cases, spec, probed)
    results = advise_over_the_sweep(blame_one_step(results, ran_cases, spec))
    if foreign is not None:  # its layers are not compared: what its nodes show, if anything
        results = blame_short_rows(results, proto, spec)
    notes += batch_dependence_note(results) + drift_note(results)
    notes += [entry["note"] for entry in spec.assumed]  # as the export said it (review43 F7)
    assumed_away = None
    if spec.assumed and not all(r.passed for r in results):
        from birnn_export._guards import from_record

        assumed = [from_record(entry) for entry in spec.assumed]
        assumed_away = failing_where_assumed(results, spec, assumed)
    notes += undeclared_ctc_note(results, per_engine)
    # features, not a float mask beside token ids (their ids are drawn as the model's)
    floats = any(t.role == "features" and t.dtype.startswith("float") for t in spec.inputs)
    if load_inputs is None and floats and (spec.quantization == INT8 or "ort-int8" in engines):
        notes.append(SWEEP_INPUTS_NOTE)
    # int8 nodes are renamed: the layers were not compared, and need no note
    if spec.quantization is None:
        if layer_state.reason is not None and layers and golden is None:
            notes.append(f"recurrent layers not compared one by one: {layer_state.reason}")
        elif references is not None and references.layer_reason is not None:
            notes.append(f"recurrent layers not compared one by one: {references.layer_reason}")
        if golden is None:
            notes += scores_note(proto, results, layer_state, engines)

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
            if foreign is not None and like is None:  # without the model (review27 L5)
                notes.append(
                    f"the saved outputs replay without the model only with --like: this graph "
                    "does not say what its inputs are (verify it with --load-inputs "
                    f"{saved_inputs} --load-outputs {saved_outputs_path} --like, and a graph "
                    "birnn-export wrote from the model)"
                )
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
        model_file=None if model_file is None else str(model_file),
        model_sha256=sha,
        loaded_inputs=None if load_inputs is None else str(load_inputs),
        loaded_outputs=None if load_outputs is None else str(load_outputs),
        assumed_away=assumed_away,
    )


def _check_files(
    save_inputs: Any, save_outputs: Any, load_inputs: Any, load_outputs: Any, model: Any
) -> None:
    for option, path in (("save_inputs", save_inputs), ("save_outputs", save_outputs)):
        if path is not None:
            _interop.check_format(option, path)
            check_output_path(option, path)
    if save_outputs is not None:  # refused after the whole sweep ran (users42)
        _interop.check_outputs_format(save_outputs)
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
    # eager's outputs are the noise floor in the graph's precision: a float16 graph's are 100x
    # a float32 graph's, and a defective float32 graph passed against them (users42)
    declared = {t.name: t.dtype for t in spec.outputs}
    for out in golden.get(GOLDEN_EAGER, ())[:1]:
        for name, value in out.items():
            dtype = str(np.asarray(value).dtype)
            if np.issubdtype(np.asarray(value).dtype, np.floating) and dtype != declared[name]:
                raise BiRNNExportError(
                    f"load_outputs: eager's output {name!r} is {dtype}, the graph's "
                    f"{declared[name]}: saved verifying another graph (another --dtype), and "
                    "eager's error in another precision is no measure for this one; save them "
                    "from this graph's verify (--save-outputs)"
                )
