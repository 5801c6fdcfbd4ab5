"""Edits of an exported ONNX graph that engines need: each one names the engine behaviour it
works around and keeps the graph's results the same."""

from __future__ import annotations

import collections
from collections.abc import Collection
from typing import Any

from birnn_export.modules import NODE_NAME_KEY
from birnn_export.spec import (
    RECURRENT_OPS,
    GraphSpec,
    all_nodes,
    fresh_name,
    graph_names,
    unread_inputs,
)

#: Value a dummy row holds, per input role (a lengths row of 1 is the shortest valid one; a
#: mask's row is valid at every step).
_FILL = {"lengths": 1, "tokens": 0, "features": 0.0, "mask": 1, "padding_mask": 0}


def guard_empty_batch(proto: Any, spec: GraphSpec) -> bool:
    """Run an empty batch as one row of padding and return empty outputs.

    ONNX Runtime 1.32's CPU kernels for LSTM and GRU crash the process (SIGSEGV) on a batch of
    0 rows. The graph therefore appends ``1 - min(batch, 1)`` rows to every input with a batch
    axis (one row of padding, a valid token id or length 1, when the batch is empty; none
    otherwise) and cuts every output with a batch axis back to ``batch`` rows. For any other
    batch size both are no-ops on the data (a Concat with zero rows and a Slice of all rows).
    An input no node reads (the model ignores it) is left unread.
    Returns whether the graph was changed (it needs an input with a batch axis).
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    batched = [t for t in spec.inputs if t.batch_axis is not None]
    if not batched:
        return False
    elem = {v.name: v.type.tensor_type.elem_type for v in graph.input}
    taken = graph_names(graph)

    def fresh(base: str) -> str:
        return fresh_name(taken, f"empty_batch/{base}")

    made: dict[tuple[str, int], str] = {}

    def const(base: str, value: int) -> str:
        """An int64 initializer, made when first used (an unused one makes ONNX Runtime warn
        at every session start), once per name and value."""
        if (base, value) not in made:
            made[base, value] = fresh(base)
            graph.initializer.append(numpy_helper.from_array(_int64([value]), made[base, value]))
        return made[base, value]

    def node(op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = fresh(base)
        nodes.append(helper.make_node(op, inputs, [out], name=fresh(f"{base}/{op}"), **attrs))
        return out

    nodes: list[Any] = []
    one = const("one", 1)
    unread = set(unread_inputs(graph))  # an input the model ignores stays unread
    padded = [t for t in batched if t.name not in unread]
    first = (padded or batched)[0]
    shape = node("Shape", [first.name], "shape")
    batch = node("Gather", [shape, const("axis", first.batch_axis)], "batch", axis=0)
    pad = node("Sub", [one, node("Min", [batch, one], "at_most_one")], "pad")
    renamed: dict[str, str] = {}
    widened: dict[str, str] = {}  # uint8 inputs padded in int32
    for tensor in padded:
        axis, rank = tensor.batch_axis, len(tensor.dims)
        dims = node("Shape", [tensor.name], f"{tensor.name}/shape")
        parts = (
            [node("Slice", [dims, const("zero", 0), const("stop", axis)], f"{tensor.name}/head")]
            if axis
            else []
        )
        parts.append(pad)
        if axis < rank - 1:
            parts.append(
                node(
                    "Slice",
                    [dims, const("start", axis + 1), const("end", 1 << 62)],
                    f"{tensor.name}/tail",
                )
            )
        # TensorRT takes uint8 (a byte mask) only as an input or output, not inside the graph:
        # padded in int32, read as such by the model's Casts (the usual readers of a mask)
        byte = elem[tensor.name] == TensorProto.UINT8
        value = helper.make_tensor(
            "value",
            TensorProto.INT32 if byte else elem[tensor.name],
            [1],
            [_FILL.get(tensor.role, 0)],
        )
        filler = node(
            "ConstantOfShape",
            [node("Concat", parts, f"{tensor.name}/filler_shape", axis=0)],
            f"{tensor.name}/filler",
            value=value,
        )
        given = (
            node("Cast", [tensor.name], f"{tensor.name}/int32", to=TensorProto.INT32)
            if byte
            else None
        )
        renamed[tensor.name] = node(
            "Concat", [given or tensor.name, filler], f"{tensor.name}", axis=axis
        )
        if byte:
            widened[tensor.name] = renamed.pop(tensor.name)
    recast = set()  # outputs of the model's Casts that read a uint8 input padded in int32
    for existing in graph.node:
        for i, name in enumerate(existing.input):
            if name in widened and existing.op_type in ("Shape", "Size"):
                # it reads no values: a uint8 copy made for it alone failed TensorRT (the
                # packed layout's Shape of a byte mask, users40)
                existing.input[i] = widened[name]
                continue
            if name in widened and existing.op_type != "Cast" and name not in renamed:
                renamed[name] = node("Cast", [widened[name]], f"{name}/uint8", to=TensorProto.UINT8)
            if name in widened and existing.op_type == "Cast":
                existing.input[i] = widened[name]
                recast.update(existing.output)
            elif name in renamed:
                existing.input[i] = renamed[name]
    # their recorded [batch, ...] shapes: ONNX Runtime reused the int32 buffer of the padded row
    # for a 4-byte Cast and failed at batch 0 ("Shape mismatch attempting to re-use buffer")
    kept = [v for v in graph.value_info if v.name not in recast]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    cuts = []
    batch_outputs = {t.name: t for t in spec.outputs if t.batch_axis is not None}
    for output in graph.output:
        tensor = batch_outputs.get(output.name)
        if tensor is None:
            continue
        inner = fresh(f"{output.name}/rows")
        for existing in all_nodes(graph):
            for field in (existing.output, existing.input):
                for i, name in enumerate(field):
                    if name == output.name:
                        field[i] = inner
        cuts.append(
            helper.make_node(
                "Slice",
                [inner, const("zero", 0), batch, const("batch_axis", tensor.batch_axis)],
                [output.name],
                name=fresh(f"{output.name}/Slice"),
            )
        )
    kept = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *kept, *cuts])
    return True


def _int64(values: list[int]) -> Any:
    import numpy as np

    return np.asarray(values, dtype=np.int64)


def clean_nodes(proto: Any) -> None:
    """Name recurrent nodes after module path and layer (``rnn/l0``, ``rnn/l0/backward``), from
    the name each BiRNN put in the node's metadata (the exporter calls them
    ``node__symbolic_multi_out__N``; a layer's second call in ``forward`` gets ``rnn/l0#2``), and
    drop the exporter's per-node debug metadata (stack traces with local file paths, FX dumps):
    it is large and says nothing to an engine."""
    seen: collections.Counter[str] = collections.Counter()
    for node in proto.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        if NODE_NAME_KEY in props:
            name = props[NODE_NAME_KEY]
            seen[name] += 1  # a layer called twice in forward: its second nodes are name#2
            node.name = name if seen[name] == 1 else f"{name}#{seen[name]}"
        del node.metadata_props[:]
    _name_reversals(proto.graph)


def drop_noop_squeezes(proto: Any, symbolic: Collection[str] = ()) -> int:
    """Make each ``Squeeze`` squeeze only axes of size 1, as ``torch.squeeze(dim)`` does.

    ``x.squeeze(1)`` where dim 1 is not 1 (SpeechBrain's ``Conv2d`` squeezes its channels
    whenever it was built for 3-d input) changes nothing in torch, but torch.onnx's translation
    writes ``Squeeze(axes=[1])`` all the same, which ONNX refuses (``Dimension of input 1 must
    be 1 instead of 64``). An axis whose size the exporter recorded as a number other than 1
    is dropped from ``axes``, and a Squeeze left with none becomes an Identity. Axes of
    symbolic size stay, unless the exporter recorded the output with them kept and the axis's
    dim is one of ``symbolic`` (AutoVC's ``x.squeeze(1)`` of a ``[batch, time, 80]`` mel:
    torch.export takes a dynamic size as at least 2, so the squeeze is a no-op in the traced
    program; the caller leaves out the batch dim, whose squeeze at batch 1 changes the
    output's rank, and every dim of inputs it inferred, where such a squeeze says the model
    takes another shape). Returns the number of nodes changed."""
    import numpy as np
    from onnx import numpy_helper

    graph = proto.graph
    values = [*graph.input, *graph.value_info, *graph.output]
    values = [v for v in values if v.type.tensor_type.HasField("shape")]
    shapes = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        for v in values
    }
    names = {v.name: [d.dim_param for d in v.type.tensor_type.shape.dim] for v in values}
    constants = {t.name: t for t in graph.initializer}
    changed = 0
    for node in graph.node:
        if node.op_type != "Squeeze" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        shape = shapes.get(node.input[0])
        if shape is None:
            continue
        axes = [int(a) % len(shape) for a in numpy_helper.to_array(constants[node.input[1]])]
        kept = [a for a in axes if shape[a] in (None, 1)]
        out = shapes.get(node.output[0])
        free = [a for a in kept if shape[a] is None and names[node.input[0]][a] in symbolic]
        if free and out is not None and len(out) == len(shape) - len(kept) + len(free):
            kept = [a for a in kept if a not in free]  # torch kept those symbolic axes
        if kept == axes:
            continue
        if kept:
            name = f"{node.name or node.output[0]}_axes"
            graph.initializer.append(numpy_helper.from_array(np.asarray(kept, np.int64), name))
            node.input[1] = name
        else:
            node.op_type = "Identity"
            del node.input[1:]
        changed += 1
    return changed


def _name_reversals(graph: Any) -> None:
    """Name the split layout's ``ReverseSequence`` nodes after their recurrent node: the one
    that feeds a backward node its input reversed is ``rnn/l0/backward/reverse_in``, the one
    that puts its output (through a ``Squeeze``) back in time order ``.../reverse_out`` (the
    exporter calls both ``node__symbolic_N``; TensorRT's errors and Netron show the name)."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    taken = {node.name for node in graph.node}
    for node in graph.node:
        if node.op_type != "ReverseSequence" or not node.name.startswith("node_"):
            continue
        fed = [n for n in consumers[node.output[0]] if n.op_type in RECURRENT_OPS]
        before = producers.get(node.input[0])
        if before is not None and before.op_type == "Squeeze" and before.input:
            before = producers.get(before.input[0])
        if len(fed) == 1:
            name = f"{fed[0].name}/reverse_in"
        elif before is not None and before.op_type in RECURRENT_OPS:
            name = f"{before.name}/reverse_out"
        else:
            continue
        if name not in taken:
            taken.add(name)
            node.name = name


def sink_batch_transposes(proto: Any) -> int:
    """Move a ``Transpose`` that swaps leading axes from before a ``MatMul`` to after it.

    ``MatMul(Transpose(x, perm), W) == Transpose(MatMul(x, W), perm)`` when ``W`` is a matrix and
    ``perm`` keeps the last axis last; for a vector ``W`` (``h @ q``, an attention query) the
    product has no last axis, and the Transpose after it ``perm`` without it. fp16 graphs need
    this form: ONNX Runtime 1.32's CPU
    provider (no fp16 MatMul kernel) casts such a MatMul to float32 and then its
    ``MatmulTransposeFusion`` folds the batch-axis Transpose through the inserted Cast and
    crashes the process while the session is created (SIGSEGV). A batch-first model's head is
    exactly this pattern: the recurrent layers' time-major output, transposed, into a Linear.
    Returns how many were moved.
    """
    import onnx

    graph = proto.graph
    ranks = {t.name: len(t.dims) for t in graph.initializer if len(t.dims) in (1, 2)}
    for node in graph.node:
        tensor = node.attribute[0].t if node.op_type == "Constant" and node.attribute else None
        if tensor is not None and len(tensor.dims) in (1, 2):
            ranks[node.output[0]] = len(tensor.dims)
    producers = {out: node for node in graph.node for out in node.output}
    # Every reader of a tensor, subgraphs (If/Loop/Scan bodies) and graph outputs included.
    readers = collections.Counter(name for node in all_nodes(graph) for name in node.input)
    readers.update(o.name for o in graph.output)
    taken = graph_names(graph)

    def fresh(base: str) -> str:
        return fresh_name(taken, base)

    nodes, touched = [], []
    for node in graph.node:
        transpose = producers.get(node.input[0]) if node.op_type == "MatMul" else None
        perm = (
            list(onnx.helper.get_attribute_value(transpose.attribute[0]))
            if transpose is not None and transpose.op_type == "Transpose" and transpose.attribute
            else []
        )
        if (
            len(perm) < 3
            or perm[-1] != len(perm) - 1
            or perm == sorted(perm)
            or node.input[1] not in ranks
        ):
            nodes.append(node)
            continue
        product = fresh(f"{node.output[0]}__before_transpose")
        matmul = onnx.helper.make_node(
            "MatMul", [transpose.input[0], node.input[1]], [product], name=node.name
        )
        after = onnx.helper.make_node(
            "Transpose",
            [product],
            [node.output[0]],
            name=fresh(f"{node.name or 'MatMul'}/transpose"),
            perm=perm if ranks[node.input[1]] == 2 else perm[:-1],
        )
        nodes += [matmul, after]
        readers[node.input[0]] -= 1
        touched.append(transpose)
    if not touched:
        return 0
    # A Transpose read only by the MatMuls it was moved below is now dead.
    dead = {id(t) for t in touched if readers[t.output[0]] <= 0}
    del graph.node[:]
    graph.node.extend(n for n in nodes if id(n) not in dead)
    gone = {t.output[0] for t in touched if id(t) in dead}
    kept_info = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return len(touched)
