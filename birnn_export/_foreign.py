"""Verifying a graph birnn-export did not write: ``torch.onnx.export``'s (dynamo or legacy), one
exported by hand around a workaround, or another tool's.

Such a graph holds no spec. The model is traced here as ``birnn-export MODEL.pt`` would trace it
(or the spec of a graph birnn-export wrote for it, ``like``, is read), and the foreign graph's
inputs and outputs are matched with that spec's: by name where the names agree, else in order.
The matched spec, under the foreign graph's names, then drives verification's sweep. A dim the
foreign graph fixes where the model's is dynamic (a batch of 1, a sequence length frozen at the
example's) is a problem in the report; the sweep runs at that size, the only one the graph takes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from birnn_export.errors import BiRNNExportError
from birnn_export.spec import METADATA_KEY, GraphSpec, TensorSpec


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
    inputs = _match(
        path, "input", [i for i in proto.graph.input if i.name not in initializers], spec.inputs
    )
    outputs = _match(path, "output", list(proto.graph.output), spec.outputs)
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
        **_fixed_ranges(spec, fixed),
    )
    notes = [
        f"{path} was not written by birnn-export: its inputs and outputs were matched with "
        f"{source}{_pairs(inputs + outputs)}; its outputs were compared, not each recurrent layer"
    ]
    if fixed:
        sizes = ", ".join(f"{dim}={size}" for dim, size in fixed.items())
        notes.append(
            f"the graph fixes {sizes}, which the model takes at any size: verified at that size "
            "only (export with dynamic axes to serve others)"
        )
    return ForeignGraph(renamed, fixed, tuple(notes))


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
            f"inputs, and that failed: {exc} (or export the model with birnn-export, with the "
            "options it needs, and pass that graph as --like)"
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
) -> list[tuple[TensorSpec, Any]]:
    """Pair the model's tensors with the graph's: by name where the names agree, else in order;
    each with the same kind of dtype and the same rank."""
    from birnn_export._graph import ONNX_DTYPES  # imports torch

    names = [t.name for t in theirs]
    if sorted(names) == sorted(t.name for t in ours):
        by_name = {t.name: t for t in theirs}
        pairs = [(t, by_name[t.name]) for t in ours]
    elif len(theirs) == len(ours):
        pairs = list(zip(ours, theirs, strict=True))
    elif kind == "input" and set(names) < {t.name for t in ours}:
        lacks = [t.name for t in ours if t.name not in names]
        raise BiRNNExportError(
            f"{path}: it lacks the model's input(s) {', '.join(map(repr, lacks))}: none of its "
            "ops read them (exported from code that ignores them, and dropped as unused), so "
            "it cannot be fed what the model is; export the model with birnn-export instead"
        )
    else:
        raise BiRNNExportError(
            f"{path}: it has {len(theirs)} {kind}(s) ({', '.join(names) or 'none'}), the model "
            f"{len(ours)} ({', '.join(_shown(t) for t in ours)}): verify a graph exported from "
            "this model, with the same inputs and outputs"
        )
    for spec, info in pairs:
        dtype = ONNX_DTYPES.get(info.type.tensor_type.elem_type, "unknown")
        sizes = _declared(info)
        if not _same_kind(spec.dtype, dtype) or (
            sizes is not None and len(sizes) != len(spec.dims)
        ):
            shape = "" if sizes is None else f"[{','.join(_dim_text(d) for d in sizes)}]"
            raise BiRNNExportError(
                f"{path}: {kind} {info.name!r} is {dtype}{shape} where the model's is "
                f"{_shown(spec)}: verify a graph exported from this model"
            )
        for dim, size in zip(spec.dims, sizes or [None] * len(spec.dims), strict=True):
            if isinstance(dim, int) and size is not None and size != dim:
                raise BiRNNExportError(
                    f"{path}: {kind} {info.name!r} has a dim of {size} where the model's is "
                    f"{_shown(spec)}: verify a graph exported from this model"
                )
    return pairs


def _same_kind(ours: str, theirs: str) -> bool:
    """The same dtype, or both integer (token ids in int32 for int64) or mask-like."""
    whole = ("int64", "int32", "uint8", "bool")
    return ours == theirs or (ours in whole and theirs in whole)


def _as(ours: TensorSpec, theirs: Any) -> TensorSpec:
    """The model's tensor under the graph's name and dtype."""
    from birnn_export._graph import ONNX_DTYPES

    dtype = ONNX_DTYPES.get(theirs.type.tensor_type.elem_type, ours.dtype)
    return dataclasses.replace(ours, name=theirs.name, dtype=dtype)


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
    return changes


def _pairs(pairs: Sequence[tuple[TensorSpec, Any]]) -> str:
    renamed = [
        f"{ours.name} as {theirs.name!r}" for ours, theirs in pairs if ours.name != theirs.name
    ]
    return f" ({', '.join(renamed)})" if renamed else ""


def _shown(tensor: TensorSpec) -> str:
    return f"{tensor.name}: {tensor.dtype}[{','.join(str(d) for d in tensor.dims)}]"


def _dim_text(size: int | None) -> str:
    return "?" if size is None else str(size)
