"""Tracing a model to an ONNX graph with truly dynamic batch and sequence axes, and checking it.

:func:`trace_graph` converts built-in recurrent layers, traces the model with
``torch.onnx.export(dynamo=True)`` and symbolic ``batch`` / ``seq`` dims, and emits each recurrent
layer as ONNX ``LSTM`` / ``GRU`` / ``RNN`` nodes (see :mod:`birnn_export.modules`). The graph is
then edited where engines need it (:mod:`birnn_export._rewrites`), its contract
(:class:`~birnn_export.spec.GraphSpec`) stored in ``metadata_props`` and checked
(:mod:`birnn_export._graph`: full ``onnx.checker``, strict shape inference, example sizes baked
into shapes). :func:`birnn_export.export_onnx` (:mod:`birnn_export.pipeline`) writes it beside
the output, verifies it on ONNX Runtime at shapes unlike the example and only then moves it into
place.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import dataclasses
import functools
import inspect
import logging
import os
import re
import sys
import textwrap
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from birnn_export._container import (
    KEYWORDS,
    Container,
    container_kind,
    discover,
    fed_as,
    forward_param,
)
from birnn_export._files import save_onnx
from birnn_export._graph import (
    build_spec,
    named_layers,
    raise_for_problems,
    reconstruction_notes,
    set_metadata,
)
from birnn_export._guards import Dim, Untraced, recorded_within, untraced_sizes
from birnn_export._inputs import (
    PlannedInputs,
    first_leaf,
    keyword_mask,
    mask_dim,
    param_role,
    plan_inputs,
    read_by_embedding,
    watch_embeddings,
    with_longer_example,
    with_token_ranges,
)
from birnn_export._packed import pack_recurrent_nodes
from birnn_export._packing import PackingSwap, any_order_packing
from birnn_export._process import quiet_here
from birnn_export._rewrites import (
    clean_nodes,
    drop_noop_squeezes,
    guard_empty_batch,
    sink_batch_transposes,
)
from birnn_export._scan import scan_lstmp_nodes, scan_rnn_nodes
from birnn_export._version import __version__
from birnn_export.conversion import (
    Replacement,
    conversion_report,
    convert,
    copied,
    find_recurrent_layers,
    modes_kept,
    reserve_hook_ids,
)
from birnn_export.crf import (
    HAND_WRITTEN_HINT,
    crfs_that_run,
    expand_viterbi,
    flatten_returned,
    recorded_decodes,
)
from birnn_export.errors import BiRNNExportError, ExportError
from birnn_export.models import SequenceTagger
from birnn_export.modules import (
    BiRNN,
    TracedPack,
    onnx_weight_constants,
    padding_mask,
    state_names,
)
from birnn_export.spec import (
    DEFAULT_BATCH_RANGE,
    DEFAULT_SEQ_RANGE,
    LAYOUTS,
    MASK_ROLES,
    MAX_UNTRACED,
    RECURRENT_OPS,
    RELATIVE_LENGTHS,
    GraphSpec,
    InputDecl,
    batch_not_first_note,
    check_range,
    ctc_shaped,
    onnx_bytes,
    stamp_ir_version,
    takes_lengths,
    unread_inputs,
)

#: Opset written when none is asked for: the exporter's own (torchlib) opset, which TensorRT 10
#: and ONNX Runtime >= 1.14 both import.
DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(18, 24)
#: The layout chosen per cell type when none is asked for, by measurement on ONNX Runtime CPU
#: (README, "Graph layouts"; ``scripts/bench_graph_forms.py``): for LSTM and GRU split, fused
#: and the stock export tie within noise, and packed wins only on ragged batches of 8 rows or
#: more (it is 0.75x to 0.99x at B = 1), so split is kept; for plain RNN (I = H = 256) the Scan
#: loop was 1.05x to 1.7x as fast as the best of fused and the stock export in all 9 shapes
#: (B = 1, 8, 32 x T = 16, 100, 400).
DEFAULT_LAYOUTS = {"lstm": "split", "gru": "split", "rnn_tanh": "scan", "rnn_relu": "scan"}
#: Below this hidden size a plain RNN's loop costs more per step than it saves: at I = H = 32
#: and 64, T = 100, 2 threads, its Scan took 3x the fused node's time at B = 1 (and 1.4x-3x at
#: B = 8; users57 F1), at 128 1.3x at B = 1 and 0.8x at B = 8 and 32: smaller RNN layers are
#: written split, as LSTM and GRU are.
SCAN_MIN_HIDDEN = 128
#: An LSTM with proj_size is a Scan loop in every layout; fused batches both directions' steps
#: into one loop, 1.08x to 1.28x as fast as split's two (README, LSTMP).
PROJECTED_LAYOUT = "fused"
#: The layout of a model whose layers' cells choose differently.
DEFAULT_LAYOUT = "split"
DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: ONNX protobuf limit: above it, weights go to an external data file beside the model.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2


@dataclass(frozen=True)
class TracedGraph:
    """A model traced to a checked ONNX graph, still in memory: what
    :func:`birnn_export.export_onnx` writes, verifies and moves into place.

    ``model`` is the converted module that was traced, ``reference`` the one verification
    compares against; ``inputs`` says how the graph's inputs came about.
    """

    proto: Any
    spec: GraphSpec
    model: nn.Module
    reference: nn.Module
    replaced: tuple[Replacement, ...]
    inputs: str
    #: Sizes of the model's own layers, and its hand-written CRF heads: what the checks of a
    #: graph over 2 GB, made on the saved file, need.
    sizes: frozenset[int]
    crfs: tuple[Any, ...]
    #: Where the model's code fixed a size to the example's number (:func:`_fixed_sizes`).
    fixed_at: Mapping[int, str]
    #: Over protobuf's 2 GB limit: the weights go to an external data file (measured once:
    #: :func:`~birnn_export.spec.onnx_bytes` walks every tensor).
    large: bool
    #: What the graph is beside what was asked for (a layout with nothing to rewrite, float32
    #: islands in a float16 graph), one sentence each.
    notes: tuple[str, ...] = ()
    #: Where torch.export assumed the model takes the traced branch, each in words
    #: (:func:`assumptions`).
    assumed: tuple[tuple[Untraced, str], ...] = ()

    def save(self, path: Path) -> None:
        """Write the graph to ``path`` (with its external data when :attr:`large`); a large
        graph's structural checks run here, on the file, and a failure leaves the written
        files in place (:func:`birnn_export.export_onnx` saves into a staging folder)."""
        save_onnx(self.proto, path, external=self.large)
        if self.large:
            raise_for_problems(path, self.spec, set(self.sizes), list(self.crfs), self.fixed_at)


def trace_graph(
    model: nn.Module,
    *,
    example_inputs: Sequence[Tensor] | None = None,
    inputs: Sequence[str | InputDecl] | None = None,
    ranges: Mapping[str, Sequence[int]] | None = None,
    opset: int | None = None,
    layout: str | None = None,
    lengths: bool | None = None,
    input_size: int | None = None,
    dtype: str = "float32",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    reference: nn.Module | None = None,
    config: dict[str, Any] | None = None,
    source_sha256: str | None = None,
    batch_range: Sequence[int] = DEFAULT_BATCH_RANGE,
    seq_range: Sequence[int] = DEFAULT_SEQ_RANGE,
    scores: Sequence[str] | None = None,
    ctc: Mapping[str, int] | Sequence[str] | None = None,
) -> TracedGraph:
    """Trace ``model`` to an ONNX graph with symbolic ``batch`` and ``seq`` axes and check it:
    the graph :func:`birnn_export.export_onnx` writes, with these keyword arguments.

    Args:
        model: Any module holding ``BiRNN`` layers or torch's built-in ``nn.RNN/LSTM/GRU``
            (converted first, on a copy).
        example_inputs: Tensors for tracing; may be omitted for
            :class:`~birnn_export.models.SequenceTagger`, for models that start with an
            ``nn.Embedding`` or a batch-first ``BiRNN``, and whenever ``inputs`` are declared.
            Without ``inputs`` they are taken as ``[batch, seq, ...]`` (and ``lengths``).
        inputs: The graph's inputs, declared: ``"NAME:DTYPE[DIM,...]"`` each (a name for a
            dynamic dim, a number for a fixed one; the batch dim is ``batch``), and
            ``":lengths(DIM)"`` after a lengths input, e.g.
            ``["feats:float32[batch,40,time]", "feat_lens:int64[batch]:lengths(time)"]``.
        ranges: (min, opt, max) per named dim, e.g. ``{"width": (32, 256, 1024)}``: the
            TensorRT profile, verification's lengths, and the bounds the model is traced for
            (``batch`` and the time dim default to ``batch_range`` / ``seq_range``).
        opset: ONNX opset, default :data:`DEFAULT_OPSET`, within :data:`SUPPORTED_OPSETS`.
        layout: ``"fused"``: one ``direction="bidirectional"`` node per layer with
            ``sequence_lens``; ``"split"``: two forward nodes, the second between two
            ``ReverseSequence`` nodes; ``"scan"``: as fused, with every ``RNN`` node written
            as an exact ``Scan`` loop (:mod:`birnn_export._scan`; LSTM and GRU nodes stay);
            ``"packed"``: as scan, with every LSTM and GRU node that takes lengths running
            only the rows still going, as torch does on a PackedSequence
            (:mod:`birnn_export._packed`: faster for ragged batches on ONNX Runtime's CPU,
            slower at B = 1); without a lengths input it is the scan graph.
            Default: by cell type (:data:`DEFAULT_LAYOUTS`).
        lengths: Whether the model's second input is ``lengths`` [batch]; ``None`` infers it from
            the configuration or the name of ``forward``'s second parameter.
        input_size: Feature size of a float ``[batch, seq, input_size]`` first input, for
            models whose first layer does not tell (a ``Conv1d`` front-end, say).
        dtype: ``"float32"`` or ``"float16"`` (an fp16 graph, as TensorRT 11 needs for fp16).
        input_names: Graph input names; default ``x`` (or ``ids`` for token ids) and ``lengths``.
        output_names: Graph output names; default ``output`` (plus ``h_n``/``c_n`` for a bare
            layer).
        reference: The module verification compares against (e.g. the original model with
            built-in layers); default ``model`` itself.
        config: Model configuration to record in the metadata.
        source_sha256: Hash of the model file, recorded in the metadata.
        batch_range: (min, opt, max) batch sizes the graph will serve, recorded in its spec:
            the default TensorRT optimisation profile (``trt``, ``ort-trt``). The graph itself
            takes any batch size.
        seq_range: (min, opt, max) of the time dim (``seq``, or the declared one), likewise;
            verification also runs at the maximum.
        scores: The outputs that hold class scores (an int8 graph must keep their top-1),
            recorded in the graph; ``()`` for none (an encoder's projection, a regression).
            Default: each output a linear head makes.
        ctc: The outputs that hold CTC scores along time (``[batch, time, classes]``, in any
            order of the first two), recorded in the graph: their greedy decodes are what an
            int8 graph is judged by. Names (blank 0) or ``{name: blank}``.

    Raises:
        ExportError: the model cannot be exported or the graph failed a structural check.
    """
    options = dict(
        example_inputs=example_inputs,
        inputs=inputs,
        ranges=ranges,
        opset=opset,
        layout=layout,
        lengths=lengths,
        input_size=input_size,
        dtype=dtype,
        input_names=input_names,
        output_names=output_names,
        reference=reference,
        config=config,
        source_sha256=source_sha256,
        batch_range=batch_range,
        seq_range=seq_range,
        scores=scores,
        ctc=ctc,
    )
    for module in (model, reference):
        if isinstance(module, nn.Module):  # before any probe hook is registered on it
            reserve_hook_ids(module)
    with modes_kept(model, reference):  # traced in eval mode; the caller's modes come back
        try:
            return _trace_graph(model, **options, avoid=frozenset())
        except _BakedExample as exc:
            # A size the model's own code holds (zeros(B, T, 7)) may be an example's too:
            # traced at other sizes, a size truly frozen at the example's fails there as well,
            # and the first failure, at the sizes the message names, is the one to tell.
            try:
                return _trace_graph(model, **options, avoid=exc.examples)
            except ExportError:
                raise ExportError(str(exc)) from None


#: A model in float64 (``model.double()``), traced from a copy in float32 as ``load_model``
#: loads float64 weights; verification compares with the model itself.
_FLOAT64_NOTE = (
    "the model's weights are float64 (model.double()): the graph is {dtype}, traced from a "
    "{dtype} copy of them, and is verified against the model itself"
)


class _BakedExample(ExportError):
    """A graph with an example's size baked into a shape; ``examples``: those sizes."""

    def __init__(self, message: str, examples: frozenset[int]) -> None:
        super().__init__(message)
        self.examples = examples


def _trace_graph(
    model: nn.Module,
    *,
    example_inputs: Sequence[Tensor] | None,
    inputs: Sequence[str | InputDecl] | None,
    ranges: Mapping[str, Sequence[int]] | None,
    opset: int | None,
    layout: str | None,
    lengths: bool | None,
    input_size: int | None,
    dtype: str,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    reference: nn.Module | None,
    config: dict[str, Any] | None,
    source_sha256: str | None,
    batch_range: Sequence[int],
    seq_range: Sequence[int],
    scores: Sequence[str] | None,
    ctc: Mapping[str, int] | Sequence[str] | None,
    avoid: frozenset[int],
) -> TracedGraph:
    """:func:`trace_graph`, tracing at example sizes none of ``avoid``."""
    opset = DEFAULT_OPSET if opset is None else opset
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(
            f"opset: {opset} is not supported; choose {SUPPORTED_OPSETS.start}-"
            f"{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})"
        )
    if layout is not None and layout not in LAYOUTS:
        raise ExportError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if dtype not in DTYPES:
        raise ExportError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if isinstance(scores, str):  # refused before the trace, as the other options' types are
        raise ExportError(
            f"scores: a list of output names, e.g. [{scores!r}], or [] for none; got the "
            f"string {scores!r}"
        )
    blanks = _ctc_blanks(ctc)
    try:
        batch_range = check_range("batch_range", batch_range)
        seq_range = check_range("seq_range", seq_range)
    except BiRNNExportError as exc:
        raise ExportError(str(exc)) from None

    replaced = tuple(conversion_report(model))
    converted = convert(model).eval() if replaced else model.eval()
    if not replaced and reference is not None and reference is not model:
        replaced = tuple(conversion_report(reference))  # converted when loaded (load_model)
    # A bare built-in layer cannot take lengths; its converted copy is proven equal to it on
    # PackedSequence input (tests/test_modules.py), so it serves as the reference.
    if reference is None:
        reference = converted if isinstance(model, nn.RNNBase) else model
    reference = reference.eval()
    doubled = any(p.dtype == torch.float64 for p in converted.parameters())
    if doubled:  # model.double(): it failed on float32 inputs, the advice no help (users50 F2)
        converted = _copy_to(converted, torch.float32)  # the reference stays in float64
    layers = [m for _, m in find_recurrent_layers(converted) if isinstance(m, BiRNN)]
    kernel_call = _direct_kernel(converted)
    if kernel_call:
        raise ExportError(kernel_call)
    if layout is None:
        layout = default_layout(layers)
    if config is None and isinstance(converted, SequenceTagger):
        config = converted.config.to_dict()

    sizes = _model_sizes(converted) | avoid
    plan = functools.partial(
        plan_inputs,
        inputs=inputs,
        example_inputs=example_inputs,
        lengths=lengths,
        input_size=input_size,
        input_names=input_names,
        ranges=ranges,
        batch_range=batch_range,
        seq_range=seq_range,
        taken=sizes,
    )
    container, planned = _fed_inputs(converted, inputs, example_inputs, plan)
    if container is not None:  # forward(batch) reads batch["x"]: fed the graph's inputs so
        converted, reference = fed_as(converted, container), fed_as(reference, container)
    else:
        planned = plan(converted)
    if _guessed_nesting(planned) and not _runs_quietly(converted, planned.tensors):
        with contextlib.suppress(ExportError):  # no flat reading either: the guess's failure
            flat = plan(converted, nest=False)
            if _runs_quietly(converted, flat.tensors):
                planned = flat  # characters of their own ([batch, char_seq]), not per word
    if _may_be_time_major(converted, planned) and not _runs_as_planned(converted, planned):
        swapped = plan(converted, time_major=True)
        if _runs_as_planned(converted, swapped):
            planned = swapped
    first = first_leaf(converted)
    if (
        planned.how.startswith("inferred")
        and first is not None
        and not _runs_quietly(converted, planned.tensors)
        and not _calls(converted, first, planned.tensors)
    ):  # a module registered first that forward never runs (Flair's embeddings)
        with contextlib.suppress(ExportError):
            other = plan(converted, unused=(first,))
            if _runs_quietly(converted, other.tensors):
                planned = other
    if _inferred_bool_masks(planned) and not _runs_quietly(converted, planned.tensors):
        floats = _float_masks(planned)  # a model that computes with its masks (1 - mask)
        if _runs_quietly(converted, floats.tensors):
            planned = floats
    target = DTYPES[dtype]
    traced = converted if target == torch.float32 else _copy_to(converted, target)
    with recorded_decodes(traced) as decodes:  # a CRF's, made in forward too
        ran = _example_run(traced, planned, target)
    if example_inputs is None:
        planned, ran = _steps_past_one(traced, planned, ran, target, sizes)
    trace_inputs, returned, eager_out, seen, _ = ran
    planned = with_token_ranges(planned, trace_inputs, seen)
    inputs = {d.name for d in planned.decls}
    outs = list(
        output_names or _default_output_names(traced, returned, eager_out, inputs, bool(decodes))
    )
    if len(outs) != len(eager_out):
        raise ExportError(
            f"output_names: {len(outs)} name{'s' * (len(outs) != 1)} for {len(eager_out)} "
            "model outputs "
            f"({_returned_shape(returned)}); give one name per tensor, in that order"
        )
    taken = next((n for n in outs if n in inputs or outs.count(n) > 1), None)
    if taken is not None:
        what = "an input's name" if taken in inputs else "given twice"
        raise ExportError(f"output_names: {taken!r} is {what}; each output needs its own name")

    # scan and packed: the fused graph, then its nodes rewritten
    emitted = "fused" if layout in ("scan", "packed") else layout
    # hand-written CRFs whose code forward runs (decoded outside it, a CRF is no cause)
    crfs = crfs_that_run(traced, lambda: _runs_or_raises(traced, trace_inputs))
    traced_at = {  # each named dim's size in the example
        dim: int(tensor.shape[axis])
        for decl, tensor in zip(planned.decls, trace_inputs, strict=False)
        for axis, dim in enumerate(decl.dims)
        if isinstance(dim, str)
    }
    proto, cut, fixed_at, untraced, padded_with = _trace(
        traced, trace_inputs, planned, outs, opset, emitted, crfs, traced_at
    )
    free = [d for decl in planned.decls for d in decl.dims if isinstance(d, str)]
    declared = planned.how == "declared"
    drop_noop_squeezes(proto, {d for d in free if d != planned.batch_dim} if declared else ())
    recurrent = [n for n in proto.graph.node if n.op_type in {*RECURRENT_OPS, "LSTMP"}]
    lengths_fed = bool(recurrent) and all(  # every one, before the layouts rewrite them
        takes_lengths(n) for n in recurrent
    )
    _tidy_dims(proto)
    if cut:  # the model cut a padded output to its longest row
        longest = _longest_rows(planned, trace_inputs)
        _name_longest_dims(proto, planned, longest, [tuple(t.shape) for t in eager_out])
    _outputs_in_eager_dtypes(proto, eager_out)
    tags = expand_viterbi(proto)
    if not tags:  # a CRF held for its loss, decoded outside forward
        replaced = tuple(dataclasses.replace(r, decoded=r.cell != "crf") for r in replaced)
    clean_nodes(proto)
    scan_lstmp_nodes(proto)  # LSTMs with proj_size: no ONNX op, a loop in every layout
    if target == torch.float16:
        sink_batch_transposes(proto)
    spec = build_spec(proto, planned, converted, layers, tags, padded_with)
    if scores is not None:
        spec = _with_scores(spec, scores)
    if blanks:
        spec = _with_ctc(spec, blanks, scores)
    asked, notes = layout, []
    rnn_islands = _float32_nodes(proto, dtype, ("RNN",))  # before scan writes them as loops
    if layout in ("scan", "packed"):
        cells = any(n.op_type in ("LSTM", "GRU") for n in proto.graph.node)
        try:  # packed: LSTM and GRU nodes packed, RNN nodes as loops (faster than packed)
            packed = pack_recurrent_nodes(proto) if layout == "packed" else 0
            looped = scan_rnn_nodes(proto)
        except ValueError as exc:  # a node the rewrite cannot express exactly: say which
            raise ExportError(f"layout {layout}: {exc}; use --layout fused") from None
        layout = "packed" if packed else "scan" if looped else "fused"
        if layout != asked:
            notes.append(_layout_note(asked, layout, cells))
    looped = rnn_islands if layout in ("scan", "packed") else collections.Counter()
    notes += _float32_islands(proto, dtype, looped) + _unread_inputs(proto)
    notes += [_FLOAT64_NOTE.format(dtype=dtype)] * doubled
    if not layers:  # exported all the same, as torch.onnx.export would (users50)
        notes.append(
            "the model holds no recurrent layer (nn.RNN, nn.LSTM, nn.GRU or BiRNN): nothing in "
            "the graph is birnn-export's own"
        )
    notes += [] if scores is not None else reconstruction_notes(proto, spec)
    told = assumptions(untraced, planned)
    said = _untraced_notes(told, traced_at)
    notes += said
    notes += _unrolled_cells_notes(traced, trace_inputs)
    notes += _unembedded_notes(planned, spec, unread_inputs(proto.graph))
    notes += batch_not_first_note(spec)
    points = list(  # each point once, in the order found
        dict.fromkeys(tuple(point.items()) for u in untraced for point in u.examples(traced_at))
    )
    if len(points) > MAX_UNTRACED:
        notes.append(
            f"{len(points)} sizes where the model may take another branch; the first "
            f"{MAX_UNTRACED} are recorded for verification to run"
        )
    guard_empty_batch(proto, spec)
    spec = dataclasses.replace(
        spec,
        layout=layout,
        dtype=dtype,
        opset=opset,
        config=config,
        tool_version=__version__,
        source_sha256=source_sha256,
        container=container.to_dict() if container is not None else None,
        untraced=tuple(dict(p) for p in points[:MAX_UNTRACED]),
        assumed=recorded_within(told, said),
    )
    stamp_ir_version(proto)
    set_metadata(proto, spec, lengths_fed)
    graph = TracedGraph(
        proto=proto,
        spec=spec,
        model=converted,
        reference=reference,
        replaced=replaced,
        inputs=planned.how,
        sizes=frozenset(sizes),
        crfs=tuple(crfs),
        fixed_at=fixed_at,
        large=onnx_bytes(proto) > EXTERNAL_DATA_THRESHOLD,
        notes=tuple(notes),
        assumed=tuple(told),
    )
    # Over protobuf's 2 GB limit the checks read the saved file and its external data.
    if not graph.large:
        try:
            raise_for_problems(proto, spec, graph.sizes, graph.crfs, fixed_at)
        except ExportError as exc:  # a length baked in by a cell loop: say what to do
            message = cells = str(exc)
            if _loop_count_follows(traced, trace_inputs, planned, sizes, target):
                message = cells = _cell_loop(traced, trace_inputs) or message
            if planned.how.startswith("inferred") and _INVALID_GRAPH.search(message):
                # a model traced on inputs of another shape than it takes (squeeze(1) on
                # [N, 1, T, F] given [N, T, F]) can make a graph ONNX cannot type
                message += f"; its inputs were {planned.how}: {_declare_hint(planned)}"
            # no cause named yet (a line of the model, a cell's loop): it may be a literal
            told = cells != str(exc) or re.search(r"the model (fixes|cannot vary) it", message)
            if "baked into its" in message and not told and example_inputs is None and not avoid:
                raise _BakedExample(message, frozenset(planned.examples.values())) from None
            raise ExportError(message) from None
    return graph


def _with_scores(spec: GraphSpec, scores: Sequence[str]) -> GraphSpec:
    """``spec`` with exactly the outputs ``scores`` names marked as class scores."""
    names = [t.name for t in spec.outputs]
    unknown = next((n for n in scores if n not in names), None)
    if unknown is not None:
        raise ExportError(
            f"scores: {unknown!r} is not an output of the graph ({', '.join(names)}); name "
            "outputs as --output-names does, or 'none'"
        )
    outputs = tuple(dataclasses.replace(t, classes=t.name in scores) for t in spec.outputs)
    return dataclasses.replace(spec, outputs=outputs)


def _ctc_blanks(ctc: Mapping[str, int] | Sequence[str] | None) -> dict[str, int]:
    """``ctc`` as ``{output: blank}`` (names alone: blank 0), refused before the trace where it
    is neither."""
    if ctc is None:
        return {}
    blanks: dict[Any, Any] | None = None
    if isinstance(ctc, Mapping):
        blanks = dict(ctc)
    elif isinstance(ctc, Sequence) and not isinstance(ctc, str):
        blanks = dict.fromkeys(ctc, 0)
    if blanks is None or not all(
        isinstance(n, str) and type(b) is int and b >= 0 for n, b in blanks.items()
    ):
        raise ExportError(
            f"ctc: a list of output names (blank 0), e.g. ['log_probs'], or {{name: blank}}; "
            f"got {ctc!r}"[:300]
        )
    return blanks


def _with_ctc(
    spec: GraphSpec, blanks: Mapping[str, int], scores: Sequence[str] | None
) -> GraphSpec:
    """``spec`` with the outputs ``blanks`` names declared CTC scores (and class scores)."""
    outputs = {t.name: t for t in spec.outputs}
    for name, blank in blanks.items():
        tensor = outputs.get(name)
        if tensor is None:
            raise ExportError(
                f"ctc: {name!r} is not an output of the graph ({', '.join(outputs)}); name "
                "outputs as --output-names does"
            )
        if scores is not None and name not in scores:
            raise ExportError(
                f"ctc: {name!r} holds class scores, which --scores does not name: name it there "
                "too, or leave --scores out"
            )
        if (
            tensor.batch_axis is None
            or tensor.time_axis is None
            or not ctc_shaped(tensor.dims, blank)
        ):
            raise ExportError(
                f"ctc: {name!r} (dims {list(tensor.dims)}) is not [batch, time, classes] scores "
                f"with a class {blank} for the blank: name the output of the CTC head, and its "
                "blank as --ctc NAME=BLANK"
            )
        outputs[name] = dataclasses.replace(tensor, classes=True, ctc_blank=blank)
    return dataclasses.replace(spec, outputs=tuple(outputs.values()))


def default_layout(layers: Sequence[BiRNN]) -> str:
    """The layout :data:`DEFAULT_LAYOUTS` gives the layers' cell type (:data:`PROJECTED_LAYOUT`
    for an LSTM with ``proj_size``; split for an RNN narrower than :data:`SCAN_MIN_HIDDEN`;
    :data:`DEFAULT_LAYOUT` for mixed choices or none)."""
    chosen = {
        PROJECTED_LAYOUT
        if layer.proj_size
        else DEFAULT_LAYOUT
        if layer.cell.startswith("rnn") and layer.hidden_size < SCAN_MIN_HIDDEN
        else DEFAULT_LAYOUTS[layer.cell]
        for layer in layers
    }
    return chosen.pop() if len(chosen) == 1 else DEFAULT_LAYOUT


# -- inputs ------------------------------------------------------------------------------------


def _model_sizes(model: nn.Module) -> set[int]:
    """Sizes that may legitimately appear as static dims: parameter dims, layer and direction
    counts, and small numbers (ranks, gate counts)."""
    sizes = set(range(7)) | {int(d) for p in model.parameters() for d in p.shape}
    for layer in model.modules():
        if isinstance(layer, BiRNN):
            sizes |= {layer.num_layers, layer.num_layers * layer.num_directions}
    return sizes


def _default_output_names(
    model: nn.Module,
    returned: Any,
    outputs: Sequence[torch.Tensor],
    inputs: set[str],
    decodes: bool,
) -> list[str]:
    """Names for the graph's outputs: a dict's keys or a NamedTuple's fields, ``tags`` for a
    CRF tagger's one output (``decodes``: forward ran a CRF's decode), ``output`` (and its
    states for a bare layer), else ``output_0``, ``output_1``..."""
    count = len(outputs)
    keys = None
    if isinstance(returned, dict) and all(isinstance(k, str) and k for k in returned):
        keys = [k for k, v in returned.items() if v is not None]  # a dict of tensors: its keys
    elif isinstance(returned, tuple) and hasattr(returned, "_fields"):
        fields = zip(returned._fields, returned, strict=True)  # a NamedTuple: its fields
        keys = [k for k, v in fields if v is not None]
    if keys is not None and len(keys) == count:
        # a key that names an input too (a model returning its lengths): a name of its own
        taken = set(keys) | inputs
        names = []
        for key in keys:
            name = key
            if key in inputs:
                name, i = f"{key}_out", 1
                while name in taken:
                    name, i = f"{key}_out_{i}", i + 1
                taken.add(name)
            names.append(name)
        return names
    if isinstance(model, BiRNN):
        return ["output", *state_names(model.cell)]
    if count == 1 and not outputs[0].is_floating_point() and decodes:
        return ["tags"]  # a CRF tagger returns its decode (not its emissions, decoded outside)
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _returned_shape(value: Any) -> str:
    """What ``forward`` returned, as nesting: ``(tensor, (tensor, tensor))``."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_returned_shape(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_returned_shape(v) for v in value) + ")"
    return "None" if value is None else "tensor"


def _copy_to(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    return copied(model).to(dtype)


def _cast_floats(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _flatten(value: Any) -> list[Tensor]:
    leaves = flatten_returned(value)
    other = next((leaf for leaf in leaves if not isinstance(leaf, Tensor)), None)
    if other is not None:
        raise ExportError(
            f"the model returned a {type(other).__name__}; only tensors (in tuples, lists and "
            "dicts) export"
        )
    return leaves


# -- tracing -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _onnx_settings(model: nn.Module, layout: str) -> Iterator[None]:
    """For one export, every BiRNN in ``model`` emits ``layout`` and names its nodes after its
    module path."""
    named = named_layers(model)
    saved = [(layer.onnx_layout, layer.onnx_name) for _, layer in named]
    for path, layer in named:
        layer.onnx_layout, layer.onnx_name = layout, path  # type: ignore[assignment]
    try:
        yield
    finally:
        for (_, layer), (old_layout, old_name) in zip(named, saved, strict=True):
            layer.onnx_layout, layer.onnx_name = old_layout, old_name


class _ExampleRun(NamedTuple):
    """The model run on the example inputs: the inputs in the graph's dtype, what it returned
    (as it is and flattened), the Embeddings' reads and the steps each recurrent layer read."""

    inputs: tuple[Tensor, ...]
    returned: Any
    outputs: list[Tensor]
    embeddings: list[tuple[nn.Embedding, Tensor]]
    steps: list[tuple[str, int]]


def _example_run(
    model: nn.Module, planned: PlannedInputs, dtype: torch.dtype, *, warn: bool = True
) -> _ExampleRun:
    inputs = tuple(_cast_floats(t, dtype) for t in planned.tensors)
    with watch_embeddings(model) as seen, _recurrent_steps(model) as steps:
        returned, outputs = _run_example(model, inputs, planned, warn=warn)
    return _ExampleRun(inputs, returned, outputs, seen, steps)


def _steps_past_one(
    model: nn.Module,
    planned: PlannedInputs,
    ran: _ExampleRun,
    dtype: torch.dtype,
    taken: set[int],
) -> tuple[PlannedInputs, _ExampleRun]:
    """Inputs whose example gives the recurrent layers more than one step where they can have.

    A strided front end (EasyOCR's CNN maps width W to W // 4 - 1 steps) can make a short
    example one step long, and torch.export fixes a size of 1: the export failed saying the
    model could not vary the width. The example grows (at least doubling) once, and the longer
    one is kept where a layer that read one step reads more; a layer that reads one step
    whatever the length (a decoder step, an LSTM over a pooled summary) keeps the first.
    """
    ones = {layer for layer, steps in ran.steps if steps == 1}
    longer = with_longer_example(planned, taken) if ones else None
    if longer is None:
        return planned, ran
    try:
        again = _example_run(model, longer, dtype, warn=False)  # the first run showed them
    except ExportError:  # a size the model refuses: keep the first example
        return planned, ran
    still = {layer for layer, steps in again.steps if steps == 1}
    return (longer, again) if still < ones else (planned, ran)


@contextlib.contextmanager
def _recurrent_steps(model: nn.Module) -> Iterator[list[int]]:
    """``(path, steps)`` of every ``BiRNN`` call in ``model`` while inside (a packed input's
    steps: its longest row)."""
    steps: list[tuple[str, int]] = []
    paths = {id(m): path for path, m in model.named_modules() if isinstance(m, BiRNN)}

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if isinstance(x, PackedSequence):
            steps.append((paths[id(module)], len(x.batch_sizes)))
        elif isinstance(x, Tensor) and x.dim() == 3:
            steps.append((paths[id(module)], int(x.shape[1 if module.batch_first else 0])))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, BiRNN)]
    try:
        yield steps
    finally:
        for hook in hooks:
            hook.remove()


def _run_example(
    model: nn.Module, inputs: tuple[Tensor, ...], planned: PlannedInputs, *, warn: bool = True
) -> tuple[Any, list[Tensor]]:
    """What the model returns on the example inputs, as it is and flattened (``warn``: with the
    warnings it gave shown); its failure is the user's to fix, in one line."""
    try:  # rows in any order, also for a model that packs with enforce_sorted=True
        with (
            torch.no_grad(),
            any_order_packing(model),
            warnings.catch_warnings(record=True) as said,
            watch_embeddings(model) as seen,
        ):
            returned = model(*inputs)
        for w in said if warn else ():  # what it warns on inputs it takes; noise on others
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
        return returned, _flatten(returned)
    except ExportError:
        raise
    except Exception as exc:  # anything the user's model raises
        shapes = ", ".join(  # as fed: float16 under --dtype float16
            f"{d.name} {str(t.dtype).removeprefix('torch.')} {list(t.shape)}"
            for d, t in zip(planned.decls, inputs, strict=True)
        )
        # the sizes the tensors had, the first input's where several take a dim: the caller's
        # example_inputs are not the planned ones (review33: "the example's seq was 11" beside
        # an example of 4 steps)
        fed: dict[str, int] = {}
        for decl, tensor in zip(planned.decls, inputs, strict=True):
            for i, dim in enumerate(decl.dims[: tensor.dim()]):
                if isinstance(dim, str):
                    fed.setdefault(dim, int(tensor.shape[i]))
        planned = dataclasses.replace(planned, examples={**planned.examples, **fed})
        steps = planned.examples.get(planned.time_dim)
        batch = planned.examples.get(planned.batch_dim)
        grouped = isinstance(steps, int) and isinstance(batch, int)
        hint = (
            _container_hint(exc, model)
            or (_float16_hint(exc, model) if _runs_in_float16(model, inputs) else None)
            or (_grouped_steps_hint(str(exc), steps, batch) if grouped else None)
            or _index_hint(str(exc), planned, inputs, seen)
            or _declare_hint(
                planned, _time_major_hint(model, planned), str(exc), _failed_packing(exc)
            )
        )
        raise ExportError(
            f"{type(model).__name__} failed on example inputs {shapes} ({planned.how}): "
            f"{type(exc).__name__}: {_first_line(exc)}; {hint}"
        ) from None


#: torch's refusal of an index past a dim: the index and the dim's size.
_OUT_OF_BOUNDS = re.compile(r"index (-?\d+) is out of bounds for dimension \d+ with size (\d+)")


def _index_hint(
    error: str,
    planned: PlannedInputs,
    inputs: Sequence[Tensor],
    seen: Sequence[tuple[nn.Embedding, Tensor]],
) -> str | None:
    """Where an integer input drawn as token ids, which no Embedding read (``seen``: review28
    M2, real ids from a small vocabulary hold the value too), indexed a dim of the example's
    size of a named dim (g2pM's ``o[arange(b), target_idx]``: users46 F3): declare it
    ``:index(DIM)``, which draws its examples below that dim's size."""
    match = _OUT_OF_BOUNDS.search(error)
    if match is None:
        return None
    value, size = int(match[1]), int(match[2])
    dims = [d for d, n in planned.examples.items() if n == size and d != planned.batch_dim]
    held = [
        decl
        for decl, role, tensor in zip(planned.decls, planned.roles, inputs, strict=True)
        if role == "tokens"
        and not tensor.is_floating_point()
        and (tensor == value).any()
        and not read_by_embedding(seen, tensor)
    ]
    if not dims or len(held) != 1:  # no dim of that size, or no one input to name
        return None
    return (
        f"{held[0].name!r} was drawn as token ids, and its {value} indexed a dim of {size} "
        f"steps, the example's {dims[0]}: if it holds positions along {dims[0]!r}, declare it "
        f"--input '{held[0]}:index({dims[0]})', which draws its examples from 0 to "
        f"{dims[0]}'s size - 1"
    )


#: torch's refusal of a view or reshape: the shape asked for and the number of values.
_BAD_VIEW = re.compile(r"shape '\[([-\d, ]+)\]' is invalid for input of size (\d+)")


def _grouped_steps_hint(error: str, steps: int, batch: int) -> str | None:
    """Where the model regrouped the time axis into groups of ``k`` steps (frame stacking:
    ``x.reshape(b, t // k, k * f)``, ``x.reshape(b, -1, k * f)``, ``x.reshape(b * (t // k),
    k * f)``) and the example's ``steps`` are no multiple of ``k``: the shape asked for ends in
    ``k`` steps' values. What to do: pad the time axis up to a multiple of ``k`` first, which
    exports."""
    match = _BAD_VIEW.search(error)
    if match is None or batch * steps <= 0:
        return None
    last = int(match[1].split(",")[-1])
    per_step, rest = divmod(int(match[2]), batch * steps)
    if rest or per_step <= 0 or last <= per_step or last % per_step:
        return None
    k = last // per_step
    if not 2 <= k <= 64 or steps % k == 0:
        return None
    return (
        f"the model regroups the time axis into groups of {k} steps (a reshape to {k} steps' "
        f"values, {last}, at {steps} steps), so it runs only on lengths that are multiples of "
        f"{k}; pad the time axis up to one first in forward, as x = F.pad(x, (0, 0, 0, "
        f"(x.shape[1] + {k - 1}) // {k} * {k} - x.shape[1])) does for [batch, time, "
        "features], which exports"
    )


def _runs_in_float16(model: nn.Module, inputs: Sequence[Tensor]) -> bool:
    """Whether the example run is a float16 one (its weights, or its float inputs; token ids
    alone say nothing)."""
    tensors = [*model.parameters(), *inputs]
    return any(t.dtype == torch.float16 for t in tensors)


def _float16_hint(exc: Exception, model: nn.Module) -> str | None:
    """What to do when the model, cast to float16, writes a number float16 cannot hold
    (``masked_fill(mask, -1e9)``, common before a softmax), runs an op with no float16 kernel
    on the CPU (``torch.stft``), or mixes float32 into its float16 run (``.float()``)."""
    text = str(exc)
    if re.search(r"not implemented for '?Half|support tensors of type: Half", text):
        return (  # torch.stft's MKL FFT (users55 F1): no declaration makes it run
            f"an op of the model{_user_line(model, _causes(exc))} has no float16 kernel on the "
            "CPU, where --dtype float16 traces the model in float16: run it in float32 inside "
            "forward and cast back (torch.stft(x.float(), ...) then .to(x.dtype)), or export in "
            "float32"
        )
    if "Half without overflow" in text:
        return (
            "the model writes a number beyond float16's range (+-65504)"
            f"{_user_line(model, _causes(exc))}, as masked_fill(mask, -1e9) does: write "
            "torch.finfo(x.dtype).min there (or -1e4), or export in float32"
        )
    if re.search(r"Half and Float|Float and Half|expected .*(Half|Float).* found|c10::Half", text):
        made = _made_float32(model, _causes(exc))
        return (
            "the model, run in float16, mixes float32 (or float64) into it"
            f"{_user_line(model, _causes(exc))}"
            + (f", made so at {', '.join(made)}" if made else "")
            + ": a .float() or a tensor made float32 in forward (torch.ones(...), a mask's "
            ".float()); write .to(x.dtype) (or .type_as(x)) there, or export in float32"
        )
    return None


#: A cast to float32 (or float64) in a model's code.
_FLOAT32 = re.compile(
    r"\.(float|double)\(\)|dtype=torch\.(float(32|64)?|double)\b|\.to\(torch\.(float(32|64)?|double)\)"
)


def _made_float32(model: nn.Module, causes: Sequence[BaseException]) -> list[str]:
    """``FILE:LINE`` of the casts to float32 before the line where float16 met float32, in the
    function holding that line (the one :func:`_user_line` names): that line only uses what
    they made (users41: a mask's .float() two lines up)."""
    failed = _model_frame(model, causes)
    if failed is None:
        return []
    code = failed.tb_frame.f_code
    try:
        lines, start = inspect.getsourcelines(code)
    except (OSError, TypeError):
        return []
    return [
        f"{os.path.basename(code.co_filename)}:{start + i}"
        for i, text in enumerate(lines)
        if start + i < failed.tb_lineno and _FLOAT32.search(text.split("#", 1)[0])
    ]


def _container_hint(exc: Exception, model: nn.Module) -> str | None:
    """What to do when ``forward`` read its input by key or attribute (``batch["x"]``,
    ``batch.x``): it takes a dict or an object, and graph inputs are tensors."""
    text = str(exc)
    keyed = isinstance(exc, TypeError) and "invalid data type 'str'" in text
    attribute = isinstance(exc, AttributeError) and "'Tensor' object has no attribute" in text
    if not (keyed or attribute):
        return None
    name = type(model).__name__
    call = "{'x': x, 'lengths': lengths}" if keyed else "Batch(x=x, lengths=lengths)"
    return (
        f"{name}.forward reads its input by {'key' if keyed else 'attribute'}, so it takes a "
        f"{'dict' if keyed else 'container object'}, and graph inputs are tensors: export a "
        f"subclass whose forward takes the tensors, e.g. class Export{name}({name}): def "
        f"forward(self, x, lengths): return super().forward({call}), given as --model-class "
        f"MODULE:Export{name} (the weights load into it as they are)"
    )


def _time_major_first(model: nn.Module, planned: PlannedInputs) -> tuple[str, BiRNN] | None:
    """The model's first recurrent layer where it is time-major and the first input is planned
    ``[batch, seq, ...]``: the model may take ``[seq, batch, ...]`` (an encoder written as
    PyTorch's seq2seq tutorials write it) or transpose itself; only running it tells."""
    named = named_layers(model)
    batch_first_input = planned.decls[0].dims[:2] == (planned.batch_dim, planned.time_dim)
    if named and not named[0][1].batch_first and batch_first_input:
        return named[0]
    return None


def _may_be_time_major(model: nn.Module, planned: PlannedInputs) -> bool:
    """Inferred inputs that :func:`_time_major_first` says may be the other way round."""
    return planned.how.startswith("inferred") and _time_major_first(model, planned) is not None


def _inferred_bool_masks(planned: PlannedInputs) -> bool:
    return planned.how.startswith("inferred") and any(
        d.mask is not None and d.dtype == "bool" for d in planned.decls
    )


def _float_masks(planned: PlannedInputs) -> PlannedInputs:
    """``planned`` with its bool masks float32 (1.0 and 0.0), as a model takes them that
    computes with its masks (``1 - mask``, ``x * mask``)."""
    decls, tensors = [], []
    for decl, tensor in zip(planned.decls, planned.tensors, strict=True):
        if decl.mask is not None and decl.dtype == "bool":
            decl, tensor = dataclasses.replace(decl, dtype="float32"), tensor.float()
        decls.append(decl)
        tensors.append(tensor)
    how = planned.how + "; masks as numbers (float), as the model computes with them (bool failed)"
    return dataclasses.replace(planned, decls=tuple(decls), tensors=tuple(tensors), how=how)


def _guessed_nesting(planned: PlannedInputs) -> bool:
    """Whether the inferred inputs read a sequence as nested in another's steps by its name
    (a word's characters, a sentence's words)."""
    return planned.how.startswith("inferred") and any(
        d.within is not None or (d.dtype.startswith("int") and len(d.dims) == 3)
        for d in planned.decls
    )


def _fed_inputs(
    model: nn.Module,
    inputs: Sequence[Any] | None,
    example_inputs: Sequence[Tensor] | None,
    plan: Any,
) -> tuple[Container | None, PlannedInputs | None]:
    """For a ``forward(batch)`` that reads ``batch["tokens"]`` (or ``batch.tokens``): how it
    takes the graph's inputs, under the keys it reads (found by running it, or the declared
    inputs' names), and those inputs planned; ``(None, None)`` for any other model."""
    if example_inputs is not None:  # tensors to call forward with, as they are
        return None, None
    kind = container_kind(model)
    if kind is None:
        mask = None if inputs else keyword_mask(model)
        if mask is None:
            return None, None
        # forward(input_ids, token_type_ids=None, attention_mask=None): the mask by keyword
        container = Container(forward_param(model), KEYWORDS, (forward_param(model), mask))
        planned = plan(fed_as(model, container))
        return container, dataclasses.replace(planned, how=f"{planned.how}; {container.describe()}")
    if inputs:
        try:
            decls = [d if isinstance(d, InputDecl) else InputDecl.parse(d) for d in inputs]
        except BiRNNExportError:  # planning says what is wrong with the declaration
            return None, None
        container = Container(forward_param(model), kind, tuple(d.name for d in decls))
        planned = plan(fed_as(model, container))
    else:
        found = discover(model, kind, plan)
        if found is None:
            return None, None
        container, planned = found
    how = f"{planned.how}; {container.describe()}"
    return container, dataclasses.replace(planned, how=how)


def _runs_or_raises(model: nn.Module, inputs: Sequence[Tensor]) -> None:
    """``model`` on ``inputs`` as the trace runs it (no grad, rows in any order, quiet)."""
    with torch.no_grad(), any_order_packing(model), _quiet_exporter():
        model(*inputs)


def _runs_quietly(model: nn.Module, inputs: Sequence[Tensor]) -> bool:
    """Whether ``model`` runs on ``inputs`` (no grad, rows in any order, nothing printed); the
    caller's hooks see the run."""
    try:
        _runs_or_raises(model, inputs)
    except Exception:  # the model's own failure: the caller says what it means
        return False
    return True


def _calls(model: nn.Module, module: nn.Module, inputs: Sequence[Tensor]) -> bool:
    """Whether ``model`` calls ``module`` on ``inputs``, before it fails or not."""
    called: list[bool] = []
    handle = module.register_forward_pre_hook(lambda *_: called.append(True))
    try:
        _runs_quietly(model, inputs)
    finally:
        handle.remove()
    return bool(called)


def _runs_as_planned(model: nn.Module, planned: PlannedInputs) -> bool:
    """Whether ``model`` runs on the example inputs with their batch on its first recurrent
    layer's batch axis (a padded input; a packed one cannot tell)."""
    layer = named_layers(model)[0][1]
    seen: list[Any] = []
    handle = layer.register_forward_pre_hook(lambda _, args: seen.append(args[0]) if args else None)
    try:
        if not _runs_quietly(model, planned.tensors):
            return False
    finally:
        handle.remove()
    x = seen[0] if seen else None
    if not isinstance(x, Tensor) or x.dim() != 3:
        return True
    batch = planned.examples[planned.batch_dim]
    return int(x.shape[0 if layer.batch_first else 1]) == batch


def _time_major_hint(model: nn.Module, planned: PlannedInputs) -> str:
    """Where the inputs were fed batch-first to a model whose first recurrent layer is
    time-major: the time-major declaration of the first input."""
    found = _time_major_first(model, planned)
    if found is None:
        return ""
    first, batch, time = planned.decls[0], planned.batch_dim, planned.time_dim
    swapped = dataclasses.replace(first, dims=(time, batch, *first.dims[2:]))
    return (
        f"; its recurrent layer {found[0]!r} is time-major (batch_first=False): if the "
        f"model takes [seq, batch] declare --input '{swapped}' (and the others)"
    )


def _nested_hint(planned: PlannedInputs) -> str:
    """A ``[batch]`` lengths input measuring a dim that comes after the time dim in an input
    (``chars:int64[batch,seq,chars]``): each word's own length would be ``[batch,seq]``."""
    hint = ""
    time = planned.time_dim
    for decl in planned.decls:
        dim = decl.measures
        if dim is None or len(decl.dims) != 1:
            continue
        holder = next(
            (
                d
                for d in planned.decls
                if time in d.dims and dim in d.dims[d.dims.index(time) + 1 :]
            ),
            None,
        )
        if holder is not None:
            nested = dataclasses.replace(decl, dims=(planned.batch_dim, time))
            hint += (
                f"; {decl.name!r} measures {dim!r}, which comes after {time!r} in "
                f"{holder.name!r}: if it holds a length per step of {time!r} (each word's "
                f"characters), declare --input '{nested}'"
            )
    return hint


#: A model's error about a size or length (a kernel larger than the input, lengths of 0): what
#: a row too short for a strided front end raises.
_SIZE_ERROR = re.compile(r"size|length|greater than|positive|empty|zero", re.IGNORECASE)


#: A model's error about two tensors' shapes that do not fit (a broadcast, a matmul): inputs
#: of other sizes than the model's, not a row too short.
_BROADCAST = re.compile(
    r"must match the size of tensor|shapes cannot be multiplied|size mismatch", re.IGNORECASE
)


#: A model's error about an input too short for its front end (a kernel or padding larger than
#: the input, a pooled size of 0, one step left for an InstanceNorm after the pools: torch says
#: "more than 1 spatial element when training" in eval too), not any error that names a size
#: (a broadcast's).
_TOO_SHORT = re.compile(
    r"greater than|less than|too small|output size|padding size|kernel size|more than 1 spatial",
    re.IGNORECASE,
)


#: Names of lengths inputs that may be relative to the padded length (SpeechBrain's).
_RELATIVE_NAME = re.compile(r"^wav_len(s|gths)?$|(^|_)rel(ative)?_len")


def _failed_packing(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside ``pack_padded_sequence`` (given what it cannot take as
    lengths)."""
    import traceback

    return any(
        frame.name == "pack_padded_sequence"
        for cause in _causes(exc)
        for frame in traceback.extract_tb(cause.__traceback__)
    )


def _declare_hint(
    planned: PlannedInputs, time_major: str = "", error: str = "", packing: bool = False
) -> str:
    """How to declare the inputs: the declarations the example was made from, to edit; the
    mask's sense where the graph takes a mask (the likeliest thing to have been guessed wrong),
    or lengths where the model failed packing (``packing``: a parameter named ``mask`` that
    holds each row's length, as NetSurfP-3's); the shortest row, where rows of 1 step were fed
    and the model's ``error`` is about a size (a kernel larger than the input, a length of 0)."""
    fed = " ".join(f"--input '{d}'" for d in planned.decls)
    hint = (
        f"declare its inputs as it takes them; they were fed as {fed}: edit those "
        "(Python: inputs=[...])" + time_major
    )
    for decl, role in zip(planned.decls, planned.roles, strict=True):
        if role in MASK_ROLES:
            if packing:
                hint += (
                    f"; the model failed in pack_padded_sequence: if {decl.name!r} holds each "
                    f"row's length, declare --input '{decl.name}:int64[{planned.batch_dim}]:"
                    f"lengths({decl.dims[-1]})'"
                )
            sense = "1 at each row's valid steps" if role == "mask" else "1 past each row's end"
            other = "padding_mask" if role == "mask" else "mask"
            dims = ",".join(str(d) for d in decl.dims)
            if _BROADCAST.search(error):  # shapes, not the sense (a missing-value mask)
                hint += (
                    f"; the mask {decl.name!r} was made [{dims}], one value per row and step: if "
                    "it holds one per feature (which values were observed), declare it "
                    f"--input '{decl.name}:float32[{dims},FEATURES]' with its values' features"
                )
                continue
            hint += (
                f"; the mask {decl.name!r} was made {decl.dtype}, {sense}: if the model takes it "
                f"the other way round declare --input '{decl.name}:{decl.dtype}[{dims}]:{other}' "
                "(another dtype likewise)"
            )
    hint += _nested_hint(planned)
    # lengths read as fractions overrun what they index or pack (users55 F4: said beside every
    # failure of a model taking wav_lens, a kernel or a padding too large for the input too)
    fractions = packing or bool(re.search(r"length|out of bounds|index", error, re.IGNORECASE))
    for decl, role in zip(planned.decls, planned.roles, strict=True):
        if fractions and role == "lengths" and _RELATIVE_NAME.search(decl.name):
            hint += (
                f"; if {decl.name!r} holds lengths relative to the padded length (fractions, "
                f"as SpeechBrain's), {RELATIVE_LENGTHS}"
            )
    for decl, role in zip(planned.decls, planned.roles, strict=True):
        if role == "tokens" and decl.dims == (planned.batch_dim,) and param_role(decl.name):
            hint += (
                f"; {decl.name!r} is named as lengths but declared without ':lengths(DIM)', so "
                f"it was fed token ids: declare --input '{decl}:lengths(TIME)' with the time dim "
                "it measures"
            )
    ragged = any(r == "lengths" or r in MASK_ROLES for r in planned.roles)
    low, opt, high = planned.ranges[planned.time_dim]
    steps = planned.examples.get(planned.time_dim)
    if ragged and low == 1 and _SIZE_ERROR.search(error) and not _BROADCAST.search(error):
        hint += (
            f"; the example's {planned.time_dim} was {steps}, with a row of 1 step: if the model "
            "needs longer rows (a windowed or strided front end), give the shortest as the time "
            f"dim's minimum, --range {planned.time_dim}=MIN,{opt},{high}"
        )
    elif _TOO_SHORT.search(error):
        # the example is the shortest size in the range that no other dim takes (users55 F2,
        # F3: a waveform of 401 samples for convolutions; no row of 1 step to blame)
        rows = f", its rows from {low}" if ragged else ""
        hint += (
            f"; the example's {planned.time_dim} was {steps}{rows}: if the model needs longer "
            "inputs (a windowed, pooled or strided front end), give the shortest it takes as "
            f"the minimum, --range {planned.time_dim}=MIN,{max(opt, steps)},{high}"
        )
    if _TWO_STATES.search(error):
        hint += (
            "; an LSTM state passed as one tuple (state=(h0, c0)) cannot be one graph input: "
            "take h0 and c0 as two parameters of forward and declare each"
        )
    return hint


#: torch's error (and BiRNN's) for an LSTM given one state tensor where it takes (h0, c0).
_TWO_STATES = re.compile(r"lstm expects two hidden states|expected a tuple \(h_0, c_0\)", re.I)


def _layout_note(asked: str, layout: str, has_lstm_or_gru: bool = True) -> str:
    """Why ``--layout asked`` wrote the ``layout`` graph (recorded as that)."""
    if asked == "scan":
        why = "the model has no plain RNN layer (scan rewrites RNN nodes only)"
    elif layout == "scan" and not has_lstm_or_gru:
        why = (
            "the model has no LSTM or GRU layer, the only nodes packed (its RNN layers are "
            "loops over their lengths)"
        )
    elif layout == "scan":
        why = "no LSTM or GRU node takes lengths, so none is packed (its RNN nodes are loops)"
    else:
        why = "no LSTM or GRU node takes lengths and the model has no plain RNN layer"
    return f"--layout {asked}: {why}; wrote the {layout} graph, recorded as layout {layout}"


def _untraced_notes(told: Sequence[tuple[Untraced, str]], example: Mapping[str, int]) -> list[str]:
    """Where torch.export assumed the model takes the traced branch (:func:`assumptions`), as
    notes, one each: what it assumed, and the sizes verification runs for it. torch's checks
    against 1 alone (a strided front end) are verified, not told."""
    notes = []
    for found, which in told:
        runs = "; ".join(
            ", ".join(f"{dim} {size}" for dim, size in point.items())
            for point in found.examples(example)
        )
        notes.append(
            f"torch.export assumed {which}; where that does not hold, the model may compute "
            "another way than the graph, which keeps what it traced at the example's size (a "
            "branch on a size, as `if delta:` is, or size arithmetic in Python numbers): the "
            f"default verification runs {runs}"
        )
    return notes


def assumptions(untraced: Sequence[Untraced], planned: PlannedInputs) -> list[tuple[Untraced, str]]:
    """Each assumption of :func:`_untraced` that is told (not torch's checks against 1 alone),
    with what it assumed in words (``seq % 8 == 7 (31 sizes in 8..256: 15, 23, 31, ...)``)."""
    told = []
    for found in untraced:
        if not len(found.told):
            continue
        if len(found.dims) > 1:
            which = f"{found.condition} (wherever it does not hold, of {len(found.sizes)} found)"
        else:
            (dim,) = found.dims
            low, high = max(planned.ranges[dim][0], 2), planned.ranges[dim][2]
            sizes = found.told
            held = np.setdiff1d(np.arange(low, high + 1), sizes)
            if len(sizes) == 1:
                which = f"{dim} is not {sizes[0]}"
            elif len(held) == 1:
                which = f"{dim} is {held[0]} (of {low}..{high})"
            elif rule := _remainder_rule(held, sizes, low, high):  # `if T % 2:`
                few, said, step, left = rule
                shown = ", ".join([str(v) for v in few[:3]] + ["..."] * (len(few) > 3))
                which = (
                    f"{dim} % {step} {said} {left} ("
                    + ("not one of " * (said == "!="))
                    + (f"{len(few)} sizes in {low}..{high}: {shown})")
                )
            else:
                few, what = (held, "one") if 0 < len(held) < len(sizes) else (sizes, "none")
                shown = [str(v) for v in few[:3]] + ["..."] * (len(few) > 3)
                which = f"{dim} is {what} of {len(few)} sizes in {low}..{high} ({', '.join(shown)})"
        told.append((found, which))
    return told


def _remainder_rule(
    held: np.ndarray, left_out: np.ndarray, low: int, high: int
) -> tuple[np.ndarray, str, int, int] | None:
    """``(sizes, "==" or "!=", step, remainder)`` where the sizes an assumption holds at, else
    those it leaves out, are one remainder modulo a step (:func:`_residue`); else ``None``."""
    for sizes, said in ((held, "=="), (left_out, "!=")):
        found = _residue(sizes, low, high)
        if found is not None:
            return sizes, said, *found
    return None


def _residue(sizes: np.ndarray, low: int, high: int) -> tuple[int, int] | None:
    """``(step, remainder)`` where ``sizes`` are every size in ``low..high`` of one remainder
    modulo a step of 2 or more, at least 3 of them; else ``None``."""
    if len(sizes) < 3 or len(set(np.diff(sizes))) != 1:
        return None
    step = int(sizes[1] - sizes[0])
    if step < 2 or sizes[0] - low >= step or high - sizes[-1] >= step:
        return None
    return step, int(sizes[0] % step)


def _unread_inputs(proto: Any) -> list[str]:
    """Graph inputs no node reads, as notes: a ``forward`` parameter the model ignores
    (EasyOCR's and deep-text-recognition-benchmark's ``text``, used only by an attention
    decoder in training) stays an input callers must feed."""
    return [
        f"input {name!r} is read by no node (the model ignores it): callers still feed it, "
        "any values of its shape"
        for name in unread_inputs(proto.graph)
    ]


def _unembedded_notes(planned: PlannedInputs, spec: GraphSpec, unread: Sequence[str]) -> list[str]:
    """Notes for integer inputs the graph reads that no Embedding read on the example: their
    ids were given the model's smallest vocabulary, a guess; a subword's word index drawn so
    seldom points at a real word, and pooling by it went unverified (users35)."""
    notes = []
    for decl in planned.decls:
        if decl.name not in planned.unembedded or decl.name in unread:
            continue
        tensor = next(t for t in spec.inputs if t.name == decl.name)
        dims = ",".join(map(str, decl.dims))
        notes.append(
            f"input {decl.name!r}: no nn.Embedding reads these ids, so verification draws them "
            f"from {tensor.low or 0}..{tensor.high}, a guess; where they index another dim's "
            f"steps (a subword's word), declare it: --input '{decl.name}:{decl.dtype}[{dims}]:"
            "index(DIM)'"
        )
    return notes


def _float32_nodes(proto: Any, dtype: str, ops: Collection[str]) -> collections.Counter[str]:
    """In a float16 graph, the recurrent nodes of ``ops`` with float32 weights, by op."""
    from onnx import TensorProto

    if dtype != "float16":
        return collections.Counter()
    weights = {t.name: t.data_type for t in proto.graph.initializer}
    return collections.Counter(
        n.op_type
        for n in proto.graph.node
        if n.op_type in ops and weights.get(n.input[1]) == TensorProto.FLOAT
    )


def _float32_islands(proto: Any, dtype: str, looped: collections.Counter[str]) -> list[str]:
    """In a float16 graph, the recurrent nodes computing in float32 (those taking
    ``sequence_lens``: TensorRT's parser rejects float16 ones), as a note; ``looped``: those
    the scan layout wrote as loops (counted before), which compute in float32 too."""
    counts = _float32_nodes(proto, dtype, RECURRENT_OPS)
    parts = [f"{op} x{k}" for op, k in sorted(counts.items())]
    parts += [f"{op} x{k} (as Scan loops)" for op, k in sorted(looped.items())]
    if not parts:
        return []
    why = "TensorRT's parser rejects float16 recurrent nodes that take sequence_lens"
    if looped:  # a Scan loop has no sequence_lens: it computes in the type of the node it was
        why += ", and the scan layout writes its loops from those nodes"
    return [
        f"{', '.join(parts)} compute in float32 between Casts, with float32 weights: {why} "
        "(README, 'fp16 graphs')"
    ]


def _trace(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    planned: PlannedInputs,
    outs: list[str],
    opset: int,
    layout: str,
    crfs: Sequence[str],
    example: Mapping[str, int],
) -> tuple[Any, bool, dict[int, str], list[Untraced], float | None]:
    """The exported graph, whether the model cut a padded output to its longest row, where
    its code fixed a size to the example's number (:func:`_fixed_sizes`), the sizes where
    the traced branch may not be the model's (:func:`_untraced`), and the value the model's
    ``pad_packed_sequence`` calls pad with (``None``: it calls none, or they pad with several:
    review17 found a second call padding with -inf to max-pool)."""
    cuts: list[str] = []
    pads: list[float] = []
    try:
        with (
            _onnx_settings(model, layout),
            onnx_weight_constants(model),
            _traceable_packing(model, cuts, pads),
            _nested_tensor_zeros(model),
            _pooling_over_two_dims(),
            _float_clamp_bounds(),
            _quiet_exporter(),
            _fixed_sizes() as fixed,
        ):
            program = torch.onnx.export(
                model,
                inputs,
                dynamo=True,
                dynamic_shapes=planned.dynamic_shapes(model),
                input_names=[d.name for d in planned.decls],
                output_names=outs,
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean "cannot export this"
        if _interrupted(exc):  # torch.export wraps a Ctrl-C in its own error
            raise KeyboardInterrupt from None
        raise ExportError(_explain_trace_failure(model, exc, planned, inputs, cuts, crfs)) from None
    exported = getattr(program, "exported_program", None)
    sizes = _dim_sizes(exported, planned) if exported is not None else {}
    untraced = _untraced(planned, sizes, example)
    _refuse_narrowed_dims(exported, planned, sizes, untraced)
    padded_with = pads[0] if len(set(pads)) == 1 else None  # every call's, or none of them
    return program.model_proto, any(cuts), fixed, untraced, padded_with


def _dim_sizes(exported: Any, planned: PlannedInputs) -> dict[str, torch.SymInt]:
    """Each named dim's symbolic size in the exported program (a dim the trace fixed to a
    number has none: its own check names it)."""
    nodes = {n.name: n for n in exported.graph.nodes if n.op == "placeholder"}
    sizes: dict[str, torch.SymInt] = {}
    for name, decl in zip(exported.graph_signature.user_inputs, planned.decls, strict=False):
        value = nodes[name].meta.get("val") if name in nodes else None
        for axis, dim in enumerate(decl.dims):
            size = value.shape[axis] if value is not None and axis < value.dim() else None
            if isinstance(dim, str) and isinstance(size, torch.SymInt):
                sizes.setdefault(dim, size)
    return sizes


def _refuse_narrowed_dims(
    exported: Any,
    planned: PlannedInputs,
    sizes: Mapping[str, torch.SymInt],
    untraced: Sequence[Untraced],
) -> None:
    """The traced graph holds for the declared ranges, or the export stops in one line.

    Where the model branches on a length (``if steps <= chunk: pad``), torch.export traces the
    example's branch; when the declared range holds the other, the exporter falls back to a
    trace that only holds for part of the range (the ``range_constraints`` of its program),
    and the graph computes something else outside it. A model that cannot run below a length
    (time pooled by 4 needs 4 steps) holds only from there too. The range it advises leaves out
    the sizes at its ends where the model branches again (``untraced``, those told: Demucs's
    ``if delta:``
    at the largest length of its range).

    Raises:
        ExportError: naming the dim, the range the graph holds for and what to do.
    """
    narrowed = []  # every such dim in one message: BiDAF's two char dims took two runs
    for dim, size in sizes.items():
        held = exported.range_constraints.get(size.node.expr)
        if held is None:
            continue
        low, opt, high = planned.ranges[dim]
        lower = max(int(held.lower) if held.lower.is_finite else low, low)
        upper = min(int(held.upper) if held.upper.is_finite else high, high)
        if lower > max(low, 2) or upper < high:
            branching = {int(v) for u in untraced if u.dims == (dim,) for v in u.told}
            while upper > lower and upper in branching:
                upper -= 1
            while lower < upper and lower in branching:
                lower += 1
            narrowed.append((dim, lower, upper, f"{low}..{high}", min(max(opt, lower), upper)))
    if not narrowed:
        return
    names = ", ".join(repr(dim) for dim, *_ in narrowed)
    held_for = ", ".join(f"{dim} in {lower}..{upper}" for dim, lower, upper, _, _ in narrowed)
    declared = ", ".join(given for *_, given, _ in narrowed)
    flags = " ".join(f"--range {d}={lower},{opt},{upper}" for d, lower, upper, _, opt in narrowed)
    raise ExportError(
        f"dim{'s' * (len(narrowed) > 1)} {names}: the traced graph holds only for {held_for}, "
        f"not the declared {declared}: the model does not run outside it (a front end that "
        "pools or strides needs a shortest input) or computes it another way (a branch on the "
        "length, as chunking or padding short inputs does, of which the exporter traced the "
        f"example's); if inputs outside never come, declare {'them' if len(narrowed) > 1 else 'it'}"
        f": {flags}; else keep the branch out of forward (compute both ways with tensor ops, "
        "e.g. pad every input to at least the chunk)"
    )


def _untraced(
    planned: PlannedInputs, sizes: Mapping[str, torch.SymInt], example: Mapping[str, int]
) -> list[Untraced]:
    """The sizes where torch.export assumed the model takes the traced branch and it may not
    (:func:`birnn_export._guards.untraced_sizes`)."""
    if not sizes:
        return []
    dims = {}
    for name, size in sizes.items():
        low, _, high = planned.ranges[name]
        dims[size.node.expr] = Dim(name, low, high, example.get(name, low))
    return untraced_sizes(next(iter(sizes.values())).node.shape_env, dims)


def _interrupted(exc: BaseException | None) -> bool:
    """Whether a KeyboardInterrupt is among ``exc``'s causes."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _pack_for_tracing(
    input: Tensor, lengths: Any, batch_first: bool = False, enforce_sorted: bool = True
) -> TracedPack:
    del enforce_sorted  # rows are never reordered: BiRNN takes lengths in any order
    if isinstance(input, TracedPack):
        # packed already: code that packs whatever is not a PackedSequence (Stanza's
        # PackedLSTM: `if not isinstance(input, PackedSequence)`) never packs one twice eagerly
        return input
    if not isinstance(lengths, Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except Exception as exc:  # users62 F2: the refusal named no list, only this line
            raise _RefusedWhileTracing(
                f"pack_padded_sequence{_calling_line()} is given its lengths as Python numbers "
                "made of a tensor's values (.tolist(), int()), which the graph cannot depend "
                "on: pass the lengths tensor itself"
            ) from exc
    return TracedPack(input, lengths.to(torch.int64), batch_first)


def _pad_for_tracing(
    sequence: TracedPack,
    batch_first: bool = False,
    padding_value: float = 0.0,
    total_length: int | None = None,
) -> tuple[Tensor, Tensor]:
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    data = sequence.data
    if sequence.batch_first != batch_first:
        data = data.transpose(0, 1)
    time_axis = 1 if batch_first else 0
    if total_length is None:  # as torch does: cut to the longest row (a data-dependent dim)
        # clamped into [1, T] first, as the recurrent layers clamp them: never past the data
        longest = sequence.lengths.clamp(1, data.shape[time_axis]).max().item()
        torch._check(longest >= 1)
        torch._check(longest <= data.shape[time_axis])
        data = data.narrow(time_axis, 0, longest)
    elif not statically_known_true(total_length == data.shape[time_axis]):
        # total_length=128, a number (the DataParallel idiom): torch pads every row to it, or
        # cuts padding past it; it was traced as the input's own length (users51 F1)
        data = data[:, :total_length] if batch_first else data[:total_length]
        shape = list(data.shape)
        shape[time_axis] = total_length - shape[time_axis]
        data = torch.cat([data, data.new_zeros(shape)], time_axis)
    if padding_value != 0.0:
        mask = padding_mask(sequence.lengths, data.shape[1 if batch_first else 0])
        mask = (mask if batch_first else mask.transpose(0, 1)).unsqueeze(-1)
        data = torch.where(mask, data, torch.full_like(data, padding_value))
    return data, sequence.lengths


@contextlib.contextmanager
def _pooling_over_two_dims() -> Iterator[None]:
    """While inside, ``F.max_pool1d`` (``nn.MaxPool1d``'s) pools a ``[..., 1, L]`` view of its
    input with ``max_pool2d``: the same values and indices. torch.export fixes the length of a
    1-d max pool's input at the example's (it marks the dim static: a Conv1d + MaxPool1d front
    end's graph took only the example's length), and traces the 2-d pool's dynamically. A
    kernel given as the input's own length (NCRF++'s char CNN: ``F.max_pool1d(h, h.size(2))``,
    a max over the whole axis) is the max over that axis: a kernel size is a number, which the
    example's length would freeze."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    one_dim = F.max_pool1d

    def max_pool1d(
        x: Tensor,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        dilation: Any = 1,
        ceil_mode: bool = False,
        return_indices: bool = False,
    ) -> Any:
        def pair(value: Any, default: int = 0) -> tuple[int, int]:
            if value is None or (isinstance(value, (tuple, list)) and not value):
                return (1, pair(kernel_size)[1])
            return (default, int(value[0] if isinstance(value, (tuple, list)) else value))

        kernel = kernel_size[0] if isinstance(kernel_size, (tuple, list)) else kernel_size
        if (  # one window over the whole axis, whatever the stride
            isinstance(kernel, torch.SymInt)
            and padding in (0, (0,), [0])
            and dilation in (1, (1,), [1])
            and statically_known_true(kernel == x.shape[-1])
        ):
            best = x.max(-1, keepdim=True)
            return (best.values, best.indices) if return_indices else best.values
        pooled = F.max_pool2d(
            x.unsqueeze(-2),
            pair(kernel_size, 1),
            pair(stride, 1),
            pair(padding),
            pair(dilation, 1),
            ceil_mode=ceil_mode,
            return_indices=return_indices,
        )
        if return_indices:
            return pooled[0].squeeze(-2), pooled[1].squeeze(-2)
        return pooled.squeeze(-2)

    F.max_pool1d = max_pool1d
    try:
        yield
    finally:
        F.max_pool1d = one_dim


@contextlib.contextmanager
def _float_clamp_bounds() -> Iterator[None]:
    """While inside, ``clamp`` and ``clip`` (torch's and the tensor methods) of a floating
    tensor take int bounds as floats, numbers and tensors alike. pyannote's SincNet (and
    asteroid's ``ParamSincFB``) call ``torch.clamp(x, self.min_low_hz, self.sample_rate / 2)``,
    an int and a float: the exporter's type promotion made one bound a tensor of its own type,
    and no ``aten.clamp`` overload took the pair (users37: a correct model refused, in a library
    its user cannot edit); an int tensor beside a float bound failed alike. Eager compares a
    floating tensor with an int bound in the tensor's type: the same values."""
    names = ("clamp", "clip", "clamp_", "clip_")
    patched = [(owner, name) for owner in (torch, Tensor) for name in names if hasattr(owner, name)]
    originals = {(owner, name): owner.__dict__.get(name) for owner, name in patched}

    def floats(value: Any, like: Tensor) -> Any:
        if isinstance(value, Tensor) and value.dtype in _INT_DTYPES:
            return value.to(like.dtype)
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    def promoting(original: Any) -> Any:
        @functools.wraps(original)
        def call(*args: Any, **kwargs: Any) -> Any:
            x = args[0] if args else kwargs.get("input")  # torch.clamp(input=x, ...) too
            if isinstance(x, Tensor) and x.is_floating_point():
                args = args[:1] + tuple(floats(a, x) for a in args[1:])
                kwargs = {k: floats(v, x) if k in ("min", "max") else v for k, v in kwargs.items()}
            return original(*args, **kwargs)

        return call

    for owner, name in patched:
        setattr(owner, name, promoting(getattr(owner, name)))
    try:
        yield
    finally:
        for (owner, name), original in originals.items():
            if original is None:  # inherited (a TensorBase method): drop the patch
                delattr(owner, name)
            else:
                setattr(owner, name, original)


#: Integer tensor dtypes (a clamp bound of one is taken in the clamped tensor's dtype).
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


@contextlib.contextmanager
def _nested_tensor_zeros(model: nn.Module) -> Iterator[None]:
    """While inside, each ``nn.TransformerEncoder`` of ``model`` that eager inference runs on
    nested tensors writes 0 at the padded steps of its output, as that fast path does: given a
    ``src_key_padding_mask`` (and no attention mask), in eval mode without grad, the encoder
    packs the valid steps into a nested tensor and pads the result with 0. The exporter traces
    the other path, which computes the padded steps, and a layer after it that reads them (a
    recurrent layer run over the padding, unpacked) would see other values than eager torch.
    Zeros at steps that no later layer reads change nothing. With an encoder's final norm,
    the padded steps hold the norm of 0, as in eager torch; a batch whose mask is not each
    row's valid prefix (``mask_check``) runs the other path in eager torch too."""

    def zero_padding(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
        padding, mask = bound.get("src_key_padding_mask"), bound.get("mask")
        nested = getattr(module, "use_nested_tensor", False) and not module.training
        if not nested or padding is None or mask is not None or output.dim() != 3:
            return output
        if not torch.backends.mha.get_fastpath_enabled():
            return output
        valid = padding == 0 if padding.is_floating_point() else ~padding.bool()  # [batch, T]
        padded = ~valid
        if getattr(module, "mask_check", True):  # eager nests only a batch of valid prefixes
            padded = padded & (valid[:, 1:] <= valid[:, :-1]).all()
        if not module.layers[0].self_attn.batch_first:
            padded = padded.transpose(0, 1)
        # eager pads the nested result with 0, then applies the encoder's final norm
        fill = torch.zeros_like(output[..., :1, :])
        if module.norm is not None:
            fill = module.norm(fill)
        return torch.where(padded[..., None], fill, output)

    encoders = [m for m in model.modules() if isinstance(m, nn.TransformerEncoder)]
    hooks = [m.register_forward_hook(zero_padding, with_kwargs=True) for m in encoders]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@contextlib.contextmanager
def _traceable_packing(model: nn.Module, cuts: list[str], pads: list[float]) -> Iterator[None]:
    """Let ``forward`` methods that pack and unpack around their recurrent layers trace:
    ``pack_padded_sequence`` / ``pad_packed_sequence`` are replaced where ``forward`` finds
    them (:class:`~birnn_export._packing.PackingSwap`) by functions passing a
    :class:`~birnn_export.modules.TracedPack` through the converted layers. Padded outputs are
    ``total_length`` long where it is given, else as long as the longest row, as in torch: a
    size known at run time only, whose symbol (``u0``) each such cut appends to ``cuts``. Each
    call's ``padding_value`` is appended to ``pads`` (fairseq pads with 1.0).
    """
    from torch.nn.utils import rnn as rnn_utils

    def pad(sequence: TracedPack, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        padded = _pad_for_tracing(sequence, *args, **kwargs)
        bound = inspect.signature(_pad_for_tracing).bind(sequence, *args, **kwargs)
        pads.append(float(bound.arguments.get("padding_value", 0.0)))
        if bound.arguments.get("total_length") is None:
            time_axis = 1 if bound.arguments.get("batch_first", False) else 0
            cuts.append(str(padded[0].shape[time_axis]))
        return padded

    swaps = {
        rnn_utils.pack_padded_sequence: _pack_for_tracing,
        rnn_utils.pad_packed_sequence: pad,
        rnn_utils.pack_sequence: functools.partial(_refuse_list, "pack_sequence", "packs"),
        rnn_utils.pad_sequence: functools.partial(_pad_sequence, rnn_utils.pad_sequence),
    }
    with PackingSwap(model, swaps), torch.no_grad():
        yield


class _RefusedWhileTracing(ExportError):
    """Packing the trace cannot follow, told where it is called: ``pack_sequence`` or
    ``pad_sequence`` (a list of sequences, which no graph takes), lengths as Python numbers."""


def _pad_sequence(
    pad_sequence: Callable[..., Tensor], sequences: Any, *args: Any, **kwargs: Any
) -> Tensor:
    """``pad_sequence`` while tracing: refused where it pads the rows of a tensor, the list of
    sequences the model takes, traced as a tensor (users62 F1); a list the model makes of its
    own (``[out[:, 0], out[:, -1]]``) is padded, as before (review42 R1)."""
    if isinstance(sequences, Tensor):
        _refuse_list("pad_sequence", "pads")
    return pad_sequence(sequences, *args, **kwargs)


def _refuse_list(function: str, does: str, *args: Any, **kwargs: Any) -> Any:
    """``pack_sequence`` or ``pad_sequence`` while tracing: the model takes (or makes) a list of
    sequences, and the trace of one froze its batch size (users41: the refusal told of len() and
    Python numbers; users62 F1: of a size to declare as a number, for ``pad_sequence``)."""
    raise _RefusedWhileTracing(
        f"{function}{_calling_line()} {does} a list of sequences, and a graph takes tensors, "
        "not a list of any length: take the padded batch and its lengths, forward(self, x, "
        "lengths), "
        "and pack them with pack_padded_sequence(x, lengths, batch_first=True, "
        "enforce_sorted=False), which birnn-export exports with any batch size and length"
    )


def _outputs_in_eager_dtypes(proto: Any, eager_out: Sequence[Tensor]) -> None:
    """Cast a float output back to the dtype the model returns it in: the exporter computes a
    float16 reduction (``x.sum(-1)``) in float32 and, where its result is a graph output, may
    leave out the cast back, so a float16 graph would return float32 there."""
    from onnx import TensorProto, helper

    graph = proto.graph
    wanted = {torch.float16: TensorProto.FLOAT16, torch.float32: TensorProto.FLOAT}
    for output, tensor in zip(graph.output, eager_out, strict=False):
        elem = wanted.get(tensor.dtype)
        has = output.type.tensor_type.elem_type
        if elem is None or has == elem or has not in wanted.values():
            continue
        inner = f"{output.name}/as_computed"
        for node in graph.node:
            node.output[:] = [inner if o == output.name else o for o in node.output]
        graph.node.append(
            helper.make_node("Cast", [inner], [output.name], name=f"{output.name}/Cast", to=elem)
        )
        output.type.tensor_type.elem_type = elem


def _longest_rows(planned: PlannedInputs, inputs: Sequence[Tensor]) -> dict[str, int]:
    """Each ragged time dim's longest row in the example ``inputs``, by its lengths input or
    mask."""
    longest = {}
    for decl, tensor in zip(planned.decls, inputs, strict=True):
        if decl.measures:
            longest[decl.measures] = int(tensor.max())
        elif decl.mask is not None:
            valid = (tensor != 0) if decl.mask == "mask" else (tensor == 0)
            # a [batch, TIME] or [TIME, batch] mask, or a nested dim's [batch, OUTER, DIM]
            steps = -1 if decl.nests else 1 - decl.dims.index(planned.batch_dim)
            longest[str(mask_dim(decl))] = int(valid.sum(steps).max())
    return longest


def _tidy_dims(proto: Any) -> None:
    """Drop doubled parentheses from the dims the exporter names by expression
    (``(((time - 1)//2)) + 1`` reads ``((time - 1)//2) + 1``), everywhere a dim is named, so
    each name stays one name."""
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and "((" in dim.dim_param:
                dim.dim_param = _single_parentheses(dim.dim_param)


def _single_parentheses(text: str) -> str:
    """``text`` without a pair of parentheses that only wraps another pair."""
    match, opened = {}, []
    for i, char in enumerate(text):
        if char == "(":
            opened.append(i)
        elif char == ")" and opened:
            match[opened.pop()] = i
    if opened:  # unbalanced: leave it as the exporter wrote it
        return text
    drop = {
        at for start, end in match.items() if match.get(start + 1) == end - 1 for at in (start, end)
    }
    return "".join(char for i, char in enumerate(text) if i not in drop)


def _name_longest_dims(
    proto: Any,
    planned: PlannedInputs,
    longest: Mapping[str, int],
    shapes: Sequence[tuple[int, ...]],
) -> None:
    """Name the data-dependent dims the exporter calls ``u0``, ``u1``... after what they are
    when the model cut its padded output to the longest row: ``longest(time)``, a dim derived
    from the time dim (its valid steps are the lengths the recurrent layers saw).

    An output's such dim is told by its size on the example (``shapes``, the model's outputs)
    against each sequence's longest row there (``longest``): a dim of another size (the
    longest row subsampled, ``ys[:, ::2]`` between layers, is a dim of its own) and a dim
    where two sequences' longest rows are equally long keep the exporter's name (one name for
    two sizes would be wrong: engines plan buffers by it); dims derived from a named one
    (``((u0 + 1)//2)``) name it too. A model that finds its lengths itself (no lengths input
    or mask) ran on whole rows: its longest row is the example's length."""
    graph = proto.graph
    if not longest and planned.time_dim in planned.examples:  # lengths found by the model
        longest = {planned.time_dim: planned.examples[planned.time_dim]}  # on whole rows
    sizes = list(longest.values())
    by_size = {n: d for d, n in longest.items() if sizes.count(n) == 1}
    names: dict[str, str] = {}
    for value, shape in zip(graph.output, shapes, strict=False):
        for dim, size in zip(value.type.tensor_type.shape.dim, shape, strict=False):
            if re.fullmatch(r"u\d+", dim.dim_param) and size in by_size:
                names.setdefault(dim.dim_param, f"longest({by_size[size]})")
    if not names:
        return
    symbol = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):  # ((u0 + 1)//2) too: ((longest(seq) + 1)//2)
                dim.dim_param = symbol.sub(lambda m: names[m[1]], dim.dim_param)


#: A guard torch.export adds where code fixes a symbolic size to the example's number.
_FIXING_GUARD = re.compile(r"^Eq\((?:s\d+, (\d+)|(\d+), s\d+)\)$")


@contextlib.contextmanager
def _fixed_sizes() -> Iterator[dict[int, str]]:
    """Where the trace fixed a symbolic size to the example's number in the model's own code
    (``len(x)``, ``int(x.shape[0])``, ``range(x.size(1))``): ``{number: " at FILE:LINE
    (code)"}``, the first place for each number, from the guards torch.export's shape
    environment logs as it adds them (its logger is quiet otherwise)."""
    found: dict[int, str] = {}
    ours = (os.path.dirname(torch.__file__), os.path.dirname(os.path.abspath(__file__)))

    class Guards(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "[guard added]" not in str(record.msg) or len(record.args or ()) < 3:
                return
            match = _FIXING_GUARD.match(str(record.args[1]))
            where = getattr(record.args[2], "maybe_user_loc", None) or getattr(
                record.args[2], "framework_loc", None
            )
            if not match:
                return
            if hasattr(where, "filename") and not where.filename.startswith(ours):
                at = _at_line(where.filename, where.lineno, where.line)
                found.setdefault(int(match[1] or match[2]), at)
            else:  # fixed inside torch (a pooling kernel's int()): the model's line calling it
                at = _calling_line()
                if at:
                    found.setdefault(int(match[1] or match[2]), at)

    shapes = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    handlers, level, propagate = shapes.handlers[:], shapes.level, shapes.propagate
    shapes.handlers[:] = [Guards()]  # torch's own would print them (TORCH_LOGS=dynamic)
    shapes.setLevel(logging.INFO)
    shapes.propagate = False
    try:
        yield found
    finally:
        shapes.handlers[:] = handlers
        shapes.setLevel(level)
        shapes.propagate = propagate


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs progress and warnings meant for its developers; keep the CLI readable."""
    # Those with a level of their own: the rest, and those made meanwhile, inherit torch's. Each
    # setLevel clears every logger's cache, and torch has hundreds (0.25 s an export, all set).
    loggers = [logging.getLogger("torch")] + [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("torch.") and isinstance(logger, logging.Logger) and logger.level
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), quiet_here():  # a failed graph is printed to stderr
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _packs_sequences(model: nn.Module, pads_to_longest: bool = False) -> str | None:
    """The method that packs sequences, as ``Class.method``: in the model's own class, else the
    first of its modules' (ESPnet's encoder packs in its ``RNNP``, kraken's network in a layer),
    its base classes' included (a subclass calling ``super().forward``, AllenNLP's
    ``sort_and_run_forward``), under the names its module imports them as (OpenNMT's ``pack``),
    or ``None``. ``pads_to_longest``: the one that pads them back without ``total_length``."""
    from torch.nn.utils import rnn

    for module in model.modules():
        for cls in type(module).__mro__:
            if cls.__module__.startswith(("birnn_export.", "torch.", "builtins")):
                continue  # BiRNN packs itself; the user's code is what the advice is about
            names = vars(sys.modules[cls.__module__]) if cls.__module__ in sys.modules else {}
            pack, unpack = (
                "|".join({fn.__name__, *(k for k, v in names.items() if v is fn)})
                for fn in (rnn.pack_padded_sequence, rnn.pad_packed_sequence)
            )
            for name, function in vars(cls).items():
                try:
                    source = inspect.getsource(function)
                except (OSError, TypeError):
                    continue
                if re.search(rf"\b({pack})\(", source) and (
                    not pads_to_longest
                    or re.search(rf"\b({unpack})\((?![^)]*total_length)", source)
                ):
                    return f"{cls.__name__}.{name}"
    return None


def _looped_cells(model: nn.Module, inputs: Sequence[Tensor]) -> list[tuple[str, Any, int]]:
    """Each ``nn.LSTMCell`` (``GRUCell``, ``RNNCell``) that ``model`` runs more than once on
    ``inputs`` (in a Python loop): its name, the cell and how many times; empty where the model
    has none or fails there (its own failure is reported where it happened)."""
    cells = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.RNNCellBase)]
    if not cells:
        return []
    calls = dict.fromkeys([n for n, _ in cells], 0)
    handles = [
        cell.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
        for name, cell in cells
    ]
    try:
        if not _runs_quietly(model, inputs):
            return []
    finally:
        for handle in handles:
            handle.remove()
    return [(n, m, calls[n]) for n, m in cells if calls[n] > 1]


def _loop_count_follows(
    model: nn.Module,
    inputs: Sequence[Tensor],
    planned: PlannedInputs,
    taken: set[int],
    dtype: torch.dtype,
) -> bool:
    """Whether a cell's Python loop runs as many times as an example size (a loop over the
    input's steps, a word's characters) or another number of times at a longer example (a
    decoder's ``2 * T`` steps); ``False`` for a decoder of a fixed number of steps, whose
    unrolled loop freezes no size; ``True`` where no longer example fits the range."""
    counts = {name: count for name, _, count in _looped_cells(model, inputs)}
    if set(counts.values()) & set(planned.examples.values()):
        return True
    longer = with_longer_example(planned, taken)
    if longer is None:
        return True
    other = [t.to(dtype) if t.is_floating_point() else t for t in longer.tensors]
    again = {name: count for name, _, count in _looped_cells(model, other)}
    return any(again.get(name) != count for name, count in counts.items())


def _cell_loop(model: nn.Module, inputs: Sequence[Tensor]) -> str | None:
    """What to do about a cell that ``model`` runs in a Python loop whose count follows the
    input (over its steps, or a decoder's steps bounded by it), which tracing unrolls to the
    example's count."""
    looped = _looped_cells(model, inputs)
    if not looped:
        return None
    name, cell, _ = looped[0]
    layer = {"LSTMCell": "LSTM", "GRUCell": "GRU"}.get(type(cell).__name__, "RNN")
    return (
        f"{type(model).__name__} runs nn.{type(cell).__name__} {name!r} in a Python loop, "
        "which tracing unrolls to the example's count, so the graph cannot take other lengths; "
        f"a loop over the input's steps is a layer: use nn.{layer}(..., bidirectional=True) "
        "(or birnn_export.BiRNN) instead, which runs the loop inside one node and takes the "
        "cell's weights as weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0; a decoding "
        "loop (each step fed the one before, a seq2seq decoder) cannot vary its step count in "
        "one graph: export the encoder alone and run the decoder's steps outside it, or decode "
        "a fixed number of steps"
    )


def _unrolled_cells_notes(model: nn.Module, inputs: Sequence[Tensor]) -> list[str]:
    """A note for each cell the graph runs a fixed number of times: a loop whose count does not
    follow the input (a decoder's fixed number of steps), unrolled into the graph."""
    return [
        f"nn.{type(cell).__name__} {name!r} runs {count} times in a Python loop, unrolled into "
        f"the graph: the graph runs it {count} times at every input size (a decoder decoding a "
        "fixed number of steps)"
        for name, cell, count in _looped_cells(model, inputs)
    ]


#: torch's recurrent kernels, as nn.LSTM's own forward calls them (``torch._VF.lstm(x, hx,
#: flat_weights, ...)``).
_KERNELS = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}


def _direct_kernel(model: nn.Module) -> str | None:
    """What to do about a model without a recurrent layer whose code calls torch's recurrent
    kernel itself (``torch._VF.lstm`` with weights of its own, in a method of its classes or a
    function of their modules that one calls): there is no layer to convert, and the call
    traces only at the example's shapes. Calls are found in the code (comments and strings are
    not code); ``None`` for a model with a recurrent layer, whose kernel calls are its
    layers'."""
    import sys

    if find_recurrent_layers(model):
        return None
    for cls in dict.fromkeys(type(m) for m in model.modules()):
        if cls.__module__.startswith("torch."):
            continue
        module = sys.modules.get(cls.__module__)
        tree = _parsed(cls)
        calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call)] if tree else []
        called = sorted({f.id for f in calls if isinstance(f, ast.Name)})
        helpers = [getattr(module, name, None) for name in called]
        for code in [cls, *(f for f in helpers if inspect.isfunction(f))]:
            found = _kernel_call(_parsed(code))
            if found is not None:
                layer = _KERNELS[found[0].split(".")[-1]]
                return (
                    f"{type(model).__name__} holds no recurrent layer and its code calls torch's "
                    f"recurrent kernel itself ({found[0]} at {_where(code, found[1])}), which "
                    "traces only at the example's shapes; "
                    f"hold the weights in an nn.{layer}(..., bidirectional=True) and call it "
                    "(its parameters are weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, "
                    "and the same with _reverse, in torch's gate order)"
                )
    return None


def _where(code: Any, line: int) -> str:
    """``FILE:LINE`` of line ``line`` (1 = its first) of ``code``'s source."""
    try:
        first = inspect.getsourcelines(code)[1]
        return f"{os.path.basename(inspect.getsourcefile(code) or '?')}:{first + line - 1}"
    except (OSError, TypeError):
        return code.__qualname__


def _parsed(code: Any) -> ast.AST | None:
    """The syntax tree of a class's or function's source, or None where it has none."""
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(code)))
    except (OSError, TypeError, SyntaxError):
        return None


def _kernel_call(tree: ast.AST | None) -> tuple[str, int] | None:
    """(``_VF.lstm``, line) of the first call of a recurrent kernel in ``tree``."""
    for node in ast.walk(tree) if tree is not None else ():
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Attribute) and func.attr in _KERNELS:
            owner = getattr(func.value, "attr", None) or getattr(func.value, "id", "")
            if owner in ("_VF", "torch"):
                return f"{owner}.{func.attr}", node.lineno
    return None


def _first_line(exc: BaseException) -> str:
    text = _TORCH_LOGS.sub("", _ANSI.sub("", str(exc))).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: torch's advice to rerun with its logs on, which shows nothing here: birnn-export takes those
#: logs itself (:func:`_fixed_sizes`) and keeps the exporter quiet.
_TORCH_LOGS = re.compile(r"\s*For more information, run with TORCH_LOGS=\S+\.?")


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain and len(chain) < 20:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return chain


@functools.cache
def _library_paths() -> tuple[tuple[str, ...], str]:
    """torch's and birnn-export's folders (and ``<``, generated code), and Python's library."""
    import sysconfig

    ours = (os.path.dirname(torch.__file__), os.path.dirname(os.path.abspath(__file__)), "<")
    return ours, sysconfig.get_paths()["stdlib"]


def _library_file(name: str) -> bool:
    """Whether ``name`` is code of torch, the exporter, birnn-export or Python's own library
    (not a package installed in it), or generated code: not the model's."""
    ours, stdlib = _library_paths()
    installed = "site-packages" in name or "dist-packages" in name
    return (
        name.startswith(ours)
        or any(f"/{p}/" in name for p in ("torch", "onnxscript", "onnx", "onnx_ir"))
        or (name.startswith(stdlib) and not installed)
    )


def _calling_line() -> str:
    """`` at FILE:LINE (code)`` of the innermost line of the model's code on the stack, where a
    module's forward runs it (a guard added after the trace has none: not the line calling the
    export), or nothing."""
    import traceback

    stack = traceback.extract_stack()
    for i in range(len(stack) - 1, -1, -1):
        if not _library_file(stack[i].filename):
            if any(f.name in ("_call_impl", "_wrapped_call_impl") for f in stack[:i]):
                return _at_line(stack[i].filename, stack[i].lineno, stack[i].line)
            return ""
    return ""


def _model_frame(model: nn.Module, causes: Sequence[BaseException]) -> Any:
    """The traceback entry of the last line of the model's own source the failure passed
    through, else of any code outside torch, birnn-export and Python's own library (a layer
    the model imports, as asteroid's gLN), or ``None``."""
    try:
        source = inspect.getsourcefile(type(model))
    except (TypeError, OSError):
        source = None
    for own_file in (True, False):
        for cause in causes:
            found, entry = None, cause.__traceback__
            while entry is not None:
                name = entry.tb_frame.f_code.co_filename
                if name == source if own_file else not _library_file(name):
                    found = entry
                entry = entry.tb_next
            if found is not None:
                return found
    return None


def _user_method(model: nn.Module, causes: Sequence[BaseException]) -> str:
    """``Inner.forward``: the method of the line :func:`_model_frame` finds (a submodule's,
    review42 R8), else the model's forward."""
    found = _model_frame(model, causes)
    owner = found.tb_frame.f_locals.get("self") if found is not None else None
    if isinstance(owner, nn.Module):
        return f"{type(owner).__name__}.{found.tb_frame.f_code.co_name}"
    return f"{type(model).__name__}.forward"


def _user_line(model: nn.Module, causes: Sequence[BaseException]) -> str:
    """`` at FILE:LINE (code)``: the line :func:`_model_frame` finds, else the last line of
    the model's code in a traced node's own traceback, or nothing."""
    import linecache

    found = _model_frame(model, causes)
    if found is not None:
        name = found.tb_frame.f_code.co_filename
        return _at_line(name, found.tb_lineno, linecache.getline(name, found.tb_lineno))
    for cause in causes:  # failed translating the traced graph: the node's own traceback
        _, said, original = str(cause).partition("Original traceback:")
        matches = _TRACEBACK_LINE.findall(original) if said else []
        lines = [m for m in matches if not _library_file(m[0])]
        if lines:
            filename, lineno, code = lines[-1]
            return _at_line(filename, lineno, code)
    return ""


#: A line of a traceback as Python prints it: its file, line number and code.
_TRACEBACK_LINE = re.compile(r'File "([^"]+)", line (\d+), in \S+\n[ \t]*(\S[^\n]*)')


#: torch's error for code that reads a traced tensor's memory (``copy.deepcopy(lengths)``, as
#: VAC's sign-language models compute their conv-shortened lengths).
_DATA_POINTER = "Cannot access data pointer of Tensor"

#: Problems of a graph ONNX itself cannot type or check.
_INVALID_GRAPH = re.compile(r"onnx\.checker:|strict shape inference:")
#: torch.export's guard on a run-time size (pad_packed_sequence's longest row, ``u0``) against
#: an input's (``s1``): ``Eq(u0, s1)``, as ``assert out.size(0) == seqlen`` makes.
_LONGEST_VS_PADDED = re.compile(r"\b(?:Eq|Ne)\((?:u\d+, s\d+|s\d+, u\d+)\)")
#: torch's error for ``.numpy()`` on a traced tensor (Tacotron 2's ``lengths.cpu().numpy()``).
_TO_NUMPY = ".numpy() is not supported for tensor subclasses"
_NO_OVERLOAD = re.compile(r"Cannot find a compatible OpOverload for aten\.(\w+)")
_CONSTANT_DIM = re.compile(r"(\w+) was inferred to be a constant \((\d+)\)")
#: A tensor the trace met outside it (``x.data``), made a constant of the module it is in.
_LIFTED = re.compile(r"model attribute: ((?:[\w]+\.)*?[\w]+)\.lifted_tensor_\d+")
_GUARD = re.compile(r"Not all values of (\w+) .*? satisfy the generated guard (.+?)\.?$", re.M)
_SPECIALIZED = re.compile(
    r"You marked (\w+) as dynamic but your code specialized it to be a constant \((\d+)\)"
)


def _explain_trace_failure(
    model: nn.Module,
    exc: Exception,
    planned: PlannedInputs,
    inputs: Sequence[Tensor],
    cuts: Sequence[str],
    crfs: Sequence[str],
) -> str:
    """The one line for a failed trace: its cause in the model, where one is told, and what to
    do."""
    text = str(exc)
    causes = _causes(exc)
    listed = next((c for c in causes if isinstance(c, _RefusedWhileTracing)), None)
    if listed is not None:
        return str(listed)
    # torch.export's own wrapper says only that it failed: the cause says why
    cause = next((c for c in reversed(causes) if str(c).strip()), exc)
    if crfs:  # its Viterbi loop over time fails or freezes the length: say what to do instead
        return (
            f"{', '.join(crfs)}: {HAND_WRITTEN_HINT} (torch.onnx.export: "
            f"{type(cause).__name__}: {_first_line(cause)})"
        )
    data_dependent = any("data-dependent" in str(c) or _TO_NUMPY in str(c) for c in causes)
    cells = None if data_dependent else _cell_loop(model, inputs)
    if cells:
        return cells
    unswapped = _unswapped_packing(causes)
    if unswapped:
        return (
            f"{type(model).__name__} gives a recurrent layer a PackedSequence{unswapped} made by "
            "a pack_padded_sequence birnn-export could not swap for its traceable one (it "
            "reaches the modules of the model's classes and of the functions they import): "
            f"call it from there, or {_BIRNN_CALL}"
        )
    packer = _packs_sequences(model)
    padder = _packs_sequences(model, pads_to_longest=True)
    longest = any(_LONGEST_VS_PADDED.search(str(c)) for c in causes) or any(
        "data-dependent" in str(c) and re.search(rf"\b{re.escape(cut)}\b", str(c))
        for c in causes
        for cut in cuts
    )
    if longest and padder:  # the run-time length of pad_packed_sequence's output, used as a size
        return (
            f"{padder} uses the length of pad_packed_sequence's output as the input's "
            f"padded length{_user_line(model, causes)} (a comparison, a view): without "
            "total_length that output is as long as the longest row, a length known only at run "
            "time; pass it the padded length, total_length=x.size(1) (x.size(0) time-major)"
        )
    if data_dependent:
        if packer:
            instead = f"; {_PACKING_HINT}"
        elif _looped_cells(model, inputs):  # a decoder that stops on its output
            instead = (
                "; a decoding loop that stops on its output (when every row emitted "
                "end-of-sequence) cannot vary its step count in one graph: decode a fixed number "
                "of steps, or export the encoder alone and run the decoder's steps outside it"
            )
        else:
            instead = (  # users64 F3: lengths halved in a list, a row's steps flipped in a loop
                ": compute with tensor ops (`lengths // 2`, not `[int(n) // 2 for n in "
                "lengths]`), and mask the positions past each row's length, or gather each row's "
                "steps by an index made from its length, instead of slicing rows"
            )
        return (
            f"{_user_method(model, causes)} makes a Python number of a tensor's value"
            f"{_user_line(model, causes)} (int(), .item(), .tolist(), .numpy(), an if on a "
            "tensor), and the graph cannot depend on one: keep it a tensor" + instead
        )
    if any(_DATA_POINTER in str(c) for c in causes):
        return (
            f"{type(model).__name__}.forward reads a tensor's memory"
            f"{_user_line(model, causes)} (copy.deepcopy, .data_ptr(), a numpy view), which a "
            "traced tensor has none of: copy it with .clone()"
        )
    symbolic = [str(c) for c in causes if isinstance(c, TypeError) and "SymbolicTensor" in str(c)]
    number_op = _NUMBER_OF_A_SIZE.search("\n".join(map(str, causes))) if symbolic else None
    if number_op and not any(s.startswith("float()") for s in symbolic):
        return (
            f"{type(model).__name__}.forward (or a forward it calls) gives a size to torch's "
            f"{number_op[1]} as a number{_user_line(model, causes)} (aten."
            f"{number_op[1]}.{number_op[2]}, "
            "torch.remainder(t, x.size(1)), t % x.size(1)), which the exporter converts for "
            "fixed numbers only: make the size a tensor, torch.scalar_tensor(x.size(1), "
            "dtype=torch.long)"
        )
    if symbolic:
        return (
            f"{type(model).__name__}.forward computes with a size as a float"
            f"{_user_line(model, causes)} (a size divided by a size with /, float(x.shape[i])), "
            "which the exporter cannot keep: keep size arithmetic in integers (lengths * a // b)"
        )
    lifted = next((m for c in causes for m in [_LIFTED.search(str(c))] if m), None)
    if lifted:  # x.data.new_ones(...): a tensor made outside the trace
        return (
            f"{type(model).__name__}.forward makes a tensor the trace cannot follow in "
            f"{_module_named(model, lifted[1])}{_source_line(model, lifted[1], '.data')} (the "
            "tensor of .data, or one made from it, x.data.new_ones(...), is outside the "
            "trace): use the tensor itself (x.new_ones(...))"
        )
    for pattern in (_CONSTANT_DIM, _SPECIALIZED):
        match = pattern.search(text)
        if match:
            return (
                f"dim {match[1]!r} cannot vary: {type(model).__name__} fixes it to {match[2]}; "
                f"declare it as the number {match[2]} (e.g. --input with {match[2]} in its place)"
            )
    match = _GUARD.search(text)
    if match:
        return (
            f"dim {match[1]!r}: {type(model).__name__} only takes {match[2].strip()}; declare a "
            f"range inside that (--range {match[1]}=MIN,OPT,MAX)"
        )
    overload = _NO_OVERLOAD.search(str(cause))
    if overload:  # the exporter's type promotion made a number argument a tensor
        return (
            f"torch.onnx.export failed for {type(model).__name__}: no overload of "
            f"aten.{overload[1]}{_user_line(model, causes)} takes the arguments as the "
            "exporter's type promotion leaves them (a number made a tensor); where the call "
            "mixes int and float arguments (50 and 8000.0), give them one type (50.0, 8000.0)"
        )
    attribute = next((m for c in causes for m in [_PACK_ATTRIBUTE.search(str(c))] if m), None)
    if attribute:  # a head on PackedSequence.data, re-wrapped with its batch_sizes (users62 F3)
        return (
            f"{_user_method(model, causes)} uses a PackedSequence's .{attribute[1]}"
            f"{_user_line(model, causes)}, which does not export (only pack_padded_sequence -> "
            "recurrent layer -> pad_packed_sequence does): apply what it does with the packed "
            "data (a head on .data, say) to pad_packed_sequence's padded output instead, the "
            "same at valid steps"
        )
    message = (
        f"torch.onnx.export failed for {type(model).__name__}{_user_line(model, causes)}: "
        f"{type(cause).__name__}: {_first_line(cause)}"
    )
    if packer:
        message += f"; {_PACKING_HINT}"
    return message


def _module_named(model: nn.Module, path: str) -> str:
    """``'drop' (RNNDropout)``: a submodule by its path, with its class."""
    try:
        return f"{path!r} ({type(model.get_submodule(path)).__name__})"
    except AttributeError:
        return repr(path)


def _at_line(filename: str, lineno: Any, code: str | None) -> str:
    """`` at FILE:LINE (code)``, a long line's code cut at a word with ``...`` (mid-word where
    its words are long: code written without spaces)."""
    code = " ".join((code or "").split())
    if code.endswith((",", "(", "[", "{", "\\")):  # a call that goes on: not its ")" (users43)
        code += " ..."
    shown = textwrap.shorten(code, 100, placeholder=" ...")
    if len(shown) < 50 < len(code):
        shown = code[:96] + " ..."
    return f" at {os.path.basename(filename)}:{lineno} ({shown})"


def _source_line(model: nn.Module, path: str, code: str) -> str:
    """`` at FILE:LINE (line)``: the first line of the submodule's ``forward`` that holds
    ``code``, or nothing."""
    try:
        forward = type(model.get_submodule(path)).forward
        lines, first = inspect.getsourcelines(forward)
        name = inspect.getsourcefile(forward) or ""
    except (AttributeError, OSError, TypeError):
        return ""
    for number, line in enumerate(lines, first):
        if code in line:
            return _at_line(name, number, line)
    return ""


def _unswapped_packing(causes: Sequence[BaseException]) -> str:
    """`` at FILE:LINE (code)`` of the model's line that gave a converted layer a real
    ``PackedSequence`` while tracing (packed by a ``pack_padded_sequence`` the swap did not
    reach; the layer cannot trace one), or nothing."""
    import traceback

    ours = os.path.dirname(os.path.abspath(__file__))
    for cause in causes:
        frames = traceback.extract_tb(cause.__traceback__)
        if not any(f.name == "_forward_packed_sequence" for f in frames):
            continue
        users = [
            f
            for f in frames
            if not f.filename.startswith(ours)
            and "/torch/" not in f.filename.replace(os.sep, "/")
            and os.path.isfile(f.filename)
        ]
        if users:
            line = users[-1]
            return _at_line(line.filename, line.lineno, line.line)
    return ""


#: A translation that failed on a size given where an aten op's overload takes a number.
_NUMBER_OF_A_SIZE = re.compile(
    r"target=torch\.ops\.aten\.(\w+)\.(Scalar\w*)\]\(args = \([^)]*%sym_size_int"
)
#: Packing no swap reaches: the converted layer takes the lengths itself (users62 F3: the call
#: alone, on the user's nn.LSTM, passes the lengths as its hidden state).
_BIRNN_CALL = (
    "make the layer a birnn_export.BiRNN (BiRNN.from_torch(layer)) and call it as out, h = "
    "self.rnn(x, lengths)"
)
#: A PackedSequence's attribute the traced packing has none of (its .data is the padded batch).
_PACK_ATTRIBUTE = re.compile(r"'TracedPack' object has no attribute '(\w+)'")
_PACKING_HINT = (
    "its forward packs sequences: pack_padded_sequence -> recurrent layer -> "
    "pad_packed_sequence exports (the padded batch sorted before and restored after, too), "
    "other uses of a PackedSequence (its .data or .batch_sizes, indexing it) do not, nor "
    "lengths made Python numbers (.tolist(), int(), .numpy()): pass the lengths "
    f"tensor, or {_BIRNN_CALL}"
)
