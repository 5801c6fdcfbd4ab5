"""Verifying a graph birnn-export did not write: ``torch.onnx.export``'s (dynamo or legacy), one
exported by hand around a workaround, or another tool's.

Such a graph holds no spec. The model is traced here as ``birnn-export MODEL.pt`` would trace it
(or the spec of a graph birnn-export wrote for it, ``like``, is read), and the foreign graph's
inputs and outputs are matched with that spec's: by name where the names agree, else in order,
else in the one order whose dtypes and ranks agree. The matched spec, under the foreign graph's
names and dtypes, in its precision (float16 where its inputs, outputs or most weights are) and
marked int8 where ONNX Runtime's dynamic quantization wrote into it, then drives verification's
sweep and the benchmark's shapes. A dim the foreign graph's inputs fix where the model's is
dynamic (a batch of 1, a sequence length frozen at the example's) is a problem in the report;
the sweep runs at that size, the only one the graph takes.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from birnn_export.errors import BiRNNExportError
from birnn_export.quantize import INT8
from birnn_export.spec import (
    MASK_ROLES,
    METADATA_KEY,
    RECURRENT_OPS,
    GraphSpec,
    TensorSpec,
    holds_quantized_nodes,
)


def is_foreign(proto: Any) -> bool:
    """Whether ``proto`` was written by another tool than birnn-export (no spec, and another
    producer: one of ours that lost its metadata is told how to restore it instead)."""
    return proto.producer_name != "birnn-export" and not any(
        p.key == METADATA_KEY for p in proto.metadata_props
    )


@dataclass(frozen=True)
class ForeignGraph:
    """The spec that drives the sweep of a foreign graph, under its names.

    Attributes:
        spec: The model's spec, its inputs and outputs renamed to the graph's, the dims the graph
            fixes fixed at their size.
        fixed: ``{dim: size}`` for the model's dynamic dims that the graph declares fixed.
        notes: What was matched how, for the report.
    """

    spec: GraphSpec
    fixed: dict[str, int]
    notes: tuple[str, ...]

    def sizes(
        self, batch_sizes: Sequence[int] | None, seq_lens: Sequence[int] | None
    ) -> tuple[Sequence[int] | None, Sequence[int] | None]:
        """The batch sizes and lengths to run where the graph fixes its batch or time dim:
        that size, the only one it takes (asking for another is refused)."""
        chosen = []
        for dim, given, option in (
            (self.spec.batch_dim, batch_sizes, "batch_sizes"),
            (self.spec.time_dim, seq_lens, "seq_lens"),
        ):
            size = self.fixed.get(dim)
            if size is not None and given is not None and set(given) != {size}:
                raise BiRNNExportError(
                    f"{option}: the graph fixes {dim!r} at {size} and takes no other size; "
                    f"ask for {size} or leave it out"
                )
            chosen.append((size,) if size is not None and given is None else given)
        return chosen[0], chosen[1]


def read_spec(
    proto: Any,
    path: str,
    model: Any,
    like: str | os.PathLike[str] | None,
    load_options: Mapping[str, Any] | None,
) -> tuple[GraphSpec, ForeignGraph | None, Any, Mapping[str, Any] | None]:
    """The spec that drives verification and benchmarks of ``proto``: its own, else (a foreign
    graph) :func:`foreign_spec`'s, the model loaded for it. Returns the spec, the foreign
    graph's match (``None`` for one of ours), and the model and its load options as they are
    to be read from then on (loaded: no options).

    Raises:
        BiRNNExportError: unreadable or changed metadata; ``like`` beside a graph of ours; a
            foreign graph that does not match the model.
    """
    from birnn_export.spec import refuse_changed

    if not is_foreign(proto):
        if like is not None:
            raise BiRNNExportError(
                f"like: {path} was written by birnn-export and its own metadata says its "
                "inputs; drop --like"
            )
        try:
            spec = GraphSpec.from_onnx(proto)
        except BiRNNExportError as exc:  # unreadable metadata, or lost: which file
            raise type(exc)(f"{path}: {exc}") from None
        refuse_changed(proto, spec, path)
        return spec, None, model, load_options
    if model is not None:
        from birnn_export.checkpoint import load_if_path

        model, load_options = load_if_path(model, load_options), None
    foreign = foreign_spec(proto, path, model, like)
    return foreign.spec, foreign, model, load_options


def foreign_spec(
    proto: Any, path: str, model: Any, like: str | os.PathLike[str] | None
) -> ForeignGraph:
    """The spec to verify foreign ``proto`` by: ``like``'s (a graph birnn-export wrote from the
    same model), else the model's own trace (``model``: a module or a
    :class:`~birnn_export.checkpoint.LoadedModel`).

    Raises:
        BiRNNExportError: the model cannot be traced, or the graph's inputs or outputs do not
            match the model's (count, dtype, rank, a fixed size).
    """
    if like is not None:
        spec, source = GraphSpec.from_onnx(os.fspath(like)), f"those of {os.fspath(like)}"
    elif model is None:
        raise BiRNNExportError(
            f"{path}: it was not written by birnn-export, and saved outputs alone do not say its "
            "inputs: give --model, or --like with a graph birnn-export wrote from the same model"
        )
    else:
        spec, source = _traced(path, model), "the model's, traced as birnn-export exports it"
    initializers = {i.name for i in proto.graph.initializer}
    inputs, inputs_how = _match(
        path, "input", [i for i in proto.graph.input if i.name not in initializers], spec.inputs
    )
    outputs, outputs_how = _match(path, "output", list(proto.graph.output), spec.outputs)
    fixed: dict[str, int] = {}
    for ours, theirs in inputs:
        for dim, size in zip(ours.dims, _declared(theirs) or [None] * len(ours.dims), strict=True):
            if isinstance(dim, str) and size is not None and fixed.setdefault(dim, size) != size:
                raise BiRNNExportError(
                    f"{path}: its inputs fix dim {dim!r} at {fixed[dim]} and at {size}; the "
                    "model takes one size for it in every input"
                )
    renamed = dataclasses.replace(
        spec,
        inputs=tuple(_as(ours, theirs) for ours, theirs in inputs),
        outputs=tuple(_as(ours, theirs) for ours, theirs in outputs),
        recurrent_layers=(),
        layout="foreign",
        dtype=_precision(proto, [*inputs, *outputs]),
        # ONNX Runtime's dynamic quantization of it: judged as birnn-export's int8 graphs are
        quantization=INT8 if holds_quantized_nodes(proto) else None,
        # the file ``like`` came from says nothing of this graph: told below instead
        source_sha256=None,
        **_fixed_ranges(spec, fixed),
    )
    notes = [
        f"{path} was not written by birnn-export: its inputs and outputs were matched with "
        f"{source}{_pairs(inputs, inputs_how)}{_pairs(outputs, outputs_how)}; its outputs were "
        "compared, not each recurrent layer"
    ]
    sha = getattr(model, "sha256", None)  # a LoadedModel's
    if like is not None and spec.source_sha256 and sha and sha != spec.source_sha256:
        notes.append(
            f"--like {os.fspath(like)} was exported from a file with sha256 "
            f"{spec.source_sha256[:12]}..., the model given has {sha[:12]}...: the inputs it lent "
            "(their vocabulary, their ranges) may be another model's"
        )
    if fixed:
        sizes = ", ".join(f"{dim}={size}" for dim, size in fixed.items())
        notes.append(
            f"the graph fixes {sizes}, which the model takes at any size: verified at that size "
            "only (export with dynamic axes to serve others)"
        )
    return ForeignGraph(renamed, fixed, tuple(notes))


def _precision(proto: Any, pairs: Sequence[tuple[TensorSpec, Any]]) -> str:
    """``"float16"`` for a graph whose float inputs or outputs are float16 (torch's export of a
    ``.half()`` model, onnxconverter-common's conversion), or whose weights mostly are (the
    same conversion with ``keep_io_types=True``: float32 in and out, float16 inside: users45),
    else ``"float32"``: the precision eager runs the model in for the noise floor, as for
    birnn-export's own float16 graphs."""
    from onnx import TensorProto

    kinds = [i.data_type for i in proto.graph.initializer]
    halves = kinds.count(TensorProto.FLOAT16) > kinds.count(TensorProto.FLOAT)
    return "float16" if halves or any(_dtype(t) == "float16" for _, t in pairs) else "float32"


def _traced(path: str, model: Any) -> GraphSpec:
    """The spec ``birnn-export MODEL.pt`` would write for ``model``."""
    from birnn_export.checkpoint import LoadedModel
    from birnn_export.export import trace_graph

    if isinstance(model, LoadedModel):
        options: dict[str, Any] = dict(
            reference=model.original,
            inputs=list(model.inputs or ()) or None,
            ranges=dict(model.ranges or {}),
            config=model.config,
            source_sha256=model.sha256,
        )
        model = model.model
    else:
        options = {}
    try:
        return trace_graph(model, **options).spec
    except BiRNNExportError as exc:
        raise type(exc)(
            f"{path} was not written by birnn-export, so the model is traced to learn its "
            f"inputs, and that failed: {exc}; so export the model with 'birnn-export MODEL.pt' "
            "and the options this names, then verify with --like and that graph"
        ) from None


def _declared(info: Any) -> list[int | None] | None:
    """Each dim of a graph input or output: its size where fixed, ``None`` where dynamic; no
    list where the graph does not declare its shape."""
    tensor = info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]


def _match(
    path: str, kind: str, theirs: list[Any], ours: Sequence[TensorSpec]
) -> tuple[list[tuple[TensorSpec, Any]], str]:
    """Pair the model's tensors with the graph's, each with the same kind of dtype and the same
    rank: by name where the names agree, else in order, else in the one order that fits (a
    graph taking its lengths first). Returns the pairs and how they were made."""
    names = [t.name for t in theirs]
    mine = [t.name for t in ours]
    if sorted(names) == sorted(mine):
        by_name = {t.name: t for t in theirs}
        pairs, how = [(t, by_name[t.name]) for t in ours], "by name"
    elif len(theirs) == len(ours):
        pairs, how = list(zip(ours, theirs, strict=True)), "in order"
        if not all(_fits(o, t) for o, t in pairs) and len(ours) <= 6:
            fitting = [
                order
                for order in itertools.permutations(theirs)
                if all(_fits(o, t) for o, t in zip(ours, order, strict=True))
            ]
            if len(fitting) == 1:  # the only pairing whose dtypes and ranks agree
                pairs, how = list(zip(ours, fitting[0], strict=True)), "by dtype and rank"
    elif kind == "input" and set(names) < set(mine):
        lacks = [n for n in mine if n not in names]
        raise BiRNNExportError(
            f"{path}: it lacks the model's input(s) {', '.join(map(repr, lacks))}: none of its "
            "ops read them (exported from code that ignores them, and dropped as unused), so "
            "it cannot be fed what the model is; export the model with birnn-export instead"
        )
    else:
        extra = [n for n in names if n not in mine] if set(mine) < set(names) else []
        why = (
            f"its input(s) {', '.join(map(repr, extra))} are not the model's (optional "
            "arguments of forward, such as initial states, that an export leaves out): verify "
            "a graph that takes the model's inputs only"
            if kind == "input" and extra
            else "verify a graph exported from this model, with the same inputs and outputs"
            + _WRAPPED
        )
        raise BiRNNExportError(
            f"{path}: it has {len(theirs)} {kind}(s) ({', '.join(names) or 'none'}), the model "
            f"{len(ours)} ({', '.join(_shown(t) for t in ours)}): {why}"
        )
    for spec, info in pairs:
        sizes = _declared(info)
        if not _fits(spec, info):
            shape = "" if sizes is None else f"[{','.join(_dim_text(d) for d in sizes)}]"
            raise BiRNNExportError(
                f"{path}: {kind} {info.name!r} is {_dtype(info)}{shape} where the model's is "
                f"{_shown(spec)} (paired {how}): verify a graph exported from this model{_WRAPPED}"
            )
    return pairs, how


_WRAPPED = (
    "; a graph exported through a wrapper (argmax tags, softmax, another signature) "
    "is verified against the wrapper: --model-class PKG:WRAPPER, the same weights file"
)


def _fits(spec: TensorSpec, info: Any) -> bool:
    """Whether the graph's ``info`` can stand for ``spec``: the same kind of dtype (a mask of
    any: bool, 0/1 integers or floats, as the graph takes it: users45), the same rank and the
    same fixed sizes (where the graph declares its shape)."""
    sizes = _declared(info)
    masks = spec.role in MASK_ROLES and _dtype(info) != "unknown"
    if not masks and not _same_kind(spec.dtype, _dtype(info)):
        return False
    if sizes is None:
        return True
    return len(sizes) == len(spec.dims) and all(
        not isinstance(dim, int) or size is None or size == dim
        for dim, size in zip(spec.dims, sizes, strict=True)
    )


def _dtype(info: Any) -> str:
    from birnn_export.spec import ONNX_DTYPES

    return ONNX_DTYPES.get(info.type.tensor_type.elem_type, "unknown")


def _same_kind(ours: str, theirs: str) -> bool:
    """The same dtype, or both integer (token ids in int32 for int64) or mask-like, or both
    float (a float16 graph of a float32 model)."""
    whole = ("int64", "int32", "uint8", "bool")
    floats = ("float32", "float16")
    return ours == theirs or {ours, theirs} <= set(whole) or {ours, theirs} <= set(floats)


def _as(ours: TensorSpec, theirs: Any) -> TensorSpec:
    """The model's tensor under the graph's name and dtype."""
    dtype = _dtype(theirs)
    return dataclasses.replace(
        ours, name=theirs.name, dtype=ours.dtype if dtype == "unknown" else dtype
    )


def _fixed_ranges(spec: GraphSpec, fixed: Mapping[str, int]) -> dict[str, Any]:
    """The spec's ranges with the fixed dims at their one size."""
    changes: dict[str, Any] = {}
    dim_ranges = dict(spec.dim_ranges)
    for dim, size in fixed.items():
        if dim == spec.batch_dim:
            changes["batch_range"] = (size, size, size)
            changes["example_batch"] = size
        elif dim == spec.time_dim:  # its rows still as short as the model serves
            changes["seq_range"] = (min(spec.seq_range[0], size), size, size)
            changes["example_seq"] = size
        else:
            dim_ranges[dim] = (size, size, size)
    if fixed:
        changes["dim_ranges"] = dim_ranges
        changes["example_sizes"] = {**spec.example_sizes, **fixed}
        changes["untraced"] = ()  # points at other sizes the graph cannot take
        changes["assumed"] = ()
    return changes


def _pairs(pairs: Sequence[tuple[TensorSpec, Any]], how: str) -> str:
    """The pairs whose names differ, and how they were paired (in order: the cause where every
    case fails, if the graph's are in another order)."""
    renamed = [
        f"{ours.name} as {theirs.name!r}" for ours, theirs in pairs if ours.name != theirs.name
    ]
    return f" ({', '.join(renamed)}: {how})" if renamed else ""


def _shown(tensor: TensorSpec) -> str:
    return f"{tensor.name}: {tensor.dtype}[{','.join(str(d) for d in tensor.dims)}]"


def _dim_text(size: int | None) -> str:
    return "?" if size is None else str(size)


#: Ops a whole-batch flip reaches a recurrent node through in torch's exports, each axis kept
#: or moved as ``Transpose`` says: the sort and unsort of
#: ``pack_padded_sequence(enforce_sorted=False)`` (``Gather`` of rows), its time-major
#: ``Transpose``, and ops that keep every axis.
_CARRY = ("Gather", "Transpose", "Cast", "Identity")


def blame_short_rows(results: Sequence[Any], proto: Any, spec: GraphSpec) -> list[Any]:
    """The failing cases of a foreign graph (its layers not compared) that hold rows shorter
    than T, their diagnosis naming what in the graph makes such rows differ where something
    does: recurrent nodes that run the padding, or that pack an input reversed whole
    (flip-then-pack, users45 F4), where every case of full rows passes (review28 M1: a wrong
    head failed them all). A case with another diagnosis keeps it."""
    from birnn_export._case import LAYERS_OFF

    full_rows_fail = any(not r.passed and min(r.lengths or [0]) >= r.seq for r in results)
    why = None if full_rows_fail else _short_rows_suspect(proto, spec)
    if why is None:
        return list(results)
    return [
        dataclasses.replace(r, diagnosis=why)
        if not r.passed and LAYERS_OFF in (r.diagnosis or "") and min(r.lengths or [0]) < r.seq
        else r
        for r in results
    ]


def _short_rows_suspect(proto: Any, spec: GraphSpec) -> str | None:
    from birnn_export._graph import constant_tensors
    from birnn_export._layers import has_lengths, is_recurrent

    if spec.length_source is None:
        return None
    recurrent = [n for n in proto.graph.node if is_recurrent(n)]
    # a forward direction never reads the padding before a valid step (review28 M1)
    unbounded = [
        repr(n.name) for n in recurrent if _direction(n) != "forward" and not has_lengths(n)
    ]
    if unbounded:
        nodes = "node" if len(unbounded) == 1 else "nodes"
        return (
            f"recurrent {nodes} {', '.join(unbounded)} take{'s' * (len(unbounded) == 1)} no "
            "sequence_lens although the graph "
            "takes lengths: its backward direction starts at the padded end of every short row "
            "-> if the model packs its batch (each row run to its length), the code exported "
            "ran the padded batch whole (packing left out for the export): keep "
            "pack_padded_sequence in it (torch's exporter writes it as sequence_lens), or "
            "export the model with birnn-export"
        )
    made_by = {out: n for n in proto.graph.node for out in n.output}
    constants = constant_tensors(proto)
    flips = {
        n.name: flip
        for n in recurrent
        if (flip := _reversed_whole(n, made_by, constants)) is not None
    }
    if flips:
        nodes = "node" if len(flips) == 1 else "nodes"
        packs, slices = ("packs", "Slice") if len(flips) == 1 else ("pack", "Slices")
        return (
            f"recurrent {nodes} {', '.join(map(repr, flips))} {packs} an input reversed whole "
            f"({slices} {', '.join(map(repr, dict.fromkeys(flips.values())))} with a negative "
            "step: torch.flip of the padded batch) -> the code exported flips the padded batch "
            "before packing it: each short row's reversal starts in its padding (README, 'Why "
            "flip-then-pack is wrong'); reverse each row's valid steps, or use one "
            "bidirectional layer, and export again"
        )
    return None


def _direction(node: Any) -> str:
    """An ONNX recurrent node's direction (the scan and packed layouts' loops: ``"both"``)."""
    if node.op_type not in RECURRENT_OPS:
        return "both"
    attrs = {a.name: a for a in node.attribute}
    return attrs["direction"].s.decode() if "direction" in attrs else "forward"


def _reversed_whole(
    node: Any, made_by: Mapping[str, Any], constants: Mapping[str, Any]
) -> str | None:
    """The ``Slice`` with a negative step along the time axis that a forward recurrent node
    taking ``sequence_lens`` reads its input through (torch.flip of the padded batch, then
    packing), if any; the axis followed through ``Transpose`` (review28 M1: a flip of the
    features is no flip of time). ``made_by``: each tensor's node; ``constants``: the graph's
    (:func:`~birnn_export._graph.constant_tensors`)."""
    from onnx import numpy_helper

    from birnn_export._layers import has_lengths

    if _direction(node) != "forward" or not has_lengths(node):
        return None

    def constant(name: str) -> list[int] | None:
        found = constants.get(name)
        return None if found is None else numpy_helper.to_array(found).reshape(-1).tolist()

    layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
    name, time = node.input[0], 1 if layout else 0
    for _ in range(16):
        source = made_by.get(name)
        if source is None or not source.input:
            return None
        if source.op_type == "Slice":
            steps = constant(source.input[4]) if len(source.input) > 4 else []
            axes = constant(source.input[3]) if len(source.input) > 3 else None
            axes = list(range(len(steps or []))) if axes is None else axes
            pairs = zip(steps or [], axes or [], strict=False)
            flipped = {a for s, a in pairs if s < 0}
            if time in flipped:
                return source.name
            if steps is None or axes is None or flipped:  # unknown, or another axis reversed
                return None
        elif source.op_type == "Transpose":
            perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), None)
            if perm is None or time >= len(perm):
                return None
            time = perm[time]
        elif source.op_type not in _CARRY:
            return None
        name = source.input[0]
    return None
