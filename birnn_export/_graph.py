"""The graph export traced, read back: the contract it records and the checks it must pass.

:func:`build_spec` derives the :class:`~birnn_export.spec.GraphSpec` (inputs, outputs and their
roles, recurrent layers in graph order, serving ranges) from the traced graph and the model;
:func:`set_metadata` stores it in ``metadata_props``; :func:`check_graph` lists structural
problems (checker, strict shape inference, unrolled loops, example sizes baked into shapes).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from birnn_export._inputs import ONE_FIXED_LENGTH, PlannedInputs
from birnn_export._scan import is_rnn_scan, is_viterbi_scan, rnn_scan_info
from birnn_export._version import __version__
from birnn_export.conversion import find_recurrent_layers
from birnn_export.crf import HAND_WRITTEN_HINT
from birnn_export.errors import ExportError
from birnn_export.modules import BiRNN
from birnn_export.spec import (
    MASK_ROLES,
    METADATA_KEY,
    ONNX_DTYPES,
    RECURRENT_OPS,
    GraphSpec,
    TensorSpec,
    dim_sources,
)

#: Ops whose constant inputs would freeze a shape if they held the example batch or length.
SHAPE_OPS = ("Reshape", "Expand", "ConstantOfShape", "Slice", "Tile")


def dims_of(value_info: Any) -> tuple[int | str, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in dims)


#: Ops a linear head's scores pass through unchanged in their order per position (layout,
#: normalisation, a constant bias, a mask); see :func:`_class_scores`.
_SCORE_PRESERVING = {
    "Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Slice",
    "Gather", "Softmax", "LogSoftmax", "Add", "Where", "Mul", "Div",
}  # fmt: skip
_LINEAR = {"MatMul", "Gemm", "Conv"}


#: Ops a recurrent layer's final states pass through as states (their layout, a pick of layers
#: or directions, the two directions' joined); see :func:`_final_states`.
_STATE_PRESERVING = {
    "Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Slice", "Gather",
    "Concat",
}  # fmt: skip


def _softmaxed(
    made_by: Mapping[str, Any], constants: Collection[str], name: str, seen: set[str] | None = None
) -> bool:
    """Whether graph output ``name`` is a (log-)softmax's, through the ops that keep its order
    (:data:`_SCORE_PRESERVING`): on any data path, as ``_class_scores`` follows them (a
    ``masked_fill`` is a Where whose fill is a constant; ``mask * scores`` a Mul), each tensor
    looked at once (residual Adds would double the paths at each)."""
    seen = set() if seen is None else seen
    node = None if name in seen else made_by.get(name)
    seen.add(name)
    if node is None:
        return False
    if node.op_type in ("Softmax", "LogSoftmax"):
        return True
    if node.op_type not in _SCORE_PRESERVING:
        return False
    inputs = node.input[1:] if node.op_type == "Where" else node.input
    if node.op_type in ("Slice", "Gather", "Reshape"):
        inputs = node.input[:1]
    data = [i for i in inputs if i and i not in constants]
    return any(_softmaxed(made_by, constants, d, seen) for d in data)


def reconstruction_notes(proto: Any, spec: GraphSpec) -> list[str]:
    """A note for each output a linear head makes at the per-step shape of a float input,
    taken as that input's reconstruction (an autoencoder's) and so judged without top-1
    agreement: a tagger with as many tags as features looked the same (users25)."""
    made_by = {out: node for node in proto.graph.node for out in node.output}
    constants = {i.name for i in proto.graph.initializer}
    read = {
        tuple(d for i, d in enumerate(t.dims) if i not in (t.batch_axis, t.time_axis))
        for t in spec.inputs
        if t.role == "features" and t.time_axis is not None
    }
    return [
        f"output {t.name!r} has a float input's shape per step and is judged as its "
        f"reconstruction, without top-1 agreement; if it holds class scores, say so "
        f"(--scores {t.name})"
        for t in spec.outputs
        if t.role == "sequence" and not t.classes
        and tuple(d for i, d in enumerate(t.dims) if i not in (t.batch_axis, t.time_axis)) in read
        and _class_scores(made_by, constants, t.name)
    ]  # fmt: skip


def _final_states(made_by: Mapping[str, Any], constants: Collection[str], name: str) -> bool:
    """Whether graph output ``name`` holds recurrent layers' final states (``Y_h``, ``Y_c``)
    alone, as the model returns them (``h_n``, ``(hidden, cell)``, ``h_n[-2:]``), whatever
    it names them."""
    node = made_by.get(name)
    if node is None:
        return False
    if node.op_type in RECURRENT_OPS:
        return list(node.output).index(name) in (1, 2)
    if node.op_type not in _STATE_PRESERVING:
        return False
    data = [i for i in node.input if i and i not in constants]
    if node.op_type != "Concat":
        data = [i for i in node.input[:1] if i not in constants]
    return bool(data) and all(_final_states(made_by, constants, d) for d in data)


def _initial_states(graph: Any, name: str) -> bool:
    """Whether graph input ``name`` is read only as recurrent layers' initial states
    (``initial_h``, ``initial_c``), through the ops :func:`_final_states` follows (a ``Shape``
    of it reads no values: the exporter may take the batch size there)."""
    readers = [(n, i) for n in graph.node for i, x in enumerate(n.input) if x == name]
    readers = [(n, i) for n, i in readers if n.op_type != "Shape"]
    if not readers:
        return False
    for node, index in readers:
        if node.op_type in RECURRENT_OPS:
            read_as_state = index in (5, 6)
        else:
            passed = node.op_type in _STATE_PRESERVING and (node.op_type == "Concat" or index == 0)
            read_as_state = passed and all(_initial_states(graph, out) for out in node.output)
        if not read_as_state:
            return False
    return True


def _declared_state(tensor: TensorSpec, graph: Any) -> bool:
    """A float input without a time axis that the graph reads as initial states only (``h0``,
    ``c0`` declared ``[layers*2, batch, hidden]``)."""
    float_input = tensor.role == "features" and tensor.dtype.startswith("float")
    return float_input and tensor.time_axis is None and _initial_states(graph, tensor.name)


def _class_scores(made_by: Mapping[str, Any], constants: Collection[str], name: str) -> bool:
    """Whether graph output ``name`` holds class scores: a linear head's output (``MatMul``,
    ``Gemm``, a 1x1 ``Conv``), through layout ops, a constant bias, a mask and (log-)softmax.
    A recurrent layer's own outputs and states, and a head's output put through ``Tanh`` or
    ``Sigmoid`` (an initial state, multi-label probabilities) are not. ``made_by`` maps each
    tensor to the node that makes it; ``constants`` are the initializers and Constant outputs."""
    seen = set()
    while name in made_by and name not in seen:
        seen.add(name)
        node = made_by[name]
        if node.op_type in _LINEAR:
            return True
        if node.op_type not in _SCORE_PRESERVING:
            return False
        data = [i for i in node.input if i and i not in constants]
        if node.op_type == "Where":  # the scores, and a constant where the mask is
            data = [i for i in node.input[1:] if i not in constants]
        elif node.op_type in ("Slice", "Gather", "Reshape"):
            data = node.input[:1]
        if node.op_type in ("Mul", "Div") and len(data) == 2:  # scores times a mask
            scores = data[: 1 if node.op_type == "Div" else 2]
            return any(_class_scores(made_by, constants, d) for d in scores)
        if len(data) != 1:  # a sum of two computed tensors (a residual): not a head's scores
            return False
        name = data[0]
    return False


def build_spec(
    proto: Any,
    planned: PlannedInputs,
    model: nn.Module,
    layers: Sequence[BiRNN],
    tags: Collection[str] = (),
    padded_with: float | None = None,
) -> GraphSpec:
    """The graph's spec; ``padded_with``: the value the model's own ``pad_packed_sequence``
    pads the recurrent layers' outputs with, where it packs them itself (else the layers')."""
    outputs = []
    made_by = {out: node for node in proto.graph.node for out in node.output}
    constants = {i.name for i in proto.graph.initializer}
    constants |= {
        out for node in proto.graph.node if node.op_type == "Constant" for out in node.output
    }
    # the per-step shapes of the float inputs: an output of one is their reconstruction (an
    # autoencoder's), not class scores, whatever linear head made it
    specs = planned.specs()
    read = {
        tuple(d for i, d in enumerate(t.dims) if i not in (t.batch_at, t.time_at))
        for t in specs
        if t.role == "features" and t.time_at is not None
    }
    for info in proto.graph.output:
        dims = dims_of(info)
        dtype = ONNX_DTYPES.get(info.type.tensor_type.elem_type, "unknown")
        batch_at = dims.index(planned.batch_dim) if planned.batch_dim in dims else None
        time_at = next(
            (
                i
                for i, d in enumerate(dims)
                if isinstance(d, str)
                and i != batch_at
                and (d == planned.time_dim or planned.time_dim in dim_sources(d))
            ),
            None,
        )
        if info.name in tags:
            role = "tags"
        elif time_at is not None:
            role = "sequence"
        elif info.name in ("h_n", "c_n") or _final_states(made_by, constants, info.name):
            role = "state"
        else:
            role = "other"
        per_step = tuple(d for i, d in enumerate(dims) if i not in (batch_at, time_at))
        # a (log-)softmax makes scores whatever their size (8 tags over 8 features, users25)
        like_input = role == "sequence" and per_step in read
        classes = (
            role in ("sequence", "other")
            and (not like_input or _softmaxed(made_by, constants, info.name))
            and _class_scores(made_by, constants, info.name)
        )
        outputs.append(
            TensorSpec(
                info.name,
                dtype,
                dims,
                role,  # type: ignore[arg-type]
                batch_at=batch_at,
                time_at=time_at,
                classes=classes,
            )
        )
    padding = layers[-1].padding_value if layers else 0.0
    if padded_with is not None:
        padding = padded_with
    others = {
        name: triple
        for name, triple in planned.ranges.items()
        if name not in (planned.batch_dim, planned.time_dim)
    }
    # The graph's own input types (an fp16 graph takes float16 where float32 was declared).
    graph_types = {
        i.name: ONNX_DTYPES.get(i.type.tensor_type.elem_type, "unknown") for i in proto.graph.input
    }
    inputs = tuple(
        dataclasses.replace(
            t,
            dtype=graph_types.get(t.name, t.dtype),
            role="state" if _declared_state(t, proto.graph) else t.role,
        )
        for t in specs
    )
    return GraphSpec(
        inputs=inputs,
        outputs=tuple(outputs),
        example_batch=planned.examples[planned.batch_dim],
        example_seq=planned.examples[planned.time_dim],
        padding_value=padding,
        recurrent_layers=tuple(
            _layer_summary(name, layer) for name, layer in _in_graph_order(proto, model)
        ),
        batch_range=planned.ranges[planned.batch_dim],
        seq_range=planned.ranges[planned.time_dim],
        batch_dim=planned.batch_dim,
        time_dim=planned.time_dim,
        dim_ranges=others,
        example_sizes=dict(planned.examples),
        token_padding=_token_padding(model, planned, inputs),
    )


def _token_padding(
    model: nn.Module, planned: PlannedInputs, inputs: Sequence[TensorSpec]
) -> int | None:
    """The pad id of a model that takes token ids and no lengths nor mask: its first
    Embedding's ``padding_idx``. Such a model finds each row's length by it (``ids != pad``: a
    CRF tagger's mask, a SMILES encoder's lengths), so its rows are ragged, padded with it past
    their lengths and free of it before them; drawn from every id instead, the sweep put the pad
    id inside rows, which no real row holds, and told a model that masks by it that it depends
    on the batch (users37). An id outside the token input's range is another table's (a first
    Embedding that does not read that input), which no row holds: none."""
    takes_lengths = {"lengths", *MASK_ROLES} & set(planned.roles)
    if takes_lengths or "tokens" not in planned.roles:
        return None
    embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    pad = None if embedding is None else embedding.padding_idx
    tokens = next((t for t in inputs if t.role == "tokens"), None)
    if pad is None or tokens is None or not isinstance(tokens.high, int):
        return pad
    return pad if int(tokens.low or 0) <= pad <= tokens.high else None


def _in_graph_order(proto: Any, model: nn.Module) -> list[tuple[str, BiRNN]]:
    """The model's BiRNN layers in the order their nodes run in the graph (which need not be
    the order the modules were registered in)."""
    names = [n.name for n in proto.graph.node if n.op_type in RECURRENT_OPS or is_rnn_scan(n)]

    def first_node(item: tuple[str, BiRNN]) -> int:
        return next((i for i, n in enumerate(names) if n.startswith(f"{item[0]}/")), len(names))

    return sorted(named_layers(model), key=first_node)


def named_layers(model: nn.Module) -> list[tuple[str, BiRNN]]:
    return [(n, m) for n, m in find_recurrent_layers(model) if isinstance(m, BiRNN)]


def _layer_summary(name: str, layer: BiRNN) -> dict[str, Any]:
    return {
        "path": name,
        "cell": layer.cell,
        "input_size": layer.input_size,
        "hidden_size": layer.hidden_size,
        "num_layers": layer.num_layers,
        "bidirectional": layer.bidirectional,
        **({"proj_size": layer.proj_size} if layer.proj_size else {}),
    }


def set_metadata(proto: Any, spec: GraphSpec, layers_take_lengths: bool = True) -> None:
    """Write the spec and what engines and readers want at a glance into ``proto``; the rule
    for lengths only where rows have them and the recurrent layers take them (a model may run
    its layers over the padded batch and use a mask only to pool)."""
    props = {
        METADATA_KEY: spec.to_json(),
        "birnn_export.version": __version__,
        "birnn_export.layout": spec.layout,
    }
    if spec.length_source is not None and layers_take_lengths:
        props["birnn_export.lengths_rule"] = (
            f"lengths are clamped into [1, {spec.time_dim}] inside the graph; positions at or "
            f"past a row's length hold {spec.padding_value} in sequence outputs of the recurrent "
            "layers"
        )
    if spec.source_sha256:
        props["birnn_export.source_sha256"] = spec.source_sha256
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "birnn-export"
    proto.producer_version = __version__


def check_graph(
    model: Any,
    spec: GraphSpec,
    *,
    ignore: Collection[int] = (),
    fixed_at: Mapping[int, str] | None = None,
) -> list[str]:
    """Structural problems of an exported graph (empty when it is sound).

    Full ``onnx.checker``, strict shape inference, recurrent nodes present and never a ``Loop``
    or ``Scan`` (but a CRF's two Viterbi Scans, :mod:`birnn_export.crf`), symbolic batch/seq on
    inputs and outputs, and the example batch and length
    nowhere as a static dim or in the constant inputs of shape-making ops. Sizes in ``ignore``
    (those the model itself has) are not searched for: they cannot be told apart. ``fixed_at``
    says where the model's code fixed a size (``{7: " at model.py:12 (len(x))"}``).

    ``model`` is an ``onnx.ModelProto`` or, for models over 2 GB, the path of the saved file.
    """
    import onnx

    problems: list[str] = []
    target = str(model) if isinstance(model, (str, Path)) else model
    try:
        onnx.checker.check_model(target, full_check=True)
    except Exception as exc:
        problems.append(f"onnx.checker: {str(exc).splitlines()[0]}")
        return problems
    try:
        if isinstance(target, str):
            with tempfile.TemporaryDirectory() as tmp:
                inferred_path = os.path.join(tmp, "inferred.onnx")
                onnx.shape_inference.infer_shapes_path(
                    target, inferred_path, check_type=True, strict_mode=True
                )
                inferred = onnx.load(inferred_path, load_external_data=False)
        else:
            inferred = onnx.shape_inference.infer_shapes(target, check_type=True, strict_mode=True)
    except Exception as exc:
        problems.append(f"strict shape inference: {str(exc).splitlines()[0]}")
        return problems
    ops = collections.Counter(
        str(rnn_scan_info(n)["op"]) if is_rnn_scan(n) else n.op_type
        for n in inferred.graph.node
        if not is_viterbi_scan(n)
    )
    for loop in ("Loop", "Scan"):
        if ops[loop]:
            problems.append(f"graph holds {ops[loop]} {loop} node(s): recurrence was unrolled")
    expected_layers = spec.recurrent_layers
    if expected_layers and not (ops["LSTM"] or ops["GRU"] or ops["RNN"]):
        problems.append("no LSTM/GRU/RNN node in the graph although the model has recurrent layers")
    inputs = {t.name for t in spec.inputs}
    told: set[str] = set()  # the lines that fixed a size, once said
    for tensor, info in _io_pairs(inferred, spec):
        dims = dims_of(info)
        for axis in (tensor.batch_axis, tensor.time_axis):
            if axis is not None and (axis >= len(dims) or dims[axis] != tensor.dims[axis]):
                found = dims[axis] if axis < len(dims) else "nothing"
                problem = (
                    f"{tensor.name}: dim {axis} should be symbolic '{tensor.dims[axis]}', the "
                    f"graph declares {found}"
                )
                where = (fixed_at or {}).get(found, "") if isinstance(found, int) else ""
                if tensor.name in inputs and where in told:
                    problem += f": fixed to {found} at the same line"
                elif tensor.name in inputs and where:  # the model's own line: what to change
                    told.add(where)
                    instead = (
                        f"{UNROLLED_LOOP} to the example's length: compute over "
                        "the whole dim with tensor ops (cumsum, a recurrent layer)"
                        if re.search(r"\bfor\b|\brange\(", where)
                        else "a size made a Python number (len(x), int(x.shape[i])) is frozen "
                        f"in the graph: use the tensor's size as it is (x.size({axis}), "
                        f"x.shape[{axis}]), in integer arithmetic (a * b // c: a size divided "
                        "by a size with / is a float the exporter cannot keep)"
                    )
                    problem += (
                        f": the model fixes it to the example's {found}{where}: {instead}"
                        + _if_fixed(spec, tensor.dims[axis], found, "; or, if that dim never ")
                    )
                elif tensor.name in inputs and isinstance(found, int) and axis == tensor.time_axis:
                    problem += (  # a branch on short inputs fixes it too: the likelier cause
                        f": the model cannot vary it (it fixes it to {found}, the example's): "
                        "if it takes short inputs another way (a branch on the length: chunks, "
                        f"a strided front end), give --range {tensor.dims[axis]}=MIN,OPT,MAX "
                        "from its shortest input"
                        + _if_fixed(spec, tensor.dims[axis], found, "; if that dim never ")
                    )
                elif tensor.name in inputs and isinstance(found, int):
                    problem += (
                        f": the model cannot vary it (it fixes it to {found}); declare the "
                        f"inputs with that dim as the number {found} (--input / inputs=[...])"
                    )
                problems.append(problem)
    traced_at = spec.example_sizes or {
        spec.batch_dim: spec.example_batch,
        spec.time_dim: spec.example_seq,
    }
    examples = {
        size: "batch" if name == spec.batch_dim else "length" if name == spec.time_dim else name
        for name, size in traced_at.items()
        if size not in ignore
    }
    sizes_baked: set[int] = set()
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        baked = [f"{examples[d]} {d}" for d in dims_of(info) if d in examples]
        sizes_baked |= {d for d in dims_of(info) if d in examples}
        if baked:
            problems.append(
                f"value {info.name} has static dims {list(dims_of(info))}: the example "
                f"{', '.join(baked)} is baked into its shape"
            )
    for size in sorted(sizes_baked):  # where the model's code made it a number: first
        where = (fixed_at or {}).get(size, "")
        if where and where not in told:
            told.add(where)
            fixed = f"the model fixes it to the example's {size}{where}"
            problems.insert(0, f"{examples[size]}: {fixed}: {FIXED_THERE}")
    problems += _baked_sizes(inferred, set(examples))
    return problems


def _if_fixed(spec: GraphSpec, dim: str, found: int, lead: str) -> str:
    """What to do where ``dim`` never varies: declare it as the number; where no other dim
    besides the batch is dynamic, name the one that varies (an image's width, not its
    channels), since birnn-export needs one."""
    others = {d for t in spec.inputs for d in t.dims if isinstance(d, str)}
    if others - {spec.batch_dim, dim}:
        return f"{lead}varies, declare it as the number {found} (--input / inputs=[...])"
    return (
        f"{lead}varies, declare it as the number {found} and name the dim that does (--input "
        f"/ inputs=[...]): {ONE_FIXED_LENGTH}"
    )


def _io_pairs(proto: Any, spec: GraphSpec) -> list[tuple[TensorSpec, Any]]:
    infos = {i.name: i for i in [*proto.graph.input, *proto.graph.output]}
    return [(t, infos[t.name]) for t in (*spec.inputs, *spec.outputs) if t.name in infos]


def constant_tensors(proto: Any) -> dict[str, Any]:
    """The graph's constants by name, not yet read (``TensorProto``): its initializers held
    inline (shape constants are small and stay inline; weights in external data are not
    needed to read sizes or steps) and its Constant nodes' values."""
    constants = {i.name: i for i in proto.graph.initializer if i.data_location != i.EXTERNAL}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = attr.t
    return constants


def _baked_sizes(proto: Any, sizes: set[int]) -> list[str]:
    from onnx import numpy_helper

    tensors = constant_tensors(proto)
    read = {}  # each constant a shape op reads, read once

    def constant(name: str) -> np.ndarray | None:
        if name in tensors and name not in read:
            read[name] = numpy_helper.to_array(tensors[name])
        return read.get(name)

    problems = []
    for node in proto.graph.node:
        if node.op_type not in SHAPE_OPS:
            continue
        # ConstantOfShape/Expand/Reshape/Tile: the shape or repeats input; Slice: starts/ends.
        for name in node.input[1:]:
            values = constant(name)
            if values is None or values.dtype.kind not in "iu":
                continue
            hits = sorted(sizes.intersection(int(v) for v in values.ravel()))
            if hits:
                problems.append(
                    f"{node.op_type} node {node.name or node.output[0]} has the example size(s) "
                    f"{hits} baked into its constant input {name}: the graph would only run at "
                    "that size"
                )
        shape_of = node.op_type == "ConstantOfShape" and node.input
        values = constant(node.input[0]) if shape_of else None
        if values is not None and sizes.intersection(int(v) for v in values.ravel()):
            problems.append(f"ConstantOfShape {node.name} has a static example shape")
    return problems


#: How a problem begins its advice where the model's line that fixed a size is a Python loop.
UNROLLED_LOOP = "a Python loop over it unrolls"


def raise_for_problems(
    model: Any,
    spec: GraphSpec,
    ignore: Collection[int],
    crfs: Sequence[str] = (),
    fixed_at: Mapping[int, str] | None = None,
) -> None:
    problems = check_graph(model, spec, ignore=ignore, fixed_at=fixed_at)
    if problems and crfs:  # a hand-written Viterbi froze the length: that is the cause
        where = problems[0].partition(f": {UNROLLED_LOOP}")[0]  # not the advice for other loops
        raise ExportError(
            f"{', '.join(crfs)}: {HAND_WRITTEN_HINT} (the graph traced from it: {where})"
        )
    if problems:
        shown = problems[:3] + ([f"(+{len(problems) - 3} more)"] if len(problems) > 3 else [])
        frozen = any("baked into its" in p for p in problems) and not any(
            "the model fixes it to the example's" in p for p in problems
        )
        raise ExportError(
            "exported graph failed its checks: "
            + "; ".join(shown)
            + (f"; {FROZEN_HINT}" if frozen else "")
        )


#: What to do where the model's line that froze a dim other than batch and time is known.
FIXED_THERE = (
    "a size made a Python number there (int(), len(x), a pooling kernel or window given a "
    "size) is frozen in the graph: keep the tensor's own size (x.shape[i]) in tensor ops, or "
    "pool a whole axis with x.amax(i) or x.mean(i)"
)

#: What freezes an example size into a traced graph, and what to do instead.
FROZEN_HINT = (
    "a size the model computes in Python (int(), .item(), .tolist(), a Python loop over a dim) "
    "is frozen at the example's: keep that arithmetic on tensors (x.shape[1] itself traces), or "
    "declare the dim as a number if it is fixed"
)
